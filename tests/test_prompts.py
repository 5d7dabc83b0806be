"""y/n prompts in a real terminal (pexpect), and the paths where nobody can answer."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pexpect
import pytest

from common.prompts import ASSUME_YES, INTERACTIVE, NO_INPUT, Prompter, parse_answer
from conftest import REPO

pytestmark = pytest.mark.slow  # prompts in a real terminal (pexpect)

DRIVER = textwrap.dedent("""
    import sys
    from common.cli import _ask
    from common.prompts import Prompter
    default = sys.argv[1] == "yes"
    p = Prompter("interactive", ask=_ask, say=lambda t: print(t, file=sys.stderr),
                 is_terminal=sys.stdin.isatty())
    print("ANSWER=" + str(p.confirm("Delete pool?", default)))
""")


def spawn(default: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-c", DRIVER, default], cwd=str(REPO),
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          encoding="utf-8", timeout=10)
    return child


@pytest.mark.parametrize("default, prompt", [("yes", r"Delete pool\? \[Y/n\] "),
                                             ("no", r"Delete pool\? \[y/N\] ")])
def test_default_is_in_capitals(default, prompt):
    child = spawn(default)
    child.expect(prompt)
    child.sendline("")
    child.expect(f"ANSWER={default == 'yes'}")
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("typed, default, expected", [
    ("y", "no", True), ("YES", "no", True), ("n", "yes", False), ("no", "yes", False),
    ("", "yes", True), ("", "no", False)])
def test_answers(typed, default, expected):
    child = spawn(default)
    child.expect(r"\[")
    child.sendline(typed)
    child.expect(f"ANSWER={expected}")


def test_garbage_is_asked_again():
    child = spawn("no")
    child.expect(r"\[y/N\] ")
    child.sendline("maybe")
    child.expect("Please answer y")
    child.expect(r"\[y/N\] ")
    child.sendline("y")
    child.expect("ANSWER=True")


def test_end_of_input_takes_the_default_without_a_traceback():
    child = spawn("yes")
    child.expect(r"\[Y/n\] ")
    child.sendeof()
    child.expect("end of input: taking the default, yes")
    child.expect("ANSWER=True")
    child.expect(pexpect.EOF)
    assert "Traceback" not in child.before


def test_no_terminal_takes_and_says_the_default():
    result = subprocess.run([sys.executable, "-c", DRIVER, "no"], cwd=REPO, capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=10,
                            env={"PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "ANSWER=False"
    assert "Delete pool? [y/N] no (default, no terminal)" in result.stderr


def unit(mode: str, is_terminal: bool = True) -> tuple[Prompter, list[str]]:
    said: list[str] = []

    def never(_: str) -> str:
        raise AssertionError("asked although nobody should be")
    return Prompter(mode, ask=never, say=said.append, is_terminal=is_terminal), said


def test_yes_and_no_input_modes():
    prompter, said = unit(ASSUME_YES)
    assert prompter.confirm("Delete container?", False) is True
    assert said == ["Delete container? [y/N] yes (--yes)"]
    prompter, said = unit(NO_INPUT)
    assert prompter.confirm("Download results?", True) is True
    assert prompter.confirm("Delete container?", False) is False
    assert said[1] == "Delete container? [y/N] no (default, --no-input)"


def test_yes_never_confirms_losing_data():
    prompter, said = unit(ASSUME_YES)
    assert prompter.confirm("Lose 3 files for good?", False, risky=True) is False
    assert "--yes does not answer this one" in said[0]


def test_parse_answer():
    assert parse_answer("  Y ", False) is True
    assert parse_answer("", True) is True
    assert parse_answer("yep", True) is None
    assert unit(INTERACTIVE, is_terminal=False)[0].confirm("q?", True) is True
