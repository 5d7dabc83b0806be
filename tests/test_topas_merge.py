"""Merging TOPAS scorer CSVs of independent runs (common/topas/combine.py, merge.py, cli.py).

Generated tests draw per-history values with numpy, split the histories into runs of
different sizes, write each run's TOPAS statistics as a CSV, merge them with the command
line, and compare with the statistics of all histories computed directly.
"""
from __future__ import annotations

import shutil
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from common.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ToolError
from common.topas.cli import main
from common.topas.header import ScorerHeader, parse_header
from common.topas.merge import merge_runs
from common.topas.scorer import (I_FASTEST, K_FASTEST, Scorer, indices_for_keys,
                                 read_scorer, sort_keys, write_scorer)

DATA = Path(__file__).parent / "data" / "topas"
NBIO = DATA / "topas-nbio__TOPAS-nBio-regression"
HECTOR = DATA / "HectorMiras__MyTOPASPythonScripts"
DIXIN = DATA / "dixinchen__neutron-dosimetry"

ALL_STATS = ("Sum", "Mean", "Histories_with_Scorer_Active", "Count_in_Bin", "Second_Moment",
             "Variance", "Standard_Deviation", "Min", "Max")
UNHIT_MIN, UNHIT_MAX = 9e99, -9e99
RUN_SIZES = (50, 173, 9, 300, 61)
SHAPE = (4, 3, 2)
RTOL = 1e-12


# ------------------------------------------------------------------ generating runs

def header_for(stats: tuple[str, ...], shape: tuple[int, int, int] | None = SHAPE,
               extra: tuple[str, ...] = (), sparse: bool = False,
               name: str = "Dose") -> ScorerHeader:
    lines = ["# TOPAS Version: 4.0", "# Parameter File: gen.txt",
             f"# Results for scorer: {name}", "# Scored in component: Box"]
    if shape is not None:
        lines += [f"# {axis} in {n} bin{'s' if n > 1 else ' '} of 1 cm"
                  for axis, n in zip("XYZ", shape)]
    lines.append("# DoseToMedium ( Gy ) : " + "".join(f"{s}   " for s in stats))
    lines += list(extra)
    if sparse:
        lines.append("# Showing only rows that have sum > 0 Gy")
    return parse_header(lines)


def draw_histories(rng: np.random.Generator, n: int, grid: tuple[int, ...],
                   hit_probability: float) -> np.ndarray:
    """Per-history scored values: mostly zero, like a real scorer."""
    hits = rng.random((n,) + grid) < hit_probability
    return np.where(hits, rng.lognormal(0.0, 1.0, (n,) + grid), 0.0)


def topas_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """What TOPAS reports for these histories (axis 0), per bin."""
    n = x.shape[0]
    total = x.sum(axis=0)
    mean = total / n
    count = np.count_nonzero(x, axis=0).astype(float)
    m2 = ((x - mean) ** 2).sum(axis=0)
    variance = m2 / (n - 1)
    hit = count > 0
    return {"Sum": total, "Mean": mean, "Histories_with_Scorer_Active": np.full(total.shape, n),
            "Count_in_Bin": count, "Second_Moment": m2, "Variance": variance,
            "Standard_Deviation": np.sqrt(variance),
            "Min": np.where(hit, np.where(x != 0, x, np.inf).min(axis=0), UNHIT_MIN),
            "Max": np.where(hit, np.where(x != 0, x, -np.inf).max(axis=0), UNHIT_MAX)}


def write_run(path: Path, header: ScorerHeader, x: np.ndarray, order: str = K_FASTEST) -> None:
    """Write the TOPAS output of histories x (n, bins[, extra bins]) as a CSV."""
    stats = topas_statistics(x)
    keys = np.arange(header.n_bins)
    if header.sparse is not None:
        keys = keys[_row_sum(stats["Sum"]) > 0]
    keys = sort_keys(header, keys, order)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_scorer(path, header, {s: stats[s][keys] for s in header.statistics},
                 indices_for_keys(header, keys))


def _row_sum(total: np.ndarray) -> np.ndarray:
    return total.reshape(total.shape[0], -1).sum(axis=1)


@dataclass(frozen=True)
class Campaign:
    runs: list[Path]
    out: Path
    everything: np.ndarray  # every history of every run


