"""The `.header` of a TOPAS phase space: the PhaseSpaceHeader model, its parser and writer.

Three formats (TsScorePhaseSpace, TsNtupleAscii, TsNtupleBinary):
  * ASCII and Binary: a title line, counts ("Number of Original Histories: 100", "...that
    Reached Phase Space", "Number of Scored Particles", binary: "Number of Bytes per
    Particle"), the column description (new "f4: Position X [cm]" or old
    " 0- 3: Position X (cm)"), then one count per particle type and the minimum and
    maximum kinetic energy per particle type. Other TOPAS ntuples have the same layout
    without title and particle lines ("Number of Scored Entries").
  * Limited: `$KEYWORD:` sections; $ORIG_HISTORIES and $PARTICLES are counts,
    $RECORD_LENGTH is the bytes per particle.
combine_headers() gives the header of concatenated runs: counts added exactly, energy
extremes combined. The header is written back in TOPAS's own layout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from common.errors import ToolError


ASCII = "ascii"
BINARY = "binary"
LIMITED = "limited"

_TITLES = {"TOPAS ASCII Phase Space": ASCII, "TOPAS Binary Phase Space": BINARY}
_COLUMN_HEADINGS = ("Columns of data are as follows:",
                    "Byte order of each record is as follows:")
_COUNT = re.compile(r"Number of (?P<what>.+?): *(?P<n>-?\d+)$")
_ENERGY = re.compile(r"(?P<which>Minimum|Maximum) Kinetic Energy of (?P<particle>.+?): "
                     r"*(?P<value>\S+)(?P<unit> .*)?$")
_ORIGINAL = "Original Histories"
_REACHED = "Original Histories that Reached Phase Space"
_PARTICLES = ("Scored Particles", "Scored Entries")
_BYTES = "Bytes per Particle"
_LIMITED_COUNTS = ("$ORIG_HISTORIES:", "$PARTICLES:")


class NotAPhaseSpace(ToolError):
    """The `.header` is no TOPAS phase-space header; folder scans skip it and say why."""

    def __init__(self, source: object, reason: str) -> None:
        super().__init__(f"{source}: not a TOPAS phase space header ({reason})")
        self.reason = reason


@dataclass(frozen=True)
class Energy:
    """A minimum or maximum kinetic energy as printed, and its value for comparisons."""

    text: str  # "0.010434 MeV"
    value: float


@dataclass(frozen=True)
class PhaseSpaceHeader:
    """Everything a phase-space `.header` says.

    `format` is ascii, binary or limited. `particles` is the number of records in the
    data file ("Scored Particles", "Scored Entries" or $PARTICLES); `bytes_per_particle`
    is None for ASCII. `per_particle` maps particle names ("e-", "proton") to counts, in
    the header's order; `minimum_energy` / `maximum_energy` likewise. `columns` are the
    column description lines exactly as written (for Limited: every section other than
    the two counts, which must then be equal between runs).
    """

    format: str
    original_histories: int
    particles: int
    title: str | None = None
    reached: int | None = None  # "Reached Phase Space"; absent in Limited and ntuples
    particles_label: str = "Scored Particles"
    bytes_per_particle: int | None = None
    columns: tuple[str, ...] = ()
    per_particle: dict[str, int] = field(default_factory=dict)
    minimum_energy: dict[str, Energy] = field(default_factory=dict)
    maximum_energy: dict[str, Energy] = field(default_factory=dict)

    def layout(self) -> tuple[object, ...]:
        """What must be equal for two phase spaces to be concatenated."""
        return (self.format, self.title, self.particles_label, self.bytes_per_particle,
                self.columns, self.reached is None)

    def text(self) -> str:
        """The header file's text, in TOPAS's own layout."""
        if self.format == LIMITED:
            return _limited_text(self)
        return "".join(line + "\n" for line in _topas_lines(self))


def phase_space_pair(path: Path) -> tuple[Path, Path]:
    """The (.header, .phsp) pair of either file's path."""
    path = Path(path)
    return path.with_suffix(".header"), path.with_suffix(".phsp")


def read_phase_space_header(path: Path) -> PhaseSpaceHeader:
    """Parse a phase-space `.header` (given it or its `.phsp`); NotAPhaseSpace if it is
    not one, ToolError if unreadable."""
    header_path = phase_space_pair(path)[0]
    try:
        text = header_path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ToolError(f"{header_path}: cannot read: {error.strerror or error}") from error
    lines = text.splitlines()
    if lines and lines[0].startswith("$"):
        return _parse_limited(lines, header_path)
    return _parse_topas(lines, header_path)


def combine_headers(headers: Sequence[PhaseSpaceHeader]) -> PhaseSpaceHeader:
    """The header of the concatenated data: counts added, energy extremes combined."""
    per_particle: dict[str, int] = {}
    minimum: dict[str, Energy] = {}
    maximum: dict[str, Energy] = {}
    for header in headers:
        for name, count in header.per_particle.items():
            per_particle[name] = per_particle.get(name, 0) + count
        for name, energy in header.minimum_energy.items():
            if name not in minimum or energy.value < minimum[name].value:
                minimum[name] = energy
        for name, energy in header.maximum_energy.items():
            if name not in maximum or energy.value > maximum[name].value:
                maximum[name] = energy
    first = headers[0]
    reached = None if first.reached is None else sum(h.reached or 0 for h in headers)
    return replace(first, original_histories=sum(h.original_histories for h in headers),
                   particles=sum(h.particles for h in headers), reached=reached,
                   per_particle=per_particle, minimum_energy=minimum,
                   maximum_energy=maximum)


# ------------------------------------------------------------------ parsing

