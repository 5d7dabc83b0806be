"""The Azure Batch backend (azure-batch 15, API 2025-06-01) with Azure Blob Storage.

Requests are built by builders.py and sent with bounded resends
(calls.py); answers are judged by pure functions (checks.py). This module ties
them to the Backend contract. Waiting is injectable (clock, sleep) so its logic is tested
without sleeping. What a real node leaves behind is not relied on: with an auto pool the node
and its files are gone when the job ends, so logs are read from the output blobs.
"""
from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from typing import Any, Callable

import azure.batch.models as bm
from azure.batch import BatchClient
from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError,
                                   ResourceExistsError, ResourceNotFoundError, ServiceRequestError,
                                   ServiceResponseError)

from common.backends.azure import builders as bb
from common.backends.azure import plan
from common.backends.azure import storage as st
from common.backends.azure.calls import add_tasks, create_job, end_with_last_task, send
from common.backends.azure.checks import (error_code, failure_words, identity_problem,
                                          image_problem, pool_health, pool_mismatch, pool_state,
                                          service_words, value_of)
from common.backends.base import Backend, BlobStore, Capabilities, StatusCallback
from common.config import Settings
from common.backends.azure.entra import batch_credential
from common.errors import ToolError
from common.geant4.upload import SHARED_CONTAINER, STAGE_BLOB, split_data_url
from common.worker.cores import vm_cores
from common.model import JobSpec, PoolHealth, PoolSpec, TaskCounts, TaskFailure, TaskStats
from common.backends.azure.network import ReportingRetry, RequestLog, retry_scale

_RAISE = object()  # _call: no answer stands for a missing resource
POOL_READY_TIMEOUT_SECONDS = 30 * 60
DELETE_WAIT_SECONDS = 120
STDERR_TAIL_BYTES = 4096


