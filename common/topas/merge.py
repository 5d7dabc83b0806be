"""Merging a campaign's run folders into one results folder.

Owns the folder rules. Every output found at the same relative path in every run folder
is merged to that path under the output folder:
  * scorer CSVs (`*.csv` with a TOPAS scorer header) and binary scorers (`*.binheader`
    with its `.bin`), combined statistically (combine.py);
  * phase spaces (`*.header` with its `.phsp`), concatenated (phasespace.py).
Files that are none of these are skipped and reported; an output that some runs lack is
an error naming them, never silently merged from fewer runs. The runs of a scorer are
folded in chunks of consecutive runs (at most 8), each into a partial accumulator, by a
pool of worker processes when the files are large (parsing is nearly all the work); the
partial results are combined in run order, so the result does not depend on the number
of workers. Memory holds the accumulator and one partial result per worker, never all
runs. Beside the merged files, in `merge-summary/` (extras.py), go a text summary, a PNG
and the batch (run-to-run) statistics of each merged scorer.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

from common.errors import ToolError, usage_error
from common.topas.binary import read_binary_scorer, write_binary_scorer
from common.topas.combine import (RunContribution, ScorerAccumulator, contribution,
                                  statistics_to_read)
from common.topas.header import NotAScorerFile, ScorerHeader, read_header
from common.topas.phasespace import NotAPhaseSpace, merge_phase_spaces, \
    read_phase_space_header
# SUMMARY_DIR is imported for callers too: they name the summary folder from here.
from common.topas.extras import SUMMARY_DIR, write_extras  # noqa: F401
from common.topas.plots import matplotlib_missing
from common.topas.scorer import Scorer, read_scorer, write_scorer

SCORER_CSV = "scorer"
SCORER_BINARY = "binary scorer"
PHASE_SPACE = "phase space"
_KINDS = {".csv": SCORER_CSV, ".binheader": SCORER_BINARY, ".header": PHASE_SPACE}
_MAX_NAMED_RUNS = 5
_PARALLEL_BYTES = 4 << 20  # below this much data per scorer, worker processes cost more
_MAX_WORKERS = 8
# At most this many runs are folded by one worker before it hands its partial result
# over: sending a partial accumulator costs about one run's arrays, so larger chunks send
# less, smaller ones share the work out more evenly (see _chunk_size). Measured on 100 runs
# of 100x100x10 with 2 workers: 8 runs a chunk 3.1 s (the last chunk runs alone), 4 runs
# 2.55 s, 2 runs 2.7 s.
_MAX_RUNS_PER_CHUNK = 4


@dataclass(frozen=True)
class MergedFile:
    """One merged output. Paths are relative to each run folder and to the output folder;
    for a binary scorer `path` is the .binheader, for a phase space the .header."""

    path: Path
    scorer_name: str  # the scorer's name; for a phase space its format
    runs: int
    histories: int | None  # total over the runs; None if not known
    statistics: tuple[str, ...]  # () for a phase space
    rows: int  # rows written (scorer) or particles (phase space)
    kind: str = SCORER_CSV
    summary: Path | None = None  # merge-summary/...: the text summary
    plot: Path | None = None  # merge-summary/...: the PNG, None if not drawn
    batch: Path | None = None  # merge-summary/...: per-bin run-to-run statistics
    summary_text: str = ""


@dataclass(frozen=True)
class SkippedFile:
    path: Path  # relative, as in MergedFile
    reason: str


@dataclass(frozen=True)
class MergeReport:
    out_dir: Path
    run_dirs: tuple[Path, ...]
    merged: tuple[MergedFile, ...]
    skipped: tuple[SkippedFile, ...]
    notes: tuple[str, ...] = ()  # e.g. why no plots were drawn


@dataclass(frozen=True)
class _Options:
    histories: int | None
    plots: bool
    workers: int


def merge_runs(run_dirs: Sequence[Path], out_dir: Path, *, histories: int | None = None,
               plots: bool = True, workers: int | None = None) -> MergeReport:
    """Merge every TOPAS output common to the run folders into out_dir (same relative
    paths), with a summary, a plot and batch statistics per scorer in
    out_dir/merge-summary/.

    `histories`: each run's number of histories, for scorers whose files do not report
    it (Sum or Mean without Histories_with_Scorer_Active). `plots`: draw PNGs (skipped
    with a note in the report when matplotlib is missing). `workers`: processes reading
    runs in parallel (default: the CPUs, at most 8). ToolError (usage errors exit 2) if
    the folders or files cannot be merged; nothing is merged then.
    """
    runs = _checked_run_dirs(run_dirs, Path(out_dir))
    options = _checked_options(histories, plots, workers)
    found = {run: _outputs(run) for run in runs}
    to_merge, skipped = _classify(runs, found)
    notes: list[str] = []
    if options.plots and any(kind != PHASE_SPACE for _, kind in to_merge):
        missing = matplotlib_missing()
        if missing:
            notes.append(missing)
            options = replace(options, plots=False)
    with _Readers(options.workers) as readers:
        merged = tuple(_merge_one(runs, relative, kind, Path(out_dir), options, readers)
                       for relative, kind in to_merge)
    return MergeReport(out_dir=Path(out_dir), run_dirs=runs, merged=merged,
                       skipped=tuple(skipped), notes=tuple(notes))


def merge_scorer_files(sources: Sequence[Path], out_path: Path,
                       histories: int | None = None) -> Scorer:
    """Combine one scorer's output files (one per run, CSV or .binheader) into out_path
    (same format); returns the merged scorer. Reads one run at a time."""
    accumulator = _accumulate(sources, histories, None)
    merged = accumulator.result()
    _write(merged, Path(out_path))
    return merged


# ------------------------------------------------------------------ one file

def _merge_one(runs: tuple[Path, ...], relative: Path, kind: str, out_dir: Path,
               options: _Options, readers: _Readers) -> MergedFile:
    sources = [run / relative for run in runs]
    if kind == PHASE_SPACE:
        header = merge_phase_spaces(sources, out_dir / relative)
        return MergedFile(path=relative, scorer_name=f"{header.format} phase space",
                          runs=len(runs), histories=header.original_histories,
                          statistics=(), rows=header.particles, kind=kind)
    parallel = readers if _worth_parallel(sources, kind) else None
    accumulator = _accumulate(sources, options.histories, parallel)
    merged = accumulator.result()
    histories = accumulator.histories
    extras_args = (out_dir, relative, merged, accumulator.batch(), len(runs), histories,
                   options.plots)
    # The summary, batch file and plot are written by a worker, if there is a pool,
    # while this process writes the merged file.
    executor = parallel.get() if parallel is not None else None
    pending = executor.submit(write_extras, *extras_args) if executor is not None else None
    _write(merged, out_dir / relative)
    written = pending.result() if pending is not None else write_extras(*extras_args)
    report = MergedFile(path=relative, scorer_name=merged.header.scorer_name,
                        runs=len(runs), histories=histories,
                        statistics=merged.header.statistics, rows=merged.rows, kind=kind)
    if written is None:
        return report
    return replace(report, summary=written.summary, plot=written.plot, batch=written.batch,
                   summary_text=written.text)


def _accumulate(sources: Sequence[Path], histories: int | None,
                readers: _Readers | None) -> ScorerAccumulator:
    """Fold the runs, in fixed chunks of consecutive runs, each chunk by one worker;
    the chunks are combined in run order. Chunks do not depend on the number of
    workers, so neither does the result, to the last bit."""
    total = ScorerAccumulator(histories)
    first = read_header(sources[0])
    size = _chunk_size(len(sources))
    chunks = [sources[i:i + size] for i in range(0, len(sources), size)]
    for chunk, result in zip(chunks, _chunk_results(chunks, first, sources[0], histories,
                                                    readers)):
        if isinstance(result, _Failure):
            raise ToolError(*result.lines)
        total.absorb(result, chunk[0])
    return total


def _write(merged: Scorer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".binheader":
        write_binary_scorer(path, merged.header, merged.values)
    else:
        write_scorer(path, merged.header, merged.values, merged.indices)


# ------------------------------------------------------------------ reading runs

@dataclass(frozen=True)
class _Failure:
    """A ToolError raised in a worker, sent back as plain lines (exceptions with extra
    constructor arguments do not survive pickling)."""

    lines: tuple[str, ...]


def _chunk_size(runs: int) -> int:
    """Runs per chunk: at least four chunks, at most _MAX_RUNS_PER_CHUNK runs each.
    It depends on the number of runs only, so the result does not depend on the workers."""
    return max(1, min(_MAX_RUNS_PER_CHUNK, runs // 4))


def _accumulate_chunk(sources: Sequence[Path], first: ScorerHeader, first_source: Path,
                      histories: int | None) -> ScorerAccumulator | _Failure:
    """Fold some consecutive runs; runs in a worker process (module level for pickling)."""
    accumulator = ScorerAccumulator(histories)
    try:
        for path in sources:
            accumulator.add_contribution(_read_run(path, first, first_source, histories),
                                         path)
    except ToolError as error:
        return _Failure(error.lines)
    return accumulator


def _read_run(path: Path, first: ScorerHeader, first_source: Path,
              histories: int | None) -> RunContribution:
    header = read_header(path)
    difference = first.layout_difference(header)
    if difference is not None:
        raise ToolError(f"cannot merge {path} with {first_source}: different {difference}")
    wanted = statistics_to_read(header)
    scorer = (read_binary_scorer(path, wanted) if path.suffix == ".binheader"
              else read_scorer(path, wanted))
    return contribution(scorer, path, histories)


def _chunk_results(chunks: list[Sequence[Path]], first: ScorerHeader, first_source: Path,
                   histories: int | None, readers: _Readers | None
                   ) -> Iterator[ScorerAccumulator | _Failure]:
    """Each chunk's accumulator, in run order; at most one chunk per worker in flight,
    so memory holds a few partial results at most."""
    executor = readers.get() if readers is not None else None
    if executor is None or readers is None:
        for chunk in chunks:
            yield _accumulate_chunk(chunk, first, first_source, histories)
        return
    waiting = iter(chunks)
    pending: deque[Future[ScorerAccumulator | _Failure]] = deque()
    for chunk in waiting:
        pending.append(executor.submit(_accumulate_chunk, chunk, first, first_source,
                                       histories))
        if len(pending) >= readers.workers:
            break
    while pending:
        result = pending.popleft().result()
        following = next(waiting, None)
        if following is not None:
            pending.append(executor.submit(_accumulate_chunk, following, first,
                                           first_source, histories))
        yield result


class _Readers:
    """A process pool, started only when a large scorer needs it, shut down at exit."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def get(self) -> Executor | None:
        if self.workers < 2:
            return None
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers)
        return self._executor

    def __enter__(self) -> _Readers:
        return self

    def __exit__(self, *_: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_WORKERS))