@dataclass
class _Collected:
    title: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    per_particle: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    minimum: dict[str, Energy] = field(default_factory=dict)
    maximum: dict[str, Energy] = field(default_factory=dict)


def _parse_topas(lines: list[str], path: Path) -> PhaseSpaceHeader:
    found = _Collected()
    position = 0
    if lines and lines[0].strip() in _TITLES:
        found.title = lines[0].strip()
        position = 1
    while position < len(lines):
        position = _collect_line(found, lines, position, path)
    return _topas_header(found, path)


def _collect_line(found: _Collected, lines: list[str], position: int, path: Path) -> int:
    """Take in the line at `position` (with its column block); the next position."""
    line = lines[position].strip()
    count = _COUNT.match(line)
    energy = _ENERGY.match(line)
    if not line:
        pass
    elif line in _COLUMN_HEADINGS:
        found.columns.append(lines[position])
        while position + 1 < len(lines) and lines[position + 1].strip():
            position += 1
            found.columns.append(lines[position])
    elif count and (count.group("what") in (_ORIGINAL, _REACHED, _BYTES) + _PARTICLES):
        found.counts[count.group("what")] = int(count.group("n"))
    elif count:
        found.per_particle[count.group("what")] = int(count.group("n"))
    elif energy:
        _collect_energy(found, energy, path)
    else:
        raise NotAPhaseSpace(path, f"unrecognised line {line[:60]!r}")
    return position + 1


def _collect_energy(found: _Collected, match: re.Match[str], path: Path) -> None:
    try:
        value = float(match.group("value"))
    except ValueError:
        raise NotAPhaseSpace(path, f"unreadable energy in {match.group(0)!r}") from None
    text = match.group("value") + (match.group("unit") or "")
    target = found.minimum if match.group("which") == "Minimum" else found.maximum
    target[match.group("particle")] = Energy(text=text, value=value)


def _topas_header(found: _Collected, path: Path) -> PhaseSpaceHeader:
    counts = found.counts
    label = next((name for name in _PARTICLES if name in counts), None)
    if _ORIGINAL not in counts or label is None:
        raise NotAPhaseSpace(path, "no 'Number of Original Histories' and 'Number of "
                                   "Scored Particles' lines")
    if not found.columns:
        raise NotAPhaseSpace(path, "no column description")
    is_binary = _BYTES in counts
    if found.title is not None and (_TITLES[found.title] == BINARY) != is_binary:
        raise NotAPhaseSpace(path, f"'{found.title}' with"
                                   f"{'' if is_binary else 'out'} a bytes-per-particle line")
    return PhaseSpaceHeader(
        format=BINARY if is_binary else ASCII, title=found.title,
        original_histories=counts[_ORIGINAL], reached=counts.get(_REACHED),
        particles=counts[label], particles_label=label,
        bytes_per_particle=counts.get(_BYTES), columns=tuple(found.columns),
        per_particle=found.per_particle, minimum_energy=found.minimum,
        maximum_energy=found.maximum)


def _parse_limited(lines: list[str], path: Path) -> PhaseSpaceHeader:
    sections = _limited_sections(lines, path)
    try:
        histories = int(sections["$ORIG_HISTORIES:"][0])
        particles = int(sections["$PARTICLES:"][0])
        record = int(sections["$RECORD_LENGTH:"][0])
    except (KeyError, IndexError, ValueError):
        raise NotAPhaseSpace(path, "a Limited header needs $RECORD_LENGTH, $ORIG_HISTORIES "
                                   "and $PARTICLES, each followed by a number") from None
    # Every section verbatim, but only the keyword of the two counts: the rest has to
    # be equal in every run, and the counts are written back after their keywords.
    kept = tuple(line for keyword, body in sections.items()
                 for line in (keyword, *(() if keyword in _LIMITED_COUNTS else body)))
    return PhaseSpaceHeader(format=LIMITED, original_histories=histories,
                            particles=particles, bytes_per_particle=record, columns=kept,
                            particles_label="$PARTICLES")


def _limited_sections(lines: list[str], path: Path) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith("$"):
            current = sections.setdefault(line.strip(), [])
        elif current is None:
            raise NotAPhaseSpace(path, "text before the first $ keyword")
        elif line.strip():
            current.append(line)
    return sections


# ------------------------------------------------------------------ writing

def _topas_lines(header: PhaseSpaceHeader) -> list[str]:
    # The order TOPAS writes (TsScorePhaseSpace::Output, TsNtuple*::
    # GenerateColumnDescription): its readers expect counts on fixed lines.
    lines = [header.title, ""] if header.title else []
    lines.append(f"Number of {_ORIGINAL}: {header.original_histories}")
    if header.reached is not None:
        lines.append(f"Number of {_REACHED}: {header.reached}")
    lines.append(f"Number of {header.particles_label}: {header.particles}")
    if header.bytes_per_particle is not None:
        lines.append(f"Number of {_BYTES}: {header.bytes_per_particle}")
    lines += ["", *header.columns, ""]
    if header.title or header.per_particle or header.minimum_energy:
        lines += [f"Number of {name}: {count}" for name, count in header.per_particle.items()]
        lines.append("")
        lines += [f"Minimum Kinetic Energy of {name}: {energy.text}"
                  for name, energy in header.minimum_energy.items()]
        lines.append("")
        lines += [f"Maximum Kinetic Energy of {name}: {energy.text}"
                  for name, energy in header.maximum_energy.items()]
    return lines


def _limited_text(header: PhaseSpaceHeader) -> str:
    counts = {"$ORIG_HISTORIES:": header.original_histories,
              "$PARTICLES:": header.particles}
    lines: list[str] = []
    for line in header.columns:
        lines.append(line)
        if line in counts:
            lines.append(str(counts[line]))
    return "".join(line + "\n" for line in lines)