class AzureBackend(Backend):
    name = "azure"
    capabilities = Capabilities(bills=True, spot=True, task_dependencies=True)  # type: ignore[assignment]

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] | None = None,
                 log: RequestLog | None = None) -> None:
        """`say` tells the user of each SDK retry as it happens; `log` (-v) logs each request."""
        if log is None:  # the SDKs log handled conditions (a 404 they recover from) as warnings
            logging.getLogger("azure").setLevel(logging.ERROR)
        app = settings.app
        self.settings = settings
        self.clock, self.sleep = clock, sleep
        scale = retry_scale()
        self.backoff = (lambda seconds: sleep(seconds * scale)) if scale != 1 else sleep
        self.poll_seconds = float(os.environ.get("BATCH_TOOL_POLL_SECONDS", "5"))
        self.health_seconds = float(os.environ.get("BATCH_TOOL_HEALTH_SECONDS", "30"))
        self.account = st.account_from(app)
        self.storage = st.service_client(self.account, say, log)
        credential, scopes = batch_credential(app)
        self.client = BatchClient(app.batch_account_url, credential, credential_scopes=scopes,
                                  retry_policy=ReportingRetry(say, retry_total=3, scale=scale),
                                  **(log.hooks() if log else {}))

    def close(self) -> None:
        self.client.close()
        self.storage.close()

    def blob_store(self, container: str) -> BlobStore:
        return st.AzureBlobStore(self.storage, self.account, container)

    def node_setup(self, image: str | None) -> bb.NodeSetup:
        app = self.settings.app
        return bb.NodeSetup(app.pool_image, app.node_agent_sku_id, bb.image_credentials(app, image),
                            app.pool_os_disk_gb)

    # -- requests ----------------------------------------------------------------------

    def _call(self, what: str, action: Callable, if_missing: Any = _RAISE):
        """Run one request (resent when that is safe); a failure becomes a ToolError in the
        service's words. A 404 gives `if_missing` when the caller says what it means (a
        job that is gone: None), else a ToolError that it does not exist."""
        try:
            return send(what, action, self.backoff)
        except ResourceNotFoundError as error:
            if if_missing is _RAISE:
                raise ToolError(f"{what} does not exist on the Batch account "
                                f"({service_words(error)})") from None
            return if_missing
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as error:
            raise self._error(what, error) from None

    def _error(self, what: str, error: Exception) -> ToolError:
        url = self.settings.app.batch_account_url
        if isinstance(error, (ServiceRequestError, ServiceResponseError)):
            first = (str(error).splitlines() or [""])[0]
            return ToolError(f"{what}: cannot reach the Batch account at {url} ({first}): check "
                             "BATCH_ACCOUNT_URL and the network")
        assert isinstance(error, HttpResponseError)
        if isinstance(error, ClientAuthenticationError) or error.status_code in (401, 403):
            return ToolError(f"{what}: the Batch account refused the credentials ({service_words(error)}): "
                             "check BATCH_ACCOUNT_NAME, BATCH_ACCOUNT_KEY and BATCH_ACCOUNT_URL")
        return ToolError(f"{what}: {service_words(error)}")

    # -- pools -------------------------------------------------------------------------

    def prepare_pool(self, spec: PoolSpec, on_status: StatusCallback) -> None:
        existing = self._find_pool(spec.pool_id, on_status)
        identity = identity_problem(spec.pool_id, existing, self.node_setup(spec.image).registry)
        if identity:
            raise ToolError(identity)
        if existing is None:
            self._check_image(on_status)
            options = bb.pool_options(spec, self.node_setup(spec.image))
            try:
                self._call(f"creating pool {spec.pool_id}", lambda: self.client.create_pool(options))
                on_status(f"created pool {spec.pool_id}: {_nodes(spec)} x {spec.vm_size}")
            except ToolError:
                existing = self._lookup_pool(spec.pool_id)  # a resent creation that got in
                if existing is None:
                    raise
        if existing is not None:
            why = pool_mismatch(existing, spec.vm_size, self.settings)
            if why:
                raise ToolError(f"pool {spec.pool_id} already exists but {why}: delete it "
                                "(Azure portal, or answer yes to 'Delete job/pool') or change SIM_ID")
            on_status(f"reusing pool {spec.pool_id} ({existing.current_dedicated_nodes} node(s))")
        self.wait_for_nodes(spec.pool_id, on_status)

    def _find_pool(self, pool_id: str, on_status: StatusCallback) -> bm.BatchPool | None:
        pool = self._lookup_pool(pool_id)
        if pool is not None and value_of(pool.state) == "deleting":
            on_status(f"pool {pool_id} is still being deleted: waiting for it to go")
            deadline = self.clock() + POOL_READY_TIMEOUT_SECONDS
            while pool is not None:
                if self.clock() > deadline:
                    raise ToolError(f"pool {pool_id} is still being deleted: try again later")
                self.sleep(self.poll_seconds)
                pool = self._lookup_pool(pool_id)
        return pool

    def _lookup_pool(self, pool_id: str) -> bm.BatchPool | None:
        return self._call(f"pool {pool_id}", lambda: self.client.get_pool(pool_id), if_missing=None)

    def _check_image(self, on_status: StatusCallback) -> None:
        images = self._call("listing supported images", lambda: list(self.client.list_supported_images()))
        problem = image_problem(images, self.settings, datetime.now(timezone.utc))
        if problem:
            raise ToolError(f"{problem}: set POOL_IMAGE and NODE_AGENT_SKU_ID in appconfig.json")
        image = self.settings.app.pool_image
        on_status(f"image {image.publisher}/{image.offer}/{image.sku} is supported and container-capable")

    def wait_for_nodes(self, pool_id: str, on_status: StatusCallback) -> None:
        """Until at least one node can run tasks (the others may follow); at once with the
        service's words when none can and none is on its way. An auto pool may already be
        gone: its job ended."""
        deadline = self.clock() + POOL_READY_TIMEOUT_SECONDS
        last, said = None, set()
        while True:
            pool = self._lookup_pool(pool_id)
            if pool is None or value_of(pool.state) == "deleting":
                on_status(f"pool {pool_id} is gone: its job has ended")
                return
            nodes = self._call(f"nodes of {pool_id}", lambda: list(self.client.list_nodes(pool_id)))
            state = pool_state(pool, nodes)
            if state.error:
                again = self._lookup_pool(pool_id)  # a job that already ended takes its pool
                if again is None or value_of(again.state) == "deleting":
                    on_status(f"pool {pool_id} is gone: its job has ended")
                    return
                raise ToolError(state.error)
            if state.summary != last:
                on_status(f"nodes: {state.summary}")
                last = state.summary
            for warning in state.warnings:
                if warning not in said:
                    on_status(f"warning: {warning} (the campaign goes on with the other nodes)")
                    said.add(warning)
            for note in state.notes:
                if note not in said:
                    on_status(note)
                    said.add(note)
            if state.ready:
                return
            if self.clock() > deadline:
                raise ToolError(f"pool {pool_id}: no node ready after "
                                f"{POOL_READY_TIMEOUT_SECONDS // 60} minutes ({state.summary})")
            self.sleep(self.poll_seconds)

    def pool_health(self, pool_id: str) -> PoolHealth | None:
        """One small request for the counts (plus the pool, for its resize errors)."""
        counts = self._call("node counts", lambda: list(self.client.list_pool_node_counts(
            filter=f"poolId eq '{pool_id}'")))
        pool = self._lookup_pool(pool_id)
        if pool is None:
            return None
        return pool_health(counts[0] if counts else None, pool)

    # -- jobs --------------------------------------------------------------------------

    def task_urls(self, job: JobSpec, dry_run: bool = False) -> bb.TaskUrls:
        expiry = st.sas_expiry(self.settings.sim.timeout_minutes)
        # --dry-run sends nothing, not even the request for a user delegation key; its
        # signatures are hidden anyway
        signing = st.SigningKey(account_key=st.PLACEHOLDER_KEY) if dry_run and self.account.key is None \
            else st.signing_key(self.storage, self.account, expiry)
        everyone = list(job.tasks) + ([job.preparation] if job.preparation else [])
        blobs = {i.blob for t in everyone for i in t.inputs if not i.is_prefix}
        data = job.shared_data
        if data is not None:
            blobs.add(STAGE_BLOB)  # the node's side of the data staging
        return bb.TaskUrls(
            read={b: st.blob_read_url(self.account, job.container, b, expiry, signing=signing)
                  for b in sorted(blobs)},
            read_list=st.container_read_list_url(self.account, job.container, expiry, signing=signing),
            write=st.container_write_url(self.account, job.container, expiry, signing=signing),
            data_source=st.container_read_list_url(self.account, data.container, expiry,
                                                   signing=signing)
            if data is not None and data.container else None)

    def shared_data_store(self) -> BlobStore | None:
        return st.AzureBlobStore(self.storage, self.account, SHARED_CONTAINER)

    def store_at(self, url: str) -> tuple[BlobStore, str] | None:
        found = split_data_url(url, self.account.url)
        if found is None:
            return None
        return st.AzureBlobStore(self.storage, self.account, found[0]), found[1]

    def threads_per_task(self, pool: PoolSpec) -> int | None:
        cores = vm_cores(pool.vm_size)
        return max(1, cores // pool.slots_per_node) if cores else None

    def describe(self, pool: PoolSpec, job: JobSpec, shown_tasks: int = 3) -> list[tuple[str, str]]:
        setup = self.node_setup(pool.image)
        shown = JobSpec(job.job_id, job.pool_id, job.container, job.tasks[:shown_tasks], job.image,
                        preparation=job.preparation, run_as_root=job.run_as_root,
                        keep_entrypoint=job.keep_entrypoint, shared_data=job.shared_data,
                        task_dependencies=job.task_dependencies)
        return plan.describe(pool, job, setup, self.task_urls(shown, dry_run=True),
                             self.settings.app, shown_tasks)

    def submit_job(self, job: JobSpec, on_status: StatusCallback) -> str:
        if job.auto_pool:
            self._check_image(on_status)
        urls = self.task_urls(job)
        setup = self.node_setup(job.image)
        options = bb.job_options(job, setup, urls)
        create_job(self.client, options, job.owner, self.backoff)
        self._add(job, urls, setup.registry)
        if job.seal:
            end_with_last_task(self.client, job.job_id, self.backoff)
        if job.auto_pool is None:
            return job.pool_id
        pool_id = self._auto_pool_id(job.job_id)
        on_status(f"auto pool {pool_id}: {_nodes(job.auto_pool)} x {job.auto_pool.vm_size}, "
                  "deleted by Batch when the job ends")
        self.wait_for_nodes(pool_id, on_status)
        return pool_id

    def add_tasks(self, job: JobSpec) -> None:
        self._add(job, self.task_urls(job), self.node_setup(job.image).registry)

    def _add(self, job: JobSpec, urls: bb.TaskUrls, registry: Any) -> None:
        """Every task, a task's dependencies always before it (a reducer tree's levels)."""
        for group in bb.in_dependency_order(list(job.tasks)):
            add_tasks(self.client, job.job_id, [bb.task_options(t, job, urls, registry)
                                                for t in group], sleep=self.backoff)

    def seal_job(self, job_id: str) -> None:
        end_with_last_task(self.client, job_id, self.backoff)

    def active_task_ids(self, job_id: str) -> list[str]:
        tasks = self._call(f"job {job_id}", lambda: list(self.client.list_tasks(
            job_id, filter="state eq 'active'", select=["id"])))
        return [t.id for t in tasks]

    def task_ids(self, job_id: str) -> list[str]:
        tasks = self._call(f"job {job_id}", lambda: list(self.client.list_tasks(
            job_id, select=["id"])))
        return [t.id for t in tasks]

    def delete_tasks(self, job_id: str, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self._call(f"task {task_id}", lambda: self.client.delete_task(job_id, task_id),
                       if_missing=None)

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
        job = self._call(f"job {job_id}", lambda: self.client.get_job(job_id), if_missing=None)
        return None if job is None else value_of(job.state)

    def pool_exists(self, pool_id: str) -> bool:
        return self._lookup_pool(pool_id) is not None

    def task_counts(self, job_id: str, exact: bool = False) -> TaskCounts:
        """The service's counts ("may not always be up to date"), or with `exact` a count
        over the task list itself (one request per 1,000 tasks)."""
        if not exact:
            counts = self._call(f"job {job_id}", lambda: self.client.get_job_task_counts(job_id)).task_counts
            return TaskCounts(counts.active, counts.running, counts.succeeded, counts.failed)
        tasks = self._call(f"job {job_id}", lambda: list(self.client.list_tasks(
            job_id, select=["id", "state", "executionInfo"])))
        found = {"active": 0, "running": 0, "succeeded": 0, "failed": 0}
        for task in tasks:
            state = value_of(task.state)
            if state == "completed":
                result = value_of(task.execution_info.result) if task.execution_info else "failure"
                found["succeeded" if result == "success" else "failed"] += 1
            else:
                found["running" if state in ("running", "preparing") else "active"] += 1
        return TaskCounts(**found)

    def task_failures(self, job_id: str) -> list[TaskFailure]:
        tasks = self._call(f"job {job_id}", lambda: list(self.client.list_tasks(
            job_id, filter="executionInfo/result eq 'failure'")))
        failures = []
        for task in sorted(tasks, key=lambda t: t.id):
            info = task.execution_info
            failure = info.failure_info if info else None
            failures.append(TaskFailure(task.id, info.exit_code if info else None,
                                        failure.code if failure else None,
                                        failure_words(failure) if failure else None))
        return failures

    def task_stats(self, job_id: str) -> TaskStats:
        tasks = self._call(f"job {job_id}", lambda: list(self.client.list_tasks(
            job_id, select=["id", "executionInfo"])))
        durations, requeues = [], 0
        for task in tasks:
            info = task.execution_info
            if info is None:
                continue
            requeues += info.requeue_count or 0
            if value_of(info.result) == "success" and info.start_time and info.end_time:
                durations.append((info.end_time - info.start_time).total_seconds())
        return TaskStats(tuple(durations), requeues)

    def preparation_failures(self, job_id: str) -> list[TaskFailure]:
        """Job preparation tasks that failed, one per node, with the end of their stderr
        (read from the node, which still exists while the job waits for it)."""
        entries = self._call(f"job {job_id}", lambda: list(
            self.client.list_job_preparation_and_release_task_status(job_id)))
        failures = []
        for entry in entries:
            info = entry.job_preparation_task_execution_info
            if info is None or value_of(info.result) != "failure":
                continue
            why = info.failure_info
            tail = self._node_file_tail(entry.pool_id, entry.node_id,
                                        f"{info.task_root_directory}/stderr.txt")
            failures.append(TaskFailure(f"job preparation on node {entry.node_id}", info.exit_code,
                                        why.code if why else None, failure_words(why) if why else None,
                                        tuple(tail.splitlines()[-10:])))
        return failures

    def _node_file_tail(self, pool_id: str, node_id: str, path: str) -> str:
        try:
            data = b"".join(self.client.download_node_file(pool_id, node_id, path))
        except (HttpResponseError, ServiceRequestError, ServiceResponseError):
            return ""  # the node went: nothing more to say than the failure info
        return data[-STDERR_TAIL_BYTES:].decode("utf-8", errors="replace")

    # -- cleanup -----------------------------------------------------------------------

    def delete_job(self, job_id: str) -> None:
        self._delete(f"job {job_id}", lambda: self.client.begin_delete_job(
            job_id, polling_interval=self.poll_seconds))

    def delete_pool(self, pool_id: str) -> None:
        self._delete(f"pool {pool_id}", lambda: self.client.begin_delete_pool(
            pool_id, polling_interval=self.poll_seconds))

    def _delete(self, what: str, begin: Callable) -> None:
        try:
            poller = send(f"deleting {what}", begin, self.backoff)
        except ResourceNotFoundError:
            return
        except HttpResponseError as error:
            if error_code(error) in ("JobBeingDeleted", "PoolBeingDeleted"):
                return
            raise ToolError(f"deleting {what}: {service_words(error)}: delete it in the Azure portal") from None
        except (ServiceRequestError, ServiceResponseError) as error:
            raise self._error(f"deleting {what}", error) from None
        poller.wait(timeout=DELETE_WAIT_SECONDS)
        if poller.done() and poller.status().lower() == "failed":
            raise ToolError(f"deleting {what} failed: check it in the Azure portal")


def _nodes(spec: PoolSpec) -> str:
    return f"{spec.node_count}" + (f" dedicated + {spec.spot_node_count} Spot" if spec.spot_node_count else "")


__all__ = ["AzureBackend", "POOL_READY_TIMEOUT_SECONDS", "ResourceExistsError"]
