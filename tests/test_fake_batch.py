"""The fake Azure Batch service (tests/fake_batch), driven only through the real SDKs.

azure-batch 15 talks to the fake as it would to Azure; azure-storage-blob makes the SAS
URLs and checks, in Azurite, what the tasks downloaded and uploaded. A few pure helpers
(file patterns, $filter) are checked directly.
"""
from __future__ import annotations

import json
import shlex
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.rest import HttpRequest
from azure.storage.blob import (BlobServiceClient, ContainerSasPermissions, generate_blob_sas,
                                generate_container_sas)

from conftest import AZURITE_ACCOUNT, AZURITE_KEY
from tests.fake_batch import RETIRED_IMAGE, outputs
from tests.fake_batch.odata import compile_filter

IMAGE = "myregistry.azurecr.io/sim:1.0"


# -- helpers ----------------------------------------------------------------------------------

def wait_until(check: Callable[[], object], timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {check}")


def vm_configuration(containers: bool = True, image: dict | None = None) -> bm.VirtualMachineConfiguration:
    ref = image or {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404",
                    "version": "latest"}
    return bm.VirtualMachineConfiguration(
        image_reference=bm.BatchVmImageReference(**ref),
        node_agent_sku_id="batch.node.ubuntu 20.04" if image else "batch.node.ubuntu 24.04",
        container_configuration=bm.BatchContainerConfiguration(
            type="dockerCompatible", container_image_names=[IMAGE],
            container_registries=[bm.ContainerRegistryReference(
                registry_server="myregistry.azurecr.io", username="u", password="p")])
        if containers else None)


def make_pool(client: BatchClient, pool_id: str, nodes: int = 1, slots: int = 4,
              containers: bool = True, **extra) -> None:
    client.create_pool(bm.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", virtual_machine_configuration=vm_configuration(containers),
        target_dedicated_nodes=nodes, task_slots_per_node=slots, **extra))


def make_job(client: BatchClient, job_id: str, pool_id: str) -> None:
    client.create_job(bm.BatchJobCreateOptions(id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id),
                                               all_tasks_complete_mode="noaction"))


def task(task_id: str, command: str, **extra) -> bm.BatchTaskCreateOptions:
    return bm.BatchTaskCreateOptions(
        id=task_id, command_line=command,
        container_settings=bm.BatchTaskContainerSettings(image_name=IMAGE), **extra)


