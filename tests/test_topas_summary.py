"""What a merge writes beside its results (common/topas/summary.py, plots.py, and the
batch file of merge.py): summaries checked against numbers computed here directly, batch
(run-to-run) errors against the runs' own means, plots present or honestly absent."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from common.topas import write_binary_scorer
from common.topas.cli import main
from common.topas.merge import SUMMARY_DIR, merge_runs
from common.topas.scorer import read_scorer
from test_topas_merge import (ALL_STATS, Campaign, header_for, make_campaign,
                              topas_statistics)

RTOL = 1e-12
ENERGY = ("# Binned by incident track energy in 5 bins of 2 MeV from 0 MeV to 10 MeV",
          "# First bin is underflow, next to last bin is overflow, last bin is for case of "
          "no incident track.")


def read_batch(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", comments="#", ndmin=2)


def per_run_sums(campaign: Campaign) -> tuple[np.ndarray, np.ndarray]:
    """Each run's Sum per bin (runs, bins[, extra]) and its histories."""
    sums, sizes = [], []
    for run in campaign.runs:
        scorer = read_scorer(run / "dose" / "Dose.csv")
        grid = scorer.grid("Sum")
        sums.append(grid.reshape((scorer.header.n_bins,) + grid.shape[3:]))
        sizes.append(scorer.histories() or 0)
    return np.array(sums), np.array(sizes, dtype=float)


def test_batch_errors_from_the_runs_means(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS), sizes=(50, 173, 9, 300))
    merge_runs(campaign.runs, campaign.out, plots=False)
    table = read_batch(campaign.out / SUMMARY_DIR / "dose" / "Dose.csv.batch.csv")
    sums, n_r = per_run_sums(campaign)
    means = sums / n_r[:, None]
    pooled = sums.sum(axis=0) / n_r.sum()
    expected = np.sqrt((n_r[:, None] * (means - pooled) ** 2).sum(axis=0)
                       / ((len(n_r) - 1) * n_r.sum()))
    keys = np.ravel_multi_index(tuple(table[:, :3].astype(int).T), (4, 3, 2))
    np.testing.assert_allclose(table[:, 3], pooled[keys], rtol=RTOL)
    np.testing.assert_allclose(table[:, 4], expected[keys], rtol=1e-10)


def test_batch_without_histories_uses_the_sums(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, header_for(("Sum",)), sizes=(100, 100, 100))
    merge_runs(campaign.runs, campaign.out, plots=False)
    path = campaign.out / SUMMARY_DIR / "dose" / "Dose.csv.batch.csv"
    assert "# Estimate: Sum per run (runs assumed to have equal histories)" in path.read_text()
    table = read_batch(path)
    sums = np.array([read_scorer(r / "dose" / "Dose.csv").values["Sum"] for r in campaign.runs])
    np.testing.assert_allclose(table[:, 3], sums.mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(table[:, 4], sums.std(axis=0, ddof=1) / np.sqrt(3), rtol=1e-10)


def test_summary_numbers(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS), hit_probability=0.4)
    report = merge_runs(campaign.runs, campaign.out, plots=False)
    text = (campaign.out / SUMMARY_DIR / "dose" / "Dose.csv.summary.txt").read_text()
    assert text.strip() == report.merged[0].summary_text
    truth = topas_statistics(campaign.everything)
    n = len(campaign.everything)
    mean = truth["Mean"]
    peak = mean.max()
    bright = mean > 0.1 * peak
    relative = np.sqrt(truth["Variance"] / n) / mean
    worst = np.where(bright, relative, -1).argmax()
    i, j, k = np.unravel_index(worst, (4, 3, 2))
    assert f"Histories: {n} in total over 5 runs" in text
    assert "Total (sum over bins" not in text  # a sum of doses is no dose
    top = mean.argmax()
    ti, tj, tk = np.unravel_index(top, (4, 3, 2))
    centre = f"X = {ti - 1.5:g} cm, Y = {tj - 1:g} cm, Z = {tk - 0.5:g} cm"
    assert (f"Maximum mean per history: {peak:.6g} +- {peak * relative[top]:.2g} "
            f"({relative[top]:.2%}) Gy in bin (i, j, k) = ({ti}, {tj}, {tk}), centre at "
            f"{centre}") in text
    high = mean >= 0.5 * peak
    high_mean = mean[high].mean()
    high_error = np.sqrt(np.sum((mean[high] * relative[high]) ** 2)) / high.sum()
    assert (f"Mean over the {high.sum()} bins at or above 50% of the maximum: "
            f"{high_mean:.6g} +- {high_error:.2g} ({high_error / high_mean:.2%}) Gy") in text
    assert "(uncertainties: 1 standard error, history by history)" in text
    assert f"Bins above 10% of the maximum: {bright.sum()} of 24" in text
    assert (f"Largest relative standard error of the mean (history by history) among them: "
            f"{relative[worst]:.3%} in bin (i, j, k) = ({i}, {j}, {k})") in text
    assert "from the spread between runs (batch)" in text
    assert f"Batch statistics per bin: {SUMMARY_DIR}/dose/Dose.csv.batch.csv" in text


