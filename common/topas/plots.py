"""One PNG per merged scorer: a profile or a slice through the maximum, with its
relative uncertainty.

  * one axis with more than one bin: the profile along it (value with +-1 standard
    error bars) above the relative standard error in %;
  * two or more: the plane of the two longest axes through the maximum bin, value and
    relative standard error side by side (the error only where the value is above 10 %
    of the maximum, elsewhere it is noise);
  * energy/time-binned scorers: the spectrum of the bin with the largest total.
The uncertainty is the history-by-history one when the files allow it, else the batch
(run-to-run) one. matplotlib is optional on the reducer node: it is imported here only,
lazily, with the headless Agg backend; without it plot_scorer() returns a note and the
merge goes on.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from common.topas.summary import THRESHOLD, ScorerView

_BINNING = re.compile(r"(?P<axis>\S+) in (?P<count>\d+) bins? +of (?P<width>\S+) (?P<unit>\S+)")
_ENERGY_BINS = re.compile(r" in (?P<count>\d+) bins of (?P<width>\S+) (?P<unit>\S+) from "
                          r"(?P<low>\S+) \S+ to")
_CENTRED_AXES = ("X", "Y", "Z")  # box axes are centred on the component


def matplotlib_missing() -> str | None:
    """None if plots can be drawn, else a one-line reason."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots skipped: matplotlib is not installed on this machine"
    return None


def plot_scorer(view: ScorerView, title: str, path: Path) -> str | None:
    """Draw the view into path (PNG). Returns None, or why nothing was drawn."""
    missing = matplotlib_missing()
    if missing:
        return missing
    import matplotlib
    matplotlib.use("Agg")  # headless: the reducer node has no display
    import matplotlib.pyplot as plt

    try:
        figure = _draw(plt, view, title)
        if figure is None:
            return "a single value: nothing to plot"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    except Exception as error:  # noqa: BLE001  a picture must never cost the merge
        return f"plot failed: {error}"
    finally:
        plt.close("all")
    return None


def _draw(plt: Any, view: ScorerView, title: str) -> Any | None:
    error, error_label = _error(view)
    header = view.header
    if header.n_extra_bins:
        return _spectrum(plt, view, error, error_label, title)
    long_axes = [axis for axis, n in enumerate(header.shape or (1, 1, 1)) if n > 1]
    if not long_axes:
        return None
    if len(long_axes) == 1:
        return _profile(plt, view, long_axes[0], error, error_label, title)
    return _slice(plt, view, error, error_label, title)


def _error(view: ScorerView) -> tuple[np.ndarray | None, str]:
    if view.relative_error is not None:
        return view.relative_error, "relative standard error (histories) %"
    if view.relative_batch_error is not None:
        return view.relative_batch_error, "relative standard error (between runs) %"
    return None, ""


def _profile(plt: Any, view: ScorerView, axis: int, error: np.ndarray | None,
             error_label: str, title: str) -> Any:
    values = _line_through_maximum(view.estimate, axis)
    positions, label = _axis_positions(view, axis)
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6),
                                         height_ratios=(2, 1))
    relative = None if error is None else _line_through_maximum(error, axis, view.estimate)
    top.errorbar(positions, values, yerr=None if relative is None else values * relative,
                 fmt=".-", ms=3, lw=1, elinewidth=0.8, capsize=1.5)
    top.set_ylabel(view.label)
    _relative_panel(bottom, positions, relative, error_label)
    bottom.set_xlabel(label)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _spectrum(plt: Any, view: ScorerView, error: np.ndarray | None, error_label: str,
              title: str) -> Any:
    totals = np.nansum(view.estimate, axis=-1)
    voxel = np.unravel_index(np.argmax(totals), totals.shape)
    values = view.estimate[voxel]
    relative = None if error is None else error[voxel]
    positions, label = _energy_positions(view)
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6),
                                         height_ratios=(2, 1))
    inner = slice(1, 1 + positions.size)  # leave out under/overflow (and no-track) bins
    rel = None if relative is None else relative[inner]
    top.errorbar(positions, values[inner], yerr=None if rel is None else values[inner] * rel,
                 fmt=".-", ms=3, lw=1, elinewidth=0.8, capsize=1.5)
    top.set_ylabel(view.label)
    where = "" if view.header.shape is None else f" in bin (i, j, k) = {tuple(map(int, voxel))}"
    top.set_title(f"spectrum{where}", fontsize=9)
    _relative_panel(bottom, positions, rel, error_label)
    bottom.set_xlabel(label)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _slice(plt: Any, view: ScorerView, error: np.ndarray | None, error_label: str,
           title: str) -> Any:
    shape = view.estimate.shape
    across = sorted(sorted(range(3), key=lambda a: -shape[a])[:2])
    fixed = next(a for a in range(3) if a not in across)
    peak = np.unravel_index(np.nanargmax(view.estimate), shape)
    plane = [slice(None)] * 3
    plane[fixed] = peak[fixed]
    values = view.estimate[tuple(plane)]
    panels = 1 if error is None else 2
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 5), squeeze=False)
    extent = _extent(view, across)
    _image(figure, axes[0][0], values, extent, view.label, across, view)
    if error is not None:
        relative = error[tuple(plane)] * 100
        faint = ~(values > THRESHOLD * np.nanmax(view.estimate))
        _image(figure, axes[0][1], np.where(faint, np.nan, relative), extent, error_label,
               across, view)
    names = _axis_names(view)
    figure.suptitle(f"{title}\nslice {names[fixed]} bin {peak[fixed]} (through the maximum)",
                    fontsize=10)
    figure.tight_layout()
    return figure


