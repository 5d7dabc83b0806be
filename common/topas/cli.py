"""Command line of the TOPAS result reducer: `python -m common.topas merge ...`.

Owns argument parsing, the printed summary, and turning ToolError into messages on
stderr plus an exit code. Runs on the reducer node: standard library, numpy and
common.errors only.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from common.errors import EXIT_FAILED, EXIT_OK, ToolError, usage_error
from common.topas.merge import MergeReport, merge_runs

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
        "merge", help="merge the scorer CSVs of several run folders",
        description="Merge every TOPAS scorer CSV found at the same relative path in all "
                    "run folders (Sum, Mean, Count_in_Bin, Second_Moment, Variance, "
                    "Standard_Deviation, Min, Max combined as one run of all histories).")
    merge.add_argument("--out", required=True, type=Path, metavar="OUTDIR",
                       help="folder for the merged files (created if needed; must not be "
                            "inside a run folder)")
    merge.add_argument("runs", nargs="+", type=Path, metavar="RUNDIR",
                       help="one output folder per run (independent seeds)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
        report = merge_runs(args.runs, args.out)
    except SystemExit as done:  # --help prints and exits through argparse
        return int(done.code or EXIT_OK)
    except ToolError as error:
        for line in error.lines:
            print(f"error: {line}", file=sys.stderr)
        return error.exit_code
    print(summary(report))
    if not report.merged:
        print(f"error: no TOPAS scorer CSV found in the {len(report.run_dirs)} run folders",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def summary(report: MergeReport) -> str:
    """A few lines saying what was merged and what was skipped."""
    lines = [f"Merged {len(report.merged)} scorer file(s) from {len(report.run_dirs)} runs "
             f"into {report.out_dir}"]
    for merged in report.merged:
        histories = f", {merged.histories} histories" if merged.histories is not None else ""
        lines.append(f"  {merged.path}: scorer {merged.scorer_name}, {merged.runs} runs"
                     f"{histories}, {merged.rows} rows, {' '.join(merged.statistics)}")
    if report.skipped:
        lines.append(f"Skipped {len(report.skipped)} CSV file(s) that are not TOPAS scorer "
                     "outputs:")
        lines += [f"  {skipped.path}: {skipped.reason}" for skipped in report.skipped]
    return "\n".join(lines)