def make_campaign(tmp_path: Path, header: ScorerHeader, seed: int = 1,
                  sizes: tuple[int, ...] = RUN_SIZES, orders: tuple[str, ...] = (K_FASTEST,),
                  hit_probability: float = 0.15, name: str = "dose/Dose.csv") -> Campaign:
    rng = np.random.default_rng(seed)
    grid = (header.n_bins,) + ((header.n_extra_bins,) if header.n_extra_bins else ())
    parts = [draw_histories(rng, n, grid, hit_probability) for n in sizes]
    runs = [tmp_path / f"run{r}" for r in range(len(sizes))]
    for r, (run, x) in enumerate(zip(runs, parts)):
        write_run(run / name, header, x, orders[r % len(orders)])
    return Campaign(runs=runs, out=tmp_path / "merged", everything=np.concatenate(parts))


def merge_with_cli(campaign: Campaign, capsys: pytest.CaptureFixture[str],
                   *options: str) -> str:
    # Plots cost ~0.3 s each; test_topas_summary.py covers them.
    code = main(["merge", "--no-plots", *options, "--out", str(campaign.out)]
                + [str(run) for run in campaign.runs])
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    return captured.out


def by_bin(scorer: Scorer) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Bin numbers in ascending order and every statistic in that order."""
    keys = scorer.bin_keys()
    order = np.argsort(keys)
    return keys[order], {name: values[order] for name, values in scorer.values.items()}


def assert_matches_truth(merged: Scorer, everything: np.ndarray) -> None:
    keys, values = by_bin(merged)
    truth = topas_statistics(everything)
    for name in merged.header.statistics:
        np.testing.assert_allclose(values[name], truth[name][keys], rtol=RTOL, atol=0,
                                   err_msg=name)


# ------------------------------------------------------------------ generated tests

@pytest.mark.parametrize("first_order", [K_FASTEST, I_FASTEST])
def test_divided_scorer_all_statistics(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       first_order: str) -> None:
    header = header_for(ALL_STATS)
    other = I_FASTEST if first_order == K_FASTEST else K_FASTEST
    campaign = make_campaign(tmp_path, header, orders=(first_order, other))
    out = merge_with_cli(campaign, capsys)
    merged = read_scorer(campaign.out / "dose" / "Dose.csv")
    assert_matches_truth(merged, campaign.everything)
    assert merged.header.lines == header.lines
    assert merged.histories() == sum(RUN_SIZES)
    expected_keys = sort_keys(header, np.arange(header.n_bins), first_order)
    assert np.array_equal(merged.bin_keys(), expected_keys)  # the first run's row order
    assert "dose/Dose.csv" in out and f"{sum(RUN_SIZES)} histories" in out


def test_generated_data_has_unhit_bins_and_zeros(tmp_path: Path) -> None:
    # Guards the other tests: sentinels and Count_in_Bin must actually be exercised.
    header = header_for(ALL_STATS)
    campaign = make_campaign(tmp_path, header)
    run = read_scorer(campaign.runs[2] / "dose" / "Dose.csv")  # 9 histories
    assert np.any(run.values["Min"] == UNHIT_MIN) and np.any(run.values["Max"] == UNHIT_MAX)
    counts = topas_statistics(campaign.everything)["Count_in_Bin"]
    assert np.all(counts < len(campaign.everything) / 2)


def test_undivided_scorer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = header_for(ALL_STATS, shape=None)
    campaign = make_campaign(tmp_path, header, name="Edep.csv")
    merge_with_cli(campaign, capsys)
    merged = read_scorer(campaign.out / "Edep.csv")
    assert merged.rows == 1 and merged.indices.shape == (1, 0)
    assert_matches_truth(merged, campaign.everything)


def test_sum_only_scorer_just_sums(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = header_for(("Sum",))
    campaign = make_campaign(tmp_path, header)
    out = merge_with_cli(campaign, capsys)
    assert_matches_truth(read_scorer(campaign.out / "dose" / "Dose.csv"), campaign.everything)
    assert "dose/Dose.csv: scorer Dose, 5 runs, 24 rows, Sum" in out
    assert "Histories: not reported by the files" in out


def test_energy_binned_scorer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ("# Binned by incident track energy in 4 bins of 1 MeV from 0 MeV to 4 MeV",
             "# First bin is underflow, next to last bin is overflow, last bin is for case "
             "of no incident track.")
    header = header_for(ALL_STATS, extra=extra)
    assert header.n_extra_bins == 7
    campaign = make_campaign(tmp_path, header, orders=(I_FASTEST, K_FASTEST))
    merge_with_cli(campaign, capsys)
    merged = read_scorer(campaign.out / "dose" / "Dose.csv")
    assert merged.values["Sum"].shape == (header.n_bins, 7)
    assert_matches_truth(merged, campaign.everything)


def test_sparse_rows_missing_from_some_runs(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    header = header_for(ALL_STATS, sparse=True)
    campaign = make_campaign(tmp_path, header, sizes=(120, 173, 60, 300), hit_probability=0.002)
    row_counts = [read_scorer(run / "dose" / "Dose.csv").rows for run in campaign.runs]
    hit_anywhere = np.flatnonzero(campaign.everything.sum(axis=0) > 0)
    assert min(row_counts) > 0 and len(set(row_counts)) > 1
    assert 0 < len(hit_anywhere) < header.n_bins
    merge_with_cli(campaign, capsys)
    merged = read_scorer(campaign.out / "dose" / "Dose.csv")
    assert np.array_equal(np.sort(merged.bin_keys()), hit_anywhere)
    assert_matches_truth(merged, campaign.everything)


def test_sparse_run_without_rows(tmp_path: Path) -> None:
    # With Sum only an empty run adds nothing; with Histories its N is unknown: refuse.
    for stats, problem in ((("Sum",), None), (ALL_STATS, "number of histories is unknown")):
        header = header_for(stats, sparse=True)
        campaign = make_campaign(tmp_path / stats[-1], header, sizes=(50, 10))
        write_run(campaign.runs[1] / "dose" / "Dose.csv", header, np.zeros((10, 24)))
        if problem is None:
            merge_runs(campaign.runs, campaign.out, plots=False)
            assert_matches_truth(read_scorer(campaign.out / "dose" / "Dose.csv"),
                                 campaign.everything[:50])
        else:
            with pytest.raises(ToolError, match=problem):
                merge_runs(campaign.runs, campaign.out, plots=False)


@pytest.mark.parametrize("stats", [
    ("Mean", "Standard_Deviation", "Histories_with_Scorer_Active"),
    ("Histories_with_Scorer_Active", "Variance", "Sum"),
    ("Second_Moment", "Mean", "Histories_with_Scorer_Active"),
    ("Standard_Deviation", "Count_in_Bin", "Histories_with_Scorer_Active", "Mean", "Max"),
    ("Count_in_Bin", "Max", "Min", "Sum"),
])
def test_any_subset_and_order_of_statistics(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            stats: tuple[str, ...]) -> None:
    header = header_for(stats)
    campaign = make_campaign(tmp_path, header)
    merge_with_cli(campaign, capsys)
    merged = read_scorer(campaign.out / "dose" / "Dose.csv")
    assert merged.header.statistics == stats
    assert_matches_truth(merged, campaign.everything)


def test_second_moment_is_not_a_plain_sum(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Small runs: their means differ, so the N_r (Mean_r - Mean)^2 term matters.
    header = header_for(ALL_STATS)
    campaign = make_campaign(tmp_path, header, sizes=(4, 11, 25, 60))
    merge_with_cli(campaign, capsys)
    runs = [by_bin(read_scorer(run / "dose" / "Dose.csv"))[1] for run in campaign.runs]
    truth = topas_statistics(campaign.everything)
    n = len(campaign.everything)
    hit = truth["Count_in_Bin"] > 1
    summed_m2 = sum(run["Second_Moment"] for run in runs)
    # A reducer reading Second_Moment as a raw sum of squares (sum x^2):
    as_squares_variance = (summed_m2 / n - truth["Mean"] ** 2) * n / (n - 1)
    merged = by_bin(read_scorer(campaign.out / "dose" / "Dose.csv"))[1]

    def worst_error(values: np.ndarray, exact: np.ndarray) -> float:
        return float(np.max(np.abs(values[hit] / exact[hit] - 1)))

    assert worst_error(summed_m2, truth["Second_Moment"]) > 1e-2
    assert worst_error(as_squares_variance, truth["Variance"]) > 1e-2
    assert worst_error(merged["Second_Moment"], truth["Second_Moment"]) < RTOL
    assert worst_error(merged["Variance"], truth["Variance"]) < RTOL


def test_bins_outside_rt_structure_stay_minus_one(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    header = header_for(ALL_STATS)
    campaign = make_campaign(tmp_path, header)
    for run in campaign.runs:
        path = run / "dose" / "Dose.csv"
        scorer = read_scorer(path)
        outside = scorer.bin_keys() == 5
        values = {name: np.where(outside, -1.0, array) if name != ALL_STATS[2] else array
                  for name, array in scorer.values.items()}
        write_scorer(path, header, values, scorer.indices)
    merge_with_cli(campaign, capsys)
    keys, merged = by_bin(read_scorer(campaign.out / "dose" / "Dose.csv"))
    for name in ALL_STATS:
        expected = sum(RUN_SIZES) if name == ALL_STATS[2] else -1.0
        assert merged[name][5] == expected, name
    assert merged["Sum"][4] > 0


# ------------------------------------------------------------------ real TOPAS files

def _copy_runs(tmp_path: Path, files: dict[str, list[Path]]) -> list[Path]:
    """Run folders holding, under each name, that file's version of the run."""
    runs = [tmp_path / f"run{r}" for r in range(len(next(iter(files.values()))))]
    for name, sources in files.items():
        for run, source in zip(runs, sources):
            run.mkdir(exist_ok=True)
            shutil.copyfile(source, run / name)
    return runs


