"""The short text summary of a merged scorer, and the per-bin view the plots share.

A ScorerView puts a merged scorer on its full grid: the estimate in each bin (the mean
per history when the histories are known, else the Sum), its relative standard error of
the mean from the histories (sqrt(Variance / N) / Mean, needs a spread statistic) and
from the spread between runs (batch), with bins outside an RT structure masked. The
summary reports the histories, the total, the maximum, and the largest relative
standard errors among the bins above a fraction (10 %) of the maximum, where they mean
something; faint bins always have large relative errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.topas.combine import BatchStatistics
from common.topas.geometry import position_of
from common.topas.header import (HISTORIES, MEAN, SECOND_MOMENT, STANDARD_DEVIATION,
                                 SUM, VARIANCE, ScorerHeader)
from common.topas.scorer import Scorer, on_grid

THRESHOLD = 0.10  # bins above this fraction of the maximum count for the summary
HIGH_DOSE = 0.50  # the region at or above this fraction of the maximum is averaged
_OUTSIDE_STRUCTURE = -1.0


@dataclass(frozen=True)
class ScorerView:
    """A merged scorer on its full grid, shape (ni, nj, nk[, energy bins]).

    Arrays are NaN in bins outside an RT structure; `relative_error` (from the
    histories) and `relative_batch_error` (from the runs) are None when not available.
    """

    header: ScorerHeader
    runs: int
    histories: int | None
    per_history: bool  # estimate is the mean per history (else the Sum)
    estimate: np.ndarray
    relative_error: np.ndarray | None
    relative_batch_error: np.ndarray | None

    @property
    def label(self) -> str:
        unit = f" ({self.header.unit})" if self.header.unit else ""
        what = "mean per history" if self.per_history else "sum"
        return f"{self.header.quantity} {what}{unit}"


def scorer_view(merged: Scorer, runs: int, batch: BatchStatistics | None,
                histories: int | None = None) -> ScorerView | None:
    """The view of a merged scorer; None if it has neither Sum nor Mean.

    `histories` is the total when the file does not report it (from --histories).
    """
    values = merged.values
    n = merged.histories() if HISTORIES in values else histories
    first = _first_moment(values, n)
    if first is None:
        return None
    estimate, per_history = first
    header = merged.header
    outside = np.ones(estimate.shape, dtype=bool)
    for name, array in values.items():
        if name != HISTORIES:
            outside &= array == _OUTSIDE_STRUCTURE
    estimate = np.where(outside, np.nan, estimate)
    relative = _relative_error(values, n, estimate) if per_history else None
    batch_relative = _relative_batch(batch, estimate, merged) if batch else None
    keys = merged.bin_keys()
    return ScorerView(header=header, runs=runs, histories=n, per_history=per_history,
                      estimate=_on_grid(header, keys, estimate),
                      relative_error=_on_grid(header, keys, relative),
                      relative_batch_error=_on_grid(header, keys, batch_relative))


@dataclass(frozen=True)
class Target:
    """An adaptive campaign's target (simconfig.json), for the summary of its scorer."""

    scorer: str  # TARGET_SCORER: the scorer file, relative to a run folder
    percent: float  # TARGET_UNCERTAINTY_PERCENT
    region_percent: float  # TARGET_REGION_PERCENT_OF_MAX


def largest_in_region(estimate: np.ndarray, relative: np.ndarray,
                      fraction: float) -> tuple[float | None, int]:
    """The target's measure, as the adaptive runner takes it (common/workflow/adaptive.py
    calls this too): the largest relative standard error over the bins whose estimate
    (summed over energy/time bins, in absolute value) is at least `fraction` of the
    largest; and how many bins that is. `estimate` and `relative` are (bins, ...)."""
    per_bin = np.abs(estimate.reshape(estimate.shape[0], -1).sum(axis=1))
    top = np.nanmax(per_bin) if np.isfinite(per_bin).any() else 0.0
    if not top > 0:
        return None, 0
    region = per_bin >= fraction * top
    values = relative.reshape(relative.shape[0], -1)[region]
    worst = np.nanmax(values) if np.isfinite(values).any() else math.nan
    return (float(worst) if math.isfinite(worst) else None), int(region.sum())


