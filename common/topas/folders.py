"""The folder rules of a merge: which run folders may be merged into which output
folder, and which outputs they have in common (the others are skipped, or refused when
some runs lack them).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common.errors import ToolError, usage_error
from common.topas.extras import SUMMARY_DIR
from common.topas.header import NotAScorerFile, read_header
from common.topas.phasespace import NotAPhaseSpace, read_phase_space_header

SCORER_CSV = "scorer"
SCORER_BINARY = "binary scorer"
PHASE_SPACE = "phase space"
KINDS = {".csv": SCORER_CSV, ".binheader": SCORER_BINARY, ".header": PHASE_SPACE}
_MAX_NAMED_RUNS = 5


@dataclass(frozen=True)
class SkippedFile:
    path: Path  # relative, as in MergedFile
    reason: str


def checked_run_dirs(run_dirs: Sequence[Path], out_dir: Path) -> tuple[Path, ...]:
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


def outputs(run: Path) -> dict[Path, str]:
    """The candidate outputs of a run folder, relative, with their kind."""
    return {path.relative_to(run): KINDS[path.suffix] for path in run.rglob("*")
            if path.suffix in KINDS and path.is_file()
            and path.relative_to(run).parts[0] != SUMMARY_DIR}


def classify(runs: tuple[Path, ...], found: dict[Path, dict[Path, str]]
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
