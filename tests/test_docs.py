"""The README stays true: every config key and every option is documented and has help."""
from __future__ import annotations

import pytest

from common.cli import REDUCER, RUNNER, build_parser
from common.config import APP_KEYS, SIM_KEYS
from conftest import REPO

README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("key", APP_KEYS + SIM_KEYS)
def test_every_config_key_is_in_the_readme(key):
    assert f"`{key}`" in README


@pytest.mark.parametrize("script", [RUNNER, REDUCER])
def test_every_option_has_help_and_is_in_the_readme(script):
    for action in build_parser(script)._actions:
        assert action.help, action.dest
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}" in README, flag


def test_readme_quick_start_commands_exist():
    for command in ("./run_example.sh", "./run_tests.sh"):
        assert command in README
        assert (REPO / command).exists()
    assert "./run_tests.sh" in (REPO / ".ci" / "run").read_text()