def finish_job(client: BatchClient, job_id: str, expected: int, timeout: float = 15.0):
    """Set terminatejob, then poll the counts (as a backend should) until all completed."""
    client.update_job(job_id, bm.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    return wait_until(lambda: (c := client.get_job_task_counts(job_id).task_counts).completed == expected
                      and c, timeout)


def error_values(error: HttpResponseError) -> dict[str, str]:
    return {item.key: item.value for item in error.model.error_values or []}


def raw(client: BatchClient, method: str, path: str, body: object = None):
    """A request the SDK models would not build, still signed by the SDK's auth policy."""
    separator = "&" if "?" in path else "?"
    request = HttpRequest(method, f"{path}{separator}api-version=2025-06-01", json=body)
    try:
        return client.send_request(request)
    except HttpResponseError as error:  # the SDK's pipeline raises on error statuses
        return error.response


@pytest.fixture
def client(fake_batch) -> BatchClient:
    return fake_batch.client(retry_backoff_factor=0.01)


@pytest.fixture
def blob_service(azurite) -> BlobServiceClient:
    return BlobServiceClient(azurite.url, credential={"account_name": AZURITE_ACCOUNT,
                                                      "account_key": AZURITE_KEY})


def container_sas_url(azurite, container: str, **permissions: bool) -> str:
    token = generate_container_sas(AZURITE_ACCOUNT, container, account_key=AZURITE_KEY,
                                   permission=ContainerSasPermissions(**permissions),
                                   expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"{azurite.url}/{container}?{token}"


def blob_sas_url(azurite, container: str, blob: str) -> str:
    token = generate_blob_sas(AZURITE_ACCOUNT, container, blob, account_key=AZURITE_KEY,
                              permission="r", expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return f"{azurite.url}/{container}/{blob}?{token}"


@pytest.fixture
def containers(azurite, blob_service):
    """An input container (with blobs) and an empty output container, uniquely named."""
    suffix = uuid.uuid4().hex[:10]
    inputs, results = f"in-{suffix}", f"out-{suffix}"
    source = blob_service.create_container(inputs)
    source.upload_blob("params.txt", b"scale=3\n")
    source.upload_blob("data/a.txt", b"alpha\n")
    source.upload_blob("data/sub/b.txt", b"beta\n")
    source.upload_blob("other/c.txt", b"not wanted\n")
    blob_service.create_container(results)
    return inputs, results


# -- authentication and validation --------------------------------------------------------------

def test_wrong_key_is_refused_with_403_and_nothing_changes(fake_batch):
    wrong = BatchClient(fake_batch.url, AzureNamedKeyCredential(
        fake_batch.account_name, "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="), retry_total=0)
    with pytest.raises(HttpResponseError) as caught:
        make_pool(wrong, "p-wrong")
    assert caught.value.status_code == 403
    assert caught.value.model.code == "AuthenticationFailed"
    assert "string to sign" in error_values(caught.value)["AuthenticationErrorDetail"]
    other_account = BatchClient(fake_batch.url, AzureNamedKeyCredential("someoneelse", fake_batch.account_key))
    with pytest.raises(HttpResponseError) as caught:
        list(other_account.list_pools())
    assert caught.value.status_code == 403
    assert list(fake_batch.client().list_pools()) == []  # the refused create changed nothing
    assert all("authorization" not in r.headers for r in fake_batch.requests)


def test_unsigned_request_gets_401(fake_batch):
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{fake_batch.url}/pools?api-version=2025-06-01")
    assert caught.value.code == 401
    assert json.loads(caught.value.read())["code"] == "InvalidAuthenticationInfo"


@pytest.mark.parametrize("body, code, field", [
    ({"id": "j", "poolInfo": {"poolld": "p"}}, "InvalidRequestBody", "poolInfo.poolld"),
    ({"id": "j", "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "terminate"},
     "InvalidRequestBody", "onAllTasksComplete"),
    ({"id": "j", "poolInfo": {"poolId": "p"}, "priority": "high"}, "InvalidRequestBody", "priority"),
    ({"id": "j"}, "MissingRequiredProperty", "poolInfo"),
    ({"id": "a job", "poolInfo": {"poolId": "p"}}, "InvalidPropertyValue", "id"),
    ({"id": "j", "poolInfo": {"poolId": "p"}, "constraints": {"maxWallClockTime": "1 hour"}},
     "InvalidPropertyValue", "constraints.maxWallClockTime"),
])
def test_invalid_job_body_is_refused_naming_the_field(fake_batch, client, body, code, field):
    response = raw(client, "POST", "/jobs", body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == code
    assert {"key": "PropertyName", "value": field} in error["values"]
    assert error["message"]["lang"] == "en-US"
    assert list(client.list_jobs()) == []


def test_invalid_task_in_a_collection_names_its_index(fake_batch, client):
    make_pool(client, "p1")
    make_job(client, "j1", "p1")
    body = {"value": [{"id": "t1", "commandLine": "true"},
                      {"id": "t2", "commandLine": "true", "outputFiles": [{"filePattern": "*.txt",
                       "destination": {"container": {"containerUrl": "http://x/c"}},
                       "uploadOptions": {"uploadCondition": "always"}}]}]}
    response = raw(client, "POST", "/jobs/j1/addtaskcollection", body)
    assert response.status_code == 400
    assert {"key": "PropertyName", "value": "value[1].outputFiles[0].uploadOptions.uploadCondition"} \
        in response.json()["values"]
    assert list(client.list_tasks("j1")) == []  # nothing of a refused request was added


def test_unknown_api_version_and_unimplemented_operations(fake_batch, client):
    with pytest.raises(HttpResponseError) as caught:
        client.send_request(HttpRequest("GET", "/pools?api-version=2023-05-01.17.0"))
    old = caught.value.response
    assert old.status_code == 400 and old.json()["code"] == "InvalidQueryParameterValue"
    schedules = raw(client, "GET", "/jobschedules")
    assert schedules.status_code == 501 and "JobSchedules_ListJobSchedules" in schedules.json()["message"]["value"]


# -- pools and images -------------------------------------------------------------------------------

def test_supported_images_pools_paging_and_nodes(fake_batch, client):
    images = list(client.list_supported_images())
    docker = [i for i in images if "DockerCompatible" in (i.capabilities or [])]
    assert ("microsoft-dsvm", "ubuntu-hpc", "2404", "batch.node.ubuntu 24.04") in {
        (i.image_reference.publisher, i.image_reference.offer, i.image_reference.sku,
         i.node_agent_sku_id) for i in docker}
    assert not any(i.image_reference.offer == "ubuntu-server-container" for i in images)
    with pytest.raises(HttpResponseError) as caught:  # the retired image: not offered any more
        client.create_pool(bm.BatchPoolCreateOptions(
            id="old", vm_size="standard_d2s_v3", target_dedicated_nodes=1,
            virtual_machine_configuration=vm_configuration(image=RETIRED_IMAGE["imageReference"])))
    assert caught.value.status_code == 400
    assert error_values(caught.value)["PropertyName"] == "virtualMachineConfiguration.imageReference"

    for index in range(3):
        make_pool(client, f"pool-{index}", nodes=2)
    with pytest.raises(ResourceExistsError):
        make_pool(client, "POOL-0")  # ids are unique regardless of case
    assert [p.id for p in client.list_pools(max_results=2)] == ["pool-0", "pool-1", "pool-2"]
    pages = [r for r in fake_batch.requests if r.operation == "Pools_ListPools"]
    assert [r.query.get("$skiptoken") for r in pages] == [None, "2"]

    assert client.pool_exists("pool-1") is True
    with pytest.raises(ResourceNotFoundError):  # azure-batch 15.1.0 raises on 404, never False
        client.pool_exists("nope")
    assert client.get_pool("pool-0").allocation_state == "resizing"
    pool = wait_until(lambda: (p := client.get_pool("pool-0")).allocation_state == "steady" and p)
    assert pool.current_dedicated_nodes == 2 and not pool.resize_errors
    nodes = wait_until(lambda: (n := list(client.list_nodes("pool-0"))) and
                       all(x.state == "idle" for x in n) and n)
    assert len(nodes) == 2 and all(n.is_dedicated for n in nodes)


def test_resize_error_is_visible_on_the_pool(fake_batch, client):
    fake_batch.knobs.resize_error = "AccountCoreQuotaReached"
    make_pool(client, "quota", nodes=4)
    pool = wait_until(lambda: (p := client.get_pool("quota")).allocation_state == "steady" and p)
    assert pool.current_dedicated_nodes == 0 and pool.target_dedicated_nodes == 4
    assert [e.code for e in pool.resize_errors] == ["AccountCoreQuotaReached"]
    assert "quota" in pool.resize_errors[0].message
    assert list(client.list_nodes("quota")) == []


@pytest.mark.parametrize("knob, state", [("start_task_failure", "starttaskfailed"),
                                         ("unusable_nodes", "unusable")])
def test_broken_nodes(fake_batch, client, knob, state):
    setattr(fake_batch.knobs, knob, True)
    make_pool(client, "broken", nodes=2)
    nodes = wait_until(lambda: (n := list(client.list_nodes("broken"))) and
                       all(x.state == state for x in n) and n)
    if state == "starttaskfailed":
        info = nodes[0].start_task_info
        assert info.result == "failure" and info.failure_info.code == "FailureExitCode"
    else:
        assert nodes[0].errors[0].code
    make_job(client, "stuck", "broken")
    client.create_task("stuck", task("t", "true"))
    time.sleep(0.3)
    assert client.get_task("stuck", "t").state == "active"  # no node will ever take it


def test_start_task_really_runs(fake_batch, client):
    make_pool(client, "with-start", nodes=1, start_task=bm.BatchStartTask(
        command_line="/bin/bash -c 'exit 7'", wait_for_success=True))
    node = wait_until(lambda: (n := list(client.list_nodes("with-start"))) and
                      n[0].state == "starttaskfailed" and n[0])
    assert node.start_task_info.exit_code == 7


# -- jobs and tasks, end to end with blob storage --------------------------------------------------

SCRIPT = ("set -e; mkdir -p out/deep; "
          "read line < params.txt; echo \"$AZ_BATCH_TASK_ID $line $GREETING\" > out/result.txt; "
          "cat data/a.txt data/sub/b.txt > out/deep/inputs.txt; echo '{\"ok\": true}' > summary.json; "
          "echo to-stdout; echo to-stderr >&2; test ! -e other")


def test_job_with_three_tasks_downloads_runs_and_uploads(fake_batch, client, azurite, blob_service,
                                                         containers):
    inputs, results = containers
    params_url = blob_sas_url(azurite, inputs, "params.txt")
    read_list = container_sas_url(azurite, inputs, read=True, list=True)
    write_only = container_sas_url(azurite, results, write=True)
    make_pool(client, "p", nodes=2, slots=2)
    make_job(client, "campaign", "p")
    tasks = [task(f"task-{i}", "/bin/bash -c " + shlex.quote(SCRIPT),
                  resource_files=[bm.ResourceFile(http_url=params_url, file_path="params.txt"),
                                  bm.ResourceFile(storage_container_url=read_list, blob_prefix="data/")],
                  environment_settings=[bm.EnvironmentSetting(name="GREETING", value=f"hello{i}")],
                  output_files=[
                      bm.OutputFile(file_pattern="out/**/*.txt", destination=bm.OutputFileDestination(
                          container=bm.OutputFileBlobContainerDestination(
                              path=f"task-{i}/results", container_url=write_only)),
                          upload_options=bm.OutputFileUploadConfiguration(upload_condition="tasksuccess")),
                      bm.OutputFile(file_pattern="summary.json", destination=bm.OutputFileDestination(
                          container=bm.OutputFileBlobContainerDestination(
                              path=f"task-{i}/summary-{i}.json", container_url=write_only)),
                          upload_options=bm.OutputFileUploadConfiguration(upload_condition="taskcompletion")),
                      bm.OutputFile(file_pattern="../std*.txt", destination=bm.OutputFileDestination(
                          container=bm.OutputFileBlobContainerDestination(
                              path=f"task-{i}/logs", container_url=write_only)),
                          upload_options=bm.OutputFileUploadConfiguration(upload_condition="taskcompletion"))],
                  constraints=bm.BatchTaskConstraints(max_task_retry_count=0))
             for i in range(3)]
    result = client.create_task_collection("campaign", bm.BatchTaskGroup(task_values=tasks))
    assert sorted(r.status for r in result.result_values) == ["success"] * 3
    counts = finish_job(client, "campaign", expected=3)
    assert (counts.succeeded, counts.failed, counts.active, counts.running) == (3, 0, 0, 0)
    job = wait_until(lambda: (j := client.get_job("campaign")).state == "completed" and j)
    assert job.execution_info.termination_reason == "AllTasksComplete"

    container = blob_service.get_container_client(results)
    names = sorted(b.name for b in container.list_blobs())
    assert names == sorted(n for i in range(3) for n in (
        f"task-{i}/results/result.txt", f"task-{i}/results/deep/inputs.txt",
        f"task-{i}/summary-{i}.json", f"task-{i}/logs/stdout.txt", f"task-{i}/logs/stderr.txt"))
    assert container.download_blob("task-1/results/result.txt").readall() == b"task-1 scale=3 hello1\n"
    assert container.download_blob("task-2/results/deep/inputs.txt").readall() == b"alpha\nbeta\n"
    assert container.download_blob("task-0/logs/stderr.txt").readall() == b"to-stderr\n"

    done = client.get_task("campaign", "task-0")
    assert done.state == "completed"
    assert (done.execution_info.exit_code, done.execution_info.result) == (0, "success")
    assert done.node_info.pool_id == "p" and done.node_info.node_id
    assert b"".join(client.download_task_file("campaign", "task-0", "stdout.txt")) == b"to-stdout\n"
    assert b"".join(client.download_task_file("campaign", "task-0", "wd/out/result.txt")).startswith(b"task-0")
    files = {f.name: f for f in client.list_task_files("campaign", "task-0", recursive=True)}
    assert {"stdout.txt", "stderr.txt", "wd/params.txt", "wd/data/sub/b.txt",
            "fileuploadout.txt"} <= set(files)
    assert files["wd/data"].is_directory and int(files["stdout.txt"].properties.content_length) == 10

    recorded = fake_batch.task("campaign", "task-2")
    assert recorded.image == IMAGE and recorded.environment == {"GREETING": "hello2"}
    assert recorded.command_line.startswith("/bin/bash -c")
    assert recorded.env_seen["AZ_BATCH_JOB_ID"] == "campaign"
    assert recorded.env_seen["AZ_BATCH_TASK_WORKING_DIR"].endswith("/wd")
    assert {"AZ_BATCH_POOL_ID", "AZ_BATCH_NODE_ID", "AZ_BATCH_TASK_ID"} <= set(recorded.env_seen)
    assert all(u.ok and "?" not in u.blob_url for u in recorded.uploads)


def test_failing_task_reports_failure_info_and_retries(fake_batch, client):
    make_pool(client, "p")
    make_job(client, "j", "p")
    client.create_task("j", task("fails", "/bin/bash -c 'echo oops >&2; exit 3'",
                                 constraints=bm.BatchTaskConstraints(max_task_retry_count=2)))
    client.create_task("j", task("succeeds", "true"))
    with pytest.raises(ResourceExistsError) as caught:
        client.create_task("j", task("FAILS", "true"))
    assert caught.value.model.code == "TaskExists"
    counts = finish_job(client, "j", expected=2)
    assert (counts.succeeded, counts.failed) == (1, 1)
    failed = client.get_task("j", "fails")
    info = failed.execution_info
    assert (info.exit_code, info.result, info.retry_count) == (3, "failure", 2)
    assert info.failure_info.category == "usererror" and info.failure_info.code == "FailureExitCode"
    assert fake_batch.task("j", "fails").exit_codes == [3, 3, 3]
    assert b"".join(client.download_task_file("j", "fails", "stderr.txt")) == b"oops\n"
    only_failed = list(client.list_tasks("j", filter="executionInfo/result eq 'failure'"))
    assert [t.id for t in only_failed] == ["fails"]
    with pytest.raises(ResourceExistsError) as caught:  # a completed job takes no more tasks
        client.create_task("j", task("late", "true"))
    assert caught.value.model.code == "JobCompleted"


def test_injected_task_image_and_upload_failures(fake_batch, client, azurite, containers):
    inputs, results = containers
    fake_batch.knobs.fail_tasks = r"^forced$"
    fake_batch.knobs.image_pull_failure = r"missing-image"
    read_only = container_sas_url(azurite, results, read=True)
    refused = "http://127.0.0.1:9/nowhere?sv=2021-08-06&sig=x"  # nothing listens on port 9

    def uploading(task_id: str, url: str) -> bm.BatchTaskCreateOptions:
        return task(task_id, "/bin/bash -c 'echo data > result.txt'", output_files=[bm.OutputFile(
            file_pattern="result.txt", destination=bm.OutputFileDestination(
                container=bm.OutputFileBlobContainerDestination(container_url=url)),
            upload_options=bm.OutputFileUploadConfiguration(upload_condition="taskcompletion"))])

    make_pool(client, "p")
    make_job(client, "j", "p")
    client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        task("forced", "true"),
        bm.BatchTaskCreateOptions(id="pull", command_line="true", container_settings=bm.BatchTaskContainerSettings(
            image_name="myregistry.azurecr.io/missing-image:1")),
        uploading("refused", refused), uploading("denied", read_only),
        task("no-blob", "true", resource_files=[bm.ResourceFile(
            http_url=f"{azurite.url}/{inputs}/params.txt", file_path="p.txt")]),  # no SAS
        bm.BatchTaskCreateOptions(id="no-container-settings", command_line="true"),
    ]))
    finish_job(client, "j", expected=6)
    codes = {t.id: (t.execution_info.exit_code, t.execution_info.failure_info.code)
             for t in client.list_tasks("j")}
    assert codes == {"forced": (1, "FailureExitCode"), "pull": (None, "ContainerInvalidImage"),
                     "refused": (0, "FileUploadMiscError"), "denied": (0, "FileUploadAccessDenied"),
                     "no-blob": (None, "BlobAccessDenied"),
                     "no-container-settings": (None, "ContainerInvalidSettings")}
    assert fake_batch.task("j", "pull").image == "myregistry.azurecr.io/missing-image:1"
    why = b"".join(client.download_task_file("j", "refused", "fileuploaderr.txt")).decode()
    assert "result.txt" in why and "ConnectionRefusedError" in why


def test_upload_patterns_and_blob_names(tmp_path: Path):
    task_dir = tmp_path / "task"
    wd = task_dir / "wd"
    for name in ("a.txt", "b.csv", ".hidden.txt", "sub/c.txt", "sub/deeper/d.txt", "abc*"):
        (wd / name).parent.mkdir(parents=True, exist_ok=True)
        (wd / name).write_text(name)
    for name in ("stdout.txt", "stderr.txt"):
        (task_dir / name).write_text(name)

    def names(pattern: str, path: str | None = None) -> list[str]:
        return [outputs.blob_name(pattern, path, m) for m in outputs.match(pattern, wd)]

    assert names("*.txt", "out") == ["out/a.txt"]
    assert names("**/*.txt", "out/") == ["out/a.txt", "out/sub/c.txt", "out/sub/deeper/d.txt"]
    assert names("sub/**/*.txt") == ["c.txt", "deeper/d.txt"]
    assert names("sub/c.txt", "renamed.txt") == ["renamed.txt"]
    assert names("sub/c.txt") == ["c.txt"]
    assert names("../std*.txt", "logs") == ["logs/stderr.txt", "logs/stdout.txt"]
    assert names(".*.txt") == [".hidden.txt"]
    assert names("?.csv") == ["b.csv"]
    assert names("abc[*]") == ["abc*"]
    assert names("missing.txt") == []


def test_odata_filter():
    item = {"id": "t1", "state": "completed", "executionInfo": {"result": "failure", "exitCode": 3}}
    assert compile_filter("executionInfo/result eq 'failure'")(item)
    assert compile_filter("state eq 'active' or executionInfo/exitCode gt 2")(item)
    assert not compile_filter("startswith(id, 'x') and state eq 'completed'")(item)
    assert compile_filter("not (state eq 'running')")(item)


# -- throttling, chunking, deletes ---------------------------------------------------------------------

def test_503_at_20_percent_still_lets_the_sdk_finish(fake_batch):
    fake_batch.knobs.busy_fraction = 0.2
    client = fake_batch.client(retry_total=10, retry_backoff_factor=0.01)
    make_pool(client, "busy", nodes=2)
    make_job(client, "busy-job", "busy")
    client.create_tasks("busy-job", [task(f"t{i}", "true") for i in range(30)])
    counts = finish_job(client, "busy-job", expected=30)
    assert counts.succeeded == 30
    busy = [r for r in fake_batch.requests if r.status == 503]
    assert busy and all(r.error_code == "ServerBusy" for r in busy)
    assert len([t for t in fake_batch.tasks if t.job_id == "busy-job"]) == 30  # no duplicates


def test_create_tasks_sends_250_tasks_in_3_chunks(fake_batch, client):
    make_pool(client, "p", nodes=2)
    make_job(client, "many", "p")
    tasks = [task(f"t{i:03d}", "true") for i in range(250)]
    client.create_tasks("many", tasks, max_concurrency=3)
    chunks = [r for r in fake_batch.requests if r.operation == "Tasks_CreateTaskCollection"]
    assert sorted(len(r.body["value"]) for r in chunks) == [50, 100, 100]
    client.create_tasks("many", tasks[:10])  # TaskExists counts as done for the helper
    assert fake_batch.requests[-1].status == 200
    assert len(list(client.list_tasks("many", max_results=100))) == 250
    assert finish_job(client, "many", expected=250).succeeded == 250


def test_collection_limits_and_server_errors(fake_batch, client):
    make_pool(client, "p")
    make_job(client, "j", "p")
    with pytest.raises(HttpResponseError) as caught:
        client.create_task_collection("j", bm.BatchTaskGroup(
            task_values=[task(f"t{i}", "true") for i in range(101)]))
    assert caught.value.status_code == 413 and caught.value.model.code == "RequestBodyTooLarge"
    fake_batch.knobs.collection_servererror = 3
    answer = client.create_task_collection("j", bm.BatchTaskGroup(
        task_values=[task(f"t{i}", "true") for i in range(5)]))
    assert [r.status for r in answer.result_values].count("servererror") == 3
    client.create_tasks("j", [task(f"t{i}", "true") for i in range(5)])  # resubmits those 3
    assert len(list(client.list_tasks("j"))) == 5


def test_auto_pool_lives_as_long_as_its_job(fake_batch, client):
    client.create_job(bm.BatchJobCreateOptions(
        id="auto", all_tasks_complete_mode="noaction",
        pool_info=bm.BatchPoolInfo(auto_pool_specification=bm.BatchAutoPoolSpecification(
            auto_pool_id_prefix="sim", pool_lifetime_option="job", keep_alive=False,
            pool=bm.BatchPoolSpecification(vm_size="standard_d2s_v3", target_dedicated_nodes=1,
                                           virtual_machine_configuration=vm_configuration())))))
    pool_id = client.get_job("auto").execution_info.pool_id
    assert pool_id.startswith("sim_")
    client.create_task("auto", task("t", "true"))
    finish_job(client, "auto", expected=1)
    wait_until(lambda: client.get_job("auto").state == "completed")
    assert client.get_pool(pool_id).state == "deleting"


def test_deletes_go_away_and_kill_running_tasks(fake_batch, client):
    make_pool(client, "p")
    make_job(client, "j", "p")
    client.create_task("j", task("sleeper", "sleep 60"))
    recorded = wait_until(lambda: (t := fake_batch.task("j", "sleeper")).process and t)
    process = recorded.process
    poller = client.begin_delete_job("j", polling_interval=0.05)
    assert client.get_job("j").state == "deleting"
    poller.result()
    assert poller.status() == "Succeeded"
    assert process.wait(timeout=5) != 0  # killed
    with pytest.raises(ResourceNotFoundError):
        client.get_job("j")
    poller = client.begin_delete_pool("p", polling_interval=0.05)
    assert client.get_pool("p").state == "deleting"
    poller.result()
    assert poller.status() == "Succeeded"
    with pytest.raises(ResourceNotFoundError):
        client.get_pool("p")
    deletes = [r for r in fake_batch.requests if r.method == "DELETE"]
    assert [r.status for r in deletes] == [202, 202]


def test_deleting_a_pool_requeues_its_running_tasks(fake_batch, client):
    make_pool(client, "doomed")
    make_job(client, "orphan", "doomed")
    client.create_task("orphan", task("sleeper", "sleep 60"))
    wait_until(lambda: client.get_task("orphan", "sleeper").state == "running")
    client.begin_delete_pool("doomed", polling_interval=0.05).result()
    requeued = wait_until(lambda: (t := client.get_task("orphan", "sleeper")).state == "active" and t)
    assert requeued.execution_info.requeue_count == 1  # and it waits: its pool is gone


def test_requests_are_recorded_for_inspection(fake_batch, client):
    before = fake_batch.request_count
    make_pool(client, "recorded")
    last = fake_batch.requests[-1]
    assert fake_batch.request_count == before + 1
    assert (last.method, last.path, last.operation, last.status) == ("POST", "/pools", "Pools_CreatePool", 201)
    assert last.query["api-version"] == "2025-06-01"
    assert last.body["virtualMachineConfiguration"]["containerConfiguration"]["type"] == "dockerCompatible"
    assert "ocp-date" in last.headers and "authorization" not in last.headers


def test_tasks_run_in_parallel_up_to_the_slots(fake_batch, client):
    make_pool(client, "slots", nodes=1, slots=2)
    make_job(client, "j", "slots")
    client.create_tasks("j", [task(f"t{i}", "sleep 0.3") for i in range(4)])
    most = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts = client.get_job_task_counts("j").task_counts
        most = max(most, counts.running)
        if counts.completed == 4:
            break
        time.sleep(0.02)
    assert most == 2
    node = list(client.list_nodes("slots"))[0]
    assert (node.total_tasks_run, node.total_tasks_succeeded, node.state) == (4, 4, "idle")


def test_terminate_wall_clock_and_job_update_rules(fake_batch, client):
    make_pool(client, "p", nodes=1, slots=2)
    make_job(client, "j", "p")
    client.create_task("j", task("long", "sleep 30"))
    wait_until(lambda: client.get_task("j", "long").state == "running")
    # azure-batch 15.1.0 cannot send a terminate without options (content type None), and does
    # not export BatchJobTerminateOptions: a dict with the spec's field name does it.
    client.begin_terminate_job("j", {"terminateReason": "StoppedByTest"}, polling_interval=0.05).result()
    job = wait_until(lambda: (j := client.get_job("j")).state == "completed" and j)
    assert job.execution_info.termination_reason == "StoppedByTest"
    ended = client.get_task("j", "long").execution_info
    assert ended.result == "failure" and ended.failure_info.code == "TaskEnded"

    client.create_job(bm.BatchJobCreateOptions(
        id="limited", pool_info=bm.BatchPoolInfo(pool_id="p"),
        constraints=bm.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=0.5))))
    client.create_task("limited", task("long", "sleep 30"))
    job = wait_until(lambda: (j := client.get_job("limited")).state == "completed" and j)
    assert job.execution_info.termination_reason == "MaxWallClockTimeExpiry"

    make_job(client, "rules", "p")
    client.create_task("rules", task("busy", "sleep 30"))  # else terminatejob ends it at once
    client.update_job("rules", bm.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob", priority=5))
    with pytest.raises(HttpResponseError) as caught:  # documented: no way back
        client.update_job("rules", bm.BatchJobUpdateOptions(all_tasks_complete_mode="noaction"))
    assert caught.value.status_code == 400 and caught.value.model.code == "InvalidPropertyValue"
    client.replace_job("rules", bm.BatchJob(pool_info=bm.BatchPoolInfo(pool_id="p"),
                                            all_tasks_complete_mode="terminatejob"))
    assert client.get_job("rules").priority == 0  # replace resets what it does not give


def test_latency_knob_slows_every_request(fake_batch, client):
    fake_batch.knobs.latency = 0.05
    start = time.monotonic()
    for _ in range(4):
        list(client.list_pools())
    assert time.monotonic() - start >= 0.2


def test_spec_examples_against_the_validator():
    """Microsoft's request examples pass, except a property the 2025-06-01 spec no longer has."""
    from tests.fake_batch.spec import SPEC_PATH, load_spec
    spec = load_spec()
    operations = {o.operation_id: o for o in spec.operations}
    problems = {}
    for path in sorted((SPEC_PATH.parent / "examples").glob("*.json")):
        example = json.loads(path.read_text())
        operation = operations[example["operationId"]]
        item = spec.document["paths"][operation.template][operation.method.lower()]
        name = next((p["name"] for p in item["parameters"] if p.get("in") == "body"), None)
        if name:
            found = spec.validate_request(example["parameters"][name], operation.body_schema)
            problems[path.stem] = [p.path for p in found]
    assert problems == {"Jobs_CreateJob_Basic": [], "Tasks_CreateTaskCollection_Complex": [],
                        "Tasks_CreateTask_ContainerSettings": [],
                        "Pools_CreatePool_VirtualMachineConfigurationWithExtensions":
                            ["targetNodeCommunicationMode"]}


# -- containers as Batch makes them, and what real nodes and the real service do ----------------

def container_task(task_id: str, image: str, command: str, *, run_options: str | None = None,
                   admin: bool = False, **extra) -> bm.BatchTaskCreateOptions:
    return bm.BatchTaskCreateOptions(
        id=task_id, command_line=command,
        container_settings=bm.BatchTaskContainerSettings(image_name=image,
                                                         container_run_options=run_options),
        user_identity=bm.UserIdentity(auto_user=bm.AutoUserSpecification(
            scope="pool", elevation_level="admin" if admin else "nonadmin")), **extra)


def hub_pool(client: BatchClient, pool_id: str, server: str = "docker.io", password: str | None = None) -> None:
    from tests.azure_settings import FAKE_DOCKER_TOKEN
    client.create_pool(bm.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=1, task_slots_per_node=4,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc",
                                                     sku="2404", version="latest"),
            node_agent_sku_id="batch.node.ubuntu 24.04",
            container_configuration=bm.BatchContainerConfiguration(
                type="dockerCompatible", container_registries=[bm.ContainerRegistryReference(
                    registry_server=server, username="myuser",
                    password=password or FAKE_DOCKER_TOKEN)]))))


