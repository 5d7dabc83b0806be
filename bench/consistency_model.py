"""Generated campaigns for the merge's consistency test: exact TOPAS statistics of runs of
any size, from a per-history model with the skewness of real dose deposits.

Voxel v (a 20 x 20 x 10 grid, a beam along Z whose hit probability falls off from the
axis) receives in one history: nothing (most histories), a small deposit a_v (probability
p_v), a larger one 2.7 a_v (p_v / 3) or, rarely, a large one 30 a_v (p_v / 300): skewed,
with many zero histories, as dose scoring is. A run of N histories draws, per voxel, the
multinomial counts of histories of each kind; its Sum, Count_in_Bin and Second_Moment
follow exactly (compound sums, no normal approximation). With `correlated`, a history
scores a track of TRACK voxels along Z (one multinomial per column of voxels: a history
starts at most one track per column), so neighbouring voxels are correlated as in real
dose grids. With `energy_bins`, each voxel has that many energy bins, each its own
deposit kind. A biased run has every deposit multiplied by its factor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.topas.combine import ScorerAccumulator
from common.topas.consistency import ConsistencyReport
from common.topas.header import parse_header
from common.topas.scorer import Scorer, all_indices

SHAPE = (20, 20, 10)
TRACK = 5
STATS = ("Sum", "Count_in_Bin", "Second_Moment", "Histories_with_Scorer_Active")
# deposit kinds: (size relative to a_v, probability relative to p_v)
KINDS = ((1.0, 1.0), (2.7, 1 / 3), (30.0, 1 / 300))


@dataclass(frozen=True)
class Shape:
    """A campaign shape: run sizes, the biased run and its factor, the voxel model."""

    name: str
    sizes: tuple[int, ...]
    biased: int | None = None
    bias: float = 1.0
    correlated: bool = False
    energy_bins: int = 0


def header_lines(energy_bins: int = 0) -> list[str]:
    ni, nj, nk = SHAPE
    lines = ["# TOPAS Version: 3.9", "# Parameter File: bench.txt",
             "# Results for scorer: Dose", "# Scored in component: Phantom",
             f"# X in {ni} bins of 0.1 cm", f"# Y in {nj} bins of 0.1 cm",
             f"# Z in {nk} bins of 0.5 cm",
             "# DoseToMedium ( Gy ) : " + "".join(f"{s}   " for s in STATS)]
    if energy_bins:
        lines.append(f"# Binned by pre-step energy in {energy_bins - 2} bins of 1 MeV "
                     "from 0 MeV to 10 MeV")
    return lines


def voxel_model(seed: int, correlated: bool) -> tuple[np.ndarray, np.ndarray]:
    """(p, a) per voxel: the chance of a small deposit (of a track start when
    correlated) and its size; the same in every run of a campaign."""
    rng = np.random.default_rng([seed, 2 ** 31])
    ni, nj, nk = SHAPE
    i, j, _ = np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij")
    radius = np.hypot((i + 0.5) / ni - 0.5, (j + 0.5) / nj - 0.5).ravel()
    p = np.where(radius < 0.4, 0.02 * np.exp(-8 * radius ** 2), 0.0)
    if correlated:
        p = p / TRACK
    return p, rng.lognormal(-22.0, 0.5, p.size)


def run_counts(rng: np.random.Generator, n: int, p: np.ndarray,
               correlated: bool) -> np.ndarray:
    """(voxels, kinds) histories of each deposit kind in each voxel."""
    probabilities = np.stack([p * share for _, share in KINDS], axis=-1)
    if not correlated:
        rest = 1 - probabilities.sum(axis=-1, keepdims=True)
        return rng.multinomial(n, np.concatenate([probabilities, rest], -1))[:, :-1]
    ni, nj, nk = SHAPE
    cells = probabilities.reshape(ni * nj, nk * len(KINDS))
    rest = 1 - cells.sum(axis=-1, keepdims=True)
    starts = rng.multinomial(n, np.concatenate([cells, rest], -1))[:, :-1]
    starts = starts.reshape(ni, nj, nk, len(KINDS))
    hits = np.zeros_like(starts)
    for step in range(TRACK):
        hits[:, :, step:] += starts[:, :, :nk - step]
    return hits.reshape(-1, len(KINDS))


def run_statistics(n: int, counts: np.ndarray, a: np.ndarray,
                   factor: float) -> dict[str, np.ndarray]:
    """TOPAS's statistics of a run whose histories deposit KINDS of a (times factor)."""
    sizes = np.array([size for size, _ in KINDS]) * factor
    deposits = a[..., None] * sizes  # (voxels[, energy bins], kinds)
    total = (counts * deposits).sum(axis=-1)
    mean = total / n
    hits = counts.sum(axis=-1)
    m2 = (counts * (deposits - mean[..., None]) ** 2).sum(axis=-1) + (n - hits) * mean ** 2
    return {"Sum": total, "Count_in_Bin": hits.astype(np.float64), "Second_Moment": m2,
            "Histories_with_Scorer_Active": np.full(total.shape, float(n))}


def campaign_runs(shape: Shape, seed: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """The runs of one generated campaign: (histories, statistics) each."""
    p, a = voxel_model(seed, shape.correlated)
    runs = []
    for r, n in enumerate(shape.sizes):
        rng = np.random.default_rng([seed, r, len(shape.sizes)])
        factor = shape.bias if r == shape.biased else 1.0
        if shape.energy_bins:
            # each energy bin its own share of the voxel's deposits, sizes spread
            shares = np.linspace(1.0, 0.2, shape.energy_bins) / np.linspace(
                1.0, 0.2, shape.energy_bins).sum()
            counts = np.stack([run_counts(rng, n, p * s, shape.correlated)
                               for s in shares], axis=1)
            sizes = a[:, None] * np.linspace(0.5, 2.0, shape.energy_bins)
            runs.append((n, run_statistics(n, counts, sizes, factor)))
        else:
            runs.append((n, run_statistics(n, run_counts(rng, n, p, shape.correlated), a,
                                           factor)))
    return runs


def check(shape: Shape, seed: int,
          runs: list[tuple[int, dict[str, np.ndarray]]] | None = None) -> ConsistencyReport:
    """The merge's consistency test on one generated campaign (runs named run0, run1...)."""
    header = parse_header(header_lines(shape.energy_bins))
    accumulator = ScorerAccumulator(expected_runs=len(shape.sizes))
    for r, (_, stats) in enumerate(runs if runs is not None else campaign_runs(shape, seed)):
        scorer = Scorer(header, all_indices(header), stats, every_bin_in_order=True)
        accumulator.add(scorer, f"run{r}")
    return accumulator.consistency()
