"""Pure builders -> azure.batch models: compared with golden JSON (the request bodies)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common import batch_builders as bb
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
    registry = bb.registry_for(app.worker_docker_image, app.docker_user, app.docker_token)
    pool = bb.pool_options(cp.worker_pool(settings, IDS), bb.NodeSetup(app.pool_image, app.node_agent_sku_id, registry))
    check_golden("worker_pool", pool)
    body = pool.as_dict()
    vm = body["virtualMachineConfiguration"]
    assert vm["imageReference"] == {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc",
                                    "sku": "2404", "version": "latest"}
    assert vm["nodeAgentSKUId"] == "batch.node.ubuntu 24.04"
    assert vm["containerConfiguration"]["type"] == "dockerCompatible"
    assert vm["containerConfiguration"]["containerImageNames"] == ["myuser/topas:4.0"]
    assert vm["containerConfiguration"]["containerRegistries"][0]["password"] == FAKE_DOCKER_TOKEN
    assert FAKE_DOCKER_TOKEN not in bb.redacted_json(pool, (FAKE_DOCKER_TOKEN,))


def test_named_pool_job_golden(tmp_path):
    settings = azure_settings(tmp_path, AUTO_DELETE_POOL=False)
    job = cp.worker_job(settings, IDS)
    check_golden("worker_job", bb.job_options(job, SETUP))
    assert bb.job_options(job, SETUP).as_dict()["poolInfo"] == {"poolId": "golden-sim-workers"}


def test_no_registry_without_docker_credentials():
    assert bb.registry_for("myuser/topas:4", None, None) is None
    assert bb.registry_for("myreg.azurecr.io/topas:4", "u", Secret("p")).server == "myreg.azurecr.io"
    assert bb.registry_for("myuser/topas:4", "u", Secret("p")).server == "docker.io"


def test_worker_job_and_task_golden(settings):
    job = cp.worker_job(settings, IDS)
    check_golden("worker_job_auto_pool", bb.job_options(job, SETUP))
    body = bb.job_options(job, SETUP).as_dict()
    assert body["onAllTasksComplete"] == "noaction"
    auto = body["poolInfo"]["autoPoolSpecification"]
    assert (auto["poolLifetimeOption"], auto["keepAlive"]) == ("job", False)
    assert auto["pool"]["targetDedicatedNodes"] == 2
    assert body["constraints"] == {"maxWallClockTime": "PT01H00M00S"}  # 30 min timeout + margin
    assert bb.job_completion_update().as_dict() == {"onAllTasksComplete": "terminatejob"}
    task = bb.task_options(job.tasks[0], job.image, URLS)
    check_golden("worker_task", task)
    body = task.as_dict()
    assert body["id"] == "task-1"
    assert body["commandLine"].startswith("/bin/bash -c ")
    assert body["commandLine"].endswith("exec ./run.sh 1'")
    assert [f["httpUrl"].split("?")[0].rsplit("/", 1)[1] for f in body["resourceFiles"]] == [
        "SIM_DIR.zip", "simconfig.json"]
    outputs = {o["filePattern"]: o["destination"]["container"]["path"] for o in body["outputFiles"]}
    assert outputs == {"out_*.txt": "nodes_output/run1", "Dose.csv": "nodes_output/run1/Dose.csv",
                       "../std*.txt": "nodes_output/run1"}
    assert {o["uploadOptions"]["uploadCondition"] for o in body["outputFiles"]} == {
        "tasksuccess", "taskcompletion"}
    env = {e["name"]: e["value"] for e in body["environmentSettings"]}
    assert env["TASK_INDEX"] == "1" and env["SIM_SEED"] == str(cp.sim_seed("golden-sim", 1))
    assert body["containerSettings"] == {"imageName": "myuser/topas:4.0"}
    assert body["constraints"] == {"maxTaskRetryCount": 1}


def test_reducer_task_golden(settings):
    job = cp.reducer_job(settings, IDS)
    task = bb.task_options(job.tasks[0], job.image, URLS)
    check_golden("reducer_task", task)
    body = task.as_dict()
    prefix = [f for f in body["resourceFiles"] if "blobPrefix" in f]
    assert prefix == [{"storageContainerUrl": URLS.read_list, "blobPrefix": "nodes_output/"}]
    assert "appconfig" not in json.dumps(body)  # no keys travel to the node
    assert body["containerSettings"] == {"imageName": "python:3.12-slim"}


def test_chunks_and_request_count():
    assert [len(c) for c in bb.chunks(list(range(250)))] == [100, 100, 50]
    assert bb.request_count(1000) == 14


def test_redacted_json_hides_signatures():
    text = bb.redacted_json(bb.task_options(_task(), None, URLS))
    assert "sig=***" in text and "AAA" not in text


def _task():
    from common.model import InputFile, TaskSpec
    return TaskSpec("t", 1, "true", inputs=(InputFile("SIM_DIR.zip"),))
