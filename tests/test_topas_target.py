"""The reducer's summary states an adaptive campaign's target as the runner measured it
(issue 20 item 4): the same region, value and verdict, to the printed digit."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from common import campaign as cp
from common.config.goals import Goals
from common.errors import EXIT_OK, EXIT_USAGE
from common.topas import ScorerAccumulator, read_scorer
from common.topas.cli import main
from common.workflow.adaptive import measure

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "water_phantom"


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three runs of the shipped example of unequal sizes, as an adaptive campaign's
    waves make them."""
    root = tmp_path_factory.mktemp("example")
    runs = []
    for seed, histories in ((11, 200000), (12, 200000), (13, 90000)):
        run = root / f"run{seed}"
        run.mkdir()
        subprocess.run([sys.executable, str(EXAMPLE / "pencil_beam.py"),
                        str(EXAMPLE / "water_phantom.txt")], cwd=run, check=True,
                       env={**os.environ, "SIM_SEED": str(seed),
                            "EXAMPLE_HISTORIES": str(histories)}, capture_output=True)
        runs.append(run)
    return runs


def runner_line(runs: list[Path], target: float, region: float) -> str:
    """What the runner prints (common/workflow/convergence.py) for these runs."""
    accumulator = ScorerAccumulator()
    for run in runs:
        accumulator.add(read_scorer(run / "DoseAtPhantom.csv"), run)
    reached = measure(accumulator, region / 100)
    assert reached.relative_error is not None
    met = "met" if reached.relative_error <= target / 100 else "NOT met"
    return (f"uncertainty ({reached.method} method, bins >= {region:g} % of the maximum of "
            f"DoseAtPhantom.csv): {100 * reached.relative_error:.3g} %; target {target:g} "
            f"%: {met}")


@pytest.mark.parametrize("target, region", [(0.8, 50.0), (3.0, 20.0)])
def test_the_summary_states_the_runners_figure(example_runs: list[Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               target: float, region: float) -> None:
    out = tmp_path / "out"
    code = main(["merge", "--no-plots", "--target-scorer", "DoseAtPhantom.csv",
                 "--target-percent", repr(target), "--target-region-percent", repr(region),
                 "--out", str(out), *map(str, example_runs)])
    printed = capsys.readouterr()
    assert code == EXIT_OK, printed.err
    summary = (out / "merge-summary" / "DoseAtPhantom.csv.summary.txt").read_text()
    expected = "Target of the adaptive campaign: " + runner_line(example_runs, target, region)
    assert expected in summary
    assert expected in printed.out


def test_without_a_scorer_name_the_only_scorer_is_the_target(
        example_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["merge", "--no-plots", "--target-percent", "0.8", "--out",
                 str(tmp_path / "out"), *map(str, example_runs)])
    assert code == EXIT_OK
    assert runner_line(example_runs, 0.8, 50.0) in capsys.readouterr().out


def test_a_target_scorer_without_a_target_is_a_usage_error(
        example_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["merge", "--target-scorer", "DoseAtPhantom.csv", "--out",
                 str(tmp_path / "out"), *map(str, example_runs)])
    assert code == EXIT_USAGE
    assert "--target-scorer needs --target-percent" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_merge_options_carry_the_target_to_the_reducer() -> None:
    plain = SimpleNamespace(sim=SimpleNamespace(goals=Goals()))
    assert cp.merge_options(plain, False) == ()  # type: ignore[arg-type]
    assert cp.merge_options(plain, True) == ("--allow-inconsistent",)  # type: ignore[arg-type]
    adaptive = SimpleNamespace(sim=SimpleNamespace(goals=Goals(
        target_percent=0.4, target_scorer="dose/Dose.csv", region_percent=50.0)))
    assert cp.merge_options(adaptive, False) == (  # type: ignore[arg-type]
        "--target-scorer", "dose/Dose.csv", "--target-percent", "0.4",
        "--target-region-percent", "50.0")
    command = cp.reducer_command("builtin:topas", (), cp.merge_options(adaptive, True))
    assert ("merge --allow-inconsistent --target-scorer dose/Dose.csv --target-percent 0.4 "
            "--target-region-percent 50.0 --out") in command
