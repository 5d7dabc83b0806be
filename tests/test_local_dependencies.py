"""Task dependencies on the local backend: the agent starts a task once what it depends on
has succeeded, keeps one a failure blocks active without running it, drops it from the
counts when it is removed, and refuses dependencies in a job not made for them; and the
pure verdict (common/backends/local/waiting.py) with ids and integer id ranges."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from common.backends.local import layout as lay
from common.backends.local.backend import LocalBackend
from common.backends.local.waiting import BLOCKED, READY, WAIT, Outcome, verdict
from common.errors import ToolError
from common.model import JobSpec, PoolSpec, TaskSpec
from conftest import stop_local_pools

pytestmark = pytest.mark.slow  # pool agents are real processes


@pytest.fixture
def backend(tmp_path: Path):
    made = LocalBackend(tmp_path / "root", cpus=2)
    made.prepare_pool(PoolSpec("pool", 2, None, None), lambda _: None)
    yield made
    stop_local_pools(made.root)


def task(task_id: str, command: str = "true", after: tuple[str, ...] = (),
         ranges: tuple[tuple[int, int], ...] = ()) -> TaskSpec:
    return TaskSpec(task_id, 0, command, depends_on=after, depends_on_ranges=ranges)


def submit(backend: LocalBackend, *tasks: TaskSpec, dependencies: bool = True) -> None:
    backend.submit_job(JobSpec("job", "pool", "box", tasks, task_dependencies=dependencies),
                       lambda _: None)


def state(backend: LocalBackend, task_id: str) -> dict:
    return lay.read_json(backend.root / "pools/pool/jobs/job/tasks" / task_id / "state.json") or {}


def wait_for(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def test_tasks_start_after_what_they_depend_on(backend):
    submit(backend, task("root", "true", after=("left", "right")),
           task("left", "sleep 0.5"), task("right", "sleep 0.1"), task("7", "true"),
           task("seven", "true", ranges=((5, 9),)))
    wait_for(lambda: backend.task_counts("job").succeeded == 5)
    started = state(backend, "root")["start_time"]
    assert started >= max(state(backend, "left")["end_time"], state(backend, "right")["end_time"])
    assert state(backend, "seven")["start_time"] >= state(backend, "7")["end_time"]


def test_a_failure_blocks_its_dependants_until_they_are_removed(backend):
    submit(backend, task("leaf", "exit 4"), task("mid", after=("leaf",)),
           task("top", after=("mid",)), task("other", "sleep 0.3"))
    wait_for(lambda: backend.task_counts("job").completed == 2)
    time.sleep(0.3)
    counts = backend.task_counts("job")
    assert (counts.active, counts.failed, counts.succeeded) == (2, 1, 1)
    assert state(backend, "mid") == {"state": "active", "blocked_by": ["leaf"]}
    assert "start_time" not in state(backend, "top")  # blocked through mid: never ran
    assert backend.job_state("job") == "active"
    assert sorted(backend.active_task_ids("job")) == ["mid", "top"]
    backend.delete_tasks("job", ["mid", "top"])
    wait_for(lambda: backend.task_counts("job").active == 0)
    assert backend.job_state("job") == "completed"


def test_dependencies_need_a_job_made_for_them(backend):
    with pytest.raises(ToolError, match="was not made with task dependencies"):
        submit(backend, task("a"), task("b", after=("a",)), dependencies=False)
    assert not (backend.root / "pools/pool/jobs/job").exists()


def test_task_json_keeps_the_dependencies(tmp_path):
    spec = task("x", after=("a", "b"), ranges=((1, 3),))
    assert lay.task_from_json(json.loads(json.dumps(lay.task_to_json(spec)))) == spec


def done(ok: bool, at: float = 0.0) -> Outcome:
    return Outcome(ok, at)


def test_verdict_by_ids_and_integer_ranges():
    job = ["a", "B", "1", "02", "002", "5flamingoes", "-3"]
    assert verdict(task("t", after=("a", "b")), job, {"a": done(True)}) == (WAIT, ())
    assert verdict(task("t", after=("A", "b")), job, {"a": done(True), "b": done(True)}) == (READY, ())
    assert verdict(task("t", after=("a", "b")), job, {"a": done(False), "b": done(True)}) == (BLOCKED, ("a",))
    assert verdict(task("t", after=("nothere",)), job, {}) == (WAIT, ())
    # 1..2 selects "1", "02" and "002" (all task 2: the first of them to end decides),
    # never "5flamingoes"
    ranged = task("t", ranges=((1, 2),))
    assert verdict(ranged, job, {"1": done(True)}) == (WAIT, ())
    assert verdict(ranged, job, {"1": done(True), "002": done(True, 1.0),
                                 "5flamingoes": done(False)}) == (READY, ())
    assert verdict(ranged, job, {"1": done(True), "02": done(False, 2.0),
                                 "002": done(True, 1.0)}) == (READY, ())
    assert verdict(ranged, job, {"1": done(True), "02": done(False, 0.5),
                                 "002": done(True, 1.0)}) == (BLOCKED, ("02",))
    assert verdict(task("t", ranges=((-5, -1),)), job, {"-3": done(True)}) == (READY, ())
    assert verdict(task("t", ranges=((100, 200),)), job, {}) == (READY, ())  # selects nothing
