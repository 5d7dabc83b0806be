"""What one run of a scorer adds to a merge (RunContribution), and the checks that refuse
a run which would make the merged result silently wrong.

A run's statistics it lacks are rebuilt from those it has (Sum = Mean N, M2 = Var (N - 1)
= SD^2 (N - 1), FORMATS.md). Refused, naming the file and the bin: a NaN or infinite
value (TOPAS writes none for a sound run), a bin on two rows, a non-sparse file with
rows missing, Mean or a spread without the number of histories. Format-neutral: works on
Scorer objects from the CSV and the binary reader.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import ToolError
from common.topas.header import (COUNT_IN_BIN, HISTORIES, MAX, MEAN, MIN, SECOND_MOMENT,
                                 STANDARD_DEVIATION, SUM, VARIANCE, ScorerHeader)
from common.topas.scorer import K_FASTEST, Scorer, indices_for_keys, row_order

SPREAD = (SECOND_MOMENT, VARIANCE, STANDARD_DEVIATION)
_NEED_HISTORIES = (MEAN,) + SPREAD
OUTSIDE_STRUCTURE = -1.0  # what TOPAS prints for every statistic of an excluded bin
HISTORIES_FLAG = "--histories"  # how a user supplies histories the files do not report


@dataclass(frozen=True)
class RunContribution:
    """What one run adds, statistics it lacks rebuilt from those it has.

    `keys` are the bin numbers of the rows, or None when the run has every bin and the
    arrays are in bin-number order (then folding needs no scatter).
    """

    header: ScorerHeader
    order: str  # the row order of the file, K_FASTEST or I_FASTEST
    keys: np.ndarray | None
    histories: int | None  # N_r, from the file, its merge record or --histories
    total: np.ndarray | None  # Sum
    mean: np.ndarray | None  # only when the file has Mean but no Sum (else Sum / N)
    m2: np.ndarray | None
    count: np.ndarray | None
    minimum: np.ndarray | None
    maximum: np.ndarray | None
    outside: np.ndarray | None  # rows printed as all -1 by this run

    def at(self, array: np.ndarray, flat: np.ndarray) -> np.ndarray:
        """A per-row array's values at these flat bin numbers (bin x energy bins + energy
        bin), 0 where the run has no row: a few values without building the full grid."""
        per_bin = max(1, self.header.n_extra_bins)
        rows = array.reshape(array.shape[0], per_bin)
        if self.keys is None:
            return rows.ravel()[flat]
        bins, extra = np.divmod(flat, per_bin)
        position = np.minimum(np.searchsorted(self.keys, bins), max(self.keys.size - 1, 0))
        if self.keys.size == 0:
            return np.zeros(flat.shape)
        return np.where(self.keys[position] == bins, rows[position, extra], 0.0)

    def mean_per_history(self) -> np.ndarray | None:
        """Mean per row (Sum / N), None when neither it nor the histories are known."""
        if self.mean is not None:
            return self.mean
        if self.total is None or not self.histories:
            return None
        return self.total / self.histories

    def on_all_bins(self, array: np.ndarray) -> np.ndarray:
        """A per-row array on every bin in bin order (0 where the run has no row)."""
        if self.keys is None:
            return array
        full = np.zeros((self.header.n_bins,) + array.shape[1:], dtype=array.dtype)
        full[self.keys] = array
        return full


def contribution(scorer: Scorer, source: object, histories: int | None = None,
                 finite_checked: bool = False) -> RunContribution:
    """Turn one run's scorer into what the accumulator folds in.

    `histories` is the run's N when the file does not report it (--histories, or the
    record of an earlier merge); a file's own Histories_with_Scorer_Active wins.
    ToolError if what is needed is missing or a value is not finite (`finite_checked`:
    the caller checked that already, naming the bins as it knows them).
    """
    header = scorer.header
    keys = scorer.bin_keys()
    if not scorer.every_bin_in_order:
        _check_rows(header, keys, source)
    if not finite_checked:
        check_finite(scorer, keys, source)
    order = K_FASTEST if scorer.every_bin_in_order else row_order(header, keys)
    n = _histories(scorer, source, histories)
    _check_enough_reported(header.statistics, n, source)
    values = _in_key_order(scorer.values, keys)
    keys = None if keys.size == header.n_bins else np.sort(keys)
    total, mean = _first_moments(values, n)
    return RunContribution(header=header, order=order, keys=keys, histories=n, total=total,
                           mean=mean, m2=_second_moment(values, n),
                           count=values.get(COUNT_IN_BIN), minimum=values.get(MIN),
                           maximum=values.get(MAX), outside=_outside(values))


def folded_statistics(statistics: tuple[str, ...]) -> tuple[str, ...]:
    """Of a file's statistics, those contribution() uses: Mean only without Sum, one
    spread statistic (Second_Moment first). The others are made again from the merged
    state, so a reader need not parse them."""
    spread = next((name for name in SPREAD if name in statistics), None)
    first_moment = SUM if SUM in statistics else MEAN
    return tuple(name for name in statistics
                 if name not in (MEAN,) + SPREAD or name in (first_moment, spread))


def check_finite(scorer: Scorer, keys: np.ndarray, source: object) -> None:
    """ToolError naming the first bin holding NaN or an infinity."""
    for name, array in scorer.values.items():
        finite = np.isfinite(array)
        if finite.all():
            continue
        row, *energy = np.unravel_index(int(np.argmin(finite)), array.shape)
        value = array[(row, *energy)]
        where = bin_name(scorer.header, int(keys[row]), energy[0] if energy else None)
        raise ToolError(f"{source}: {name} is {value} in {where}; TOPAS writes no such value "
                        "for a sound run (broken node or disk?): rerun this run or leave "
                        "it out of the merge")


def bin_name(header: ScorerHeader, key: int, energy_bin: int | None = None) -> str:
    """'bin (i, j, k) = (1, 2, 3)' (with its energy/time bin) as a user finds it."""
    if header.n_index_columns == 3:
        i, j, k = indices_for_keys(header, np.array([key]))[0]
        name = f"bin (i, j, k) = ({i}, {j}, {k})"
    elif header.n_index_columns == 1:
        name = f"bin {key}"
    else:
        name = "the (undivided) scorer's bin"
    if energy_bin is not None:
        name += f", energy/time bin {int(energy_bin)} (0 = underflow)"
    return name


def _histories(scorer: Scorer, source: object, given: int | None) -> int | None:
    reported = scorer.histories(source)
    if reported is None and given is None and HISTORIES in scorer.header.statistics:
        raise ToolError(f"{source}: a sparse output without rows; its number of histories "
                        f"is unknown, so it cannot be combined (unless given with "
                        f"{HISTORIES_FLAG} N)")
    return reported if reported is not None else given


def _check_rows(header: ScorerHeader, keys: np.ndarray, source: object) -> None:
    seen = np.zeros(header.n_bins, dtype=bool)
    seen[keys] = True
    if np.count_nonzero(seen) != keys.size:
        raise ToolError(f"{source}: some bins appear on more than one row")
    if header.sparse is None and keys.size != header.n_bins:
        raise ToolError(f"{source}: it has rows for {keys.size} of the {header.n_bins} "
                        "bins and is not a sparse output (truncated file?)")


def _in_key_order(values: dict[str, np.ndarray], keys: np.ndarray) -> dict[str, np.ndarray]:
    if keys.size < 2 or bool(np.all(keys[1:] > keys[:-1])):
        return values
    order = np.argsort(keys)
    return {name: array[order] for name, array in values.items()}


def _first_moments(values: dict[str, np.ndarray],
                   n: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    total = values.get(SUM)
    mean = values.get(MEAN)
    if total is None and mean is not None and n is not None:
        total = mean * n
    # Mean is not made from Sum here: that would be a run-sized array held per run.
    return total, mean if total is None or SUM not in values else None


def _second_moment(values: dict[str, np.ndarray], n: int | None) -> np.ndarray | None:
    if SECOND_MOMENT in values:
        return values[SECOND_MOMENT]
    if not n:
        return None
    if VARIANCE in values:
        return values[VARIANCE] * (n - 1)
    if STANDARD_DEVIATION in values:
        return values[STANDARD_DEVIATION] ** 2 * (n - 1)
    return None


def _outside(values: dict[str, np.ndarray]) -> np.ndarray | None:
    """Bins where every reported statistic is -1: TOPAS's mark for outside an RT structure."""
    reported = [array for name, array in values.items() if name != HISTORIES]
    if not reported:
        return None
    first = reported[0] == OUTSIDE_STRUCTURE
    if not first.any():  # the usual case: no RT structure, one pass instead of several
        return first
    return np.logical_and.reduce([first] + [array == OUTSIDE_STRUCTURE
                                            for array in reported[1:]])


def _check_enough_reported(stats: tuple[str, ...], n: int | None, source: object) -> None:
    needing = [name for name in stats if name in _NEED_HISTORIES]
    if needing and n is None:
        raise ToolError(f"{source}: cannot combine {', '.join(needing)} over runs without "
                        f"each run's number of histories: the file does not report "
                        f"{HISTORIES}; give it with {HISTORIES_FLAG} N (histories per run)")
    if set(stats) & set(SPREAD) and not set(stats) & {SUM, MEAN}:
        raise ToolError(f"{source}: reports {', '.join(s for s in stats if s in SPREAD)} "
                        "without Sum or Mean; the spread of runs cannot be combined")
