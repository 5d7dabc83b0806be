"""Pure judgements on what the Batch service answers: is a pool usable, can an existing pool
be reused, is an image offered — and the service's own words for each problem.

No client here: functions take the SDK's models (or anything shaped like them) and return
verdicts, so the Azure backend's decisions are tested without a network.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import azure.batch.models as bm
from azure.core.exceptions import HttpResponseError

from common.config import Settings
from common.model import PoolHealth
from common.redaction import redact

BROKEN_NODE_STATES = {"starttaskfailed", "unusable"}
READY_NODE_STATES = {"idle", "running"}
# Nodes on their way to running tasks: not a reason to give up on a pool. A preempted Spot
# node is one too: it still counts in the pool and Batch re-creates it when capacity returns.
COMING_NODE_STATES = {"creating", "starting", "waitingforstarttask", "rebooting", "reimaging",
                      "upgradingos", "preempted"}


def value_of(state: object) -> str:
    """An enum from the SDK (a str subclass whose str() is its name) or a plain string, as
    the service spells it: 'idle', 'steady', 'servererror'."""
    return str(getattr(state, "value", state))


def service_words(error: HttpResponseError) -> str:
    """The service's own words: code and message, without request ids or URLs with SAS."""
    code = getattr(error.error, "code", None) if error.error else None
    text = (getattr(error.error, "message", None) or str(error)) if error.error else str(error)
    first = (str(text).strip().splitlines() or [""])[0]  # not the RequestId/Time lines after it
    return redact(f"{code}: {first}" if code else first)


def error_code(error: HttpResponseError) -> str | None:
    return getattr(error.error, "code", None) if error.error else None


def failure_words(info: bm.BatchTaskFailureInfo) -> str:
    """A task's failureInfo message with its details, where the real reason usually is
    (e.g. the Docker daemon's words for a failed pull); SAS signatures hidden."""
    details = "; ".join(f"{d.name}: {d.value}" for d in info.details or []
                        if d.name not in ("FilePath",) and d.value)
    return redact(f"{info.message} ({details})" if details else str(info.message))


# ---------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class PoolState:
    ready: bool  # at least one node can run tasks
    summary: str
    error: str | None = None  # no node can run tasks, and none is on its way
    warnings: tuple[str, ...] = ()  # problems that leave the pool usable
    notes: tuple[str, ...] = ()  # what the service does by itself (preempted Spot nodes)