def target_line(view: ScorerView, target: Target) -> str:
    """The target's measure on the merged result, worded and rounded as the runner says it."""
    relative, method = ((view.relative_error, "history") if view.relative_error is not None
                        else (view.relative_batch_error, "batch"))
    bins = view.header.n_bins
    value = None
    if relative is not None:
        value, _ = largest_in_region(view.estimate.reshape(bins, -1),
                                     relative.reshape(bins, -1), target.region_percent / 100)
    reached = "not measured" if value is None else f"{100 * value:.3g} %"
    met = value is not None and value <= target.percent / 100
    return (f"Target of the adaptive campaign: uncertainty ({method} method, bins >= "
            f"{target.region_percent:g} % of the maximum of {target.scorer}): {reached}; "
            f"target {target.percent:g} %: " + ("met" if met else "NOT met"))


def summary_text(view: ScorerView, name: str, extras: dict[str, Path],
                 notes: tuple[str, ...] = (), target: Target | None = None) -> str:
    """A few lines for one merged scorer; `extras` names the files written beside it,
    `notes` are what the merge found about the runs (left out, identical, consistency),
    `target` the adaptive campaign's target when this is its scorer."""
    header = view.header
    lines = [f"Scorer {header.scorer_name} ({name}), merged from {view.runs} runs",
             f"  {header.quantity}{f' ({header.unit})' if header.unit else ''}: "
             f"{_grid_story(header)}; statistics {' '.join(header.statistics)}",
             "  " + _histories_line(view)]
    lines += ["  " + line for line in _value_lines(view)]
    lines += ["  " + target_line(view, target)] if target is not None else []
    lines += ["  " + note for note in notes]
    lines += [f"  {what}: {path}" for what, path in extras.items()]
    return "\n".join(lines)


# ------------------------------------------------------------------ view internals

def _first_moment(values: dict[str, np.ndarray],
                  n: int | None) -> tuple[np.ndarray, bool] | None:
    if n and SUM in values:
        return values[SUM] / n, True
    if MEAN in values:
        return values[MEAN], True
    if SUM in values:
        return values[SUM], False
    return None


def _relative_error(values: dict[str, np.ndarray], n: int | None,
                    mean: np.ndarray) -> np.ndarray | None:
    if not n or n < 2:
        return None
    if VARIANCE in values:
        variance = values[VARIANCE]
    elif STANDARD_DEVIATION in values:
        variance = values[STANDARD_DEVIATION] ** 2
    elif SECOND_MOMENT in values:
        variance = values[SECOND_MOMENT] / (n - 1)
    else:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.maximum(variance, 0) / n) / np.abs(mean)


def _relative_batch(batch: BatchStatistics, estimate: np.ndarray,
                    merged: Scorer) -> np.ndarray:
    # batch rows are in ascending bin order, the merged rows in the file's row order
    position = np.searchsorted(batch.keys, merged.bin_keys())
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = batch.standard_error / np.abs(batch.estimate)
    return np.where(np.isnan(estimate), np.nan, relative[position])


