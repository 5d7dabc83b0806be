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

import hashlib
from dataclasses import dataclass

import numpy as np

from common.errors import ToolError
from common.topas.consistency import ConsistencyReport, Pooled, test_runs
from common.topas.header import (COUNT_IN_BIN, HISTORIES, MAX, MEAN, MIN, SECOND_MOMENT,
                                 SUM, VARIANCE, ScorerHeader)
from common.topas.ledger import LedgerFile, RunLedger, RunValues
from common.topas.runs import OUTSIDE_STRUCTURE, RunContribution, contribution
from common.topas.scorer import (K_FASTEST, Scorer, all_indices, indices_for_keys,
                                 sort_keys)


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
    """Running combination of one scorer file over runs.

    add() one run's Scorer at a time (earlier runs are never read again); at any point
    relative_standard_error() gives the per-bin uncertainty so far, result() the merged
    scorer, batch() the run-to-run statistics and consistency() the test of the runs
    against each other. A run with 0 histories adds nothing and is left out (counting it
    would shrink the batch standard error); `empty_runs` names such runs.
    """

    def __init__(self, histories_per_run: int | None = None,
                 expected_runs: int | None = None, keep_ledger: bool = True) -> None:
        """`histories_per_run`: N of each run, for files that do not report it;
        `expected_runs`: the original runs the merge will hold (sizes the ledger);
        `keep_ledger` False: no consistency test (a block of a merge that keeps its own)."""
        self.runs = 0
        self._keep_ledger = keep_ledger
        self.empty_runs: list[str] = []
        self._histories_per_run = histories_per_run
        self.ledger = RunLedger(expected_runs)
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
        self._scratch_array: np.ndarray | None = None

    @property
    def histories(self) -> int | None:
        """Total histories so far, None when they are not known."""
        return self._histories

    @property
    def header(self) -> ScorerHeader | None:
        return self._header

    def add(self, scorer: Scorer, source: object, histories: int | None = None) -> None:
        """Fold one run's output in; ToolError (naming the files) if it cannot be merged.

        `histories`: this run's N if its file does not report it (default: the
        accumulator's histories_per_run).
        """
        if self._header is not None:
            self._check_same_layout(scorer.header, source)
        given = self._histories_per_run if histories is None else histories
        self.add_contribution(contribution(scorer, source, given), source)

    def add_contribution(self, run: RunContribution, source: object,
                         nested: LedgerFile | None = None) -> None:
        """Fold in a contribution made by `contribution()`; `nested`: the ledger of the
        original runs a merged input stands for (they are tested instead of it)."""
        if self._header is None:
            self._start(run, source)
        self._check_same_layout(run.header, source)
        self._check_histories_known(run, source)
        if run.histories == 0:
            self._check_empty(run, source)
            self.empty_runs.append(str(source))
            return
        self._fold(run)
        if self._keep_ledger:
            self._record(run, source, nested)
        if run.keys is None:
            self._present[:] = True
        else:
            self._present[run.keys] = True
        self.runs += 1

    def relative_standard_error(self) -> np.ndarray:
        """Per bin (bin-number order, (bins[, energy bins])): the relative standard error
        of the merged estimate so far, history by history when the runs report a spread
        and their histories, else from the spread between the runs (NaN with one run, and
        where the estimate is 0)."""
        self._started()
        with np.errstate(invalid="ignore", divide="ignore"):
            if self._within is not None and self._histories and self._histories > 1:
                assert self._total is not None and self._between is not None
                n = float(self._histories)
                variance = (self._within + self._between) / (n - 1)
                return np.sqrt(variance / n) / np.abs(self._total / n)
            batch = self.batch()
            if batch is None:
                raise ValueError("no Sum or Mean was accumulated")
            relative = np.full(self._present.shape + self._grid_tail(), np.nan)
            relative[batch.keys] = batch.standard_error / np.abs(batch.estimate)
            return relative

    def consistency(self) -> ConsistencyReport:
        """Each run tested against all runs pooled (consistency.py)."""
        ledger = self.ledger
        identical = tuple(ledger.identical)
        if ledger.untestable is not None:
            return ConsistencyReport(False, ledger.untestable, identical=identical)
        if self._total is None or self._within is None or not self._histories:
            return ConsistencyReport(False, "no spread statistic", identical=identical)
        return test_runs(ledger.runs, self.pooled(ledger.elements), identical)

    def spread_known(self) -> bool:
        """Whether the pooled variance per history is known (the test needs it)."""
        return self._within is not None and bool(self._histories)

    def pooled(self, elements: np.ndarray) -> Pooled:
        """The pooled statistics at these flat elements (bin x energy bins + energy bin)."""
        assert self._total is not None and self._within is not None
        assert self._between is not None and self._histories is not None
        usable = np.ones(elements.shape, dtype=bool)
        if self._outside is not None:
            usable = ~self._outside.ravel()[elements]
        return Pooled(self._histories, self._total.ravel()[elements],
                      self._within.ravel()[elements] + self._between.ravel()[elements],
                      usable)

    def result(self) -> Scorer:
        """The combined scorer: the first run's header, rows in its order convention.

        Its arrays may share memory with the accumulator: copy them before changing them.
        """
        header = self._started()
        if self._order == K_FASTEST and self._present.all():  # no keys to sort
            return Scorer(header=header, indices=all_indices(header), every_bin_in_order=True,
                          values={name: self._final(name) for name in header.statistics})
        keys = sort_keys(header, np.flatnonzero(self._present), self._order)
        every_bin_in_order = keys.size == header.n_bins and bool(np.all(keys[1:] > keys[:-1]))
        if every_bin_in_order:  # no copies: the rows are the accumulator's arrays
            values = {name: self._final(name) for name in header.statistics}
            return Scorer(header=header, indices=all_indices(header), values=values,
                          every_bin_in_order=True)
        values = {name: self._final(name)[keys] for name in header.statistics}
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
        self.ledger.start(header.n_bins * max(1, header.n_extra_bins))
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

    def _record(self, run: RunContribution, source: object,
                nested: LedgerFile | None) -> None:
        """What the consistency test keeps of this run (a few kB, ledger.py)."""
        if not run.histories:
            self.ledger.add_untestable("the files do not report their histories (nor "
                                       "were they given)", str(source), run_digest(run))
            return
        if nested is not None:
            self.ledger.add_nested(nested)
            return
        elements = self.ledger.elements
        n = float(run.histories)
        sums = (run.at(run.total, elements) if run.total is not None else
                run.at(run.mean, elements) * n)  # type: ignore[arg-type]
        m2 = None if run.m2 is None else run.at(run.m2, elements)
        self.ledger.add(RunValues(str(source), run.histories, sums, m2))

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
            if run.keys is None:
                np.minimum(self._minimum, run.minimum, out=self._minimum)
            else:
                self._minimum[rows] = np.minimum(self._minimum[rows], run.minimum)
        if self._maximum is not None and run.maximum is not None:
            if run.keys is None:
                np.maximum(self._maximum, run.maximum, out=self._maximum)
            else:
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
        value = run.mean if run.mean is not None else run.total
        if weight == 0 or value is None:
            return
        # The run's value: its mean per history (Sum / N) when N is known, else its Sum.
        per = weight if run.mean is None and run.histories is not None else 1.0
        before = self._weight
        self._weight += weight
        # In place, in one scratch array: a run's arrays are large, allocation is not free.
        delta = self._scratch()
        if run.keys is None:
            np.divide(value, per, out=delta)
            delta -= self._mean
        else:  # bins without a row: the run's value there is 0
            np.negative(self._mean, out=delta)
            delta[rows] += value / per
        share = weight / self._weight
        delta *= share
        self._mean += delta
        # between += before w / W (value - mean)^2, with delta now share (value - mean)
        np.multiply(delta, delta, out=delta)
        delta *= before / share
        self._between += delta

    def _scratch(self) -> np.ndarray:
        assert self._mean is not None
        if self._scratch_array is None:
            self._scratch_array = np.empty_like(self._mean)
        return self._scratch_array

    def _check_empty(self, run: RunContribution, source: object) -> None:
        for values in (run.total, run.count):
            if values is not None and np.any(values != 0):
                raise ToolError(f"{source}: reports 0 histories but non-zero values; "
                                "the file is inconsistent: rerun this run")

    def _final(self, name: str) -> np.ndarray:
        value = self._final_statistic(name)
        if name != HISTORIES and self._outside is not None and self._outside.any():
            value = np.where(self._outside, OUTSIDE_STRUCTURE, value)
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


def run_digest(run: RunContribution) -> bytes:
    """A digest of a run's first moments: runs with other seeds differ in nearly every
    bin, so equal digests are the same seed twice."""
    digest = hashlib.blake2b(str(run.histories).encode(), digest_size=16)
    for array in (run.keys, run.total if run.total is not None else run.mean):
        digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
    return digest.digest()
