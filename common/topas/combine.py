"""Statistically correct combination of one scorer over independent runs, run by run.

Per bin, with N_r the histories of run r (FORMATS.md):
    N = sum N_r;  Sum and Count_in_Bin add;  Mean = Sum / N
    Second_Moment M2 = sum M2_r + sum N_r (Mean_r - Mean)^2,   Variance = M2 / (N - 1)
    Min / Max over runs (TOPAS's unhit sentinels 9e+99 / -9e+99 lose every comparison,
    and a run without the row does not take part)
M2 is built with Chan's pairwise update as runs arrive, so only the running state is held,
never all runs. A run missing a row (sparse output) had zero in that bin for all its N_r
histories. Bins every run prints as -1 (outside an RT structure) stay -1.
Format-neutral: works on Scorer objects from any reader.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import ToolError
from common.topas.header import (COUNT_IN_BIN, HISTORIES, MAX, MEAN, MIN, SECOND_MOMENT,
                                 STANDARD_DEVIATION, SUM, VARIANCE, ScorerHeader)
from common.topas.scorer import Scorer, indices_for_keys, row_order, sort_keys

_SPREAD = (SECOND_MOMENT, VARIANCE, STANDARD_DEVIATION)
_NEED_HISTORIES = (MEAN,) + _SPREAD
_OUTSIDE_STRUCTURE = -1.0  # what TOPAS prints for every statistic of an excluded bin


@dataclass(frozen=True)
class _RunValues:
    """One run's statistics on the rows it printed, missing ones rebuilt from the others."""

    keys: np.ndarray  # bin number of each row
    histories: int | None
    total: np.ndarray | None  # Sum
    mean: np.ndarray | None
    m2: np.ndarray | None
    count: np.ndarray | None
    minimum: np.ndarray | None
    maximum: np.ndarray | None
    outside: np.ndarray | None  # rows printed as all -1 by this run