def outcome(client: BatchClient, job_id: str, task_id: str) -> tuple:
    done = client.get_task(job_id, task_id)
    info = done.execution_info
    failure = info.failure_info
    detail = " ".join(d.value for d in failure.details or []) if failure else ""
    return info.exit_code, failure.code if failure else None, detail


def test_docker_create_semantics_entrypoint_user_and_no_network(fake_batch, client, azurite):
    hub_pool(client, "p")
    make_job(client, "j", "p")
    topas = "docker.io/myuser/topas:4.0"
    port = azurite.url.split(":")[2].split("/")[0]
    client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        # the image's ENTRYPOINT (TOPAS) gets the command line as its arguments
        container_task("kept", topas, "/bin/sh -c 'echo hi'", admin=True),
        container_task("override", topas, "-c 'id -u; echo hi > x.txt'", run_options="--entrypoint /bin/sh",
                       admin=True),
        container_task("nonadmin", topas, "-c 'id -u; ls /root'", run_options="--entrypoint /bin/sh"),
        container_task("tools", topas, "-c 'command -v unzip || command -v python3 || command -v awk "
                       "|| echo none'", run_options="--entrypoint /bin/sh", admin=True),
        container_task("offline", "python:3.12-slim", "python3 -c \"import socket; "
                       f"socket.create_connection(('127.0.0.1', {port}), 2)\"", admin=True),
    ]))
    finish_job(client, "j", expected=5)
    out = {t.id: b"".join(client.download_task_file("j", t.id, "stdout.txt")).decode()
           for t in client.list_tasks("j")}
    err = {t.id: b"".join(client.download_task_file("j", t.id, "stderr.txt")).decode()
           for t in client.list_tasks("j")}
    assert outcome(client, "j", "kept")[0] == 1 and "'/bin/sh' is not a parameter file" in err["kept"]
    assert outcome(client, "j", "override")[0] == 0 and out["override"] == "0\n"
    assert outcome(client, "j", "nonadmin")[0] != 0 and out["nonadmin"] == "40001\n"
    assert "Permission denied" in err["nonadmin"]
    assert out["tools"] == "none\n"
    assert outcome(client, "j", "offline")[0] == 1 and "Errno" in err["offline"]  # no network


