"""The reducer as a tree of tasks on the local backend, through the real script: a tree of
three levels run in dependency order and in parallel, its result equal to one flat merge,
picked up with --attach after a SIGTERM; a failed first-level task reported with its runs
and stderr, the tasks above it never run; --status and --dry-run say what the tree is."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.topas import read_scorer
from common.topas.merge import merge_runs
from conftest import REPO, Campaign, stop_local_pools
from tests.support.topas_runs import SCORER, STATS, write_runs

REDUCER = str(REPO / "batch_data_reducer.py")
RUNS = range(1, 21)  # 20 runs, fan-in 4: 5 + 2 + 1 tasks in three levels


@pytest.fixture
def tree_campaign(tmp_path: Path):
    made = Campaign(tmp_path / "tree", "#!/bin/sh\n", SIM_ID="tree-campaign", TASK_COUNT=20,
                    OUTPUT_FILE_PATTERNS=["*.csv"], REDUCER_FAN_IN=4, REDUCER_NODE_COUNT=2)
    write_runs(made.container / "nodes_output", RUNS)
    yield made
    stop_local_pools(made.storage)


def reduce(campaign: Campaign, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, REDUCER, str(campaign.simconfig), *args],
                          cwd=campaign.root, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def flat_merge(tmp_path: Path, runs=RUNS) -> Path:
    """The same runs merged by one flat merge, in this process."""
    folders = write_runs(tmp_path / "flat-runs", runs)
    merge_runs(folders, tmp_path / "flat", plots=False)
    return tmp_path / "flat" / SCORER


def assert_same_result(tree: Path, flat: Path, runs=RUNS) -> None:
    """Every statistic of every bin within 1e-12 relative; the same histories and runs."""
    ours, theirs = read_scorer(tree), read_scorer(flat)
    for stat in STATS:
        np.testing.assert_allclose(ours.values[stat], theirs.values[stat], rtol=1e-12, atol=0)
    assert ours.histories() == theirs.histories() == sum(40 + 13 * (i % 5) for i in runs)
    record = json.loads(tree.with_name(tree.name + ".merge.json").read_text())
    assert record["runs"] == len(runs)


def task_states(campaign: Campaign) -> dict[str, tuple[dict, dict]]:
    """(task.json, state.json) of every task of the reducer's job, by id."""
    found = {}
    for folder in campaign.storage.glob("pools/*-reducer/jobs/*/tasks/*"):
        state = json.loads((folder / "state.json").read_text()) if (folder / "state.json").exists() else {}
        found[folder.name] = (json.loads((folder / "task.json").read_text()), state)
    return found


def test_a_tree_runs_in_dependency_order_survives_sigterm_and_equals_the_flat_merge(
        tree_campaign, script_env, tmp_path):
    proc = subprocess.Popen([sys.executable, REDUCER, str(tree_campaign.simconfig), "--no-input"],
                            cwd=tree_campaign.root, env=script_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []
    for line in proc.stderr:  # stop it while it waits: the tree goes on without it
        said.append(line)
        if "Waiting for 8 task(s)" in line:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=60)
    assert proc.returncode == 143, "".join(said)
    assert any("a tree of 8 reducer tasks in 3 levels (5 + 2 + 1)" in line for line in said)

    deadline = time.monotonic() + 240
    while not (states := task_states(tree_campaign)) or any(
            s.get("state") != "completed" for _, s in states.values()) or len(states) < 8:
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    assert {i: s["result"] for i, (_, s) in states.items()} == dict.fromkeys(
        ["merge-1-1", "merge-1-2", "merge-1-3", "merge-1-4", "merge-1-5", "merge-2-1",
         "merge-2-2", "reducer"], "success")
    for task, state in states.values():  # each started after everything it depends on ended
        for parent in task["depends_on"]:
            assert state["start_time"] >= states[parent][1]["end_time"]
    leaves = sorted((s["start_time"], s["end_time"]) for i, (_, s) in states.items()
                    if i.startswith("merge-1-"))
    assert any(b[0] < a[1] for a, b in zip(leaves, leaves[1:]))  # two nodes: some in parallel
    manifest = json.loads((tree_campaign.root / "tree-campaign.campaign.json").read_text())
    [job] = manifest["jobs"]
    assert dict(zip(job["task_ids"], job["task_runs"]))["merge-1-2"] == [5, 6, 7, 8]
    assert dict(zip(job["task_ids"], job["task_depends"]))["reducer"] == ["merge-2-1", "merge-2-2"]

    status = reduce(tree_campaign, script_env, "--status")
    assert "file(s) of a reducer tree's partial merges" in status.stdout, status.stdout
    attached = reduce(tree_campaign, script_env, "--attach", "--no-input")
    assert attached.returncode == 0, attached.stderr
    assert "8 of 8 task(s) succeeded" in attached.stdout
    assert "partial merge file(s) were removed from storage" in attached.stdout
    assert not list((tree_campaign.container / "nodes_output" / "partials").rglob("*.*"))
    assert_same_result(tree_campaign.results / "results" / SCORER, flat_merge(tmp_path))


