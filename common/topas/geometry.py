"""Where a scorer's bins are: axis names, units and bin centres from the header lines.

TOPAS prints "X in 40 bins of 0.5 cm" per axis. Box axes (X, Y, Z) are centred on the
component, so bin i of n has its centre at (i + 0.5 - n/2) x width; cylinder and sphere
axes (R, Phi, Theta) start at 0. Energy or time binning ("Binned by ... in 100 bins of
1.1 MeV from 0.01 MeV to 110.1 MeV") is linear, or logarithmic when the bins do not add
up to the range: TOPAS then prints the log10 width of a bin. The summary, the plots and
the DICOM writer all place bins with this module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from common.topas.header import ScorerHeader

_BINNING = re.compile(r"(?P<axis>\S+) in (?P<count>\d+) bins? +of (?P<width>\S+) "
                      r"(?P<unit>\S+)")
_EXTRA = re.compile(r" in (?P<count>\d+) bins of (?P<width>\S+) (?P<unit>\S+) from "
                    r"(?P<low>\S+) \S+ to (?P<high>\S+)")
_CENTRED = ("X", "Y", "Z")
_LINEAR_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Axis:
    """One of the three binning axes. `width` and `unit` are None when unreadable (then
    positions are bin numbers)."""

    name: str
    count: int
    width: float | None
    unit: str | None

    @property
    def centred(self) -> bool:
        return self.name in _CENTRED

    def centres(self) -> np.ndarray:
        index = np.arange(self.count, dtype=float)
        if self.width is None:
            return index
        offset = self.count / 2 if self.centred else 0.0
        return (index + 0.5 - offset) * self.width

    @property
    def label(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else f"{self.name} bin"


@dataclass(frozen=True)
class ExtraAxis:
    """Energy or time bins inside each voxel: `edges` of the inner bins (under- and
    overflow left out), None when the line is unreadable."""

    kind: str  # "energy" or "time"
    unit: str | None
    edges: np.ndarray | None
    logarithmic: bool

    def centres(self, inner: int) -> np.ndarray:
        if self.edges is None:
            return np.arange(1, inner + 1, dtype=float)
        if self.logarithmic:
            return np.sqrt(self.edges[:-1] * self.edges[1:])
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.unit})" if self.unit else f"{self.kind} bin"


def axes(header: ScorerHeader) -> tuple[Axis, ...]:
    """The three axes of a divided scorer; () if undivided."""
    found = []
    for position, line in enumerate(header.binning):
        count = (header.shape or (1, 1, 1))[position]
        match = _BINNING.match(line)
        if match is None:
            found.append(Axis("ijk"[position], count, None, None))
            continue
        try:
            width: float | None = float(match.group("width"))
        except ValueError:
            width = None
        found.append(Axis(match.group("axis"), count, width,
                          match.group("unit") if width is not None else None))
    return tuple(found)


def extra_axis(header: ScorerHeader) -> ExtraAxis | None:
    """The energy/time binning of a scorer, None if it has none."""
    if not header.extra_binning:
        return None
    line = header.extra_binning[0]
    kind = "time" if "time" in line.split(" in ")[0] else "energy"
    match = _EXTRA.search(line)
    if match is None:
        return ExtraAxis(kind, None, None, False)
    try:
        count = int(match.group("count"))
        width, low = float(match.group("width")), float(match.group("low"))
        high = float(match.group("high"))
    except ValueError:
        return ExtraAxis(kind, None, None, False)
    if abs(low + count * width - high) <= _LINEAR_TOLERANCE * max(abs(high), 1.0):
        return ExtraAxis(kind, match.group("unit"), low + width * np.arange(count + 1), False)
    if low > 0 and abs(low * 10 ** (count * width) - high) <= _LINEAR_TOLERANCE * high:
        edges = low * 10.0 ** (width * np.arange(count + 1))
        return ExtraAxis(kind, match.group("unit"), edges, True)
    return ExtraAxis(kind, None, None, False)


def position_of(header: ScorerHeader, where: tuple[int, ...]) -> str | None:
    """The centre of voxel (i, j, k) in the scorer's units, e.g. 'X = 0.25 cm, Y = ...',
    None when the header does not give the binning."""
    found = axes(header)
    if not found or any(axis.width is None for axis in found):
        return None
    return ", ".join(f"{axis.name} = {axis.centres()[index]:.6g} {axis.unit}"
                     for axis, index in zip(found, where[:3]))
