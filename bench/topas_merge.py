"""Benchmark: merging R runs of a TOPAS scorer CSV, against pandas and against `cat`
(the consistency test's false alarms and power: bench/topas_consistency.py; patient-sized
grids in CSV and binary: bench/topas_merge_large.py).

Generates R run folders of one 3D scorer (default 100 runs of 100x100x10 voxels with
7 statistics, ~8.7 MB of CSV per run) from a known per-history model, then runs, each in
its own subprocess on the same warm files:
  * cat        - `cat` of all the files to /dev/null: the I/O floor;
  * pandas     - the straightforward approach: read every run with pandas, concatenate,
                 group by voxel, combine correctly (Chan's M2), write the merged CSV;
  * merge      - this project's merge (plots off) with polars and 2 or 1 worker threads,
                 and with numpy alone (as on a reducer node without polars).
For each: wall time, its ratio to pandas, peak memory over all its processes (PSS, the
sum of /proc/PID/smaps_rollup over the process and its children, sampled every 50 ms,
minus that of an idle interpreter with the same imports), and the worst relative error
of every statistic against the exact statistics of all histories. The idle baseline has
imported what the approach imports and read a tiny CSV the way it reads runs (polars'
threads and allocator exist then): what is left grows with the data. Ratios are what to
read, not seconds: the machines are shared and noisy.

The model: voxel v scores a_v in a history with probability p_v and b_v with p_v / 3,
else 0 (a, b, p fixed per voxel: the runs are a consistent campaign); in run r (N_r
histories) c ~ Binomial(N_r, p_v) histories score a_v and d ~ Binomial(N_r, p_v / 3)
score b_v. Each run's TOPAS statistics follow exactly; so do those of all histories
together (computed directly from the pooled counts, not with the merge's formulas).

    python -m bench.topas_merge [--runs 100] [--shape 100,100,10] [--data DIR] [--repeat 3]
    pip install -r bench/requirements.txt   # pandas, for the comparison only
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

STATS = ("Sum", "Mean", "Count_in_Bin", "Second_Moment", "Variance", "Standard_Deviation",
         "Histories_with_Scorer_Active")
NAME = "Dose.csv"
_EXPONENT = re.compile(r"e([+-]?)(\d)(?=[,\n])")
UNHIT_MIN, UNHIT_MAX = 9e99, -9e99


# ------------------------------------------------------------------ the model

@dataclass(frozen=True)
class Setup:
    runs: int
    shape: tuple[int, int, int]
    stats: tuple[str, ...]
    histories: int  # of run 0; run r has histories + 7 r, so runs differ in size
    seed: int = 12345

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))

    def run_histories(self, r: int) -> int:
        return self.histories + 7 * r


def voxel_model(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, ...]:
    """(p, a, b) per voxel, the same in every run."""
    rng = np.random.default_rng([seed, 2 ** 31])
    # A beam: hit probability falls off from the centre, half the voxels never hit.
    ni, nj, nk = shape
    i, j, _ = np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij")
    radius = np.hypot((i + 0.5) / ni - 0.5, (j + 0.5) / nj - 0.5).ravel()
    p = np.where(radius < 0.4, 0.02 * np.exp(-8 * radius ** 2), 0.0)
    voxels = int(np.prod(shape))
    return p, rng.lognormal(-22.0, 0.5, voxels), rng.lognormal(-21.0, 0.5, voxels)


def run_model(setup: Setup, r: int, bias: float = 1.0) -> tuple[np.ndarray, ...]:
    """(c, a, d, b) per voxel of run r: c histories score a, d score b, the rest 0."""
    rng = np.random.default_rng([setup.seed, r])
    n = setup.run_histories(r)
    p, a, b = voxel_model(setup.shape, setup.seed)
    c = rng.binomial(n, p).astype(np.float64)
    d = rng.binomial(n, p / 3).astype(np.float64)
    return c, a * bias, d, b * bias


def topas_statistics(n: int, c: np.ndarray, a: np.ndarray, d: np.ndarray,
                     b: np.ndarray) -> dict[str, np.ndarray]:
    """What TOPAS reports for N histories of which c score a and d score b."""
    total = c * a + d * b
    mean = total / n
    m2 = c * (a - mean) ** 2 + d * (b - mean) ** 2 + (n - c - d) * mean ** 2
    variance = m2 / (n - 1)
    hit = (c + d) > 0
    low = np.where(c > 0, a, np.inf)
    low = np.minimum(low, np.where(d > 0, b, np.inf))
    high = np.maximum(np.where(c > 0, a, -np.inf), np.where(d > 0, b, -np.inf))
    return {"Sum": total, "Mean": mean, "Count_in_Bin": c + d, "Second_Moment": m2,
            "Variance": variance, "Standard_Deviation": np.sqrt(variance),
            "Histories_with_Scorer_Active": np.full(total.shape, float(n)),
            "Min": np.where(hit, low, UNHIT_MIN), "Max": np.where(hit, high, UNHIT_MAX)}


def pooled_truth(setup: Setup) -> dict[str, np.ndarray]:
    """The statistics of all histories of all runs, straight from the model (two passes:
    the second needs the pooled mean)."""
    n = sum(setup.run_histories(r) for r in range(setup.runs))
    c_all, d_all = np.zeros(setup.voxels), np.zeros(setup.voxels)
    for r in range(setup.runs):
        c, a, d, b = run_model(setup, r)
        c_all += c
        d_all += d
    # a and b are the same in every run: the pooled histories are c_all a's and d_all b's.
    total = c_all * a + d_all * b
    count = c_all + d_all
    low = np.minimum(np.where(c_all > 0, a, np.inf), np.where(d_all > 0, b, np.inf))
    high = np.maximum(np.where(c_all > 0, a, -np.inf), np.where(d_all > 0, b, -np.inf))
    mean = total / n
    m2 = c_all * (a - mean) ** 2 + d_all * (b - mean) ** 2 + (n - count) * mean ** 2
    variance = m2 / (n - 1)
    hit = count > 0
    return {"Sum": total, "Mean": mean, "Count_in_Bin": count, "Second_Moment": m2,
            "Variance": variance, "Standard_Deviation": np.sqrt(variance),
            "Histories_with_Scorer_Active": np.full(setup.voxels, float(n)),
            "Min": np.where(hit, low, UNHIT_MIN), "Max": np.where(hit, high, UNHIT_MAX)}


# ------------------------------------------------------------------ writing runs

def header_lines(setup: Setup) -> list[str]:
    ni, nj, nk = setup.shape
    return ["# TOPAS Version: 3.9", "# Parameter File: bench.txt",
            "# Results for scorer: Dose", "# Scored in component: Phantom",
            f"# X in {ni} bins of 0.1 cm", f"# Y in {nj} bins of 0.1 cm",
            f"# Z in {nk} bins of 0.5 cm",
            "# DoseToMedium ( Gy ) : " + "".join(f"{s}   " for s in setup.stats)]


def sixteen_digits(values: np.ndarray) -> np.ndarray:
    """Values rounded to 16 significant digits, as TOPAS prints them (the shortest text
    of the rounded double then has 16 digits or fewer for 85 % of the values, 17 for
    the rest: the division rounds again)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 10.0 ** (15 - np.floor(np.log10(np.abs(values))))
        rounded = np.round(values * scale) / scale
    return np.where(np.isfinite(rounded) & (values != 0), rounded, values)


