"""What the fake can be told to do: timings, limits and injected faults.

One mutable dataclass, read by the server and the engine each time they need a value, so a
test may change any field while the fake runs (`fake.knobs.busy_fraction = 0.2`). Patterns are
regular expressions matched with `re.search` against task ids or image names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .containers import ContainerImage

# What /supportedimages answers by default. The original project's image
# (microsoft-azure-batch / ubuntu-server-container / 20-04-lts, batch.node.ubuntu 20.04) was
# retired in April 2025 and retired images disappear from the real list, so it is not here:
# creating a pool with it fails as for any image the account does not offer. Tests that want
# to see how a client treats an image near or past its end of life can add RETIRED_IMAGE.
SUPPORTED_IMAGES: tuple[dict[str, Any], ...] = (
    {"nodeAgentSKUId": "batch.node.ubuntu 24.04",
     "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404",
                        "version": "latest"},
     "osType": "linux", "capabilities": ["DockerCompatible", "NvidiaTeslaDriverInstalled"],
     "verificationType": "verified"},
    {"nodeAgentSKUId": "batch.node.ubuntu 22.04",
     "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204",
                        "version": "latest"},
     "osType": "linux", "capabilities": ["DockerCompatible", "NvidiaTeslaDriverInstalled"],
     "batchSupportEndOfLife": "2027-06-30T00:00:00Z", "verificationType": "verified"},
    {"nodeAgentSKUId": "batch.node.ubuntu 24.04",
     "imageReference": {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server",
                        "version": "latest"},
     "osType": "linux", "verificationType": "verified"},
)

RETIRED_IMAGE: dict[str, Any] = {
    "nodeAgentSKUId": "batch.node.ubuntu 20.04",
    "imageReference": {"publisher": "microsoft-azure-batch", "offer": "ubuntu-server-container",
                       "sku": "20-04-lts", "version": "latest"},
    "osType": "linux", "capabilities": ["DockerCompatible"],
    "batchSupportEndOfLife": "2025-04-30T00:00:00Z", "verificationType": "verified"}


@dataclass
class Knobs:
    """Timings, limits and faults of one FakeBatch. Every field may be changed at runtime."""

    # --- timings (seconds) -------------------------------------------------------------
    allocation_delay: float = 0.2  # pool "resizing" before nodes exist
    node_start_delay: float = 0.1  # nodes "starting" before "idle" (or their start task)
    pool_delete_delay: float = 0.3  # pool "deleting" before it answers 404
    job_delete_delay: float = 0.1  # job "deleting" before it answers 404
    latency: float = 0.0  # added to every request (benchmarks: a real endpoint is ~20-50 ms)

    # --- limits the real service enforces ------------------------------------------------
    max_tasks_per_collection: int = 100  # addtaskcollection above this: 413 RequestBodyTooLarge
    max_body_bytes: int = 1_000_000  # "must be less than 1MB": 413 RequestBodyTooLarge
    max_page_size: int = 1000  # list calls: page size when maxresults is not given
    clock_skew_seconds: float = 15 * 60  # ocp-date further off than this: 403
    # dependsOn.taskIdRanges per task: "Batch status and error codes" names the error
    # (TaskDependencyRangesTooLong) but not the number, so by default there is no limit.
    max_dependency_ranges: int | None = None
    supported_images: list[dict[str, Any]] = field(
        default_factory=lambda: [dict(image) for image in SUPPORTED_IMAGES])
    strict_images: bool = True  # pool with an image/agent pair not listed above: 400
    strict_container_settings: bool = True  # container pool needs task containerSettings
    # Container images the "registries" hold, by full name (containers.normalize): a task's
    # image that is not here fails to pull, as an unknown repository does.
    images: dict[str, ContainerImage] = field(default_factory=dict)
    # The environment of processes on a node's host OS (start task, job preparation task):
    # a node's own, not the test process's.
    host_env: dict[str, str] = field(default_factory=lambda: {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})

    # --- injected faults ------------------------------------------------------------------
    seed: int = 1  # for the fractions below (requests draw in arrival order)
    busy_fraction: float = 0.0  # answered 503 ServerBusy before any processing
    internal_error_fraction: float = 0.0  # answered 500 InternalError before any processing
    retry_after: int | None = None  # Retry-After header on injected 503s and 429s
    throttled_fraction: float = 0.0  # answered 429 TooManyRequests before any processing
    timeout_fraction: float = 0.0  # answered 408 OperationTimedOut before any processing
    # operationId -> how many more of its requests are carried out but never answered: the
    # connection is closed instead, as when a reply is lost on the way (the client sees a
    # ServiceResponseError; the spec says to resend with the same ids).
    drop_replies: dict[str, int] = field(default_factory=dict)
    # The first N task-count polls of each job answer late: only some completed tasks are
    # counted and none active or running ("the numbers returned may not always be up to date").
    task_counts_lag_polls: int = 0
    resize_error: str | None = None  # e.g. "AccountCoreQuotaReached": pools get 0 nodes
    resize_error_message: str = ("The specified account has reached VM core quota for "
                                 "standardDv3Family. Please request a quota increase.")
    start_task_failure: bool = False  # nodes end in starttaskfailed (with startTaskInfo)
    unusable_nodes: bool = False  # nodes end in unusable
    unusable_node_count: int = 0  # only the first N nodes of each pool end in unusable
    # A resize that stops part way: only this many nodes are allocated, with resize_error.
    partial_allocation: int | None = None
    job_preparation_failure: bool = False  # every job preparation task exits 1
    # Spot nodes: the next N times a Spot node has run a task for preempt_after seconds, Azure
    # takes back preempt_nodes Spot nodes of its pool at once (that one first; None: every Spot
    # node of the pool, whatever its state). Their tasks are requeued, their VMs deleted (disk
    # and job preparation state gone); each is re-created preemption_lasts seconds later (None:
    # capacity never returns) and runs its start and job preparation tasks again.
    preemptions: int = 0
    preempt_after: float | None = None
    preempt_nodes: int | None = 1
    preemption_lasts: float | None = 1.0
    fail_tasks: str | None = None  # task ids matching: the command is not run, exit code below
    fail_exit_code: int = 1
    image_pull_failure: str | None = None  # image names matching: ContainerInvalidImage
    upload_failure: str | None = None  # task ids matching: every output upload fails
    collection_servererror: int = 0  # next N tasks in addtaskcollection: status servererror
    collection_servererror_pattern: str | None = None  # these task ids: always servererror

    def matches(self, pattern_field: str, value: str | None) -> bool:
        """True when the regex in `pattern_field` is set and found in `value`."""
        pattern = getattr(self, pattern_field)
        return bool(pattern) and value is not None and re.search(pattern, value) is not None