def test_topas_nbio_five_seeds_sum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def seeds(name: str) -> list[Path]:
        return [NBIO / f"LET__run__2024Feb23__mainOpt2__{r}__{name}" for r in range(5)]

    files = {name: seeds(name) for name in ("energyDeposit_Run_0000.csv",
                                            "fluence_Run_0000.csv", "mainOpt2.txt")}
    runs = _copy_runs(tmp_path, files)
    code = main(["merge", "--out", str(tmp_path / "out")] + [str(run) for run in runs])
    assert code == EXIT_OK, capsys.readouterr().err
    for name in ("energyDeposit_Run_0000.csv", "fluence_Run_0000.csv"):
        inputs = [read_scorer(path).values["Sum"][0] for path in files[name]]
        merged = read_scorer(tmp_path / "out" / name)
        assert merged.values["Sum"][0] == pytest.approx(sum(inputs), rel=RTOL)
        assert merged.header == read_scorer(files[name][0]).header
    assert not (tmp_path / "out" / "mainOpt2.txt").exists()
    assert merged.values["Sum"][0] == pytest.approx(6701308.375, rel=RTOL)  # fluence


def test_energy_to_cell_pair_full_statistics(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    sources = [HECTOR / "example_files__EnergyToCell.csv",
               HECTOR / "example_files__EnergyToCell_chem.csv"]
    runs = _copy_runs(tmp_path, {"EnergyToCell.csv": sources})
    code = main(["merge", "--out", str(tmp_path / "out")] + [str(run) for run in runs])
    assert code == EXIT_OK, capsys.readouterr().err
    a, b = ({k: float(v[0]) for k, v in read_scorer(p).values.items()} for p in sources)
    m = {k: float(v[0]) for k, v in read_scorer(tmp_path / "out" / "EnergyToCell.csv")
         .values.items()}
    n = 2 * 81186
    assert m["Histories_with_Scorer_Active"] == n
    assert m["Count_in_Bin"] == 29 + 33
    assert m["Sum"] == pytest.approx(a["Sum"] + b["Sum"], rel=RTOL)
    assert m["Mean"] == pytest.approx(m["Sum"] / n, rel=RTOL)
    mean = m["Mean"]
    m2 = (a["Second_Moment"] + b["Second_Moment"]
          + 81186 * (a["Mean"] - mean) ** 2 + 81186 * (b["Mean"] - mean) ** 2)
    assert m["Second_Moment"] == pytest.approx(m2, rel=RTOL)
    assert m["Variance"] == pytest.approx(m["Second_Moment"] / (n - 1), rel=RTOL)
    assert m["Standard_Deviation"] == pytest.approx(np.sqrt(m["Variance"]), rel=RTOL)


def test_mean_without_histories_cannot_be_merged(tmp_path: Path) -> None:
    source = DIXIN / "Feb__Feb-19__DoseNeutronPerSourceNeutron.csv"
    runs = _copy_runs(tmp_path, {"dose.csv": [source, source]})
    with pytest.raises(ToolError, match="does not report Histories_with_Scorer_Active; "
                                        "give it with --histories N"):
        merge_runs(runs, tmp_path / "out", plots=False)


# ------------------------------------------------------------------ errors and folders

@pytest.mark.parametrize("changed, part", [
    (dict(name="Other"), "scorer name"),
    (dict(shape=(4, 3, 3)), "binning"),
    (dict(stats=ALL_STATS[:-1]), "statistics"),
])
def test_mismatched_header_names_both_files(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            changed: dict, part: str) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS))
    odd = header_for(changed.get("stats", ALL_STATS), shape=changed.get("shape", SHAPE),
                     name=changed.get("name", "Dose"))
    x = draw_histories(np.random.default_rng(5), 20, (odd.n_bins,), 0.3)
    write_run(campaign.runs[2] / "dose" / "Dose.csv", odd, x)
    code = main(["merge", "--out", str(campaign.out)] + [str(run) for run in campaign.runs])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert str(campaign.runs[2] / "dose" / "Dose.csv") in err
    assert str(campaign.runs[0] / "dose" / "Dose.csv") in err
    assert f"different {part}" in err


