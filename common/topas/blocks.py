"""Merging one dense scorer block by block over its voxels, the runs read in lockstep.

Memory is bounded by a budget, not by the grid: for each block of rows (the same rows of
every run: the runs share their row order, checked on every block) each run's rows are
read (blockread.py), folded into an accumulator of the block's size (combine.py), and
the merged rows are written at once, CSV or binary, with the block's batch rows; only
what the summary and the consistency test need of the whole grid is kept (the estimate
and its two relative errors, 16 bytes per value, and the ledger's few values per run) —
and a partial merge of a reducer tree keeps neither summary nor test, only the ledger.
The result is the same as folding whole runs: every bin's statistics depend only on the
runs' values in that bin, folded in the same order.

Used for dense outputs (CSV or binary, not sparse) whose whole runs do not fit the budget
(fits_whole); a run whose rows are not in the first run's order (another TOPAS version's order, or rows missing) raises NotLockstep,
and merge.py then folds whole runs instead.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from common.errors import ToolError
from common.topas.blockread import BinaryBlocks, BlockReader, CsvBlocks
from common.topas.blockwrite import BlockWriter
from common.topas.combine import ScorerAccumulator
from common.topas.consistency import ConsistencyReport, Pooled, test_runs
from common.topas.header import ScorerHeader, read_header
from common.topas.ledger import LedgerFile, RunLedger, RunValues, below
from common.topas.runs import check_finite, contribution, folded_statistics
from common.topas.scorer import I_FASTEST, K_FASTEST, Scorer, indices_for_keys
from common.topas.summary import ScorerView, grid_view

_MIN_BLOCK_ROWS = 4096
_BLOCKS_AT_LEAST = 8  # a grid is cut into at least this many blocks (memory ~ 1/8 grid)
_ACCUMULATOR_BYTES = 80  # per value: the accumulator's arrays, the merged block
_PARSE_BYTES = 300  # per value of a CSV block in flight: text, polars buffers, columns
_BINARY_BYTES = 8  # per value of a binary block in flight


class NotLockstep(Exception):
    """The runs' rows are not in one shared order: fold whole runs instead."""


@dataclass(frozen=True)
class BlockInput:
    """One input of the merge: its path, the histories it stands for, and the ledger of
    the original runs behind it when it is a merged output."""

    path: Path
    histories: int | None
    nested: LedgerFile | None


@dataclass(frozen=True)
class BlockResult:
    header: ScorerHeader
    runs: int
    histories: int | None
    rows: int
    empty_runs: tuple[str, ...]
    ledger: RunLedger
    consistency: ConsistencyReport
    view: ScorerView | None  # None for a partial merge, or without Sum/Mean


def fits_whole(header: ScorerHeader, memory_bytes: int, readers_at_once: int,
               binary: bool) -> bool:
    """Whether whole runs fit the budget: then folding them whole is faster (a block has
    its own costs: a parse call, a check, a write per run and block)."""
    return block_rows(header, memory_bytes, readers_at_once, binary,
                      whole=True) >= header.n_bins


