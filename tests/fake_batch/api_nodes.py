"""Handlers for what a client asks of nodes: counts per state, files, preparation tasks.

Kept apart from api.py (pools, jobs, tasks) only for size; they register in the same table.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from . import errors, odata
from .api import Request, Response, _job, _pool, file_answer, handles
from .node import PREPARATION_DIR
from .state import Node, Pool

if TYPE_CHECKING:
    from .server import FakeBatch

# node.state -> the field of BatchNodeCounts that counts it
_COUNTED = {"creating": "creating", "idle": "idle", "leavingpool": "leavingPool",
            "offline": "offline", "preempted": "preempted", "rebooting": "rebooting",
            "reimaging": "reimaging", "running": "running", "starting": "starting",
            "starttaskfailed": "startTaskFailed", "unknown": "unknown", "unusable": "unusable",
            "waitingforstarttask": "waitingForStartTask", "deallocated": "deallocated",
            "deallocating": "deallocating", "upgradingos": "upgradingOS"}


def _counts(nodes: list[Node]) -> dict[str, int]:
    counts = dict.fromkeys(_COUNTED.values(), 0)
    for node in nodes:
        counts[_COUNTED.get(node.state, "unknown")] += 1
    counts["total"] = len(nodes)
    return counts


def _pool_counts(pool: Pool) -> dict[str, Any]:
    return {"poolId": pool.id,
            "dedicated": _counts([n for n in pool.nodes if n.dedicated]),
            "lowPriority": _counts([n for n in pool.nodes if not n.dedicated])}


@handles("Pools_ListPoolNodeCounts")
def list_pool_node_counts(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        views = [_pool_counts(p) for p in sorted(fake.store.pools.values(), key=lambda p: p.serial)]
    return Response(200, odata.page(views, request.query, request.base_url, "/nodecounts",
                                    fake.knobs.max_page_size))


@handles("Jobs_ListJobPreparationAndReleaseTaskStatus")
def list_preparation_status(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        views = []
        for pool in fake.store.pools.values():
            for node in pool.nodes:
                prep = node.preparations.get(job.id.lower())
                if prep is None:
                    continue
                node_url = f"{request.base_url}/pools/{quote(pool.id)}/nodes/{quote(node.id)}"
                relative = f"workitems/{job.id}/job-1/{PREPARATION_DIR}"
                views.append({"poolId": pool.id, "nodeId": node.id, "nodeUrl": node_url,
                              "jobPreparationTaskExecutionInfo": prep.view(f"{node_url}/files",
                                                                           relative)})
    path = f"/jobs/{quote(job.id)}/jobpreparationandreleasetaskstatus"
    return Response(200, odata.page(views, request.query, request.base_url, path,
                                    fake.knobs.max_page_size))


def _node_file(fake: "FakeBatch", request: Request, with_body: bool) -> Response:
    with fake.store.lock:
        pool = _pool(fake, request.params["poolId"])
        node = next((n for n in pool.nodes if n.id == request.params["nodeId"]), None)
        if node is None or node.root is None:
            raise errors.not_found("Node")
        root = node.root
    name = unquote(request.params["filePath"]).replace("\\", "/").lstrip("/")
    path = (root / name).resolve()
    if root.resolve() not in (path, *path.parents):
        raise errors.file_not_found(name)  # nothing outside the node's Batch folders
    url = f"{request.base_url}/pools/{quote(pool.id)}/nodes/{quote(node.id)}/files/{quote(name, safe='')}"
    return file_answer(request, path, name, url, with_body)


@handles("Nodes_GetNodeFile")
def get_node_file(fake: "FakeBatch", request: Request) -> Response:
    return _node_file(fake, request, with_body=True)


@handles("Nodes_GetNodeFileProperties")
def get_node_file_properties(fake: "FakeBatch", request: Request) -> Response:
    return _node_file(fake, request, with_body=False)