def _image(figure: Any, axis: Any, values: np.ndarray, extent: list[float], label: str,
           across: list[int], view: ScorerView) -> None:
    # rows of the image: the second axis, columns: the first
    shown = axis.imshow(values.T, origin="lower", extent=extent, aspect="auto",
                        interpolation="nearest")
    figure.colorbar(shown, ax=axis, label=label)
    names = [_axis_positions(view, a)[1] for a in across]
    axis.set_xlabel(names[0])
    axis.set_ylabel(names[1])


def _relative_panel(axis: Any, positions: np.ndarray, relative: np.ndarray | None,
                    label: str) -> None:
    if relative is None:
        axis.text(0.5, 0.5, "no uncertainty available", ha="center", va="center",
                  transform=axis.transAxes)
        return
    axis.plot(positions, relative * 100, ".-", ms=3, lw=1)
    axis.set_ylabel(label, fontsize=8)
    axis.set_ylim(bottom=0)


def _line_through_maximum(array: np.ndarray, axis: int,
                          reference: np.ndarray | None = None) -> np.ndarray:
    reference = array if reference is None else reference
    peak = np.unravel_index(np.nanargmax(reference), reference.shape)
    index = list(peak)
    index[axis] = slice(None)  # type: ignore[call-overload]
    return array[tuple(index)]


def _axis_names(view: ScorerView) -> list[str]:
    return [_BINNING.match(line).group("axis") if _BINNING.match(line) else "ijk"[a]
            for a, line in enumerate(view.header.binning)] or ["i", "j", "k"]


def _axis_positions(view: ScorerView, axis: int) -> tuple[np.ndarray, str]:
    """Bin centres along an axis and its label: TOPAS box axes are centred on the
    component, others (R, Phi, Theta) start at 0; bin numbers if the line is unusual."""
    count = (view.header.shape or (1, 1, 1))[axis]
    index = np.arange(count)
    match = _BINNING.match(view.header.binning[axis]) if view.header.binning else None
    if match is None:
        return index.astype(float), f"bin {'ijk'[axis]}"
    try:
        width = float(match.group("width"))
    except ValueError:
        return index.astype(float), f"{match.group('axis')} bin"
    offset = count / 2 if match.group("axis") in _CENTRED_AXES else 0.0
    return (index + 0.5 - offset) * width, f"{match.group('axis')} ({match.group('unit')})"


def _energy_positions(view: ScorerView) -> tuple[np.ndarray, str]:
    line = view.header.extra_binning[0] if view.header.extra_binning else ""
    match = _ENERGY_BINS.search(line)
    inner = view.header.n_extra_bins - (3 if "incident track" in line else 2)
    if match is None:
        return np.arange(1, inner + 1, dtype=float), "energy/time bin"
    try:
        width, low = float(match.group("width")), float(match.group("low"))
    except ValueError:
        return np.arange(1, inner + 1, dtype=float), "energy/time bin"
    # Centres of equal bins; TOPAS's log binning prints log10 widths, so label bins then.
    if abs(low + inner * width - _upper(line)) > 1e-3 * max(abs(_upper(line)), 1):
        return np.arange(1, inner + 1, dtype=float), "energy/time bin (log binning)"
    return low + (np.arange(inner) + 0.5) * width, f"{_kind(line)} ({match.group('unit')})"


def _upper(line: str) -> float:
    match = re.search(r" to (\S+)", line)
    try:
        return float(match.group(1)) if match else float("nan")
    except ValueError:
        return float("nan")


def _kind(line: str) -> str:
    return "time" if "time" in line.split(" in ")[0] else "energy"


def _extent(view: ScorerView, across: list[int]) -> list[float]:
    extent: list[float] = []
    for axis in across:
        positions, _ = _axis_positions(view, axis)
        half = (positions[1] - positions[0]) / 2 if positions.size > 1 else 0.5
        extent += [float(positions[0] - half), float(positions[-1] + half)]
    return extent
