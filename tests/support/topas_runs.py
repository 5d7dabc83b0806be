"""Small TOPAS run folders for the reducer's tests and benchmarks: a 3-D dose scorer CSV with
every statistic TOPAS reports, from per-history values drawn with numpy, runs of unequal
size (as real seeds' runs are), plus each run's stdout.txt and stderr.txt as a task leaves.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.topas.header import parse_header
from common.topas.scorer import indices_for_keys, write_scorer

STATS = ("Sum", "Mean", "Histories_with_Scorer_Active", "Count_in_Bin", "Second_Moment",
         "Variance", "Standard_Deviation", "Min", "Max")
SCORER = "Dose.csv"


def header(shape: tuple[int, int, int]):
    lines = ["# TOPAS Version: 4.0", "# Parameter File: tree.txt", "# Results for scorer: Dose",
             "# Scored in component: Phantom"]
    lines += [f"# {axis} in {n} bin{'s' if n > 1 else ' '} of 1 cm" for axis, n in zip("XYZ", shape)]
    lines.append("# DoseToMedium ( Gy ) : " + "".join(f"{s}   " for s in STATS))
    return parse_header(lines)


def statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """What TOPAS reports for the histories x (axis 0), per bin."""
    n = x.shape[0]
    total = x.sum(axis=0)
    mean = total / n
    count = np.count_nonzero(x, axis=0).astype(float)
    m2 = ((x - mean) ** 2).sum(axis=0)
    hit = count > 0
    return {"Sum": total, "Mean": mean, "Histories_with_Scorer_Active": np.full(total.shape, n),
            "Count_in_Bin": count, "Second_Moment": m2, "Variance": m2 / (n - 1),
            "Standard_Deviation": np.sqrt(m2 / (n - 1)),
            "Min": np.where(hit, np.where(x != 0, x, np.inf).min(axis=0), 9e99),
            "Max": np.where(hit, np.where(x != 0, x, -np.inf).max(axis=0), -9e99)}


def write_runs(folder: Path, indices: range | list[int], shape: tuple[int, int, int] = (4, 3, 2),
               seed: int = 7) -> list[Path]:
    """One folder `run<i>/` per index under `folder`, holding Dose.csv and the task's logs;
    run i has 40 + 13 * (i mod 5) histories. Returns the folders."""
    head = header(shape)
    keys = np.arange(head.n_bins)
    made = []
    for i in indices:
        rng = np.random.default_rng([seed, i])
        n = 40 + 13 * (i % 5)
        x = np.where(rng.random((n, head.n_bins)) < 0.3, rng.lognormal(0.0, 1.0, (n, head.n_bins)), 0.0)
        stats = statistics(x)
        run = folder / f"run{i}"
        run.mkdir(parents=True, exist_ok=True)
        write_scorer(run / SCORER, head, {s: stats[s] for s in STATS}, indices_for_keys(head, keys))
        (run / "stdout.txt").write_text(f"run {i}: {n} histories\n")
        (run / "stderr.txt").write_text("")
        made.append(run)
    return made
