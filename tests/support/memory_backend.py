"""An in-memory backend: the Backend contract kept in one process, with no processes, files
or network — for the workflow's own tests (the quick tier) and as the smallest example of
a backend (docs/BACKENDS.md).

Tasks do not run programs: what each task does comes from `behaviour(task) -> TaskRun`
(its exit code, the files it leaves in its working directory, its stdout and stderr). They
advance when the workflow polls, as on a real service: each `task_counts` starts up to the
pool's slots of waiting tasks and completes the ones that were running, so waiting,
progress and adding tasks to a running job are exercised for real. Outputs reach the blob
store by the tasks' own OutputFile rules; the job preparation task fails on a node when an
input it names is not in the container (as a download would).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Mapping

from common.backends.base import Backend, BlobStore, Capabilities, StatusCallback
from common.errors import ToolError
from common.model import (COMPLETION, BlobInfo, JobSpec, OutputFile, PoolSpec, TaskCounts,
                          TaskFailure, TaskSpec, TaskStats)
from common.workflow.compute import pattern_regex

ACTIVE, RUNNING, SUCCEEDED, FAILED = "active", "running", "succeeded", "failed"
SHARED_CONTAINER = "shared-data"


@dataclass(frozen=True)
class TaskRun:
    """What one task does: paths are relative to its working directory."""

    exit_code: int = 0
    files: Mapping[str, bytes] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    seconds: float = 1.0


def _writes_outputs(task: TaskSpec) -> TaskRun:
    """The default behaviour: one small file per output pattern without a wildcard, and
    out_<index>.txt for the others."""
    files = {}
    for output in task.outputs:
        name = output.pattern.replace("**/", "").replace("*", str(task.index))
        if not name.startswith("../"):
            files[name] = f"{task.task_id}\n".encode()
    return TaskRun(files=files, stdout=f"{task.task_id} ran\n")


class MemoryBlobStore(BlobStore):
    """A container as a dict of blob name -> bytes (shared by every handle on it)."""

    def __init__(self, containers: dict[str, dict[str, bytes]], container: str) -> None:
        self._containers, self.container = containers, container

    @property
    def location(self) -> str:
        return f"memory://{self.container}"

    @property
    def _blobs(self) -> dict[str, bytes]:
        if self.container not in self._containers:
            raise ToolError(f"container {self.container} does not exist")
        return self._containers[self.container]

    def exists(self) -> bool:
        return self.container in self._containers

    def create(self) -> bool:
        created = self.container not in self._containers
        self._containers.setdefault(self.container, {})
        return created

    def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        if not self.exists():
            return []
        return [BlobInfo(name, len(data), hashlib.md5(data, usedforsecurity=False).digest())
                for name, data in sorted(self._blobs.items()) if name.startswith(prefix)]

    def upload_file(self, source: BinaryIO, blob: str, md5: bytes) -> None:
        self._blobs[blob] = source.read()

    def download_blob(self, blob: BlobInfo, dest: Path) -> bytes | None:
        data = self._blobs.get(blob.name)
        if data is None:
            raise ToolError(f"blob {blob.name} does not exist in {self.container}")
        dest.write_bytes(data)
        return hashlib.md5(data, usedforsecurity=False).digest()

    def read_tail(self, blob: str, max_bytes: int = 4096) -> str:
        data = self._containers.get(self.container, {}).get(blob, b"")
        return data[-max_bytes:].decode("utf-8", errors="replace")

    def delete_blobs(self, names: Iterable[str]) -> None:
        for name in names:
            self._containers.get(self.container, {}).pop(name, None)

    def delete_container(self) -> None:
        self._containers.pop(self.container, None)

    def put(self, blob: str, data: bytes) -> None:
        """For tests: a blob written as a task's upload would."""
        self._blobs[blob] = data


