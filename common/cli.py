"""Command line of both scripts: arguments, and the one place that turns errors into exit codes.

`main(script, argv)` is the whole program: parse, load settings, pick the backend, run the
workflow, print the summary on stdout. Every user-facing failure arrives as a ToolError
and leaves as message lines on stderr plus its exit code; a traceback only with -v.
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console

from common.backends import get_backend
from common.config import BACKENDS, load_settings
from common.campaign import CampaignIds, worker_pool
from common.worker.setup import with_node_threads
from common.errors import EXIT_FAILED, EXIT_INTERRUPTED, ToolError, usage_error
from common.prompts import ASSUME_YES, INTERACTIVE, NO_INPUT, Prompter
from common.redaction import redact
from common.terminal_text import printable
from common.signals import Terminated, signals_as_interrupts
from common.ui import Ui
from common.model import Script
from common.workflow import (Context, Options, Outcome, attach, cleanup, plan, rerun_failed,
                             run_reducer, run_simulation, status)
from common.workflow.context import carried_options

RUNNER, REDUCER = Script.RUNNER, Script.REDUCER
_DESCRIPTIONS = {
    RUNNER: "Run a simulation campaign: zip and upload the simulation folder, run one task per "
            "index on a pool, collect every task's output files, then offer to delete the "
            "job/pool, download the results and delete the storage container.",
    REDUCER: "Merge a campaign's task outputs: one reducer task on a one-node pool gets every "
             "worker output and writes the merged result to nodes_output/results/, then offer "
             "to delete the job/pool, download the result and delete the storage container.",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise usage_error(f"{self.prog}: {message} (see --help)")


def build_parser(script: Script, prog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog or script.file, description=_DESCRIPTIONS[script],
                     epilog="Exit codes: 0 done, 1 the campaign failed (tasks failed, timeout, "
                            "download not verified), 2 bad configuration or usage, 130 interrupted.")
    parser.add_argument("simconfig", nargs="?", default="simconfig.json", type=Path,
                        help="the campaign's simconfig.json (default: ./simconfig.json)")
    parser.add_argument("--appconfig", type=Path, metavar="PATH",
                        help="accounts and images (default: appconfig.json beside the "
                             "simconfig, then ./appconfig.json)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="where to run: 'local' (processes on this machine, a folder as "
                             "storage) or 'azure' (Azure Batch); overrides BACKEND in appconfig")
    answers = parser.add_mutually_exclusive_group()
    answers.add_argument("--yes", "-y", action="store_true",
                         help="answer yes to every question (except one that would lose "
                              "results for good)")
    answers.add_argument("--no-input", action="store_true",
                         help="ask nothing: take each question's default and print the choice")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--dry-run", action="store_true",
                       help="check the configuration and print the pool, job and first tasks "
                            "as they would be sent (secrets and SAS signatures hidden), with the "
                            "number of requests; create, upload and delete nothing")
    modes.add_argument("--attach", action="store_true",
                       help="pick up the campaign's running job from its manifest (no new pool or "
                            "job; only tasks a stopped runner recorded but never added): wait, "
                            "report, then the cleanup questions")
    modes.add_argument("--cleanup", action="store_true",
                       help="only the cleanup questions (delete job/pool, download, delete "
                            "container) for a campaign started earlier, from its manifest")
    modes.add_argument("--status", action="store_true",
                       help="print the campaign's task counts and what still exists, then exit")
    if script == RUNNER:
        modes.add_argument("--rerun-failed", action="store_true",
                           help="resubmit only the failed tasks of the last run (same index and "
                                "seed, new task ids), wait, and ask the cleanup questions")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace runs of the campaign that already exist (the same task "
                                 "indices); their earlier local copies and the old merged result "
                                 "are moved aside, not deleted")
    else:
        parser.add_argument("--allow-partial", action="store_true",
                            help="merge the runs that are there when some the campaign expects "
                                 "failed or are missing (the summary names the runs merged)")
        parser.add_argument("--allow-inconsistent", action="store_true",
                            help="built-in merge: merge runs that disagree with the others "
                                 "statistically instead of stopping (the summary records them)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print more detail, and a traceback on unexpected errors")
    return parser


def _ask(prompt: str) -> str:
    """Prompts go to stderr (stdout carries only the final summary) — the real one, as typed:
    not through a live progress display, which would restyle them."""
    err = sys.__stderr__ or sys.stderr
    err.write(printable(prompt))
    err.flush()
    line = sys.stdin.readline()
    if not line:
        err.write("\n")
        raise EOFError
    return line


def _prompter(args: argparse.Namespace, ui: Ui) -> Prompter:
    mode = ASSUME_YES if args.yes else NO_INPUT if args.no_input else INTERACTIVE
    is_terminal = bool(sys.stdin and sys.stdin.isatty())
    return Prompter(mode=mode, ask=_ask, say=ui.say, is_terminal=is_terminal)


def _run(script: Script, argv: Sequence[str], console: Console, prog: str | None) -> Outcome:
    args = build_parser(script, prog).parse_args(list(argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.simconfig, args.appconfig, backend=args.backend,
                             for_reducer=script == REDUCER)
    ui = Ui(console, verbose=args.verbose, secrets=settings.app.secrets())
    backend = get_backend(settings, say=ui.warn, debug=ui.debug if args.verbose else None)
    settings = with_node_threads(settings, backend.threads_per_task(
        worker_pool(settings, CampaignIds(settings.sim.sim_id, ""))))
    workflow: Callable[[Context], Outcome] = run_simulation if script == RUNNER else run_reducer
    try:
        options = Options(overwrite=getattr(args, "overwrite", False),
                          allow_partial=getattr(args, "allow_partial", False),
                          allow_inconsistent=getattr(args, "allow_inconsistent", False),
                          script=script, carried=carried_options(args.appconfig, args.backend),
                          answers=("--yes",) if args.yes else ("--no-input",) if args.no_input
                          else ())
        ctx = Context(settings=settings, backend=backend, prompter=_prompter(args, ui), ui=ui,
                      poll_seconds=backend.poll_seconds, options=options)
        kind = script.job_kind
        if args.dry_run:
            return plan(ctx, reducer=script == REDUCER)
        if args.attach:
            return attach(ctx, kind)
        if args.cleanup:
            return cleanup(ctx, kind)
        if args.status:
            return status(ctx)
        if getattr(args, "rerun_failed", False):
            return rerun_failed(ctx)
        return workflow(ctx)
    finally:
        backend.close()
        ui.timings()


def main(script: Script, argv: Sequence[str], prog: str | None = None) -> int:
    """The whole program of one script; `prog` names it in messages (default: its file)."""
    console = Console(stderr=True)
    verbose = "-v" in argv or "--verbose" in argv
    try:
        with signals_as_interrupts():
            outcome = _run(script, argv, console, prog)
    except ToolError as exc:
        for line in exc.lines:
            console.print(f"error: {printable(redact(line))}", markup=False, highlight=False,
                          soft_wrap=True)
        return exc.exit_code
    except Terminated as exc:
        console.print(f"{exc.signal_name}: stopped; nothing was deleted", markup=False)
        return 128 + exc.signal_number
    except KeyboardInterrupt:
        console.print("interrupted", markup=False)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # a bug: say so plainly, traceback on request
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (run with -v for the traceback)"
        console.print(f"internal error: {printable(redact(repr(exc)))}{hint}",
                      markup=False, highlight=False, soft_wrap=True)
        return EXIT_FAILED
    for line in outcome.summary:
        print(printable(line))
    return outcome.exit_code


def runner() -> int:
    """The `batch-simulation-runner` command (pyproject.toml)."""
    return main(RUNNER, sys.argv[1:], prog=RUNNER.command)


def reducer() -> int:
    """The `batch-data-reducer` command (pyproject.toml)."""
    return main(REDUCER, sys.argv[1:], prog=REDUCER.command)
