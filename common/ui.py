"""What the user sees on stderr: steps, warnings, live progress, all with secrets redacted.

Progress bars (rich) draw live on a terminal; without one, a plain line is printed when the
counts change (at most every few seconds), so CI logs stay readable.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TransferSpeedColumn)

from common.model import TaskCounts
from common.redaction import redact
from common.terminal_text import printable

PLAIN_INTERVAL_SECONDS = 5.0


def counts_text(counts: TaskCounts) -> str:
    return (f"active {counts.active} · running {counts.running} · "
            f"succeeded {counts.succeeded} · failed {counts.failed}")


@dataclass
class Ui:
    console: Console
    verbose: bool = False
    secrets: tuple[str, ...] = field(default=())
    # (step text, when it started): for "where the time went", printed with -v
    steps: list[tuple[str, float]] = field(default_factory=list)

    def _print(self, text: str, style: str | None = None) -> None:
        self.console.print(escape(printable(redact(text, self.secrets))), style=style,
                           highlight=False, soft_wrap=True)

    def step(self, text: str) -> None:
        self.steps.append((text, time.monotonic()))
        self._print(f"==> {text}", "bold")

    def timings(self) -> None:
        """With -v: how long each step took, longest first."""
        if not self.verbose or not self.steps:
            return
        ends = [start for _, start in self.steps[1:]] + [time.monotonic()]
        spent = sorted(((end - start, text) for (text, start), end in zip(self.steps, ends)),
                       reverse=True)
        self._print("where the time went:", "dim")
        for seconds, text in spent:
            self._print(f"    {seconds:8.1f} s  {text[:90]}", "dim")

    def info(self, text: str) -> None:
        self._print(f"    {text}")

    def debug(self, text: str) -> None:
        if self.verbose:
            self._print(f"    [debug] {text}", "dim")

    def warn(self, text: str) -> None:
        self._print(f"warning: {text}", "yellow")

    def error(self, text: str) -> None:
        self._print(f"error: {text}", "red")

    def say(self, text: str) -> None:
        """For the prompter: a plain line."""
        self._print(text)

    @contextmanager
    def task_progress(self, total: int, label: str) -> Iterator[Callable[..., None]]:
        """Yields update(counts, extra="", total=None): a bar of completed tasks with the state
        counts beside it, and `extra` (cost so far, the uncertainty reached...); `total`
        grows when an adaptive campaign adds tasks."""
        if not self.console.is_terminal:
            yield self._plain_task_updates(label, total)
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[counts]}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            bar = progress.add_task(label, total=total, counts="")

            def update(counts: TaskCounts, extra: str = "", total: int | None = None) -> None:
                text = counts_text(counts) + (f" · {extra}" if extra else "")
                progress.update(bar, completed=counts.completed, counts=escape(printable(text)),
                                **({"total": total} if total is not None else {}))
            yield update

    def _plain_task_updates(self, label: str, first_total: int) -> Callable[..., None]:
        last: dict[str, object] = {"text": None, "time": 0.0}

        def update(counts: TaskCounts, extra: str = "", total: int | None = None) -> None:
            text = counts_text(counts)
            due = time.monotonic() - float(last["time"]) >= PLAIN_INTERVAL_SECONDS
            finished = counts.total and counts.completed == counts.total
            if text != last["text"] and (due or finished):
                shown = f" · {extra}" if extra else ""
                self.info(f"{label}: {counts.completed}/{total or counts.total or first_total} "
                          f"done ({text}{shown})")
                last.update(text=text, time=time.monotonic())
        return update

    @contextmanager
    def transfer_progress(self, files: int, size: int, label: str) -> Iterator[Callable[[int, int], None]]:
        """Yields update(files_done, bytes_done) for a bar in bytes with a file count."""
        if not self.console.is_terminal or files == 0:
            yield lambda done_files, done_bytes: None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TextColumn("{task.fields[files]}"))
        with Progress(*columns, console=self.console) as progress:
            bar = progress.add_task(label, total=size, files=f"0/{files} files")

            def update(done_files: int, done_bytes: int) -> None:
                progress.update(bar, completed=done_bytes, files=f"{done_files}/{files} files")
            yield update


def runs_text(indices: Iterable[int]) -> str:
    """run1..run4, run7: runs named compactly."""
    ordered, parts = sorted(indices), []
    start = previous = None
    for index in ordered + [None]:  # type: ignore[list-item]
        if index is not None and previous is not None and index == previous + 1:
            previous = index
            continue
        if start is not None:
            parts.append(f"run{start}" if start == previous else f"run{start}..run{previous}")
        start = previous = index
    return ", ".join(parts)