def write_run(setup: Setup, r: int, folder: Path) -> int:
    """Write run r as TOPAS would (rows i, j, k with k fastest, counts as integers, values
    with 16 significant digits); its size. With polars: Python's formatting of 10
    million values takes minutes."""
    import polars
    n = setup.run_histories(r)
    stats = topas_statistics(n, *run_model(setup, r))
    i, j, k = np.unravel_index(np.arange(setup.voxels), setup.shape)
    integers = ("Count_in_Bin", "Histories_with_Scorer_Active")
    frame = polars.DataFrame({"i": i, "j": j, "k": k, **{
        s: stats[s].astype(np.int64) if s in integers else sixteen_digits(stats[s])
        for s in setup.stats}})
    path = folder / f"run{r:03d}" / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(header_lines(setup)) + "\n")
        for start in range(0, setup.voxels, 1 << 17):
            text = frame.slice(start, 1 << 17).write_csv(include_header=False)
            # C++ streams pad exponents to two digits: 1.5e-07, not polars' 1.5e-7.
            handle.write(_EXPONENT.sub(r"e\g<1>0\g<2>", text).replace(",", ", "))
    return path.stat().st_size


def generate(setup: Setup, folder: Path) -> None:
    """Write the runs (in parallel), unless folder already holds this exact setup."""
    marker = folder / "setup.json"
    wanted = json.dumps({**setup.__dict__, "model": 5}, sort_keys=True)  # 5: e-07
    if marker.exists() and marker.read_text() == wanted:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(write_run, [setup] * setup.runs, range(setup.runs),
                      [folder] * setup.runs))
    marker.write_text(wanted)


