"""The fake Batch service forgives nothing the real one would not — driven through the SDK.

Each test holds the fake to one sentence of Microsoft's spec (2025-06-01) or docs, and fails
against a fake that forgives it (a shell around every command line, the job preparation's
variables everywhere, one shared user, the whole node mounted into every container, a Spot
node that keeps its disk):

a. BatchTaskCreateOptions.commandLine: "The command line does not run under a shell";
b. "Azure Batch runtime environment variables": AZ_BATCH_JOB_PREP_WORKING_DIR is for "all
   tasks except start task and job preparation task";
c. BatchTaskCreateOptions.userIdentity: "If omitted, the Task runs as a non-administrative
   user unique to the Task";
d. BatchTaskContainerSettings.containerHostBatchBindMounts: absent, the whole
   AZ_BATCH_NODE_ROOT_DIR; empty, nothing;
e. "Use Spot VMs with Batch workloads": a preempted node's VM is deleted; the node Batch
   brings back runs the job preparation task again, before any task of the job.
"""
from __future__ import annotations

import azure.batch.models as bm

from test_fake_batch import (client, finish_job, make_job, make_pool, outcome, task,  # noqa: F401
                             vm_configuration, wait_until)

ADMIN = bm.UserIdentity(auto_user=bm.AutoUserSpecification(scope="pool", elevation_level="admin"))


def stdout(client, job_id: str, task_id: str) -> str:
    return b"".join(client.download_task_file(job_id, task_id, "stdout.txt")).decode()


def host_task(task_id: str, command: str, **extra) -> bm.BatchTaskCreateOptions:
    return bm.BatchTaskCreateOptions(id=task_id, command_line=command, **extra)


def prepared_job(client, job_id: str, pool_id: str, command: str) -> None:
    client.create_job(bm.BatchJobCreateOptions(
        id=job_id, pool_info=bm.BatchPoolInfo(pool_id=pool_id), all_tasks_complete_mode="noaction",
        job_preparation_task=bm.BatchJobPreparationTask(command_line=command, user_identity=ADMIN)))


def test_a_command_line_is_execd_not_run_by_a_shell(fake_batch, client):
    make_pool(client, "p", containers=False)
    make_job(client, "j", "p")
    client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        host_task("bare", "echo $AZ_BATCH_TASK_ID > out.txt && echo more"),
        host_task("shell", "/bin/sh -c 'echo $AZ_BATCH_TASK_ID > out.txt && echo more'")]))
    finish_job(client, "j", expected=2)
    # no expansion, no redirection, no &&: echo got them as its arguments
    assert stdout(client, "j", "bare") == "$AZ_BATCH_TASK_ID > out.txt && echo more\n"
    assert not (fake_batch.task("j", "bare").task_dir / "wd" / "out.txt").exists()
    assert stdout(client, "j", "shell") == "more\n"
    assert (fake_batch.task("j", "shell").task_dir / "wd" / "out.txt").read_text() == "shell\n"


def test_b_the_preparation_folder_is_named_to_the_tasks_not_to_the_preparation(fake_batch, client):
    make_pool(client, "p", nodes=1)
    prepared_job(client, "j", "p", "/bin/sh -c 'echo \"prep:${AZ_BATCH_JOB_PREP_WORKING_DIR:-unset}\"'")
    client.create_task("j", task("t", "/bin/bash -c 'test -d \"$AZ_BATCH_JOB_PREP_WORKING_DIR\" "
                                      "&& echo \"$AZ_BATCH_JOB_PREP_WORKING_DIR\"'"))
    finish_job(client, "j", expected=1)
    assert outcome(client, "j", "t")[0] == 0
    assert stdout(client, "j", "t").strip().endswith("/jobpreparation/wd")
    [status] = client.list_job_preparation_and_release_task_status("j")
    info = status.job_preparation_task_execution_info
    prep_out = b"".join(client.download_node_file("p", status.node_id,
                                                  f"{info.task_root_directory}/stdout.txt"))
    assert prep_out == b"prep:unset\n"


