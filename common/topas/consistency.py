"""Do the runs of a campaign agree? Each run against all runs pooled, on the bins it knows.

A run from a node with a wrong image, another TOPAS version or a changed parameter
differs systematically from the others, and merging it silently biases the result. Per
run r (N_r histories, Sum s_rb) and candidate bin b (ledger.py), with the pooled
N = sum N_r, mean m_b = Sum_b / N and variance per history v_b = M2_b / (N - 1):

    z_rb = (s_rb / N_r - m_b) / sqrt(v_b (1 / N_r - 1 / N))

Why this is exact: if the runs are consistent, every history of a bin comes from one
distribution, and given the pooled histories (their multiset) the split into runs of
N_1, N_2, ... histories is a uniformly random partition. Under that permutation
distribution s_rb / N_r is the mean of N_r histories drawn without replacement, so
E[z_rb] = 0 and E[z_rb^2] = 1 exactly, whatever the skewness of the deposits, the sizes
of the runs or their ratios (a small run's z is not shifted: the variance in its
denominator is the pooled one, not its own, which would be small exactly when its rare
large deposits are missing). m_b and v_b are functions of the pooled histories, so bins
chosen from them are chosen blind to how the histories fell into runs.

Bins tested for run r: candidates (value-blind, ledger.py) where the expected relative
standard error of the smaller side of the comparison, sqrt(v_b / min(N_r, N - N_r)) /
m_b, is at most MAX_RUN_RELATIVE_ERROR — a small run is tested on fewer bins (two runs on
the same bins: their z are the same but for the sign); with fewer than MIN_TEST_BINS a
run is named as not tested. Two statistics:
  * the run's relative deviation from the pool, (s_rb / N_r - m_b) / m_b averaged over
    its bins weighted by their inverse relative variance (mean 0 exactly; the best
    estimate of a bias of either sign, printed as "+2.80 % +- 0.08 %");
  * the mean z^2 (any change of shape; level 1).
Neighbouring voxels are correlated (one history scores in several), so standard errors
are measured from blocks of neighbouring bins (batch means, Student t with blocks - 1
degrees of freedom). For the deviation the inflation of its variance by the correlations
is the same number for every run tested on the same bins (the bins' correlations and
weights are alike under the permutation distribution), so it is pooled over the other
runs tested on about as many bins, with all their degrees of freedom. A run is
inconsistent when either p-value (two-sided for the deviation, upper tail for z^2) is
below ALPHA / (2 x runs); the most extreme is removed from the pool and the rest tested
again, so one bad run does not make the others look bad. Two runs that disagree cannot
tell which is wrong: both are named.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from common.topas.ledger import RunValues

ALPHA = 1e-3
MAX_RUN_RELATIVE_ERROR = 0.20
MIN_TEST_BINS = 100
_MAX_BLOCKS = 30
_MIN_BLOCKS = 4
_MIN_BLOCK_BINS = 25


@dataclass(frozen=True)
class Pooled:
    """The pooled statistics of all runs at the candidate elements."""

    histories: int
    total: np.ndarray  # Sum
    m2: np.ndarray  # Second_Moment of all histories
    usable: np.ndarray  # False outside an RT structure


@dataclass(frozen=True)
class RunCheck:
    """One run's statistics against the pool. `bins` 0: not tested (`histories` too few)."""

    source: str
    mean_z: float  # the mean z over its bins, in units of its standard error
    chi2_per_bin: float  # the mean z^2 (about 1 for a consistent run)
    p_value: float  # the smaller of the two tests' p-values, uncorrected
    inconsistent: bool = False
    bins: int = 0
    histories: int = 0
    deviation: float = 0.0  # (run - pool) / pool, weighted over its bins
    deviation_error: float = 0.0  # its standard error
    inflation: float = 1.0  # its variance / that of independent bins (measured, blocks)
    dof: int = 0  # degrees of freedom of that measurement
    p_spread: float = 1.0  # the p-value of the mean z^2 alone

    @property
    def tested(self) -> bool:
        return self.bins >= MIN_TEST_BINS


