"""TOPAS scorer CSV files: the in-memory Scorer, reading and writing, and row order.

A Scorer is format-neutral (header, bin indices, one float64 array per statistic); the
binary reader (binary.py) produces the same object, and read_scorer() reads both. Rows
are identified by their (i, j, k) bin, never by line number: TOPAS 4.1.1 changed the
order rows are written in. The numbers are read and written by tables.py (polars, or
numpy alone on a reducer node without it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from common.errors import ToolError
from common.topas.header import (HISTORIES, NotAScorerFile, ScorerHeader, parse_header,
                                 read_header_block)
from common.topas.tables import may_hold_non_finite, read_columns, write_rows

K_FASTEST = "k_fastest"  # TOPAS <= 4.1.0 loops i, j, k
I_FASTEST = "i_fastest"  # TOPAS >= 4.1.1 loops k, j, i


@dataclass(frozen=True)
class Scorer:
    """One scorer output.

    `indices` is (rows, header.n_index_columns) int64: i, j, k (or TOPAS's single bin
    number, or no column when undivided). `values` maps each statistic that was read
    (all of header.statistics unless read_scorer was asked for fewer) to a (rows,)
    float64 array, or (rows, header.n_extra_bins) when binned by energy or time (column
    0 is the underflow bin, then the bins, then overflow and, for incident-track energy,
    "no incident track"). Row r of every array belongs to bin indices[r]. Arrays from
    the readers may be read-only (the CSV reader hands over the parser's memory rather
    than a copy): copy one before changing it.
    """

    header: ScorerHeader
    indices: np.ndarray
    values: dict[str, np.ndarray]
    every_bin_in_order: bool = False  # rows are bins 0, 1, 2, ... (binary files)

    @property
    def rows(self) -> int:
        return int(self.indices.shape[0])

    def histories(self, source: object = "<scorer>") -> int | None:
        """Histories_with_Scorer_Active (one number for the whole file), None if not reported
        or if a sparse file has no rows."""
        column = self.values.get(HISTORIES)
        if column is None or column.size == 0:
            return None
        first = column.flat[0]
        if not np.all(column == first):
            raise ToolError(f"{source}: {HISTORIES} differs between bins; "
                            "TOPAS writes one number for the whole scorer")
        return int(first)

    def bin_keys(self) -> np.ndarray:
        """TOPAS's own bin number of every row: i*Nj*Nk + j*Nk + k (0 when undivided)."""
        if self.every_bin_in_order:
            return all_keys(self.header.n_bins)
        return bin_keys(self.header, self.indices)

    def grid(self, statistic: str) -> np.ndarray:
        """One statistic on the full grid: shape (ni, nj, nk), plus the energy/time bins
        if any; (1, 1, 1) when undivided. Bins without a row (sparse output) hold 0."""
        return on_grid(self.header, self.bin_keys(), self.values[statistic])


