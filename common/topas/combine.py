"""Statistically correct combination of one scorer over independent runs, run by run.

Per bin, with N_r the histories of run r (FORMATS.md):
    N = sum N_r;  Sum and Count_in_Bin add;  Mean = Sum / N
    Second_Moment M2 = sum M2_r + sum N_r (Mean_r - Mean)^2,   Variance = M2 / (N - 1)
    Min / Max over runs (TOPAS's unhit sentinels 9e+99 / -9e+99 lose every comparison,
    and a run without the row does not take part)
The two parts of M2 are kept apart: the second, the spread between the runs' means, is
also the batch (run-to-run) estimate of the uncertainty, and the only one when the files
hold no spread statistic. Both are built with Chan's pairwise update as runs arrive, so
only the running state is held, never all runs. A run missing a row (sparse output) had
zero in that bin for all its N_r histories. Bins every run prints as -1 (outside an RT
structure) stay -1. Format-neutral: works on Scorer objects from any reader.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import ToolError
from common.topas.header import (COUNT_IN_BIN, HISTORIES, MAX, MEAN, MIN, SECOND_MOMENT,
                                 STANDARD_DEVIATION, SUM, VARIANCE, ScorerHeader)
from common.topas.scorer import (K_FASTEST, Scorer, indices_for_keys, row_order,
                                 sort_keys)

_SPREAD = (SECOND_MOMENT, VARIANCE, STANDARD_DEVIATION)
_NEED_HISTORIES = (MEAN,) + _SPREAD
_OUTSIDE_STRUCTURE = -1.0  # what TOPAS prints for every statistic of an excluded bin
HISTORIES_FLAG = "--histories"  # how a user supplies histories the files do not report


def statistics_to_read(header: ScorerHeader) -> tuple[str, ...]:
    """The statistics a merge needs from each run; the others follow from them.

    Mean, Variance and Standard_Deviation are read only when Sum or Second_Moment is
    missing, so a file with every statistic costs about half the parsing.
    """
    present = header.statistics
    wanted = [name for name in (SUM, HISTORIES, COUNT_IN_BIN, SECOND_MOMENT, MIN, MAX)
              if name in present]
    if SUM not in present and MEAN in present:
        wanted.append(MEAN)
    if SECOND_MOMENT not in present:
        wanted += [name for name in (VARIANCE, STANDARD_DEVIATION) if name in present][:1]
    return tuple(name for name in present if name in wanted)


@dataclass(frozen=True)
class RunContribution:
    """What one run adds, statistics it lacks rebuilt from those it has.

    `keys` are the bin numbers of the rows, or None when the run has every bin and the
    arrays are in bin-number order (then folding needs no scatter). Small enough to send
    between processes.
    """

    header: ScorerHeader
    order: str  # the row order of the file, K_FASTEST or I_FASTEST
    keys: np.ndarray | None
    histories: int | None  # N_r, from the file or from --histories
    total: np.ndarray | None  # Sum
    mean: np.ndarray | None
    m2: np.ndarray | None
    count: np.ndarray | None
    minimum: np.ndarray | None
    maximum: np.ndarray | None
    outside: np.ndarray | None  # rows printed as all -1 by this run


def contribution(scorer: Scorer, source: object,
                 histories: int | None = None) -> RunContribution:
    """Turn one run's scorer into what the accumulator folds in.

    `histories` is the run's N when the file does not report it (--histories); a file's
    own Histories_with_Scorer_Active wins. ToolError if what is needed is missing.
    """
    header = scorer.header
    keys = scorer.bin_keys()
    _check_rows(header, keys, source)
    order = row_order(header, keys)
    reported = scorer.histories(source)
    n = reported if reported is not None else histories
    if n is None and HISTORIES in header.statistics:
        raise ToolError(f"{source}: a sparse output without rows; its number of histories "
                        f"is unknown, so it cannot be combined (unless given with "
                        f"{HISTORIES_FLAG} N)")
    _check_enough_reported(header.statistics, n, source)
    values = _in_key_order(scorer.values, keys)
    keys = None if keys.size == header.n_bins else np.sort(keys)
    total, mean = _first_moments(values, n)
    return RunContribution(header=header, order=order, keys=keys, histories=n, total=total,
                           mean=mean, m2=_second_moment(values, n),
                           count=values.get(COUNT_IN_BIN), minimum=values.get(MIN),
                           maximum=values.get(MAX), outside=_outside(values))


@dataclass(frozen=True)
class BatchStatistics:
    """Run-to-run (batch) statistics of a merged scorer, per bin.

    `estimate` is the mean per history when the histories are known, else the mean Sum
    per run (then every run is assumed to have the same number of histories). Its
    standard error comes from the spread of the runs' values alone, so it needs no
    Second_Moment: var = sum_r w_r (x_r - x)^2 / ((R - 1) sum_r w_r), w_r = N_r (or 1).
    """

    runs: int
    per_history: bool
    keys: np.ndarray  # bin numbers, ascending
    estimate: np.ndarray
    standard_error: np.ndarray  # NaN with fewer than two runs


class ScorerAccumulator:
    """Running combination of one scorer file over runs: add() each run, then result()."""

    def __init__(self, histories_per_run: int | None = None) -> None:
        """`histories_per_run`: N of each run, for files that do not report it."""
        self.runs = 0
        self._histories_per_run = histories_per_run
        self._header: ScorerHeader | None = None
        self._first_source: object = None
        self._order = K_FASTEST
        self._present = np.zeros(0, dtype=bool)
        self._histories: int | None = None
        self._weight = 0.0  # sum of the runs' weights: N_r, or 1 each without histories
        self._total: np.ndarray | None = None
        self._mean: np.ndarray | None = None  # running weighted mean of the runs' values
        self._between: np.ndarray | None = None  # sum_r w_r (value_r - mean)^2
        self._within: np.ndarray | None = None  # sum_r M2_r
        self._count: np.ndarray | None = None
        self._minimum: np.ndarray | None = None
        self._maximum: np.ndarray | None = None
        self._outside: np.ndarray | None = None

    @property
    def histories(self) -> int | None:
        """Total histories so far, None when they are not known."""
        return self._histories

    @property
    def header(self) -> ScorerHeader | None:
        return self._header

    def add(self, scorer: Scorer, source: object) -> None:
        """Fold one run's output in; ToolError (naming both files) if it cannot be merged."""
        if self._header is not None:
            self._check_same_layout(scorer.header, source)
        self.add_contribution(contribution(scorer, source, self._histories_per_run), source)

    def add_contribution(self, run: RunContribution, source: object) -> None:
        """Fold in a contribution made by `contribution()` (possibly in another process)."""
        if self._header is None:
            self._start(run, source)
        self._check_same_layout(run.header, source)
        self._check_histories_known(run, source)
        self._fold(run)
        if run.keys is None:
            self._present[:] = True
        else:
            self._present[run.keys] = True
        self.runs += 1

    def absorb(self, other: ScorerAccumulator, source: object) -> None:
        """Fold in another accumulator of later runs of the same file (Chan's parallel
        formula), e.g. one a worker process built; `source` names its first run."""
        if other._header is None:
            return
        if self._header is None:
            self.__dict__.update(other.__dict__)
            return
        self._check_same_layout(other._header, source)
        if (other._histories is None) != (self._histories is None):
            raise ToolError(f"{source}: reports {HISTORIES} but {self._first_source} does "
                            "not (or the other way round); cannot weight the runs")
        self._absorb_means(other)
        for mine, theirs in ((self._total, other._total), (self._within, other._within),
                             (self._count, other._count)):
            if mine is not None and theirs is not None:
                mine += theirs
        if self._minimum is not None and other._minimum is not None:
            np.minimum(self._minimum, other._minimum, out=self._minimum)
        if self._maximum is not None and other._maximum is not None:
            np.maximum(self._maximum, other._maximum, out=self._maximum)
        if self._outside is not None and other._outside is not None:
            self._outside &= other._outside
        self._present |= other._present
        if self._histories is not None and other._histories is not None:
            self._histories += other._histories
        self.runs += other.runs

    def result(self) -> Scorer:
        """The combined scorer: the first run's header, rows in its order convention.

        Its arrays may share memory with the accumulator: copy them before changing them.
        """
        header = self._started()
        keys = sort_keys(header, np.flatnonzero(self._present), self._order)
        every_bin_in_order = keys.size == header.n_bins and bool(np.all(keys[1:] > keys[:-1]))
        rows = slice(None) if every_bin_in_order else keys  # a slice copies nothing
        values = {name: self._final(name)[rows] for name in header.statistics}
        return Scorer(header=header, indices=indices_for_keys(header, keys), values=values)

    def batch(self) -> BatchStatistics | None:
        """Run-to-run statistics of the bins printed by any run; None without Sum/Mean."""
        self._started()
        if self._mean is None or self._between is None:
            return None
        keys = np.flatnonzero(self._present)
        if self.runs < 2 or self._weight <= 0:
            variance = np.full(keys.shape + self._grid_tail(), np.nan)
        else:
            variance = self._between[keys] / ((self.runs - 1) * self._weight)
        outside = self._outside[keys] if self._outside is not None else False
        return BatchStatistics(
            runs=self.runs, per_history=self._histories is not None, keys=keys,
            estimate=np.where(outside, np.nan, self._mean[keys]),
            standard_error=np.where(outside, np.nan, np.sqrt(variance)))

    # ------------------------------------------------------------------ internals

    def _started(self) -> ScorerHeader:
        if self._header is None:
            raise ValueError("no run was added")
        return self._header

    def _start(self, run: RunContribution, source: object) -> None:
        header = self._header = run.header
        self._first_source = source
        self._order = run.order
        grid = (header.n_bins,) + ((header.n_extra_bins,) if header.n_extra_bins else ())
        self._present = np.zeros(header.n_bins, dtype=bool)
        if run.histories is not None:
            self._histories = 0
        if run.total is not None:
            self._total = np.zeros(grid)
            self._mean = np.zeros(grid)
            self._between = np.zeros(grid)
        if run.m2 is not None:
            self._within = np.zeros(grid)
        if run.count is not None:
            self._count = np.zeros(grid)
        if run.minimum is not None:
            self._minimum = np.full(grid, np.inf)
        if run.maximum is not None:
            self._maximum = np.full(grid, -np.inf)
        if run.outside is not None:
            self._outside = np.ones(grid, dtype=bool)

    def _check_same_layout(self, header: ScorerHeader, source: object) -> None:
        assert self._header is not None
        difference = self._header.layout_difference(header)
        if difference is not None:
            raise ToolError(f"cannot merge {source} with {self._first_source}: "
                            f"different {difference}")

    def _check_histories_known(self, run: RunContribution, source: object) -> None:
        # Either every run's N is known or none is: a mix cannot be weighted.
        if (run.histories is None) != (self._histories is None):
            raise ToolError(f"{source}: reports {HISTORIES} but {self._first_source} does "
                            "not (or the other way round); cannot weight the runs")

    def _fold(self, run: RunContribution) -> None:
        rows = slice(None) if run.keys is None else run.keys
        if self._total is not None and run.total is not None:
            self._fold_means(run, rows)
            self._total[rows] += run.total
        if self._histories is not None and run.histories is not None:
            self._histories += run.histories
        if self._within is not None and run.m2 is not None:
            self._within[rows] += run.m2
        if self._count is not None and run.count is not None:
            self._count[rows] += run.count
        if self._minimum is not None and run.minimum is not None:
            self._minimum[rows] = np.minimum(self._minimum[rows], run.minimum)
        if self._maximum is not None and run.maximum is not None:
            self._maximum[rows] = np.maximum(self._maximum[rows], run.maximum)
        if self._outside is not None and run.outside is not None:
            # A bin is kept at -1 only if every run printed it so; no row means not -1.
            if run.keys is None:
                self._outside &= run.outside
            else:
                outside = np.zeros_like(self._outside)
                outside[run.keys] = run.outside
                self._outside &= outside

    def _fold_means(self, run: RunContribution, rows: slice | np.ndarray) -> None:
        # Chan et al.'s pairwise update of a weighted mean and sum of squared deviations:
        # exact for any split, and it never subtracts two large sums of squares.
        assert self._mean is not None and self._between is not None
        weight = float(run.histories) if run.histories is not None else 1.0
        value = run.mean if run.histories is not None else run.total
        if weight == 0 or value is None:
            return
        before = self._weight
        self._weight += weight
        delta = -self._mean  # bins without a row: the run's value there is 0
        delta[rows] += value
        self._mean += delta * (weight / self._weight)
        delta *= delta
        self._between += delta * (before * weight / self._weight)

    def _absorb_means(self, other: ScorerAccumulator) -> None:
        if self._mean is None or other._mean is None or other._between is None:
            return
        assert self._between is not None
        before, weight = self._weight, other._weight
        self._weight += weight
        if weight == 0:
            return
        delta = other._mean - self._mean
        self._mean += delta * (weight / self._weight)
        delta *= delta
        self._between += other._between
        self._between += delta * (before * weight / self._weight)

    def _final(self, name: str) -> np.ndarray:
        value = self._final_statistic(name)
        if name != HISTORIES and self._outside is not None and self._outside.any():
            value = np.where(self._outside, _OUTSIDE_STRUCTURE, value)
        return value

    def _final_statistic(self, name: str) -> np.ndarray:
        n = self._histories or 0
        if name == SUM:
            return self._required(self._total, name)
        if name == MEAN:
            total = self._required(self._total, name)
            return total / n if n else np.zeros_like(total)
        if name == HISTORIES:
            return np.full(self._present.shape + self._grid_tail(), float(n))
        if name == COUNT_IN_BIN:
            return self._required(self._count, name)
        if name == MIN:
            return self._required(self._minimum, name)
        if name == MAX:
            return self._required(self._maximum, name)
        m2 = self._required(self._within, name) + self._required(self._between, name)
        if name == SECOND_MOMENT:
            return m2
        variance = m2 / (n - 1) if n > 1 else np.zeros_like(m2)
        if name == VARIANCE:
            return variance
        # Bins outside an RT structure hold sums of -1 here; _final replaces them.
        with np.errstate(invalid="ignore"):
            return np.sqrt(variance)

    @staticmethod
    def _required(array: np.ndarray | None, name: str) -> np.ndarray:
        if array is None:
            raise ValueError(f"{name} was not accumulated")
        return array

    def _grid_tail(self) -> tuple[int, ...]:
        header = self._started()
        return (header.n_extra_bins,) if header.n_extra_bins else ()