def test_file_missing_from_a_run_is_named(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS))
    (campaign.runs[1] / "dose" / "Dose.csv").unlink()
    code = main(["merge", "--out", str(campaign.out)] + [str(run) for run in campaign.runs])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert f"dose/Dose.csv: missing in {campaign.runs[1]}" in err
    assert str(campaign.runs[0]) not in err.split("missing in")[1]
    assert not campaign.out.exists()


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS))
    path = campaign.runs[3] / "dose" / "Dose.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-5]))
    expected = r"run3.*: it has rows for 19 of the 24 bins .*truncated file"
    with pytest.raises(ToolError, match=expected):
        merge_runs(campaign.runs, campaign.out, plots=False)


def test_emptied_copy_of_a_scorer_fails_by_name(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS))
    emptied = campaign.runs[0] / "dose" / "Dose.csv"
    emptied.write_text("")
    with pytest.raises(ToolError, match=f"{emptied}: not a TOPAS scorer output"):
        merge_runs(campaign.runs, campaign.out, plots=False)


def test_non_scorer_csv_is_skipped_and_reported(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    campaign = make_campaign(tmp_path, header_for(("Sum",)))
    (campaign.runs[0] / "notes.csv").write_text("seed, time\n1, 2\n")
    report = merge_runs(campaign.runs, campaign.out, plots=False)
    assert [f.path for f in report.merged] == [Path("dose/Dose.csv")]
    assert [(f.path, f.reason) for f in report.skipped] == [(Path("notes.csv"),
                                                             "no '#' header lines")]
    assert report.merged[0].runs == len(RUN_SIZES) and report.merged[0].histories is None
    out = merge_with_cli(campaign, capsys)
    assert "notes.csv: no '#' header lines" in out


def test_folder_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    campaign = make_campaign(tmp_path, header_for(("Sum",)))
    run0, run1 = (str(run) for run in campaign.runs[:2])
    for argv in (["merge", "--out", run0, run0, run1],
                 ["merge", "--out", str(campaign.runs[0] / "merged"), run0, run1],
                 ["merge", "--out", str(campaign.out), run0, run0],
                 ["merge", "--out", str(campaign.out), run0, str(tmp_path / "absent")],
                 ["merge", run0, run1],
                 ["merge", "--out", str(campaign.out)],
                 ["split"]):
        assert main(argv) == EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not campaign.out.exists()


def test_nothing_to_merge_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run.mkdir()
    assert main(["merge", "--out", str(tmp_path / "out")] + [str(r) for r in runs]) == 1
    assert "no TOPAS output (scorer or phase space) found" in capsys.readouterr().err


def test_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["merge", "--help"]) == EXIT_OK
    assert "--out OUTDIR" in capsys.readouterr().out


