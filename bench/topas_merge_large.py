"""Benchmark: merging patient-sized grids (issue 23) — 10 runs of 200 x 200 x 200 voxels
(8 M) in CSV and in binary (.binheader + .bin): wall time and peak memory of the merge
against `cat` of the same files, a minimal numpy loop (read each .bin, add it) and, where
it fits, pandas.

Each approach runs in its own subprocess on the same warm files; peak memory is PSS over
its processes (sampled every 50 ms) minus an idle interpreter with the same imports
(bench/topas_merge.py's method). "one run's arrays" is one run's statistics that the
merge folds (Sum, Count_in_Bin, Second_Moment, Histories_with_Scorer_Active: 4 x 8 bytes
a voxel), the yardstick of issue 23's aim (peak <= 3x).

    python -m bench.topas_merge_large [--runs 10] [--shape 200,200,200] [--data DIR]
                                      [--memory-mb 512] [--formats csv,binary]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.topas_merge import (STATS, Setup, generate, run_model, run_sampled,
                               topas_statistics)

ROOT = Path(__file__).resolve().parents[1]
FOLDED = 4  # statistics the merge folds of the 7 written


def write_binary_run(setup: Setup, r: int, folder: Path) -> None:
    from bench.topas_merge import header_lines
    from common.topas.binary import write_binary_scorer
    from common.topas.header import parse_header
    header = parse_header(header_lines(setup))
    stats = topas_statistics(setup.run_histories(r), *run_model(setup, r))
    path = folder / f"run{r:03d}" / "Dose.binheader"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_binary_scorer(path, header, {name: stats[name] for name in setup.stats})


def generate_binary(setup: Setup, folder: Path) -> None:
    marker = folder / "setup.json"
    wanted = json.dumps({**setup.__dict__, "model": "binary 1"}, sort_keys=True)
    if marker.exists() and marker.read_text() == wanted:
        return
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(write_binary_run, [setup] * setup.runs, range(setup.runs),
                      [folder] * setup.runs))
    marker.write_text(wanted)


def child(args: argparse.Namespace) -> None:
    import common.topas.merge  # noqa: F401  (the imports are in the idle baseline)
    try:
        import pydicom  # noqa: F401  (1.3 s to import: the merge writes RT Dose with it)
    except ImportError:
        pass
    if args.idle:
        time.sleep(0.5)
        return
    folder = Path(args.data)
    started = time.perf_counter()
    if args.approach == "numpy":
        files = sorted(folder.glob("run*/Dose.bin"))
        total = np.fromfile(files[0])
        for path in files[1:]:
            total += np.fromfile(path)
    elif args.approach == "pandas":
        from bench.topas_merge import approach_pandas
        approach_pandas(folder, Path(args.out), STATS)
    else:
        from common.topas.merge import merge_runs
        merge_runs(sorted(folder.glob("run*")), Path(args.out), plots=False,
                   memory_mb=args.memory_mb, workers=args.workers,
                   partial=args.approach == "partial")
    print(json.dumps({"wall": time.perf_counter() - started}))


def measure(approach: str, folder: Path, out: Path, memory_mb: int,
            workers: int | None) -> tuple[float, float]:
    command = [sys.executable, "-m", "bench.topas_merge_large", "--child", approach,
               "--data", str(folder), "--out", str(out), "--memory-mb", str(memory_mb)]
    if workers:
        command += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    idle = run_sampled(command + ["--idle"], env)[1]
    output, peak = run_sampled(command, env)
    return json.loads(output.strip().splitlines()[-1])["wall"], peak - idle


def cat(files: list[Path]) -> float:
    started = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--shape", default="200,200,200")
    parser.add_argument("--data", help="folder for the generated runs (kept and reused)")
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--formats", default="csv,binary")
    parser.add_argument("--pandas", action="store_true", help="also pandas (CSV; needs "
                        "about 10 x the CSV's numbers in memory)")
    parser.add_argument("--child", dest="approach", help=argparse.SUPPRESS)
    parser.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.approach:
        child(args)
        return 0
    setup = Setup(runs=args.runs, shape=tuple(int(n) for n in args.shape.split(",")),
                  stats=STATS, histories=100000)
    one_run = setup.voxels * FOLDED * 8 / 2 ** 20
    base = Path(args.data or tempfile.mkdtemp(prefix="bench-large-"))
    print(f"{setup.runs} runs of {args.shape} voxels, 7 statistics; one run's folded "
          f"arrays {one_run:.0f} MiB; budget --memory-mb {args.memory_mb}", flush=True)
    print("| format | approach | wall s | peak MiB above idle | x one run's arrays |")
    print("|---|---|---|---|---|")
    for form in args.formats.split(","):
        folder = base / form
        started = time.perf_counter()
        (generate if form == "csv" else generate_binary)(setup, folder)
        files = sorted(folder.glob("run*/Dose.csv" if form == "csv" else "run*/Dose.bin"))
        size = sum(path.stat().st_size for path in files) / 2 ** 30
        print(f"<!-- generated {form}: {size:.1f} GiB in {time.perf_counter() - started:.0f} "
              "s -->", flush=True)
        cat(files)  # warm the page cache
        rows = [("cat (I/O floor)", cat(files), 0.0)]
        plans = [("merge (this tool: test, summary, RT Dose)", "merge", None),
                 ("merge --partial (a tree's first level: merged file only)", "partial",
                  None)]
        plans += [("minimal numpy loop: fromfile + add", "numpy", None)] if form == "binary" \
            else [("merge, 1 worker", "merge", 1)]
        plans += [("pandas read+concat+groupby", "pandas", None)] if (
            form == "csv" and args.pandas) else []
        for name, approach, workers in plans:
            wall, peak = measure(approach, folder, base / f"out-{form}-{approach}",
                                 args.memory_mb, workers)
            rows.append((name, wall, peak))
        for name, wall, peak in rows:
            ratio = f"{peak / one_run:.2f}x" if peak else "-"
            print(f"| {form} ({size:.1f} GiB) | {name} | {wall:.1f} | {peak:.0f} | {ratio} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
