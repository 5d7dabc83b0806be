"""y/n questions that never hang: `[Y/n]` / `[y/N]`, default in capitals.

--yes answers yes, --no-input takes each default and says so, and with no terminal on stdin
the defaults are taken and said as well. End of input also takes the default. The reading
and writing functions are injected by the script's main(), so library code never reads
stdin itself and tests can drive a Prompter without a terminal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

YES = ("y", "yes")
NO = ("n", "no")
INTERACTIVE, ASSUME_YES, NO_INPUT = "interactive", "yes", "no-input"


def suffix(default: bool) -> str:
    return "[Y/n]" if default else "[y/N]"


def parse_answer(text: str, default: bool) -> bool | None:
    """True/False for an answer, the default for an empty one, None for anything else."""
    answer = text.strip().lower()
    if not answer:
        return default
    if answer in YES:
        return True
    if answer in NO:
        return False
    return None


@dataclass(frozen=True)
class Prompter:
    mode: str
    ask: Callable[[str], str]  # shows the prompt, returns the line (raises EOFError at the end)
    say: Callable[[str], None]  # writes a line for the user (stderr)
    is_terminal: bool

    def confirm(self, question: str, default: bool, risky: bool = False) -> bool:
        """Ask a yes/no question; the answer, or the default where nobody can answer.

        A risky question (losing data for good) is never answered by --yes: only a person
        at a terminal can say yes to it.
        """
        if self.mode == ASSUME_YES and risky:
            self.say(f"{question} {suffix(default)} {'yes' if default else 'no'} "
                     "(default: --yes does not answer this one)")
            return default
        if self.mode == ASSUME_YES:
            self.say(f"{question} {suffix(default)} yes (--yes)")
            return True
        if self.mode == NO_INPUT or not self.is_terminal:
            why = "--no-input" if self.mode == NO_INPUT else "no terminal"
            self.say(f"{question} {suffix(default)} {'yes' if default else 'no'} "
                     f"(default, {why})")
            return default
        return self._ask_until_answered(question, default)

    def _ask_until_answered(self, question: str, default: bool) -> bool:
        while True:
            try:
                line = self.ask(f"{question} {suffix(default)} ")
            except EOFError:
                self.say(f"(end of input: taking the default, {'yes' if default else 'no'})")
                return default
            answer = parse_answer(line, default)
            if answer is not None:
                return answer
            self.say("Please answer y (yes) or n (no), or press Enter for the default.")