def test_plots_for_each_geometry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    cases = {"profile": header_for(ALL_STATS, shape=(1, 1, 12)),
             "slice": header_for(ALL_STATS, shape=(6, 5, 3)),
             "spectrum": header_for(("Sum", "Histories_with_Scorer_Active"), shape=None,
                                    extra=ENERGY),
             "single": header_for(("Sum",), shape=None)}
    for name, header in cases.items():
        campaign = make_campaign(tmp_path / name, header, sizes=(30, 40))
        assert main(["merge", "--out", str(campaign.out)] + [str(r) for r in campaign.runs]) == 0
        png = campaign.out / SUMMARY_DIR / "dose" / "Dose.csv.png"
        out = capsys.readouterr().out
        if name == "single":
            assert not png.exists() and "Plot:" not in out
        else:
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
            assert f"Plot: {SUMMARY_DIR}/dose/Dose.csv.png" in out


def test_no_plots_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS))
    assert main(["merge", "--no-plots", "--out", str(campaign.out)]
                + [str(r) for r in campaign.runs]) == 0
    assert not list(campaign.out.rglob("*.png"))
    assert (campaign.out / SUMMARY_DIR / "dose" / "Dose.csv.summary.txt").exists()


def test_without_matplotlib_the_merge_goes_on(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    campaign = make_campaign(tmp_path, header_for(ALL_STATS))
    assert main(["merge", "--out", str(campaign.out)] + [str(r) for r in campaign.runs]) == 0
    out = capsys.readouterr().out
    assert "Note: plots skipped: matplotlib is not installed on this machine" in out
    assert not list(campaign.out.rglob("*.png"))
    assert (campaign.out / "dose" / "Dose.csv").exists()


def test_summary_files_stay_out_of_the_merged_tree(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS), name="a/b/Dose.csv")
    merge_runs(campaign.runs, campaign.out, plots=False)
    files = sorted(p.relative_to(campaign.out).as_posix() for p in campaign.out.rglob("*")
                   if p.is_file())
    assert [f for f in files if not f.startswith(f"{SUMMARY_DIR}/a/b/Dose.csv.")] == [
        "a/b/Dose.csv", "a/b/Dose.csv.merge.json", "a/b/Dose.csv.merge.runs.npz"]
    assert f"{SUMMARY_DIR}/a/b/Dose.csv.summary.txt" in files


def test_scorers_sharing_a_stem_get_their_own_summaries(tmp_path: Path) -> None:
    # Dose.csv and Dose.binheader in one folder used to write the same Dose_summary.txt.
    header = header_for(ALL_STATS)
    csv = make_campaign(tmp_path, header, name="Dose.csv", seed=1)
    binary_header = header_for(ALL_STATS, name="DoseBinary")
    rng = np.random.default_rng(3)
    for run in csv.runs:
        stats = topas_statistics(rng.lognormal(0, 1, (20, 24)))
        write_binary_scorer(run / "Dose.binheader", binary_header,
                            {name: stats[name] for name in ALL_STATS})
    report = merge_runs(csv.runs, csv.out, plots=False)
    summaries = {merged.path.name: merged.summary for merged in report.merged}
    assert set(summaries) == {"Dose.csv", "Dose.binheader"}
    assert len(set(summaries.values())) == 2
    texts = {name: (csv.out / path).read_text() for name, path in summaries.items()}
    assert "Scorer Dose (Dose.csv)" in texts["Dose.csv"]
    assert "Scorer DoseBinary (Dose.binheader)" in texts["Dose.binheader"]
    batches = {merged.batch for merged in report.merged}
    assert len(batches) == 2 and all((csv.out / path).exists() for path in batches)
