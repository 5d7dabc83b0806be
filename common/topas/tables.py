"""The numeric rows of TOPAS scorer CSVs: reading them exactly, writing them losslessly.

Owns which library does the work. With polars installed (pinned in requirements.txt) it
parses and formats the rows: its float parser is correctly rounded and its formatter
writes the shortest text that reads back to the same double. A reducer node whose Python
has only numpy (the merge package is shipped there alone) uses np.loadtxt (correctly
rounded too) and Python's repr (shortest round trip). `engine()` names the one in use;
the environment variable TOPAS_MERGE_ENGINE=numpy forces the numpy path.

Either way every value is bit for bit what float() gives for its text, and a written
value reads back to the same double (TOPAS's own "%.16g" does not for 43.5 % of doubles,
so the merge does not imitate it). Rows are written "i, j, k, v1, v2, ..." with ", "
between values as TOPAS does, so scripts that split on ", " keep working, and whole
numbers without a ".0" (Count_in_Bin 308, not 308.0), as TOPAS writes them.
"""
from __future__ import annotations

import io
import mmap
import os
import warnings
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np

from common.errors import ToolError

POLARS = "polars"
NUMPY = "numpy"
ENGINE_VARIABLE = "TOPAS_MERGE_ENGINE"
_ROWS_PER_WRITE = 1 << 14  # rows formatted at a time: ~2 MB of text, few calls
_SHOWN_CHARACTERS = 40


def _import_polars() -> Any | None:
    # polars allocates with jemalloc, which keeps freed pages for 10 s by default; a merge
    # reads run after run, so they would pile up (~40 MB). Returning them at once (decay 0)
    # makes every run fault its pages in again: 100 runs of 100k voxels spent 3.1 s in the
    # kernel for 7.8 s of user time. Half a second keeps the pages of the runs being read
    # (0.7 s in the kernel, wall 8.3 -> 6.1 s, +18 MB). Read when polars loads; a caller's
    # own setting wins.
    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:500,muzzy_decay_ms:0")
    try:
        import polars
    except ImportError:
        return None
    return polars


_polars = _import_polars()


def engine() -> str:
    """The library that reads and writes the rows: 'polars', or 'numpy' without it."""
    if _polars is None or os.environ.get(ENGINE_VARIABLE, "").lower() == NUMPY:
        return NUMPY
    return POLARS


def check_final_newline(path: Path) -> None:
    """ToolError unless the file ends with a newline, as every TOPAS output does: a file
    cut while it was written or copied ends inside its last row, often inside a number
    that still reads as a (wrong) number."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return
            handle.seek(-1, os.SEEK_END)
            last = handle.read(1)
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error
    if last != b"\n":
        raise ToolError(f"{path}: the file is cut: its last row has no end of line (TOPAS "
                        "ends every row with one); the run was still writing or the copy "
                        "is incomplete: download or rerun that run")


def read_columns(path: Path, offset: int, n_columns: int, header_lines: int,
                 wanted: Sequence[int] | None = None) -> list[np.ndarray | None]:
    """The columns of the rows after byte `offset`, the end of the first `header_lines`
    lines: n_columns float64 arrays of one value per row. They may be read-only: copy one
    before changing it.

    `wanted` (default: all) names the columns to parse; the others may come back as None
    without having been parsed (polars skips them: a merge of 10-column files that needs
    7 costs ~40 % less CPU). Then a long row or a token that is no number in a skipped
    column goes unnoticed, so a caller must not skip columns whose text may be a NaN or
    an infinity: see may_hold_non_finite().

    ToolError naming the file and row for a short or long row or a token that is no
    number. An empty body gives zero rows.
    """
    if engine() == POLARS:
        columns = _polars_columns(path, n_columns, header_lines, wanted)
        if columns is not None:
            return columns
    table = _numpy_table(path, offset, n_columns, header_lines)
    return [table[:, column] for column in range(table.shape[1])]


def parse_rows(data: bytes, n_columns: int, wanted: Sequence[int] | None, source: Path,
               first_row: int) -> list[np.ndarray | None]:
    """The columns of these whole rows (bytes cut after a newline), as read_columns();
    a merge that goes block by block reads a file this way, a piece at a time. Errors
    name `source` and the data row counted from the file's first (`first_row` + 1)."""
    if not data.strip():
        return [np.empty(0) for _ in range(n_columns)]
    if engine() == POLARS:
        columns = _polars_columns(io.BytesIO(data), n_columns, 0, wanted)
        if columns is not None:
            return columns
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(io.BytesIO(data), delimiter=",", dtype=np.float64, ndmin=2,
                               comments=None)
    except ValueError:
        table = None
    if table is None or table.shape[1] != n_columns:
        _name_the_bad_row(source, data.decode("utf-8", "replace"), n_columns, first_row)
        raise ToolError(f"{source}: unreadable data rows")
    return [table[:, column] for column in range(n_columns)]


