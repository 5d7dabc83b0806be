"""The reducer as a tree of Batch tasks on the Azure backend, against the fake Batch service
and Azurite, through the real script: 64 runs at fan-in 8 are merged by 8 tasks and one
more, which the service starts only once they have all succeeded; the requests ask for task
dependencies; the result equals one flat merge; a failed first-level task is reported with
its runs and stderr, and the task above it never runs, and nothing is left billing."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from conftest import AZURITE_ACCOUNT, AZURITE_KEY, REPO, write_json
from tests.support.topas_runs import SCORER, write_runs
from tests.test_reducer_tree import assert_same_result, flat_merge

REDUCER = str(REPO / "batch_data_reducer.py")


class TreeOnFake:
    """A campaign whose runs are already in Azurite: only the reducer runs."""

    def __init__(self, root: Path, azurite, fake, runs: range, **sim) -> None:
        self.root, self.fake, self.runs = root, fake, runs
        (root / "sim").mkdir(parents=True)
        (root / "sim" / "run.sh").write_text("#!/bin/sh\n")
        self.sim_id = f"tree-{uuid.uuid4().hex[:8]}"
        self.simconfig = write_json(root / "simconfig.json", {
            "SIM_ID": self.sim_id, "POOL_NODE_COUNT": 2, "TASK_COUNT": len(runs),
            "STARTING_NODE": runs[0], "POOL_VM_SIZE": "STANDARD_D2S_V3", "LOCAL_SIM_PATH": "sim",
            "RUN_SCRIPT": "run.sh", "REDUCER_SCRIPT": "builtin:topas",
            "OUTPUT_FILE_PATTERNS": ["*.csv"], "TIMEOUT_MINUTES": 10, **sim})
        write_json(root / "appconfig.json", {
            "BACKEND": "azure", "STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
            "STORAGE_ACCOUNT_KEY": AZURITE_KEY, "STORAGE_ACCOUNT_URL": azurite.url,
            "BATCH_ACCOUNT_NAME": fake.account_name, "BATCH_ACCOUNT_KEY": fake.account_key,
            "BATCH_ACCOUNT_URL": fake.url, "WORKER_DOCKER_IMAGE": "myregistry.azurecr.io/sim:1.0",
            "REDUCER_DOCKER_IMAGE": "python:3.12-slim"})
        service = BlobServiceClient(azurite.url, credential={"account_name": AZURITE_ACCOUNT,
                                                             "account_key": AZURITE_KEY})
        self.container = service.create_container(self.sim_id.lower())
        local = root / "runs"
        for folder in write_runs(local, runs):
            for path in folder.iterdir():
                self.container.upload_blob(f"nodes_output/{folder.name}/{path.name}",
                                           path.read_bytes())

    def reduce(self, env: dict, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, REDUCER, str(self.simconfig), *args], cwd=self.root,
                              env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=600)

    def blobs(self, prefix: str) -> list[str]:
        return [b.name for b in self.container.list_blobs(name_starts_with=prefix)]

    def leftovers(self) -> tuple[list[str], list[str]]:
        client = self.fake.client()
        return ([p.id for p in client.list_pools() if p.state != "deleting"],
                [j.id for j in client.list_jobs() if j.state != "deleting"])


@pytest.fixture
def env(script_env) -> dict[str, str]:
    return {**script_env, "BATCH_TOOL_POLL_SECONDS": "0.2", "BATCH_TOOL_HEALTH_SECONDS": "1"}


def sent_tasks(fake) -> dict[str, dict]:
    """Every task body the client sent in task collections, by id."""
    return {t["id"]: t for r in fake.requests if r.operation == "Tasks_CreateTaskCollection"
            for t in r.body["value"]}


def test_a_tree_of_64_runs_through_the_fake_service_equals_the_flat_merge(
        tmp_path, azurite, fake_batch, env):
    campaign = TreeOnFake(tmp_path / "az", azurite, fake_batch, range(1, 65),
                          REDUCER_FAN_IN=8, REDUCER_NODE_COUNT=4)
    result = campaign.reduce(env, "--no-input")
    assert result.returncode == 0, result.stderr
    assert "a tree of 9 reducer tasks in 2 levels (8 + 1)" in result.stderr
    assert "9 of 9 task(s) succeeded (azure backend)" in result.stdout

    [create] = [r for r in fake_batch.requests if r.operation == "Jobs_CreateJob"]
    assert create.body["usesTaskDependencies"] is True
    pool = create.body["poolInfo"]["autoPoolSpecification"]["pool"]
    assert pool["targetDedicatedNodes"] == 4
    sent = sent_tasks(fake_batch)
    leaves = [f"merge-1-{n}" for n in range(1, 9)]
    assert sent["reducer"]["dependsOn"] == {"taskIds": leaves}
    assert all("dependsOn" not in sent[leaf] for leaf in leaves)
    records = {t.id: t for t in fake_batch.tasks}
    assert records["reducer"].start_time >= max(records[leaf].end_time for leaf in leaves)
    spans = sorted((records[leaf].start_time, records[leaf].end_time) for leaf in leaves)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # four nodes: in parallel
    assert {records[leaf].node_id for leaf in leaves} > {records["reducer"].node_id}

    assert_same_result(campaign.root / "sim" / "nodes_output" / "results" / SCORER,
                       flat_merge(tmp_path, range(1, 65)), range(1, 65))
    assert campaign.blobs("nodes_output/partials/") == []  # removed once the result stood
    assert campaign.leftovers() == ([], [])


def test_a_failed_leaf_on_azure_is_reported_and_the_root_never_runs(
        tmp_path, azurite, fake_batch, env):
    campaign = TreeOnFake(tmp_path / "az", azurite, fake_batch, range(1, 13), REDUCER_FAN_IN=4,
                          REDUCER_NODE_COUNT=2)
    broken = "nodes_output/run10/" + SCORER
    data = campaign.container.download_blob(broken).readall()
    campaign.container.upload_blob(broken, data[:-3], overwrite=True)  # cut in its last row
    result = campaign.reduce(env, "--no-input")
    assert result.returncode == 1, result.stderr
    assert "merge-1-3: exit code 1 [FailureExitCode:" in result.stderr
    assert "it merged 4 run(s): run9..run12" in result.stderr
    assert "run10/Dose.csv" in result.stderr and "cut" in result.stderr
    assert "blocked by the failed task(s) merge-1-3: 1 task(s) never ran" in result.stdout
    records = {t.id: t for t in fake_batch.tasks}
    assert records["reducer"].start_time is None and records["reducer"].state == "active"
    deletions = [r for r in fake_batch.requests if r.operation == "Tasks_DeleteTask"]
    assert [r.path.rsplit("/", 1)[-1] for r in deletions] == ["reducer"]
    assert "nodes_output/partials/1-3/stderr.txt" in campaign.blobs("nodes_output/partials/")
    assert campaign.leftovers() == ([], [])
    manifest = json.loads((campaign.root / f"{campaign.sim_id}.campaign.json").read_text())
    assert manifest["jobs"][0]["task_runs"][2] == [9, 10, 11, 12]
