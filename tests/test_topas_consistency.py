"""Runs tested against each other (common/topas/consistency.py): a run with a systematic
difference stops the merge, named with its statistic, unless --allow-inconsistent; a
consistent campaign passes; the same seed twice is named."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.errors import EXIT_FAILED, EXIT_OK
from common.topas.cli import main
from common.topas.combine import ScorerAccumulator
from common.topas.merge import SUMMARY_DIR
from common.topas.scorer import read_scorer
from test_topas_merge import ALL_STATS, draw_histories, header_for, write_run

SHAPE = (10, 10, 4)
RUNS = 10
HISTORIES = 1500


def campaign(tmp_path: Path, bias: dict[int, float] | None = None, seed: int = 7,
             stats: tuple[str, ...] = ALL_STATS) -> list[Path]:
    """RUNS runs of one model; run r's scored values multiplied by bias[r]."""
    header = header_for(stats, shape=SHAPE)
    rng = np.random.default_rng(seed)
    runs = []
    for r in range(RUNS):
        x = draw_histories(rng, HISTORIES, (header.n_bins,), 0.3) * (bias or {}).get(r, 1.0)
        write_run(tmp_path / f"run{r}" / "Dose.csv", header, x)
        runs.append(tmp_path / f"run{r}")
    return runs


def merge(runs: list[Path], out: Path, capsys: pytest.CaptureFixture[str],
          *options: str) -> tuple[int, str, str]:
    code = main(["merge", "--no-plots", *options, "--out", str(out)] + [str(r) for r in runs])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_consistent_campaign_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = campaign(tmp_path)
    code, out, err = merge(runs, tmp_path / "out", capsys)
    assert code == EXIT_OK, err
    assert f"all {RUNS} tested consistent" in out
    assert "over up to 400 bins" in out  # every bin is known well enough to be tested


def test_biased_run_stops_the_merge_named_with_its_statistic(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = campaign(tmp_path, bias={6: 1.05})
    out_dir = tmp_path / "out"
    code, _, err = merge(runs, out_dir, capsys)
    assert code == EXIT_FAILED
    assert "Dose.csv: some runs disagree with the others" in err
    assert "--allow-inconsistent" in err
    named = [line for line in err.splitlines() if "mean z =" in line]
    assert len(named) == 1 and str(runs[6] / "Dose.csv") in named[0], err
    mean_z = float(named[0].split("mean z = ")[1].split()[0])
    assert mean_z > 5
    assert not (out_dir / "Dose.csv").exists()
    code, out, err = merge(runs, out_dir, capsys, "--allow-inconsistent")
    assert code == EXIT_OK, err
    summary = (out_dir / SUMMARY_DIR / "Dose.csv.summary.txt").read_text()
    assert f"1 of {RUNS} INCONSISTENT" in summary and str(runs[6] / "Dose.csv") in summary
    assert "INCONSISTENT" in out
    record = json.loads((out_dir / "Dose.csv.merge.json").read_text())
    assert record["inconsistent_runs"] == [str(runs[6] / "Dose.csv")]


@pytest.mark.parametrize("bias", [0.97, 1.03])
def test_a_three_percent_bias_of_either_sign_is_found(tmp_path: Path, bias: float) -> None:
    runs = campaign(tmp_path, bias={2: bias}, seed=11)
    report = check(runs)
    assert [Path(run.source).parent.name for run in report.inconsistent] == ["run2"]
    assert np.sign(report.runs[2].mean_z) == np.sign(bias - 1)


def test_changed_shape_without_bias_is_found_by_chi2(tmp_path: Path) -> None:
    # Half the bins 8 % up, half 8 % down: no net bias, but not the same dose.
    header = header_for(ALL_STATS, shape=SHAPE)
    rng = np.random.default_rng(5)
    tilt = np.where(np.arange(header.n_bins) % 2 == 0, 1.08, 0.92)
    runs = []
    for r in range(RUNS):
        x = draw_histories(rng, HISTORIES, (header.n_bins,), 0.3) * (tilt if r == 4 else 1)
        write_run(tmp_path / f"run{r}" / "Dose.csv", header, x)
        runs.append(tmp_path / f"run{r}")
    report = check(runs)
    assert [Path(run.source).parent.name for run in report.inconsistent] == ["run4"]
    assert report.runs[4].chi2_per_bin > 2  # chi2/bin of a consistent run is about 1
    assert max(run.chi2_per_bin for run in report.runs if not run.inconsistent) < 1.3


def test_same_seed_twice_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = campaign(tmp_path)
    shutil.copyfile(runs[1] / "Dose.csv", runs[8] / "Dose.csv")
    code, out, _ = merge(runs, tmp_path / "out", capsys)
    assert code == EXIT_OK
    warning = (f"Identical runs (the same seed twice?): {runs[1] / 'Dose.csv'} and "
               f"{runs[8] / 'Dose.csv'}")
    assert warning in out
    assert warning in (tmp_path / "out" / SUMMARY_DIR / "Dose.csv.summary.txt").read_text()


def test_without_a_spread_statistic_it_says_why_not(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    runs = campaign(tmp_path, bias={3: 1.2}, stats=("Sum", "Histories_with_Scorer_Active"))
    code, _, err = merge(runs, tmp_path / "out", capsys)
    assert code == EXIT_OK, err
    summary = (tmp_path / "out" / SUMMARY_DIR / "Dose.csv.summary.txt").read_text()
    assert ("Consistency of the runs not tested: the files hold no Second_Moment, Variance "
            "or Standard_Deviation") in summary


def test_false_alarms_are_rare(tmp_path: Path) -> None:
    # 40 consistent campaigns of 10 runs: at ALPHA = 1e-3 none should be flagged. Their
    # smallest p-values lie between 3e-4 and 1e-3, so a test without the correction for
    # the number of runs (threshold 5e-3 per run instead of 5e-5) flags 14 of them.
    header = header_for(("Sum", "Histories_with_Scorer_Active", "Second_Moment"),
                        shape=(6, 6, 4))
    flagged = 0
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        accumulator = ScorerAccumulator()
        for r in range(RUNS):
            path = tmp_path / f"c{seed}r{r}.csv"
            write_run(path, header, draw_histories(rng, 800, (header.n_bins,), 0.5))
            accumulator.add(read_scorer(path), path)
        report = accumulator.consistency()
        assert report.tested and report.bins > 0.9 * header.n_bins
        flagged += bool(report.inconsistent)
    assert flagged == 0


def check(runs: list[Path]):  # type: ignore[no-untyped-def]
    accumulator = ScorerAccumulator()
    for run in runs:
        path = run / "Dose.csv"
        accumulator.add(read_scorer(path), path)
    return accumulator.consistency()
