"""Benchmark: the local backend against `xargs -P <cpus>` running the same commands.

Each of N tasks burns S seconds of CPU. Both runs happen in this process, one after the
other, on the same machine, so the ratio (local backend wall time / xargs wall time) is
what to read, not the seconds: the machines here are shared and noisy. Aim: <= 1.05.

    python bench/local_vs_xargs.py [--tasks 64] [--seconds 1.0] [--repeat 1]
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.backends.local import LocalBackend, usable_cpus  # noqa: E402
from common.model import JobSpec, PoolSpec, TaskSpec  # noqa: E402

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def command(seconds: float) -> str:
    return f"python3 -c {shlex.quote(BURN.format(s=seconds))}"


def run_xargs(tasks: int, seconds: float, cpus: int) -> float:
    lines = "\n".join(f"{i}" for i in range(tasks)) + "\n"
    started = time.perf_counter()
    subprocess.run(["xargs", "-P", str(cpus), "-I{}", "bash", "-c", command(seconds)],
                   input=lines, text=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_local(tasks: int, seconds: float, cpus: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        backend = LocalBackend(Path(tmp), cpus=cpus)
        specs = tuple(TaskSpec(f"task-{i}", i, command(seconds)) for i in range(tasks))
        started = time.perf_counter()
        backend.prepare_pool(PoolSpec("bench", cpus, None, None), lambda _: None)
        backend.submit_job(JobSpec("bench-job", "bench", "bench", specs), lambda _: None)
        while True:
            counts = backend.task_counts("bench-job")
            if counts.active == 0 and counts.running == 0:
                break
            time.sleep(backend.poll_seconds)
        elapsed = time.perf_counter() - started
        assert counts.succeeded == tasks, counts
        backend.delete_pool("bench")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64, help="number of tasks (default 64)")
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per task")
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds to run")
    args = parser.parse_args()
    cpus = usable_cpus()
    print(f"{args.tasks} tasks x {args.seconds:g} s CPU, {cpus} CPU(s)")
    ratios = []
    for round_ in range(1, args.repeat + 1):
        baseline = run_xargs(args.tasks, args.seconds, cpus)
        local = run_local(args.tasks, args.seconds, cpus)
        ratios.append(local / baseline)
        print(f"round {round_}: xargs -P {cpus} {baseline:.2f} s, local backend {local:.2f} s, "
              f"ratio {local / baseline:.3f}")
    print(f"ratio local/xargs: {min(ratios):.3f} best, {sorted(ratios)[len(ratios) // 2]:.3f} median"
          " (aim <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
