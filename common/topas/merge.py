"""Merging the scorer CSVs of a campaign's run folders into one results folder.

Owns the folder rules: every *.csv with a TOPAS scorer header found at the same relative
path in every run folder is merged to that path under the output folder; CSVs without such
a header are skipped and reported; a scorer file that some runs lack is an error naming
them, never silently merged from fewer runs. The statistics live in combine.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common.errors import ToolError, usage_error
from common.topas.combine import ScorerAccumulator
from common.topas.header import NotAScorerFile, read_header
from common.topas.scorer import Scorer, read_scorer, write_scorer

_MAX_NAMED_RUNS = 5


@dataclass(frozen=True)
class MergedFile:
    path: Path  # relative to each run folder and to the output folder
    scorer_name: str
    runs: int
    histories: int | None  # total over the runs; None if the scorer does not report it
    statistics: tuple[str, ...]
    rows: int


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


def merge_runs(run_dirs: Sequence[Path], out_dir: Path) -> MergeReport:
    """Merge every scorer CSV common to the run folders into out_dir (same relative paths)."""
    runs = _checked_run_dirs(run_dirs, Path(out_dir))
    found = {run: _csv_files(run) for run in runs}
    to_merge, skipped = _classify(runs, found)
    merged = tuple(_merge_one(runs, relative, Path(out_dir)) for relative in to_merge)
    return MergeReport(out_dir=Path(out_dir), run_dirs=runs, merged=merged,
                       skipped=tuple(skipped))


def merge_scorer_files(sources: Sequence[Path], out_path: Path) -> Scorer:
    """Combine one scorer's output files (one per run) into out_path; returns the result.

    Reads one run at a time, so memory does not grow with the number of runs.
    """
    accumulator = ScorerAccumulator()
    for source in sources:
        accumulator.add(read_scorer(source), source)
    merged = accumulator.result()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_scorer(out_path, merged.header, merged.values, merged.indices)
    return merged


def _merge_one(runs: tuple[Path, ...], relative: Path, out_dir: Path) -> MergedFile:
    merged = merge_scorer_files([run / relative for run in runs], out_dir / relative)
    return MergedFile(path=relative, scorer_name=merged.header.scorer_name, runs=len(runs),
                      histories=merged.histories(out_dir / relative),
                      statistics=merged.header.statistics, rows=merged.rows)


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


def _csv_files(run: Path) -> set[Path]:
    return {path.relative_to(run) for path in run.rglob("*.csv") if path.is_file()}


def _classify(runs: tuple[Path, ...],
              found: dict[Path, set[Path]]) -> tuple[list[Path], list[SkippedFile]]:
    """Scorer files to merge and non-scorer CSVs to skip; ToolError if runs lack scorers."""
    to_merge: list[Path] = []
    skipped: list[SkippedFile] = []
    missing: list[str] = []
    for relative in sorted(set().union(*found.values())):
        having = [run / relative for run in runs if relative in found[run]]
        reason = _not_a_scorer(having)
        if reason is not None:
            skipped.append(SkippedFile(path=relative, reason=reason))
            continue
        lacking = [run for run in runs if relative not in found[run]]
        if lacking:
            missing.append(f"{relative}: missing in {_name_runs(lacking)}")
        else:
            to_merge.append(relative)
    if missing:
        raise ToolError("some runs lack scorer outputs that others have (failed or unfinished "
                        "tasks?); nothing was merged:", *missing)
    return to_merge, skipped


def _not_a_scorer(paths: list[Path]) -> str | None:
    """Why none of these copies is a scorer output, or None if one is.

    One good copy is enough to merge: then a broken copy (say, emptied by a crashed
    task) fails the merge by name instead of the whole scorer being skipped.
    """
    reasons = []
    for path in paths:
        try:
            read_header(path)
            return None
        except NotAScorerFile as error:
            reasons.append(error.reason)
    return reasons[0]


def _name_runs(runs: list[Path]) -> str:
    named = ", ".join(str(run) for run in runs[:_MAX_NAMED_RUNS])
    more = len(runs) - _MAX_NAMED_RUNS
    return f"{named} and {more} more" if more > 0 else named
