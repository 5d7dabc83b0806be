"""The backend contract (common/backends/base.py), one body of tests run against every backend:
the local one (processes and folders), the Azure one (the fake Batch service and Azurite,
over HTTP) and the in-memory stub (tests/support/memory_backend.py). A new backend joins
by adding a fixture parameter here; what passes for all of them is what the workflow may
rely on.

Each scenario is built with the product's own builders (common/campaign.py), so the tasks
are the ones a campaign sends: a job preparation task unpacks the simulation folder, each
task runs its script, outputs and logs reach the container by the tasks' output rules.
"""
from __future__ import annotations

import io
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from common import campaign as cp
from common.backends import get_backend
from common.backends.base import Backend, BlobStore, Capabilities
from common.config import Settings, load_settings
from common.errors import ToolError
from common.model import JobSpec, TaskCounts, TaskSpec
from common.packaging import build_archive
from common.transfer import md5_of, upload_if_changed
from conftest import AZURITE_ACCOUNT, AZURITE_KEY, stop_local_pools, write_json
from tests.azure_settings import FAKE_DOCKER_TOKEN
from tests.support.images import TOPAS_IMAGE
from tests.support.memory_backend import MemoryBackend, TaskRun

# POSIX sh only: the Azure tasks run in an image with dash and coreutils alone.
RUN_SH = """#!/bin/sh
echo "task $1 seed $SIM_SEED"
if [ "$1" = "1" ]; then sleep "${SLOW_FIRST:-0}"; fi
if [ "$1" = "3" ]; then echo "task 3 broke" >&2; exit 4; fi
echo "value $1" > "out_$1.txt"
"""


def behave_like_run_sh(task: TaskSpec) -> TaskRun:
    """The stub's stand-in for RUN_SH."""
    i = task.index
    if i == 3:
        return TaskRun(exit_code=4, stdout="task 3\n", stderr="task 3 broke\n")
    return TaskRun(files={f"out_{i}.txt": f"value {i}\n".encode()}, stdout=f"task {i}\n")


class Scenario:
    """One backend with a campaign's settings, its container holding the simulation."""

    def __init__(self, backend: Backend, settings: Settings, wait_step: float) -> None:
        self.backend, self.settings, self.wait_step = backend, settings, wait_step
        self.ids = cp.CampaignIds(settings.sim.sim_id, time.strftime("%Y%m%d%H%M%S"))
        self.store = backend.blob_store(self.ids.container)

    def upload_simulation(self) -> None:
        self.store.create()
        with io.BytesIO() as handle:
            build_archive(self.settings.sim.local_sim_path, handle)
            upload_if_changed(self.store, handle, cp.SIM_ARCHIVE_BLOB)
        upload_if_changed(self.store, self.settings.sim.path, cp.SIMCONFIG_BLOB)

    def job(self, indices: tuple[int, ...], **changes) -> JobSpec:
        return replace(cp.worker_job(self.settings, self.ids, indices=indices), **changes)

    def start(self, job: JobSpec) -> str:
        self.upload_simulation()
        if job.auto_pool is None:
            self.backend.prepare_pool(cp.worker_pool(self.settings, self.ids), lambda _: None)
        return self.backend.submit_job(job, lambda _: None)

    def until(self, job_id: str, done: Callable[[TaskCounts], bool], seconds: float = 120) -> TaskCounts:
        deadline = time.monotonic() + seconds
        while True:
            counts = self.backend.task_counts(job_id, exact=True)
            if done(counts):
                return counts
            assert time.monotonic() < deadline, f"still {counts} after {seconds} s"
            time.sleep(self.wait_step)


def _campaign_files(root: Path, **sim) -> Path:
    folder = root / "sim"
    folder.mkdir(parents=True)
    (folder / "run.sh").write_text(RUN_SH)
    (folder / "run.sh").chmod(0o755)
    return write_json(root / "simconfig.json", {
        "SIM_ID": f"ct-{uuid.uuid4().hex[:8]}", "POOL_NODE_COUNT": 2, "TASK_COUNT": 3,
        "POOL_VM_SIZE": "STANDARD_D2S_V3", "LOCAL_SIM_PATH": "sim", "RUN_SCRIPT": "run.sh",
        "OUTPUT_FILE_PATTERNS": ["out_*.txt"], "TIMEOUT_MINUTES": 5, **sim})


