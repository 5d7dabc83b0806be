"""The contract every backend honours: a blob container and a Batch-like compute service.

The workflow (common/workflow/) talks only to these two abstract classes, so a campaign
runs the same on Azure Batch and on the local machine. Each method's docstring is its
promise; a backend that cannot keep one raises ToolError with the service's own words —
never an SDK's exception. Every method is abstract, or has a default stated in its
docstring (and tested in tests/test_backend_contract.py). What differs between backends
in behaviour (billing, ...) is stated by `capabilities`, never guessed from `name`.
See docs/BACKENDS.md for how to add one.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from common.model import (BlobInfo, JobSpec, PoolHealth, PoolSpec, TaskCounts, TaskFailure,
                          TaskStats)

StatusCallback = Callable[[str], None]


@dataclass(frozen=True)
class Capabilities:
    """What a backend does, for the questions the workflow asks of it."""

    bills: bool  # its pools cost money: prices, cost meter, MAX_COST, "delete the pool?"
    spot: bool = False  # Spot nodes are real (preempted, requeued); else SPOT_NODE_COUNT is a node count
    # Tasks can be added to a job that runs (an adaptive campaign's waves). Without it,
    # add_tasks raises ToolError and adaptive campaigns are refused before anything exists.
    adds_tasks: bool = True
    # Tasks wait for the tasks they depend on (TaskSpec.depends_on); without it the reducer
    # merges every run in one task.
    task_dependencies: bool = False


class BlobStore(ABC):
    """One blob container. Blob names use '/' as the folder separator."""

    container: str

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the container is, for messages (a URL without any SAS, or a folder)."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether the container exists."""

    @abstractmethod
    def create(self) -> bool:
        """Create the container if it is missing; True if it was created, False if reused."""

    @abstractmethod
    def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        """Every blob whose name starts with `prefix`, with its size and MD5 when known;
        none when the container does not exist."""

    @abstractmethod
    def upload_file(self, source: BinaryIO, blob: str, md5: bytes) -> None:
        """Store the bytes of the open file `source`, from its current position to its end, as
        `blob` (replacing it), recording `md5` as its Content-MD5. The caller closes `source`.

        An open file rather than a path: the simulation zip is an anonymous temporary file,
        which nothing can leave behind, whatever kills the process."""

    @abstractmethod
    def download_blob(self, blob: BlobInfo, dest: Path) -> bytes | None:
        """Write the blob's bytes to `dest` (parent folders exist). No verification here.

        Returns the MD5 of the bytes written when it came for free (a blob read whole in
        memory), else None and the caller reads the file back to verify it.
        """

    @abstractmethod
    def read_tail(self, blob: str, max_bytes: int = 4096) -> str:
        """The last `max_bytes` of a text blob ('' when there is no such blob): for logs."""

    @abstractmethod
    def delete_blobs(self, names: Iterable[str]) -> None:
        """Delete these blobs; names that do not exist are ignored."""

    @abstractmethod
    def delete_container(self) -> None:
        """Delete the container and everything in it. Callers check for unsaved data first."""


