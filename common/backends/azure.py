"""The Azure Batch backend (azure-batch 15, API 2025-06-01) with Azure Blob Storage.

Requests are built by common/batch_builders.py; this module sends them and reads what
comes back. Waiting is injectable (clock, sleep) so its logic is tested without sleeping.
Errors that never go away by waiting — resize errors (quota, allocation), start task
failures, unusable nodes — end the wait at once, in the service's own words.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

import azure.batch.models as bm
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                   ResourceExistsError, ResourceNotFoundError, ServiceRequestError)

from common import batch_builders as bb
from common import storage as st
from common.backends.base import Backend, BlobStore, StatusCallback
from common.config import Settings
from common.errors import ToolError
from common.model import JobSpec, PoolSpec, TaskCounts, TaskFailure
from common.redaction import redact

STDERR_TAIL_LINES = 10
POOL_READY_TIMEOUT_SECONDS = 30 * 60
DELETE_WAIT_SECONDS = 120
ADD_ATTEMPTS = 5
IN_FLIGHT = 8  # task collections sent at once; each carries 100 tasks
UNUSABLE_NODE_STATES = {"starttaskfailed", "unusable"}
READY_NODE_STATES = {"idle", "running"}


def _value(state: object) -> str:
    """An enum from the SDK (a str subclass whose str() is its name) or a plain string, as
    the service spells it: 'idle', 'steady', 'servererror'."""
    return str(getattr(state, "value", state))


def _message(error: HttpResponseError) -> str:
    """The service's own words: code and message, without request ids or URLs with SAS."""
    code = getattr(error.error, "code", None) if error.error else None
    text = (getattr(error.error, "message", None) or str(error)) if error.error else str(error)
    first = (str(text).strip().splitlines() or [""])[0]  # not the RequestId/Time lines after it
    return redact(f"{code}: {first}" if code else first)


# ---------------------------------------------------------------------------- pure checks


@dataclass(frozen=True)
class PoolState:
    ready: bool
    summary: str
    error: str | None = None


