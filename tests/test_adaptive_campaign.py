"""Campaigns that stop at a target uncertainty, through the real scripts, on both backends.

The example at 750,000 histories a task reaches ~2.06 % in the region at or above 50 % of
the maximum (~1.46 % with two tasks; the shipped 3 million histories give ~1 %), so a
target of 0.8 % from a first wave of 2 is the issue's 0.4 % at the example's full size: the
1/sqrt(N) law asks for ~6.7 tasks.
"""
from __future__ import annotations

import io
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rich.console import Console

from common.backends.local.backend import LocalBackend
from common.config import load_settings
from common.manifest import load, manifest_path
from common.prompts import NO_INPUT, Prompter
from common.signals import Terminated
from common.topas import ScorerAccumulator, read_scorer
from common.ui import Ui
from common.workflow import Context, run_simulation
from common.workflow.adaptive import measure
from conftest import REPO, stop_local_pools, write_json
from test_azure_e2e import azure_campaign, azure_env  # noqa: F401

RUNNER = str(REPO / "batch_simulation_runner.py")
REDUCER = str(REPO / "batch_data_reducer.py")
HISTORIES = "750000"
SUM_ONLY = '''
python3 - <<'PY'
rows = open("DoseAtPhantom.csv").read().splitlines()
out = [l for l in rows if l.startswith("#") and not l.startswith("# DoseToMedium")]
out.append("# DoseToMedium ( Gy ) : Sum   ")
out += [", ".join(l.split(", ")[:4]) for l in rows if not l.startswith("#")]
open("DoseAtPhantom.csv", "w").write("\\n".join(out) + "\\n")
PY
'''


@pytest.fixture
def adaptive(tmp_path: Path):
    root = tmp_path / "adaptive"
    shutil.copytree(REPO / "examples" / "water_phantom", root / "examples" / "water_phantom",
                    ignore=shutil.ignore_patterns("nodes_output", "__pycache__", "*.csv"))
    sim = json.loads((REPO / "simconfig.json").read_text())
    sim.update(SIM_ID="adaptive-example", POOL_NODE_COUNT=2, TASK_COUNT=2,
               TARGET_UNCERTAINTY_PERCENT=0.8, TIMEOUT_MINUTES=10)
    write_json(root / "simconfig.json", sim)
    write_json(root / "appconfig.json", {"BACKEND": "local"})
    yield root
    stop_local_pools(root / ".localbatch")


def run(root: Path, script: str, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, str(root / "simconfig.json"), *args], cwd=root,
                          env={**env, "EXAMPLE_HISTORIES": HISTORIES}, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=600)


def update(root: Path, **changes) -> None:
    sim = json.loads((root / "simconfig.json").read_text())
    sim.update(changes)
    write_json(root / "simconfig.json", sim)


def submitted(stdout: str) -> int:
    return int(stdout.split(" task(s) submitted")[0].rsplit(", ", 1)[-1])


def test_the_target_is_met_with_about_as_many_tasks_as_the_law_says(adaptive, script_env):
    result = run(adaptive, RUNNER, script_env, "--no-input")
    assert result.returncode == 0, result.stderr
    assert "target 0.8 %: met" in result.stdout
    tasks = submitted(result.stdout)
    assert 6 <= tasks <= 9, result.stdout  # the law's ~6.7, not twice as many
    assert "adding " in result.stderr and "uncertainty" in result.stderr
    # "adding 6 task(s) ... ~7 more task(s) needed" did not add up: now every wave's numbers do
    waves = re.findall(r"adding (\d+) task\(s\) .*~(\d+) run\(s\) in all: (\d+) done \+ "
                       r"(\d+) under way \+ (\d+) added$", result.stderr, re.M)
    assert waves, result.stderr
    for added, needed, done, under_way, said in waves:
        assert int(added) == int(said) and int(done) + int(under_way) + int(said) == int(needed)
    results = adaptive / "examples" / "water_phantom" / "nodes_output"
    assert (results / "convergence" / "convergence.csv").exists()
    assert (results / "convergence" / "convergence.png").exists()
    reported = float(result.stdout.split("maximum of DoseAtPhantom.csv): ")[1].split(" %")[0])
    # the reducer's merge of all the runs reproduces the uncertainty the runner reported
    reducer = run(adaptive, REDUCER, script_env, "--no-input")
    assert reducer.returncode == 0, reducer.stderr
    runs = sorted(p for p in results.glob("run*") if p.is_dir())
    assert len(runs) == tasks
    again = ScorerAccumulator()
    for folder in runs:
        again.add(read_scorer(folder / "DoseAtPhantom.csv"), folder)
    assert 100 * measure(again, 0.5).relative_error == pytest.approx(reported, rel=2e-3)
    # and its summary states the runner's own figure, to the printed digit
    runner_says = result.stdout.split("  uncertainty (")[1].splitlines()[0]
    summary = next(adaptive.rglob("merge-summary/DoseAtPhantom.csv.summary.txt"))
    assert "Target of the adaptive campaign: uncertainty (" + runner_says in summary.read_text()