def test_c_a_task_without_user_identity_is_its_own_user_and_reads_the_prepared_files(fake_batch,
                                                                                    client):
    make_pool(client, "p", nodes=1)
    prepared_job(client, "j", "p", "/bin/sh -c 'echo prepared > made.txt'")
    command = "/bin/bash -c 'id -u; cat \"$AZ_BATCH_JOB_PREP_WORKING_DIR/made.txt\"'"
    client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        task("one", command), task("two", command),
        task("pooled", command, user_identity=bm.UserIdentity(auto_user=bm.AutoUserSpecification(
            scope="pool", elevation_level="nonadmin")))]))
    finish_job(client, "j", expected=3)
    out = {t: stdout(client, "j", t).split() for t in ("one", "two", "pooled")}
    assert all(outcome(client, "j", t)[0] == 0 for t in out), out
    assert all(lines[1] == "prepared" for lines in out.values())
    uids = {t: int(lines[0]) for t, lines in out.items()}
    assert uids["pooled"] == 40001  # the pool's non-admin auto-user
    assert len({uids["one"], uids["two"], uids["pooled"], 0}) == 4  # each its own, none root


def test_d_container_bind_mounts_are_honoured_and_an_empty_list_mounts_nothing(fake_batch, client):
    make_pool(client, "p", nodes=1)
    prepared_job(client, "j", "p", "/bin/sh -c 'echo prepared > made.txt'")
    look = ("/bin/bash -c 'cat \"$AZ_BATCH_JOB_PREP_WORKING_DIR/made.txt\" 2>/dev/null || echo unseen; "
            "touch \"$AZ_BATCH_JOB_PREP_WORKING_DIR/new\" 2>/dev/null && echo wrote || echo kept; "
            "test -d \"$AZ_BATCH_NODE_ROOT_DIR/shared\" && echo shared || echo no-shared'")

    def mounted(task_id: str, entries) -> bm.BatchTaskCreateOptions:
        made = task(task_id, look, user_identity=ADMIN)
        made.container_settings.container_host_batch_bind_mounts = entries
        return made
    client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        mounted("whole-node", None), mounted("nothing", []),
        mounted("prep-read-only", [bm.ContainerHostBatchBindMountEntry(source="JobPrep",
                                                                        is_read_only=True)])]))
    finish_job(client, "j", expected=3)
    assert stdout(client, "j", "whole-node").split() == ["prepared", "wrote", "shared"]
    assert stdout(client, "j", "nothing").split() == ["unseen", "kept", "no-shared"]
    assert stdout(client, "j", "prep-read-only").split() == ["prepared", "kept", "no-shared"]


def test_e_preempted_spot_nodes_come_back_empty_and_prepare_again(fake_batch, client):
    knobs = fake_batch.knobs
    knobs.preemptions, knobs.preempt_after = 1, 0.5
    knobs.preempt_nodes, knobs.preemption_lasts = 2, 0.5  # two of three at once
    make_pool(client, "p", nodes=0, slots=1, target_low_priority_nodes=3)
    # refuses to run on a disk that kept its earlier life: the marker must be gone
    prepared_job(client, "j", "p", "/bin/sh -c 'test ! -e \"$AZ_BATCH_NODE_SHARED_DIR/marker\" "
                                   "|| exit 9; mkdir -p \"$AZ_BATCH_NODE_SHARED_DIR\"; "
                                   "touch \"$AZ_BATCH_NODE_SHARED_DIR/marker\"'")
    client.create_task_collection("j", bm.BatchTaskGroup(task_values=[
        task(f"t{i}", "/bin/bash -c 'sleep 1.5'") for i in range(5)]))
    finish_job(client, "j", expected=5, timeout=30)
    assert all(outcome(client, "j", f"t{i}")[0] == 0 for i in range(5))
    runs = fake_batch.preparation_runs
    assert all(r.result == "success" for r in runs), runs
    again = {r.node_id for r in runs if r.incarnation == 2}
    assert len(again) == 2  # both preempted nodes, re-created, prepared again
    assert sum(t.requeue_count for t in fake_batch.tasks) >= 1
    pool = client.get_pool("p")
    assert (pool.current_low_priority_nodes, pool.target_low_priority_nodes) == (3, 3)
    nodes = list(client.list_nodes("p"))
    assert all(n.state in ("idle", "running") for n in nodes)
    assert sorted(n.last_boot_time > n.allocation_time for n in nodes) == [False, True, True]