def may_hold_non_finite(path: Path, offset: int) -> bool:
    """Whether the text after byte `offset` could hold a NaN or an infinity.

    Every spelling a float parser reads as one ("nan", "-inf", "Infinity", "NAN"...) has
    an n or an N, which no decimal number has; looking for those two bytes costs ~0.2 ms
    per 9 MB, against ~30 ms to parse the columns that would otherwise be skipped."""
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size <= offset:
                return False
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as text:
                return text.find(b"n", offset) >= 0 or text.find(b"N", offset) >= 0
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error


def _polars_columns(path: Path | io.BytesIO, n_columns: int, header_lines: int,
                    wanted: Sequence[int] | None) -> list[np.ndarray | None] | None:
    """The columns, or None if polars found anything unusual (the numpy path then reads
    the file again and names the problem, or reads what polars would not)."""
    assert _polars is not None
    schema = {f"c{column}": _polars.Float64 for column in range(n_columns)}
    # The last column is always parsed: a short row then shows as a missing value.
    parsed = None if wanted is None else sorted(set(wanted) | {n_columns - 1})
    try:
        # Skipping known lines costs less than looking for comments; TOPAS quotes nothing
        # (a '"' in a header line must not start a quoted field).
        frame = _polars.read_csv(path, has_header=False, skip_lines=header_lines,
                                 quote_char=None, schema=schema, columns=parsed)
    except (_polars.exceptions.PolarsError, ValueError):
        return None
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error
    if frame.height and any(frame.null_count().row(0)):
        return None  # short rows or empty lines
    # polars parses in chunks, so each column is copied once into one array; taking the
    # columns out of the frame one by one frees each chunked original after its copy.
    columns: list[np.ndarray | None] = [None] * n_columns
    for name in list(frame.columns):
        columns[int(name[1:])] = frame.drop_in_place(name).to_numpy()
    return columns


def _numpy_table(path: Path, offset: int, n_columns: int, header_lines: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():  # a file of header lines only has no rows: fine
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2,
                               comments=None, skiprows=header_lines)
    except ValueError:
        table = None
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error
    if table is not None and (table.shape[1] == n_columns or table.shape[0] == 0):
        return table if table.shape[0] else np.empty((0, n_columns))
    _name_the_bad_row(path, _read_body(path, offset), n_columns)
    raise ToolError(f"{path}: unreadable data rows")  # _name_the_bad_row found none


def _read_body(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError as error:
        raise ToolError(f"{path}: cannot read: {error.strerror or error}") from error


def _name_the_bad_row(path: Path, body: str, n_columns: int, first_row: int = 0) -> None:
    """Raise a ToolError for the first row that is not n_columns numbers."""
    for number, line in enumerate((line for line in body.splitlines() if line.strip()),
                                  start=first_row + 1):
        tokens = line.split(",")
        if len(tokens) != n_columns:
            raise ToolError(f"{path}: rows have {len(tokens)} columns, the header implies "
                            f"{n_columns} (data row {number})")
        for token in tokens:
            try:
                float(token)
            except ValueError:
                shown = token.strip()[:_SHOWN_CHARACTERS]
                raise ToolError(f"{path}: unreadable number {shown!r} in data row "
                                f"{number}") from None


# ---------------------------------------------------------------------------- writing

def write_rows(handle: TextIO, indices: np.ndarray, columns: Sequence[np.ndarray]) -> None:
    """Rows "i, j, k, v1, v2, ..." with each value in its shortest exact text.

    `columns` are one array per statistic, (rows,) or (rows, energy bins); a row holds
    every statistic of energy bin 0, then of bin 1... (the statistic varies fastest).
    """
    rows = indices.shape[0]
    write = _polars_block if engine() == POLARS else _numpy_block
    for start in range(0, rows, _ROWS_PER_WRITE):
        part = slice(start, start + _ROWS_PER_WRITE)
        values = np.stack([column[part] for column in columns], axis=-1)
        handle.write(write(indices[part], values.reshape(values.shape[0], -1)))


def _polars_block(indices: np.ndarray, values: np.ndarray) -> str:
    assert _polars is not None
    data = {f"i{n}": indices[:, n] for n in range(indices.shape[1])}
    data.update({f"v{n}": values[:, n] for n in range(values.shape[1])})
    text = _polars.DataFrame(data).write_csv(include_header=False)
    # Numbers hold no comma, so this gives TOPAS's ", " between values.
    return _as_topas_integers(text.replace(",", ", "))


def _numpy_block(indices: np.ndarray, values: np.ndarray) -> str:
    row = ", ".join(["%d"] * indices.shape[1] + ["%r"] * values.shape[1]) + "\n"
    # One % for many rows: much faster than formatting row by row (np.savetxt).
    # tolist() gives Python ints and floats, whose %r is the shortest exact text.
    numbers: list[Any] = np.hstack([indices.astype(object), values.astype(object)]
                                   ).ravel().tolist()
    return _as_topas_integers((row * indices.shape[0]) % tuple(numbers))


def _as_topas_integers(text: str) -> str:
    """Whole numbers as TOPAS (a C++ stream) prints them: 308, not 308.0.

    The shortest round-trip text of a double ends in ".0" only when it is a whole number
    (then the digits before it read back to the same double), so cutting ".0" at the end
    of a value changes no value: Count_in_Bin, the histories and zeros read as TOPAS's."""
    return text.replace(".0,", ",").replace(".0\n", "\n")