def block_rows(header: ScorerHeader, memory_bytes: int, readers_at_once: int,
               binary: bool, whole: bool = False) -> int:
    """Rows per block: what the budget holds, at most an eighth of the grid."""
    values_per_row = max(1, header.n_extra_bins) * len(header.statistics)
    in_flight = (_BINARY_BYTES if binary else _PARSE_BYTES) * readers_at_once
    per_row = values_per_row * (_ACCUMULATOR_BYTES + in_flight)
    if whole:
        return int(memory_bytes // per_row)
    rows = min(memory_bytes // per_row, -(-header.n_bins // _BLOCKS_AT_LEAST))
    return int(min(header.n_bins, max(_MIN_BLOCK_ROWS, rows)))


def merge_in_blocks(inputs: Sequence[BlockInput], out_path: Path, *, expected_runs: int,
                    histories: int | None, memory_bytes: int, partial: bool,
                    batch_path: Path | None, relative: Path,
                    accept: Callable[[ConsistencyReport], None],
                    in_order: Callable) -> BlockResult:  # type: ignore[type-arg]
    """Merge the inputs' scorer into out_path (same format) block by block; the batch
    file too when `batch_path` is given. The runs' test goes to `accept` before the
    files are put in place (it raises to refuse them). NotLockstep if the rows are not
    shared."""
    header = read_header(inputs[0].path)
    binary = inputs[0].path.suffix == ".binheader"
    wanted = folded_statistics(header.statistics)
    readers: list[BlockReader] = []
    try:
        for item in inputs:
            other = read_header(item.path)
            difference = header.layout_difference(other)
            if difference is not None:
                raise ToolError(f"cannot merge {item.path} with {inputs[0].path}: "
                                f"different {difference}")
            readers.append(BinaryBlocks(item.path, other, wanted) if binary
                           else CsvBlocks(item.path, other, wanted))
        return _merge(inputs, readers, header, out_path, expected_runs, histories,
                      memory_bytes, partial, batch_path, relative, accept, in_order, binary)
    finally:
        for reader in readers:
            reader.close()


def _merge(inputs: Sequence[BlockInput], readers: list[BlockReader], header: ScorerHeader,
           out_path: Path, expected_runs: int, histories: int | None, memory_bytes: int,
           partial: bool, batch_path: Path | None, relative: Path,
           accept: Callable[[ConsistencyReport], None], in_order: Callable,
           binary: bool) -> BlockResult:  # type: ignore[type-arg]
    rows = block_rows(header, memory_bytes, 2, binary)
    per_row = max(1, header.n_extra_bins)
    ledger = RunLedger(expected_runs)
    ledger.start_lazily(header.n_bins * per_row)
    order = I_FASTEST if binary else None
    kept = _Kept(len(inputs))
    view = None if partial else grid_view(header)
    writer = BlockWriter(out_path, header, binary, batch_path, relative, expected_runs)
    accumulator = None
    try:
        for start in range(0, header.n_bins, rows):
            count = min(rows, header.n_bins - start)
            block = replace(header, shape=(1, 1, count))
            keys = expected = elements = chosen = None
            accumulator = ScorerAccumulator(histories, keep_ledger=False)
            for r, (index, values) in in_order(list(range(len(inputs))),
                                               lambda r: readers[r].take(count)):
                if keys is None:
                    order = order or _order_of(header, index, start)
                    keys = _keys(header, order, start, count)
                    expected = indices_for_keys(header, keys) if not binary else None
                    elements = (keys[:, None] * per_row + np.arange(per_row)).ravel()
                    chosen = np.flatnonzero(below(elements, ledger.threshold_value))
                item = inputs[r]
                _check_block(readers[r], index, values, start, count, expected, header)
                # named by its real bin here (the block's own numbering means nothing)
                _check_finite(readers[r], Scorer(header, index, values), keys, item.path)
                run = contribution(Scorer(block, np.zeros((count, 0)), values, True),
                                   item.path, item.histories, finite_checked=True)
                del values
                accumulator.add_contribution(run, item.path)
                if run.histories and item.nested is None:
                    kept.add(r, run, chosen)
                del run
            assert keys is not None and elements is not None and chosen is not None
            kept.pool(accumulator, chosen, elements)  # chosen: positions in the block
            writer.write(keys, accumulator)
            if view is not None:
                view.fill(keys, accumulator.result(), accumulator.batch(),
                          accumulator.histories)
        for reader in readers:
            if not reader.exhausted():
                raise ToolError(f"{reader.path}: more rows than the {header.n_bins} bins "
                                "of its header")
        assert accumulator is not None
        consistency = _consistency(ledger, kept, inputs, accumulator, not partial)
        accept(consistency)
        writer.finish()
    finally:
        writer.close()
    return BlockResult(header=header, runs=accumulator.runs, histories=accumulator.histories,
                       rows=header.n_bins, empty_runs=tuple(accumulator.empty_runs),
                       ledger=ledger, consistency=consistency,
                       view=None if view is None else view.finish(accumulator.runs))


def _order_of(header: ScorerHeader, index: np.ndarray | None, start: int) -> str:
    """The row order of the first run, from its first block's indices."""
    assert index is not None
    count = index.shape[0]
    for order in (K_FASTEST, I_FASTEST):
        keys = _keys(header, order, start, count)
        if np.array_equal(index, indices_for_keys(header, keys)):
            return order
    raise NotLockstep


def _keys(header: ScorerHeader, order: str, start: int, count: int) -> np.ndarray:
    """The bin numbers of rows start..start+count in this row order."""
    positions = np.arange(start, start + count, dtype=np.int64)
    if order == K_FASTEST or header.shape is None:
        return positions
    ni, nj, nk = header.shape
    i, rest = positions % ni, positions // ni
    j, k = rest % nj, rest // nj
    return (i * nj + j) * nk + k


def _check_block(reader: BlockReader, index: np.ndarray | None,
                 values: dict[str, np.ndarray], start: int, count: int,
                 expected: np.ndarray | None, header: ScorerHeader) -> None:
    got = next(iter(values.values())).shape[0] if values else count
    if got != count:
        raise ToolError(f"{reader.path}: it has rows for {start + got} of the "
                        f"{header.n_bins} bins and is not a sparse output (truncated file?)")
    if expected is not None and index is not None and not np.array_equal(index, expected):
        raise NotLockstep


def _check_finite(reader: BlockReader, scorer: Scorer, keys: np.ndarray,
                  source: Path) -> None:
    """check_finite(), in one pass over a binary block's bytes when all is well."""
    if reader.all_finite():
        return
    check_finite(scorer, keys, source)


class _Kept:
    """Per run, its values at the block's candidates; the pool's too."""

    def __init__(self, inputs: int) -> None:
        self.sums: list[list[np.ndarray]] = [[] for _ in range(inputs)]
        self.m2: list[list[np.ndarray] | None] = [[] for _ in range(inputs)]
        self.histories: list[int] = [0] * inputs
        self.elements: list[np.ndarray] = []
        self.pooled: list[Pooled] = []

    def add(self, r: int, run, chosen: np.ndarray) -> None:  # type: ignore[no-untyped-def]
        self.histories[r] = int(run.histories)
        total = run.total if run.total is not None else run.mean * run.histories
        # float32, as the ledger keeps them: this is what grows with the runs
        self.sums[r].append(np.asarray(total).reshape(-1)[chosen].astype(np.float32))
        parts = self.m2[r]
        if run.m2 is None or parts is None:
            self.m2[r] = None
        else:
            parts.append(np.asarray(run.m2).reshape(-1)[chosen].astype(np.float32))

    def take(self, r: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Run r's values, its pieces freed (so the ledger grows, not twice)."""
        sums = np.concatenate(self.sums[r])
        parts = self.m2[r]
        m2 = None if parts is None else np.concatenate(parts)
        self.sums[r], self.m2[r] = [], []
        return sums, m2

    def pool(self, accumulator: ScorerAccumulator, chosen: np.ndarray,
             elements: np.ndarray) -> None:
        self.elements.append(elements[chosen])
        if accumulator.spread_known():
            self.pooled.append(accumulator.pooled(chosen))


def _consistency(ledger: RunLedger, kept: _Kept, inputs: Sequence[BlockInput],
                 accumulator: ScorerAccumulator, test: bool) -> ConsistencyReport:
    """Record every run in the ledger (in input order) and test them (unless `test` is
    False: a partial merge keeps the ledger for the final one)."""
    elements = np.concatenate(kept.elements)
    order = np.argsort(elements, kind="stable")
    ledger.set_elements(elements[order])
    for r, item in enumerate(inputs):
        if item.nested is not None:
            ledger.add_nested(item.nested)
        elif str(item.path) in accumulator.empty_runs:
            continue  # 0 histories: left out of the merge, and of the test
        elif not kept.histories[r]:
            ledger.add_untestable("the files do not report their histories (nor were "
                                  "they given)", str(item.path), b"")
        else:
            sums, m2 = kept.take(r)
            ledger.add(RunValues(str(item.path), kept.histories[r], sums[order],
                                 None if m2 is None else m2[order]))
    if not test:
        return ConsistencyReport(False, "a partial merge (a first-level task of a reducer "
                                 "tree): the final merge tests every run")
    if ledger.untestable is not None:
        return ConsistencyReport(False, ledger.untestable, identical=tuple(ledger.identical))
    if len(kept.pooled) != len(kept.elements) or not accumulator.histories:
        return ConsistencyReport(False, "no spread statistic",
                                 identical=tuple(ledger.identical))
    pooled = Pooled(accumulator.histories,
                    np.concatenate([p.total for p in kept.pooled])[order],
                    np.concatenate([p.m2 for p in kept.pooled])[order],
                    np.concatenate([p.usable for p in kept.pooled])[order])
    keep = np.isin(elements[order], ledger.elements, assume_unique=True)
    pooled = Pooled(pooled.histories, pooled.total[keep], pooled.m2[keep], pooled.usable[keep])
    return test_runs(ledger.runs, pooled, tuple(ledger.identical))
