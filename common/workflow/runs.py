"""Which runs of a campaign exist, and where: in the container, in the local results folder,
in another campaign's downloads — and which the campaign still lacks.

A run is the folder `nodes_output/run<i>/` of task index i. It is *complete* when it holds a
file beside the task's logs, *logs only* when its task failed, and *unfinished* when a job
of the campaign had the task but storage holds nothing of it (the job was stopped by
Ctrl-C, --cleanup or a timeout). The runner's refusals and --rerun-failed read these.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import campaign as cp
from common.backends.base import BlobStore
from common.errors import ToolError
from common.manifest import Manifest, load
from common.model import JobKind
from common.workflow.compute import LOG_NAMES


def run_index(name: str) -> int | None:
    """3 for 'run3' (the first part of a blob name under nodes_output/), else None."""
    return int(name[3:]) if name.startswith("run") and name[3:].isdigit() else None


@dataclass(frozen=True)
class Stored:
    """The run folders in the container."""

    complete: frozenset[int]  # hold a file beside the logs
    logs_only: frozenset[int]  # their task failed

    @property
    def any(self) -> frozenset[int]:
        return self.complete | self.logs_only


def stored_runs(store: BlobStore) -> Stored:
    outputs: dict[int, bool] = {}
    if store.exists():
        for blob in store.list_blobs(cp.OUTPUT_PREFIX + "run"):
            head, _, rest = blob.name[len(cp.OUTPUT_PREFIX):].partition("/")
            index = run_index(head)
            if index is not None:
                outputs[index] = outputs.get(index, False) or rest not in LOG_NAMES
    return Stored(frozenset(i for i, has in outputs.items() if has),
                  frozenset(i for i, has in outputs.items() if not has))


def local_runs(folder: Path) -> set[int]:
    """Run folders downloaded into `folder` (the results folder)."""
    if not folder.is_dir():
        return set()
    return {i for p in folder.iterdir() if p.is_dir() and (i := run_index(p.name)) is not None}


def expected_runs(manifest: Manifest | None) -> set[int]:
    """Every task index a worker job of the campaign had."""
    return {i for j in (manifest.jobs if manifest else ()) if j.kind is JobKind.WORKERS
            for i in j.task_indices}


def recorded_failures(manifest: Manifest) -> set[int]:
    """Indices whose latest worker job recorded them as failed (a later job that ran the index
    again decides)."""
    latest: dict[int, bool] = {}
    for job in manifest.jobs:
        if job.kind is JobKind.WORKERS:
            failed = set(job.failed_indices)
            latest.update({i: i in failed for i in job.task_indices})
    return {i for i, failed in latest.items() if failed}


def unfinished(manifest: Manifest | None, stored: Stored) -> set[int]:
    """Runs a job of the campaign had that storage holds nothing of, logs included."""
    return expected_runs(manifest) - stored.any


def holder_of(folder: Path, manifests_in: Path, sim_id: str) -> str | None:
    """The other campaign whose manifest (beside ours) downloaded into `folder`, if any."""
    for path in sorted(manifests_in.glob("*.campaign.json")):
        try:
            other = load(path)
        except ToolError:  # a broken neighbour only names no one
            continue
        if other is not None and other.sim_id != sim_id and str(folder) in other.downloads:
            return other.sim_id
    return None
