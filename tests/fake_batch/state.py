"""The fake account's state: pools, nodes, jobs and tasks, and their JSON views.

Everything here is guarded by `Store.lock` (an RLock with a Condition that the engine waits
on). Views render the spec's response models (BatchPool, BatchNode, BatchJob, BatchTask) and
only ever include properties the spec defines; the test suite checks them against the spec.
Ids are case-preserving but unique regardless of case, as the service documents, so every
dict is keyed by the lower-cased id.
"""
from __future__ import annotations

import random
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

# The service's answer for "no limit" (TimeSpan.MaxValue) and its default retention.
UNLIMITED = "P10675199DT2H48M5.4775807S"
DEFAULT_RETENTION = "P7D"
SCHEDULABLE = ("idle", "running")  # node states that accept tasks


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_etag() -> str:
    return "0x8D" + "".join(random.choice("0123456789ABCDEF") for _ in range(13))


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}


@dataclass
class Versioned:
    """eTag / lastModified, renewed on every change the client could see."""

    etag: str = field(default_factory=new_etag)
    last_modified: datetime = field(default_factory=utcnow)

    def touch(self) -> None:
        self.etag = new_etag()
        self.last_modified = utcnow()


@dataclass
class Node(Versioned):
    id: str = ""
    pool_id: str = ""
    dedicated: bool = True
    slots: int = 1
    ip: str = "10.0.0.4"
    state: str = "starting"
    state_time: datetime = field(default_factory=utcnow)
    allocation_time: datetime = field(default_factory=utcnow)
    ready_at: float = 0.0  # monotonic time at which "starting" ends
    running: dict[str, int] = field(default_factory=dict)  # task key -> slots in use
    total_run: int = 0
    total_succeeded: int = 0
    start_task_info: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    start_task_running: bool = False
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)  # start task
    root: Path | None = None  # AZ_BATCH_NODE_ROOT_DIR: gone with the node
    preparations: dict[str, "Preparation"] = field(default_factory=dict)  # job key -> its run here
    # Each time Azure re-creates the VM (a preempted Spot node coming back) its disk and job
    # preparation state start anew; the node keeps its id.
    incarnation: int = 1
    boot_time: datetime = field(default_factory=utcnow)

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_time = utcnow()
            self.touch()

    def ready_for(self, job_key: str, wait_for_success: bool) -> bool:
        """Whether the job's tasks may run here: its preparation task (if any) allows it."""
        prep = self.preparations.get(job_key)
        if prep is None:
            return False
        return prep.result == "success" or not wait_for_success

    @property
    def free_slots(self) -> int:
        if self.state not in SCHEDULABLE:
            return 0
        return self.slots - sum(self.running.values())

    def view(self, base_url: str, pool: "Pool") -> dict[str, Any]:
        image = (pool.body.get("virtualMachineConfiguration") or {}).get("imageReference", {})
        return _drop_none({
            "id": self.id,
            "url": f"{base_url}/pools/{quote(pool.id)}/nodes/{quote(self.id)}",
            "state": self.state,
            "schedulingState": "enabled",
            "stateTransitionTime": iso(self.state_time),
            "lastBootTime": iso(self.boot_time),
            "allocationTime": iso(self.allocation_time),
            "ipAddress": self.ip,
            "ipv6Address": "fd00::" + self.ip.replace(".", ":"),
            "affinityId": f"TVM:{self.id}",
            "vmSize": pool.body.get("vmSize"),
            "totalTasksRun": self.total_run,
            "runningTasksCount": len(self.running),
            "runningTaskSlotsCount": sum(self.running.values()),
            "totalTasksSucceeded": self.total_succeeded,
            "startTask": pool.body.get("startTask"),
            "startTaskInfo": self.start_task_info,
            "errors": self.errors or None,
            "isDedicated": self.dedicated,
            "nodeAgentInfo": {"version": "1.12.9", "lastUpdateTime": iso(self.allocation_time)},
            "virtualMachineInfo": {"imageReference": dict(image, exactVersion="2025.0601.01")},
        })