def test_max_task_count_reached_ends_with_exit_1_saying_what_was_reached(adaptive, script_env):
    update(adaptive, TARGET_UNCERTAINTY_PERCENT=0.1, MAX_TASK_COUNT=4)
    result = run(adaptive, RUNNER, script_env, "--no-input")
    assert result.returncode == 1
    assert "target 0.1 %: NOT met" in result.stdout
    assert "MAX_TASK_COUNT (4) reached" in result.stdout
    assert submitted(result.stdout) == 4


def test_a_scorer_without_second_moment_uses_the_run_to_run_spread(adaptive, script_env):
    script = adaptive / "examples" / "water_phantom" / "run_simulation.sh"
    script.write_text(script.read_text() + SUM_ONLY)
    update(adaptive, TARGET_UNCERTAINTY_PERCENT=1.5, TASK_COUNT=2, MAX_TASK_COUNT=16)
    result = run(adaptive, RUNNER, script_env, "--no-input")
    assert result.returncode == 0, result.stderr
    assert "uncertainty (batch method" in result.stdout and "met" in result.stdout
    assert submitted(result.stdout) >= 3  # no estimate from fewer than three runs


def test_an_interrupted_campaign_is_taken_up_by_attach(adaptive, script_env):
    script = adaptive / "examples" / "water_phantom" / "run_simulation.sh"
    script.write_text(script.read_text() + "sleep 2\n")
    env = {**script_env, "EXAMPLE_HISTORIES": HISTORIES}
    proc = subprocess.Popen([sys.executable, RUNNER, str(adaptive / "simconfig.json"), "--no-input"],
                            cwd=adaptive, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    manifest = adaptive / "adaptive-example.campaign.json"
    while not (manifest.exists() and any(len(j["task_ids"]) > 2 for j in
                                         json.loads(manifest.read_text())["jobs"])):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # stop waiting in the middle of a wave, delete nothing
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    attached = run(adaptive, RUNNER, script_env, "--attach", "--no-input")
    assert attached.returncode == 0, attached.stderr
    assert "target 0.8 %: met" in attached.stdout
    assert 6 <= submitted(attached.stdout) <= 10


def test_a_wave_recorded_but_never_added_is_added_by_attach(adaptive, script_env, monkeypatch):
    """A SIGTERM between writing a wave into the manifest and adding it to the job (it lands
    there under load) leaves a job without those tasks: --attach used to wait for them until
    the timeout. Now it adds them, with the recorded ids, and the campaign ends as usual."""
    monkeypatch.setenv("EXAMPLE_HISTORIES", HISTORIES)
    update(adaptive, TIMEOUT_MINUTES=3)  # without the fix, the attach waits this long
    settings = load_settings(adaptive / "simconfig.json")
    backend = LocalBackend(settings.app.local_storage_path)

    def stop_at(step: str) -> None:
        if step == "add-tasks":
            raise Terminated(signal.SIGTERM)
    ctx = Context(settings=settings, backend=backend, ui=Ui(Console(file=io.StringIO())),
                  prompter=Prompter(NO_INPUT, ask=input, say=lambda _: None, is_terminal=False),
                  before_step=stop_at, poll_seconds=0.05)
    with pytest.raises(Terminated):
        run_simulation(ctx)
    job = load(manifest_path(settings.sim.path, settings.sim.sim_id)).jobs[0]
    lacking = set(job.task_ids) - set(backend.task_ids(job.job_id))
    assert len(lacking) >= 1 and len(job.task_ids) > 2  # the second wave: recorded, not added
    attached = run(adaptive, RUNNER, script_env, "--attach", "--no-input")
    assert attached.returncode == 0, attached.stderr
    assert f"{len(lacking)} task(s) recorded but not in job" in attached.stderr
    assert "target 0.8 %: met" in attached.stdout
    runs = adaptive / "examples" / "water_phantom" / "nodes_output"
    ran = {f"task-{int(folder.name[3:])}" for folder in runs.glob("run*") if folder.is_dir()}
    assert lacking <= ran  # they ran, under the ids recorded


def test_the_fake_batch_service_runs_the_added_waves(azure_campaign, azure_env):
    script = azure_campaign.root / "examples" / "water_phantom" / "run_simulation.sh"
    script.write_text(script.read_text().replace(
        '"${PYTHON:-python3}"', f'EXAMPLE_HISTORIES={HISTORIES} "${{PYTHON:-python3}}"'))
    azure_campaign.update(TASK_COUNT=2, POOL_NODE_COUNT=2, TARGET_UNCERTAINTY_PERCENT=0.8)
    result = azure_campaign.run(REDUCER.replace("batch_data_reducer", "batch_simulation_runner"),
                                "--no-input", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert "target 0.8 %: met" in result.stdout
    tasks = [t for t in azure_campaign.fake.tasks if t.id.startswith("task-")]
    assert 6 <= len(tasks) <= 9
    assert len({t.job_id for t in tasks}) == 1  # one job, one pool: waves added to it
    jobs = [r for r in azure_campaign.fake.requests if r.operation == "Jobs_UpdateJob"]
    assert len(jobs) == 1  # sealed (terminatejob) once, when no more tasks would come
    assert azure_campaign.leftovers() == ([], [])
    assert not math.isnan(float(result.stdout.split("maximum of DoseAtPhantom.csv): ")[1].split(" %")[0]))
