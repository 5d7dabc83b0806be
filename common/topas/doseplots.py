"""The picture of a scorer binned along two or three axes, as a physicist reads a dose.

Four panels: the plane through the maximum that contains the beam axis, the estimate
and its relative standard error side by side, the beam entering from the left; below
them the central-axis depth-dose curve and the lateral profile through the maximum,
each with its +-1 standard error band. The beam (depth) axis is the one along which the
scored quantity spreads widest relative to its length; a pencil or broad beam is
narrow across it. The beam enters at the end of that axis with more dose (photons build
up and fall off, protons and electrons stop: either way the far end has less). The
central axis runs along the beam through the lateral bin of the largest integral.
Relative errors are drawn only where the estimate is above 10 % of the maximum; the
other bins are grey, and the legend says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.topas.geometry import axes
from common.topas.summary import THRESHOLD, ScorerView

_EDGE_FRACTION = 0.1  # the outer tenth of the depth axis at each end decides the entrance
_MASK_COLOUR = "0.85"


@dataclass(frozen=True)
class Beam:
    """Which axis the beam runs along and from which end it enters."""

    depth: int  # axis index 0, 1 or 2
    lateral: int  # the longer of the other two axes
    reversed: bool  # True: the beam enters at the high-index end of the depth axis
    centre: tuple[int, int, int]  # a voxel on the central axis (its depth index unused)


def find_beam(estimate: np.ndarray) -> Beam:
    """The beam geometry of a (ni, nj, nk) grid of a scored quantity."""
    values = np.nan_to_num(np.clip(estimate, 0, None))
    long_axes = [axis for axis in range(3) if estimate.shape[axis] > 1]
    depth = max(long_axes, key=lambda axis: _relative_spread(values, axis))
    others = [axis for axis in long_axes if axis != depth] or [a for a in range(3)
                                                                if a != depth]
    lateral = max(others, key=lambda axis: estimate.shape[axis])
    integral = values.sum(axis=depth)
    flat = np.unravel_index(int(np.argmax(integral)), integral.shape)
    centre = list(flat)
    centre.insert(depth, 0)
    line = _line(values, depth, tuple(centre))
    edge = max(1, int(round(_EDGE_FRACTION * line.size)))
    return Beam(depth=depth, lateral=lateral,
                reversed=bool(line[-edge:].mean() > line[:edge].mean()),
                centre=(int(centre[0]), int(centre[1]), int(centre[2])))


def _relative_spread(values: np.ndarray, axis: int) -> float:
    """The RMS width of the profile integrated onto `axis`, over the axis length."""
    profile = values.sum(axis=tuple(a for a in range(3) if a != axis))
    if profile.sum() <= 0:
        return 0.0
    index = np.arange(profile.size)
    mean = (index * profile).sum() / profile.sum()
    return float(np.sqrt(((index - mean) ** 2 * profile).sum() / profile.sum()) / profile.size)


def _line(array: np.ndarray, axis: int, through: tuple[int, ...]) -> np.ndarray:
    index: list[Any] = list(through)
    index[axis] = slice(None)
    return array[tuple(index)]


def draw_grid(plt: Any, view: ScorerView, error: np.ndarray | None, error_label: str,
              title: str) -> Any:
    """The four-panel figure of a 2-D or 3-D grid."""
    beam = find_beam(view.estimate)
    peak = np.unravel_index(int(np.nanargmax(view.estimate)), view.estimate.shape)
    figure, panels = plt.subplots(2, 2, figsize=(13, 9.5))
    _plane(figure, panels[0][0], panels[0][1], view, error, error_label, beam, peak)
    _depth_dose(panels[1][0], view, error, beam)
    _lateral(panels[1][1], view, error, beam, peak)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure


def _positions(view: ScorerView, axis: int) -> tuple[np.ndarray, str]:
    found = axes(view.header)
    if not found:
        return np.arange(view.estimate.shape[axis], dtype=float), f"bin {'ijk'[axis]}"
    return found[axis].centres(), found[axis].label


def _depths(view: ScorerView, beam: Beam) -> tuple[np.ndarray, str]:
    """Depth of each bin centre from the entrance face, and the axis label."""
    centres, label = _positions(view, beam.depth)
    width = centres[1] - centres[0] if centres.size > 1 else 1.0
    face = centres[-1] + width / 2 if beam.reversed else centres[0] - width / 2
    name = label.split(" ")[0]
    side = ("+" if beam.reversed else "-") + name
    unit = label[len(name):].strip() or "(bins)"
    return np.abs(centres - face), f"depth along {name} from the {side} face {unit}"


def band_label(values: np.ndarray, relative: np.ndarray) -> str:
    """The band's legend entry, with how wide it is where the curve matters (bins at or
    above 10 % of its maximum): a band of 0.4 % is thinner than the line drawn over it, and
    a reader must not take its absence for no uncertainty."""
    top = np.nanmax(values) if np.isfinite(values).any() else 0.0
    shown = relative[np.isfinite(relative) & (values >= THRESHOLD * top)] if top > 0 else []
    if len(shown) == 0:
        return "±1 standard error"
    width = 100 * float(np.nanmax(shown))
    thin = ": thinner than the line" if width < 1.0 else ""
    return f"±1 standard error (up to {width:.2g} %{thin})"


def _band(axis: Any, x: np.ndarray, values: np.ndarray, relative: np.ndarray | None,
          label: str) -> None:
    axis.plot(x, values, "-", lw=1.4, color="C0", label=label)
    if relative is not None:
        spread = np.nan_to_num(values * relative)
        axis.fill_between(x, values - spread, values + spread, color="C0", alpha=0.3,
                          lw=0, label=band_label(values, relative))
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)


def _depth_dose(axis: Any, view: ScorerView, error: np.ndarray | None, beam: Beam) -> None:
    depths, label = _depths(view, beam)
    order = np.argsort(depths)
    values, y_label = scaled(_line(view.estimate, beam.depth, beam.centre)[order], view.label)
    relative = None if error is None else _line(error, beam.depth, beam.centre)[order]
    _band(axis, depths[order], values, relative, "central axis")
    axis.set_xlabel(label)
    axis.set_ylabel(y_label)
    axis.set_title("depth-dose curve on the central axis", fontsize=10)
    axis.set_ylim(bottom=0)


def _lateral(axis: Any, view: ScorerView, error: np.ndarray | None, beam: Beam,
             peak: tuple[Any, ...]) -> None:
    positions, label = _positions(view, beam.lateral)
    through = tuple(int(i) for i in peak)
    values, y_label = scaled(_line(view.estimate, beam.lateral, through), view.label)
    relative = None if error is None else _line(error, beam.lateral, through)
    _band(axis, positions, values, relative, "through the maximum")
    depths, depth_label = _depths(view, beam)
    unit = depth_label.rsplit(" ", 1)[-1] if depth_label.endswith(")") else "bins"
    axis.set_xlabel(label)
    axis.set_ylabel(y_label)
    axis.set_title(f"lateral profile at the depth of the maximum, "
                   f"{depths[through[beam.depth]]:.3g} {unit.strip('()')}", fontsize=10)
    axis.set_ylim(bottom=0)


def _plane(figure: Any, left: Any, right: Any, view: ScorerView, error: np.ndarray | None,
           error_label: str, beam: Beam, peak: tuple[Any, ...]) -> None:
    fixed = next(a for a in range(3) if a not in (beam.depth, beam.lateral))
    plane: list[Any] = [slice(None)] * 3
    plane[fixed] = int(peak[fixed])
    # rows of the image: the lateral axis; columns: depth from the entrance (left)
    values = _in_plane(view.estimate, plane, beam)
    depths, depth_label = _depths(view, beam)
    lateral, lateral_label = _positions(view, beam.lateral)
    half = (lateral[1] - lateral[0]) / 2 if lateral.size > 1 else 0.5
    extent = [0.0, float(depths.max() + depths.min()), float(lateral[0] - half),
              float(lateral[-1] + half)]
    _image(figure, left, values, extent, view.label, depth_label, lateral_label, None)
    left.set_title("estimate in the plane through the maximum (beam from the left)",
                   fontsize=10)
    if error is None:
        right.axis("off")
        right.text(0.5, 0.5, "no uncertainty available", ha="center", va="center")
        return
    relative = _in_plane(error, plane, beam)
    faint = ~(values > THRESHOLD * np.nanmax(view.estimate))
    _image(figure, right, np.ma.masked_where(faint | ~np.isfinite(relative), relative * 100),
           extent, error_label, depth_label, lateral_label,
           f"grey: below {THRESHOLD:.0%} of the maximum (error not shown)")
    right.set_title("relative standard error", fontsize=10)


def scaled(values: np.ndarray, label: str) -> tuple[np.ndarray, str]:
    """Values of a colour bar in a readable range, the power of ten in the label (matplotlib
    would write it as offset text above the bar, over the panel's title)."""
    finite = np.abs(np.asarray(values, dtype=float)[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    if top == 0 or 1e-2 <= top < 1e4:
        return values, label
    power = int(np.floor(np.log10(top)))
    return values / 10.0 ** power, f"{label} (× 1e{power})"


def _in_plane(grid: np.ndarray, plane: list[Any], beam: Beam) -> np.ndarray:
    """The plane as an image: rows along the lateral axis, columns along the depth from
    the entrance."""
    image = np.moveaxis(grid[tuple(plane)], 0 if beam.depth < beam.lateral else 1, 1)
    return image[:, ::-1] if beam.reversed else image


def _image(figure: Any, axis: Any, values: np.ndarray, extent: list[float], label: str,
           x_label: str, y_label: str, masked_note: str | None) -> None:
    import matplotlib
    colours = matplotlib.colormaps["viridis"].with_extremes(bad=_MASK_COLOUR)
    values, label = scaled(values, label)
    shown = axis.imshow(values, origin="lower", extent=extent, aspect="auto",
                        interpolation="nearest", cmap=colours)
    bar = figure.colorbar(shown, ax=axis, label=label)
    bar.formatter.set_useOffset(False)  # no offset text over the panel's title
    bar.update_ticks()
    axis.set_xlabel(x_label, fontsize=9)
    axis.set_ylabel(y_label, fontsize=9)
    if masked_note:
        from matplotlib.patches import Patch
        axis.legend(handles=[Patch(color=_MASK_COLOUR, label=masked_note)], fontsize=8,
                    loc="upper right")
