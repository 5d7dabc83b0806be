"""Binary scorers (.binheader + .bin, common/topas/binary.py): the real files, the layout,
round trips, and merging generated runs against the statistics of all histories."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from common.errors import ToolError
from common.topas import read_scorer, write_binary_scorer
from common.topas.header import parse_header
from common.topas.merge import merge_runs
from test_topas_merge import (ALL_STATS, RTOL, assert_matches_truth, draw_histories,
                              topas_statistics)

DATA = Path(__file__).parent / "data" / "topas"
DOSE = DATA / "davidchall__topas2numpy" / "tests__data__Dose.binheader"
OAR = DATA / "topasmc__topas-docs" / "examples__Outcome__DoseAtOAR2Saved.binheader"
FLUENCE = DATA / "dixinchen__neutron-dosimetry" / "Feb__Feb-19__FluenceSpectra_FixedBin.binheader"
BINARY_FIXTURES = [DOSE, OAR, FLUENCE, FLUENCE.with_name(FLUENCE.name.replace("Fixed", "Log"))]


def test_dose_nine_statistics() -> None:
    dose = read_scorer(DOSE)
    v = dose.values
    assert dose.header.shape == (1, 1, 40) and dose.rows == 40
    assert dose.header.statistics == ALL_STATS
    assert dose.histories() == 1000
    np.testing.assert_allclose(v["Mean"], v["Sum"] / 1000, rtol=1e-6)  # TOPAS 2.0 floats
    np.testing.assert_allclose(v["Variance"], v["Second_Moment"] / 999, rtol=RTOL)
    np.testing.assert_allclose(v["Standard_Deviation"], np.sqrt(v["Variance"]), rtol=RTOL)
    assert np.all(v["Min"] <= v["Max"]) and np.all(v["Count_in_Bin"] <= 1000)
    # The first voxel's nine numbers are the first nine doubles of the file.
    raw = np.fromfile(DOSE.with_suffix(".bin"), dtype="<f8")
    assert [v[name][0] for name in ALL_STATS] == raw[:9].tolist()


def test_voxels_run_x_fastest() -> None:
    # 24x24x24, Sum only: raw position p = k*24*24 + j*24 + i holds bin (i, j, k).
    oar = read_scorer(OAR)
    raw = np.fromfile(OAR.with_suffix(".bin"), dtype="<f8")
    i, j, k = oar.indices.T
    assert np.array_equal(oar.values["Sum"], raw[(k * 24 + j) * 24 + i])
    assert oar.header.binary_file == "DoseAtOAR2.bin"  # renamed since: the sibling is read
    assert oar.grid("Sum")[13, 10, 23] == raw.max()


def test_energy_bins_inside_each_voxel() -> None:
    fluence = read_scorer(FLUENCE)
    assert fluence.header.n_extra_bins == 103
    assert fluence.values["Sum"].shape == (1, 103)
    raw = np.fromfile(FLUENCE.with_suffix(".bin"), dtype="<f8")
    assert np.array_equal(fluence.values["Sum"][0], raw)


@pytest.mark.parametrize("path", BINARY_FIXTURES, ids=lambda p: p.stem)
def test_round_trip_is_byte_exact(path: Path, tmp_path: Path) -> None:
    first = read_scorer(path)
    copy = tmp_path / path.name
    write_binary_scorer(copy, first.header, first.values)
    assert copy.with_suffix(".bin").read_bytes() == path.with_suffix(".bin").read_bytes()
    assert copy.read_text() == path.read_text()
    again = read_scorer(copy)
    for name, values in first.values.items():
        assert np.array_equal(again.values[name], values)


def test_layout_by_construction(tmp_path: Path) -> None:
    # Values that say where they are: Sum = bin number, Mean = 1000 + energy bin.
    header = parse_header(["# Results for scorer: B", "# Scored in component: Box",
                           "# X in 3 bins of 1 cm", "# Y in 2 bins of 1 cm",
                           "# Z in 4 bins of 1 cm", "# Dose ( Gy ) : Sum   Mean   ",
                           "# Binned by time in 2 bins of 1 ns from 0 ns to 2 ns",
                           "# First bin is underflow, last bin is overflow.",
                           "# Binary file: B.bin"])
    keys = np.arange(24)
    values = {"Sum": np.repeat(keys[:, None], 4, axis=1) * 1.0,
              "Mean": np.tile(1000.0 + np.arange(4), (24, 1))}
    path = tmp_path / "B.binheader"
    write_binary_scorer(path, header, values)
    raw = np.fromfile(tmp_path / "B.bin").reshape(4, 2, 3, 4, 2)  # k, j, i, time, stat
    assert raw[3, 1, 2, 0, 0] == 2 * 8 + 1 * 4 + 3  # bin (i=2, j=1, k=3)
    assert raw[0, 0, 1, :, 1].tolist() == [1000, 1001, 1002, 1003]
    assert read_scorer(path).values["Sum"].tolist() == values["Sum"].tolist()


def test_size_mismatch_names_the_file(tmp_path: Path) -> None:
    shutil.copy(DOSE, tmp_path / "Dose.binheader")
    (tmp_path / "Dose.bin").write_bytes(DOSE.with_suffix(".bin").read_bytes()[:-8])
    with pytest.raises(ToolError, match=r"Dose.bin: 2872 bytes, but its header describes "
                                        r"2880 \(40 voxels x 9 statistics"):
        read_scorer(tmp_path / "Dose.binheader")
    (tmp_path / "Dose.bin").unlink()
    with pytest.raises(ToolError, match=r"Dose.bin: missing"):
        read_scorer(tmp_path / "Dose.binheader")


def binary_header(stats: tuple[str, ...], extra: tuple[str, ...] = ()):
    return parse_header(["# TOPAS Version: 3.7", "# Parameter File: p.txt",
                         "# Results for scorer Dose", "# Scored in component: Box",
                         "# X in 3 bins of 1 cm", "# Y in 1 bin  of 1 cm",
                         "# Z in 5 bins of 1 cm",
                         "# DoseToMedium ( Gy ) : " + "".join(f"{s}   " for s in stats),
                         *extra, "# Binary file: Dose.bin"])


@pytest.mark.parametrize("extra", [(), (
    "# Binned by incident track energy in 3 bins of 1 MeV from 0 MeV to 3 MeV",
    "# First bin is underflow, next to last bin is overflow, last bin is for case of "
    "no incident track.")], ids=["voxels", "energy-binned"])
def test_merge_generated_binary_runs(tmp_path: Path, extra: tuple[str, ...]) -> None:
    header = binary_header(ALL_STATS, extra)
    rng = np.random.default_rng(4)
    grid = (header.n_bins,) + ((header.n_extra_bins,) if header.n_extra_bins else ())
    parts = [draw_histories(rng, n, grid, 0.2) for n in (40, 130, 7)]
    runs = []
    for r, x in enumerate(parts):
        run = tmp_path / f"run{r}"
        (run / "out").mkdir(parents=True)
        stats = topas_statistics(x)
        write_binary_scorer(run / "out" / "Dose.binheader", header,
                            {s: stats[s] for s in header.statistics})
        runs.append(run)
    report = merge_runs(runs, tmp_path / "merged", plots=False)
    assert [(m.path, m.kind) for m in report.merged] == [(Path("out/Dose.binheader"),
                                                          "binary scorer")]
    merged = read_scorer(tmp_path / "merged" / "out" / "Dose.binheader")
    assert_matches_truth(merged, np.concatenate(parts))
    assert (tmp_path / "merged" / "out" / "Dose.bin").stat().st_size == (
        header.n_bins * max(1, header.n_extra_bins) * 9 * 8)


def test_binary_missing_in_a_run_is_named(tmp_path: Path) -> None:
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run.mkdir()
        for suffix in (".binheader", ".bin"):
            shutil.copy(DOSE.with_suffix(suffix), run / f"Dose{suffix}")
    (runs[1] / "Dose.binheader").unlink()
    with pytest.raises(ToolError) as caught:
        merge_runs(runs, tmp_path / "out", plots=False)
    assert f"Dose.binheader: missing in {runs[1]}" in caught.value.lines


def test_real_binary_merges_with_itself(tmp_path: Path) -> None:
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run.mkdir()
        for suffix in (".binheader", ".bin"):
            shutil.copy(DOSE.with_suffix(suffix), run / f"Dose{suffix}")
    merge_runs(runs, tmp_path / "out", plots=False)
    one, merged = read_scorer(DOSE).values, read_scorer(tmp_path / "out" / "Dose.binheader").values
    np.testing.assert_allclose(merged["Sum"], 2 * one["Sum"], rtol=RTOL)
    # Identical runs: equal means, so M2 is just twice each run's.
    np.testing.assert_allclose(merged["Second_Moment"], 2 * one["Second_Moment"], rtol=RTOL)
    assert np.all(merged["Histories_with_Scorer_Active"] == 2000)
    assert np.array_equal(merged["Min"], one["Min"]) and np.array_equal(merged["Max"], one["Max"])