def pool_state(pool: bm.BatchPool, nodes: list[bm.BatchNode]) -> PoolState:
    """Whether the pool can run tasks, is still coming up, or never will.

    One bad node is not a dead pool: the campaign goes on on the others and the problem is
    said; only a pool where no node is usable or coming stops at once.
    """
    counts: dict[str, int] = {}
    for node in nodes:
        counts[value_of(node.state)] = counts.get(value_of(node.state), 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no nodes yet"
    resize = [f"{e.code}: {e.message}" for e in pool.resize_errors or []]
    broken = [node_problem(pool.id, n) for n in nodes if value_of(n.state) in BROKEN_NODE_STATES]
    warnings = tuple([f"pool {pool.id} did not get all its nodes: {w}" for w in resize] + broken)
    preempted = counts.get("preempted", 0)
    notes = (f"pool {pool.id}: {preempted} Spot node(s) preempted: Batch replaces them when "
             "capacity returns",) if preempted else ()
    usable = sum(counts.get(s, 0) for s in READY_NODE_STATES)
    coming = sum(counts.get(s, 0) for s in COMING_NODE_STATES)
    steady = value_of(pool.allocation_state) == "steady"
    if usable:
        return PoolState(True, summary, warnings=warnings, notes=notes)
    if nodes and counts.get("leavingpool", 0) == len(nodes):
        return PoolState(False, summary)  # the pool is going (its job ended): not a failure
    if steady and not coming:
        if resize:
            return PoolState(False, summary, f"pool {pool.id} cannot get its nodes: {'; '.join(resize)}")
        why = broken[0] if broken else f"pool {pool.id} has no nodes"
        return PoolState(False, summary, why)
    return PoolState(False, summary, warnings=warnings, notes=notes)


def node_problem(pool_id: str, node: bm.BatchNode) -> str:
    info = node.start_task_info.failure_info if node.start_task_info else None
    if info:
        return f"pool {pool_id}: node {node.id} start task failed: {info.code}: {info.message}"
    errors = "; ".join(f"{e.code}: {e.message}" for e in node.errors or []) or "no details given"
    return f"pool {pool_id}: node {node.id} is {value_of(node.state)}: {errors}"


_COUNT_FIELDS = ("creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running",
                 "starting", "start_task_failed", "leaving_pool", "unknown", "unusable",
                 "waiting_for_start_task", "deallocated", "deallocating", "upgrading_os")


def node_counts(counts: bm.BatchNodeCounts | None) -> dict[str, int]:
    """Node states as the service spells them in node lists ('starttaskfailed', ...)."""
    if counts is None:
        return {}
    found = {}
    for name in _COUNT_FIELDS:
        number = getattr(counts, name, 0) or 0
        if number:
            found[name.replace("_", "")] = number
    return found


def pool_health(counts: bm.BatchPoolNodeCounts | None, pool: bm.BatchPool | None) -> PoolHealth:
    resize = tuple(f"{e.code}: {e.message}" for e in (pool.resize_errors or [])) if pool else ()
    steady = pool is None or value_of(pool.allocation_state) == "steady"
    return PoolHealth(dedicated=tuple(sorted(node_counts(counts.dedicated if counts else None).items())),
                      spot=tuple(sorted(node_counts(counts.low_priority if counts else None).items())),
                      steady=steady, resize_errors=resize)


def pool_mismatch(pool: bm.BatchPool, vm_size: str | None, settings: Settings) -> str | None:
    """Why an existing pool with our id cannot be reused, or None."""
    if (pool.vm_size or "").lower() != (vm_size or "").lower():
        return f"its VM size is {pool.vm_size}, not {vm_size}"
    vm = pool.virtual_machine_configuration
    ref = vm.image_reference if vm else None
    want = settings.app.pool_image
    have = (ref.publisher, ref.offer, ref.sku) if ref else (None, None, None)
    if tuple((x or "").lower() for x in have) != (want.publisher.lower(), want.offer.lower(), want.sku.lower()):
        return f"its image is {'/'.join(str(x) for x in have)}, not {want.publisher}/{want.offer}/{want.sku}"
    return None


def identity_problem(pool_id: str, pool: bm.BatchPool | None, registry) -> str | None:
    """Why a pool cannot pull with the registry's managed identity, or None. The Batch
    service API cannot give a pool an identity (Microsoft: pools with managed identities are
    made "only with the Batch Management Plane APIs"), so such a pool must exist already and
    carry it; `registry` is builders.Registry or None."""
    wanted = getattr(registry, "identity", None)
    if not wanted:
        return None
    how = (f"create pool {pool_id} in the Azure portal (Batch account > Pools > Add) or with an "
           f"ARM template, with the user-assigned identity {wanted}, the same VM size and image "
           "and a container configuration, then run again")
    if pool is None:
        return (f"pool {pool_id} does not exist, and the tool cannot make a pool that carries "
                f"REGISTRY_IDENTITY (Batch gives pools identities only through Azure Resource "
                f"Manager): {how}")
    have = [i.resource_id or "" for i in ((pool.identity.user_assigned_identities or [])
                                          if pool.identity else [])]
    if wanted.lower() not in (h.lower() for h in have):
        return (f"pool {pool_id} does not carry REGISTRY_IDENTITY {wanted} (it has: "
                f"{', '.join(have) or 'no identity'}): delete it and {how}")
    return None


def image_problem(images: Iterable[bm.BatchSupportedImage], settings: Settings,
                  now: datetime) -> str | None:
    """None if the configured image + node agent is offered, container-capable and not retired."""
    want, agent = settings.app.pool_image, settings.app.node_agent_sku_id
    container_capable = []
    for image in images:
        ref = image.image_reference
        capable = "DockerCompatible" in (image.capabilities or [])
        if capable:
            container_capable.append(f"{ref.publisher}/{ref.offer}/{ref.sku} ({image.node_agent_sku_id})")
        if ((ref.publisher or "").lower(), (ref.offer or "").lower(), (ref.sku or "").lower()) != (
                want.publisher.lower(), want.offer.lower(), want.sku.lower()):
            continue
        if image.node_agent_sku_id != agent:
            return f"image {want.publisher}/{want.offer}/{want.sku} needs node agent {image.node_agent_sku_id}, not {agent}"
        if not capable:
            return f"image {want.publisher}/{want.offer}/{want.sku} cannot run containers"
        end = image.batch_support_end_of_life
        if end is not None and end <= now:
            return f"image {want.publisher}/{want.offer}/{want.sku} reached its end of life on {end:%Y-%m-%d}"
        return None
    offered = "; ".join(container_capable[:6]) or "none"
    return (f"image {want.publisher}/{want.offer}/{want.sku} is not offered by this Batch account "
            f"(container-capable images: {offered})")
