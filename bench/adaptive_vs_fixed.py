"""Benchmark: an adaptive campaign (stop at a target uncertainty) against the fixed campaign
a physicist would have guessed, on the example, with the real runner on the local backend.

Both campaigns run here, one after the other, with the same per-task histories. The fixed
campaign is the usual guess: twice the tasks the 1/sqrt(N) law needs (nobody knows the
count before, and a campaign that falls short must be run again). What to read are the
ratios — tasks and node-hours (busy task time, which is what a pool bills) of the adaptive
campaign over the fixed one — and whether both met the target; not the seconds.

    python -m bench.adaptive_vs_fixed [--histories 750000] [--target 0.8] [--first-wave 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from common.topas import ScorerAccumulator, read_scorer
from common.workflow.adaptive import measure


def campaign(root: Path, name: str, **sim: object) -> Path:
    folder = root / name
    shutil.copytree(REPO / "examples" / "water_phantom", folder / "examples" / "water_phantom",
                    ignore=shutil.ignore_patterns("nodes_output", "__pycache__", "*.csv"))
    config = json.loads((REPO / "simconfig.json").read_text())
    config.update(SIM_ID=name, POOL_NODE_COUNT=2, TIMEOUT_MINUTES=60, **sim)
    (folder / "simconfig.json").write_text(json.dumps(config))
    (folder / "appconfig.json").write_text('{"BACKEND": "local"}')
    return folder


def run(folder: Path, histories: int) -> None:
    env = {**os.environ, "EXAMPLE_HISTORIES": str(histories)}
    done = subprocess.run([sys.executable, str(REPO / "batch_simulation_runner.py"),
                           str(folder / "simconfig.json"), "--no-input"], cwd=folder, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode not in (0, 1):
        raise SystemExit(done.stderr)


def tally(folder: Path) -> tuple[int, float, float]:
    """Tasks, busy task-hours (the task durations the manifest recorded) and the error."""
    [manifest] = folder.glob("*.campaign.json")
    jobs = json.loads(manifest.read_text())["jobs"]
    tasks = sum(len(j["task_ids"]) for j in jobs)
    seconds = sum(s for j in jobs for s in j["task_seconds"])
    runs = sorted((folder / "examples" / "water_phantom" / "nodes_output").glob("run*/DoseAtPhantom.csv"))
    accumulator = ScorerAccumulator()
    for path in runs:
        accumulator.add(read_scorer(path), path)
    error = measure(accumulator, 0.5).relative_error or math.nan
    return tasks, seconds / 3600, 100 * error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, default=750_000)
    parser.add_argument("--target", type=float, default=0.8, help="percent")
    parser.add_argument("--first-wave", type=int, default=2)
    parser.add_argument("--single-task-error", type=float, default=2.06,
                        help="percent one task reaches at these histories (measured: 2.06)")
    args = parser.parse_args()
    needed = math.ceil((args.single_task_error / args.target) ** 2)
    guess = 2 * needed
    with tempfile.TemporaryDirectory(prefix="bench-adaptive-") as tmp:
        root = Path(tmp)
        adaptive = campaign(root, "bench-adaptive", TASK_COUNT=args.first_wave,
                            TARGET_UNCERTAINTY_PERCENT=args.target)
        fixed = campaign(root, "bench-fixed", TASK_COUNT=guess)
        run(adaptive, args.histories)
        run(fixed, args.histories)
        a_tasks, a_hours, a_error = tally(adaptive)
        f_tasks, f_hours, f_error = tally(fixed)
    print(f"example at {args.histories:,} histories a task, target {args.target:g} % "
          f"(the 1/sqrt(N) law: {needed} tasks; the guess: 2 x {needed} = {guess})")
    print(f"  adaptive: {a_tasks} tasks, {a_hours:.4f} task-hours, reached {a_error:.3g} %")
    print(f"  fixed:    {f_tasks} tasks, {f_hours:.4f} task-hours, reached {f_error:.3g} %")
    print(f"  ratio adaptive/fixed: tasks {a_tasks / f_tasks:.2f}, node-hours {a_hours / f_hours:.2f} "
          f"(both met the target: {a_error <= args.target and f_error <= args.target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
