"""The local backend honours the Batch contract: parallel tasks, outputs, logs, failures."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from common import campaign as cp
from common.backends.local import LocalBackend
from common.model import COMPLETION, SUCCESS, InputFile, JobSpec, OutputFile, PoolSpec, TaskSpec
from conftest import stop_local_pools


@pytest.fixture
def backend(tmp_path: Path):
    made = LocalBackend(tmp_path / "root", cpus=2)
    yield made
    stop_local_pools(made.root)


def run_job(backend: LocalBackend, tasks: list[TaskSpec], nodes: int = 2, timeout: float = 30,
            container: str = "box") -> str:
    backend.prepare_pool(PoolSpec("pool", nodes, None, None), lambda _: None)
    backend.submit_job(JobSpec("job", "pool", container, tuple(tasks)), lambda _: None)
    deadline = time.monotonic() + timeout
    while True:
        counts = backend.task_counts("job")
        if counts.active == 0 and counts.running == 0:
            return "job"
        assert time.monotonic() < deadline, f"tasks did not finish: {counts}"
        time.sleep(0.05)


def shell_task(index: int, command: str, outputs: tuple[OutputFile, ...] = (),
               inputs: tuple[InputFile, ...] = ()) -> TaskSpec:
    return TaskSpec(cp.task_id(index), index, command, inputs=inputs, outputs=outputs,
                    environment=(("TASK_INDEX", str(index)),))


def test_tasks_run_in_parallel_but_never_more_than_the_cpus(backend, tmp_path):
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    command = f'date +%s.%N > {stamps}/$TASK_INDEX.start; sleep 0.6; date +%s.%N > {stamps}/$TASK_INDEX.end'
    run_job(backend, [shell_task(i, command) for i in range(1, 7)], nodes=4)
    spans = [(float((stamps / f"{i}.start").read_text()), float((stamps / f"{i}.end").read_text()))
             for i in range(1, 7)]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 2  # 4 nodes asked for, 2 CPUs: two at once, not one, not four
    assert backend.task_counts("job").succeeded == 6


def test_one_node_pool_runs_tasks_one_at_a_time(backend, tmp_path):
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    command = f'date +%s.%N > {stamps}/$TASK_INDEX.start; sleep 0.2; date +%s.%N > {stamps}/$TASK_INDEX.end'
    run_job(backend, [shell_task(i, command) for i in range(1, 4)], nodes=1)
    spans = sorted((float((stamps / f"{i}.start").read_text()), float((stamps / f"{i}.end").read_text()))
                   for i in range(1, 4))
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))


def test_failed_task_reports_exit_code_and_stderr_tail(backend):
    command = 'for i in $(seq 1 30); do echo "line $i" >&2; done; echo "real problem" >&2; exit 3'
    run_job(backend, [shell_task(1, command), shell_task(2, "true")])
    counts = backend.task_counts("job")
    assert (counts.succeeded, counts.failed) == (1, 1)
    [failure] = backend.task_failures("job")
    assert failure.task_id == "task-1" and failure.exit_code == 3
    assert failure.stderr_tail[-1] == "real problem"
    assert len(failure.stderr_tail) == 10  # the end of stderr, not all of it


def test_outputs_follow_patterns_and_upload_conditions(backend):
    outputs = (cp.output_under("*.csv", "nodes_output/run1/", SUCCESS),
               cp.output_under("sub/**/*.dat", "nodes_output/run1/", SUCCESS),
               cp.output_under("exact.txt", "nodes_output/run1/", SUCCESS),
               cp.output_under("../std*.txt", "nodes_output/run1/", COMPLETION))
    command = ("echo a > a.csv; echo b > b.csv; echo no > skip.log; mkdir -p sub/deep; "
               "echo d > sub/deep/x.dat; echo e > exact.txt; echo hello")
    run_job(backend, [shell_task(1, command, outputs)])
    store = backend.blob_store("box")
    names = sorted(b.name for b in store.list_blobs("nodes_output/"))
    assert names == ["nodes_output/run1/a.csv", "nodes_output/run1/b.csv",
                     "nodes_output/run1/deep/x.dat", "nodes_output/run1/exact.txt",
                     "nodes_output/run1/stderr.txt", "nodes_output/run1/stdout.txt"]
    stdout = (store.folder / "nodes_output/run1/stdout.txt").read_text()
    assert stdout == "hello\n"


def test_failed_task_keeps_its_logs_but_not_its_results(backend):
    outputs = (cp.output_under("*.csv", "nodes_output/run1/", SUCCESS),
               cp.output_under("../std*.txt", "nodes_output/run1/", COMPLETION))
    run_job(backend, [shell_task(1, "echo partial > r.csv; echo oops >&2; exit 1", outputs)])
    names = sorted(b.name for b in backend.blob_store("box").list_blobs())
    assert names == ["nodes_output/run1/stderr.txt", "nodes_output/run1/stdout.txt"]


def test_inputs_are_staged_like_resource_files(backend, tmp_path):
    store = backend.blob_store("box")
    store.create()
    for name in ("in.txt", "nodes_output/run1/a.csv", "nodes_output/run2/b.csv"):
        source = tmp_path / "src"
        source.write_text(name)
        with source.open("rb") as handle:
            store.upload_file(handle, name, b"")
    inputs = (InputFile("in.txt"), InputFile("nodes_output/"))
    outputs = (cp.output_under("listing.txt", "out/", SUCCESS),)
    run_job(backend, [shell_task(1, "find . -type f | sort > listing.txt", outputs, inputs)])
    listing = (store.folder / "out/listing.txt").read_text().split()
    assert listing == ["./in.txt", "./listing.txt", "./nodes_output/run1/a.csv",
                       "./nodes_output/run2/b.csv"]


def test_missing_input_fails_the_task_with_a_resource_file_error(backend):
    run_job(backend, [shell_task(1, "true", inputs=(InputFile("absent.zip"),))])
    [failure] = backend.task_failures("job")
    assert failure.failure_code == "ResourceFileDownloadError" and "absent.zip" in failure.failure_message


def test_batch_environment_variables_are_set(backend):
    outputs = (cp.output_under("env.txt", "o/", SUCCESS),)
    command = ('echo "$AZ_BATCH_TASK_ID $AZ_BATCH_JOB_ID $AZ_BATCH_NODE_ID $TASK_INDEX" > env.txt; '
               '[ "$AZ_BATCH_TASK_WORKING_DIR" = "$PWD" ]')
    run_job(backend, [shell_task(7, command, outputs)])
    text = (backend.blob_store("box").folder / "o/env.txt").read_text().split()
    assert text[:2] == ["task-7", "job"] and text[2].startswith("local-node-") and text[3] == "7"
    assert backend.task_counts("job").succeeded == 1


def test_resubmitting_a_job_never_duplicates_tasks(backend):
    tasks = [shell_task(i, "true") for i in (1, 2)]
    run_job(backend, tasks)
    backend.submit_job(JobSpec("job", "pool", "box", tuple(tasks)), lambda _: None)
    assert backend.task_counts("job").total == 2


def test_deleting_the_job_stops_its_running_tasks(backend, tmp_path):
    marker = tmp_path / "finished"
    backend.prepare_pool(PoolSpec("pool", 1, None, None), lambda _: None)
    backend.submit_job(JobSpec("job", "pool", "box", (shell_task(1, f"sleep 30; touch {marker}"),)), lambda _: None)
    deadline = time.monotonic() + 10
    while backend.task_counts("job").running == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    backend.delete_job("job")
    assert time.monotonic() - started < 5
    backend.delete_pool("pool")
    assert not marker.exists() and not (backend.root / "pools" / "pool").exists()


def test_tasks_outlive_the_client_that_submitted_them(backend):
    backend.prepare_pool(PoolSpec("pool", 2, None, None), lambda _: None)
    backend.submit_job(JobSpec("job", "pool", "box", (shell_task(1, "sleep 0.3"),)), lambda _: None)
    later = LocalBackend(backend.root, cpus=2)  # as if the terminal had been closed and reopened
    deadline = time.monotonic() + 10
    while later.task_counts("job").succeeded != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_failed_task_is_retried_up_to_max_retries(backend, tmp_path):
    counter = tmp_path / "attempts"
    command = f'echo x >> {counter}; [ $(wc -l < {counter}) -ge 3 ]'  # succeeds on the 3rd run
    task = TaskSpec("task-1", 1, command, max_retries=2)
    run_job(backend, [task])
    assert backend.task_counts("job").succeeded == 1
    assert counter.read_text().count("x") == 3