def _check_rows(header: ScorerHeader, keys: np.ndarray, source: object) -> None:
    seen = np.zeros(header.n_bins, dtype=bool)
    seen[keys] = True
    if np.count_nonzero(seen) != keys.size:
        raise ToolError(f"{source}: some bins appear on more than one row")
    if header.sparse is None and keys.size != header.n_bins:
        raise ToolError(f"{source}: it has rows for {keys.size} of the {header.n_bins} "
                        "bins and is not a sparse output (truncated file?)")


def _in_key_order(values: dict[str, np.ndarray], keys: np.ndarray) -> dict[str, np.ndarray]:
    if keys.size < 2 or bool(np.all(keys[1:] > keys[:-1])):
        return values
    order = np.argsort(keys)
    return {name: array[order] for name, array in values.items()}


def _first_moments(values: dict[str, np.ndarray],
                   n: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    total = values.get(SUM)
    mean = values.get(MEAN)
    if total is None and mean is not None and n is not None:
        total = mean * n
    if mean is None and total is not None and n:
        mean = total / n
    return total, mean


def _second_moment(values: dict[str, np.ndarray], n: int | None) -> np.ndarray | None:
    if SECOND_MOMENT in values:
        return values[SECOND_MOMENT]
    if n is None:
        return None
    if VARIANCE in values:
        return values[VARIANCE] * (n - 1)
    if STANDARD_DEVIATION in values:
        return values[STANDARD_DEVIATION] ** 2 * (n - 1)
    return None


def _outside(values: dict[str, np.ndarray]) -> np.ndarray | None:
    """Bins where every reported statistic is -1: TOPAS's mark for outside an RT structure."""
    reported = [array for name, array in values.items() if name != HISTORIES]
    if not reported:
        return None
    return np.logical_and.reduce([array == _OUTSIDE_STRUCTURE for array in reported])


def _check_enough_reported(stats: tuple[str, ...], n: int | None, source: object) -> None:
    needing = [name for name in stats if name in _NEED_HISTORIES]
    if needing and n is None:
        raise ToolError(f"{source}: cannot combine {', '.join(needing)} over runs without "
                        f"each run's number of histories: the file does not report "
                        f"{HISTORIES}; give it with {HISTORIES_FLAG} N (histories per run)")
    if set(stats) & set(_SPREAD) and not set(stats) & {SUM, MEAN}:
        raise ToolError(f"{source}: reports {', '.join(s for s in stats if s in _SPREAD)} "
                        "without Sum or Mean; the spread of runs cannot be combined")
