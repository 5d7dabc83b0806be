"""The local backend honours the Batch contract: parallel tasks, outputs, logs, failures."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from common import campaign as cp
from common.backends.local.backend import LocalBackend
from common.model import COMPLETION, SUCCESS, InputFile, JobSpec, OutputFile, PoolSpec, TaskSpec
from conftest import stop_local_pools

pytestmark = pytest.mark.slow  # pool agents are real processes


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


def test_failed_task_reports_exit_code_and_its_stderr_is_in_storage(backend):
    command = 'for i in $(seq 1 30); do echo "line $i" >&2; done; echo "real problem" >&2; exit 3'
    logs = (cp.output_under("../std*.txt", "nodes_output/run1/", COMPLETION),)
    run_job(backend, [shell_task(1, command, logs), shell_task(2, "true")])
    counts = backend.task_counts("job")
    assert (counts.succeeded, counts.failed) == (1, 1)
    [failure] = backend.task_failures("job")
    assert failure.task_id == "task-1" and failure.exit_code == 3
    tail = backend.blob_store("box").read_tail("nodes_output/run1/stderr.txt", 40)
    assert tail.endswith("line 30\nreal problem\n") and "line 1\n" not in tail
    assert backend.blob_store("box").read_tail("nodes_output/run9/stderr.txt") == ""


def test_job_preparation_runs_once_before_the_tasks(backend, tmp_path):
    marks = tmp_path / "preparations"
    prep = TaskSpec("jobpreparation", 0, f"echo x >> {marks}; echo prepared > here.txt")
    command = 'read line < "$AZ_BATCH_JOB_PREP_WORKING_DIR/here.txt"; [ "$line" = prepared ]'
    backend.prepare_pool(PoolSpec("pool", 2, None, None), lambda _: None)
    backend.submit_job(JobSpec("job", "pool", "box", tuple(shell_task(i, command) for i in range(1, 5)),
                               preparation=prep), lambda _: None)
    wait_done(backend)
    assert backend.task_counts("job").succeeded == 4
    assert marks.read_text() == "x\n"  # once, not once per task
    assert backend.preparation_failures("job") == []


def test_failed_job_preparation_fails_the_tasks_and_says_why(backend):
    prep = TaskSpec("jobpreparation", 0, "echo 'no unzip on this node' >&2; exit 127")
    backend.prepare_pool(PoolSpec("pool", 2, None, None), lambda _: None)
    backend.submit_job(JobSpec("job", "pool", "box", (shell_task(1, "true"), shell_task(2, "true")),
                               preparation=prep), lambda _: None)
    wait_done(backend)
    assert backend.task_counts("job").failed == 2
    [failure] = backend.preparation_failures("job")
    assert failure.exit_code == 127 and failure.stderr_tail == ("no unzip on this node",)
    assert {f.failure_code for f in backend.task_failures("job")} == {"JobPreparationFailed"}
    assert "no unzip on this node" in backend.task_failures("job")[0].failure_message


def wait_done(backend: LocalBackend, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (counts := backend.task_counts("job")).active or counts.running:
        assert time.monotonic() < deadline, f"tasks did not finish: {counts}"
        time.sleep(0.05)


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
    # touch first: find and the redirection to sort run at once, and find may come first
    run_job(backend, [shell_task(1, "touch listing.txt; find . -type f | sort > listing.txt", outputs, inputs)])
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


# ---------------------------------------------------------------------------- outputs stay inside


RUN1 = "nodes_output/run1/"


def test_an_output_link_leaving_the_working_directory_is_not_followed(backend, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$hash\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "data.csv").write_text("outside\n")
    outputs = (cp.output_under("*.txt", RUN1, SUCCESS), cp.output_under("sub/*.csv", RUN1, SUCCESS),
               cp.output_under("../std*.txt", RUN1, COMPLETION))
    command = (f"echo kept > real.txt; ln -s real.txt alias.txt; ln -s {secret} leak.txt; "
               f"ln -s {outside} sub")
    run_job(backend, [shell_task(1, command, outputs)])
    store = backend.blob_store("box")
    names = sorted(b.name for b in store.list_blobs())
    assert names == [RUN1 + "alias.txt", RUN1 + "real.txt", RUN1 + "stderr.txt", RUN1 + "stdout.txt"]
    assert (store.folder / RUN1 / "alias.txt").read_text() == "kept\n"  # a link inside: its file
    [failure] = backend.task_failures("job")
    assert failure.failure_code == "FileUploadError"
    assert "leak.txt is a link to" in failure.failure_message
    assert "sub/data.csv is a link to" in failure.failure_message
    blobs = b"".join(p.read_bytes() for p in store.folder.rglob("*") if p.is_file())
    assert b"root:$6$hash" not in blobs and b"outside" not in blobs


def test_an_output_fifo_fails_the_task_instead_of_hanging_the_agent(backend):
    outputs = (cp.output_under("*.dat", RUN1, SUCCESS),)
    run_job(backend, [shell_task(1, "mkfifo pipe.dat; echo x > ok.dat", outputs)])
    [failure] = backend.task_failures("job")
    assert "pipe.dat is a FIFO" in failure.failure_message
    assert [b.name for b in backend.blob_store("box").list_blobs()] == [RUN1 + "ok.dat"]


def test_two_patterns_bringing_files_to_one_name_fail_the_task_naming_both(backend):
    outputs = (cp.output_under("a/*.csv", RUN1, SUCCESS), cp.output_under("b/*.csv", RUN1, SUCCESS),
               cp.output_under("*.log", RUN1, SUCCESS), cp.output_under("x.log", RUN1, SUCCESS))
    command = "mkdir a b; echo A > a/dose.csv; echo B > b/dose.csv; echo same > x.log"
    run_job(backend, [shell_task(1, command, outputs)])
    [failure] = backend.task_failures("job")
    assert failure.failure_code == "FileUploadError"
    assert "'a/*.csv' and 'b/*.csv' both bring a file to 'nodes_output/run1/dose.csv'" in \
        failure.failure_message
    store = backend.blob_store("box")
    # neither dose.csv overwrote the other; one file matched by two patterns is no collision
    assert [b.name for b in store.list_blobs()] == [RUN1 + "x.log"]


# ---------------------------------------------------------------------------- tasks die with the agent


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not yet reaped


def _start_tree(backend, tmp_path) -> tuple[Path, list[int]]:
    """A running task with a child in its own session (out of reach of the task's group)."""
    pids = tmp_path / "pids"
    command = (f"setsid sleep 300 & echo $! >> {pids}; sleep 300 & echo $! >> {pids}; "
               f"echo $$ >> {pids}; wait")
    backend.prepare_pool(PoolSpec("pool", 1, None, None), lambda _: None)
    backend.submit_job(JobSpec("job", "pool", "box", (shell_task(1, command),)), lambda _: None)
    deadline = time.monotonic() + 30
    while not pids.exists() or len(pids.read_text().split()) < 3:
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.05)
    pool = backend.root / "pools" / "pool"
    return pool, [int(p) for p in pids.read_text().split()]


