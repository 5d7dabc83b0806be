"""One PNG per merged scorer, drawn as a physicist expects to read it.

  * one axis with more than one bin: the profile along it, +-1 standard error as a band,
    above the relative standard error in %;
  * two or three axes (a dose grid): the plane through the maximum containing the beam,
    the beam entering from the left, value and relative error side by side (bins below
    10 % of the maximum grey in the error map, the legend says why), the central-axis
    depth-dose curve and the lateral profile through the maximum, with bands
    (doseplots.py);
  * energy/time-binned scorers: the spectrum of the bin with the largest total against
    energy (or time): bin centres from the header, on a log axis when TOPAS binned
    logarithmically, under- and overflow left out.
The uncertainty is the history-by-history one when the files allow it, else the batch
(run-to-run) one. matplotlib is optional on the reducer node: it is imported here only,
lazily, with the headless Agg backend; without it plot_scorer() returns a note and the
merge goes on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.topas.doseplots import band_label, draw_grid
from common.topas.geometry import axes, extra_axis
from common.topas.summary import ScorerView


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
    return draw_grid(plt, view, error, error_label, title)


def _error(view: ScorerView) -> tuple[np.ndarray | None, str]:
    if view.relative_error is not None:
        return view.relative_error, "relative standard error (histories) %"
    if view.relative_batch_error is not None:
        return view.relative_batch_error, "relative standard error (between runs) %"
    return None, ""


def _with_band(top: Any, bottom: Any, x: np.ndarray, values: np.ndarray,
               relative: np.ndarray | None, error_label: str, label: str,
               edges: np.ndarray | None = None) -> None:
    """Values (as steps between `edges` when given: histogram bins) with a +-1 standard
    error band above, the relative error in % below."""
    spread = None if relative is None else np.nan_to_num(values * relative)
    if edges is not None:
        top.stairs(values, edges, color="C0", lw=1.2, label=label)
        if spread is not None:
            top.stairs(values + spread, edges, baseline=values - spread, fill=True,
                       color="C0", alpha=0.3, label=band_label(values, relative))
    else:
        top.plot(x, values, ".-", ms=3, lw=1.2, color="C0", label=label)
        if spread is not None:
            top.fill_between(x, values - spread, values + spread, color="C0", alpha=0.3,
                             lw=0, label=band_label(values, relative))
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    if relative is None:
        bottom.text(0.5, 0.5, "no uncertainty available", ha="center", va="center",
                    transform=bottom.transAxes)
        return
    bottom.plot(x, relative * 100, ".-", ms=3, lw=1)
    bottom.set_ylabel(error_label, fontsize=8)
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)


def _profile(plt: Any, view: ScorerView, axis: int, error: np.ndarray | None,
             error_label: str, title: str) -> Any:
    peak = np.unravel_index(int(np.nanargmax(view.estimate)), view.estimate.shape)
    index: list[Any] = list(peak)
    index[axis] = slice(None)
    values = view.estimate[tuple(index)]
    found = axes(view.header)
    positions = found[axis].centres() if found else np.arange(values.size, dtype=float)
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6),
                                         height_ratios=(2, 1))
    _with_band(top, bottom, positions, values,
               None if error is None else error[tuple(index)], error_label,
               f"profile along {found[axis].name if found else 'ijk'[axis]}")
    top.set_ylabel(view.label)
    bottom.set_xlabel(found[axis].label if found else f"bin {'ijk'[axis]}")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _spectrum(plt: Any, view: ScorerView, error: np.ndarray | None, error_label: str,
              title: str) -> Any:
    totals = np.nansum(view.estimate, axis=-1)
    voxel = np.unravel_index(int(np.argmax(totals)), totals.shape)
    binning = extra_axis(view.header)
    assert binning is not None
    inner = view.header.n_extra_bins - (3 if "incident track" in
                                        view.header.extra_binning[0] else 2)
    shown = slice(1, 1 + inner)  # leave out under/overflow (and no-track) bins
    values = view.estimate[voxel][shown]
    relative = None if error is None else error[voxel][shown]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6),
                                         height_ratios=(2, 1))
    _with_band(top, bottom, binning.centres(inner), values, relative, error_label,
               "spectrum" + ("" if view.header.shape is None else
                             f" in bin (i, j, k) = {tuple(map(int, voxel))}"),
               binning.edges)
    if binning.logarithmic:
        top.set_xscale("log")
    top.set_ylabel(view.label)
    bottom.set_xlabel(binning.label + (", logarithmic bins" if binning.logarithmic else ""))
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