@dataclass(frozen=True)
class ConsistencyReport:
    """The outcome for one scorer. `tested` False: `reason` says why not."""

    tested: bool
    reason: str
    bins: int = 0  # the most bins any run was tested on
    threshold: float = 0.0  # a run is inconsistent below this p-value
    runs: tuple[RunCheck, ...] = ()
    identical: tuple[tuple[str, str], ...] = ()

    @property
    def inconsistent(self) -> tuple[RunCheck, ...]:
        return tuple(run for run in self.runs if run.inconsistent)

    def lines(self) -> list[str]:
        """What the summary and the error say about it."""
        lines = [f"Identical runs (the same seed twice?): {a} and {b}; they are not "
                 "independent, so the uncertainties are too small"
                 for a, b in self.identical]
        if not self.tested:
            return lines + [f"Consistency of the runs not tested: {self.reason}"]
        tested = [run for run in self.runs if run.tested]
        head = (f"Consistency of the runs, each against all runs pooled over up to "
                f"{self.bins} bins (those it knows to {MAX_RUN_RELATIVE_ERROR:.0%}; "
                f"inconsistent below p = {self.threshold:.2g}): ")
        bad = self.inconsistent
        if bad:
            lines += [head + f"{len(bad)} of {len(tested)} INCONSISTENT"] + [
                f"  {run.source}: {run.deviation:+.2%} +- {run.deviation_error:.2%} from "
                f"the pool (mean z = {run.mean_z:+.2f} standard errors), z2/bin = "
                f"{run.chi2_per_bin:.3f} over {run.bins} bins (p = {run.p_value:.2g})"
                for run in bad]
        else:
            worst = max(tested, key=lambda run: abs(run.mean_z))
            lines.append(head + f"all {len(tested)} tested consistent (largest deviation "
                         f"{worst.deviation:+.2%} +- {worst.deviation_error:.2%}, "
                         f"{abs(worst.mean_z):.2f} standard errors; largest z2/bin "
                         f"{max(run.chi2_per_bin for run in tested):.3f})")
        return lines + [f"  {run.source}: not tested: its {run.histories} histories know "
                        f"{run.bins} bins to {MAX_RUN_RELATIVE_ERROR:.0%} ({MIN_TEST_BINS} "
                        "needed)" for run in self.runs if not run.tested]


def test_runs(runs: list[RunValues], pooled: Pooled,
              identical: tuple[tuple[str, str], ...] = ()) -> ConsistencyReport:
    """Test every run against the pool of all; flag the worst while it is below the
    threshold and test the rest without it."""
    if len(runs) < 2:
        return ConsistencyReport(False, "fewer than two runs", identical=identical)
    sums = np.array([run.sums for run in runs], dtype=np.float64)
    m2 = np.array([run.m2 for run in runs], dtype=np.float64)
    n = np.array([run.histories for run in runs], dtype=np.float64)
    threshold = ALPHA / (2 * len(runs))
    pool = _Pool(float(n.sum()), pooled.total.astype(np.float64),
                 pooled.m2.astype(np.float64), pooled.usable)
    active, flagged = list(range(len(runs))), {}
    while len(active) >= 2:
        checks = _pooled_inflation({r: _check(runs[r], sums[r], n[r], pool) for r in active})
        tested = [r for r in active if checks[r].tested]
        if not tested:
            break
        worst = min(tested, key=lambda r: checks[r].p_value)
        if checks[worst].p_value >= threshold:
            break
        named = active if len(active) == 2 else [worst]
        for r in named:
            flagged[r] = _flag(checks[r])
        if len(active) == 2:
            active = []
            break
        pool = pool.without(sums[worst], m2[worst], n[worst])
        active.remove(worst)
    final = _pooled_inflation({r: _check(runs[r], sums[r], n[r], pool) for r in active}) if len(
        active) >= 2 else {}
    results = tuple(flagged.get(r) or final.get(r) or RunCheck(
        runs[r].source, 0.0, 1.0, 1.0, histories=runs[r].histories) for r in range(len(runs)))
    if not any(run.tested for run in results):
        most = max(run.bins for run in results)
        return ConsistencyReport(False, f"no run knows {MIN_TEST_BINS} bins to "
                                 f"{MAX_RUN_RELATIVE_ERROR:.0%} (at most {most})",
                                 identical=identical)
    return ConsistencyReport(True, "", bins=max(run.bins for run in results),
                             threshold=threshold, runs=results, identical=identical)


@dataclass(frozen=True)
class _Pool:
    histories: float
    total: np.ndarray
    m2: np.ndarray
    usable: np.ndarray

    def without(self, sums: np.ndarray, m2: np.ndarray, n: float) -> _Pool:
        """The pool less one run (Chan's combination of two groups, undone)."""
        rest = self.histories - n
        mean_rest = (self.total - sums) / rest
        spread = n * rest / self.histories * (sums / n - mean_rest) ** 2
        return _Pool(rest, self.total - sums, np.maximum(self.m2 - m2 - spread, 0.0),
                     self.usable)