# ------------------------------------------------------------------ more shapes and options

def test_time_binned_scorer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ("# Binned by time in 3 bins of 10 ns from 0 ns to 30 ns",
             "# First bin is underflow, last bin is overflow.")
    header = header_for(ALL_STATS, extra=extra)
    assert header.n_extra_bins == 5
    campaign = make_campaign(tmp_path, header, orders=(K_FASTEST, I_FASTEST))
    merge_with_cli(campaign, capsys)
    merged = read_scorer(campaign.out / "dose" / "Dose.csv")
    assert merged.values["Mean"].shape == (24, 5)
    assert_matches_truth(merged, campaign.everything)


def test_legacy_header_merges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = DIXIN / "Feb__DoseAtMLC.csv"  # TOPAS 3.7: "# Results for scorer DoseAtMLC"
    runs = _copy_runs(tmp_path, {"DoseAtMLC.csv": [source] * 3})
    code = main(["merge", "--no-plots", "--out", str(tmp_path / "out")] + [str(r) for r in runs])
    assert code == EXIT_OK, capsys.readouterr().err
    merged = read_scorer(tmp_path / "out" / "DoseAtMLC.csv")
    np.testing.assert_allclose(merged.values["Sum"], 3 * read_scorer(source).values["Sum"],
                               rtol=RTOL)
    assert merged.header.lines == read_scorer(source).header.lines


