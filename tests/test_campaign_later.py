"""Picking a campaign up again from its manifest: --status, --attach, --cleanup, --rerun-failed."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import REPO

RUNNER = str(REPO / "batch_simulation_runner.py")


def run(campaign, env, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUNNER, str(campaign.simconfig), *args], cwd=campaign.root,
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def manifest(campaign) -> dict:
    return json.loads((campaign.root / "tiny-campaign.campaign.json").read_text())


def start_and_kill(campaign, env) -> None:
    """Start the runner and kill it hard once its tasks run: a crash, or a closed terminal."""
    proc = subprocess.Popen([sys.executable, RUNNER, str(campaign.simconfig)], cwd=campaign.root,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not list(campaign.storage.glob("pools/*/jobs/*/tasks/*/state.json")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_manifest_records_every_effect(campaign, script_env):
    result = run(campaign, script_env, "--no-input")
    assert result.returncode == 0, result.stderr
    data = manifest(campaign)
    assert f"campaign manifest: {campaign.root / 'tiny-campaign.campaign.json'}" in result.stderr
    assert data["uploaded"] == ["SIM_DIR.zip", "simconfig.json"]
    [job] = data["jobs"]
    assert job["task_ids"] == ["task-1", "task-2"] and job["job_deleted"] and job["pool_deleted"]
    assert data["downloads"] == [str(campaign.results)]
    assert "KEY" not in json.dumps(data).upper().replace("TASK", "")


def test_attach_after_the_terminal_was_closed(campaign, script_env):
    campaign.sim_dir.joinpath("run.sh").write_text(
        '#!/bin/bash\nsleep 1.5\necho "value $1" > "out_$1.txt"\n')
    start_and_kill(campaign, script_env)
    status = run(campaign, script_env, "--status")
    assert status.returncode == 0, status.stderr
    assert "workers job tiny-campaign-workers-" in status.stdout and ": active (" in status.stdout
    attached = run(campaign, script_env, "--attach", "--no-input")
    assert attached.returncode == 0, attached.stderr
    assert "Attaching to job" in attached.stderr
    assert "2 of 2 task(s) succeeded" in attached.stdout
    assert (campaign.results / "run2" / "out_2.txt").read_text() == "value 2\n"
    assert not any((campaign.storage / "pools").iterdir())


def test_cleanup_days_later_removes_what_bills_and_keeps_data(campaign, script_env):
    campaign.sim_dir.joinpath("run.sh").write_text("#!/bin/bash\nsleep 60\n")
    start_and_kill(campaign, script_env)
    assert any((campaign.storage / "pools").iterdir())  # left behind, as after a crash
    result = run(campaign, script_env, "--cleanup", "--no-input")
    assert result.returncode == 0, result.stderr
    assert "nothing left that bills" in result.stdout
    assert not any((campaign.storage / "pools").iterdir())
    assert (campaign.container / "SIM_DIR.zip").exists()
    again = run(campaign, script_env, "--cleanup", "--no-input")
    assert "nothing left that bills" in again.stdout and "Delete job" not in again.stderr


def test_rerun_failed_resubmits_only_the_failed_tasks(campaign, script_env):
    fixed = campaign.root / "fixed"
    campaign.update(TASK_COUNT=3)
    campaign.sim_dir.joinpath("run.sh").write_text(
        f'#!/bin/bash\nif [ "$1" = 2 ] && [ ! -f {fixed} ]; then echo broken >&2; exit 3; fi\n'
        'echo "value $1 seed $SIM_SEED" > "out_$1.txt"\n')
    first = run(campaign, script_env, "--no-input")
    assert first.returncode == 1
    assert "Rerun the failed tasks: " in first.stdout and "batch_simulation_runner.py simconfig.json --rerun-failed" in first.stdout
    assert not (campaign.results / "run2" / "out_2.txt").exists()
    fixed.touch()
    rerun = run(campaign, script_env, "--rerun-failed", "--no-input")
    assert rerun.returncode == 0, rerun.stderr
    assert "Rerunning 1 task(s) of tiny-campaign (failed: run2): task-2" in rerun.stderr and "1 of 1 task(s) succeeded" in rerun.stdout
    jobs = manifest(campaign)["jobs"]
    assert jobs[-1]["task_ids"] == ["task-2-r1"] and jobs[-1]["task_indices"] == [2]
    seeds = {(campaign.results / f"run{i}" / f"out_{i}.txt").read_text().split()[-1] for i in (1, 2, 3)}
    assert len(seeds) == 3
    from common.campaign import sim_seed
    assert (campaign.results / "run2" / "out_2.txt").read_text() == f"value 2 seed {sim_seed('tiny-campaign', 2)}\n"


def test_picking_up_a_campaign_that_never_started_says_so(campaign, script_env):
    result = run(campaign, script_env, "--attach", "--no-input")
    assert result.returncode == 1
    assert "no campaign manifest at" in result.stderr