@pytest.fixture(params=["memory", pytest.param("local", marks=pytest.mark.slow),
                        pytest.param("azure", marks=pytest.mark.slow)])
def scenario(request, tmp_path, monkeypatch):
    """A Scenario per backend; `AUTO_DELETE_POOL` false, so pools are named and prepared."""
    kind = request.param
    simconfig = _campaign_files(tmp_path, AUTO_DELETE_POOL=False)
    if kind == "memory":
        write_json(tmp_path / "appconfig.json", {"BACKEND": "local"})
        yield Scenario(MemoryBackend(behave_like_run_sh), load_settings(simconfig, env={}), 0)
        return
    if kind == "local":
        write_json(tmp_path / "appconfig.json", {"BACKEND": "local",
                                                 "LOCAL_STORAGE_PATH": str(tmp_path / "local")})
        settings = load_settings(simconfig, env={})
        backend = get_backend(settings)
        yield Scenario(backend, settings, 0.1)
        stop_local_pools(tmp_path / "local")
        return
    azurite, fake = request.getfixturevalue("azurite"), request.getfixturevalue("fake_batch")
    monkeypatch.setenv("BATCH_TOOL_POLL_SECONDS", "0.2")
    write_json(tmp_path / "appconfig.json", {
        "BACKEND": "azure", "STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
        "STORAGE_ACCOUNT_KEY": AZURITE_KEY, "STORAGE_ACCOUNT_URL": azurite.url,
        "BATCH_ACCOUNT_NAME": fake.account_name, "BATCH_ACCOUNT_KEY": fake.account_key,
        "BATCH_ACCOUNT_URL": fake.url, "WORKER_DOCKER_IMAGE": TOPAS_IMAGE,
        "REDUCER_DOCKER_IMAGE": "python:3.12-slim", "DOCKER_USER": "myuser",
        "DOCKER_TOKEN": FAKE_DOCKER_TOKEN})
    settings = load_settings(simconfig, env={})
    backend = get_backend(settings)
    yield Scenario(backend, settings, 0.2)
    backend.close()


# ---------------------------------------------------------------------------- storage


def test_the_blob_store_keeps_what_it_is_given(scenario, tmp_path):
    store: BlobStore = scenario.store
    assert not store.exists()
    assert store.list_blobs() == []
    assert store.create() is True and store.create() is False and store.exists()
    assert store.location and "sig=" not in store.location
    data = b"header to skip|" + bytes(range(256)) * 40
    with io.BytesIO(data) as handle:
        handle.seek(15)  # from the current position to the end
        store.upload_file(handle, "nodes_output/run1/a.bin", md5_of_bytes(data[15:]))
    upload_if_changed(store, _file(tmp_path / "log.txt", b"line 1\nline 2\nlast line\n"),
                      "nodes_output/run1/stderr.txt")
    listed = {b.name: b for b in store.list_blobs("nodes_output/run1/")}
    assert sorted(listed) == ["nodes_output/run1/a.bin", "nodes_output/run1/stderr.txt"]
    assert listed["nodes_output/run1/a.bin"].size == len(data) - 15
    assert listed["nodes_output/run1/a.bin"].md5 in (None, md5_of_bytes(data[15:]))
    assert store.list_blobs("nodes_output/run2/") == []
    dest = tmp_path / "down.bin"
    got = store.download_blob(listed["nodes_output/run1/a.bin"], dest)
    assert dest.read_bytes() == data[15:] and got in (None, md5_of_bytes(data[15:]))
    assert store.read_tail("nodes_output/run1/stderr.txt", 10).endswith("last line\n")
    assert store.read_tail("nodes_output/run9/stderr.txt") == ""  # a missing blob: no text
    store.delete_blobs(["nodes_output/run1/a.bin", "not/there"])
    assert [b.name for b in store.list_blobs()] == ["nodes_output/run1/stderr.txt"]
    store.delete_container()
    store.delete_container()  # gone already: not an error
    assert not store.exists()


def md5_of_bytes(data: bytes) -> bytes:
    import hashlib
    return hashlib.md5(data, usedforsecurity=False).digest()


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    assert md5_of(path) == md5_of_bytes(data)
    return path


# ---------------------------------------------------------------------------- compute


