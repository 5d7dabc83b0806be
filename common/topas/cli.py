"""Command line of the TOPAS result reducer: `python -m common.topas merge ...`.

Owns argument parsing, the printed summary, and turning ToolError into messages on
stderr plus an exit code. Runs on the reducer node: standard library, numpy and
common.errors (polars, matplotlib and pydicom when they are installed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from common.errors import EXIT_FAILED, EXIT_OK, ToolError, usage_error
from common.topas.consistency import ALPHA
from common.topas.merge import (ALLOW_INCONSISTENT_FLAG, PARTIAL_FLAG, PHASE_SPACE,
                                SUMMARY_DIR, MergedFile, MergeReport, merge_runs)
from common.topas.summary import Target

TARGET_FLAGS = ("--target-scorer", "--target-percent", "--target-region-percent")

_PROG = "python -m common.topas"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises a usage ToolError instead of exiting the process."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise usage_error(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_PROG, description="Combine the TOPAS outputs of independent runs.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                     help="what to do (only 'merge' for now)")
    commands.required = True
    merge = commands.add_parser(
        "merge", help="merge the TOPAS outputs of several run folders",
        description="Merge every TOPAS output found at the same relative path in all run "
                    "folders: scorer CSVs and binary scorers (.binheader + .bin) are "
                    "combined as one run of all histories (Sum, Mean, Count_in_Bin, "
                    "Second_Moment, Variance, Standard_Deviation, Min, Max); phase spaces "
                    "(.header + .phsp, ASCII, Binary or Limited) are concatenated with "
                    "their header counts added; a scorer too large for --memory-mb goes "
                    "block by block over its voxels. Runs that disagree with the others "
                    "beyond their statistical errors stop the merge. A summary, a plot, run-to-run "
                    f"(batch) statistics and (3-D doses) DICOM RT Dose files per scorer go "
                    f"to OUTDIR/{SUMMARY_DIR}/.")
    merge.add_argument("--out", required=True, type=Path, metavar="OUTDIR",
                       help="folder for the merged files (created if needed; must not be "
                            "inside a run folder)")
    merge.add_argument("--histories", type=int, metavar="N",
                       help="histories of each run, for scorers that report Sum or Mean "
                            "without Histories_with_Scorer_Active (an input that is itself "
                            "a merged output counts as the runs its .merge.json names)")
    merge.add_argument("--no-plots", action="store_true",
                       help="do not draw the PNG per scorer")
    merge.add_argument("--workers", type=int, metavar="N",
                       help="runs handled at once: one folded in while N-1 threads read "
                            "the next (default: the CPUs, at most 8); the result does not "
                            "depend on it")
    merge.add_argument(ALLOW_INCONSISTENT_FLAG, action="store_true",
                       help="merge even runs that disagree with the others (each run is "
                            "tested against all runs pooled; a consistent campaign is "
                            f"flagged with a chance of about {ALPHA:g}); the summary names "
                            "them")
    merge.add_argument("--memory-mb", type=int, metavar="MB",
                       help="memory for the arrays of a merge that goes block by block over "
                            "the voxels (dense scorers, CSV or binary): bounds the merge's "
                            "memory whatever the grid (default: a quarter of the available "
                            "memory, 64 to 1024 MB)")
    merge.add_argument(PARTIAL_FLAG, action="store_true",
                       help="a partial merge of a reducer tree: test nothing and write no "
                            "summary; keep each run's statistics (<file>.merge.runs.npz) so "
                            "the final merge of the partials tests every run")
    merge.add_argument(TARGET_FLAGS[0], metavar="FILE",
                       help="an adaptive campaign's TARGET_SCORER (relative to a run "
                            "folder; default: the only scorer): its summary states the "
                            "target's measure as the runner took it")
    merge.add_argument(TARGET_FLAGS[1], type=float, metavar="PERCENT",
                       help="an adaptive campaign's TARGET_UNCERTAINTY_PERCENT")
    merge.add_argument(TARGET_FLAGS[2], type=float, metavar="PERCENT", default=50.0,
                       help="TARGET_REGION_PERCENT_OF_MAX (default 50)")
    merge.add_argument("runs", nargs="+", type=Path, metavar="RUNDIR",
                       help="one output folder per run (independent seeds)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
        report = merge_runs(args.runs, args.out, histories=args.histories,
                            plots=not args.no_plots, workers=args.workers,
                            allow_inconsistent=args.allow_inconsistent,
                            memory_mb=args.memory_mb, partial=args.partial,
                            target=_target(args))
    except SystemExit as done:  # --help prints and exits through argparse
        return int(done.code or EXIT_OK)
    except ToolError as error:
        for line in error.lines:
            print(f"error: {line}", file=sys.stderr)
        return error.exit_code
    print(summary(report))
    if not report.merged:
        print(f"error: no TOPAS output (scorer or phase space) found in the "
              f"{len(report.run_dirs)} run folders", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _target(args: argparse.Namespace) -> Target | None:
    if args.target_percent is None:
        if args.target_scorer is not None:
            raise usage_error(f"{TARGET_FLAGS[0]} needs {TARGET_FLAGS[1]} (the campaign's "
                              "TARGET_UNCERTAINTY_PERCENT)")
        return None
    for flag, value in ((TARGET_FLAGS[1], args.target_percent),
                        (TARGET_FLAGS[2], args.target_region_percent)):
        if not 0 < value <= 100:
            raise usage_error(f"{flag} {value:g}: must be a percentage above 0, at most 100")
    return Target(args.target_scorer or "", args.target_percent, args.target_region_percent)


def summary(report: MergeReport) -> str:
    """What was merged and skipped, then each scorer's summary."""
    stood_for = max((merged.runs for merged in report.merged), default=len(report.run_dirs))
    inputs = (f"{len(report.run_dirs)} runs" if stood_for == len(report.run_dirs) else
              f"{len(report.run_dirs)} folders standing for {stood_for} runs")
    lines = [f"Merged {len(report.merged)} file(s) from {inputs} "
             f"into {report.out_dir} (numbers read and written with {report.engine})"]
    for merged in report.merged:
        lines.append("  " + _one_line(merged))
        lines += [f"    Warning: {warning}" for warning in merged.warnings]
    if report.skipped:
        lines.append(f"Skipped {len(report.skipped)} file(s) that are not TOPAS outputs:")
        lines += [f"  {skipped.path}: {skipped.reason}" for skipped in report.skipped]
    lines += [f"Note: {note}" for note in report.notes]
    lines += [merged.summary_text for merged in report.merged if merged.summary_text]
    return "\n".join(lines)


def _one_line(merged: MergedFile) -> str:
    histories = f", {merged.histories} histories" if merged.histories is not None else ""
    if merged.kind == PHASE_SPACE:
        return (f"{merged.path}: {merged.scorer_name}, {merged.runs} runs{histories}, "
                f"{merged.rows} particles")
    return (f"{merged.path}: scorer {merged.scorer_name}, {merged.runs} runs{histories}, "
            f"{merged.rows} rows, {' '.join(merged.statistics)}")