class ScorerAccumulator:
    """Running combination of one scorer file over runs: add() each run, then result()."""

    def __init__(self) -> None:
        self.runs = 0
        self._header: ScorerHeader | None = None
        self._first_source: object = None
        self._order = ""
        self._present = np.zeros(0, dtype=bool)
        self._histories: int | None = None
        self._total: np.ndarray | None = None
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._count: np.ndarray | None = None
        self._minimum: np.ndarray | None = None
        self._maximum: np.ndarray | None = None
        self._outside: np.ndarray | None = None

    @property
    def histories(self) -> int | None:
        """Total histories so far, None when the files do not report them."""
        return self._histories

    def add(self, scorer: Scorer, source: object) -> None:
        """Fold one run's output in; ToolError (naming both files) if it cannot be merged."""
        if self._header is None:
            self._start(scorer.header, source)
        self._check_same_layout(scorer.header, source)
        keys = scorer.bin_keys()
        self._check_rows(scorer.header, keys, source)
        if self.runs == 0:
            self._order = row_order(scorer.header, keys)
        self._fold(_run_values(scorer, keys, source))
        self._present[keys] = True
        self.runs += 1

    def result(self) -> Scorer:
        """The combined scorer: the first run's header, rows in its order convention."""
        if self._header is None:
            raise ValueError("no run was added")
        header = self._header
        keys = sort_keys(header, np.flatnonzero(self._present), self._order)
        values = {name: self._final(name)[keys] for name in header.statistics}
        return Scorer(header=header, indices=indices_for_keys(header, keys), values=values)

    # ------------------------------------------------------------------ internals

    def _start(self, header: ScorerHeader, source: object) -> None:
        self._header = header
        self._first_source = source
        grid = (header.n_bins,) + ((header.n_extra_bins,) if header.n_extra_bins else ())
        stats = set(header.statistics)
        self._present = np.zeros(header.n_bins, dtype=bool)
        if HISTORIES in stats:
            self._histories = 0
        if stats & {SUM, MEAN} or stats & set(_SPREAD):
            self._total = np.zeros(grid)
        if stats & set(_SPREAD):
            self._mean = np.zeros(grid)
            self._m2 = np.zeros(grid)
        if COUNT_IN_BIN in stats:
            self._count = np.zeros(grid)
        if MIN in stats:
            self._minimum = np.full(grid, np.inf)
        if MAX in stats:
            self._maximum = np.full(grid, -np.inf)
        if set(header.statistics) - {HISTORIES}:
            self._outside = np.ones(grid, dtype=bool)

    def _check_same_layout(self, header: ScorerHeader, source: object) -> None:
        assert self._header is not None
        difference = self._header.layout_difference(header)
        if difference is not None:
            raise ToolError(f"cannot merge {source} with {self._first_source}: "
                            f"different {difference}")

    def _check_rows(self, header: ScorerHeader, keys: np.ndarray, source: object) -> None:
        if np.unique(keys).size != keys.size:
            raise ToolError(f"{source}: some bins appear on more than one row")
        if header.sparse is None and keys.size != header.n_bins:
            against = f" (merging with {self._first_source})" if self.runs else ""
            raise ToolError(f"{source}{against}: it has rows for {keys.size} of the "
                            f"{header.n_bins} bins and is not a sparse output (truncated file?)")

    def _fold(self, run: _RunValues) -> None:
        # Keys are unique (checked), so `array[keys] += rows` adds every row once.
        if self._m2 is not None and run.histories:
            self._fold_moments(self._histories or 0, run)
        if self._histories is not None and run.histories is not None:
            self._histories += run.histories
        if self._total is not None and run.total is not None:
            self._total[run.keys] += run.total
        if self._count is not None and run.count is not None:
            self._count[run.keys] += run.count
        if self._minimum is not None and run.minimum is not None:
            self._minimum[run.keys] = np.minimum(self._minimum[run.keys], run.minimum)
        if self._maximum is not None and run.maximum is not None:
            self._maximum[run.keys] = np.maximum(self._maximum[run.keys], run.maximum)
        if self._outside is not None and run.outside is not None:
            # A bin is kept at -1 only if every run printed it so; no row means not -1.
            outside = np.zeros_like(self._outside)
            outside[run.keys] = run.outside
            self._outside &= outside

    def _fold_moments(self, n_before: int, run: _RunValues) -> None:
        # Chan et al.'s pairwise update: exact for any split, and it never subtracts two
        # large sums of squares, so it stays accurate when the spread is small.
        assert self._mean is not None and self._m2 is not None
        assert run.mean is not None and run.m2 is not None and run.histories
        n_after = n_before + run.histories
        delta = -self._mean  # bins without a row: Mean_r = 0 and M2_r = 0
        delta[run.keys] += run.mean
        self._mean += delta * (run.histories / n_after)
        self._m2 += delta * delta * (n_before * run.histories / n_after)
        self._m2[run.keys] += run.m2

    def _final(self, name: str) -> np.ndarray:
        value = self._final_statistic(name)
        if name != HISTORIES and self._outside is not None:
            value = np.where(self._outside, _OUTSIDE_STRUCTURE, value)
        return value

    def _final_statistic(self, name: str) -> np.ndarray:
        n = self._histories or 0
        if name == SUM:
            return self._total
        if name == MEAN:
            return self._total / n if n else np.zeros_like(self._total)
        if name == HISTORIES:
            return np.full(self._present.shape + self._grid_tail(), float(n))
        if name == COUNT_IN_BIN:
            return self._count
        if name == SECOND_MOMENT:
            return self._m2
        if name == MIN:
            return self._minimum
        if name == MAX:
            return self._maximum
        variance = self._m2 / (n - 1) if n > 1 else np.zeros_like(self._m2)
        if name == VARIANCE:
            return variance
        # Bins outside an RT structure hold sums of -1 here; _final replaces them.
        with np.errstate(invalid="ignore"):
            return np.sqrt(variance)

    def _grid_tail(self) -> tuple[int, ...]:
        assert self._header is not None
        return (self._header.n_extra_bins,) if self._header.n_extra_bins else ()


def _run_values(scorer: Scorer, keys: np.ndarray, source: object) -> _RunValues:
    """What one run contributes, statistics it lacks rebuilt from those it has."""
    values = scorer.values
    n = scorer.histories(source)
    _check_enough_reported(scorer.header.statistics, n, source)
    total = values.get(SUM)
    mean = values.get(MEAN)
    if total is None and mean is not None and n is not None:
        total = mean * n
    if mean is None and total is not None and n:
        mean = total / n
    return _RunValues(keys=keys, histories=n, total=total, mean=mean,
                      m2=_second_moment(values, n), count=values.get(COUNT_IN_BIN),
                      minimum=values.get(MIN), maximum=values.get(MAX),
                      outside=_outside(values))


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
    if HISTORIES in stats and n is None:
        raise ToolError(f"{source}: a sparse output without rows; its number of histories "
                        "is unknown, so it cannot be combined")
    needing = [name for name in stats if name in _NEED_HISTORIES]
    if needing and n is None:
        raise ToolError(f"{source}: cannot combine {', '.join(needing)} over runs without "
                        f"the number of histories of each run ({HISTORIES} is not reported)")
    if set(stats) & set(_SPREAD) and not set(stats) & {SUM, MEAN}:
        raise ToolError(f"{source}: reports {', '.join(s for s in stats if s in _SPREAD)} "
                        "without Sum or Mean; the spread of runs cannot be combined")
