"""TOPAS scorer CSV files: the in-memory Scorer, reading and writing, and row order.

A Scorer is format-neutral (header, bin indices, one float64 array per statistic), so a
binary .bin/.binheader reader can produce the same object. Rows are identified by their
(i, j, k) bin, never by line number: TOPAS 4.1.1 changed the order rows are written in.
Imports only the standard library, numpy and common.errors.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from common.errors import ToolError
from common.topas.header import HISTORIES, NotAScorerFile, ScorerHeader, parse_header

K_FASTEST = "k_fastest"  # TOPAS <= 4.1.0 loops i, j, k
I_FASTEST = "i_fastest"  # TOPAS >= 4.1.1 loops k, j, i
VALUE_FORMAT = "%.16g"  # what TOPAS prints (setprecision(16)), so rewriting is lossless


@dataclass(frozen=True)
class Scorer:
    """One scorer output: `indices` is (rows, header.n_index_columns) int64 (i, j, k, or the
    single bin number, or no column when undivided); `values` maps each statistic to a
    (rows,) array, or (rows, header.n_extra_bins) when binned by energy or time."""

    header: ScorerHeader
    indices: np.ndarray
    values: dict[str, np.ndarray]

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
        return bin_keys(self.header, self.indices)


def bin_keys(header: ScorerHeader, indices: np.ndarray) -> np.ndarray:
    if header.n_index_columns == 0:
        return np.zeros(indices.shape[0], dtype=np.int64)
    if header.n_index_columns == 1:
        return indices[:, 0].copy()
    assert header.shape is not None
    return np.ravel_multi_index(tuple(indices.T), header.shape)


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

def read_scorer(path: Path) -> Scorer:
    """Read a TOPAS scorer CSV. NotAScorerFile if it has no scorer header, ToolError if the
    data does not match the header."""
    path = Path(path)
    header_lines, body = _split_header(_read_text(path))
    if not header_lines:
        raise NotAScorerFile(path, "no '#' header lines")
    header = parse_header(header_lines, path)
    table = _parse_table(body, header, path)
    indices = _index_columns(table[:, :header.n_index_columns], header, path)
    values = _statistic_columns(table[:, header.n_index_columns:], header)
    return Scorer(header=header, indices=indices, values=values)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error


def _split_header(text: str) -> tuple[list[str], str]:
    lines = []
    position = 0
    while text.startswith("#", position):
        end = text.find("\n", position)
        end = len(text) if end < 0 else end
        lines.append(text[position:end].rstrip("\r"))
        position = end + 1
    return lines, text[position:]


def _parse_table(body: str, header: ScorerHeader, path: Path) -> np.ndarray:
    columns = header.n_index_columns + header.n_value_columns
    if not body or body.isspace():
        return np.empty((0, columns))
    try:
        # loadtxt parses the whole block in C; a Python loop per value is ~10x slower.
        table = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.float64, ndmin=2,
                           comments=None)
    except ValueError as error:
        raise ToolError(f"{path}: unreadable data row: {error}") from error
    if table.shape[1] != columns:
        raise ToolError(f"{path}: rows have {table.shape[1]} columns, the header implies "
                        f"{columns} ({_column_story(header)})")
    if header.n_index_columns == 0 and table.shape[0] > 1:
        raise ToolError(f"{path}: {table.shape[0]} rows for an undivided scorer (expected 1)")
    return table


def _column_story(header: ScorerHeader) -> str:
    story = f"{header.n_index_columns} index + {len(header.statistics)} statistics"
    if header.n_extra_bins:
        story += f" x {header.n_extra_bins} energy/time bins"
    return story


def _index_columns(columns: np.ndarray, header: ScorerHeader, path: Path) -> np.ndarray:
    indices = columns.astype(np.int64)
    if not np.array_equal(indices, columns):
        raise ToolError(f"{path}: bin indices are not whole numbers")
    upper = _index_limits(header)
    bad = np.any((indices < 0) | (indices >= upper), axis=1)
    if np.any(bad):
        row = indices[np.argmax(bad)]
        raise ToolError(f"{path}: bin {tuple(int(v) for v in row)} is outside the "
                        f"{'x'.join(str(n) for n in upper)} bins of the header")
    return indices


def _index_limits(header: ScorerHeader) -> np.ndarray:
    if header.n_index_columns == 3:
        assert header.shape is not None
        return np.array(header.shape, dtype=np.int64)
    return np.array([header.n_bins] * header.n_index_columns, dtype=np.int64)


def _statistic_columns(table: np.ndarray, header: ScorerHeader) -> dict[str, np.ndarray]:
    stats = header.statistics
    if header.n_extra_bins == 0:
        return {name: table[:, s].copy() for s, name in enumerate(stats)}
    # Per row: [bin 0: every statistic][bin 1: every statistic]... statistic varies fastest.
    cube = table.reshape(table.shape[0], header.n_extra_bins, len(stats))
    return {name: cube[:, :, s].copy() for s, name in enumerate(stats)}


# ---------------------------------------------------------------------------- writing

def write_scorer(path: Path, header: ScorerHeader, values: Mapping[str, np.ndarray],
                 indices: np.ndarray | None = None) -> None:
    """Write a scorer CSV with exactly `header.lines` and one row per index row.

    The file appears complete or not at all (written aside, then renamed), so a reducer
    that is killed never leaves half a result behind.
    """
    path = Path(path)
    table = _value_table(header, values)
    if indices is None:
        indices = np.zeros((table.shape[0], 0), dtype=np.int64)
    if indices.shape != (table.shape[0], header.n_index_columns):
        raise ValueError(f"indices of shape {indices.shape} for {table.shape[0]} rows of "
                         f"{header.n_index_columns} index columns")
    formats = ["%d"] * header.n_index_columns + [VALUE_FORMAT] * table.shape[1]
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(line + "\n" for line in header.lines))
        if table.shape[0]:
            np.savetxt(handle, np.hstack([indices.astype(np.float64), table]),
                       fmt=formats, delimiter=", ")
    os.replace(partial, path)


def _value_table(header: ScorerHeader, values: Mapping[str, np.ndarray]) -> np.ndarray:
    if set(values) != set(header.statistics):
        raise ValueError(f"values for {sorted(values)}, header reports {header.statistics}")
    stacked = np.stack([np.asarray(values[name], dtype=np.float64)
                        for name in header.statistics], axis=-1)
    expected_ndim = 3 if header.n_extra_bins else 2
    if stacked.ndim != expected_ndim or (header.n_extra_bins and
                                         stacked.shape[1] != header.n_extra_bins):
        raise ValueError(f"value arrays of shape {stacked.shape[:-1]} do not fit the header")
    return stacked.reshape(stacked.shape[0], header.n_value_columns)