def _wait_dead(pids: list[int]) -> None:
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.05)


def test_a_sigkilled_agent_takes_its_tasks_with_it(backend, tmp_path):
    import os
    import signal
    pool, pids = _start_tree(backend, tmp_path)
    assert all(_alive(p) for p in pids)
    os.kill(int((pool / "agent.pid").read_text()), signal.SIGKILL)
    _wait_dead(pids)  # its reaper killed them, with nobody polling
    counts = backend.task_counts("job")  # a new agent reports the task lost
    deadline = time.monotonic() + 30
    while counts.failed != 1:
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)
        counts = backend.task_counts("job")
    [failure] = backend.task_failures("job")
    assert failure.failure_code == "NodeAgentLost"


@pytest.mark.parametrize("then", ["next-agent", "delete-pool"])
def test_tasks_of_an_agent_killed_with_its_reaper_die_before_being_reported_lost(backend, tmp_path,
                                                                                then):
    import os
    import signal
    pool, pids = _start_tree(backend, tmp_path)
    os.kill(int((pool / "reaper.pid").read_text()), signal.SIGKILL)
    os.kill(int((pool / "agent.pid").read_text()), signal.SIGKILL)
    time.sleep(0.5)  # not an assertion: lets a would-be survivor show itself
    assert any(_alive(p) for p in pids)  # nobody was left to kill them
    if then == "delete-pool":
        backend.delete_pool("pool")
        _wait_dead(pids)
        return
    deadline = time.monotonic() + 30
    while backend.task_counts("job").failed != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _wait_dead(pids)  # the new agent killed them (before reporting the task lost)


def test_an_agent_starting_while_the_client_probes_the_lock_still_starts(backend, tmp_path):
    """The client's liveness probe holds the pool's lock shared for an instant; an agent
    starting in that instant took it for another agent and quit (seen in CI under load)."""
    import fcntl
    import json
    import os
    import subprocess
    import sys
    pool = tmp_path / "probe-pool"
    pool.mkdir()
    (pool / "pool.json").write_text(json.dumps({"pool_id": "probe-pool", "slots": 1, "node_count": 1,
                                                "storage_root": str(tmp_path / "storage")}))
    with (pool / "agent.lock").open("a") as probe:
        fcntl.flock(probe, fcntl.LOCK_SH)
        agent = subprocess.Popen([sys.executable, "-m", "common.backends.local.agent", str(pool)],
                                 cwd=pool, start_new_session=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        time.sleep(0.3)  # the agent is up and trying
        fcntl.flock(probe, fcntl.LOCK_UN)
    deadline = time.monotonic() + 20
    while not backend._agent_alive(pool):
        assert agent.poll() is None, "the agent gave up: it took the probe for another agent"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    agent.terminate()
    agent.wait(timeout=20)
