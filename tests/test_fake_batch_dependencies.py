"""Task dependencies in the fake Batch service (tests/fake_batch/dependencies.py), driven
through azure-batch 15 as the Azure backend drives it: tasks wait for what they depend on,
run in dependency order, are blocked by a failure unless its exit options satisfy them,
task id ranges select integer ids, and the limits the docs give are enforced."""
from __future__ import annotations

import time
from typing import Callable

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError

IMAGE = "myregistry.azurecr.io/sim:1.0"


def wait_until(check: Callable[[], object], timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {check}")


@pytest.fixture
def client(fake_batch) -> BatchClient:
    made = fake_batch.client(retry_backoff_factor=0.01)
    made.create_pool(bm.BatchPoolCreateOptions(
        id="p", vm_size="standard_d2s_v3", target_dedicated_nodes=2, task_slots_per_node=4,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(publisher="microsoft-dsvm", offer="ubuntu-hpc",
                                                     sku="2404", version="latest"),
            node_agent_sku_id="batch.node.ubuntu 24.04")))
    return made


def make_job(client: BatchClient, job_id: str = "j", dependencies: bool = True, **extra) -> None:
    client.create_job(bm.BatchJobCreateOptions(
        id=job_id, pool_info=bm.BatchPoolInfo(pool_id="p"), all_tasks_complete_mode="noaction",
        uses_task_dependencies=dependencies or None, **extra))


def task(task_id: str, script: str = "true", ids: tuple[str, ...] = (),
         ranges: tuple[tuple[int, int], ...] = (), **extra) -> bm.BatchTaskCreateOptions:
    depends = bm.BatchTaskDependencies(
        task_ids=list(ids) or None,
        task_id_ranges=[bm.BatchTaskIdRange(start=a, end=b) for a, b in ranges] or None)
    return bm.BatchTaskCreateOptions(id=task_id, command_line=f"/bin/sh -c '{script}'",
                                     depends_on=depends if ids or ranges else None, **extra)


def add(client: BatchClient, *tasks: bm.BatchTaskCreateOptions, job_id: str = "j") -> list:
    return client.create_task_collection(job_id, bm.BatchTaskGroup(task_values=list(tasks))).result_values


def completed(client: BatchClient, *ids: str, job_id: str = "j") -> bool:
    return all(client.get_task(job_id, i).state == "completed" for i in ids)


def record(fake_batch, task_id: str, job_id: str = "j"):
    return fake_batch.task(job_id, task_id)


def error_code(caught: pytest.ExceptionInfo) -> str:
    return caught.value.error.code


def test_a_task_waits_for_its_dependencies_and_runs_after_them(fake_batch, client):
    make_job(client)
    # Added dependants first: the service schedules by readiness, not by order of addition.
    add(client, task("merge", "echo merged", ids=("a", "B")), task("a", "sleep 0.6"),
        task("b", "sleep 0.2"))
    wait_until(lambda: client.get_task("j", "b").state == "completed")
    assert client.get_task("j", "merge").state == "active"  # "a" still runs
    wait_until(lambda: completed(client, "merge"))
    merge, a, b = (record(fake_batch, i) for i in ("merge", "a", "b"))
    assert merge.start_time >= max(a.end_time, b.end_time)  # ids are case-insensitive ("B")
    assert merge.result == "success"
    view = client.get_task("j", "merge")
    assert view.depends_on.task_ids == ["a", "B"]
    assert client.get_job("j").uses_task_dependencies is True