def _worth_parallel(sources: Sequence[Path], kind: str) -> bool:
    if len(sources) < 2:
        return False
    data = [source.with_suffix(".bin") if kind == SCORER_BINARY else source
            for source in sources]
    total = sum(path.stat().st_size for path in data if path.exists())
    return total >= _PARALLEL_BYTES


# ------------------------------------------------------------------ folders

def _checked_options(histories: int | None, plots: bool, workers: int | None) -> _Options:
    if histories is not None and histories < 1:
        raise usage_error(f"--histories {histories}: must be a positive number of "
                          "histories per run")
    if workers is not None and workers < 1:
        raise usage_error(f"--workers {workers}: must be at least 1")
    return _Options(histories=histories, plots=plots,
                    workers=_default_workers() if workers is None else workers)


def _checked_run_dirs(run_dirs: Sequence[Path], out_dir: Path) -> tuple[Path, ...]:
    if not run_dirs:
        raise usage_error("no run folders to merge")
    runs = tuple(Path(run) for run in run_dirs)
    for run in runs:
        if not run.is_dir():
            raise usage_error(f"{run}: not a folder")
    resolved = [run.resolve() for run in runs]
    for position, (run, real) in enumerate(zip(runs, resolved)):
        if real in resolved[:position]:
            raise usage_error(f"{run}: given twice; each run may be merged only once")
    if out_dir.exists() and not out_dir.is_dir():
        raise usage_error(f"{out_dir}: exists and is not a folder")
    out_real = out_dir.resolve()
    for run, real in zip(runs, resolved):
        if out_real == real or real in out_real.parents:
            raise usage_error(f"output folder {out_dir} is inside the run folder {run}; "
                              "merged files would mix with the runs' own")
    return runs