def test_mean_and_spread_without_histories_need_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = header_for(("Mean", "Standard_Deviation", "Count_in_Bin"))
    campaign = make_campaign(tmp_path, header, sizes=(120, 120, 120))
    code = main(["merge", "--no-plots", "--out", str(campaign.out)]
                + [str(r) for r in campaign.runs])
    assert code == EXIT_FAILED
    assert "give it with --histories N (histories per run)" in capsys.readouterr().err
    merge_with_cli(campaign, capsys, "--histories", "120")
    assert_matches_truth(read_scorer(campaign.out / "dose" / "Dose.csv"), campaign.everything)


def test_sum_only_with_histories_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    campaign = make_campaign(tmp_path, header_for(("Sum",)), sizes=(80, 80))
    out = merge_with_cli(campaign, capsys, "--histories", "80")
    assert "dose/Dose.csv: scorer Dose, 2 runs, 160 histories" in out
    assert "Maximum mean per history" in out
    assert_matches_truth(read_scorer(campaign.out / "dose" / "Dose.csv"), campaign.everything)


def test_bad_option_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    campaign = make_campaign(tmp_path, header_for(("Sum",)))
    for option in (["--histories", "0"], ["--workers", "0"], ["--histories", "x"]):
        code = main(["merge", *option, "--out", str(campaign.out)]
                    + [str(r) for r in campaign.runs])
        assert code == EXIT_USAGE, option
        assert capsys.readouterr().err.startswith("error: ")
    assert not campaign.out.exists()


def _merged_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_workers_give_the_same_bits(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS, sparse=True),
                             sizes=(30, 41, 52, 63, 74, 85, 96, 7, 18), hit_probability=0.05)
    outputs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"out{workers}"
        merge_runs(campaign.runs, out, plots=False, workers=workers)
        outputs.append(_merged_bytes(out))
        assert_matches_truth(read_scorer(out / "dose" / "Dose.csv"), campaign.everything)
    assert outputs[0] == outputs[1] == outputs[2]


def test_a_bad_run_read_by_a_worker_is_named(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, header_for(ALL_STATS), sizes=(10,) * 9)
    bad = campaign.runs[6] / "dose" / "Dose.csv"
    bad.write_text(bad.read_text().replace(", 10, ", ", 1O, ", 1))  # Histories, row 1
    with pytest.raises(ToolError, match=f"{bad}: unreadable number '1O' in data row 1"):
        merge_runs(campaign.runs, campaign.out, plots=False, workers=2)


def test_memory_does_not_grow_with_runs(tmp_path: Path) -> None:
    # Holding every run would take 40 runs' arrays; streaming keeps the peak of 10 runs,
    # but for the consistency test's ledger: two float32 per run at each candidate.
    header = header_for(ALL_STATS, shape=(20, 20, 10))
    rng = np.random.default_rng(8)
    runs = []
    for r in range(40):
        run = tmp_path / f"run{r}"
        write_run(run / "Dose.csv", header, draw_histories(rng, 12, (header.n_bins,), 0.1))
        runs.append(run)
    one_run = header.n_bins * (3 + len(ALL_STATS)) * 8
    merge_runs(runs[:2], tmp_path / "imports", plots=False)  # not the first merge's imports
    peaks = []
    for count in (10, 40):
        tracemalloc.start()
        try:
            merge_runs(runs[:count], tmp_path / f"out{count}", plots=False, workers=1)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    # a small grid: every bin is a candidate, two float32 each (and a transient copy)
    ledger = 1.5 * 30 * header.n_bins * 2 * 4
    assert peaks[1] < peaks[0] + one_run + ledger, [peak / one_run for peak in peaks]


@pytest.mark.parametrize("cpus, workers", [(1, 2), (2, 3), (4, 5), (64, 8)])
def test_default_workers_one_reader_per_cpu_beside_the_folder(monkeypatch: pytest.MonkeyPatch,
                                                              cpus: int, workers: int) -> None:
    import os

    from common.topas import streams
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert streams.default_workers() == workers
