"""Do the runs of a campaign agree? Each run against the rest, with its own standard errors.

A run from a node with a wrong image, another TOPAS version or a changed parameter
differs systematically from the others, and merging it silently biases the result. The
test, per run r, over the bins that every run knows well:

    z_b = (x_rb - x_-rb) / sqrt(se_rb^2 + se_-rb^2)

x_rb is the run's mean per history in bin b and se_rb its history-by-history standard
error (from Second_Moment, Variance or Standard_Deviation); x_-rb and se_-rb are those of
all other runs together. Two statistics: the mean z (a bias of either sign in many bins)
and the mean z^2, a chi^2 per bin (any change of shape). Each is compared with the
same statistic of the other runs, which gives the level of a consistent run (with
estimated standard errors, the mean z^2 lies a little above 1, alike for every run).
Neighbouring voxels of real dose grids are correlated (one history scores in several),
which widens both far beyond their textbook spreads, so their standard errors are
measured inside each run, from blocks of neighbouring bins (batch means, Student t
with blocks - 1 degrees of freedom); a shift common to all bins does not widen that
spread. A run is inconsistent when either p-value (two-sided for the mean z, upper tail
for chi^2: runs that agree too well are no bias) is below ALPHA / (2 x runs): a
consistent campaign is flagged with a chance of about ALPHA, whatever its number of
runs (measured: bench/topas_merge.py --consistency). The most extreme run is removed and
the rest tested again, so one bad run does not make the others look bad. Identical runs
(the same seed twice) are named too.

Bins tested: those where the typical run's relative standard error is at most 10 %
(judged from all runs together, so no run's own fluctuation chooses its bins); to keep
memory small, each run keeps only its values in up to 4096 candidate bins chosen when
the first run arrives (bins it hit at least 20 times, or known to 30 % without
Count_in_Bin), a value-blind random subset if there are more.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from common.topas.runs import RunContribution

ALPHA = 1e-3
MAX_RUN_RELATIVE_ERROR = 0.10
MIN_TEST_BINS = 10
_MIN_CANDIDATE_COUNT = 20
_MAX_CANDIDATE_RELATIVE_ERROR = 0.30
_MAX_CANDIDATES = 4096
_MAX_BLOCKS = 50
_MIN_BLOCKS = 8
_MIN_BLOCK_BINS = 10


@dataclass(frozen=True)
class RunCheck:
    """One run's statistics against the rest."""

    source: str
    mean_z: float
    chi2_per_bin: float
    p_value: float  # the smaller of the two tests' p-values, uncorrected
    inconsistent: bool = False


@dataclass(frozen=True)
class ConsistencyReport:
    """The outcome for one scorer. `tested` False: `reason` says why not."""

    tested: bool
    reason: str
    bins: int = 0
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
        head = (f"Consistency of the runs, each against the others over {self.bins} "
                f"bins (inconsistent below p = {self.threshold:.2g}): ")
        bad = self.inconsistent
        if not bad:
            worst = max(self.runs, key=lambda run: abs(run.mean_z))
            return lines + [head + f"all {len(self.runs)} consistent (largest |mean z| "
                            f"{abs(worst.mean_z):.2f}, largest chi2/bin "
                            f"{max(run.chi2_per_bin for run in self.runs):.3f})"]
        return lines + [head + f"{len(bad)} of {len(self.runs)} INCONSISTENT"] + [
            f"  {run.source}: mean z = {run.mean_z:+.2f}, chi2/bin = "
            f"{run.chi2_per_bin:.3f} (p = {run.p_value:.2g})" for run in bad]


