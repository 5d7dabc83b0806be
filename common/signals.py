"""SIGTERM and SIGHUP as interrupts that delete nothing.

A closed terminal (SIGHUP) or a `kill` (SIGTERM) used to end the script where it stood:
nothing noted in the manifest, temporary files left, the terminal's cursor left hidden by the
live progress bar. Here they raise `Terminated` — a KeyboardInterrupt, so every `finally`
and every context manager (the progress bar restores the cursor) runs, and the workflow's
interrupt handling notes it — but, unlike Ctrl-C, nobody is asked anything and nothing is
deleted: the tasks keep running, and --attach or --cleanup take the campaign up later.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.signal_number = number
        self.signal_name = signal.Signals(number).name


def _raise(number: int, frame: object) -> None:
    raise Terminated(number)


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    previous = {number: signal.signal(number, _raise) for number in HANDLED}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
