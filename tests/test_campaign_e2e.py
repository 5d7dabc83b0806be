"""Whole campaigns through the real scripts, as subprocesses with no terminal (like CI)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.topas import read_scorer
from conftest import REPO, Campaign, stop_local_pools, write_json

RUNNER = str(REPO / "batch_simulation_runner.py")
REDUCER = str(REPO / "batch_data_reducer.py")


def run(script: str, args: list[str], env: dict[str, str], cwd: Path,
        timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)


@pytest.fixture
def example(tmp_path: Path):
    """The shipped example campaign, copied with its configs into a tmp folder."""
    root = tmp_path / "clone"
    shutil.copytree(REPO / "examples" / "water_phantom", root / "examples" / "water_phantom",
                    ignore=shutil.ignore_patterns("nodes_output", "__pycache__", "*.csv"))
    shutil.copy(REPO / "simconfig.json", root / "simconfig.json")
    app = json.loads((REPO / "appconfig.json").read_text())
    write_json(root / "appconfig.json", app)
    yield root
    stop_local_pools(root / ".localbatch")


def test_example_campaign_end_to_end(example, script_env, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # the configs work from any working directory
    elsewhere.mkdir()
    simconfig = str(example / "simconfig.json")
    runner = run(RUNNER, [simconfig, "--no-input"], script_env, elsewhere)
    assert runner.returncode == 0, runner.stderr
    assert "4 of 4 task(s) succeeded" in runner.stdout
    assert "Delete storage container water-phantom-example? The reducer" in runner.stderr
    results = example / "examples" / "water_phantom" / "nodes_output"
    runs = sorted(p.name for p in results.iterdir())
    assert runs == ["run1", "run2", "run3", "run4"]
    seeds = {(results / r / "stdout.txt").read_text().split("SIM_SEED: ")[1].split()[0] for r in runs}
    assert len(seeds) == 4

    # The "Next:" line runs as printed: this interpreter, outside any activated venv.
    [next_command] = [line[len("Next: "):] for line in runner.stdout.splitlines()
                      if line.startswith("Next: ")]
    assert "batch_data_reducer.py" in next_command and not next_command.startswith("python ")
    bare = {k: v for k, v in script_env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    bare["PATH"] = "/usr/bin:/bin"
    reducer = subprocess.run(next_command + " --no-input", shell=True, cwd=elsewhere, env=bare,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert reducer.returncode == 0, reducer.stderr
    merged = read_scorer(results / "results" / "DoseAtPhantom.csv")
    parts = [read_scorer(results / r / "DoseAtPhantom.csv") for r in runs]
    n = sum(float(p.histories()) for p in parts)
    assert n == 4 * 20000
    np.testing.assert_allclose(merged.values["Sum"], sum(p.values["Sum"] for p in parts), rtol=1e-12)
    np.testing.assert_allclose(merged.values["Mean"], merged.values["Sum"] / n, rtol=1e-12)
    assert not (example / ".localbatch" / "pools").exists() or not any((example / ".localbatch" / "pools").iterdir())
    zip_names = _zip_names(example)
    assert not any(name.startswith("nodes_output/") for name in zip_names)


def _zip_names(example: Path) -> list[str]:
    import zipfile
    blob = example / ".localbatch" / "storage" / "water-phantom-example" / "SIM_DIR.zip"
    return zipfile.ZipFile(blob).namelist()


def test_second_upload_of_an_unchanged_folder_sends_nothing(campaign, script_env):
    first = run(RUNNER, [str(campaign.simconfig), "--no-input"], script_env, campaign.root)
    second = run(RUNNER, [str(campaign.simconfig), "--no-input", "--overwrite"], script_env,
                 campaign.root)
    assert first.returncode == second.returncode == 0, second.stderr
    assert "uploaded SIM_DIR.zip" in first.stderr
    assert "SIM_DIR.zip is unchanged in storage: nothing uploaded" in second.stderr


@pytest.fixture
def seed_example(tmp_path: Path):
    """The original project's example files, as they are, with the folder path filled in."""
    root = tmp_path / "seed"
    shutil.copytree(REPO / "tests" / "data" / "seed_example", root)
    sim = json.loads((root / "simconfig.json").read_text())
    sim["LOCAL_SIM_PATH"] = "example_simulation"
    write_json(root / "simconfig.json", sim)
    yield root
    stop_local_pools(root / ".localbatch")


def test_original_example_runs_and_fails_with_named_tasks(seed_example, script_env):
    result = run(RUNNER, ["simconfig.json", "--backend", "local", "--no-input"], script_env,
                 seed_example)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "2 of 2 task(s) failed:" in result.stderr
    for task in ("task-1", "task-2"):
        assert f"{task}: exit code 127" in result.stderr
    assert "/topas/bin/topas: No such file or directory" in result.stderr
    assert "0 of 2 task(s) succeeded, 2 failed" in result.stdout


