"""Reading one run's scorer a block of rows at a time, for the merge that goes block by
block over the voxels (blocks.py).

A CSV is read in pieces of whole lines from where its header ends and parsed as it
comes (tables.parse_rows), so a run never is in memory whole, and never as text whole;
only the columns the merge folds are parsed, unless a piece's text may hold a NaN.
A binary `.bin` is float64 in a fixed layout (binary.py): a block of rows is a run of
bytes, read with one call into a preallocated array, no text at all. Every reader gives
the rows in its file's order; blocks.py checks that all runs share one order.
"""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from common.errors import ToolError
from common.topas.binary import binary_pair
from common.topas.header import ScorerHeader, read_header_block
from common.topas.runs import check_finite
from common.topas.scorer import Scorer, bin_keys, statistic_columns
from common.topas.tables import check_final_newline, parse_rows

_FLOAT64 = np.dtype("<f8")


class BlockReader:
    """Rows of one run, block after block: `take(rows)` -> (index columns or None, values
    per statistic). `close()` when done."""

    path: Path
    header: ScorerHeader

    def take(self, rows: int) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        raise NotImplementedError

    def exhausted(self) -> bool:
        raise NotImplementedError

    def all_finite(self) -> bool:
        """Whether the last block is finite throughout (False: not known, check it)."""
        return False

    def close(self) -> None:
        raise NotImplementedError


class BinaryBlocks(BlockReader):
    """A `.bin`: voxels with i fastest, energy bins, then statistics innermost."""

    def __init__(self, path: Path, header: ScorerHeader, wanted: Sequence[str]) -> None:
        self.header = header
        self.path = binary_pair(path)[1]
        self._per_row = max(1, header.n_extra_bins) * len(header.statistics)
        expected = header.n_bins * self._per_row * _FLOAT64.itemsize
        try:
            size = self.path.stat().st_size
            self._handle: BinaryIO = open(self.path, "rb")
        except FileNotFoundError:
            raise ToolError(f"{self.path}: missing; the binary scorer's data file should be "
                            "beside its .binheader") from None
        except OSError as error:
            raise ToolError(f"{self.path}: cannot read: {error.strerror or error}") from error
        if size != expected:
            self._handle.close()
            raise ToolError(f"{self.path}: {size} bytes, but its header describes "
                            f"{expected} ({header.n_bins} voxels x {self._per_row} float64 "
                            "values); truncated or not this scorer's data?")
        self._handle.close()  # opened for each block: a merge of 1,000 runs keeps none
        self._offset = 0
        self._wanted = [(name, header.statistics.index(name)) for name in wanted]
        self._left = header.n_bins
        self._finite = False

    def take(self, rows: int) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        rows = min(rows, self._left)
        block = np.empty(rows * self._per_row, dtype=_FLOAT64)
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                got = handle.readinto(memoryview(block).cast("B"))
        except OSError as error:
            raise ToolError(f"{self.path}: cannot read: {error.strerror or error}") from error
        if got != block.nbytes:
            raise ToolError(f"{self.path}: cut while it was read (truncated?)")
        self._offset += got
        self._left -= rows
        self._finite = bool(np.isfinite(block).all())  # one pass over every value
        tail = (self.header.n_extra_bins,) if self.header.n_extra_bins else ()
        cube = block.reshape((rows,) + tail + (len(self.header.statistics),))
        # each statistic copied out once: the many passes of the fold then run on
        # contiguous memory, not with a stride of every statistic
        return None, {name: np.ascontiguousarray(cube[..., position])
                      for name, position in self._wanted}

    def all_finite(self) -> bool:
        return self._finite

    def exhausted(self) -> bool:
        return self._left == 0

    def close(self) -> None:
        pass


