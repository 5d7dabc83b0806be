"""What the consistency test keeps of each run while the runs are folded, and the file a
merge leaves so that a later merge of its output still tests every original run.

The test (consistency.py) compares each run's mean per history with the pooled one in a
set of candidate bins. The candidates are chosen blind to every value: an element (bin x
energy bin) is one when a fixed hash of its number is below a threshold, so every run,
every partial merge of a reducer tree and every later merge chooses the same ones, and a
lower threshold chooses a subset of a higher one (a merge of merges keeps the lowest).
Every element is a candidate when that ledger stays under 16 MB (small grids, where the
dose may cover a few percent of the voxels). Else the threshold keeps the ledger small
against the runs' own arrays: at most one candidate per (4 x runs) elements, at least 1,024, at most 65,536, two float32 each — so 100 runs of
100k voxels hold 8 kB each, 1,000 runs of 67 M voxels 0.5 MB each.

Per run: its source, histories, Sum and Second_Moment at the candidates and a digest of
its values (identical runs: the same seed twice). A merge writes them beside its output
as `<file>.merge.runs.npz` (numpy only, no pickle); a merge that takes that output as an
input reads them back and tests the original runs instead of the merged one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common.errors import ToolError

LEDGER_SUFFIX = ".merge.runs.npz"
MIN_CANDIDATES = 1024
SMALL_LEDGER_BYTES = 16 << 20  # a ledger of every element up to this size
MAX_CANDIDATES = 65536
_ELEMENTS_PER_RUN = 4  # the ledger holds at most 1 / (4 x runs) of the elements per run
_ALL = 1 << 64  # a threshold above every hash: every element is a candidate
_KIND = "common.topas run ledger 1"


def candidate_threshold(elements: int, runs: int) -> int:
    """The hash threshold for a scorer of `elements` values merged from `runs` runs."""
    if elements * max(runs, 1) * 8 <= SMALL_LEDGER_BYTES:
        return _ALL  # a small grid: every element, it costs nothing
    wanted = min(MAX_CANDIDATES, max(MIN_CANDIDATES, elements // (_ELEMENTS_PER_RUN *
                                                                  max(runs, 1))))
    if wanted >= elements:
        return _ALL
    return int(_ALL * wanted // elements)


def element_hash(elements: np.ndarray) -> np.ndarray:
    """splitmix64 of the element numbers: a fixed, value-blind, uniform uint64 per element."""
    z = elements.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def below(elements: np.ndarray, threshold: int) -> np.ndarray:
    """Which of these elements are candidates under `threshold`."""
    if threshold >= _ALL:
        return np.ones(elements.shape, dtype=bool)
    return element_hash(elements) < np.uint64(threshold)


def candidates_between(start: int, stop: int, threshold: int) -> np.ndarray:
    """The candidate element numbers in [start, stop), ascending."""
    elements = np.arange(start, stop, dtype=np.int64)
    return elements if threshold >= _ALL else elements[below(elements, threshold)]


def all_candidates(elements: int, threshold: int, chunk: int = 1 << 20) -> np.ndarray:
    """Every candidate of a scorer, computed a chunk at a time (a 67 M-voxel grid's hashes
    would be 0.5 GB at once)."""
    parts = [candidates_between(start, min(start + chunk, elements), threshold)
             for start in range(0, elements, chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class RunValues:
    """One run as the test sees it: its values at the ledger's candidates."""

    source: str
    histories: int
    sums: np.ndarray  # Sum at the candidates (float32: 7 digits, ample for a z)
    m2: np.ndarray | None  # Second_Moment at the candidates; None without a spread
    digest: bytes = b""  # of its values: equal digests are the same seed twice