def pool_state(pool: bm.BatchPool, nodes: list[bm.BatchNode], target: int) -> PoolState:
    """Whether the pool can run tasks, is still coming up, or never will."""
    if pool.resize_errors:
        words = "; ".join(f"{e.code}: {e.message}" for e in pool.resize_errors)
        return PoolState(False, "resize failed", f"pool {pool.id} cannot get its nodes: {words}")
    counts: dict[str, int] = {}
    for node in nodes:
        counts[_value(node.state)] = counts.get(_value(node.state), 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no nodes yet"
    broken = [n for n in nodes if _value(n.state) in UNUSABLE_NODE_STATES]
    if broken:
        return PoolState(False, summary, _node_error(pool.id, broken[0]))
    ready = sum(counts.get(s, 0) for s in READY_NODE_STATES)
    steady = _value(pool.allocation_state) == "steady"
    return PoolState(ready >= target or (steady and ready > 0 and ready == len(nodes)), summary)


def _node_error(pool_id: str, node: bm.BatchNode) -> str:
    info = node.start_task_info.failure_info if node.start_task_info else None
    if info:
        return f"pool {pool_id}: node {node.id} start task failed: {info.code}: {info.message}"
    errors = "; ".join(f"{e.code}: {e.message}" for e in node.errors or []) or "no details given"
    return f"pool {pool_id}: node {node.id} is {_value(node.state)}: {errors}"


def pool_mismatch(pool: bm.BatchPool, spec: PoolSpec, settings: Settings) -> str | None:
    """Why an existing pool with our id cannot be reused, or None."""
    if (pool.vm_size or "").lower() != (spec.vm_size or "").lower():
        return f"its VM size is {pool.vm_size}, not {spec.vm_size}"
    vm = pool.virtual_machine_configuration
    ref = vm.image_reference if vm else None
    want = settings.app.pool_image
    have = (ref.publisher, ref.offer, ref.sku) if ref else (None, None, None)
    if tuple((x or "").lower() for x in have) != (want.publisher.lower(), want.offer.lower(), want.sku.lower()):
        return f"its image is {'/'.join(str(x) for x in have)}, not {want.publisher}/{want.offer}/{want.sku}"
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


# ---------------------------------------------------------------------------- adding tasks


def add_tasks(client: BatchClient, job_id: str, tasks: list[bm.BatchTaskCreateOptions],
              sleep: Callable[[float], None] = time.sleep, in_flight: int = IN_FLIGHT) -> int:
    """Add tasks 100 per request, `in_flight` requests at once, each chunk retried a bounded
    number of times. Returns the number of requests sent. Task ids are stable, so a task
    that did get in before a retry comes back as TaskExists, which counts as success."""
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        futures = [pool.submit(_add_chunk, client, job_id, chunk, sleep) for chunk in bb.chunks(tasks)]
        return sum(f.result() for f in futures)


def _add_chunk(client: BatchClient, job_id: str, chunk: list[bm.BatchTaskCreateOptions],
               sleep: Callable[[float], None]) -> int:
    remaining, requests = chunk, 0
    for attempt in range(ADD_ATTEMPTS):
        requests += 1
        try:
            result = client.create_task_collection(job_id, bm.BatchTaskGroup(task_values=remaining))
        except HttpResponseError as error:
            if error.status_code == 413 and len(remaining) > 1:
                half = len(remaining) // 2
                return requests + _add_chunk(client, job_id, remaining[:half], sleep) + \
                    _add_chunk(client, job_id, remaining[half:], sleep)
            if error.status_code is None or error.status_code < 500:
                raise ToolError(f"job {job_id}: tasks refused: {_message(error)}") from None
            sleep(2 ** attempt)
            continue
        remaining = _still_to_add(job_id, remaining, result.result_values or [])
        if not remaining:
            return requests
        sleep(2 ** attempt)
    raise ToolError(f"job {job_id}: {len(remaining)} task(s) could not be added after "
                    f"{ADD_ATTEMPTS} attempts (the service kept failing): e.g. {remaining[0].id}")


def _still_to_add(job_id: str, sent: list[bm.BatchTaskCreateOptions],
                  results: list[bm.BatchTaskCreateResult]) -> list[bm.BatchTaskCreateOptions]:
    by_id = {r.task_id: r for r in results}
    retry = []
    for task in sent:
        result = by_id.get(task.id)
        if result is None or _value(result.status) == "servererror":
            retry.append(task)  # an answer that left a task out must not make it vanish
        elif _value(result.status) == "clienterror":
            code = result.error.code if result.error else None
            if code != "TaskExists":
                text = result.error.message.value if result.error and result.error.message else ""
                raise ToolError(f"job {job_id}: task {task.id} refused: {code}: {text}")
    return retry


# ---------------------------------------------------------------------------- the backend


class AzureBackend(Backend):
    name = "azure"

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        app = settings.app
        self.settings = settings
        self.clock, self.sleep = clock, sleep
        self.poll_seconds = float(os.environ.get("BATCH_TOOL_POLL_SECONDS", "5"))
        self.account = st.account_from(app)
        self.storage = st.service_client(self.account)
        if app.batch_account_key is not None:
            credential = AzureNamedKeyCredential(app.batch_account_name, app.batch_account_key.reveal())
        else:  # Entra ID: az login, a managed identity, or environment credentials
            from azure.identity import DefaultAzureCredential
            credential = DefaultAzureCredential()
        self.client = BatchClient(app.batch_account_url, credential, retry_total=3)

    def close(self) -> None:
        self.client.close()
        self.storage.close()

    def blob_store(self, container: str) -> BlobStore:
        return st.AzureBlobStore(self.storage, self.account, container)

    def node_setup(self, image: str | None) -> bb.NodeSetup:
        app = self.settings.app
        return bb.NodeSetup(app.pool_image, app.node_agent_sku_id,
                            bb.registry_for(image, app.docker_user, app.docker_token))

    # -- pools -------------------------------------------------------------------------

    def _call(self, what: str, action: Callable):
        """Run one request; a failure becomes a ToolError in the service's words."""
        try:
            return action()
        except ResourceNotFoundError:
            raise
        except (HttpResponseError, ServiceRequestError) as error:
            raise self._error(what, error) from None

    def _error(self, what: str, error: Exception) -> ToolError:
        if isinstance(error, ServiceRequestError):
            return ToolError(f"{what}: cannot reach {self.settings.app.batch_account_url} "
                             f"({str(error).splitlines()[0]})")
        assert isinstance(error, HttpResponseError)
        if isinstance(error, ClientAuthenticationError) or error.status_code in (401, 403):
            return ToolError(f"{what}: the Batch account refused the credentials ({_message(error)}): "
                             "check BATCH_ACCOUNT_NAME, BATCH_ACCOUNT_KEY and BATCH_ACCOUNT_URL")
        return ToolError(f"{what}: {_message(error)}")

    def prepare_pool(self, spec: PoolSpec, on_status: StatusCallback) -> None:
        existing = self._find_pool(spec.pool_id, on_status)
        if existing is not None:
            why = pool_mismatch(existing, spec, self.settings)
            if why:
                raise ToolError(f"pool {spec.pool_id} already exists but {why}: delete it "
                                "(Azure portal, or answer yes to 'Delete job/pool') or change SIM_ID")
            on_status(f"reusing pool {spec.pool_id} ({existing.current_dedicated_nodes} node(s))")
        else:
            self._check_image(on_status)
            options = bb.pool_options(spec, self.node_setup(spec.image))
            self._call(f"creating pool {spec.pool_id}", lambda: self.client.create_pool(options))
            on_status(f"created pool {spec.pool_id}: {spec.node_count} x {spec.vm_size}")
        self.wait_for_nodes(spec.pool_id, spec.node_count, on_status)

    def _find_pool(self, pool_id: str, on_status: StatusCallback) -> bm.BatchPool | None:
        pool = self._lookup_pool(pool_id)
        if pool is not None and _value(pool.state) == "deleting":
            on_status(f"pool {pool_id} is still being deleted: waiting for it to go")
            deadline = self.clock() + POOL_READY_TIMEOUT_SECONDS
            while pool is not None:
                if self.clock() > deadline:
                    raise ToolError(f"pool {pool_id} is still being deleted: try again later")
                self.sleep(self.poll_seconds)
                pool = self._lookup_pool(pool_id)
        return pool

    def _lookup_pool(self, pool_id: str) -> bm.BatchPool | None:
        try:
            return self._call(f"pool {pool_id}", lambda: self.client.get_pool(pool_id))
        except ResourceNotFoundError:
            return None

    def _check_image(self, on_status: StatusCallback) -> None:
        images = self._call("listing supported images", lambda: list(self.client.list_supported_images()))
        problem = image_problem(images, self.settings, datetime.now(timezone.utc))
        if problem:
            raise ToolError(f"{problem}: set POOL_IMAGE and NODE_AGENT_SKU_ID in appconfig.json")
        image = self.settings.app.pool_image
        on_status(f"image {image.publisher}/{image.offer}/{image.sku} is supported and container-capable")

    def wait_for_nodes(self, pool_id: str, target: int, on_status: StatusCallback) -> None:
        """Until the pool can run tasks. An auto pool may already be gone: its job ended."""
        deadline = self.clock() + POOL_READY_TIMEOUT_SECONDS
        last = None
        while True:
            pool = self._lookup_pool(pool_id)
            if pool is None or _value(pool.state) == "deleting":
                on_status(f"pool {pool_id} is gone: its job has ended")
                return
            nodes = self._call(f"nodes of {pool_id}", lambda: list(self.client.list_nodes(pool_id)))
            state = pool_state(pool, nodes, target)
            if state.error:
                raise ToolError(state.error)
            if state.summary != last:
                on_status(f"nodes: {state.summary}")
                last = state.summary
            if state.ready:
                return
            if self.clock() > deadline:
                raise ToolError(f"pool {pool_id}: nodes not ready after "
                                f"{POOL_READY_TIMEOUT_SECONDS // 60} minutes ({state.summary})")
            self.sleep(self.poll_seconds)

    # -- jobs --------------------------------------------------------------------------

    def task_urls(self, job: JobSpec) -> bb.TaskUrls:
        expiry = st.sas_expiry(self.settings.sim.timeout_minutes)
        blobs = {i.blob for t in job.tasks for i in t.inputs if not i.is_prefix}
        return bb.TaskUrls(
            read={b: st.blob_read_url(self.account, job.container, b, expiry) for b in sorted(blobs)},
            read_list=st.container_read_list_url(self.account, job.container, expiry),
            write=st.container_write_url(self.account, job.container, expiry))

    def build_tasks(self, job: JobSpec) -> list[bm.BatchTaskCreateOptions]:
        urls = self.task_urls(job)
        return [bb.task_options(t, job.image, urls) for t in job.tasks]

    def describe(self, pool: PoolSpec, job: JobSpec, shown_tasks: int = 3) -> list[tuple[str, str]]:
        secrets = self.settings.app.secrets()
        setup = self.node_setup(pool.image)
        tasks = self.build_tasks(JobSpec(job.job_id, job.pool_id, job.container,
                                         job.tasks[:shown_tasks], job.image))
        pool_part = [] if job.auto_pool else [
            ("pool (POST /pools)", bb.redacted_json(bb.pool_options(pool, setup), secrets))]
        return (pool_part
                + [("job (POST /jobs)" + (", with its auto pool" if job.auto_pool else ""),
                    bb.redacted_json(bb.job_options(job, setup), secrets))]
                + [(f"task {t.id} (POST /jobs/{job.job_id}/addtaskcollection)",
                    bb.redacted_json(t, secrets)) for t in tasks]
                + [("requests", f"{bb.request_count(len(job.tasks))} requests to start "
                                f"{len(job.tasks)} task(s): supported images, pool, job, "
                                f"{len(bb.chunks(list(job.tasks)))} task collection(s) of up to "
                                f"{bb.TASKS_PER_REQUEST}, job update")])

    def submit_job(self, job: JobSpec, on_status: StatusCallback) -> str:
        if job.auto_pool:
            self._check_image(on_status)
        options = bb.job_options(job, self.node_setup(job.image))
        try:
            self._call(f"creating job {job.job_id}", lambda: self.client.create_job(options))
        except ResourceExistsError:
            pass  # a resubmission: tasks that exist come back as TaskExists
        add_tasks(self.client, job.job_id, self.build_tasks(job), sleep=self.sleep)
        self._call(f"job {job.job_id}", lambda: self.client.update_job(job.job_id, bb.job_completion_update()))
        if job.auto_pool is None:
            return job.pool_id
        pool_id = self._auto_pool_id(job.job_id)
        on_status(f"auto pool {pool_id}: {job.auto_pool.node_count} x {job.auto_pool.vm_size}, "
                  "deleted by Batch when the job ends")
        self.wait_for_nodes(pool_id, job.auto_pool.node_count, on_status)
        return pool_id

    def _auto_pool_id(self, job_id: str) -> str:
        deadline = self.clock() + POOL_READY_TIMEOUT_SECONDS
        while True:
            job = self._call(f"job {job_id}", lambda: self.client.get_job(job_id))
            info = job.execution_info
            if info and info.scheduling_error:
                error = info.scheduling_error
                raise ToolError(f"job {job_id} cannot get its pool: {error.code}: {error.message}")
            if info and info.pool_id:
                return info.pool_id
            if self.clock() > deadline:
                raise ToolError(f"job {job_id}: Batch did not create its pool in time")
            self.sleep(self.poll_seconds)

    def job_state(self, job_id: str) -> str | None:
        try:
            return _value(self._call(f"job {job_id}", lambda: self.client.get_job(job_id)).state)
        except ResourceNotFoundError:
            return None

    def pool_exists(self, pool_id: str) -> bool:
        return self._lookup_pool(pool_id) is not None

    def task_counts(self, job_id: str) -> TaskCounts:
        counts = self._call(f"job {job_id}", lambda: self.client.get_job_task_counts(job_id)).task_counts
        return TaskCounts(counts.active, counts.running, counts.succeeded, counts.failed)

    def task_failures(self, job_id: str) -> list[TaskFailure]:
        tasks = self._call(f"job {job_id}", lambda: list(self.client.list_tasks(
            job_id, filter="executionInfo/result eq 'failure'")))
        failures = []
        for task in sorted(tasks, key=lambda t: t.id):
            info = task.execution_info
            failure = info.failure_info if info else None
            tail = self.task_output(job_id, task.id, "stderr.txt").splitlines()[-STDERR_TAIL_LINES:]
            failures.append(TaskFailure(task.id, info.exit_code if info else None,
                                        failure.code if failure else None,
                                        failure.message if failure else None, tuple(tail)))
        return failures

    def task_output(self, job_id: str, task_id: str, name: str) -> str:
        try:
            data = b"".join(self.client.download_task_file(job_id, task_id, name))
        except HttpResponseError:
            return ""  # no file (the task never started on a node): nothing to show
        return data.decode("utf-8", errors="replace")

    # -- cleanup -----------------------------------------------------------------------

    def delete_job(self, job_id: str) -> None:
        self._delete(f"job {job_id}", lambda: self.client.begin_delete_job(
            job_id, polling_interval=self.poll_seconds))

    def delete_pool(self, pool_id: str) -> None:
        self._delete(f"pool {pool_id}", lambda: self.client.begin_delete_pool(
            pool_id, polling_interval=self.poll_seconds))

    def _delete(self, what: str, begin: Callable) -> None:
        try:
            poller = begin()
        except ResourceNotFoundError:
            return
        except HttpResponseError as error:
            raise ToolError(f"deleting {what}: {_message(error)}: delete it in the Azure portal") from None
        poller.wait(timeout=DELETE_WAIT_SECONDS)
        if poller.done() and poller.status().lower() == "failed":
            raise ToolError(f"deleting {what} failed: check it in the Azure portal")
