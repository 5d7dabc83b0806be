"""Inputs that used to be merged silently into a wrong result (issue 12): each is now
refused or named. Cut files, NaN and infinities, runs with 0 histories, re-merged merged
outputs, and the running merge other features build on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.errors import EXIT_FAILED, ToolError
from common.topas import ScorerAccumulator, read_scorer, write_binary_scorer
from common.topas.cli import main
from common.topas.merge import SUMMARY_DIR, merge_runs
from test_topas_merge import (ALL_STATS, RTOL, UNHIT_MAX, UNHIT_MIN, assert_matches_truth, draw_histories,
                              header_for, make_campaign, topas_statistics, write_run)


def test_csv_cut_inside_its_last_number_is_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS))
    cut = campaign.runs[2] / "dose" / "Dose.csv"
    text = cut.read_text()
    cut.write_text(text[:-4])  # inside the last row's Max: still a number, a wrong one
    code = main(["merge", "--no-plots", "--out", str(campaign.out)]
                + [str(run) for run in campaign.runs])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert err.startswith(f"error: {cut}: the file is cut: its last row has no end of line")
    assert len(err.splitlines()) == 1
    assert not (campaign.out / "dose" / "Dose.csv").exists()


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_nan_or_inf_in_a_csv_is_refused_naming_file_and_bin(tmp_path: Path,
                                                            bad: str) -> None:
    header = header_for(ALL_STATS)
    campaign = make_campaign(tmp_path, header)
    path = campaign.runs[3] / "dose" / "Dose.csv"
    scorer = read_scorer(path)
    values = dict(scorer.values)
    values["Variance"] = values["Variance"].copy()
    row = int(np.flatnonzero(scorer.bin_keys() == 17)[0])  # bin (2, 2, 1)
    values["Variance"][row] = float(bad)
    from common.topas import write_scorer
    write_scorer(path, header, values, scorer.indices)
    with pytest.raises(ToolError, match=rf"{path}: Variance is {bad} in bin \(i, j, k\) = "
                                        r"\(2, 2, 1\); TOPAS writes no such value"):
        merge_runs(campaign.runs, campaign.out, plots=False)


def test_nan_in_a_binary_scorer_is_refused_naming_file_and_bin(tmp_path: Path) -> None:
    extra = ("# Binned by pre-step energy in 2 bins of 1 MeV from 0 MeV to 2 MeV",
             "# First bin is underflow, last bin is overflow.")
    header = header_for(("Sum", "Histories_with_Scorer_Active"), extra=extra)
    rng = np.random.default_rng(1)
    runs = []
    for r in range(3):
        stats = topas_statistics(draw_histories(rng, 20, (header.n_bins, 4), 0.3))
        if r == 1:
            stats["Sum"][7, 2] = np.nan  # bin 7 = (1, 0, 1), energy bin 2
        run = tmp_path / f"run{r}"
        run.mkdir()
        write_binary_scorer(run / "E.binheader", header,
                            {name: stats[name] for name in header.statistics})
        runs.append(run)
    with pytest.raises(ToolError, match=r"run1/E.binheader: Sum is nan in bin \(i, j, k\) "
                                        r"= \(1, 0, 1\), energy/time bin 2"):
        merge_runs(runs, tmp_path / "out", plots=False)


def test_run_with_zero_histories_is_left_out_and_named(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    header = header_for(ALL_STATS)
    campaign = make_campaign(tmp_path, header, sizes=(50, 60, 70, 80), hit_probability=0.5)
    empty = tmp_path / "run_empty" / "dose" / "Dose.csv"
    values = {name: np.zeros(header.n_bins) for name in ALL_STATS}
    values["Min"], values["Max"] = np.full(24, UNHIT_MIN), np.full(24, UNHIT_MAX)
    empty.parent.mkdir(parents=True)
    from common.topas import write_scorer
    from common.topas.scorer import indices_for_keys
    write_scorer(empty, header, values, indices_for_keys(header, np.arange(24)))
    runs = campaign.runs[:2] + [empty.parents[1]] + campaign.runs[2:]
    code = main(["merge", "--no-plots", "--out", str(campaign.out)] + [str(r) for r in runs])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{empty}: 0 histories; left out" in out
    assert "scorer Dose, 4 runs, 260 histories" in out
    assert_matches_truth(read_scorer(campaign.out / "dose" / "Dose.csv"), campaign.everything)
    # The batch standard error is that of the four runs (counting five made it 13 % small).
    sums = np.array([read_scorer(r / "dose" / "Dose.csv").values["Sum"]
                     for r in campaign.runs])
    n_r = np.array([50.0, 60, 70, 80])
    pooled = sums.sum(axis=0) / n_r.sum()
    expected = np.sqrt((n_r[:, None] * (sums / n_r[:, None] - pooled) ** 2).sum(axis=0)
                       / (3 * n_r.sum()))
    table = np.loadtxt(campaign.out / SUMMARY_DIR / "dose" / "Dose.csv.batch.csv",
                       delimiter=",", comments="#")
    np.testing.assert_allclose(table[:, 4], expected, rtol=1e-10)


def test_merged_sum_only_outputs_remerge_with_their_histories(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = header_for(("Sum",))
    campaign = make_campaign(tmp_path, header, sizes=(80,) * 6, hit_probability=0.5)
    halves = [tmp_path / "half0", tmp_path / "half1"]
    for half, runs in zip(halves, (campaign.runs[:3], campaign.runs[3:])):
        merge_runs(runs, half, histories=80, plots=False)
        record = json.loads((half / "dose" / "Dose.csv.merge.json").read_text())
        assert (record["runs"], record["histories"]) == (3, 240)
    both = tmp_path / "both"
    merge_runs(halves, both, histories=80, plots=False)
    direct = tmp_path / "direct"
    merge_runs(campaign.runs, direct, histories=80, plots=False)
    assert_matches_truth(read_scorer(both / "dose" / "Dose.csv"), campaign.everything)
    summary = (both / SUMMARY_DIR / "dose" / "Dose.csv.summary.txt").read_text()
    assert "Histories: 480 in total over 6 runs" in summary  # the runs the halves stand for
    # Weighted by the 240 histories each stands for, the mean per history is right
    # (weighted as single 80-history runs it was three times too large).
    by_halves = np.loadtxt(both / SUMMARY_DIR / "dose" / "Dose.csv.batch.csv",
                           delimiter=",", comments="#")
    by_runs = np.loadtxt(direct / SUMMARY_DIR / "dose" / "Dose.csv.batch.csv",
                         delimiter=",", comments="#")
    np.testing.assert_allclose(by_halves[:, 3], by_runs[:, 3], rtol=RTOL)
    assert json.loads((both / "dose" / "Dose.csv.merge.json").read_text())["runs"] == 6
    # The merged TOPAS file itself is untouched by the record: other readers still read it.
    assert (both / "dose" / "Dose.csv").read_text().startswith(
        "".join(line + "\n" for line in header.lines))


def test_remerging_without_records_weights_by_the_flag(tmp_path: Path) -> None:
    # Guards the test above: without the records, --histories 80 weights each half as
    # one 80-history run and the mean per history comes out three times too large.
    header = header_for(("Sum",))
    campaign = make_campaign(tmp_path, header, sizes=(80,) * 6, hit_probability=0.5)
    halves = [tmp_path / "half0", tmp_path / "half1"]
    for half, runs in zip(halves, (campaign.runs[:3], campaign.runs[3:])):
        merge_runs(runs, half, histories=80, plots=False)
        (half / "dose" / "Dose.csv.merge.json").unlink()
    merge_runs(halves, tmp_path / "both", histories=80, plots=False)
    table = np.loadtxt(tmp_path / "both" / SUMMARY_DIR / "dose" / "Dose.csv.batch.csv",
                       delimiter=",", comments="#")
    truth = topas_statistics(campaign.everything)["Mean"]
    np.testing.assert_allclose(table[:, 3], 3 * truth, rtol=RTOL)


def test_running_merge_one_run_at_a_time(tmp_path: Path) -> None:
    header = header_for(ALL_STATS)
    campaign = make_campaign(tmp_path, header, sizes=(200, 300, 250), hit_probability=0.4)
    accumulator = ScorerAccumulator()
    errors = []
    for run in campaign.runs:
        accumulator.add(read_scorer(run / "dose" / "Dose.csv"), run)
        errors.append(accumulator.relative_standard_error())
    truth = topas_statistics(campaign.everything)
    n = len(campaign.everything)
    expected = np.sqrt(truth["Variance"] / n) / truth["Mean"]
    np.testing.assert_allclose(errors[-1], expected, rtol=1e-10)
    assert np.nanmedian(errors[0]) > np.nanmedian(errors[-1])  # it shrinks as runs come in
    assert_matches_truth(accumulator.result(), campaign.everything)
    sums = ScorerAccumulator()
    sum_header = header_for(("Sum",))
    for r, run in enumerate(campaign.runs):  # no spread: the batch error between runs
        write_run(run / "s.csv", sum_header, campaign.everything[r * 10:(r + 1) * 10] + 1)
        sums.add(read_scorer(run / "s.csv"), run)
    values = np.array([read_scorer(run / "s.csv").values["Sum"] for run in campaign.runs])
    batch = values.std(axis=0, ddof=1) / np.sqrt(3) / values.mean(axis=0)
    np.testing.assert_allclose(sums.relative_standard_error(), batch, rtol=1e-10)