def test_a_failed_dependency_blocks_its_dependants_for_ever(fake_batch, client):
    make_job(client)
    add(client, task("leaf", "echo broken >&2; exit 3"), task("mid", ids=("leaf",)),
        task("root", ids=("mid",)), task("fine"), task("after-fine", ids=("fine",)))
    wait_until(lambda: completed(client, "leaf", "after-fine"))
    client.update_job("j", bm.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    time.sleep(0.6)
    counts = client.get_job_task_counts("j").task_counts
    assert (counts.active, counts.failed, counts.succeeded) == (2, 1, 2)
    assert client.get_job("j").state == "active"  # blocked tasks never complete: nor does the job
    for blocked in ("mid", "root"):
        assert record(fake_batch, blocked).start_time is None  # never ran
    # Removing the blocked tasks lets the job end by itself.
    client.delete_task("j", "root")
    client.delete_task("j", "mid")
    wait_until(lambda: client.get_job("j").state == "completed")


def test_exit_conditions_decide_whether_a_failure_satisfies(fake_batch, client):
    make_job(client)
    satisfy = bm.ExitOptions(dependency_action="satisfy")
    block = bm.ExitOptions(dependency_action="block")
    add(client,
        task("code3", "exit 3", exit_conditions=bm.ExitConditions(
            exit_codes=[bm.ExitCodeMapping(code=3, exit_options=satisfy)])),
        task("ranged", "exit 7", exit_conditions=bm.ExitConditions(
            exit_code_ranges=[bm.ExitCodeRangeMapping(start=5, end=9, exit_options=satisfy)],
            default=block)),
        task("default", "exit 1", exit_conditions=bm.ExitConditions(default=satisfy)),
        task("zero-blocks", "exit 0", exit_conditions=bm.ExitConditions(
            exit_codes=[bm.ExitCodeMapping(code=0, exit_options=block)])),
        task("other-code", "exit 4", exit_conditions=bm.ExitConditions(
            exit_codes=[bm.ExitCodeMapping(code=3, exit_options=satisfy)])),
        task("after-code3", ids=("code3",)), task("after-ranged", ids=("ranged",)),
        task("after-default", ids=("default",)), task("after-zero", ids=("zero-blocks",)),
        task("after-other", ids=("other-code",)))
    wait_until(lambda: completed(client, "after-code3", "after-ranged", "after-default"))
    time.sleep(0.4)
    assert client.get_task("j", "after-zero").state == "active"  # exit 0 listed as block
    assert client.get_task("j", "after-other").state == "active"  # exit 4: the default, block


def test_a_failure_to_start_or_to_upload_has_its_own_exit_options(fake_batch, client, azurite):
    make_job(client)
    unreachable = bm.ResourceFile(http_url=f"{azurite.url}/nowhere/missing.txt", file_path="x")
    upload = bm.OutputFile(file_pattern="out.txt", destination=bm.OutputFileDestination(
        container=bm.OutputFileBlobContainerDestination(container_url=f"{azurite.url}/nowhere")),
        upload_options=bm.OutputFileUploadConfiguration(upload_condition="taskcompletion"))
    satisfy = bm.ExitOptions(dependency_action="satisfy")
    add(client,
        task("no-input", resource_files=[unreachable],
             exit_conditions=bm.ExitConditions(pre_processing_error=satisfy)),
        task("no-upload", "echo x > out.txt", output_files=[upload],
             exit_conditions=bm.ExitConditions(file_upload_error=satisfy)),
        task("no-input-default", resource_files=[unreachable]),
        task("after-input", ids=("no-input",)), task("after-upload", ids=("no-upload",)),
        task("after-input-default", ids=("no-input-default",)))
    wait_until(lambda: completed(client, "after-input", "after-upload", "no-input-default"))
    assert record(fake_batch, "no-input").exit_code is None  # it never started
    assert record(fake_batch, "no-upload").failure_info["code"].startswith("FileUpload")
    time.sleep(0.3)
    assert client.get_task("j", "after-input-default").state == "active"


def test_task_id_ranges_select_integer_ids_leading_zeros_ignored(fake_batch, client):
    make_job(client)
    add(client, task("1"), task("02", "sleep 0.3"), task("5flamingoes", "exit 1"),
        task("4", "sleep 0.1"), task("004", "sleep 0.8; exit 1"),
        task("upto3", ranges=((1, 3),)), task("four", ranges=((4, 4),)),
        task("both", ranges=((1, 2), (4, 4))), task("none-there", ranges=((100, 200),)))
    wait_until(lambda: completed(client, "upto3", "four", "both", "none-there"))
    assert record(fake_batch, "upto3").start_time >= record(fake_batch, "02").end_time
    # "4" and "004" are both task 4: the first to complete ("4", a success) decides
    late = record(fake_batch, "004").end_time
    assert late is None or record(fake_batch, "four").start_time < late
    assert record(fake_batch, "none-there").result == "success"  # a range selecting nothing


def test_dependencies_need_a_job_that_uses_them(fake_batch, client):
    make_job(client, "plain", dependencies=False)
    with pytest.raises(HttpResponseError) as caught:
        client.create_task("plain", task("t", ids=("a",)))
    assert caught.value.status_code == 400
    assert error_code(caught) == "TaskDependenciesNotSpecifiedOnJob"
    results = add(client, task("ok"), task("t", ids=("ok",)), job_id="plain")
    assert [(r.task_id, r.status) for r in results] == [("ok", "success"), ("t", "clienterror")]
    assert results[1].error.code == "TaskDependenciesNotSpecifiedOnJob"
    with pytest.raises(HttpResponseError) as caught:  # dependencyAction needs them too
        client.create_task("plain", task("x", exit_conditions=bm.ExitConditions(
            default=bm.ExitOptions(dependency_action="satisfy"))))
    assert (caught.value.status_code, error_code(caught)) == (400, "InvalidPropertyValue")


def test_the_documented_limits(fake_batch, client):
    make_job(client)
    ids = tuple(f"{n:064d}" for n in range(1001))  # 64,064 characters of ids
    with pytest.raises(HttpResponseError) as caught:
        client.create_task("j", task("long", ids=ids))
    assert (caught.value.status_code, error_code(caught)) == (400, "TaskDependencyListTooLong")
    client.create_task("j", task("just", ids=ids[:1000]))  # 64,000: accepted
    fake_batch.knobs.max_dependency_ranges = 2
    with pytest.raises(HttpResponseError) as caught:
        client.create_task("j", task("ranges", ranges=((1, 1), (3, 3), (5, 5))))
    assert error_code(caught) == "TaskDependencyRangesTooLong"
    with pytest.raises(HttpResponseError) as caught:
        client.create_task("j", task("bad-id", ids=("not an id",)))
    assert error_code(caught) == "InvalidPropertyValue"
    with pytest.raises(HttpResponseError) as caught:
        client.create_task("j", task("backwards", ranges=((5, 1),)))
    assert error_code(caught) == "InvalidPropertyValue"


def test_job_actions_of_failed_tasks(fake_batch, client):
    make_job(client, "noaction")
    with pytest.raises(HttpResponseError) as caught:  # onTaskFailure noaction: no jobAction
        client.create_task("noaction", task("t", exit_conditions=bm.ExitConditions(
            default=bm.ExitOptions(job_action="terminate"))))
    assert (caught.value.status_code, error_code(caught)) == (400, "InvalidPropertyValue")
    make_job(client, "acting", task_failure_mode="performexitoptionsjobaction")
    add(client, task("tolerated", "exit 2", exit_conditions=bm.ExitConditions(
        default=bm.ExitOptions(job_action="none"))), job_id="acting")
    wait_until(lambda: completed(client, "tolerated", job_id="acting"))
    time.sleep(0.3)
    assert client.get_job("acting").state == "active"
    add(client, task("fatal", "exit 2"), task("slow", "sleep 30"), job_id="acting")
    job = wait_until(lambda: (j := client.get_job("acting")).state == "completed" and j)
    assert job.execution_info.termination_reason == "TaskFailed"  # the default for a failure
    assert record(fake_batch, "slow", "acting").failure_info["code"] == "TaskEnded"
