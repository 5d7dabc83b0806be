"""Merging a campaign's run folders into one results folder.

Owns the folder rules and the order of work. Every output found at the same relative
path in every run folder is merged to that path under the output folder:
  * scorer CSVs (`*.csv` with a TOPAS scorer header) and binary scorers (`*.binheader`
    with its `.bin`), combined statistically (combine.py);
  * phase spaces (`*.header` with its `.phsp`), concatenated (phasespace.py).
Files that are none of these are skipped and reported; an output that some runs lack is
an error naming them, never silently merged from fewer runs. A run folder's own
merge-summary/ (an earlier merge's) is not an output.

A dense scorer (CSV or binary) whose whole runs do not fit `memory_mb` is merged block
by block over its voxels, the runs read in lockstep (blocks.py), so memory is bounded by
the budget, not by the grid; smaller grids, sparse outputs, and runs whose rows are in
different orders are folded whole run after run (streams.py), which is faster. Before the merged file is put in place, every original run is tested
against all (consistency.py; through the ledgers of merged inputs too): an inconsistent
run stops the merge unless `allow_inconsistent`. A `partial` merge (a first-level task
of a reducer tree) tests nothing and writes no extras: it keeps each run's ledger for
the final merge, which tests them all.
Beside each merged scorer go its record (record.py: the runs and histories it stands
for) and, in merge-summary/ (extras.py), a text summary, a PNG, the batch statistics
and, for a 3-D dose, DICOM RT Dose files.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from common.errors import ToolError, usage_error
from common.topas.binary import write_binary_scorer
from common.topas.blocks import (BlockInput, BlockResult, NotLockstep, fits_whole,
                                 merge_in_blocks)
from common.topas.consistency import ConsistencyReport
# SUMMARY_DIR is imported for callers too: they name the summary folder from here.
from common.topas.extras import (SUMMARY_DIR, extras_folder, write_extras,  # noqa: F401
                                 write_view_extras)
from common.topas.folders import (PHASE_SPACE, SCORER_BINARY, SCORER_CSV,  # noqa: F401
                                  SkippedFile, checked_run_dirs, classify, outputs)
from common.topas.header import read_header
from common.topas.ledger import write_ledger
from common.topas.phasespace import merge_phase_spaces
from common.topas.plots import matplotlib_missing
from common.topas.record import MergeRecord, write_record
from common.topas.scorer import Scorer, write_scorer
from common.topas.streams import (MergeInput, accumulate, default_memory_mb,
                                  default_workers, in_order, merge_input)
from common.topas.summary import Target
from common.topas.tables import engine

ALLOW_INCONSISTENT_FLAG = "--allow-inconsistent"
PARTIAL_FLAG = "--partial"
_NOT_TESTED_HERE = ("a partial merge (a first-level task of a reducer tree): the final "
                    "merge tests every run")


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
    memory_mb: int
    partial: bool
    target: Target | None


def merge_runs(run_dirs: Sequence[Path], out_dir: Path, *, histories: int | None = None,
               plots: bool = True, workers: int | None = None,
               allow_inconsistent: bool = False, memory_mb: int | None = None,
               partial: bool = False, target: Target | None = None) -> MergeReport:
    """Merge every TOPAS output common to the run folders into out_dir (same relative
    paths), with a record beside each merged scorer and a summary, a plot and batch
    statistics per scorer in out_dir/merge-summary/.

    `histories`: each run's number of histories, for scorers whose files do not report
    it (Sum or Mean without Histories_with_Scorer_Active); an input that is itself a
    merged output uses its record instead. `plots`: draw PNGs (skipped with a note when
    matplotlib is missing). `workers`: runs in memory at once, one being folded while the
    others are read (default: the CPUs, at most 8). `allow_inconsistent`: merge runs that
    disagree with the others (named in the summary) instead of stopping. `memory_mb`: the
    budget of a block-by-block merge (default: a quarter of the available memory, 64 MB
    to 1 GB). `partial`: a first-level merge of a reducer tree (no test, no extras; the
    runs' ledgers are kept for the final merge). `target`: an adaptive campaign's target,
    stated in its scorer's summary as the runner measures it. ToolError (usage errors
    exit 2) if the folders or files cannot be merged.
    """
    runs = checked_run_dirs(run_dirs, Path(out_dir))
    options = _checked_options(histories, plots and not partial, workers,
                               allow_inconsistent, memory_mb, partial, target)
    found = {run: outputs(run) for run in runs}
    to_merge, skipped = classify(runs, found)
    notes: list[str] = []
    if target is not None and not target.scorer:  # the runner's default: the only scorer
        scorers = [relative for relative, kind in to_merge if kind != PHASE_SPACE]
        options = replace(options, target=replace(target, scorer=str(scorers[0])) if len(
            scorers) == 1 else None)
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
    inputs = [merge_input(Path(source), histories) for source in sources]
    merged = accumulate(inputs, histories, workers=1).result()
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
    inputs = [merge_input(source, options.histories) for source in sources]
    header = read_header(sources[0])
    binary = kind == SCORER_BINARY
    if header.sparse is None and not fits_whole(header, options.memory_mb << 20,
                                                1 if binary else options.workers, binary):
        try:
            return _merge_blocks(inputs, relative, kind, out_dir, options)
        except NotLockstep:  # rows in different orders: whole runs, as below
            pass
    return _merge_whole(inputs, relative, kind, out_dir, options)


def _merge_blocks(inputs: list[MergeInput], relative: Path, kind: str, out_dir: Path,
                  options: _Options) -> MergedFile:
    batch = None if options.partial else extras_folder(relative) / f"{relative.name}.batch.csv"
    # A binary run is read by one copy of its bytes: a second thread only adds memory.
    workers = 1 if kind == SCORER_BINARY else options.workers

    def accept(consistency: ConsistencyReport) -> None:
        _stop_if_inconsistent(consistency, relative, options.allow_inconsistent)

    result: BlockResult = merge_in_blocks(
        [BlockInput(item.path, item.histories, item.ledger()) for item in inputs],
        out_dir / relative, expected_runs=sum(item.runs for item in inputs),
        histories=options.histories, memory_bytes=options.memory_mb << 20,
        partial=options.partial, batch_path=None if batch is None else out_dir / batch,
        relative=relative, accept=accept,
        in_order=lambda items, work: in_order(items, work, workers))
    consistency = result.consistency
    warnings = _run_warnings(result.empty_runs, consistency)
    _write_record(out_dir / relative, inputs, result.empty_runs, result.histories,
                  consistency)
    write_ledger(out_dir / relative, result.ledger)
    runs = _runs_stood_for(inputs, result.empty_runs)
    report = MergedFile(path=relative, scorer_name=result.header.scorer_name, runs=runs,
                        histories=result.histories, statistics=result.header.statistics,
                        rows=result.rows, kind=kind, warnings=warnings)
    if result.view is None:
        return report
    written = write_view_extras(out_dir, relative, replace(result.view, runs=runs), options.plots,
                                consistency, warnings, batch, _target_for(relative, options))
    return replace(report, summary=written.summary, plot=written.plot, batch=written.batch,
                   dicom=written.dicom, summary_text=written.text)


def _merge_whole(inputs: list[MergeInput], relative: Path, kind: str, out_dir: Path,
                 options: _Options) -> MergedFile:
    workers = 1 if kind == SCORER_BINARY else options.workers
    accumulator = accumulate(inputs, options.histories, workers)
    consistency = (ConsistencyReport(False, _NOT_TESTED_HERE) if options.partial
                   else accumulator.consistency())
    _stop_if_inconsistent(consistency, relative, options.allow_inconsistent)
    merged = accumulator.result()
    histories = accumulator.histories
    empty = tuple(accumulator.empty_runs)
    warnings = _run_warnings(empty, consistency)
    _write(merged, out_dir / relative)
    _write_record(out_dir / relative, inputs, empty, histories, consistency)
    write_ledger(out_dir / relative, accumulator.ledger)
    runs = _runs_stood_for(inputs, empty)
    report = MergedFile(path=relative, scorer_name=merged.header.scorer_name,
                        runs=runs, histories=histories,
                        statistics=merged.header.statistics, rows=merged.rows, kind=kind,
                        warnings=warnings)
    if options.partial:
        return report
    written = write_extras(out_dir, relative, merged, accumulator.batch(), runs,
                           histories, options.plots, consistency, warnings,
                           _target_for(relative, options))
    if written is None:
        return report
    return replace(report, summary=written.summary, plot=written.plot, batch=written.batch,
                   dicom=written.dicom, summary_text=written.text)


def _target_for(relative: Path, options: _Options) -> Target | None:
    target = options.target
    return target if target is not None and Path(target.scorer) == relative else None


def _run_warnings(empty_runs: Sequence[str],
                  consistency: ConsistencyReport) -> tuple[str, ...]:
    """Runs left out, identical or inconsistent: what the user must hear of."""
    left_out = [f"{source}: 0 histories; left out (it adds nothing, and counted as a run "
                "it would make the batch standard error too small)"
                for source in empty_runs]
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


def _write_record(path: Path, inputs: Sequence[MergeInput], empty_runs: Sequence[str],
                  histories: int | None, consistency: ConsistencyReport) -> None:
    """The record: the original runs behind the merged file."""
    write_record(path, MergeRecord(
        runs=_runs_stood_for(inputs, empty_runs), histories=histories,
        inconsistent_runs=tuple(run.source for run in consistency.inconsistent)))


def _runs_stood_for(inputs: Sequence[MergeInput], empty_runs: Sequence[str]) -> int:
    """The original runs behind a merged file: an input that is a merged file (a partial
    merge of a tree, a merge merged again) counts as the runs its record names, an empty
    run not at all. What the summary and the report say, whatever the inputs were."""
    return sum(item.runs for item in inputs if str(item.path) not in empty_runs)


def _write(merged: Scorer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".binheader":
        write_binary_scorer(path, merged.header, merged.values)
    else:
        write_scorer(path, merged.header, merged.values, merged.indices)


def _checked_options(histories: int | None, plots: bool, workers: int | None,
                     allow_inconsistent: bool, memory_mb: int | None, partial: bool,
                     target: Target | None) -> _Options:
    if histories is not None and histories < 1:
        raise usage_error(f"--histories {histories}: must be a positive number of "
                          "histories per run")
    if workers is not None and workers < 1:
        raise usage_error(f"--workers {workers}: must be at least 1")
    if memory_mb is not None and memory_mb < 16:
        raise usage_error(f"--memory-mb {memory_mb}: must be at least 16 (MB)")
    return _Options(histories=histories, plots=plots,
                    workers=default_workers() if workers is None else workers,
                    allow_inconsistent=allow_inconsistent,
                    memory_mb=default_memory_mb() if memory_mb is None else memory_mb,
                    partial=partial, target=target)