# ------------------------------------------------------------------ the approaches

def approach_merge(folder: Path, out: Path, workers: int) -> None:
    from common.topas.merge import merge_runs
    merge_runs(sorted(folder.glob("run*")), out, plots=False, workers=workers)


def approach_pandas(folder: Path, out: Path, stats: tuple[str, ...]) -> None:
    import pandas as pd
    names = ["i", "j", "k", *stats]
    frames = [pd.read_csv(path, comment="#", header=None, names=names,
                          skipinitialspace=True)
              for path in sorted(folder.glob(f"run*/{NAME}"))]
    runs = pd.concat(frames, ignore_index=True)
    del frames
    n_r = runs["Histories_with_Scorer_Active"]
    groups = runs.groupby(["i", "j", "k"], sort=True)
    n = groups["Histories_with_Scorer_Active"].transform("sum")
    mean = groups["Sum"].transform("sum") / n
    # M2 = sum_r M2_r + sum_r N_r (Mean_r - Mean)^2: the runs' spread about the pooled mean
    runs["between"] = n_r * (runs["Sum"] / n_r - mean) ** 2
    merged = groups[["Sum", "Count_in_Bin", "Second_Moment", "between",
                     "Histories_with_Scorer_Active"]].sum()
    result = pd.DataFrame(index=merged.index)
    n_total = merged["Histories_with_Scorer_Active"]
    result["Sum"] = merged["Sum"]
    result["Mean"] = merged["Sum"] / n_total
    result["Count_in_Bin"] = merged["Count_in_Bin"]
    result["Second_Moment"] = merged["Second_Moment"] + merged["between"]
    result["Variance"] = result["Second_Moment"] / (n_total - 1)
    result["Standard_Deviation"] = np.sqrt(result["Variance"])
    result["Histories_with_Scorer_Active"] = n_total
    out.mkdir(parents=True, exist_ok=True)
    result[list(stats)].to_csv(out / NAME, header=False, float_format="%.16g")


def child(args: argparse.Namespace) -> None:
    """Run one approach in this process; print its wall time as JSON. With --idle, only
    get ready as the approach does before its first run and wait: the memory baseline."""
    folder, out = Path(args.data), Path(args.out)
    warm_up(args.approach)
    if args.idle:
        time.sleep(0.5)
        return
    started, cpu = time.perf_counter(), _cpu_seconds()
    if args.approach == "pandas":
        approach_pandas(folder, out, tuple(args.stats.split(",")))
    else:
        approach_merge(folder, out, args.workers)
    engine = _engine()
    print(json.dumps({"wall": time.perf_counter() - started, "cpu": _cpu_seconds() - cpu,
                      "engine": engine}))


def _engine() -> str:
    try:
        from common.topas import tables
    except ImportError:  # a --baseline-tree from before tables.py
        return "numpy (earlier version)"
    return tables.engine()