class RunLedger:
    """Each run's values in the candidate bins, kept while runs are folded in order."""

    def __init__(self) -> None:
        self._candidates: np.ndarray | None = None
        self._sources: list[str] = []
        self._weights: list[float] = []
        self._estimates: list[np.ndarray] = []
        self._variances: list[np.ndarray] = []
        self._digests: dict[bytes, str] = {}
        self._identical: list[tuple[str, str]] = []
        self._untestable: str | None = None

    def record(self, run: RunContribution, source: object) -> None:
        """Remember what the test needs of one run (a few kB)."""
        self._note_identical(run, str(source))
        if self._untestable is not None:
            return
        if (run.total is None and run.mean is None) or run.m2 is None or not run.histories:
            self._untestable = ("the files hold no Second_Moment, Variance or "
                                "Standard_Deviation with their histories, so the runs' own "
                                "standard errors are unknown")
            return
        n = float(run.histories)
        if self._candidates is None:
            self._candidates = _candidates(run)
        mean = (run.at(run.mean, self._candidates) if run.mean is not None else
                run.at(run.total, self._candidates) / n)
        variance = run.at(run.m2, self._candidates) / (n * (n - 1)) if n > 1 else mean * 0
        self._sources.append(str(source))
        self._weights.append(n)
        self._estimates.append(mean.astype(np.float32))
        self._variances.append(variance.astype(np.float32))

    def check(self) -> ConsistencyReport:
        """Test every run against the rest."""
        identical = tuple(self._identical)
        if self._untestable is not None:
            return ConsistencyReport(False, self._untestable, identical=identical)
        if len(self._sources) < 2:
            return ConsistencyReport(False, "fewer than two runs", identical=identical)
        x = np.array(self._estimates, dtype=np.float64)
        v = np.array(self._variances, dtype=np.float64)
        w = np.array(self._weights)
        tested = _well_known_bins(x, v, w)
        if tested.size < MIN_TEST_BINS:
            return ConsistencyReport(False, f"only {tested.size} bins are known to "
                                     f"{MAX_RUN_RELATIVE_ERROR:.0%} by a typical run "
                                     f"(at least {MIN_TEST_BINS} needed)", identical=identical)
        threshold = ALPHA / (2 * len(w))
        checks = _flag_runs(x[:, tested], v[:, tested], w, self._sources, threshold)
        return ConsistencyReport(True, "", bins=int(tested.size), threshold=threshold,
                                 runs=checks, identical=identical)

    def _note_identical(self, run: RunContribution, source: str) -> None:
        # Runs with other seeds differ in nearly every bin: the first moments suffice.
        digest = hashlib.blake2b(str(run.histories).encode(), digest_size=16)
        for array in (run.keys, run.total if run.total is not None else run.mean):
            digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        key = digest.digest()
        if key in self._digests:
            self._identical.append((self._digests[key], source))
        else:
            self._digests[key] = source


