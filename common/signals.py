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
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

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


class InterruptLatch:
    """Keeps an interrupt that Python swallowed, so a long loop can still honour it.

    A signal handler's exception surfaces in whatever the main thread is running; when that
    is a weakref callback or a __del__ (thread pools run many), Python prints "Exception
    ignored" and carries on — Ctrl-C is lost and a 4,000-file download goes on to the end.
    Inside `latched()`, SIGINT/SIGTERM/SIGHUP still raise as before, but the exception is also
    kept here; the loop calls `check()` between steps to raise it if it never arrived.
    """

    def __init__(self) -> None:
        self.pending: BaseException | None = None

    def check(self) -> None:
        if self.pending is not None:
            exc, self.pending = self.pending, None
            raise exc

    def clear(self) -> None:
        self.pending = None


def _latching(previous: Callable[[int, object], None], latch: InterruptLatch):
    def handler(number: int, frame: object) -> None:
        try:
            previous(number, frame)
        except BaseException as exc:
            latch.pending = exc
            raise
    return handler


@contextmanager
def latched() -> Iterator[InterruptLatch]:
    latch = InterruptLatch()
    if threading.current_thread() is not threading.main_thread():
        yield latch  # handlers can only be set from the main thread; nothing to latch there
        return
    numbers = [n for n in (signal.SIGINT, *HANDLED) if callable(signal.getsignal(n))]
    previous = {n: signal.getsignal(n) for n in numbers}
    for number in numbers:
        signal.signal(number, _latching(previous[number], latch))
    try:
        yield latch
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
