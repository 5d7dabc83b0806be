"""`pip install .` gives the two commands, with the same pins as requirements.txt."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO


def pins(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.match(r"^[A-Za-z0-9_.-]+==", line.strip())]


def test_pyproject_pins_what_requirements_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(pins((REPO / "requirements.txt").read_text()))
    assert project["scripts"] == {"batch-simulation-runner": "common.cli:runner",
                                  "batch-data-reducer": "common.cli:reducer"}


@pytest.mark.slow  # builds and installs the package
def test_the_installed_commands_run_outside_the_clone(tmp_path):
    """Installed with no network (the dependencies are this venv's): the package holds every
    module the commands need, and they work from any folder."""
    target, source = tmp_path / "installed", tmp_path / "source"
    source.mkdir()
    # from a copy: setuptools builds in the source folder (build/, *.egg-info)
    for name in ("pyproject.toml", "README.md", "common"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (REPO / name).is_dir() else {}))
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--no-build-isolation", "--target", str(target), str(source)],
                           capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert build.returncode == 0, build.stderr
    assert not (target / "tests").exists() and (target / "common" / "topas" / "merge.py").exists()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # --target installs need it; a venv install would not
    for command, words in (("batch-simulation-runner", "usage: batch-simulation-runner"),
                           ("batch-data-reducer", "usage: batch-data-reducer")):
        result = subprocess.run([str(target / "bin" / command), "--help"], capture_output=True,
                                text=True, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(words)
    # a real error from the installed command: one line, exit 2, naming the file it looked for
    missing = subprocess.run([str(target / "bin" / "batch-simulation-runner"), "nothing.json"],
                             capture_output=True, text=True, cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "nothing.json" in missing.stderr
    assert "Traceback" not in missing.stderr