def _candidates(run: RunContribution) -> np.ndarray:
    mean = run.on_all_bins(run.mean_per_history()).ravel()  # type: ignore[arg-type]
    if run.count is not None:
        chosen = run.on_all_bins(run.count).ravel() >= _MIN_CANDIDATE_COUNT
    else:
        assert run.m2 is not None and run.histories
        n = float(run.histories)
        variance = run.on_all_bins(run.m2).ravel() / (n * max(n - 1, 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            chosen = np.sqrt(variance) <= _MAX_CANDIDATE_RELATIVE_ERROR * mean
    chosen &= mean > 0
    if run.outside is not None:
        chosen &= ~run.on_all_bins(run.outside).ravel()
    candidates = np.flatnonzero(chosen)
    if candidates.size > _MAX_CANDIDATES:  # a subset blind to the values
        generator = np.random.default_rng(candidates.size)
        candidates = np.sort(generator.choice(candidates, _MAX_CANDIDATES, replace=False))
    return candidates


def _well_known_bins(x: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Bins whose typical run relative error is at most MAX_RUN_RELATIVE_ERROR, judged
    from all runs together."""
    total = w.sum()
    pooled = (w[:, None] * x).sum(axis=0) / total
    pooled_variance = (w[:, None] ** 2 * v).sum(axis=0) / total ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        typical = np.sqrt(pooled_variance * len(w)) / pooled
    return np.flatnonzero((pooled > 0) & (typical <= MAX_RUN_RELATIVE_ERROR))


def _flag_runs(x: np.ndarray, v: np.ndarray, w: np.ndarray, sources: list[str],
               threshold: float) -> tuple[RunCheck, ...]:
    """Flag the most extreme run while it is below the threshold, then test the rest
    without it."""
    active = list(range(len(w)))
    flagged: dict[int, RunCheck] = {}
    while len(active) >= 2:
        checks = _statistics(x[active], v[active], w[active])
        worst = int(np.argmin([check[2] for check in checks]))
        if checks[worst][2] >= threshold:
            break
        # Two runs that disagree cannot tell which one is wrong: both are named.
        for position in (range(2) if len(active) == 2 else (worst,)):
            flagged[active[position]] = RunCheck(sources[active[position]],
                                                 *checks[position], inconsistent=True)
        active = [] if len(active) == 2 else active[:worst] + active[worst + 1:]
    final = dict(zip(active, _statistics(x[active], v[active], w[active]))) if len(
        active) >= 2 else {}
    return tuple(flagged[r] if r in flagged else
                 RunCheck(sources[r], *final.get(r, (0.0, 1.0, 1.0))) for r in range(len(w)))


def _statistics(x: np.ndarray, v: np.ndarray, w: np.ndarray) -> list[tuple[float, float,
                                                                           float]]:
    """(mean z, chi2 per bin, p-value) of each run against the others."""
    weighted, weighted_variance, total = (w[:, None] * x).sum(axis=0), (
        w[:, None] ** 2 * v).sum(axis=0), w.sum()
    shifts, spreads = [], []
    for r in range(len(w)):
        rest_weight = total - w[r]
        rest = (weighted - w[r] * x[r]) / rest_weight
        rest_variance = (weighted_variance - w[r] ** 2 * v[r]) / rest_weight ** 2
        scale = np.sqrt(np.maximum(v[r] + rest_variance, 0))
        z = (x[r] - rest)[scale > 0] / scale[scale > 0]
        shifts.append(_block_mean(z))
        spreads.append(_block_mean(z ** 2))
    return [(mean * math.sqrt(bins), spread,
             min(_two_sided(_against_others(shifts, r)), _upper(_against_others(spreads, r))))
            for r, ((mean, _, _, bins), (spread, _, _, _)) in enumerate(zip(shifts, spreads))]


def _block_mean(values: np.ndarray) -> tuple[float, float, int, int]:
    """(mean, its standard error, degrees of freedom, values) of per-bin values.

    Neighbouring bins are correlated (one history scores in several), so the standard
    error is measured: the bins, in bin order, are cut into blocks of neighbours and the
    spread of the block means gives it (batch means); blocks much longer than the
    correlation are nearly independent. With too few bins for blocks, the bins are
    taken as independent.
    """
    size = max(values.size, 1)
    blocks = min(_MAX_BLOCKS, values.size // _MIN_BLOCK_BINS)
    if blocks < _MIN_BLOCKS:
        error = float(np.std(values, ddof=1)) / math.sqrt(size) if size > 1 else 1.0
        return float(values.mean()) if values.size else 0.0, error, max(size - 1, 1), size
    starts = np.linspace(0, values.size, blocks + 1).astype(np.int64)[:-1]
    means = np.add.reduceat(values, starts) / np.diff(np.append(starts, values.size))
    return float(values.mean()), math.sqrt(float(np.var(means, ddof=1)) / blocks), \
        blocks - 1, size


def _against_others(statistics: list[tuple[float, float, int, int]], r: int) -> float:
    """Run r's statistic against the mean of the other runs', as a standard normal value.

    The others give the level a consistent run has (with estimated standard errors the
    mean of z^2 is a little above 1, and z of skewed scores a little off 0, alike for
    every run); their own uncertainty is part of the standard error.
    """
    others = [statistic for position, statistic in enumerate(statistics) if position != r]
    level = sum(mean for mean, _, _, _ in others) / len(others)
    variance = statistics[r][1] ** 2 + sum(error ** 2 for _, error, _, _ in others) / len(
        others) ** 2
    if variance <= 0:
        return 0.0
    return _t_as_normal((statistics[r][0] - level) / math.sqrt(variance), statistics[r][2])


def _t_as_normal(t: float, dof: int) -> float:
    """A Student t value as the standard normal value of the same tail (Wallace 1959)."""
    z = math.sqrt(dof * math.log1p(t * t / dof)) * (8 * dof + 1) / (8 * dof + 3)
    return math.copysign(z, t)


def _two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def _upper(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))
