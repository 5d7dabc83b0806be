"""The merge block by block over the voxels (common/topas/blocks.py): the same result as
folding whole runs, in CSV (either row order) and binary, energy bins; a run in another
row order falls back to whole runs; a cut or a NaN is still named with its real bin."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import ToolError
from common.topas.binary import write_binary_scorer
from common.topas.blocks import block_rows
from common.topas import merge as merge_module
from common.topas.merge import merge_runs, merge_scorer_files
from common.topas.scorer import I_FASTEST, K_FASTEST, read_scorer
from test_topas_merge import (ALL_STATS, assert_matches_truth, draw_histories, header_for,
                              topas_statistics, write_run)

SHAPE = (48, 32, 16)  # 24,576 bins: too many for --memory-mb 16, 6 blocks of 4,096 rows
SIZES = (40, 7, 25)


def campaign(tmp_path: Path, orders: tuple[str, ...] = (K_FASTEST,), extra: int = 0,
             binary: bool = False) -> tuple[list[Path], np.ndarray, str]:
    lines = (f"# Binned by pre-step energy in {extra - 2} bins of 1 MeV from 0 MeV to "
             f"{extra - 2} MeV",) if extra else ()
    header = header_for(ALL_STATS, shape=SHAPE, extra=lines)
    rng = np.random.default_rng(3)
    grid = (header.n_bins,) + ((header.n_extra_bins,) if extra else ())
    parts = [draw_histories(rng, n, grid, 0.2) for n in SIZES]
    name = "Dose.binheader" if binary else "Dose.csv"
    runs = []
    for r, x in enumerate(parts):
        run = tmp_path / f"run{r}"
        if binary:
            run.mkdir()
            write_binary_scorer(run / name, header, topas_statistics(x))
        else:
            write_run(run / name, header, x, orders[r % len(orders)])
        runs.append(run)
    return runs, np.concatenate(parts), name


@pytest.mark.parametrize("orders, extra, binary", [
    ((K_FASTEST,), 0, False), ((I_FASTEST,), 0, False), ((K_FASTEST,), 4, False),
    ((K_FASTEST,), 0, True), ((K_FASTEST,), 4, True)],
    ids=["csv", "csv-i-fastest", "csv-energy", "binary", "binary-energy"])
def test_blocks_give_the_statistics_of_all_histories(tmp_path: Path, orders: tuple[str, ...],
                                                     extra: int, binary: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    runs, everything, name = campaign(tmp_path, orders, extra, binary)
    whole_runs = merge_module._merge_whole
    with monkeypatch.context() as patch:  # the blocks must do it, not the fallback
        patch.setattr(merge_module, "_merge_whole", _not_here)
        merge_runs(runs, tmp_path / "blocks", plots=False, memory_mb=16)
    assert whole_runs is merge_module._merge_whole
    header = read_scorer(runs[0] / name).header
    assert block_rows(header, 16 << 20, 2, binary) < header.n_bins  # several blocks
    merged = read_scorer(tmp_path / "blocks" / name)
    assert_matches_truth(merged, everything)
    whole = merge_scorer_files([run / name for run in runs], tmp_path / f"whole_{name}")
    for statistic, values in whole.values.items():
        np.testing.assert_array_equal(merged.values[statistic], values)
    batch = (tmp_path / "blocks" / "merge-summary" / f"{name}.batch.csv").read_text()
    assert batch.count("\n") == header.n_bins + batch.count("#")


def _not_here(*args: object, **kwargs: object) -> None:
    raise AssertionError("merged whole run by whole run")


def test_runs_in_other_row_orders_fall_back_to_whole_runs(tmp_path: Path) -> None:
    runs, everything, name = campaign(tmp_path, (K_FASTEST, I_FASTEST))
    merge_runs(runs, tmp_path / "out", plots=False, memory_mb=16)
    assert_matches_truth(read_scorer(tmp_path / "out" / name), everything)
    assert not list((tmp_path / "out").glob("*.partial"))


@pytest.mark.parametrize("column, statistic", [(3, "Sum"), (9, "Standard_Deviation")])
def test_a_nan_in_a_later_block_is_named_with_its_real_bin(tmp_path: Path, column: int,
                                                           statistic: str) -> None:
    # Standard_Deviation is a column the merge does not parse: unless the text may hold
    # a NaN, which this piece does
    runs, _, name = campaign(tmp_path)
    path = runs[1] / name
    lines = path.read_text().splitlines(keepends=True)
    header_lines = sum(line.startswith("#") for line in lines)
    row = lines[header_lines + 12000].rstrip("\n").split(", ")
    row[column] = "nan"  # bin (23, 14, 0): row 12000 in k-fastest order
    lines[header_lines + 12000] = ", ".join(row) + "\n"
    path.write_text("".join(lines))
    with pytest.raises(ToolError, match=rf"run1/Dose.csv: {statistic} is nan in bin "
                                        r"\(i, j, k\) = \(23, 14, 0\)"):
        merge_runs(runs, tmp_path / "out", plots=False, memory_mb=16)
    assert not (tmp_path / "out" / name).exists()
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_a_cut_binary_run_is_named(tmp_path: Path) -> None:
    runs, _, _ = campaign(tmp_path, binary=True)
    data = runs[2] / "Dose.bin"
    data.write_bytes(data.read_bytes()[:-800])
    with pytest.raises(ToolError, match=r"run2/Dose.bin: .* bytes, but its header describes"):
        merge_runs(runs, tmp_path / "out", plots=False, memory_mb=16)


def test_memory_budget_is_checked(tmp_path: Path) -> None:
    runs, _, _ = campaign(tmp_path)
    with pytest.raises(ToolError, match="--memory-mb 4: must be at least 16"):
        merge_runs(runs, tmp_path / "out", plots=False, memory_mb=4)