def _check(run: RunValues, sums: np.ndarray, n: float, pool: _Pool) -> RunCheck:
    total = pool.histories
    if n >= total:
        return RunCheck(run.source, 0.0, 1.0, 1.0, histories=run.histories)
    mean = pool.total / total
    variance = pool.m2 / (total - 1)
    # z compares the run with the rest: its skewness comes from the smaller of the two
    judged = min(n, total - n)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.sqrt(variance / judged) / mean
        bins = pool.usable & (mean > 0) & (variance > 0) & (
            expected <= MAX_RUN_RELATIVE_ERROR)
    count = int(np.count_nonzero(bins))
    if count < MIN_TEST_BINS:
        return RunCheck(run.source, 0.0, 1.0, 1.0, bins=count, histories=run.histories)
    spread = np.sqrt(variance[bins] * (1 / n - 1 / total))
    z = (sums[bins] / n - mean[bins]) / spread
    # the run's relative deviation from the pool, each bin weighted by how well it is
    # known (inverse variance): the best estimate of a common bias, and the test of it
    relative_error = spread / mean[bins]
    deviation, deviation_error, dof = _weighted_block_mean(z * relative_error,
                                                           relative_error ** -2)
    squares, squares_error, _ = _weighted_block_mean(z * z, np.ones(count))
    t_spread = (squares - 1) / squares_error if squares_error > 0 else 0.0
    independent = float(np.sum(relative_error ** -2)) ** -0.5  # the error were bins apart
    check = RunCheck(run.source, 0.0, squares, 1.0, bins=count, histories=run.histories,
                     deviation=deviation, deviation_error=deviation_error,
                     inflation=(deviation_error / independent) ** 2 if independent else 1.0,
                     dof=dof, p_spread=_upper(_t_as_normal(t_spread, dof)))
    return _judged(check, check.inflation, dof)


def _judged(check: RunCheck, inflation: float, dof: int) -> RunCheck:
    """The run's p-value with this variance inflation (correlated bins) and its dof."""
    independent = check.deviation_error / math.sqrt(check.inflation) if check.inflation else 0
    error = independent * math.sqrt(inflation)
    t_shift = check.deviation / error if error > 0 else 0.0
    return replace(check, mean_z=t_shift, deviation_error=error, p_value=min(
        _two_sided(_t_as_normal(t_shift, dof)), check.p_spread))


def _pooled_inflation(checks: dict[int, RunCheck]) -> dict[int, RunCheck]:
    """Each run's deviation judged with the variance inflation of the *other* runs tested
    on about as many bins (within 1.5x): under the permutation distribution the bins'
    correlations are the same in every run and the weights are too, so their inflation
    is one number, known with the degrees of freedom of all of them — not of one run's
    ~30 blocks (a run's own blocks would also carry its own bias). Fewer than two such
    runs: its own."""
    pooled = {}
    for r, check in checks.items():
        if not check.tested:
            pooled[r] = check
            continue
        others = [other for s, other in checks.items() if s != r and other.tested
                  and check.bins / 1.5 <= other.bins <= check.bins * 1.5]
        if len(others) < 2:
            pooled[r] = check
            continue
        dof = sum(other.dof for other in others)
        inflation = sum(other.inflation * other.dof for other in others) / dof
        pooled[r] = _judged(check, inflation, dof)
    return pooled


def _flag(check: RunCheck) -> RunCheck:
    return replace(check, inconsistent=True)


def _weighted_block_mean(values: np.ndarray,
                         weights: np.ndarray) -> tuple[float, float, int]:
    """(weighted mean, its standard error, degrees of freedom) of per-bin values.

    Neighbouring bins are correlated (one history scores in several), so the standard
    error is measured: the bins, in bin order, are cut into blocks of neighbours and the
    spread of the blocks' weighted sums about the mean gives it (batch means, as for a
    ratio estimator); blocks much longer than the correlation are nearly independent.
    """
    blocks = max(_MIN_BLOCKS, min(_MAX_BLOCKS, values.size // _MIN_BLOCK_BINS))
    starts = np.linspace(0, values.size, blocks + 1).astype(np.int64)[:-1]
    total_weight = float(weights.sum())
    mean = float(np.dot(values, weights)) / total_weight
    # each block's weighted sum of deviations from the mean; their spread is the error
    residuals = np.add.reduceat((values - mean) * weights, starts)
    variance = float(np.sum(residuals ** 2)) / total_weight ** 2 * blocks / (blocks - 1)
    return mean, math.sqrt(variance), blocks - 1


def _t_as_normal(t: float, dof: int) -> float:
    """A Student t value as the standard normal value of the same tail (Wallace 1959)."""
    z = math.sqrt(dof * math.log1p(t * t / dof)) * (8 * dof + 1) / (8 * dof + 3)
    return math.copysign(z, t)


def _two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def _upper(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))
