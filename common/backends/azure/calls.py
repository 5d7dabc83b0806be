"""Sending requests to Batch as its documentation says a client must: bounded resends.

azure-core retries GETs and DELETEs by itself, but not a POST whose reply was lost
(ServiceResponseError) nor one answered 408 or 429 without Retry-After — and the service may
have carried such a POST out. The spec's answer (Tasks_CreateTaskCollection): resend with the
same ids; a task that got in the first time then comes back `TaskExists`, which is success.
The same holds for a job: `JobExists` is success when the job carries our owner mark.
Everything here is bounded: a service that keeps failing ends in a ToolError in its words.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import azure.batch.models as bm
from azure.batch import BatchClient
from azure.core.exceptions import (HttpResponseError, ServiceRequestError,
                                   ServiceResponseError)

from common.backends.azure import builders as bb
from common.backends.azure.checks import error_code, service_words, value_of
from common.errors import ToolError

ATTEMPTS = 5
IN_FLIGHT = 8  # task collections sent at once; each carries 100 tasks
RETRIABLE_STATUS = {408, 429, 500, 502, 503, 504}
MAX_BACKOFF_SECONDS = 60.0

T = TypeVar("T")
Sleep = Callable[[float], None]


def backoff(attempt: int, error: Exception | None = None) -> float:
    """Seconds to wait before resending: the service's Retry-After when it gave one."""
    response = getattr(error, "response", None)
    header = response.headers.get("Retry-After") if response is not None else None
    try:
        if header is not None:
            return min(float(header), MAX_BACKOFF_SECONDS)
    except ValueError:
        pass
    return min(2.0 ** attempt, MAX_BACKOFF_SECONDS)


def transient(error: Exception) -> bool:
    """A failure that resending may cure: a lost reply, no connection, 408/429/5xx."""
    if isinstance(error, (ServiceResponseError, ServiceRequestError)):
        return True
    return isinstance(error, HttpResponseError) and error.status_code in RETRIABLE_STATUS


def send(what: str, action: Callable[[], T], sleep: Sleep = time.sleep,
         attempts: int = ATTEMPTS) -> T:
    """Run one request that is safe to resend, resending transient failures a few times.

    Other HttpResponseErrors (404, 409, 401...) reach the caller unchanged, who knows what
    they mean for this request.
    """
    for attempt in range(attempts):
        try:
            return action()
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as error:
            if not transient(error) or attempt == attempts - 1:
                raise
            sleep(backoff(attempt, error))
    raise AssertionError("unreachable")


def create_job(client: BatchClient, options: bm.BatchJobCreateOptions, owner: str,
               sleep: Sleep = time.sleep) -> None:
    """Create the job; an existing job with our owner mark is ours (a resent creation)."""
    try:
        send(f"creating job {options.id}", lambda: client.create_job(options), sleep)
    except HttpResponseError as error:
        code = error_code(error)
        if code != "JobExists":
            raise ToolError(f"creating job {options.id}: {service_words(error)}") from None
        existing = send(f"job {options.id}", lambda: client.get_job(options.id), sleep)
        marks = {m.name: m.value for m in existing.metadata or []}
        if not owner or marks.get(bb.OWNER_METADATA) != owner:
            raise ToolError(f"job {options.id} already exists and was not created by this run "
                            "(another runner of the same campaign?): check with --status") from None


def end_with_last_task(client: BatchClient, job_id: str, sleep: Sleep = time.sleep) -> None:
    """Set onAllTasksComplete to terminatejob. A resend that finds the job already completed
    (or terminating) means the first one got in and the tasks are done."""
    try:
        send(f"job {job_id}", lambda: client.update_job(job_id, bb.job_completion_update()), sleep)
    except HttpResponseError as error:
        if error_code(error) not in ("JobCompleted", "JobBeingTerminated"):
            raise ToolError(f"job {job_id}: {service_words(error)}") from None


# ---------------------------------------------------------------------------- adding tasks


def add_tasks(client: BatchClient, job_id: str, tasks: list[bm.BatchTaskCreateOptions],
              sleep: Sleep = time.sleep, in_flight: int = IN_FLIGHT) -> int:
    """Add tasks 100 per request, `in_flight` requests at once, each chunk resent a bounded
    number of times. Returns the number of requests sent."""
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        futures = [pool.submit(_add_chunk, client, job_id, chunk, sleep) for chunk in bb.chunks(tasks)]
        return sum(f.result() for f in futures)


def _add_chunk(client: BatchClient, job_id: str, chunk: list[bm.BatchTaskCreateOptions],
               sleep: Sleep) -> int:
    remaining, requests = chunk, 0
    for attempt in range(ATTEMPTS):
        requests += 1
        try:
            result = client.create_task_collection(job_id, bm.BatchTaskGroup(task_values=remaining))
        except HttpResponseError as error:
            if error.status_code == 413 and len(remaining) > 1:
                half = len(remaining) // 2
                return requests + _add_chunk(client, job_id, remaining[:half], sleep) + \
                    _add_chunk(client, job_id, remaining[half:], sleep)
            if not transient(error):
                raise ToolError(f"job {job_id}: tasks refused: {service_words(error)}") from None
            sleep(backoff(attempt, error))
            continue
        except (ServiceResponseError, ServiceRequestError) as error:
            # The service may have stored them: resend the same ids (TaskExists = added).
            sleep(backoff(attempt, error))
            continue
        remaining = still_to_add(job_id, remaining, result.result_values or [])
        if not remaining:
            return requests
        sleep(backoff(attempt))
    raise ToolError(f"job {job_id}: {len(remaining)} task(s) could not be added after "
                    f"{ATTEMPTS} attempts (the service kept failing): e.g. {remaining[0].id}")


def still_to_add(job_id: str, sent: list[bm.BatchTaskCreateOptions],
                 results: list[bm.BatchTaskCreateResult]) -> list[bm.BatchTaskCreateOptions]:
    by_id = {r.task_id: r for r in results}
    retry = []
    for task in sent:
        result = by_id.get(task.id)
        if result is None or value_of(result.status) == "servererror":
            retry.append(task)  # an answer that left a task out must not make it vanish
        elif value_of(result.status) == "clienterror":
            code = result.error.code if result.error else None
            if code != "TaskExists":
                text = result.error.message.value if result.error and result.error.message else ""
                raise ToolError(f"job {job_id}: task {task.id} refused: {code}: {text}")
    return retry