def on_grid(header: ScorerHeader, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per-row values (rows in any order, their bin numbers `keys`) on the full grid."""
    tail = (header.n_extra_bins,) if header.n_extra_bins else ()
    grid = np.zeros((header.n_bins,) + tail)
    grid[keys] = rows
    return grid.reshape((header.shape or (1, 1, 1)) + tail)


def bin_keys(header: ScorerHeader, indices: np.ndarray) -> np.ndarray:
    if header.n_index_columns == 0:
        return np.zeros(indices.shape[0], dtype=np.int64)
    if header.n_index_columns == 1:
        return indices[:, 0].copy()
    assert header.shape is not None
    _, nj, nk = header.shape
    keys = indices[:, 0] * nj  # i*Nj*Nk + j*Nk + k; the readers checked the ranges
    keys += indices[:, 1]
    keys *= nk
    keys += indices[:, 2]
    return keys


@lru_cache(maxsize=4)
def all_keys(n_bins: int) -> np.ndarray:
    """0, 1, ..., n_bins - 1, read-only and shared: every run of a scorer has the same."""
    keys = np.arange(n_bins)
    keys.flags.writeable = False
    return keys


@lru_cache(maxsize=4)
def all_indices(header: ScorerHeader) -> np.ndarray:
    """The index columns of every bin in bin order, read-only and shared between runs."""
    indices = indices_for_keys(header, all_keys(header.n_bins))
    indices.flags.writeable = False
    return indices


def indices_for_keys(header: ScorerHeader, keys: np.ndarray) -> np.ndarray:
    """The index columns TOPAS prints for these bin numbers."""
    if header.n_index_columns == 0:
        return np.zeros((keys.size, 0), dtype=np.int64)
    if header.n_index_columns == 1:
        return keys.reshape(-1, 1).astype(np.int64)
    assert header.shape is not None
    return np.column_stack(np.unravel_index(keys, header.shape)).astype(np.int64)


def row_order(header: ScorerHeader, keys: np.ndarray) -> str:
    """K_FASTEST or I_FASTEST, whichever the rows follow (K_FASTEST if neither or both)."""
    if header.shape is None or _increasing(keys):
        return K_FASTEST
    return I_FASTEST if _increasing(_i_fastest_rank(header, keys)) else K_FASTEST


def sort_keys(header: ScorerHeader, keys: np.ndarray, order: str) -> np.ndarray:
    """The bin numbers sorted the way TOPAS would write them in `order`."""
    if header.shape is None or order == K_FASTEST:
        return np.sort(keys)
    return keys[np.argsort(_i_fastest_rank(header, keys), kind="stable")]


def _i_fastest_rank(header: ScorerHeader, keys: np.ndarray) -> np.ndarray:
    assert header.shape is not None
    i, j, k = np.unravel_index(keys, header.shape)
    ni, nj, _ = header.shape
    return (k * nj + j) * ni + i


def _increasing(keys: np.ndarray) -> bool:
    return bool(np.all(np.diff(keys) > 0))


# ---------------------------------------------------------------------------- reading

def read_scorer(path: Path, statistics: Sequence[str] | None = None) -> Scorer:
    """Read one TOPAS scorer output: a CSV, or a binary `.binheader` (or its `.bin`).

    `statistics` limits which statistics are read (default: all the file has); the
    header still lists every one. A CSV whose rows hold a NaN or an infinity (or text
    that may be one) has every statistic read, so that whoever checks the values finds
    it. NotAScorerFile if the file has no scorer header, ToolError (naming the file) if
    the data does not match the header.
    """
    path = Path(path)
    if path.suffix in (".bin", ".binheader"):
        from common.topas.binary import read_binary_scorer  # binary builds on this module
        return read_binary_scorer(path, statistics)
    header_lines, offset = read_header_block(path)
    if not header_lines:
        raise NotAScorerFile(path, "no '#' header lines")
    header = parse_header(header_lines, path)
    wanted = _checked_statistics(header, statistics, path)
    if wanted != header.statistics and may_hold_non_finite(path, offset):
        wanted = header.statistics
    columns = _read_columns(path, offset, header, len(header_lines), wanted)
    values = statistic_columns(columns[header.n_index_columns:], header, wanted)
    index_columns = [column for column in columns[:header.n_index_columns]
                     if column is not None]
    if _every_bin_in_order(index_columns, header):
        # The usual case: no index arrays of this run's own (shared, cached ones instead).
        return Scorer(header=header, indices=all_indices(header), values=values,
                      every_bin_in_order=True)
    indices = _index_columns(index_columns, _row_count(columns), header, path)
    return Scorer(header=header, indices=indices, values=values)


def _row_count(columns: Sequence[np.ndarray | None]) -> int:
    return next((column.shape[0] for column in columns if column is not None), 0)


def _every_bin_in_order(columns: list[np.ndarray], header: ScorerHeader) -> bool:
    """Whether the index columns list bins 0, 1, 2, ... (i, j, k with k fastest)."""
    if not columns or columns[0].shape[0] != header.n_bins:
        return False
    expected = all_indices(header)
    return all(np.array_equal(column, expected[:, position])
               for position, column in enumerate(columns))


def _checked_statistics(header: ScorerHeader, statistics: Sequence[str] | None,
                        path: Path) -> tuple[str, ...]:
    if statistics is None:
        return header.statistics
    unknown = [name for name in statistics if name not in header.statistics]
    if unknown:
        raise ToolError(f"{path}: does not report {', '.join(unknown)} (it has "
                        f"{', '.join(header.statistics)})")
    return tuple(name for name in header.statistics if name in statistics)


def _read_columns(path: Path, offset: int, header: ScorerHeader, header_lines: int,
                  wanted: tuple[str, ...]) -> list[np.ndarray | None]:
    n_columns = header.n_index_columns + header.n_value_columns
    columns = read_columns(path, offset, n_columns, header_lines,
                           _wanted_columns(header, wanted))
    rows = _row_count(columns)
    if rows and len(columns) != n_columns:
        raise ToolError(f"{path}: rows have {len(columns)} columns, the header implies "
                        f"{n_columns} ({_column_story(header)})")
    if header.n_index_columns == 0 and rows > 1:
        raise ToolError(f"{path}: {rows} rows for an undivided scorer (expected 1)")
    return columns


def _wanted_columns(header: ScorerHeader, wanted: tuple[str, ...]) -> list[int] | None:
    """The columns holding the index and the wanted statistics, None for all of them."""
    if wanted == header.statistics:
        return None
    stats = header.statistics
    per_row = [stats.index(name) for name in wanted]
    return list(range(header.n_index_columns)) + sorted(
        header.n_index_columns + extra * len(stats) + position
        for extra in range(max(1, header.n_extra_bins)) for position in per_row)


def _column_story(header: ScorerHeader) -> str:
    story = f"{header.n_index_columns} index + {len(header.statistics)} statistics"
    if header.n_extra_bins:
        story += f" x {header.n_extra_bins} energy/time bins"
    return story


def _index_columns(columns: list[np.ndarray], rows: int, header: ScorerHeader,
                   path: Path) -> np.ndarray:
    indices = np.empty((rows, len(columns)), dtype=np.int64)
    for position, column in enumerate(columns):
        indices[:, position] = column
        if not np.array_equal(indices[:, position], column):
            raise ToolError(f"{path}: bin indices are not whole numbers")
    upper = _index_limits(header)
    bad = (indices < 0) | (indices >= upper)
    if bad.any():  # (a reduction along rows first would be slow: 3 values a row)
        row = indices[np.argmax(bad.any(axis=1))]
        raise ToolError(f"{path}: bin {tuple(int(v) for v in row)} is outside the "
                        f"{'x'.join(str(n) for n in upper)} bins of the header")
    return indices


def _index_limits(header: ScorerHeader) -> np.ndarray:
    if header.n_index_columns == 3:
        assert header.shape is not None
        return np.array(header.shape, dtype=np.int64)
    return np.array([header.n_bins] * header.n_index_columns, dtype=np.int64)


def statistic_columns(columns: list[np.ndarray], header: ScorerHeader,
                       wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The value columns as one array per wanted statistic: the columns themselves (no
    copy: a large file is not held twice) unless binned by energy or time."""
    stats = header.statistics
    if header.n_extra_bins == 0:
        return {name: columns[stats.index(name)] for name in wanted}
    # Per row: [bin 0: every statistic][bin 1: every statistic]... statistic varies fastest.
    return {name: np.column_stack([columns[extra * len(stats) + stats.index(name)]
                                   for extra in range(header.n_extra_bins)])
            for name in wanted}


# ---------------------------------------------------------------------------- writing

def write_scorer(path: Path, header: ScorerHeader, values: Mapping[str, np.ndarray],
                 indices: np.ndarray | None = None) -> None:
    """Write a scorer CSV with exactly `header.lines` and one row per index row.

    The file appears complete or not at all (written aside, then renamed), so a reducer
    that is killed never leaves half a result behind.
    """
    path = Path(path)
    columns = _value_columns(header, values)
    rows = columns[0].shape[0]
    if indices is None:
        indices = np.zeros((rows, 0), dtype=np.int64)
    if indices.shape != (rows, header.n_index_columns):
        raise ValueError(f"indices of shape {indices.shape} for {rows} rows of "
                         f"{header.n_index_columns} index columns")
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(line + "\n" for line in header.lines))
        write_rows(handle, indices, columns)
    os.replace(partial, path)


def _value_columns(header: ScorerHeader,
                   values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    if set(values) != set(header.statistics):
        raise ValueError(f"values for {sorted(values)}, header reports {header.statistics}")
    columns = [np.asarray(values[name], dtype=np.float64) for name in header.statistics]
    for column in columns:
        fits = (column.ndim == 2 and column.shape[1] == header.n_extra_bins
                if header.n_extra_bins else column.ndim == 1)
        if not fits or column.shape[0] != columns[0].shape[0]:
            raise ValueError(f"value arrays of shape {column.shape} do not fit the header")
    return columns
