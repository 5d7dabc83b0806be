"""The consistency test on the campaigns physicists produce (issue 20): runs of unequal
size, a small first run, merges of merges, 2 and 200 runs, skewed deposits, correlated
voxels, energy bins; and the shipped example's 3 M + 300 k pair. Fixed seeds; the
generated campaigns come from bench/consistency_model.py (exact compound sums of a
per-history model with rare large deposits), the same model the README's table uses."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.consistency_model import Shape, campaign_runs, check, header_lines
from common.errors import EXIT_FAILED, EXIT_OK
from common.topas.cli import main
from common.topas.header import parse_header
from common.topas.scorer import all_indices, write_scorer

DATA = Path(__file__).parent / "data" / "example_pair"

HONEST = [
    Shape("10 x 1e5", (100000,) * 10),
    Shape("2 x 1e5", (100000,) * 2),
    Shape("10 runs of 33k-100k", tuple(range(33000, 100001, 7400))),
    Shape("9 x 1e5 + 3.3e4", (100000,) * 9 + (33000,)),
    Shape("9 x 1e5 + 1e4", (100000,) * 9 + (10000,)),
    Shape("1e5 and 1e4", (100000, 10000)),
    Shape("4 x 1e6 + 1e3", (1000000,) * 4 + (1000,)),
    Shape("1e6 and 9e6 (two merged outputs)", (1000000, 9000000)),
    Shape("1e3 first, then 9 x 3e6", (1000,) + (3000000,) * 9),
    Shape("ratio 1000: 3 x 1e7 + 3 x 1e4", (10 ** 7,) * 3 + (10 ** 4,) * 3),
    Shape("correlated voxels, 10 x 1e5", (100000,) * 10, correlated=True),
    Shape("energy bins, 5 x 1e5 + 5 x 2e4", (100000,) * 5 + (20000,) * 5, energy_bins=4),
]


@pytest.mark.parametrize("shape", HONEST, ids=[shape.name for shape in HONEST])
def test_honest_campaigns_pass(shape: Shape) -> None:
    for seed in range(3):
        report = check(shape, 100 + seed)
        assert report.tested, report.reason
        assert not report.inconsistent, report.lines()


def test_a_small_run_is_tested_less_and_said_so() -> None:
    report = check(Shape("", (1000000,) * 4 + (1000,)), 7)
    small = report.runs[4]
    assert not small.tested and not small.inconsistent
    assert "run4: not tested: its 1000 histories know 0 bins to 20%" in "\n".join(
        report.lines())
    medium = check(Shape("", (100000,) * 9 + (3000,)), 7).runs
    assert 0 < medium[9].bins < medium[0].bins  # tested on fewer bins, not skipped


def test_two_hundred_runs_pass() -> None:
    report = check(Shape("200 x 2e4", (20000,) * 200), 3)
    assert report.tested and not report.inconsistent, report.lines()
    assert sum(run.tested for run in report.runs) == 200


@pytest.mark.parametrize("shape", [
    Shape("3 % in one of ten", (100000,) * 10, biased=3, bias=1.03),
    Shape("3 % with another run small", (10000,) + (100000,) * 9, biased=3, bias=1.03),
    Shape("-3 %, correlated", (100000,) * 10, biased=6, bias=0.97, correlated=True),
    Shape("3 % beside a first run of 1e3", (1000,) + (3000000,) * 9, biased=3, bias=1.03),
], ids=lambda shape: shape.name)
def test_a_biased_run_is_named(shape: Shape) -> None:
    for seed in range(3):
        report = check(shape, 200 + seed)
        assert [run.source for run in report.inconsistent] == [f"run{shape.biased}"], \
            report.lines()


def write_campaign(folder: Path, shape: Shape, seed: int) -> list[Path]:
    header = parse_header(header_lines(shape.energy_bins))
    runs = []
    for r, (_, stats) in enumerate(campaign_runs(shape, seed)):
        run = folder / f"run{r}"
        run.mkdir(parents=True)
        write_scorer(run / "Dose.csv", header, stats, all_indices(header))
        runs.append(run)
    return runs


def merge(runs: list[Path], out: Path, capsys: pytest.CaptureFixture[str],
          *options: str) -> tuple[int, str, str]:
    code = main(["merge", "--no-plots", *options, "--out", str(out), *map(str, runs)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_small_first_run_and_a_biased_run_is_refused_naming_the_biased_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: bins were chosen from the first run only; with 1,000 histories it knew none,
    # the test was skipped and the biased run merged without a word.
    runs = write_campaign(tmp_path, Shape("", (1000,) + (3000000,) * 9, biased=3,
                                          bias=1.03), 5)
    code, _, err = merge(runs, tmp_path / "out", capsys)
    assert code == EXIT_FAILED
    named = [line for line in err.splitlines() if "mean z =" in line]
    assert len(named) == 1 and str(runs[3] / "Dose.csv") in named[0], err
    assert not (tmp_path / "out" / "Dose.csv").exists()


def test_the_examples_3m_and_300k_pair_merges(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Two honest runs of the shipped example (3 M and 300 k histories, other seeds): the
    # merge before refused this pair as INCONSISTENT (mean z -4.08 / +4.08).
    runs = []
    for name in ("run_3M_seed101.csv", "run_300k_seed202.csv"):
        run = tmp_path / name.split(".")[0]
        run.mkdir()
        (run / "DoseAtPhantom.csv").write_bytes((DATA / name).read_bytes())
        runs.append(run)
    code, out, err = merge(runs, tmp_path / "out", capsys)
    assert code == EXIT_OK, err
    assert "INCONSISTENT" not in out
    assert "Consistency of the runs" in out


def test_a_merge_of_merges_tests_every_original_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Two halves merged apart, then merged: the final merge still sees the ten runs, and
    # names the biased one by its own path, as one flat merge would.
    shape = Shape("", (100000,) * 10, biased=7, bias=1.03)
    runs = write_campaign(tmp_path / "runs", shape, 9)
    halves = [tmp_path / "half0", tmp_path / "half1"]
    for half, part in zip(halves, (runs[:4], runs[4:])):
        code, _, err = merge(part, half, capsys, "--partial")
        assert code == EXIT_OK, err
        assert (half / "Dose.csv.merge.runs.npz").exists()
        assert not (half / "merge-summary").exists()
    code, _, err = merge(halves, tmp_path / "final", capsys)
    assert code == EXIT_FAILED
    named = [line for line in err.splitlines() if "mean z =" in line]
    assert len(named) == 1 and str(runs[7] / "Dose.csv") in named[0], err
    code, out, err = merge(halves, tmp_path / "final", capsys, "--allow-inconsistent")
    assert code == EXIT_OK, err
    assert "1 of 10 INCONSISTENT" in out


def test_a_tree_equals_the_flat_merge(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    # 64 runs, fan-in 8, two levels: the same numbers within 1e-12 and the same test.
    shape = Shape("", tuple(20000 + 900 * r for r in range(64)))
    runs = write_campaign(tmp_path / "runs", shape, 4)
    code, flat_out, err = merge(runs, tmp_path / "flat", capsys)
    assert code == EXIT_OK, err
    partials = []
    for leaf in range(8):
        partial = tmp_path / f"partial{leaf}"
        code, _, err = merge(runs[8 * leaf:8 * leaf + 8], partial, capsys, "--partial")
        assert code == EXIT_OK, err
        partials.append(partial)
    code, tree_out, err = merge(partials, tmp_path / "tree", capsys)
    assert code == EXIT_OK, err
    from common.topas.scorer import read_scorer
    flat, tree = (read_scorer(tmp_path / name / "Dose.csv") for name in ("flat", "tree"))
    for name, values in flat.values.items():
        assert np.allclose(tree.values[name], values, rtol=1e-12, atol=0), name
    consistency = [line for line in flat_out.splitlines() if "Consistency" in line]
    assert consistency and consistency == [line for line in tree_out.splitlines()
                                           if "Consistency" in line]
    assert "all 64 tested consistent" in consistency[0]
    # the summary counts the runs the partial merges stand for, not the partials
    assert "Merged 1 file(s) from 8 folders standing for 64 runs" in tree_out
    assert "merged from 64 runs" in tree_out and "over 64 runs" in tree_out
    assert "merged from 64 runs" in flat_out and "Merged 1 file(s) from 64 runs" in flat_out