def test_a_failed_leaf_names_its_runs_and_blocks_the_tasks_above_it(tree_campaign, script_env):
    broken = tree_campaign.container / "nodes_output" / "run7" / SCORER
    broken.write_bytes(broken.read_bytes()[:-3])  # cut inside its last row
    result = reduce(tree_campaign, script_env, "--no-input")
    assert result.returncode == 1, result.stderr
    assert "1 of 8 task(s) failed" in result.stderr
    assert "merge-1-2: exit code 1 — it merged 4 run(s): run5..run8" in result.stderr
    assert "run7/Dose.csv" in result.stderr and "cut" in result.stderr  # its stderr's tail
    assert "blocked by the failed task(s) merge-1-2: 2 task(s) never ran" in result.stdout
    assert "(merge-2-1, reducer)" in result.stdout
    partials = tree_campaign.container / "nodes_output" / "partials"
    assert (partials / "1-2" / "stderr.txt").exists()  # kept: they say why
    assert sorted(p.name for p in partials.iterdir()) == ["1-1", "1-2", "1-3", "1-4", "1-5",
                                                          "2-2"]  # 2-1 and the root never ran
    assert not (tree_campaign.container / "nodes_output" / "results").exists()
    manifest = json.loads((tree_campaign.root / "tree-campaign.campaign.json").read_text())
    assert any("removed 2 reducer task(s) blocked by the failure of merge-1-2" in e
               for e in manifest["events"])

    # The next reducer run starts afresh: the stale partial merges go first — and only they,
    # whatever links someone left among them.
    broken.write_bytes(broken.read_bytes() + b"0\n")
    (partials / "evil").symlink_to("../run3")
    (partials / "1-1" / "linked.csv").symlink_to("../../run4/Dose.csv")
    runs_before = {p: p.read_bytes() for p in (partials.parent).glob("run*/*")}
    again = reduce(tree_campaign, script_env, "--no-input", "--allow-inconsistent")
    assert again.returncode == 0, again.stderr
    assert "earlier reduction's partial merges" in again.stderr
    assert {p: p.read_bytes() for p in runs_before} == runs_before
    assert not [p for p in partials.rglob("*") if p.is_file() and not p.is_symlink()]


def test_cleanup_removes_a_tree_left_running(tree_campaign, script_env):
    proc = subprocess.Popen([sys.executable, REDUCER, str(tree_campaign.simconfig), "--no-input"],
                            cwd=tree_campaign.root, env=script_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "Waiting for 8 task(s)" in line:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=60)
    status = reduce(tree_campaign, script_env, "--status")
    assert "reducer job tree-campaign-reducer-" in status.stdout
    cleaned = reduce(tree_campaign, script_env, "--cleanup", "--no-input")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "nothing left that bills" in cleaned.stdout
    assert not any((tree_campaign.storage / "pools").iterdir())
    assert len(list((tree_campaign.container / "nodes_output").glob("run*/Dose.csv"))) == 20


def test_dry_run_and_a_users_own_script_and_few_runs_stay_one_task(tree_campaign, script_env):
    dry = reduce(tree_campaign, script_env, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "runs as a tree of 8 reducer tasks in 3 levels (5 + 2 + 1)" in dry.stdout
    assert "on 2 node(s)" in dry.stdout and '"task_dependencies": true' in dry.stdout
    shown = [line for line in dry.stdout.splitlines() if line.startswith("--- task ")]
    assert shown == ["--- task merge-1-1", "--- task merge-2-1", "--- task reducer"]
    tree_campaign.update(REDUCER_FAN_IN=20)
    flat = reduce(tree_campaign, script_env, "--dry-run")
    assert "one reducer task merges all 20 runs" in flat.stdout
    scripts = tree_campaign.root / "mine"
    scripts.mkdir()
    (scripts / "reduce.sh").write_text("#!/bin/sh\nmkdir -p \"$1/results\"; echo ok > \"$1/results/ok.txt\"\n")
    tree_campaign.update(REDUCER_FAN_IN=4, REDUCER_SCRIPT="reduce.sh", REDUCER_PATH="mine")
    own = reduce(tree_campaign, script_env, "--no-input")
    assert own.returncode == 0, own.stderr
    assert "1 of 1 task(s) succeeded" in own.stdout and "a tree of" not in own.stderr
    assert (tree_campaign.results / "results" / "ok.txt").read_text() == "ok\n"
