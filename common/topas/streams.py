"""Reading the inputs of one scorer for a merge: what each input stands for (a run, or
a merged output with its record and ledger), whole runs folded in order while other
threads read the next ones, and how many threads.

The runs are folded in input order by one thread while `workers - 1` others read the
next runs (polars parses without holding the interpreter lock), so the result does not
depend on the number of workers, and memory holds the accumulator and `workers` runs,
never all of them.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from common.errors import ToolError
from common.topas.combine import ScorerAccumulator
from common.topas.header import ScorerHeader, read_header
from common.topas.ledger import LedgerFile, read_ledger
from common.topas.record import read_record
from common.topas.runs import RunContribution, contribution, folded_statistics
from common.topas.scorer import read_scorer
from common.topas.tables import check_final_newline

_MAX_WORKERS = 8
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class MergeInput:
    """One input file: a run, or a merged output standing for `runs` runs."""

    path: Path
    runs: int
    histories: int | None
    merged: bool

    def ledger(self) -> LedgerFile | None:
        """The original runs behind a merged input (None: it counts as one run)."""
        return read_ledger(self.path, self.runs, self.histories) if self.merged else None


def merge_input(source: Path, per_run: int | None) -> MergeInput:
    record = read_record(source)
    if record is None:
        return MergeInput(Path(source), 1, per_run, False)
    return MergeInput(Path(source), record.runs, record.histories_for(per_run), True)


def accumulate(inputs: Sequence[MergeInput], histories: int | None,
               workers: int) -> ScorerAccumulator:
    """Fold whole runs in order while `workers - 1` threads read the next ones."""
    first_source = inputs[0].path
    first = read_header(first_source)

    def read(item: MergeInput) -> RunContribution:
        return _read_run(item.path, first, first_source, item.histories)

    accumulator = ScorerAccumulator(histories, sum(item.runs for item in inputs))
    for item, run in in_order(list(inputs), read, workers):
        accumulator.add_contribution(run, item.path, item.ledger())
    return accumulator


def _read_run(path: Path, first: ScorerHeader, first_source: Path,
              histories: int | None) -> RunContribution:
    if path.suffix != ".binheader":
        check_final_newline(path)
    header = read_header(path)
    difference = first.layout_difference(header)
    if difference is not None:
        raise ToolError(f"cannot merge {path} with {first_source}: different {difference}")
    # A CSV is parsed only in the columns the merge folds (~40 % less CPU per run); the
    # reader still reads them all when the text may hold a NaN, so check_finite finds it.
    statistics = None if path.suffix == ".binheader" else folded_statistics(header.statistics)
    return contribution(read_scorer(path, statistics), path, histories)


def in_order(items: Sequence[_Item], work: Callable[[_Item], _Result],
             workers: int) -> Iterator[tuple[_Item, _Result]]:
    """(item, work(item)) in order; `workers - 1` threads work on the next items while
    the caller uses this one (so `workers` results are in memory at most)."""
    ahead = min(workers - 1, len(items) - 1)
    if ahead < 1:
        for item in items:
            yield item, work(item)
        return
    waiting = iter(items)
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        pending: deque[tuple[_Item, Future[_Result]]] = deque()
        for item in waiting:
            pending.append((item, pool.submit(work, item)))
            if len(pending) >= ahead:
                break
        while pending:
            item, future = pending.popleft()
            result = future.result()
            following = next(waiting, None)
            if following is not None:
                pending.append((following, pool.submit(work, following)))
            yield item, result
            del result  # the caller's fold is done: this run's arrays may go


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    # One thread folds while the others read; a read holds the interpreter in parts
    # (headers, checks, copies), so one reader per CPU keeps the CPUs busy: on 2 CPUs,
    # 3 workers merged 100 runs of 100k voxels in 4.5-5.9 s against 6.1-7.2 s with 2.
    return max(2, min(cpus + 1, _MAX_WORKERS))


def default_memory_mb() -> int:
    """The block budget when --memory-mb is not given: a quarter of the memory the node
    has available, between 64 MB and 1 GB (past that, larger blocks gain nothing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) // 1024
                return max(64, min(1024, available // 4))
    except (OSError, ValueError, IndexError):
        pass
    return 512