def test_ctrl_c_while_waiting_offers_pool_deletion_and_keeps_data(campaign, script_env):
    campaign.sim_dir.joinpath("run.sh").write_text("#!/bin/bash\nsleep 60\n")
    proc = subprocess.Popen([sys.executable, RUNNER, str(campaign.simconfig)], cwd=campaign.root,
                            env=script_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    pools = campaign.storage / "pools"
    while not list(pools.glob("*/jobs/*/tasks/*/state.json")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted. Delete job" in err and "yes (default, no terminal)" in err
    assert "Traceback" not in err
    assert not any(pools.iterdir())  # job and pool gone: nothing left billing
    assert (campaign.container / "SIM_DIR.zip").exists()  # data never deleted on Ctrl-C


def test_timeout_ends_with_exit_1_and_cleans_up(campaign, script_env):
    campaign.sim_dir.joinpath("run.sh").write_text("#!/bin/bash\nsleep 60\n")
    campaign.update(TIMEOUT_MINUTES=0.02)
    result = run(RUNNER, [str(campaign.simconfig), "--no-input"], script_env, campaign.root)
    assert result.returncode == 1
    assert "timed out after 0.02 minutes" in result.stderr
    assert "timed out" in result.stdout
    assert not any((campaign.storage / "pools").iterdir())


def test_reducer_without_worker_outputs_says_what_to_run(campaign, script_env):
    result = run(REDUCER, [str(campaign.simconfig), "--no-input"], script_env, campaign.root)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: container tiny-campaign does not exist on the local backend: run `")
    assert last.endswith("batch_simulation_runner.py simconfig.json --no-input` first")


def test_starting_node_adds_runs_without_overwriting(campaign, script_env):
    assert run(RUNNER, [str(campaign.simconfig), "--no-input"], script_env, campaign.root).returncode == 0
    campaign.update(STARTING_NODE=3)
    assert run(RUNNER, [str(campaign.simconfig), "--no-input"], script_env, campaign.root).returncode == 0
    runs = sorted(p.name for p in (campaign.container / "nodes_output").iterdir())
    assert runs == ["run1", "run2", "run3", "run4"]
    assert (campaign.results / "run4" / "out_4.txt").read_text() == "value 4\n"


REDUCE_SCRIPT = """#!/bin/bash
set -e
outputs="$1"; simconfig="$2"
ls -d "$outputs"/run* | wc -l | tr -d ' ' > "$outputs/results/run_count.txt"
python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['SIM_ID'])" "$simconfig" > "$outputs/results/sim_id.txt"
cat "$outputs"/run*/out_*.txt | sort > "$outputs/results/all.txt"
"""


def _reducer_folder(root: Path) -> Path:
    folder = root / "reducer_code"
    folder.mkdir()
    (folder / "reduce.sh").write_text(REDUCE_SCRIPT)
    return folder


def test_user_reducer_from_a_folder_gets_outputs_and_simconfig(campaign, script_env):
    assert run(RUNNER, [str(campaign.simconfig), "--no-input"], script_env, campaign.root).returncode == 0
    _reducer_folder(campaign.root)
    campaign.update(REDUCER_SCRIPT="reduce.sh", REDUCER_PATH="reducer_code")
    result = run(REDUCER, [str(campaign.simconfig), "--yes"], script_env, campaign.root)
    assert result.returncode == 0, result.stderr
    results = campaign.results / "results"
    assert (results / "run_count.txt").read_text() == "2\n"
    assert (results / "sim_id.txt").read_text() == "tiny-campaign\n"
    assert (results / "all.txt").read_text() == "value 1\nvalue 2\n"
    # --yes deleted the container once every output had a verified local copy
    assert not campaign.container.exists()


def test_user_reducer_from_a_git_repository(campaign, script_env, tmp_path):
    assert run(RUNNER, [str(campaign.simconfig), "--no-input"], script_env, campaign.root).returncode == 0
    repo = tmp_path / "git" / "someone" / "reducers"
    repo.mkdir(parents=True)
    (repo / "reduce.sh").write_text(REDUCE_SCRIPT)
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "reducer"], check=True)
    app = json.loads(campaign.appconfig.read_text())
    app.update(GIT_USER="someone", GIT_REPO="reducers", GIT_BASE_URL=f"file://{tmp_path / 'git'}")
    write_json(campaign.appconfig, app)
    (repo.parent / "reducers.git").symlink_to(repo)
    campaign.update(REDUCER_SCRIPT="reduce.sh")
    result = run(REDUCER, [str(campaign.simconfig), "--no-input"], script_env, campaign.root)
    assert result.returncode == 0, result.stderr
    assert (campaign.results / "results" / "run_count.txt").read_text() == "2\n"
