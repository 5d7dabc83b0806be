"""Tests of the bundled example simulation, examples/water_phantom/.

The simulation runs through its RUN_SCRIPT in a copy of the folder, with few
histories (EXAMPLE_HISTORIES), using this interpreter (PYTHON).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "water_phantom"
HISTORIES = 50_000
SHAPE = (10, 10, 40)
BEAM_ENERGY = 1.25  # MeV, as in water_phantom.txt
THICKNESS = 20.0  # cm
NIST_MU_1250KEV = 0.06323  # 1/cm, water, NIST table (density 1 g/cm3)
VOXEL_MASS_KG = 1.0 * 1.0 * 0.5 * 1e-3
MEV_TO_JOULE = 1.602176634e-13

HEADER = [
    "# TOPAS Version: 4.0",
    "# Parameter File: water_phantom.txt",
    "# Results for scorer: DoseAtPhantom",
    "# Scored in component: Phantom",
    "# X in 10 bins of 1 cm",
    "# Y in 10 bins of 1 cm",
    "# Z in 40 bins of 0.5 cm",
    "# DoseToMedium ( Gy ) : Sum   Mean   Count_in_Bin   Second_Moment   Variance   "
    "Standard_Deviation   Histories_with_Scorer_Active   ",
]


def run_example(workdir: Path, seed: int | None, histories: int = HISTORIES) -> tuple[str, bytes]:
    """Copy the example to workdir, run its RUN_SCRIPT, return (log, CSV bytes)."""
    folder = workdir / "water_phantom"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("DoseAtPhantom.csv", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "SIM_SEED"}
    env.update(EXAMPLE_HISTORIES=str(histories), PYTHON=sys.executable)
    if seed is not None:
        env["SIM_SEED"] = str(seed)
    done = subprocess.run(["bash", "run_simulation.sh", "3"], cwd=workdir / "water_phantom",
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, (folder / "DoseAtPhantom.csv").read_bytes()


def parse_csv(data: bytes) -> tuple[list[str], np.ndarray]:
    lines = data.decode("ascii").splitlines()
    header = [line for line in lines if line.startswith("#")]
    rows = np.array([[float(v) for v in line.split(", ")] for line in lines if not line.startswith("#")])
    return header, rows


def log_value(log: str, pattern: str) -> re.Match[str]:
    match = re.search(pattern, log)
    assert match, f"{pattern!r} not in log:\n{log}"
    return match


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    return run_example(tmp_path_factory.mktemp("reference"), seed=12345)


@pytest.fixture(scope="module")
def pencil_beam() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pencil_beam", EXAMPLE / "pencil_beam.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pencil_beam"] = module  # dataclasses look their module up here
    # No __pycache__ in the example folder: the campaign tool zips it as is.
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


def test_same_seed_gives_identical_bytes(reference: tuple[str, bytes], tmp_path: Path) -> None:
    _, again = run_example(tmp_path, seed=12345)
    assert again == reference[1]


def test_different_seeds_differ(reference: tuple[str, bytes], tmp_path: Path) -> None:
    _, other = run_example(tmp_path, seed=12346)
    assert other != reference[1]


def test_seed_falls_back_to_parameter_file(tmp_path: Path) -> None:
    log, _ = run_example(tmp_path, seed=None, histories=100)
    assert "Seed: 1 (from Ts/Seed)" in log
    assert "Task index: 3" in log


def test_run_script_is_executable() -> None:
    assert os.access(EXAMPLE / "run_simulation.sh", os.X_OK)


def test_csv_layout(reference: tuple[str, bytes]) -> None:
    data = reference[1]
    header, rows = parse_csv(data)
    assert header == HEADER
    assert data.endswith(b"\n") and b"\r" not in data
    assert rows.shape == (np.prod(SHAPE), 3 + 7)
    # i, j, k loop with k fastest (TOPAS <= 4.1.0).
    expected = np.array([(i, j, k) for i in range(SHAPE[0]) for j in range(SHAPE[1]) for k in range(SHAPE[2])])
    np.testing.assert_array_equal(rows[:, :3], expected)
    first_row = data.decode().splitlines()[len(HEADER)]
    assert re.fullmatch(r"0, 0, 0(, [-+.e0-9]+){7}", first_row)


def test_statistics_are_consistent(reference: tuple[str, bytes]) -> None:
    _, rows = parse_csv(reference[1])
    total, mean, count, m2, variance, sd, n = rows[:, 3:].T
    assert np.all(n == HISTORIES)
    np.testing.assert_allclose(mean, total / n, rtol=1e-12, atol=0)
    np.testing.assert_allclose(variance, m2 / (n - 1), rtol=1e-12, atol=0)
    np.testing.assert_allclose(sd, np.sqrt(variance), rtol=1e-12, atol=0)
    assert np.all(count == np.round(count)) and np.all((0 <= count) & (count <= n))
    assert np.all(total >= 0) and np.all(m2 >= 0)
    assert np.all((total > 0) == (count > 0))
    # Per-history values are >= 0 and at most the max, so M2 <= Sum * max;
    # and a bin with one hit has M2 = x^2 (N-1)/N exactly.
    single = count == 1
    assert single.any()
    np.testing.assert_allclose(m2[single], total[single] ** 2 * (n[single] - 1) / n[single], rtol=1e-9)


def test_energy_is_conserved(reference: tuple[str, bytes]) -> None:
    log, data = reference
    _, rows = parse_csv(data)
    deposited_csv = rows[:, 3].sum() * VOXEL_MASS_KG / MEV_TO_JOULE
    deposited_log = float(log_value(log, r"Energy deposited: (\S+) MeV").group(1))
    escaped_log = float(log_value(log, r"Energy escaped: (\S+) MeV").group(1))
    incident = HISTORIES * BEAM_ENERGY
    assert deposited_csv == pytest.approx(deposited_log, rel=1e-5)
    assert 0 < deposited_csv < incident
    assert deposited_log + escaped_log == pytest.approx(incident, rel=1e-5)


def test_depth_dose_falls_with_depth(reference: tuple[str, bytes]) -> None:
    _, rows = parse_csv(reference[1])
    dose = rows[:, 3].reshape(SHAPE)
    central = dose[4:6, 4:6, :].sum(axis=(0, 1))  # the beam runs between these four columns
    per_2cm = central.reshape(10, 4).sum(axis=1)
    assert np.all(np.diff(per_2cm) < 0), per_2cm
    # Kerma on the axis follows the primary fluence, roughly exp(-mu z),
    # a bit flatter because of scatter: 16 cm deeper is ~2.9x lower here.
    assert 2.0 < per_2cm[0] / per_2cm[-1] < 3.5
    # The beam core gets far more dose than the phantom's edges.
    assert central.sum() > 20 * dose[0, 0, :].sum()


def test_uncollided_primaries_follow_beer_lambert(reference: tuple[str, bytes]) -> None:
    log, _ = reference
    match = log_value(log, r"Uncollided primaries: (\d+) of (\d+)")
    crossed, n = int(match.group(1)), int(match.group(2))
    p = math.exp(-NIST_MU_1250KEV * THICKNESS)
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(crossed - n * p) < 4 * sigma


def test_scorer_matches_brute_force(pencil_beam: ModuleType) -> None:
    setup = pencil_beam.build_setup(str(EXAMPLE / "water_phantom.txt"), {"EXAMPLE_HISTORIES": "300"})
    rng = np.random.default_rng(7)
    sizes = [120, 180]
    batches = [pencil_beam.transport_batch(rng, n, setup) for n in sizes]
    scorer = pencil_beam.DoseScorer(setup.n_voxels)
    for batch, n in zip(batches, sizes):
        scorer.add_batch(batch, n)

    dense = np.zeros((sum(sizes), setup.n_voxels))  # histories x voxels, fine when tiny
    offset = 0
    for batch, n in zip(batches, sizes):
        np.add.at(dense, (batch.history + offset, batch.voxel), batch.energy)
        offset += n
    assert scorer.histories == dense.shape[0]
    np.testing.assert_allclose(scorer.total, dense.sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(scorer.count, np.count_nonzero(dense, axis=0))
    m2 = ((dense - dense.mean(axis=0)) ** 2).sum(axis=0)
    np.testing.assert_allclose(scorer.m2, m2, rtol=1e-9, atol=1e-12 * m2.max())


@pytest.mark.parametrize("energy", [0.1, 1.25, 10.0])
def test_compton_sampling_follows_klein_nishina(pencil_beam: ModuleType, energy: float) -> None:
    rng = np.random.default_rng(3)
    scattered, cos_theta = pencil_beam.sample_compton(rng, np.full(200_000, energy))
    k = energy / pencil_beam.ELECTRON_MASS
    np.testing.assert_allclose(scattered, energy / (1 + k * (1 - cos_theta)), rtol=1e-12)

    # Mean cos(theta) from the differential KN cross section, by quadrature.
    mu = np.linspace(-1, 1, 200_001)
    ratio = 1 / (1 + k * (1 - mu))
    dsigma = ratio**2 * (ratio + 1 / ratio - (1 - mu**2))
    expected = np.trapezoid(mu * dsigma, mu) / np.trapezoid(dsigma, mu)
    stderr = cos_theta.std() / math.sqrt(cos_theta.size)
    assert abs(cos_theta.mean() - expected) < 4 * stderr


def test_rotation_keeps_unit_length_and_angle(pencil_beam: ModuleType) -> None:
    rng = np.random.default_rng(5)
    directions = pencil_beam.isotropic_directions(rng, 1000)
    directions[:2] = [[0, 0, 1], [0, 0, -1]]  # the formula's special case
    cos_theta = 2 * rng.random(1000) - 1
    turned = pencil_beam.rotate(directions, cos_theta, 2 * np.pi * rng.random(1000))
    np.testing.assert_allclose(np.linalg.norm(turned, axis=1), 1, rtol=1e-12)
    np.testing.assert_allclose(np.sum(turned * directions, axis=1), cos_theta, atol=1e-9)


def test_shipped_run_is_small_enough() -> None:
    params = (EXAMPLE / "water_phantom.txt").read_text()
    histories = int(re.search(r"i:So/Beam/NumberOfHistoriesInRun\s*=\s*(\d+)", params).group(1))
    assert 1_000_000 <= histories <= 5_000_000  # a few seconds per task
    # Rows hold 7 numbers of <= 23 characters: the CSV stays under 1 MB.
    assert np.prod(SHAPE) * (len("9, 9, 39") + 7 * (2 + 23)) + 600 < 1_000_000
