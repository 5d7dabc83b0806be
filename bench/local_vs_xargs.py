"""Benchmark: the local backend against `xargs -P <cpus>` running the same commands.

Each of N tasks burns S seconds of CPU in the interpreter running this benchmark, on both
sides (a `python3` found on PATH may be a launcher shim costing ~0.1 s a start, which
would flatter the local backend), and each runs in its own session on both sides. Both runs happen in this process, one after the other,
so the ratio (local backend wall time / xargs wall time) is what to read, not the seconds:
the machines here are shared and noisy. Two sizes by default: 64 tasks x 1 s (the CPU is
the work) and 500 tasks x 0.05 s (the backend's own cost per task shows). Aim: <= 1.05.

    python -m bench.local_vs_xargs [--sizes 64x1,500x0.05] [--repeat 1]
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from common.backends.local.backend import LocalBackend, usable_cpus
from common.model import JobSpec, PoolSpec, TaskSpec

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"
PYTHON = sys.executable  # the same interpreter on both sides


def command(seconds: float) -> str:
    return f"{shlex.quote(PYTHON)} -c {shlex.quote(BURN.format(s=seconds))}"


def run_xargs(tasks: int, seconds: float, cpus: int) -> float:
    lines = "\n".join(f"{i}" for i in range(tasks)) + "\n"
    started = time.perf_counter()
    # setsid: each task in its own session, as the local backend starts them. With the
    # kernel's autogroup scheduling a session is a scheduling group of its own, so on a busy
    # machine tasks in sessions of their own get more of the CPU than tasks sharing one.
    subprocess.run(["xargs", "-P", str(cpus), "-I{}", "setsid", "-w", "bash", "-c", command(seconds)],
                   input=lines, text=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_local(tasks: int, seconds: float, cpus: int) -> tuple[float, float]:
    """Wall time, and the CPU the backend itself used (pool agent + this client) per task:
    what it takes from the tasks, measured whatever else the machine is doing."""
    with tempfile.TemporaryDirectory(prefix="bench-local-") as tmp:
        backend = LocalBackend(Path(tmp), cpus=cpus)
        specs = tuple(TaskSpec(f"task-{i}", i, command(seconds)) for i in range(tasks))
        client_cpu = time.process_time()
        started = time.perf_counter()
        backend.prepare_pool(PoolSpec("bench", cpus, None, None), lambda _: None)
        backend.submit_job(JobSpec("bench-job", "bench", "bench", specs), lambda _: None)
        while True:
            counts = backend.task_counts("bench-job")
            if counts.active == 0 and counts.running == 0:
                break
            time.sleep(backend.poll_seconds)
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        assert counts.succeeded == tasks, counts
        agent_cpu = cpu_seconds(int((Path(tmp) / "pools" / "bench" / "agent.pid").read_text()))
        backend.delete_pool("bench")
    return elapsed, (agent_cpu + client_cpu) / tasks * 1000


def parse_sizes(text: str) -> list[tuple[int, float]]:
    sizes = []
    for item in text.split(","):
        count, _, seconds = item.partition("x")
        sizes.append((int(count), float(seconds)))
    return sizes


def bench_size(tasks: int, seconds: float, cpus: int, repeat: int) -> None:
    print(f"{tasks} tasks x {seconds:g} s CPU, {cpus} CPU(s), interpreter {PYTHON}")
    ratios, overheads = [], []
    for round_ in range(1, repeat + 1):
        baseline = run_xargs(tasks, seconds, cpus)
        local, cpu_ms = run_local(tasks, seconds, cpus)
        ratios.append(local / baseline)
        overheads.append(cpu_ms)
        print(f"  round {round_}: xargs -P {cpus} {baseline:.2f} s, local backend {local:.2f} s, "
              f"ratio {local / baseline:.3f}; backend CPU {cpu_ms:.2f} ms/task")
    median = sorted(ratios)[len(ratios) // 2]
    print(f"  ratio local/xargs: {min(ratios):.3f} best, {median:.3f} median (aim <= 1.05); "
          f"backend CPU (agent + client) {sorted(overheads)[len(overheads) // 2]:.2f} ms/task median")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x1,500x0.05",
                        help="comma-separated TASKSxSECONDS (default 64x1,500x0.05)")
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds per size")
    args = parser.parse_args()
    cpus = usable_cpus()
    for tasks, seconds in parse_sizes(args.sizes):
        bench_size(tasks, seconds, cpus, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