def test_private_images_need_their_registry_named_and_the_right_password(fake_batch, client):
    hub_pool(client, "p")
    hub_pool(client, "wrong", password="nope")
    make_job(client, "j", "p")
    make_job(client, "k", "wrong")
    client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        container_task("short-name", "myuser/topas:4.0", "x"),
        container_task("full-name", "docker.io/myuser/topas:4.0", "-c true", run_options="--entrypoint /bin/sh"),
        container_task("unknown", "docker.io/myuser/nothing:1", "x")]))
    client.create_task("k", container_task("bad-password", "docker.io/myuser/topas:4.0", "x"))
    finish_job(client, "j", expected=3)
    finish_job(client, "k", expected=1)
    assert outcome(client, "j", "full-name") == (0, None, "")
    short = outcome(client, "j", "short-name")
    assert short[1] == "ContainerInvalidImage" and "pull access denied for myuser/topas:4.0" in short[2]
    assert "repository does not exist" in outcome(client, "j", "unknown")[2]
    assert "incorrect username or password" in outcome(client, "k", "bad-password")[2]


def test_job_preparation_runs_once_per_node_on_its_os_before_the_tasks(fake_batch, client):
    make_pool(client, "p", nodes=2, slots=2)
    prep = bm.BatchJobPreparationTask(
        command_line="/bin/sh -c 'echo prepared > ready.txt; command -v unzip'",
        user_identity=bm.UserIdentity(auto_user=bm.AutoUserSpecification(elevation_level="admin")))
    client.create_job(bm.BatchJobCreateOptions(id="j", pool_info=bm.BatchPoolInfo(pool_id="p"),
                                               job_preparation_task=prep))
    command = "/bin/bash -c 'cat \"$AZ_BATCH_JOB_PREP_WORKING_DIR/ready.txt\"'"
    client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        task(f"t{i}", command) for i in range(6)]))
    finish_job(client, "j", expected=6)
    assert all(b"".join(client.download_task_file("j", f"t{i}", "stdout.txt")) == b"prepared\n"
               for i in range(6))
    status = list(client.list_job_preparation_and_release_task_status("j"))
    nodes = {s.node_id for s in status}
    used = {client.get_task("j", f"t{i}").node_info.node_id for i in range(6)}
    assert nodes == used and len(status) <= 2  # once per node that ran tasks
    info = status[0].job_preparation_task_execution_info
    assert (info.result, info.exit_code) == ("success", 0)
    found = b"".join(client.download_node_file("p", status[0].node_id,
                                               f"{info.task_root_directory}/stdout.txt"))
    assert found.strip() == b"/usr/bin/unzip"  # the node's own tools, not an image's