def _outputs(run: Path) -> dict[Path, str]:
    """The candidate outputs of a run folder, relative, with their kind."""
    return {path.relative_to(run): _KINDS[path.suffix] for path in run.rglob("*")
            if path.suffix in _KINDS and path.is_file()}


def _classify(runs: tuple[Path, ...], found: dict[Path, dict[Path, str]]
              ) -> tuple[list[tuple[Path, str]], list[SkippedFile]]:
    """Outputs to merge and files to skip; ToolError if some runs lack outputs."""
    to_merge: list[tuple[Path, str]] = []
    skipped: list[SkippedFile] = []
    missing: list[str] = []
    everything = {path: kind for kinds in found.values() for path, kind in kinds.items()}
    for relative in sorted(everything):
        kind = everything[relative]
        having = [run / relative for run in runs if relative in found[run]]
        reason = _not_an_output(having, kind)
        if reason is not None:
            skipped.append(SkippedFile(path=relative, reason=reason))
            continue
        lacking = [run for run in runs if relative not in found[run]]
        if lacking:
            missing.append(f"{relative}: missing in {_name_runs(lacking)}")
        else:
            to_merge.append((relative, kind))
    if missing:
        raise ToolError("some runs lack outputs that others have (failed or unfinished "
                        "tasks?); nothing was merged:", *missing)
    return to_merge, skipped


def _not_an_output(paths: list[Path], kind: str) -> str | None:
    """Why none of these copies is a TOPAS output of its kind, or None if one is.

    One good copy is enough to merge: then a broken copy (say, emptied by a crashed
    task) fails the merge by name instead of the whole output being skipped.
    """
    reasons = []
    for path in paths:
        try:
            if kind == PHASE_SPACE:
                read_phase_space_header(path)
            else:
                read_header(path)
            return None
        except (NotAScorerFile, NotAPhaseSpace) as error:
            reasons.append(error.reason)
    return reasons[0]


def _name_runs(runs: list[Path]) -> str:
    named = ", ".join(str(run) for run in runs[:_MAX_NAMED_RUNS])
    more = len(runs) - _MAX_NAMED_RUNS
    return f"{named} and {more} more" if more > 0 else named