def _on_grid(header: ScorerHeader, keys: np.ndarray,
             array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else on_grid(header, keys, array)


# ------------------------------------------------------------------ text internals

def _grid_story(header: ScorerHeader) -> str:
    if header.shape is None:
        story = "one bin (undivided)"
    else:
        story = " x ".join(str(n) for n in header.shape) + f" = {header.n_bins} bins"
    if header.n_extra_bins:
        story += f", {header.n_extra_bins} energy/time bins each (under/overflow included)"
    return story


def _histories_line(view: ScorerView) -> str:
    if view.histories is None:
        return ("Histories: not reported by the files; the spread between runs is the "
                "uncertainty (give --histories N for means per history)")
    return f"Histories: {view.histories} in total over {view.runs} runs"


def _value_lines(view: ScorerView) -> list[str]:
    estimate = view.estimate
    valid = np.isfinite(estimate)
    if not valid.any():
        return ["No bin has a value (every bin is outside the RT structure)"]
    peak = np.nanmax(estimate)
    if not peak > 0:
        return ["No bin has a positive value"]
    relative, source = _best_error(view)
    lines = [_maximum_line(view, peak, relative), _high_region_line(view, peak, relative)]
    if source:
        lines.append(f"(uncertainties: 1 standard error, {source})")
    bright = valid & (estimate > THRESHOLD * peak)
    lines.append(f"Bins above {THRESHOLD:.0%} of the maximum: {int(bright.sum())} of "
                 f"{estimate.size}")
    lines += _worst("relative standard error of the mean (history by history)",
                    view.relative_error, bright, view.header)
    lines += _worst("relative standard error from the spread between runs (batch)",
                    view.relative_batch_error, bright, view.header)
    return lines


def _best_error(view: ScorerView) -> tuple[np.ndarray | None, str]:
    if view.relative_error is not None:
        return view.relative_error, "history by history"
    if view.relative_batch_error is not None:
        return view.relative_batch_error, "from the spread between runs"
    return None, ""


def _unit(view: ScorerView) -> str:
    return f" {view.header.unit}" if view.header.unit else ""


def _plus_minus(value: float, relative: float | None) -> str:
    if relative is None or not np.isfinite(relative):
        return f"{value:.6g}"
    return f"{value:.6g} +- {abs(value) * relative:.2g} ({relative:.2%})"


def _maximum_line(view: ScorerView, peak: float, relative: np.ndarray | None) -> str:
    where = np.unravel_index(np.nanargmax(view.estimate), view.estimate.shape)
    error = None if relative is None else float(relative[where])
    line = (f"Maximum {'mean per history' if view.per_history else 'sum'}: "
            f"{_plus_minus(float(peak), error)}{_unit(view)} in bin {_bin_name(view.header, where)}")
    position = position_of(view.header, tuple(int(i) for i in where))
    return line + (f", centre at {position}" if position else "")


def _high_region_line(view: ScorerView, peak: float, relative: np.ndarray | None) -> str:
    """Mean over the bins at or above HIGH_DOSE of the maximum; its standard error takes
    the bins as independent (neighbouring voxels are slightly correlated in practice)."""
    region = np.isfinite(view.estimate) & (view.estimate >= HIGH_DOSE * peak)
    values = view.estimate[region]
    mean = float(values.mean())
    error = None
    if relative is not None and np.all(np.isfinite(relative[region])):
        error = float(np.sqrt(np.sum((values * relative[region]) ** 2)) / values.size / mean)
    return (f"Mean over the {values.size} bins at or above {HIGH_DOSE:.0%} of the maximum: "
            f"{_plus_minus(mean, error)}{_unit(view)}")


def _worst(what: str, relative: np.ndarray | None, bright: np.ndarray,
           header: ScorerHeader) -> list[str]:
    if relative is None:
        return []
    values = np.where(bright & np.isfinite(relative), relative, -np.inf)
    if not np.isfinite(values.max()):
        return [f"Largest {what}: not available"]
    where = np.unravel_index(np.argmax(values), values.shape)
    median = np.median(relative[bright & np.isfinite(relative)])
    return [f"Largest {what} among them: {values.max():.3%} in bin "
            f"{_bin_name(header, where)} (median {median:.3%})"]


def _bin_name(header: ScorerHeader, where: tuple[int, ...]) -> str:
    name = f"(i, j, k) = ({where[0]}, {where[1]}, {where[2]})" if header.shape else "0"
    if header.n_extra_bins:
        name += f", energy/time bin {where[3]} (0 = underflow)"
    return name


# ------------------------------------------------------------------ block by block

class GridView:
    """A ScorerView built a block of rows at a time (blocks.py): the estimate and its
    relative error in float64, the batch relative error in float32 (20 bytes a value)."""

    def __init__(self, header: ScorerHeader) -> None:
        self.header = header
        self._tail = (header.n_extra_bins,) if header.n_extra_bins else ()
        self._width = max(1, header.n_extra_bins)
        self._estimate = np.full((header.n_bins, self._width), np.nan)
        self._relative: np.ndarray | None = None
        self._batch: np.ndarray | None = None
        self._per_history = True
        self._histories: int | None = None
        self._filled = False

    def fill(self, keys: np.ndarray, merged: Scorer, batch: BatchStatistics | None,
             histories: int | None) -> None:
        """One merged block (rows for bins `keys`)."""
        block = scorer_view(merged, 0, batch, histories)
        if block is None:
            return
        self._filled, self._per_history = True, block.per_history
        self._histories = block.histories
        self._estimate[keys] = block.estimate.reshape(keys.size, -1)
        if block.relative_error is not None:
            if self._relative is None:
                self._relative = np.full(self._estimate.shape, np.nan)
            self._relative[keys] = block.relative_error.reshape(keys.size, -1)
        if block.relative_batch_error is not None:
            if self._batch is None:
                self._batch = np.full(self._estimate.shape, np.nan, dtype=np.float32)
            self._batch[keys] = block.relative_batch_error.reshape(keys.size, -1)

    def finish(self, runs: int) -> ScorerView | None:
        if not self._filled:
            return None
        shape = (self.header.shape or (1, 1, 1)) + self._tail

        def grid(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array.reshape(shape)
        return ScorerView(header=self.header, runs=runs, histories=self._histories,
                          per_history=self._per_history, estimate=self._estimate.reshape(shape),
                          relative_error=grid(self._relative),
                          relative_batch_error=grid(self._batch))


def grid_view(header: ScorerHeader) -> GridView:
    return GridView(header)