def test_a_failed_job_preparation_keeps_the_tasks_off_the_node(fake_batch, client):
    fake_batch.knobs.job_preparation_failure = True
    make_pool(client, "p", nodes=1)
    client.create_job(bm.BatchJobCreateOptions(id="j", pool_info=bm.BatchPoolInfo(pool_id="p"),
                                               job_preparation_task=bm.BatchJobPreparationTask(
                                                   command_line="/bin/sh -c true")))
    client.create_task("j", task("t", "/bin/bash -c true"))
    status = wait_until(lambda: [s for s in client.list_job_preparation_and_release_task_status("j")
                                 if s.job_preparation_task_execution_info.state == "completed"])
    info = status[0].job_preparation_task_execution_info
    assert info.result == "failure" and info.failure_info.code == "FailureExitCode"
    time.sleep(0.5)
    assert client.get_task("j", "t").state == "active"  # never scheduled on that node
    with pytest.raises(HttpResponseError) as caught:
        client.create_task("j", task("jobpreparation", "true"))
    assert caught.value.error.code == "TaskIdSameAsJobPreparationTask"


def test_auto_pool_nodes_take_their_files_with_them(fake_batch, client):
    client.create_job(bm.BatchJobCreateOptions(
        id="j", all_tasks_complete_mode="noaction", pool_info=bm.BatchPoolInfo(
            auto_pool_specification=bm.BatchAutoPoolSpecification(
                auto_pool_id_prefix="auto", pool_lifetime_option="job", keep_alive=False,
                pool=bm.BatchPoolSpecification(vm_size="standard_d2s_v3",
                                               virtual_machine_configuration=vm_configuration(),
                                               target_dedicated_nodes=1)))))
    client.create_task("j", task("t", "/bin/bash -c 'echo out'"))
    finish_job(client, "j", expected=1)
    wait_until(lambda: client.get_job("j").state == "completed")
    record = fake_batch.task("j", "t")
    wait_until(lambda: not record.task_dir.exists())
    with pytest.raises(HttpResponseError) as caught:
        client.get_task_file_properties("j", "t", "stdout.txt")
    assert caught.value.status_code == 404


