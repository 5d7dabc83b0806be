"""DICOM RT Dose files of a merged 3-D dose (common/topas/dicom.py), read back with
pydicom and with an independent reader (dicompyler-core) and compared value by value
with the merged scorer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.topas.header import parse_header
from common.topas.merge import SUMMARY_DIR, merge_runs
from common.topas.scorer import read_scorer
from test_topas_merge import ALL_STATS, make_campaign

pydicom = pytest.importorskip("pydicom")

SHAPE = (6, 5, 4)


def dose_header(unit: str = "Gy", widths: tuple[str, str, str] = ("2 mm", "2 mm", "0.5 cm")):
    lines = ["# TOPAS Version: 4.0", "# Parameter File: gen.txt",
             "# Results for scorer: DoseAtPhantom", "# Scored in component: Phantom"]
    lines += [f"# {axis} in {n} bins of {width}" for axis, n, width in zip("XYZ", SHAPE,
                                                                             widths)]
    lines.append(f"# DoseToMedium ( {unit} ) : " + "".join(f"{s}   " for s in ALL_STATS))
    return parse_header(lines)


def merged_campaign(tmp_path: Path, **header_options: object):  # type: ignore[no-untyped-def]
    campaign = make_campaign(tmp_path, dose_header(**header_options), sizes=(300, 200, 250),
                             hit_probability=0.3, name="Dose.csv")
    report = merge_runs(campaign.runs, campaign.out, plots=False)
    merged = read_scorer(campaign.out / "Dose.csv")
    return campaign, report.merged[0], merged


def test_rt_dose_read_back_with_pydicom(tmp_path: Path) -> None:
    campaign, report, merged = merged_campaign(tmp_path)
    dose_path = campaign.out / SUMMARY_DIR / "Dose.csv.dose.dcm"
    assert [campaign.out / p for p in report.dicom] == [
        dose_path, campaign.out / SUMMARY_DIR / "Dose.csv.uncertainty.dcm"]
    ds = pydicom.dcmread(dose_path)
    assert ds.SOPClassUID == pydicom.uid.RTDoseStorage and ds.Modality == "RTDOSE"
    assert (ds.DoseUnits, ds.DoseType, ds.DoseSummationType) == ("GY", "PHYSICAL", "PLAN")
    assert "750 histories in 3 runs" in ds.SeriesDescription
    assert (ds.NumberOfFrames, ds.Rows, ds.Columns) == (4, 5, 6)
    # Voxel (0, 0, 0) centre: X = (0.5 - 3) x 2 mm, Y = (0.5 - 2.5) x 2 mm, Z = -7.5 mm.
    assert [float(v) for v in ds.ImagePositionPatient] == [-5.0, -4.0, -7.5]
    assert [float(v) for v in ds.PixelSpacing] == [2.0, 2.0]
    assert [float(v) for v in ds.GridFrameOffsetVector] == [0.0, 5.0, 10.0, 15.0]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    dose = ds.pixel_array * float(ds.DoseGridScaling)  # (frames = k, rows = j, cols = i)
    expected = np.transpose(merged.grid("Sum"), (2, 1, 0))
    np.testing.assert_allclose(dose, expected, rtol=0, atol=float(ds.DoseGridScaling))
    assert np.max(np.abs(dose / expected.max() - expected / expected.max())) < 1e-9
    error = pydicom.dcmread(campaign.out / SUMMARY_DIR / "Dose.csv.uncertainty.dcm")
    assert (error.DoseType, error.DoseUnits) == ("ERROR", "RELATIVE")
    assert error.FrameOfReferenceUID == ds.FrameOfReferenceUID
    assert error.StudyInstanceUID == ds.StudyInstanceUID
    values = merged.values
    n = merged.histories()
    relative = np.sqrt(values["Variance"] / n) / values["Mean"]
    expected_error = np.transpose(merged.grid("Sum") * 0 + _on_grid(merged, relative),
                                  (2, 1, 0))
    got = error.pixel_array * float(error.DoseGridScaling)
    np.testing.assert_allclose(got, np.nan_to_num(expected_error), rtol=0,
                               atol=float(error.DoseGridScaling))


def test_rt_dose_read_by_dicompyler_core(tmp_path: Path) -> None:
    dose_module = pytest.importorskip("dicompylercore.dose")
    campaign, _, merged = merged_campaign(tmp_path)
    grid = dose_module.DoseGrid(str(campaign.out / SUMMARY_DIR / "Dose.csv.dose.dcm"))
    assert grid.shape == (6, 5, 4)  # x, y, z
    np.testing.assert_allclose(grid.dose_grid, merged.grid("Sum"), rtol=0,
                               atol=float(grid.ds.DoseGridScaling))
    np.testing.assert_allclose(grid.x_axis, (np.arange(6) - 2.5) * 2.0)
    np.testing.assert_allclose(grid.y_axis, (np.arange(5) - 2.0) * 2.0)
    np.testing.assert_allclose(grid.z_axis, (np.arange(4) - 1.5) * 5.0)


def test_repeated_merge_writes_the_same_files(tmp_path: Path) -> None:
    campaign, _, _ = merged_campaign(tmp_path)
    again = tmp_path / "again"
    merge_runs(campaign.runs, again, plots=False)
    for name in ("Dose.csv.dose.dcm", "Dose.csv.uncertainty.dcm"):
        assert (again / SUMMARY_DIR / name).read_bytes() == (
            campaign.out / SUMMARY_DIR / name).read_bytes()


def test_a_dose_in_other_units_gets_no_rt_dose(tmp_path: Path) -> None:
    campaign, merged_file, _ = merged_campaign(tmp_path, unit="MeV")
    assert merged_file.dicom == () and not list(campaign.out.rglob("*.dcm"))


def test_a_cylinder_gets_no_rt_dose(tmp_path: Path) -> None:
    lines = [line.replace("# X in", "# R in").replace("# Y in", "# Phi in")
             for line in dose_header().lines]
    campaign = make_campaign(tmp_path, parse_header(lines), sizes=(50, 60), name="Dose.csv")
    report = merge_runs(campaign.runs, campaign.out, plots=False)
    assert report.merged[0].dicom == () and not list(campaign.out.rglob("*.dcm"))


def _on_grid(merged, rows: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    from common.topas.scorer import on_grid
    return on_grid(merged.header, merged.bin_keys(), rows)


def test_without_pydicom_or_polars_the_merge_goes_on(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # What a reducer node with numpy alone does: merge, and say what it left out.
    import sys
    from common.topas import tables
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import fails
    monkeypatch.setattr(tables, "_polars", None)
    campaign, merged_file, merged = merged_campaign(tmp_path)
    assert merged_file.dicom == () and not list(campaign.out.rglob("*.dcm"))
    summary = (campaign.out / SUMMARY_DIR / "Dose.csv.summary.txt").read_text()
    assert "DICOM RT Dose files skipped: pydicom is not installed on this machine" in summary
    assert merge_runs([campaign.out.parent / "run0"], tmp_path / "one",
                      plots=False).engine == "numpy"
    assert merged.histories() == 750