class Backend(ABC):
    """A compute service with pools of nodes that run jobs of tasks, Azure Batch style."""

    name: str  # for messages and the manifest, never for decisions (see `capabilities`)
    poll_seconds: float = 5.0  # how often the workflow asks for task counts while waiting
    health_seconds: float = 30.0  # how often it also looks at the pool's nodes

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What this backend does (bills, Spot)."""

    @abstractmethod
    def blob_store(self, container: str) -> BlobStore:
        """The campaign's container on this backend's storage (not created yet)."""

    @abstractmethod
    def prepare_pool(self, spec: PoolSpec, on_status: StatusCallback) -> None:
        """Return once a pool with spec.pool_id can run tasks.

        Creates the pool, or reuses an existing one that matches the spec (and says so
        through on_status); raises ToolError at once when the pool cannot become usable
        (wrong existing pool, quota, allocation or start task failures).
        """

    @abstractmethod
    def submit_job(self, job: JobSpec, on_status: StatusCallback) -> str:
        """Create the job and add every task; return the id of the pool it runs on.

        Returns once all tasks are accepted; with job.auto_pool, once that pool (made for
        this job, deleted by the service when the job ends) has its nodes. The job ends by
        itself when all its tasks have completed. Resubmitting a task id that already
        exists never creates a second task.
        """

    @abstractmethod
    def add_tasks(self, job: JobSpec) -> None:
        """Add job.tasks to the job, which runs (an adaptive campaign's next wave, or tasks a
        stopped runner recorded but never added): same pool, same preparation; ids that
        exist are not added twice."""

    @abstractmethod
    def seal_job(self, job_id: str) -> None:
        """From now on the job ends by itself when its last task has completed (and its auto
        pool with it). A job submitted with seal=False waits for more tasks until this."""

    @abstractmethod
    def active_task_ids(self, job_id: str) -> list[str]:
        """The tasks that wait for a node (not started yet)."""

    @abstractmethod
    def task_ids(self, job_id: str) -> list[str]:
        """Every task the job has, in any state; ToolError when the job does not exist."""

    @abstractmethod
    def delete_tasks(self, job_id: str, task_ids: list[str]) -> None:
        """Remove tasks that have not started (no longer needed): they never run and leave
        the job's counts. A task that started meanwhile may still run or be stopped. Ids
        (or a job) that do not exist are not an error."""

    @abstractmethod
    def job_state(self, job_id: str) -> str | None:
        """'active', 'completed', ... or None when the job does not exist (any more)."""

    @abstractmethod
    def pool_exists(self, pool_id: str) -> bool:
        """Whether the pool exists (and may cost money)."""

    @abstractmethod
    def task_counts(self, job_id: str, exact: bool = False) -> TaskCounts:
        """How many of the job's tasks are active, running, succeeded and failed.

        Cheap, but like Batch's own counts possibly behind; `exact` asks for a count that
        accounts for every task (more requests).
        """

    @abstractmethod
    def task_failures(self, job_id: str) -> list[TaskFailure]:
        """Every failed task with its exit code and failure info (its stderr is in storage)."""

    def preparation_failures(self, job_id: str) -> list[TaskFailure]:
        """Job preparation tasks that failed on a node (their job's tasks never start there).

        Default: none — for a backend that prepares nothing per node, or whose preparation
        failures already show as task failures."""
        return []

    def task_stats(self, job_id: str) -> TaskStats:
        """How long the job's tasks took, and how often they were requeued (Spot preemption).

        Default: nothing known (no durations, no requeues): --dry-run then gives no expected
        cost, only the upper bound."""
        return TaskStats()

    def shared_data_store(self) -> BlobStore | None:
        """The container where data shared by every campaign (the Geant4 data sets) is kept
        for nodes to fetch; no campaign's cleanup deletes it. Jobs that carry SharedData get
        it onto each node before their first task there, read-only to the tasks.

        Default: None — the tasks read such data where it lies on this machine (in place)."""
        return None

    def store_at(self, url: str) -> tuple[BlobStore, str] | None:
        """(container, blob prefix) that `url` names in this backend's storage account, or
        None when it is not a URL of this backend's storage.

        Default: None — a backend without a storage account of its own."""
        return None

    def threads_per_task(self, pool: PoolSpec) -> int | None:
        """CPU cores each task of `pool` has to itself (a node's cores / its task slots), when
        known before anything runs.

        Default: None — each task counts the cores on its node (nproc / task slots)."""
        return None

    def pool_health(self, pool_id: str) -> PoolHealth | None:
        """The pool's nodes by state; None when the backend has no such notion or no pool.

        Default: None — the wait then relies on the task counts and the timeout alone."""
        return None

    @abstractmethod
    def delete_job(self, job_id: str) -> None:
        """Delete the job, stopping its running tasks. Missing jobs are not an error."""

    @abstractmethod
    def delete_pool(self, pool_id: str) -> None:
        """Delete the pool so that it stops costing money; return once it is gone or going.

        Missing pools are not an error. Data in blob storage is never touched.
        """

    def describe(self, pool: PoolSpec, job: JobSpec, shown_tasks: int = 3) -> list[tuple[str, str]]:
        """(title, text) of what starting this pool and job would send, for --dry-run.

        Pure: builds, never sends. Backends with a wire format show their request bodies.
        """
        return [("pool", json.dumps(asdict(pool), indent=2)),
                ("job", json.dumps({k: v for k, v in asdict(job).items() if k != "tasks"}, indent=2))] + \
               [(f"task {t.task_id}", json.dumps(asdict(t), indent=2)) for t in job.tasks[:shown_tasks]]

    def close(self) -> None:
        """Release clients and connections. Default: nothing to release."""