def test_capabilities_are_stated(scenario):
    assert isinstance(scenario.backend.capabilities, Capabilities)
    assert scenario.backend.name


def test_a_job_runs_every_task_keeps_outputs_and_names_the_failed_one(scenario):
    backend, store = scenario.backend, scenario.store
    job = scenario.job((1, 2, 3))
    pool_id = scenario.start(job)
    assert pool_id == job.pool_id and backend.pool_exists(pool_id)
    counts = scenario.until(job.job_id, lambda c: c.completed == 3)
    assert (counts.succeeded, counts.failed, counts.active, counts.running) == (2, 1, 0, 0)
    assert sorted(backend.task_ids(job.job_id)) == ["task-1", "task-2", "task-3"]
    names = {b.name for b in store.list_blobs(cp.OUTPUT_PREFIX)}
    assert {"nodes_output/run1/out_1.txt", "nodes_output/run2/out_2.txt"} <= names
    assert not any(n.startswith("nodes_output/run3/out_") for n in names)  # failed: no outputs
    assert {f"nodes_output/run{i}/{log}" for i in (1, 2, 3) for log in ("stdout.txt", "stderr.txt")} <= names
    assert "task 3 broke" in store.read_tail("nodes_output/run3/stderr.txt")
    (failure,) = backend.task_failures(job.job_id)
    assert (failure.task_id, failure.exit_code) == ("task-3", 4)
    assert len(backend.task_stats(job.job_id).durations) == 2
    _ends(scenario, job.job_id)
    backend.delete_job(job.job_id)
    backend.delete_job(job.job_id)  # gone already: not an error
    assert backend.job_state(job.job_id) is None
    with pytest.raises(ToolError):
        backend.task_ids(job.job_id)
    backend.delete_pool(pool_id)
    backend.delete_pool(pool_id)
    assert not backend.pool_exists(pool_id)


def _ends(scenario: Scenario, job_id: str) -> None:
    """A sealed job ends by itself once its last task has completed."""
    deadline = time.monotonic() + 60
    while scenario.backend.job_state(job_id) == "active":
        assert time.monotonic() < deadline, "the job did not end with its last task"
        time.sleep(scenario.wait_step or 0.01)
    assert scenario.backend.job_state(job_id) == "completed"


def test_an_open_job_takes_more_tasks_and_drops_the_unstarted_ones(scenario, monkeypatch):
    backend, store = scenario.backend, scenario.store
    settings = scenario.settings
    one_slot = replace(settings, sim=replace(settings.sim, pool_node_count=1))
    scenario.settings = one_slot
    first = scenario.job((1,), seal=False)
    first = replace(first, tasks=tuple(replace(t, environment=t.environment + (("SLOW_FIRST", "4"),))
                                       for t in first.tasks))
    scenario.start(first)
    more = replace(first, tasks=first.tasks + scenario.job((2, 4)).tasks)  # task-1 again: not twice
    backend.add_tasks(more)
    assert sorted(backend.task_ids(first.job_id)) == ["task-1", "task-2", "task-4"]
    scenario.until(first.job_id, lambda c: c.running >= 1)
    waiting = backend.active_task_ids(first.job_id)
    assert set(waiting) == {"task-2", "task-4"}, waiting  # one slot: task-1 runs, they wait
    backend.delete_tasks(first.job_id, ["task-4", "task-99"])  # an unknown id: not an error
    counts = scenario.until(first.job_id, lambda c: c.completed == 2)
    assert backend.job_state(first.job_id) == "active"  # not sealed: waits for more
    backend.seal_job(first.job_id)
    _ends(scenario, first.job_id)
    assert counts.total == 2 and counts.succeeded == 2
    assert not store.list_blobs("nodes_output/run4/")  # removed before it started: never ran
    backend.delete_job(first.job_id)
    backend.delete_pool(first.pool_id)


def test_asking_about_what_does_not_exist_is_an_answer_not_a_crash(scenario):
    backend = scenario.backend
    assert backend.job_state("no-such-job") is None
    assert not backend.pool_exists("no-such-pool")
    backend.delete_job("no-such-job")
    backend.delete_pool("no-such-pool")
    backend.delete_tasks("no-such-job", ["task-1"])
    with pytest.raises(ToolError):
        backend.task_ids("no-such-job")