class RunLedger:
    """The runs recorded so far, all on one set of candidate elements."""

    def __init__(self, expected_runs: int | None = None) -> None:
        """`expected_runs`: the runs (original runs, through merged inputs) the merge
        will hold; it sets the candidate threshold (10 when not known)."""
        self.expected_runs = expected_runs or 10
        self.threshold: int | None = None
        self.elements = np.zeros(0, dtype=np.int64)
        self.runs: list[RunValues] = []
        self.untestable: str | None = None
        self.identical: list[tuple[str, str]] = []
        self._digests: dict[bytes, str] = {}
        self._floor: np.ndarray | None = None
        self._n_elements = 0

    def start(self, n_elements: int) -> np.ndarray:
        """Choose the candidates of a scorer of n_elements values (once); they are returned."""
        if self.threshold is None:
            self._n_elements = n_elements
            self.threshold = candidate_threshold(n_elements, self.expected_runs)
            self.elements = all_candidates(n_elements, self.threshold)
        return self.elements

    def start_lazily(self, n_elements: int) -> None:
        """Choose the threshold only: a merge block by block finds the candidates of
        each block itself and gives them all with set_elements()."""
        self._n_elements = n_elements
        self.threshold = candidate_threshold(n_elements, self.expected_runs)

    @property
    def threshold_value(self) -> int:
        assert self.threshold is not None
        return self.threshold

    def set_elements(self, elements: np.ndarray) -> None:
        """The candidates (ascending), found block by block, before any run is added."""
        self.elements = elements
        self._floor = None

    def add(self, run: RunValues) -> None:
        """Record one run (its arrays on this ledger's candidates); its digest is made
        here when it has none."""
        if not run.digest:
            run = replace(run, digest=self._digest(run))
        self._note_identical(run)
        run = replace(run, sums=np.asarray(run.sums, dtype=np.float32),
                      m2=None if run.m2 is None else np.asarray(run.m2, dtype=np.float32))
        if run.m2 is None and self.untestable is None:
            self.untestable = ("the files hold no Second_Moment, Variance or "
                               "Standard_Deviation with their histories, so the runs' "
                               "variance per history is unknown")
        self.runs.append(run)

    def add_untestable(self, reason: str, source: str, digest: bytes) -> None:
        """A run that cannot be tested (no histories): the test is off, with `reason`."""
        self._note_identical(RunValues(source, 0, np.zeros(0), None, digest))
        if self.untestable is None:
            self.untestable = reason

    def add_nested(self, nested: LedgerFile) -> None:
        """The original runs of a merged input, from its ledger file."""
        assert self.threshold is not None
        if nested.threshold < self.threshold:
            self._lower_threshold(nested.threshold)
        keep = np.isin(nested.elements, self.elements, assume_unique=True)
        for run in nested.runs:
            self.add(replace(run, sums=run.sums[keep],
                             m2=None if run.m2 is None else run.m2[keep]))

    def _lower_threshold(self, threshold: int) -> None:
        keep = below(self.elements, threshold)
        self.threshold = threshold
        self._floor = None
        self.elements = self.elements[keep]
        self.runs = [replace(run, sums=run.sums[keep],
                             m2=None if run.m2 is None else run.m2[keep])
                     for run in self.runs]

    def _digest(self, run: RunValues) -> bytes:
        """The run's histories and Sum at the candidates of the lowest threshold there is
        (MIN_CANDIDATES of them, in every ledger of the scorer): the same in every merge,
        block by block or not, so the same seed twice is seen even across partial merges."""
        assert self.threshold is not None
        if self._floor is None:
            self._floor = below(self.elements, candidate_threshold(self._n_elements, 1 << 62))
        digest = hashlib.blake2b(str(run.histories).encode(), digest_size=16)
        digest.update(np.ascontiguousarray(run.sums, dtype=np.float64)[self._floor].tobytes())
        return digest.digest()

    def _note_identical(self, run: RunValues) -> None:
        if not run.digest:
            return
        if run.digest in self._digests:
            self.identical.append((self._digests[run.digest], run.source))
        else:
            self._digests[run.digest] = run.source


# ------------------------------------------------------------------ the file

@dataclass(frozen=True)
class LedgerFile:
    threshold: int
    elements: np.ndarray
    runs: tuple[RunValues, ...]


def ledger_path(merged: Path) -> Path:
    merged = Path(merged)
    return merged.with_name(merged.name + LEDGER_SUFFIX)


def write_ledger(merged: Path, ledger: RunLedger) -> Path | None:
    """Write the ledger beside a merged file (complete or not at all); None when it holds
    nothing a later test could use."""
    path = ledger_path(merged)
    runs = ledger.runs
    if ledger.threshold is None or not runs or any(run.m2 is None for run in runs):
        path.unlink(missing_ok=True)
        return None
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, kind=np.array(_KIND),
             threshold=np.array(str(ledger.threshold)), elements=ledger.elements,
             sources=np.array([run.source for run in runs]),
             histories=np.array([run.histories for run in runs], dtype=np.int64),
             sums=np.array([run.sums for run in runs], dtype=np.float32).reshape(
                 len(runs), -1),
             m2=np.array([run.m2 for run in runs], dtype=np.float32).reshape(len(runs), -1),
             digests=np.array([run.digest.hex() for run in runs]))
    partial.replace(path)
    return path


def read_ledger(merged: Path, runs: int, histories: int | None) -> LedgerFile | None:
    """The ledger beside a merged input, None if there is none or it does not stand for
    the `histories` of the input's record (then the input counts as one run).
    ToolError if it is unreadable."""
    path = ledger_path(merged)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["kind"]) != _KIND:
                raise ValueError("not a run ledger")
            sources, counts = data["sources"], data["histories"]
            sums, m2, digests = data["sums"], data["m2"], data["digests"]
            elements = data["elements"].astype(np.int64)
            threshold = int(str(data["threshold"]))
    except (OSError, ValueError, KeyError) as error:
        raise ToolError(f"{path}: unreadable run ledger ({error}); delete it to merge "
                        "the file beside it as one run") from error
    # its entries may be fewer than the runs: an input of that merge without a ledger
    # (an older merged output) is one entry of all its histories
    if histories is None or int(counts.sum()) != histories or not 0 < len(sources) <= runs \
            or sums.shape != (len(sources), elements.size) or m2.shape != sums.shape:
        return None
    return LedgerFile(threshold=threshold, elements=elements, runs=tuple(
        RunValues(str(source), int(n), sums[r], m2[r], bytes.fromhex(str(digest)))
        for r, (source, n, digest) in enumerate(zip(sources, counts, digests))))
