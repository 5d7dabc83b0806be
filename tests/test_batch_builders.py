"""Pure builders -> azure.batch models: compared with golden JSON (the request bodies)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from common.backends.azure import builders as bb
from common import campaign as cp
from common.config import PoolImage, Secret
from tests.azure_settings import FAKE_DOCKER_TOKEN, azure_settings

GOLDEN = Path(__file__).parent / "data" / "golden"
IDS = cp.CampaignIds("golden-sim", "20260101120000")
URLS = bb.TaskUrls(read={"SIM_DIR.zip": "https://acct.blob.core.windows.net/golden-sim/SIM_DIR.zip?sp=r&sig=AAA",
                         "simconfig.json": "https://acct.blob.core.windows.net/golden-sim/simconfig.json?sp=r&sig=BBB",
                         "REDUCER.zip": "https://acct.blob.core.windows.net/golden-sim/REDUCER.zip?sp=r&sig=CCC"},
                   read_list="https://acct.blob.core.windows.net/golden-sim?sp=rl&sig=DDD",
                   write="https://acct.blob.core.windows.net/golden-sim?sp=w&sig=EEE")


SETUP = bb.NodeSetup(PoolImage("microsoft-dsvm", "ubuntu-hpc", "2404"), "batch.node.ubuntu 24.04", None)


def check_golden(name: str, model) -> None:
    """Compare with tests/data/golden/<name>.json; UPDATE_GOLDEN=1 rewrites the file."""
    actual = json.loads(json.dumps(model.as_dict(), default=str))
    path = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert actual == json.loads(path.read_text())


@pytest.fixture
def settings(tmp_path):
    return azure_settings(tmp_path)


def test_worker_pool_golden(settings):
    app = settings.app
    registry = bb.image_credentials(app, app.worker_docker_image)
    pool = bb.pool_options(cp.worker_pool(settings, IDS), bb.NodeSetup(app.pool_image, app.node_agent_sku_id, registry))
    check_golden("worker_pool", pool)
    body = pool.as_dict()
    vm = body["virtualMachineConfiguration"]
    assert vm["imageReference"] == {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc",
                                    "sku": "2404", "version": "latest"}
    assert vm["nodeAgentSKUId"] == "batch.node.ubuntu 24.04"
    assert vm["containerConfiguration"]["type"] == "dockerCompatible"
    # the full name: Batch gives docker.io's credentials only to names that start with it
    assert vm["containerConfiguration"]["containerImageNames"] == ["docker.io/myuser/topas:4.0"]
    assert vm["containerConfiguration"]["containerRegistries"][0]["registryServer"] == "docker.io"
    assert vm["containerConfiguration"]["containerRegistries"][0]["password"] == FAKE_DOCKER_TOKEN
    assert FAKE_DOCKER_TOKEN not in bb.redacted_json(pool, (FAKE_DOCKER_TOKEN,))


def test_named_pool_job_golden(tmp_path):
    settings = azure_settings(tmp_path, AUTO_DELETE_POOL=False)
    job = cp.worker_job(settings, IDS)
    check_golden("worker_job", bb.job_options(job, SETUP, URLS))
    assert bb.job_options(job, SETUP).as_dict()["poolInfo"] == {"poolId": "golden-sim-workers"}


def test_full_image_names():
    assert bb.full_image_name("myuser/topas:4.0") == "docker.io/myuser/topas:4.0"
    assert bb.full_image_name("python:3.12-slim") == "docker.io/library/python:3.12-slim"
    assert bb.full_image_name("myreg.azurecr.io/topas:4") == "myreg.azurecr.io/topas:4"
    assert bb.full_image_name("localhost:5000/sim") == "localhost:5000/sim"


def test_no_registry_without_docker_credentials():
    assert bb.registry_for("myuser/topas:4", None, None) is None
    assert bb.registry_for("myreg.azurecr.io/topas:4", "u", Secret("p")).server == "myreg.azurecr.io"
    assert bb.registry_for("myuser/topas:4", "u", Secret("p")).server == "docker.io"


def test_each_image_gets_only_its_own_registrys_credentials(tmp_path):
    settings = azure_settings(tmp_path)  # worker myuser/topas:4.0 with DOCKER_*, reducer python
    app = settings.app
    assert bb.image_credentials(app, app.worker_docker_image).username == "myuser"
    # the reducer lives on Docker Hub too: the same registry, the same credentials
    assert bb.image_credentials(app, app.reducer_docker_image).server == "docker.io"
    acr = dataclasses.replace(app, worker_docker_image="myreg.azurecr.io/topas:4.0")
    assert bb.image_credentials(acr, acr.worker_docker_image).server == "myreg.azurecr.io"
    assert bb.image_credentials(acr, acr.reducer_docker_image) is None  # not ACR's to Docker Hub
    own = dataclasses.replace(acr, reducer_docker_user="hubuser", reducer_docker_token=Secret("t"))
    theirs = bb.image_credentials(own, own.reducer_docker_image)
    assert (theirs.server, theirs.username) == ("docker.io", "hubuser")


def test_worker_job_and_task_golden(settings):
    job = cp.worker_job(settings, IDS)
    check_golden("worker_job_auto_pool", bb.job_options(job, SETUP, URLS))
    body = bb.job_options(job, SETUP, URLS).as_dict()
    assert body["onAllTasksComplete"] == "noaction"
    auto = body["poolInfo"]["autoPoolSpecification"]
    assert (auto["poolLifetimeOption"], auto["keepAlive"]) == ("job", False)
    assert auto["pool"]["targetDedicatedNodes"] == 2
    assert body["constraints"] == {"maxWallClockTime": "PT01H00M00S"}  # 30 min timeout + margin
    assert bb.job_completion_update().as_dict() == {"onAllTasksComplete": "terminatejob"}
    prep = body["jobPreparationTask"]  # on the node's own OS: no containerSettings
    assert "containerSettings" not in prep and prep["waitForSuccess"] is True
    assert prep["commandLine"].startswith("/bin/sh -c ")
    assert [f["httpUrl"].split("?")[0].rsplit("/", 1)[1] for f in prep["resourceFiles"]] == [
        "SIM_DIR.zip", "simconfig.json"]
    task = bb.task_options(job.tasks[0], job, URLS)
    check_golden("worker_task", task)
    body = task.as_dict()
    assert body["id"] == "task-1"
    assert body["commandLine"].startswith("-c ")  # arguments of the /bin/sh entrypoint
    assert body["commandLine"].endswith("exit $status'")
    assert "resourceFiles" not in body  # the preparation task brought them, once per node
    outputs = {o["filePattern"]: o["destination"]["container"]["path"] for o in body["outputFiles"]}
    assert outputs == {"out_*.txt": "nodes_output/run1", "Dose.csv": "nodes_output/run1/Dose.csv",
                       "../std*.txt": "nodes_output/run1"}
    assert {o["uploadOptions"]["uploadCondition"] for o in body["outputFiles"]} == {
        "tasksuccess", "taskcompletion"}
    env = {e["name"]: e["value"] for e in body["environmentSettings"]}
    assert env["TASK_INDEX"] == "1" and env["SIM_SEED"] == str(cp.sim_seed("golden-sim", 1))
    assert body["containerSettings"] == {"imageName": "docker.io/myuser/topas:4.0",
                                         "containerRunOptions": "--entrypoint /bin/sh"}
    assert body["userIdentity"] == {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
    assert body["constraints"] == {"maxTaskRetryCount": 1, "retentionTime": "PT01H00M00S"}


def test_image_entrypoint_and_user_can_be_kept(tmp_path):
    settings = azure_settings(tmp_path)
    app = dataclasses.replace(settings.app, keep_image_entrypoint=True, run_as_root=False)
    job = cp.worker_job(dataclasses.replace(settings, app=app), IDS)
    body = bb.task_options(job.tasks[0], job, URLS).as_dict()
    assert body["commandLine"].startswith("/bin/sh -c ")  # the entrypoint's arguments
    assert "containerRunOptions" not in body["containerSettings"]
    assert body["userIdentity"]["autoUser"]["elevationLevel"] == "nonadmin"


def test_reducer_task_golden(settings):
    job = cp.reducer_job(settings, IDS)
    task = bb.task_options(job.tasks[0], job, URLS)
    check_golden("reducer_task", task)
    body = task.as_dict()
    prefix = [f for f in body["resourceFiles"] if "blobPrefix" in f]
    # the run folders only: an earlier merged result (results/) is not an input
    assert prefix == [{"storageContainerUrl": URLS.read_list, "blobPrefix": "nodes_output/run"}]
    assert "appconfig" not in json.dumps(body)  # no keys travel to the node
    assert body["containerSettings"]["imageName"] == "docker.io/library/python:3.12-slim"


def test_chunks_and_request_count():
    assert [len(c) for c in bb.chunks(list(range(250)))] == [100, 100, 50]
    assert bb.request_count(1000) == 14


def test_redacted_json_hides_signatures(tmp_path):
    job = cp.worker_job(azure_settings(tmp_path), IDS)
    text = bb.redacted_json(bb.job_options(job, SETUP, URLS))
    assert "sig=***" in text and "AAA" not in text



def test_the_reducer_node_installs_the_versions_requirements_pin():
    from common.campaign import MERGE_NEEDS, MERGE_OPTIONAL
    pinned = {line.strip() for line in (GOLDEN.parents[2] / "requirements.txt").read_text().splitlines()
              if "==" in line}
    wanted = set(MERGE_NEEDS) | {pin for _, pins in MERGE_OPTIONAL for pin in pins}
    assert wanted <= pinned


def test_tasks_go_in_dependency_order_and_keep_their_folders_an_hour(settings):
    """A task never names one the job does not have yet; a task's folder on the node (a copy
    of the simulation, and its outputs) is removed an hour after it ends, not 7 days."""
    from common.model import TaskSpec
    leaves = [TaskSpec(f"merge-1-{n}", 0, "true") for n in (1, 2)]
    final = TaskSpec("reducer", 0, "true", depends_on=("merge-2-1",))
    middle = TaskSpec("merge-2-1", 0, "true", depends_on=("merge-1-1", "merge-1-2"))
    ranged = TaskSpec("7", 0, "true", depends_on_ranges=((1, 3),))
    numbered = [TaskSpec(str(n), 0, "true") for n in (1, 2, 3)]
    groups = bb.in_dependency_order([final, middle, ranged, *leaves, *numbered])
    assert [[t.task_id for t in g] for g in groups] == [
        ["merge-1-1", "merge-1-2", "1", "2", "3"], ["merge-2-1", "7"], ["reducer"]]
    assert bb.in_dependency_order(leaves) == [leaves]  # no dependencies: one request as before
    body = bb.task_options(leaves[0], cp.worker_job(settings, IDS), URLS).as_dict()
    assert body["constraints"]["retentionTime"] in ("PT1H", "PT01H00M00S")
