"""What the campaign manifest holds: the campaign, its jobs (with their tasks, what failed,
what was deleted, what it cost) and the claims of the scripts working on it right now.
Frozen dataclasses; reading.py checks a file into them, file.py writes them back."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from common.manifest.lock import PID_MAX, process_start
from common.model import JobKind, RunSetup

# Seeds are a bijection of the index below 2**31 (common/campaign.py: sim_seed): an index
# past it would run with the seed of another run.
MAX_TASK_INDEX = 2 ** 31 - 1


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    kind: JobKind
    pool_id: str | None  # None until an auto pool has been given its id by the service
    task_ids: tuple[str, ...]
    task_indices: tuple[int, ...]
    auto_pool: bool = False  # the pool is deleted by the service when the job ends
    created: str = field(default_factory=now_text)
    job_deleted: bool = False
    pool_deleted: bool = False
    failed_indices: tuple[int, ...] = ()  # task indices that failed, kept after the job is gone
    succeeded: bool = False  # every task succeeded (a reducer's result exists)
    node_hours: tuple[float, float] = (0.0, 0.0)  # (dedicated, Spot) so far
    cost: float | None = None  # in `currency`; None when a price is unknown
    currency: str = ""
    task_seconds: tuple[float, ...] = ()  # durations of the tasks that succeeded (estimates)
    requeues: int = 0  # tasks Batch put back after a Spot preemption
    setup: RunSetup | None = None  # TOPAS threads and histories each of its runs was told
    shared_data: str | None = None  # key of the Geant4 data its nodes staged
    # A reducer tree (common/merge_tree.py), aligned with task_ids: the tasks each task
    # depends on, and the runs it stands for. Empty for a job without dependencies.
    task_depends: tuple[tuple[str, ...], ...] = ()
    task_runs: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class RunClaim:
    """A script working on the campaign right now (removed when it ends)."""

    token: str
    pid: int
    host: str
    script: str  # "runner", "reducer", "cleanup"...
    started: str = field(default_factory=now_text)

    def alive(self) -> bool:
        """Whether its process still runs (a claim from another host is taken as alive).
        A pid no process of ours can have (0, 1, negative, past the largest) is no claim,
        nor is a process that started after the claim was made (its pid was reused)."""
        if self.host != socket.gethostname():
            return True
        if not 1 < self.pid <= PID_MAX:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = process_start(self.pid)
        try:
            claimed = datetime.fromisoformat(self.started).timestamp()
        except (ValueError, TypeError, OverflowError):
            return True
        # a minute of slack: the claim's time is whole seconds, and the kernel's boot time
        # (from which a start time is reckoned) may differ from the wall clock by a step
        return started is None or started <= claimed + 60


@dataclass(frozen=True)
class Manifest:
    sim_id: str
    backend: str
    container: str
    simconfig: str
    created: str = field(default_factory=now_text)
    uploaded: tuple[str, ...] = ()
    jobs: tuple[JobRecord, ...] = ()
    downloads: tuple[str, ...] = ()
    container_deleted: bool = False
    events: tuple[str, ...] = ()
    claims: tuple[RunClaim, ...] = ()

    def latest(self, kind: JobKind) -> JobRecord | None:
        found = [j for j in self.jobs if j.kind == kind]
        return found[-1] if found else None

    def open_jobs(self) -> list[JobRecord]:
        """Jobs whose job or pool was not deleted by this tool (they may still cost money)."""
        return [j for j in self.jobs if not j.job_deleted or not (j.pool_deleted or j.auto_pool)]

    def job(self, job_id: str) -> JobRecord:
        return next(j for j in self.jobs if j.job_id == job_id)


def manifest_path(simconfig: Path, sim_id: str) -> Path:
    return simconfig.resolve().parent / f"{sim_id}.campaign.json"


# ---------------------------------------------------------------------------- reading, checked