def test_node_counts_partial_allocation_and_unusable_nodes(fake_batch, client):
    fake_batch.knobs.unusable_node_count = 1
    make_pool(client, "p", nodes=3)
    wait_until(lambda: len(nodes := list(client.list_nodes("p"))) == 3
               and all(n.state in ("idle", "unusable") for n in nodes))
    [counts] = list(client.list_pool_node_counts(filter="poolId eq 'p'"))
    assert (counts.dedicated.idle, counts.dedicated.unusable, counts.dedicated.total) == (2, 1, 3)
    fake_batch.knobs.unusable_node_count = 0
    fake_batch.knobs.resize_error = "AllocationTimedout"
    fake_batch.knobs.partial_allocation = 1
    make_pool(client, "q", nodes=3)
    pool = wait_until(lambda: (p := client.get_pool("q")).allocation_state == "steady" and p)
    assert pool.resize_errors[0].code == "AllocationTimedout" and pool.current_dedicated_nodes == 1


def test_lagging_counts_and_lost_replies(fake_batch, client):
    from azure.core.exceptions import ServiceResponseError
    make_pool(client, "p", nodes=1, slots=4)
    make_job(client, "j", "p")
    fake_batch.knobs.drop_replies = {"Tasks_CreateTaskCollection": 1}
    with pytest.raises(ServiceResponseError):  # stored, but the reply never came
        client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
            task(f"t{i}", "/bin/bash -c true") for i in range(4)]))
    again = client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        task(f"t{i}", "/bin/bash -c true") for i in range(4)]))
    assert {r.error.code for r in again.result_values} == {"TaskExists"}
    finish_job(client, "j", expected=4)
    fake_batch.knobs.task_counts_lag_polls = 100
    late = client.get_job_task_counts("j").task_counts
    assert (late.active, late.running, late.completed) == (0, 0, 2)  # 2 of 4 counted: stale


def test_throttling_answers_429_with_retry_after(fake_batch, client):
    fake_batch.knobs.throttled_fraction = 1.0
    fake_batch.knobs.retry_after = 0
    answer = raw(fake_batch.client(retry_total=0), "GET", "/pools")
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "0"
