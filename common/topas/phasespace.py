"""TOPAS phase spaces (`.header` + `.phsp`): checking each run's data, merging runs.

Merging concatenates the data files in run order, in chunks (never a whole file in
memory), and writes a header whose counts are exact sums (phaseheader.py); the column
layout must be the same in every run. TOPAS refuses a phase space whose header disagrees
with its data (PhaseSpacePreCheck), so each input's counts are checked against its data
first: for binary data, file size = particles x bytes per particle; for ASCII, one line
a particle, every line ended by a newline (TOPAS writes one after each particle) and the
last one holding a value for every column, so a file cut inside its last line is
refused rather than counted and concatenated into a merged file no reader accepts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

from common.errors import ToolError
# Re-exported: callers read headers through this module too.
from common.topas.phaseheader import (ASCII, BINARY, LIMITED, NotAPhaseSpace,  # noqa: F401
                                      PhaseSpaceHeader, combine_headers, phase_space_pair,
                                      read_phase_space_header)

_CHUNK = 8 << 20


@dataclass(frozen=True)
class PhaseSpace:
    """A phase space on disk: its header file, data file and parsed header."""

    header_path: Path
    data_path: Path
    header: PhaseSpaceHeader


def check_data(space: PhaseSpace) -> None:
    """ToolError unless the data file holds exactly the particles its header counts."""
    header = space.header
    if header.bytes_per_particle is None:
        _check_last_line(space)
    found = _records_in(space.data_path, header)
    if found != header.particles:
        unit = "lines" if header.bytes_per_particle is None else (
            f"records of {header.bytes_per_particle} bytes")
        raise ToolError(f"{space.data_path}: holds {found} {unit} but {space.header_path} "
                        f"counts {header.particles} particles (truncated or still being "
                        "written?); TOPAS would refuse it")


def _check_last_line(space: PhaseSpace) -> None:
    """ToolError if an ASCII data file ends inside a line or with a short last line."""
    tail = _tail(space.data_path)
    if not tail:
        return
    if not tail.endswith(b"\n"):
        raise ToolError(f"{space.data_path}: the last line is cut (no end of line; TOPAS "
                        "ends every particle's line with one): the run was still writing "
                        "or the copy is incomplete; download or rerun that run")
    columns = sum(1 for line in space.header.columns[1:] if line.strip())
    values = len(tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1].split())
    if columns and values != columns:
        raise ToolError(f"{space.data_path}: the last line holds {values} values, the "
                        f"header describes {columns} columns (cut file?)")


def _tail(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read()
    except FileNotFoundError:
        return b""  # _records_in names the missing file
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error


def merge_phase_spaces(sources: Sequence[Path], out_path: Path) -> PhaseSpaceHeader:
    """Concatenate the phase spaces (each given by its .header or .phsp) into out_path's
    .header/.phsp pair; returns the merged header. ToolError naming the files if a
    layout differs or a header disagrees with its data."""
    spaces = [_open(path) for path in sources]
    if not spaces:
        raise ValueError("no phase space to merge")
    first = spaces[0]
    for space in spaces:
        _check_same_layout(first, space)
        check_data(space)
    merged = combine_headers([space.header for space in spaces])
    out_header, out_data = phase_space_pair(out_path)
    out_header.parent.mkdir(parents=True, exist_ok=True)
    _concatenate([space.data_path for space in spaces], out_data)
    _write_text(out_header, merged.text())
    return merged


# ------------------------------------------------------------------ data

def _open(path: Path) -> PhaseSpace:
    header_path, data_path = phase_space_pair(path)
    return PhaseSpace(header_path, data_path, read_phase_space_header(header_path))


def _check_same_layout(first: PhaseSpace, other: PhaseSpace) -> None:
    if first.header.layout() != other.header.layout():
        raise ToolError(f"cannot merge {other.header_path} with {first.header_path}: "
                        f"different {_layout_difference(first.header, other.header)}")


def _layout_difference(a: PhaseSpaceHeader, b: PhaseSpaceHeader) -> str:
    names = ("format", "title", "particle count label", "bytes per particle", "columns",
             "header lines")
    for name, mine, theirs in zip(names, a.layout(), b.layout()):
        if mine != theirs:
            if name == "columns":
                return f"columns: {_first_change(mine, theirs)}"
            return f"{name}: {mine} vs {theirs}"
    return "layout"


def _first_change(mine: object, theirs: object) -> str:
    a, b = list(mine), list(theirs)  # type: ignore[call-overload]
    for x, y in zip(a, b):
        if x != y:
            return f"{x.strip()!r} vs {y.strip()!r}"
    return f"{len(a)} vs {len(b)} lines"


def _records_in(path: Path, header: PhaseSpaceHeader) -> int:
    try:
        if header.bytes_per_particle is not None:
            size = path.stat().st_size
            if header.bytes_per_particle <= 0 or size % header.bytes_per_particle:
                raise ToolError(f"{path}: {size} bytes is not a whole number of "
                                f"{header.bytes_per_particle}-byte records")
            return size // header.bytes_per_particle
        return _count_lines(path)
    except FileNotFoundError:
        raise ToolError(f"{path}: missing; a phase space's data file should be beside "
                        "its .header") from None
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error


def _count_lines(path: Path) -> int:
    lines = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            lines += chunk.count(b"\n")
    return lines


def _concatenate(sources: Sequence[Path], target: Path) -> None:
    """Append the files in order, chunk by chunk."""
    partial = target.with_name(target.name + ".partial")
    try:
        with open(partial, "wb") as out:
            for source in sources:
                _copy(source, out)
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ToolError(f"{target}: cannot write: {error.strerror or error}") from error


def _copy(source: Path, out: BinaryIO) -> None:
    with open(source, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            out.write(chunk)


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