def _cpu_seconds() -> float:
    """CPU time of this process's threads and of its finished child processes."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def warm_up(approach: str) -> None:
    """The imports and the parser's threads and allocator, which do not grow with the
    data: a tiny CSV is read the way the approach reads runs."""
    with tempfile.TemporaryDirectory() as folder:
        tiny = Path(folder) / "tiny.csv"
        tiny.write_text("# h\n0, 1.5\n1, 2.5\n")
        if approach == "pandas":
            import pandas
            pandas.read_csv(tiny, comment="#", header=None, skipinitialspace=True)
            return
        from common.topas import merge  # noqa: F401
        try:
            from common.topas import tables
            tables.read_columns(tiny, 4, 2, 1)
        except ImportError:  # a --baseline-tree from before tables.py
            pass
        try:
            import pydicom  # noqa: F401  (the merge writes RT Dose files with it)
        except ImportError:
            pass


def tree_pss(root: int) -> float:
    """PSS in MiB of a process and all its descendants (0 for those already gone)."""
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
                    break
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def run_sampled(command: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run a command; its stdout and the peak PSS of its process tree (sampled)."""
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.PIPE, text=True,
                                   env=env)
        peak = 0.0
        while process.poll() is None:
            peak = max(peak, tree_pss(process.pid))
            time.sleep(0.05)  # reading smaps costs CPU the measured merge would miss
        error = process.stderr.read() if process.stderr else ""
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{error}")
        output.seek(0)
        return output.read(), peak


# ------------------------------------------------------------------ measuring

@dataclass(frozen=True)
class Measured:
    name: str
    wall: float
    peak: float | None = None
    idle: float | None = None
    errors: dict[str, float] | None = None
    engine: str = ""
    cpu: float | None = None


def measure(name: str, approach: str, setup: Setup, folder: Path, out: Path,
            workers: int, repeat: int, engine: str | None,
            tree: Path | None = None) -> Measured:
    """Best wall and CPU time of `repeat` runs (the machine is shared), largest peak
    memory. `tree`: run the merge of another source tree (an earlier version)."""
    command = [sys.executable, __file__, "--child", approach, "--data", str(folder),
               "--out", str(out), "--workers", str(workers), "--stats", ",".join(setup.stats)]
    env = dict(os.environ)
    if engine:
        env["TOPAS_MERGE_ENGINE"] = engine
    # the child imports `common` from this clone, or from the tree whose merge it times
    env["PYTHONPATH"] = str(tree or ROOT)
    idle = min(run_sampled(command + ["--idle"], env)[1] for _ in range(2))
    results, peaks = [], []
    for _ in range(repeat):
        output, peak = run_sampled(command, env)
        results.append(json.loads(output.strip().splitlines()[-1]))
        peaks.append(peak)
    return Measured(name, min(r["wall"] for r in results), max(peaks), idle,
                    engine=results[0].get("engine", ""), cpu=min(r["cpu"] for r in results))


def measure_cat(folder: Path, repeat: int) -> Measured:
    files = sorted(str(p) for p in folder.glob(f"run*/{NAME}"))
    walls = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - started)
    return Measured("cat (I/O floor)", min(walls))


def worst_errors(merged: dict[str, np.ndarray], truth: dict[str, np.ndarray],
                 stats: tuple[str, ...]) -> dict[str, float]:
    """Worst relative error per statistic (a zero must be exactly zero)."""
    worst = {}
    for name in stats:
        got, exact = merged[name], truth[name]
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(exact != 0, np.abs(got / exact - 1), np.abs(got))
        worst[name] = float(np.max(relative))
    return worst


def merged_by_voxel(path: Path, setup: Setup, pandas_output: bool) -> dict[str, np.ndarray]:
    if pandas_output:
        table = np.loadtxt(path, delimiter=",")
        keys = np.ravel_multi_index(tuple(table[:, :3].astype(int).T), setup.shape)
        return {name: table[np.argsort(keys), 3 + s] for s, name in enumerate(setup.stats)}
    from common.topas import read_scorer
    scorer = read_scorer(path)
    order = np.argsort(scorer.bin_keys())
    return {name: values[order] for name, values in scorer.values.items()}