@dataclass
class _Job:
    spec: JobSpec
    pool_id: str
    tasks: dict[str, TaskSpec]
    states: dict[str, str] = field(default_factory=dict)
    runs: dict[str, TaskRun] = field(default_factory=dict)
    sealed: bool = True
    preparation_failed: str | None = None


class MemoryBackend(Backend):
    """Pools, jobs and tasks as dicts; nothing bills."""

    name = "memory"
    poll_seconds = 0.0
    health_seconds = 0.0
    capabilities = Capabilities(bills=False)  # type: ignore[assignment]

    def __init__(self, behaviour: Callable[[TaskSpec], TaskRun] = _writes_outputs) -> None:
        self.behaviour = behaviour
        self.containers: dict[str, dict[str, bytes]] = {}
        self.pools: dict[str, PoolSpec] = {}
        self.jobs: dict[str, _Job] = {}
        self.calls: list[str] = []  # every contract method called, in order (for assertions)

    def blob_store(self, container: str) -> MemoryBlobStore:
        return MemoryBlobStore(self.containers, container)

    def shared_data_store(self) -> MemoryBlobStore:
        """Data shared by every campaign (Geant4 data sets) lives in a container of its own."""
        return MemoryBlobStore(self.containers, SHARED_CONTAINER)

    # -- pools and jobs ----------------------------------------------------------------

    def prepare_pool(self, spec: PoolSpec, on_status: StatusCallback) -> None:
        self.calls.append(f"prepare_pool {spec.pool_id}")
        if spec.pool_id in self.pools:
            on_status(f"reusing pool {spec.pool_id}")
        self.pools[spec.pool_id] = spec

    def submit_job(self, job: JobSpec, on_status: StatusCallback) -> str:
        self.calls.append(f"submit_job {job.job_id}")
        pool_id = job.pool_id
        if job.auto_pool is not None:
            pool_id = f"{job.auto_pool.pool_id}-auto"
            self.pools[pool_id] = job.auto_pool
        if pool_id not in self.pools:
            raise ToolError(f"pool {pool_id} does not exist: create it before the job")
        if job.job_id not in self.jobs:
            self.jobs[job.job_id] = _Job(job, pool_id, {})
        entry = self.jobs[job.job_id]
        entry.sealed = job.seal
        entry.preparation_failed = self._preparation_problem(job)
        self._add(entry, job.tasks)
        return pool_id

    def _preparation_problem(self, job: JobSpec) -> str | None:
        if job.preparation is None:
            return None
        store = self.containers.get(job.container, {})
        lacking = [i.blob for i in job.preparation.inputs if not i.is_prefix and i.blob not in store]
        return f"ResourceFileDownloadError: {lacking[0]} is not in {job.container}" if lacking else None

    def _add(self, entry: _Job, tasks: Iterable[TaskSpec]) -> None:
        for task in tasks:
            if task.task_id not in entry.tasks:
                entry.tasks[task.task_id] = task
                entry.states[task.task_id] = ACTIVE

    def add_tasks(self, job: JobSpec) -> None:
        self.calls.append(f"add_tasks {job.job_id} {len(job.tasks)}")
        self._add(self._job(job.job_id), job.tasks)

    def seal_job(self, job_id: str) -> None:
        self.calls.append(f"seal_job {job_id}")
        self._job(job_id).sealed = True

    def _job(self, job_id: str) -> _Job:
        if job_id not in self.jobs:
            raise ToolError(f"job {job_id} does not exist on the memory backend")
        return self.jobs[job_id]

    def active_task_ids(self, job_id: str) -> list[str]:
        return [t for t, s in self._job(job_id).states.items() if s == ACTIVE]

    def task_ids(self, job_id: str) -> list[str]:
        return list(self._job(job_id).tasks)

    def delete_tasks(self, job_id: str, task_ids: list[str]) -> None:
        entry = self.jobs.get(job_id)
        for task_id in task_ids if entry else ():
            if entry.states.get(task_id) == ACTIVE:
                del entry.tasks[task_id], entry.states[task_id]

    def job_state(self, job_id: str) -> str | None:
        entry = self.jobs.get(job_id)
        if entry is None:
            return None
        done = all(s in (SUCCEEDED, FAILED) for s in entry.states.values())
        return "completed" if done and entry.sealed else "active"

    def pool_exists(self, pool_id: str) -> bool:
        return pool_id in self.pools

    # -- progress ----------------------------------------------------------------------

    def task_counts(self, job_id: str, exact: bool = False) -> TaskCounts:
        entry = self._job(job_id)
        self._advance(entry)
        states = list(entry.states.values())
        return TaskCounts(states.count(ACTIVE), states.count(RUNNING), states.count(SUCCEEDED),
                          states.count(FAILED))

    def _advance(self, entry: _Job) -> None:
        """One step of time: running tasks complete, then waiting ones start on free slots."""
        if entry.preparation_failed:
            return
        for task_id, state in list(entry.states.items()):
            if state == RUNNING:
                self._complete(entry, entry.tasks[task_id])
        pool = self.pools.get(entry.pool_id)
        slots = max(1, (pool.node_count + pool.spot_node_count) * pool.slots_per_node) if pool else 1
        for task_id in [t for t, s in entry.states.items() if s == ACTIVE][:slots]:
            entry.states[task_id] = RUNNING

    def _complete(self, entry: _Job, task: TaskSpec) -> None:
        run = self.behaviour(task)
        entry.runs[task.task_id] = run
        entry.states[task.task_id] = SUCCEEDED if run.exit_code == 0 else FAILED
        files = {**run.files, "../stdout.txt": run.stdout.encode(), "../stderr.txt": run.stderr.encode()}
        store = self.containers.setdefault(entry.spec.container, {})
        for output in task.outputs:
            if run.exit_code == 0 or output.when == COMPLETION:
                for path, data in files.items():
                    blob = blob_for(output, path)
                    if blob is not None:
                        store[blob] = data

    def task_failures(self, job_id: str) -> list[TaskFailure]:
        entry = self._job(job_id)
        return [TaskFailure(t, entry.runs[t].exit_code) for t, s in sorted(entry.states.items())
                if s == FAILED]

    def preparation_failures(self, job_id: str) -> list[TaskFailure]:
        entry = self._job(job_id)
        if not entry.preparation_failed:
            return []
        code, _, message = entry.preparation_failed.partition(": ")
        return [TaskFailure("job preparation on node memory-node-1", None, code, message)]

    def task_stats(self, job_id: str) -> TaskStats:
        entry = self._job(job_id)
        return TaskStats(tuple(entry.runs[t].seconds for t, s in entry.states.items() if s == SUCCEEDED))

    # -- cleanup -----------------------------------------------------------------------

    def delete_job(self, job_id: str) -> None:
        self.calls.append(f"delete_job {job_id}")
        entry = self.jobs.pop(job_id, None)
        if entry is not None and entry.spec.auto_pool is not None:
            self.pools.pop(entry.pool_id, None)

    def delete_pool(self, pool_id: str) -> None:
        self.calls.append(f"delete_pool {pool_id}")
        self.pools.pop(pool_id, None)


def blob_for(output: OutputFile, path: str) -> str | None:
    """The blob a file at `path` (relative to the working directory) becomes under an
    OutputFile rule, as Batch names it: a pattern's fixed leading folders are dropped."""
    parts = [p for p in output.pattern.split("/") if p not in ("", ".")]
    wild = next((i for i, p in enumerate(parts) if re.search(r"[*?\[]", p)), None)
    path = "/".join(p for p in path.split("/") if p not in ("", "."))
    if wild is None:
        return output.destination if path == "/".join(parts) else None
    fixed = "/".join(parts[:wild])
    rest = path[len(fixed) + 1:] if fixed else path
    if fixed and not path.startswith(fixed + "/"):
        return None
    return output.destination + rest if pattern_regex(output.pattern).match(rest) else None
