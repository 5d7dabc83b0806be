"""Reading and writing TOPAS scorer CSVs (common/topas/header.py, common/topas/scorer.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import ToolError
from common.topas.header import NotAScorerFile, parse_header, read_header
from common.topas.scorer import (I_FASTEST, K_FASTEST, indices_for_keys, read_scorer,
                                 row_order, sort_keys, write_scorer)

DATA = Path(__file__).parent / "data" / "topas"
CSV_FIXTURES = sorted(DATA.rglob("*.csv"))
HECTOR = DATA / "HectorMiras__MyTOPASPythonScripts"
DIXIN = DATA / "dixinchen__neutron-dosimetry"
CHALL = DATA / "davidchall__topas2numpy"


def test_fixtures_are_present() -> None:
    assert len(CSV_FIXTURES) == 21
    assert (DATA / "SOURCES.md").is_file()


def test_full_statistics_header() -> None:
    header = read_scorer(HECTOR / "example_files__EnergyToCell.csv").header
    assert header.topas_version == "4.0"
    assert header.parameter_file == "Phase2_Cell.txt"
    assert header.scorer_name == "EnergyToCell"
    assert header.filters == ('Filtered by: OnlyIncludeIfInMaterial = 1 "G4_WATER"',)
    assert header.component == "Scored in component: Cell"
    assert header.binning == () and header.shape is None and header.n_index_columns == 0
    assert (header.quantity, header.unit) == ("EnergyDeposit", "MeV")
    assert header.statistics == ("Sum", "Mean", "Count_in_Bin", "Second_Moment", "Variance",
                                 "Standard_Deviation", "Histories_with_Scorer_Active")
    assert header.n_extra_bins == 0 and header.sparse is None


def test_full_statistics_values_are_consistent() -> None:
    scorer = read_scorer(HECTOR / "example_files__EnergyToCell.csv")
    v = {name: float(array[0]) for name, array in scorer.values.items()}
    n = scorer.histories()
    assert n == 81186 and v["Count_in_Bin"] == 29
    assert v["Mean"] == pytest.approx(v["Sum"] / n, rel=1e-12)
    assert v["Variance"] == pytest.approx(v["Second_Moment"] / (n - 1), rel=1e-12)
    assert v["Standard_Deviation"] == pytest.approx(np.sqrt(v["Variance"]), rel=1e-12)


def test_legacy_header_without_colon_dose_csv() -> None:
    scorer = read_scorer(CHALL / "tests__data__Dose.csv")
    header = scorer.header
    assert header.scorer_name == "Dose"
    assert header.topas_version == "2.0_expanded"
    assert header.component == "Scored in component: ScoringBox"
    assert header.binning == ("X in 1 bin  of 10.2 cm", "Y in 1 bin  of 10.2 cm",
                              "Z in 300 bins of 0.1 cm")
    assert header.shape == (1, 1, 300)
    assert (header.quantity, header.unit, header.statistics) == ("DoseToWaterBinned", "Gy",
                                                                 ("Sum",))
    assert scorer.rows == 300
    assert np.array_equal(scorer.indices[:, 2], np.arange(300))
    assert scorer.values["Sum"][0] == 8.45737773147448e-08
    assert scorer.values["Sum"][-1] == 3.767468975679478e-12
    assert scorer.histories() is None


def test_legacy_header_dose_at_mlc() -> None:
    scorer = read_scorer(DIXIN / "Feb__DoseAtMLC.csv")
    assert scorer.header.scorer_name == "DoseAtMLC"
    assert scorer.header.topas_version == "3.7"
    assert scorer.header.shape == (1, 1, 60)
    assert scorer.rows == 60
    assert scorer.values["Sum"][23] == 4.274686560279406e-08
    assert np.all(scorer.values["Sum"][26:] == 0)


def test_surface_scorer_without_unit() -> None:
    scorer = read_scorer(CHALL / "tests__data__SurfaceTracks.csv")
    assert scorer.header.component == "Scored on surface: Phantom/ZPlusSurface"
    assert (scorer.header.quantity, scorer.header.unit) == ("SurfaceTrackCount", None)
    assert scorer.header.shape == (10, 10, 1)
    row = np.flatnonzero((scorer.indices == [7, 4, 0]).all(axis=1))
    assert scorer.values["Sum"][row].tolist() == [531.0]


def test_binary_headers_share_the_grammar() -> None:
    fixed = read_header(DIXIN / "Feb__Feb-19__FluenceSpectra_FixedBin.binheader")
    assert fixed.n_extra_bins == 100 + 3  # underflow, overflow, no incident track
    assert fixed.binary_file == "FluenceSpectra_FixedBin.bin"
    assert len(fixed.extra_binning) == 2
    dose = read_header(CHALL / "tests__data__Dose.binheader")
    assert dose.scorer_name == "Dose" and dose.shape == (1, 1, 40)
    assert len(dose.statistics) == 9


@pytest.mark.parametrize("path", CSV_FIXTURES, ids=lambda p: p.name)
def test_round_trip_is_exact(path: Path, tmp_path: Path) -> None:
    first = read_scorer(path)
    copy = tmp_path / path.name
    write_scorer(copy, first.header, first.values, first.indices)
    again = read_scorer(copy)
    assert again.header == first.header
    assert np.array_equal(again.indices, first.indices)
    for name, values in first.values.items():
        assert np.array_equal(again.values[name], values), name
    # The header comes back byte for byte, the values in their shortest exact text
    # (TOPAS's own 16 digits do not always read back to the same double).
    header_bytes = "".join(line + "\n" for line in first.header.lines).encode()
    assert copy.read_bytes().startswith(header_bytes)
    rows = [line for line in copy.read_text().splitlines() if not line.startswith("#")]
    assert rows and all(",," not in row and ",  " not in row for row in rows)


def _lines(*extra: str, stats: str = "Sum   Mean   ") -> list[str]:
    return ["# TOPAS Version: 4.1.1", "# Parameter File: p.txt", "# Results for scorer: S",
            "# Scored in component: Box", "# X in 3 bins of 1 cm", "# Y in 2 bins of 1 cm",
            "# Z in 2 bins of 1 cm", f"# Energy ( MeV ) : {stats}", *extra]


def test_energy_binned_values_interleave_statistic_fastest(tmp_path: Path) -> None:
    lines = _lines("# Binned by pre-step energy in 2 bins of 1 MeV from 0 MeV to 2 MeV",
                   "# First bin is underflow, last bin is overflow.")
    header = parse_header(lines)
    assert header.n_extra_bins == 4 and header.n_value_columns == 8
    path = tmp_path / "e.csv"
    row = ", ".join(str(v) for v in range(8))
    path.write_text("\n".join(lines) + f"\n0, 0, 0, {row}\n")
    scorer = read_scorer(path)
    assert scorer.values["Sum"].tolist() == [[0, 2, 4, 6]]
    assert scorer.values["Mean"].tolist() == [[1, 3, 5, 7]]


def test_rows_are_keyed_by_bin_not_line(tmp_path: Path) -> None:
    header = parse_header(_lines())
    keys = np.arange(header.n_bins)
    i_first = sort_keys(header, keys, I_FASTEST)
    indices = indices_for_keys(header, i_first)
    assert indices[:4].tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]]
    path = tmp_path / "s.csv"
    write_scorer(path, header, {"Sum": i_first * 10.0, "Mean": i_first * 1.0}, indices)
    scorer = read_scorer(path)
    assert np.array_equal(scorer.values["Sum"], scorer.bin_keys() * 10.0)
    assert row_order(header, scorer.bin_keys()) == I_FASTEST
    assert row_order(header, keys) == K_FASTEST


def test_not_a_scorer_file(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a, b\n1, 2\n")
    with pytest.raises(NotAScorerFile, match="no '#' header lines"):
        read_scorer(path)
    path.write_text("# just a comment\n1, 2\n")
    with pytest.raises(NotAScorerFile, match="Results for scorer"):
        read_scorer(path)


def test_wrong_column_count_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(_lines()) + "\n0, 0, 0, 1.5\n")
    with pytest.raises(ToolError, match=r"bad.csv: rows have 4 columns, the header implies 5"):
        read_scorer(path)


def test_bin_outside_the_header_grid_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(_lines()) + "\n3, 0, 0, 1, 2\n")
    with pytest.raises(ToolError, match=r"bin \(3, 0, 0\) is outside the 3x2x2 bins"):
        read_scorer(path)


def test_unreadable_number_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(_lines()) + "\n0, 0, 0, 1, oops\n")
    with pytest.raises(ToolError, match="bad.csv: unreadable number 'oops' in data row 1"):
        read_scorer(path)