@dataclass
class Preparation:
    """One run of a job's preparation task on one node (the status list shows it)."""

    state: str = "running"  # running / completed
    task_dir: Path | None = None
    start_time: datetime = field(default_factory=utcnow)
    end_time: datetime | None = None
    exit_code: int | None = None
    result: str | None = None  # success / failure
    failure_info: dict[str, Any] | None = None
    retry_count: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def view(self, root_url: str, relative_dir: str) -> dict[str, Any]:
        return _drop_none({
            "startTime": iso(self.start_time), "endTime": iso(self.end_time), "state": self.state,
            "taskRootDirectory": relative_dir, "taskRootDirectoryUrl": f"{root_url}/{relative_dir}",
            "exitCode": self.exit_code, "failureInfo": self.failure_info,
            "retryCount": self.retry_count, "result": self.result})


@dataclass(frozen=True)
class PreparationRun:
    """One finished run of a job preparation task, kept after its node is gone (the records
    tests read: a re-created Spot node runs the preparation task again)."""

    job_id: str
    pool_id: str
    node_id: str
    incarnation: int  # of the node: 2 = the first VM after a preemption
    result: str  # success / failure
    exit_code: int | None


@dataclass
class Pool(Versioned):
    id: str = ""
    body: dict[str, Any] = field(default_factory=dict)  # the create request, as validated
    serial: int = 0
    created: datetime = field(default_factory=utcnow)
    state: str = "active"
    state_time: datetime = field(default_factory=utcnow)
    allocation_state: str = "resizing"
    allocation_time: datetime = field(default_factory=utcnow)
    allocate_at: float = 0.0  # monotonic time at which "resizing" ends
    delete_at: float | None = None
    nodes: list[Node] = field(default_factory=list)
    resize_errors: list[dict[str, Any]] = field(default_factory=list)
    # User-assigned managed identities (ARM resource IDs): only a pool made through Azure
    # Resource Manager has any (FakeBatch.create_pool_through_arm); the Batch API gives none.
    identities: list[str] = field(default_factory=list)

    @property
    def slots_per_node(self) -> int:
        return int(self.body.get("taskSlotsPerNode") or 1)

    @property
    def container_configured(self) -> bool:
        vm = self.body.get("virtualMachineConfiguration") or {}
        return bool(vm.get("containerConfiguration"))

    def set_state(self, state: str) -> None:
        self.state = state
        self.state_time = utcnow()
        self.touch()

    def set_allocation_state(self, state: str) -> None:
        self.allocation_state = state
        self.allocation_time = utcnow()
        self.touch()

    def view(self, base_url: str) -> dict[str, Any]:
        body = self.body
        copied = ("displayName", "vmSize", "virtualMachineConfiguration", "networkConfiguration",
                  "startTask", "applicationPackageReferences", "userAccounts", "metadata",
                  "mountConfiguration", "upgradePolicy", "autoScaleFormula",
                  "autoScaleEvaluationInterval")
        view: dict[str, Any] = {key: body[key] for key in copied if key in body}
        view.update({
            "id": self.id,
            "url": f"{base_url}/pools/{quote(self.id)}",
            "eTag": self.etag,
            "lastModified": iso(self.last_modified),
            "creationTime": iso(self.created),
            "state": self.state,
            "stateTransitionTime": iso(self.state_time),
            "allocationState": self.allocation_state,
            "allocationStateTransitionTime": iso(self.allocation_time),
            "resizeTimeout": body.get("resizeTimeout", "PT15M"),
            "currentDedicatedNodes": sum(1 for n in self.nodes if n.dedicated),
            "currentLowPriorityNodes": sum(1 for n in self.nodes if not n.dedicated),
            "targetDedicatedNodes": int(body.get("targetDedicatedNodes") or 0),
            "targetLowPriorityNodes": int(body.get("targetLowPriorityNodes") or 0),
            "enableAutoScale": bool(body.get("enableAutoScale", False)),
            "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication", False)),
            "taskSlotsPerNode": self.slots_per_node,
            "taskSchedulingPolicy": body.get("taskSchedulingPolicy", {"nodeFillType": "spread"}),
        })
        if self.resize_errors:
            view["resizeErrors"] = self.resize_errors
        if self.identities:
            view["identity"] = {"type": "UserAssigned", "userAssignedIdentities": [
                {"resourceId": r, "clientId": str(uuid.uuid5(uuid.NAMESPACE_URL, r + "#client")),
                 "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, r))} for r in self.identities]}
        return view


@dataclass
class UploadRecord:
    """One output file the fake tried to upload."""

    source: str  # path on the "node"
    blob_url: str  # without the SAS
    ok: bool
    status: int | None = None
    error: str | None = None


@dataclass
class Task(Versioned):
    """A task, and what it asked for and got (the tests read `command_line`, `environment`...)."""

    job_id: str = ""
    id: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    serial: int = 0
    created: datetime = field(default_factory=utcnow)
    state: str = "active"
    state_time: datetime = field(default_factory=utcnow)
    previous_state: str | None = None
    previous_state_time: datetime | None = None
    command_line: str = ""
    environment: dict[str, str] = field(default_factory=dict)  # task settings only
    image: str | None = None  # containerSettings.imageName: recorded, never run
    max_retries: int = 0
    required_slots: int = 1
    retry_count: int = 0
    requeue_count: int = 0
    last_retry_time: datetime | None = None
    last_requeue_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    exit_code: int | None = None
    result: str | None = None  # success / failure
    failure_info: dict[str, Any] | None = None
    pool_id: str | None = None
    node_id: str | None = None
    task_dir: Path | None = None
    env_seen: dict[str, str] | None = None  # the whole environment of the last run
    exit_codes: list[int] = field(default_factory=list)  # one per attempt that ran
    uploads: list[UploadRecord] = field(default_factory=list)
    stop_reason: str | None = None  # set when stopped from outside (see runner: ENDED...)
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)
    worker: threading.Thread | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.job_id.lower()}/{self.id.lower()}"

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.previous_state, self.previous_state_time = self.state, self.state_time
            self.state = state
            self.state_time = utcnow()
            self.touch()

    def execution_info(self) -> dict[str, Any] | None:
        if self.state in ("active",) and not self.retry_count and not self.requeue_count:
            return None
        return _drop_none({
            "startTime": iso(self.start_time),
            "endTime": iso(self.end_time) if self.state == "completed" else None,
            "exitCode": self.exit_code if self.state == "completed" else None,
            "failureInfo": self.failure_info if self.state == "completed" else None,
            "retryCount": self.retry_count,
            "lastRetryTime": iso(self.last_retry_time),
            "requeueCount": self.requeue_count,
            "lastRequeueTime": iso(self.last_requeue_time),
            "result": self.result if self.state == "completed" else None,
        })

    def view(self, base_url: str) -> dict[str, Any]:
        body = self.body
        copied = ("displayName", "exitConditions", "containerSettings", "resourceFiles",
                  "outputFiles", "environmentSettings", "affinityInfo", "userIdentity",
                  "multiInstanceSettings", "dependsOn", "applicationPackageReferences",
                  "authenticationTokenSettings")
        view: dict[str, Any] = {key: body[key] for key in copied if key in body}
        constraints = body.get("constraints") or {}
        url = f"{base_url}/jobs/{quote(self.job_id)}/tasks/{quote(self.id)}"
        view.update(_drop_none({
            "id": self.id,
            "url": url,
            "eTag": self.etag,
            "lastModified": iso(self.last_modified),
            "creationTime": iso(self.created),
            "state": self.state,
            "stateTransitionTime": iso(self.state_time),
            "previousState": self.previous_state,
            "previousStateTransitionTime": iso(self.previous_state_time),
            "commandLine": self.command_line,
            "constraints": {"maxWallClockTime": constraints.get("maxWallClockTime", UNLIMITED),
                            "retentionTime": constraints.get("retentionTime", DEFAULT_RETENTION),
                            "maxTaskRetryCount": self.max_retries},
            "requiredSlots": self.required_slots,
            "executionInfo": self.execution_info(),
        }))
        if self.node_id and self.pool_id:
            root = f"workitems/{self.job_id}/job-1/{self.id}"
            node_url = f"{base_url}/pools/{quote(self.pool_id)}/nodes/{quote(self.node_id)}"
            view["nodeInfo"] = {"affinityId": f"TVM:{self.node_id}", "nodeUrl": node_url,
                                "poolId": self.pool_id, "nodeId": self.node_id,
                                "taskRootDirectory": root,
                                "taskRootDirectoryUrl": f"{node_url}/files/{quote(root)}"}
        return view


@dataclass
class Job(Versioned):
    id: str = ""
    body: dict[str, Any] = field(default_factory=dict)
    serial: int = 0
    created: datetime = field(default_factory=utcnow)
    state: str = "active"
    state_time: datetime = field(default_factory=utcnow)
    previous_state: str | None = None
    previous_state_time: datetime | None = None
    pool_id: str = ""
    on_all_tasks_complete: str = "noaction"
    priority: int = 0
    max_parallel_tasks: int = -1
    allow_task_preemption: bool = False
    constraints: dict[str, Any] | None = None
    metadata: list[dict[str, Any]] | None = None
    end_time: datetime | None = None
    terminate_reason: str | None = None
    delete_at: float | None = None
    tasks: dict[str, Task] = field(default_factory=dict)  # lower-cased id -> task, in order
    count_polls: int = 0  # task-count requests so far (the lag knob counts them)

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.previous_state, self.previous_state_time = self.state, self.state_time
            self.state = state
            self.state_time = utcnow()
            self.touch()

    def view(self, base_url: str) -> dict[str, Any]:
        body = self.body
        copied = ("displayName", "usesTaskDependencies", "jobManagerTask", "jobPreparationTask",
                  "jobReleaseTask", "commonEnvironmentSettings", "networkConfiguration")
        view: dict[str, Any] = {key: body[key] for key in copied if key in body}
        view.update(_drop_none({
            "id": self.id,
            "url": f"{base_url}/jobs/{quote(self.id)}",
            "eTag": self.etag,
            "lastModified": iso(self.last_modified),
            "creationTime": iso(self.created),
            "state": self.state,
            "stateTransitionTime": iso(self.state_time),
            "previousState": self.previous_state,
            "previousStateTransitionTime": iso(self.previous_state_time),
            "priority": self.priority,
            "allowTaskPreemption": self.allow_task_preemption,
            "maxParallelTasks": self.max_parallel_tasks,
            "constraints": self.constraints or {"maxWallClockTime": UNLIMITED,
                                                "maxTaskRetryCount": 0},
            # an auto pool job shows its specification; executionInfo.poolId names the pool
            "poolInfo": body["poolInfo"] if (body.get("poolInfo") or {}).get(
                "autoPoolSpecification") else {"poolId": self.pool_id},
            "onAllTasksComplete": self.on_all_tasks_complete,
            "onTaskFailure": body.get("onTaskFailure", "noaction"),
            "metadata": self.metadata,
            "executionInfo": _drop_none({"startTime": iso(self.created),
                                         "endTime": iso(self.end_time),
                                         "poolId": self.pool_id,
                                         "terminateReason": self.terminate_reason}),
        }))
        return view


class Store:
    """All state of one fake account, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # the engine waits on it
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self.all_tasks: list[Task] = []  # every task ever added, also of deleted jobs
        self.preparation_runs: list[PreparationRun] = []  # every job preparation that finished
        self._serial = 0

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def notify(self) -> None:
        with self.lock:
            self.changed.notify_all()
