"""Writing a merged scorer block by block (blocks.py): the CSV rows or the `.bin` values
as each block is merged, and its batch file beside. Everything is written aside
(`.partial`) and renamed at the end, so an interrupted merge leaves no half result.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

import numpy as np

from common.errors import ToolError
from common.topas.binary import binary_pair
from common.topas.combine import ScorerAccumulator
from common.topas.extras import batch_header
from common.topas.header import ScorerHeader
from common.topas.scorer import indices_for_keys
from common.topas.tables import write_rows

_FLOAT64 = np.dtype("<f8")


class BlockWriter:
    """The merged file (and its batch file) of a block-by-block merge."""

    def __init__(self, path: Path, header: ScorerHeader, binary: bool,
                 batch_path: Path | None, relative: Path, runs: int) -> None:
        self._header, self._binary, self._relative = header, binary, relative
        self._finals: list[tuple[Path, Path]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        if binary:
            header_path, data_path = binary_pair(path)
            self._data = self._open(data_path, "wb")
            self._header_path = header_path
        else:
            self._text = self._open(path, "w")
            self._text.write("".join(line + "\n" for line in header.lines))
        self._batch: TextIO | None = None
        if batch_path is not None:
            batch_path.parent.mkdir(parents=True, exist_ok=True)
            self._batch = self._open(batch_path, "w")
        self._batch_started = False

    def _open(self, final: Path, mode: str):  # type: ignore[no-untyped-def]
        partial = final.with_name(final.name + ".partial")
        self._finals.append((partial, final))
        try:
            if "b" in mode:
                return open(partial, mode)
            return open(partial, mode, encoding="utf-8", newline="\n")
        except OSError as error:
            raise ToolError(f"{final}: cannot write: {error.strerror or error}") from error

    def write(self, keys: np.ndarray, accumulator: ScorerAccumulator) -> None:
        """The merged rows of one block (bins `keys`, in the block's row order)."""
        merged = accumulator.result()
        header = self._header
        columns = [merged.values[name] for name in header.statistics]
        if self._binary:  # interleaved as TOPAS writes them, straight from one buffer
            stacked = np.empty(columns[0].shape + (len(columns),), dtype=_FLOAT64)
            for position, column in enumerate(columns):
                stacked[..., position] = column
            self._data.write(memoryview(stacked.reshape(-1)).cast("B"))
        else:
            write_rows(self._text, indices_for_keys(header, keys), columns)
        batch = accumulator.batch() if self._batch is not None else None
        if self._batch is not None and batch is not None:
            if not self._batch_started:
                self._batch.write(batch_header(header, batch.runs, batch.per_history,
                                               self._relative))
                self._batch_started = True
            write_rows(self._batch, indices_for_keys(header, keys[batch.keys]),
                       [batch.estimate, batch.standard_error])

    def finish(self) -> None:
        """Close the files and put them in place."""
        self._close_handles()
        if self._binary:
            partial = self._header_path.with_name(self._header_path.name + ".partial")
            partial.write_text("".join(line + "\n" for line in self._header.lines),
                               encoding="utf-8")
            self._finals.append((partial, self._header_path))
        if self._batch is not None and not self._batch_started:  # nothing to put in it
            batch = self._finals.pop(-1 if not self._binary else -2)
            batch[0].unlink(missing_ok=True)
        for partial, final in self._finals:
            os.replace(partial, final)
        self._finals = []

    def close(self) -> None:
        """Close the files; those not yet put in place are removed."""
        self._close_handles()
        for partial, _ in self._finals:
            partial.unlink(missing_ok=True)
        self._finals = []

    def _close_handles(self) -> None:
        for handle in (getattr(self, "_data", None), getattr(self, "_text", None),
                       self._batch):
            if handle is not None and not handle.closed:
                handle.close()