def report(setup: Setup, rows: list[Measured], run_megabytes: float) -> None:
    reference = next((m for m in rows if m.name == "pandas"),
                     next((m for m in rows if m.name.startswith("merge before")), None))
    one_run = setup.voxels * (3 + len(setup.stats)) * 8 / 2 ** 20
    print(f"\n{setup.runs} runs of {'x'.join(map(str, setup.shape))} voxels, "
          f"{len(setup.stats)} statistics, {run_megabytes:.1f} MB of CSV per run; "
          f"one run's arrays: {one_run:.1f} MiB; ratios against "
          f"{reference.name if reference else '-'}\n")
    print(f"{'approach':30} {'wall s':>7} {'ratio':>7} {'CPU s':>7} {'ratio':>7} "
          f"{'PSS MiB':>8} {'above idle':>10} {'x one run':>9}  worst error")
    for m in rows:
        wall_ratio = f"{reference.wall / m.wall:.2f}x" if reference else "-"
        cpu_ratio = (f"{reference.cpu / m.cpu:.2f}x" if reference and reference.cpu and m.cpu
                     else "-")
        cpu = f"{m.cpu:7.2f}" if m.cpu is not None else f"{'-':>7}"
        peak = f"{m.peak:8.0f}" if m.peak is not None else f"{'-':>8}"
        above = (f"{m.peak - m.idle:10.1f} {(m.peak - m.idle) / one_run:8.1f}x"
                 if m.peak is not None and m.idle is not None else f"{'-':>10} {'-':>9}")
        worst = f"  {max(m.errors.values()):.1e}" if m.errors else ""
        print(f"{m.name:30} {m.wall:7.2f} {wall_ratio:>7} {cpu} {cpu_ratio:>7} {peak} "
              f"{above}{worst}")
    print("\n'ratio': the reference's time / this time (higher is faster). 'CPU': user + "
          "system time of all its threads and processes (less disturbed by other work on "
          "a shared machine than wall time). 'PSS': peak over all the approach's processes; "
          "'above idle': minus an idle interpreter that imported the same and read a tiny "
          "CSV; 'x one run': that in units of one run's arrays. 'worst error': largest "
          "relative error of any statistic against the pooled truth.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--shape", default="100,100,10", help="voxels i,j,k")
    parser.add_argument("--histories", type=int, default=100000, help="histories of run 0")
    parser.add_argument("--stats", default=",".join(STATS), help="statistics, in order")
    parser.add_argument("--data", help="folder for the generated runs (reused when it "
                                       "holds the same setup; default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each approach; the best wall time counts (default 3)")
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--skip-numpy", action="store_true",
                        help="leave out the merge with numpy alone (the slowest)")
    parser.add_argument("--baseline-tree", type=Path,
                        help="also time the merge of this source tree (e.g. `git archive "
                             "REV common | tar -x -C DIR`): the merge before a change")
    parser.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", dest="approach", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.approach:
        child(args)
        return 0
    setup = Setup(runs=args.runs, shape=tuple(int(n) for n in args.shape.split(",")),
                  stats=tuple(args.stats.split(",")), histories=args.histories)
    with tempfile.TemporaryDirectory(prefix="bench-topas-") as tmp:
        folder = Path(args.data) if args.data else Path(tmp) / "runs"
        started = time.perf_counter()
        generate(setup, folder)
        print(f"generated {setup.runs} runs in {folder} ({time.perf_counter() - started:.1f} s)")
        truth = pooled_truth(setup)
        run_megabytes = (folder / "run000" / NAME).stat().st_size / 1e6
        measure_cat(folder, 1)  # warm the page cache for everyone
        rows = [measure_cat(folder, args.repeat)]
        plans = [] if args.skip_pandas else [("pandas", "pandas", 1, None)]
        from common.topas.streams import default_workers  # what a user gets on this machine
        default = default_workers()
        plans += [(f"merge polars, {default} workers (default)", "merge", default, "polars"),
                  ("merge polars, 2 workers", "merge", 2, "polars"),
                  ("merge polars, 1 worker", "merge", 1, "polars")]
        plans += [] if args.skip_numpy else [("merge numpy only, 2 workers", "merge", 2,
                                              "numpy")]
        if args.baseline_tree:
            plans.append(("merge before, 2 workers", "merge", 2, None))
        for name, approach, workers, engine in plans:
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            tree = args.baseline_tree if name.startswith("merge before") else None
            measured = measure(name, approach, setup, folder, out, workers, args.repeat,
                               engine, tree)
            merged = merged_by_voxel(out / NAME, setup, approach == "pandas")
            rows.append(Measured(measured.name, measured.wall, measured.peak, measured.idle,
                                 worst_errors(merged, truth, setup.stats), measured.engine,
                                 measured.cpu))
        report(setup, rows, run_megabytes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