class CsvBlocks(BlockReader):
    """A scorer CSV, parsed a piece of lines at a time."""

    def __init__(self, path: Path, header: ScorerHeader, wanted: Sequence[str]) -> None:
        self.path, self.header = Path(path), header
        check_final_newline(self.path)
        lines, offset = read_header_block(self.path)
        self._header_lines = len(lines)
        self._all = tuple(header.statistics)
        self._wanted = tuple(wanted)
        self._columns = header.n_index_columns + header.n_value_columns
        try:
            size = self.path.stat().st_size
        except OSError as error:
            raise ToolError(f"{self.path}: cannot read: {error.strerror or error}") from error
        # a dense file: its rows share the body evenly, near enough to size the pieces
        self._row_bytes = max(16, (size - offset) // max(1, header.n_bins))
        self._offset = offset  # where the next piece starts (a file stays closed between)
        self._pending = b""
        self._parsed: list[list[np.ndarray | None]] = []
        self._parsed_rows = 0
        self._rows_read = 0
        self._ended = False

    def take(self, rows: int) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        while self._parsed_rows < rows and not self._ended:
            self._parse_more(rows - self._parsed_rows)
        columns = self._pop(min(rows, self._parsed_rows))
        count = next((c.shape[0] for c in columns if c is not None), 0)
        first = self.header.n_index_columns
        index = (np.column_stack(columns[:first]) if first  # type: ignore[arg-type]
                 else np.zeros((count, 0)))
        values = statistic_columns(columns[self.header.n_index_columns:], self.header,
                                   self._wanted)
        return index, values

    def exhausted(self) -> bool:
        if self._parsed_rows == 0 and not self._ended:
            self._parse_more(1)
        return self._parsed_rows == 0 and self._ended

    def close(self) -> None:
        pass

    def _parse_more(self, rows: int) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                piece = handle.read(max(1 << 16, int(rows * self._row_bytes * 1.02) + 256))
            self._offset += len(piece)
        except OSError as error:
            raise ToolError(f"{self.path}: cannot read: {error.strerror or error}") from error
        data = self._pending + piece
        if not piece:
            self._ended = True
            cut = len(data)
        else:
            cut = data.rfind(b"\n") + 1
        body, self._pending = data[:cut], data[cut:]
        if not body:
            return
        # a piece whose text may hold a NaN (every spelling has an n or an N) is parsed in
        # every column, and the columns the merge skips are checked here, by bin
        suspect = b"n" in body or b"N" in body
        wanted = None if suspect else self._wanted_columns()
        columns = parse_rows(body, self._columns, wanted, self.path,
                             self._rows_read)
        if suspect:
            columns = self._checked_skipped(columns)
        if len(columns) != self._columns:
            raise ToolError(f"{self.path}: rows have {len(columns)} columns, the header "
                            f"implies {self._columns}")
        count = next((c.shape[0] for c in columns if c is not None), 0)
        self._parsed.append(columns)
        self._parsed_rows += count
        self._rows_read += count

    def _checked_skipped(self, columns: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """ToolError for a NaN or infinity in a column the merge does not read; those
        columns are then dropped, as if never parsed."""
        keep = self._wanted_columns()
        if keep is None:
            return columns
        first = self.header.n_index_columns
        index = (np.column_stack(columns[:first]).astype(np.int64)  # type: ignore[arg-type]
                 if first else np.zeros((columns[0].shape[0], 0), dtype=np.int64))  # type: ignore[union-attr]
        values = statistic_columns(columns[first:], self.header, self._all)  # type: ignore[arg-type]
        check_finite(Scorer(self.header, index, values), bin_keys(self.header, index),
                     self.path)
        return [column if position in keep else None
                for position, column in enumerate(columns)]

    def _wanted_columns(self) -> list[int] | None:
        if self._wanted == self._all:
            return None
        stats = self._all
        per_row = [stats.index(name) for name in self._wanted]
        first = self.header.n_index_columns
        return list(range(first)) + sorted(
            first + extra * len(stats) + position
            for extra in range(max(1, self.header.n_extra_bins)) for position in per_row)

    def _pop(self, rows: int) -> list[np.ndarray | None]:
        """The next `rows` parsed rows; None for the columns not parsed."""
        taken: list[list[np.ndarray | None]] = []
        left = rows
        while left > 0:
            first = self._parsed[0]
            size = next(c.shape[0] for c in first if c is not None)
            if size <= left:
                taken.append(self._parsed.pop(0))
                left -= size
            else:
                taken.append([None if c is None else c[:left] for c in first])
                self._parsed[0] = [None if c is None else c[left:] for c in first]
                left = 0
        self._parsed_rows -= rows
        if not taken:
            return [np.zeros(0) for _ in range(self._columns)]
        if len(taken) == 1:
            return taken[0]
        return [None if parts[0] is None else np.concatenate(parts)  # type: ignore[arg-type]
                for parts in zip(*taken)]
