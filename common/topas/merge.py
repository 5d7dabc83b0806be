"""Merging a campaign's run folders into one results folder.

Owns the folder rules and the order of work. Every output found at the same relative
path in every run folder is merged to that path under the output folder:
  * scorer CSVs (`*.csv` with a TOPAS scorer header) and binary scorers (`*.binheader`
    with its `.bin`), combined statistically (combine.py);
  * phase spaces (`*.header` with its `.phsp`), concatenated (phasespace.py).
Files that are none of these are skipped and reported; an output that some runs lack is
an error naming them, never silently merged from fewer runs. A run folder's own
merge-summary/ (an earlier merge's) is not an output.

The runs of a scorer are folded in run order by one thread while `workers - 1` others
read the next runs (polars parses without holding the interpreter lock), so the result
does not depend on the number of workers, and memory holds the accumulator and
`workers` runs, never all of them. Before the merged file is written, the runs are tested
against each other (consistency.py): an inconsistent run stops the merge unless `allow_inconsistent`.
Beside each merged scorer go its record (record.py: the runs and histories it stands
for) and, in merge-summary/ (extras.py), a text summary, a PNG, the batch statistics
and, for a 3-D dose, DICOM RT Dose files.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from common.errors import ToolError, usage_error
from common.topas.binary import write_binary_scorer
from common.topas.combine import ScorerAccumulator
from common.topas.consistency import ConsistencyReport
# SUMMARY_DIR is imported for callers too: they name the summary folder from here.
from common.topas.extras import SUMMARY_DIR, write_extras  # noqa: F401
from common.topas.ledger import LedgerFile, read_ledger, write_ledger
from common.topas.header import NotAScorerFile, ScorerHeader, read_header
from common.topas.phasespace import NotAPhaseSpace, merge_phase_spaces, \
    read_phase_space_header
from common.topas.plots import matplotlib_missing
from common.topas.record import MergeRecord, read_record, write_record
from common.topas.runs import RunContribution, contribution, folded_statistics
from common.topas.scorer import Scorer, read_scorer, write_scorer
from common.topas.tables import check_final_newline, engine

SCORER_CSV = "scorer"
SCORER_BINARY = "binary scorer"
PHASE_SPACE = "phase space"
ALLOW_INCONSISTENT_FLAG = "--allow-inconsistent"
_KINDS = {".csv": SCORER_CSV, ".binheader": SCORER_BINARY, ".header": PHASE_SPACE}
_MAX_NAMED_RUNS = 5
_MAX_WORKERS = 8
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


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
    dicom: tuple[Path, ...] = ()  # merge-summary/...: RT Dose files of a 3-D dose
    summary_text: str = ""
    warnings: tuple[str, ...] = ()  # left-out runs, identical runs, inconsistent runs


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
    engine: str = ""  # the library that read and wrote the numbers (tables.py)


@dataclass(frozen=True)
class _Options:
    histories: int | None
    plots: bool
    workers: int
    allow_inconsistent: bool


def merge_runs(run_dirs: Sequence[Path], out_dir: Path, *, histories: int | None = None,
               plots: bool = True, workers: int | None = None,
               allow_inconsistent: bool = False) -> MergeReport:
    """Merge every TOPAS output common to the run folders into out_dir (same relative
    paths), with a record beside each merged scorer and a summary, a plot and batch
    statistics per scorer in out_dir/merge-summary/.

    `histories`: each run's number of histories, for scorers whose files do not report
    it (Sum or Mean without Histories_with_Scorer_Active); an input that is itself a
    merged output uses its record instead. `plots`: draw PNGs (skipped with a note when
    matplotlib is missing). `workers`: runs in memory at once, one being folded while the
    others are read (default: the CPUs, at most 8). `allow_inconsistent`: merge runs that disagree with the others (named in the
    summary) instead of stopping. ToolError (usage errors exit 2) if the folders or
    files cannot be merged.
    """
    runs = _checked_run_dirs(run_dirs, Path(out_dir))
    options = _checked_options(histories, plots, workers, allow_inconsistent)
    found = {run: _outputs(run) for run in runs}
    to_merge, skipped = _classify(runs, found)
    notes: list[str] = []
    if options.plots and any(kind != PHASE_SPACE for _, kind in to_merge):
        missing = matplotlib_missing()
        if missing:
            notes.append(missing)
            options = replace(options, plots=False)
    merged = tuple(_merge_one(runs, relative, kind, Path(out_dir), options)
                   for relative, kind in to_merge)
    return MergeReport(out_dir=Path(out_dir), run_dirs=runs, merged=merged,
                       skipped=tuple(skipped), notes=tuple(notes), engine=engine())


def merge_scorer_files(sources: Sequence[Path], out_path: Path,
                       histories: int | None = None) -> Scorer:
    """Combine one scorer's output files (one per run, CSV or .binheader) into out_path
    (same format); returns the merged scorer. Reads one run at a time."""
    accumulator = _accumulate(sources, histories, workers=1)
    merged = accumulator.result()
    _write(merged, Path(out_path))
    return merged


# ------------------------------------------------------------------ one file

def _merge_one(runs: tuple[Path, ...], relative: Path, kind: str, out_dir: Path,
               options: _Options) -> MergedFile:
    sources = [run / relative for run in runs]
    if kind == PHASE_SPACE:
        header = merge_phase_spaces(sources, out_dir / relative)
        return MergedFile(path=relative, scorer_name=f"{header.format} phase space",
                          runs=len(runs), histories=header.original_histories,
                          statistics=(), rows=header.particles, kind=kind)
    # A binary run is read by one copy of its bytes: a second thread only adds a run in
    # memory (measured: 100 runs of 100k voxels, 1.9 s either way, 14 MB more with two).
    workers = 1 if kind == SCORER_BINARY else options.workers
    accumulator = _accumulate(sources, options.histories, workers)
    consistency = accumulator.consistency()
    _stop_if_inconsistent(consistency, relative, options.allow_inconsistent)
    merged = accumulator.result()
    histories = accumulator.histories
    warnings = _run_warnings(accumulator, consistency)
    _write(merged, out_dir / relative)
    write_record(out_dir / relative, MergeRecord(
        runs=_runs_stood_for(sources, accumulator), histories=histories,
        inconsistent_runs=tuple(run.source for run in consistency.inconsistent)))
    write_ledger(out_dir / relative, accumulator.ledger)
    written = write_extras(out_dir, relative, merged, accumulator.batch(), accumulator.runs,
                           histories, options.plots, consistency, warnings)
    report = MergedFile(path=relative, scorer_name=merged.header.scorer_name,
                        runs=accumulator.runs, histories=histories,
                        statistics=merged.header.statistics, rows=merged.rows, kind=kind,
                        warnings=warnings)
    if written is None:
        return report
    return replace(report, summary=written.summary, plot=written.plot, batch=written.batch,
                   dicom=written.dicom, summary_text=written.text)


def _run_warnings(accumulator: ScorerAccumulator,
                  consistency: ConsistencyReport) -> tuple[str, ...]:
    """Runs left out, identical or inconsistent: what the user must hear of."""
    left_out = [f"{source}: 0 histories; left out (it adds nothing, and counted as a run "
                "it would make the batch standard error too small)"
                for source in accumulator.empty_runs]
    troubled = consistency.lines() if consistency.inconsistent or consistency.identical else []
    return tuple(left_out + [line for line in troubled if "not tested" not in line])


def _stop_if_inconsistent(consistency: ConsistencyReport, relative: Path,
                          allowed: bool) -> None:
    if consistency.inconsistent and not allowed:
        raise ToolError(
            f"{relative}: some runs disagree with the others beyond their statistical "
            "errors (wrong image, TOPAS version or parameters on their node?); nothing "
            f"was written for it. Leave those runs out, or merge anyway with "
            f"{ALLOW_INCONSISTENT_FLAG}:", *consistency.lines())


def _runs_stood_for(sources: Sequence[Path], accumulator: ScorerAccumulator) -> int:
    """Original runs behind the merged file: an input that is a merged file counts as
    the runs its record names."""
    total = 0
    for source in sources:
        if str(source) in accumulator.empty_runs:
            continue
        record = read_record(source)
        total += record.runs if record is not None else 1
    return total


def _accumulate(sources: Sequence[Path], histories: int | None,
                 workers: int) -> ScorerAccumulator:
    """Fold the runs in order while `workers - 1` threads read the next ones."""
    first_source = Path(sources[0])
    first = read_header(first_source)
    inputs = {str(source): _input(Path(source), histories) for source in sources}

    def read(source: Path) -> RunContribution:
        return _read_run(Path(source), first, first_source, inputs[str(source)].histories)

    accumulator = ScorerAccumulator(histories, sum(i.runs for i in inputs.values()))
    for source, run in _in_order(sources, read, workers):
        accumulator.add_contribution(run, source, inputs[str(source)].ledger())
    return accumulator


@dataclass(frozen=True)
class _Input:
    """One input file: a run, or a merged output standing for `runs` runs."""

    path: Path
    runs: int
    histories: int | None

    def ledger(self) -> LedgerFile | None:
        if self.runs == 1 and read_record(self.path) is None:
            return None
        return read_ledger(self.path, self.runs, self.histories)


def _input(source: Path, per_run: int | None) -> _Input:
    record = read_record(source)
    if record is None:
        return _Input(source, 1, per_run)
    return _Input(source, record.runs, record.histories_for(per_run))


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


def _in_order(items: Sequence[_Item], work: Callable[[_Item], _Result],
              workers: int) -> Iterator[tuple[_Item, _Result]]:
    """(item, work(item)) in order; `workers - 1` threads work on the next items while
    the caller uses this one (so `workers` runs are in memory at most)."""
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


def _write(merged: Scorer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".binheader":
        write_binary_scorer(path, merged.header, merged.values)
    else:
        write_scorer(path, merged.header, merged.values, merged.indices)


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    # One thread folds while the others read; a read holds the interpreter in parts
    # (headers, checks, copies), so one reader per CPU keeps the CPUs busy: on 2 CPUs,
    # 3 workers merged 100 runs of 100k voxels in 4.5-5.9 s against 6.1-7.2 s with 2.
    return max(2, min(cpus + 1, _MAX_WORKERS))


# ------------------------------------------------------------------ folders

def _checked_options(histories: int | None, plots: bool, workers: int | None,
                     allow_inconsistent: bool) -> _Options:
    if histories is not None and histories < 1:
        raise usage_error(f"--histories {histories}: must be a positive number of "
                          "histories per run")
    if workers is not None and workers < 1:
        raise usage_error(f"--workers {workers}: must be at least 1")
    return _Options(histories=histories, plots=plots,
                    workers=_default_workers() if workers is None else workers,
                    allow_inconsistent=allow_inconsistent)


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
            if path.suffix in _KINDS and path.is_file()
            and path.relative_to(run).parts[0] != SUMMARY_DIR}


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
