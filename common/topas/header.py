"""The '#' header of a TOPAS scorer output: the ScorerHeader model and its parser.

CSV files and binary .binheader files share this header grammar, so both readers use it.
Owns which header parts must agree for two outputs to be merged (`layout_difference`).
Standard library only: this package runs on the reducer node.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from common.errors import ToolError

SUM = "Sum"
MEAN = "Mean"
HISTORIES = "Histories_with_Scorer_Active"
COUNT_IN_BIN = "Count_in_Bin"
SECOND_MOMENT = "Second_Moment"
VARIANCE = "Variance"
STANDARD_DEVIATION = "Standard_Deviation"
MIN = "Min"
MAX = "Max"
STATISTICS = (SUM, MEAN, HISTORIES, COUNT_IN_BIN, SECOND_MOMENT, VARIANCE,
              STANDARD_DEVIATION, MIN, MAX)

# TOPAS <= 3.7 wrote "Results for scorer Dose", later versions "Results for scorer: Dose".
_SCORER_LINE = re.compile(r"Results for scorer:? (?P<name>.+)$")
# "X in 40 bins of 0.5 cm", "Y in 1 bin  of 50 cm" (TOPAS pads the singular with a space)
_BINNING_LINE = re.compile(r"(?P<axis>\S+) in (?P<count>\d+) bins? +of \S")
_QUANTITY_LINE = re.compile(r"(?P<quantity>\S.*?)(?: \( (?P<unit>.*) \))? : (?P<stats>.*)$")
_EXTRA_BIN_COUNT = re.compile(r" in (?P<count>\d+) bins of ")


class NotAScorerFile(ToolError):
    """The file has no TOPAS scorer header. Folder scans skip such files and report why."""

    def __init__(self, source: object, reason: str) -> None:
        super().__init__(f"{source}: not a TOPAS scorer output ({reason})")
        self.reason = reason


@dataclass(frozen=True)
class ScorerHeader:
    """Everything the '#' lines of one scorer output say, plus the lines themselves.

    `lines` are the raw header lines (no newline), so a merged file can repeat them exactly.
    """

    lines: tuple[str, ...]
    scorer_name: str
    quantity: str
    unit: str | None
    statistics: tuple[str, ...]
    topas_version: str | None = None
    parameter_file: str | None = None
    filters: tuple[str, ...] = ()
    component: str | None = None  # "Scored in component: X" or "Scored on surface: X/Y"
    binning: tuple[str, ...] = ()  # the three X/Y/Z (or R/Phi/Z ...) lines; () if undivided
    shape: tuple[int, int, int] | None = None  # bins along the three binning lines
    extra_binning: tuple[str, ...] = ()  # "Binned by ... energy/time" and its "First bin is" line
    n_extra_bins: int = 0  # energy/time bins per voxel, under/overflow included; 0 if none
    sparse: str | None = None  # "Showing only rows that have sum > ..."
    single_index: bool = False  # rows carry one bin number instead of i, j, k
    binary_file: str | None = None  # .binheader only
    notes: tuple[str, ...] = ()  # other lines, e.g. TOPAS warnings with per-run counts

    @property
    def n_index_columns(self) -> int:
        if not self.binning:
            return 0
        return 1 if self.single_index else 3

    @property
    def n_bins(self) -> int:
        """Number of voxels (rows of a complete CSV)."""
        if self.shape is None:
            return 1
        ni, nj, nk = self.shape
        return ni * nj * nk

    @property
    def n_value_columns(self) -> int:
        return len(self.statistics) * max(1, self.n_extra_bins)

    def layout(self) -> tuple[tuple[str, object], ...]:
        """The parts that must be equal for outputs to be merged, with their names.

        The TOPAS version, parameter file, sparse threshold and warning lines may differ
        between runs of one campaign, so they are not part of it.
        """
        return (("scorer name", self.scorer_name),
                ("filters", self.filters),
                ("component", self.component),
                ("binning", self.binning),
                ("quantity and unit", (self.quantity, self.unit)),
                ("statistics", self.statistics),
                ("energy/time binning", self.extra_binning),
                ("single-index rows", self.single_index),
                ("sparse output", self.sparse is not None))

    def layout_difference(self, other: ScorerHeader) -> str | None:
        """A description of the first layout part that differs, or None if they agree."""
        for (name, mine), (_, theirs) in zip(self.layout(), other.layout()):
            if mine != theirs:
                return f"{name}: {_show(mine)} vs {_show(theirs)}"
        return None


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return " | ".join(str(part) for part in value) or "(none)"
    return str(value)


@dataclass
class _Collected:
    """Mutable scratch state of the parser, turned into a ScorerHeader at the end."""

    scorer_name: str | None = None
    quantity: str | None = None
    unit: str | None = None
    statistics: tuple[str, ...] = ()
    topas_version: str | None = None
    parameter_file: str | None = None
    filters: list[str] = field(default_factory=list)
    component: str | None = None
    binning: list[str] = field(default_factory=list)
    shape: list[int] = field(default_factory=list)
    extra_binning: list[str] = field(default_factory=list)
    n_extra_bins: int = 0
    sparse: str | None = None
    single_index: bool = False
    binary_file: str | None = None
    notes: list[str] = field(default_factory=list)


def parse_header(lines: Sequence[str], source: object = "<header>") -> ScorerHeader:
    """Parse the '#' lines of a scorer output; raise NotAScorerFile if they are not one."""
    found = _Collected()
    for line in lines:
        if not line.startswith("#"):
            raise NotAScorerFile(source, f"header line without '#': {line[:60]!r}")
        _collect(found, line[2:] if line.startswith("# ") else line[1:], source)
    _check_complete(found, source)
    return ScorerHeader(
        lines=tuple(lines), scorer_name=found.scorer_name or "", quantity=found.quantity or "",
        unit=found.unit, statistics=found.statistics, topas_version=found.topas_version,
        parameter_file=found.parameter_file, filters=tuple(found.filters),
        component=found.component, binning=tuple(found.binning),
        shape=(found.shape[0], found.shape[1], found.shape[2]) if found.shape else None,
        extra_binning=tuple(found.extra_binning), n_extra_bins=found.n_extra_bins,
        sparse=found.sparse, single_index=found.single_index, binary_file=found.binary_file,
        notes=tuple(found.notes))


def _collect(found: _Collected, text: str, source: object) -> None:
    # Lines are recognised by what they say rather than by position, because TOPAS
    # inserts optional warning lines between the component and the binning lines.
    scorer = _SCORER_LINE.match(text)
    binning = _BINNING_LINE.match(text)
    if text.startswith("TOPAS Version:"):
        found.topas_version = _after_colon(text)
    elif text.startswith("Parameter File:"):
        found.parameter_file = _after_colon(text)
    elif scorer and found.scorer_name is None:
        found.scorer_name = scorer.group("name").strip()
    elif text.startswith("Filtered by:"):
        found.filters.append(text)
    elif text.startswith(("Scored in component:", "Scored on surface:")):
        found.component = text
    elif text.startswith("Binned by "):
        found.extra_binning.append(text)
        found.n_extra_bins = _extra_bin_count(text, source)
    elif text.startswith("First bin is "):
        found.extra_binning.append(text)
    elif text.startswith("Showing only rows"):
        found.sparse = text
    elif text.startswith("Using single index"):
        found.single_index = True
    elif text.startswith("Binary file:"):
        found.binary_file = _after_colon(text)
    elif found.quantity is None and binning:
        found.binning.append(text)
        found.shape.append(int(binning.group("count")))
    elif found.quantity is None and _is_quantity_line(text):
        _collect_quantity(found, text, source)
    else:
        found.notes.append(text)


def _after_colon(text: str) -> str:
    return text.split(":", 1)[1].strip()


def _extra_bin_count(text: str, source: object) -> int:
    match = _EXTRA_BIN_COUNT.search(text)
    if match is None:
        raise NotAScorerFile(source, f"cannot read the number of bins in {text!r}")
    # Underflow and overflow bins, plus one for "no incident track" when binned by it.
    extra = 3 if "incident track" in text else 2
    return int(match.group("count")) + extra


def _is_quantity_line(text: str) -> bool:
    match = _QUANTITY_LINE.match(text)
    if match is None:
        return False
    tokens = match.group("stats").split()
    return bool(tokens) and all(token in STATISTICS for token in tokens)


def _collect_quantity(found: _Collected, text: str, source: object) -> None:
    match = _QUANTITY_LINE.match(text)
    assert match is not None
    statistics = tuple(match.group("stats").split())
    if len(set(statistics)) != len(statistics):
        raise NotAScorerFile(source, f"a statistic is listed twice in {text!r}")
    found.quantity = match.group("quantity")
    found.unit = match.group("unit")
    found.statistics = statistics


def _check_complete(found: _Collected, source: object) -> None:
    if found.scorer_name is None:
        raise NotAScorerFile(source, "no '# Results for scorer' line")
    if found.quantity is None:
        raise NotAScorerFile(source, "no '# Quantity ( unit ) : statistics' line")
    if len(found.binning) not in (0, 3):
        raise NotAScorerFile(source, f"{len(found.binning)} binning lines, expected 0 or 3")


def read_header_lines(path: Path) -> list[str]:
    """The leading '#' lines of a text file, without reading the data below them."""
    return read_header_block(path)[0]


def read_header_block(path: Path) -> tuple[list[str], int]:
    """The leading '#' lines of a text file and the byte offset where its data starts."""
    lines = []
    offset = 0
    try:
        with open(path, "rb") as handle:
            for line in handle:
                if not line.startswith(b"#"):
                    break
                lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
                offset += len(line)
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error
    return lines, offset


def read_header(path: Path) -> ScorerHeader:
    """Parse the header of a scorer CSV or .binheader file; NotAScorerFile if it is not one."""
    lines = read_header_lines(path)
    if not lines:
        raise NotAScorerFile(path, "no '#' header lines")
    return parse_header(lines, path)
