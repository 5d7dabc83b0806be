"""One handler per spec operation (by operationId): the Batch REST semantics.

The server has already authenticated the request, matched its operation, and checked its
body against the spec schema; handlers apply the rules the schema cannot express (see
rules.py), change the state under the store lock and build the answer. Statuses are the
spec's (201 create, 202 delete/terminate, 200 addtaskcollection...), which is what the SDK
insists on.
"""
from __future__ import annotations

import mimetypes
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote, unquote

from . import dependencies, errors, odata, rules
from .runner import DELETED, ENDED
from .state import Job, Pool, Task, iso, utcnow

if TYPE_CHECKING:
    from .server import FakeBatch


@dataclass
class Request:
    method: str
    path: str  # raw path, without the query
    params: dict[str, str]  # path parameters, percent-decoded
    query: dict[str, str]  # first value of each query parameter, decoded
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    raw_body: bytes
    base_url: str  # http://host:port as the client addressed us


@dataclass
class Response:
    status: int
    body: Any = None  # dict/list -> JSON; bytes -> as is; None -> empty
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json;odata=minimalmetadata"


Handler = Callable[["FakeBatch", Request], Response]
HANDLERS: dict[str, Handler] = {}


def handles(operation_id: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        HANDLERS[operation_id] = function
        return function
    return register


def _http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(timezone.utc), usegmt=True)


def _created(url: str, etag: str, modified: datetime) -> Response:
    return Response(201, headers={"DataServiceId": url, "Location": url, "ETag": etag,
                                  "Last-Modified": _http_date(modified)})


def _entity(view: dict[str, Any], etag: str, modified: datetime, query: dict[str, str]) -> Response:
    return Response(200, odata.select(view, query.get("$select")),
                    headers={"ETag": etag, "Last-Modified": _http_date(modified)})


# -- lookups (caller holds the lock) --------------------------------------------------------

def _pool(fake: "FakeBatch", pool_id: str) -> Pool:
    pool = fake.store.pools.get(pool_id.lower())
    if pool is None:
        raise errors.not_found("Pool")
    return pool


def _job(fake: "FakeBatch", job_id: str) -> Job:
    job = fake.store.jobs.get(job_id.lower())
    if job is None:
        raise errors.not_found("Job")
    return job


def _task(fake: "FakeBatch", job_id: str, task_id: str) -> Task:
    task = _job(fake, job_id).tasks.get(task_id.lower())
    if task is None:
        raise errors.not_found("Task")
    return task


def _job_accepts_tasks(job: Job) -> None:
    if job.state == "completed":
        raise errors.job_completed()
    if job.state == "deleting":
        raise errors.being_deleted("Job")
    if job.state == "terminating":
        raise errors.BatchServiceError(409, "JobBeingTerminated",
                                       "The specified job is being terminated.")


# -- images and pools -------------------------------------------------------------------

@handles("Pools_ListSupportedImages")
def list_supported_images(fake: "FakeBatch", request: Request) -> Response:
    images = [dict(image) for image in fake.knobs.supported_images]
    return Response(200, odata.page(images, request.query, request.base_url, "/supportedimages",
                                    fake.knobs.max_page_size))


def add_pool(fake: "FakeBatch", pool_id: str, body: dict[str, Any]) -> Pool:
    """A new pool, resizing (caller holds the lock and has checked the body)."""
    pool = Pool(id=pool_id, body=body, serial=fake.store.next_serial(),
                allocate_at=time.monotonic() + fake.knobs.allocation_delay)
    fake.store.pools[pool_id.lower()] = pool
    fake.store.changed.notify_all()
    return pool


@handles("Pools_CreatePool")
def create_pool(fake: "FakeBatch", request: Request) -> Response:
    body = request.body
    rules.check_pool(body, fake.knobs)
    with fake.store.lock:
        existing = fake.store.pools.get(body["id"].lower())
        if existing is not None:
            raise errors.being_deleted("Pool") if existing.state == "deleting" else errors.exists("Pool")
        pool = add_pool(fake, body["id"], body)
        return _created(f"{request.base_url}/pools/{quote(pool.id)}", pool.etag, pool.last_modified)


@handles("Pools_GetPool")
def get_pool(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        pool = _pool(fake, request.params["poolId"])
        return _entity(pool.view(request.base_url), pool.etag, pool.last_modified, request.query)


@handles("Pools_PoolExists")
def pool_exists(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        _pool(fake, request.params["poolId"])
    return Response(200)


@handles("Pools_ListPools")
def list_pools(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        views = [p.view(request.base_url) for p in sorted(fake.store.pools.values(),
                                                          key=lambda p: p.serial)]
    return Response(200, odata.page(views, request.query, request.base_url, "/pools",
                                    fake.knobs.max_page_size))


@handles("Pools_DeletePool")
def delete_pool(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        pool = _pool(fake, request.params["poolId"])
        if pool.state == "deleting":
            raise errors.being_deleted("Pool")
        fake.engine.delete_pool(pool)
    return Response(202)


@handles("Nodes_ListNodes")
def list_nodes(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        pool = _pool(fake, request.params["poolId"])
        views = [n.view(request.base_url, pool) for n in pool.nodes]
    path = f"/pools/{quote(pool.id)}/nodes"
    return Response(200, odata.page(views, request.query, request.base_url, path,
                                    fake.knobs.max_page_size))


@handles("Nodes_GetNode")
def get_node(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        pool = _pool(fake, request.params["poolId"])
        for node in pool.nodes:
            if node.id == request.params["nodeId"]:
                return _entity(node.view(request.base_url, pool), node.etag, node.last_modified,
                               request.query)
    raise errors.not_found("Node")


# -- jobs -----------------------------------------------------------------------------------

def _auto_pool(fake: "FakeBatch", spec: dict[str, Any]) -> Pool:
    """Create the pool of a job's autoPoolSpecification (id: prefix + unique suffix)."""
    if spec.get("poolLifetimeOption") != "job":
        raise errors.invalid_value("poolInfo.autoPoolSpecification.poolLifetimeOption",
                                   spec.get("poolLifetimeOption"),
                                   "Only 'job' applies to a job (not a job schedule).")
    pool_spec = spec.get("pool")
    if pool_spec is None:
        raise errors.missing_property("poolInfo.autoPoolSpecification.pool")
    prefix = spec.get("autoPoolIdPrefix") or ""
    if len(prefix) > 20 or (prefix and not rules.ID.match(prefix)):
        raise errors.invalid_value("poolInfo.autoPoolSpecification.autoPoolIdPrefix", prefix,
                                   "at most 20 letters, digits, hyphens and underscores")
    pool_id = f"{prefix}_{str(uuid.uuid4()).upper()}" if prefix else str(uuid.uuid4()).upper()
    body = dict(pool_spec, id=pool_id)
    try:
        rules.check_pool(body, fake.knobs)
    except errors.BatchServiceError as error:
        # name the field as the client sent it
        error.values = [(k, f"poolInfo.autoPoolSpecification.pool.{v}" if k == "PropertyName" else v)
                        for k, v in error.values]
        raise
    return add_pool(fake, pool_id, body)


@handles("Jobs_CreateJob")
def create_job(fake: "FakeBatch", request: Request) -> Response:
    body = request.body
    rules.check_job(body)
    with fake.store.lock:
        existing = fake.store.jobs.get(body["id"].lower())
        if existing is not None:
            raise errors.being_deleted("Job") if existing.state == "deleting" else errors.exists("Job")
        spec = body["poolInfo"].get("autoPoolSpecification")
        pool_id = _auto_pool(fake, spec).id if spec else body["poolInfo"]["poolId"]
        job = Job(id=body["id"], body=body, serial=fake.store.next_serial(), pool_id=pool_id,
                  on_all_tasks_complete=body.get("onAllTasksComplete", "noaction"),
                  priority=body.get("priority", 0),
                  max_parallel_tasks=body.get("maxParallelTasks", -1),
                  allow_task_preemption=body.get("allowTaskPreemption", False),
                  constraints=body.get("constraints"), metadata=body.get("metadata"))
        fake.store.jobs[job.id.lower()] = job
        fake.store.changed.notify_all()
        return _created(f"{request.base_url}/jobs/{quote(job.id)}", job.etag, job.last_modified)


@handles("Jobs_GetJob")
def get_job(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        return _entity(job.view(request.base_url), job.etag, job.last_modified, request.query)


@handles("Jobs_ListJobs")
def list_jobs(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        views = [j.view(request.base_url) for j in sorted(fake.store.jobs.values(),
                                                         key=lambda j: j.serial)]
    return Response(200, odata.page(views, request.query, request.base_url, "/jobs",
                                    fake.knobs.max_page_size))


def _apply_job_update(job: Job, body: dict[str, Any], replace: bool) -> None:
    """PATCH changes what is given; PUT (replace) resets what is not given to defaults."""
    rules.check_job_settings(body)
    if job.state == "completed":
        raise errors.job_completed()
    if job.state in ("deleting", "terminating"):
        raise errors.being_deleted("Job") if job.state == "deleting" else errors.BatchServiceError(
            409, "JobBeingTerminated", "The specified job is being terminated.")
    mode = body.get("onAllTasksComplete", None if not replace else "noaction")
    if mode == "noaction" and job.on_all_tasks_complete == "terminatejob":
        raise errors.invalid_value("onAllTasksComplete", mode,
                                   "You may not change the value from terminatejob to noaction.")
    pool_id = (body.get("poolInfo") or {}).get("poolId")
    if pool_id is not None and pool_id.lower() != job.pool_id.lower():
        raise errors.BatchServiceError(409, "OperationInvalidForCurrentState",
                                       "A job's pool can only be changed while it is disabled.",
                                       [("PropertyName", "poolInfo.poolId")])
    if (body.get("poolInfo") or {}).get("autoPoolSpecification") is not None:
        raise errors.operation_not_supported("changing a job's autoPoolSpecification")
    defaults = {"priority": 0, "maxParallelTasks": -1, "allowTaskPreemption": False,
                "constraints": None, "metadata": None}
    for name, attribute in (("priority", "priority"), ("maxParallelTasks", "max_parallel_tasks"),
                            ("allowTaskPreemption", "allow_task_preemption"),
                            ("constraints", "constraints"), ("metadata", "metadata")):
        if name in body:
            setattr(job, attribute, body[name])
        elif replace:
            setattr(job, attribute, defaults[name])
    if mode is not None:
        job.on_all_tasks_complete = mode
    job.touch()


@handles("Jobs_UpdateJob")
def update_job(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        _apply_job_update(job, request.body or {}, replace=False)
        fake.store.changed.notify_all()
        return Response(200, headers={"ETag": job.etag, "Last-Modified": _http_date(job.last_modified),
                                      "DataServiceId": f"{request.base_url}/jobs/{quote(job.id)}"})


@handles("Jobs_ReplaceJob")
def replace_job(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        _apply_job_update(job, request.body or {}, replace=True)
        fake.store.changed.notify_all()
        return Response(200, headers={"ETag": job.etag, "Last-Modified": _http_date(job.last_modified),
                                      "DataServiceId": f"{request.base_url}/jobs/{quote(job.id)}"})


@handles("Jobs_TerminateJob")
def terminate_job(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        if job.state == "completed":
            raise errors.job_completed()
        if job.state == "deleting":
            raise errors.being_deleted("Job")
        if job.state == "active":
            reason = (request.body or {}).get("terminateReason") or "UserTerminate"
            fake.engine.terminate_job(job, reason)
    return Response(202)


@handles("Jobs_DeleteJob")
def delete_job(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        if job.state == "deleting":
            raise errors.being_deleted("Job")
        fake.engine.delete_job(job)
    return Response(202)


@handles("Jobs_GetJobTaskCounts")
def job_task_counts(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        counts = dict.fromkeys(("active", "running", "completed", "succeeded", "failed"), 0)
        slots = dict(counts)
        job.count_polls += 1
        tasks = list(job.tasks.values())
        if job.count_polls <= fake.knobs.task_counts_lag_polls:
            # a late answer: half the completed tasks counted, nothing active or running
            done = [t for t in tasks if t.state == "completed"]
            tasks = done[:len(done) // 2]
        for task in tasks:
            kinds = ["running" if task.state == "preparing" else task.state]
            if task.state == "completed":
                kinds.append("succeeded" if task.result == "success" else "failed")
            for kind in kinds:
                counts[kind] += 1
                slots[kind] += task.required_slots
    return Response(200, {"taskCounts": counts, "taskSlotCounts": slots})


# -- tasks ----------------------------------------------------------------------------------

def _check_not_preparation(job: Job, task_id: str) -> None:
    prep = job.body.get("jobPreparationTask")
    if prep is not None and task_id.lower() == (prep.get("id") or "jobpreparation").lower():
        raise errors.BatchServiceError(409, "TaskIdSameAsJobPreparationTask",
                                       "The task id is the same as the job preparation task's.")


def _new_task(fake: "FakeBatch", job: Job, body: dict[str, Any]) -> Task:
    _check_not_preparation(job, body["id"])
    dependencies.check_task(body, job, fake.knobs)
    constraints = body.get("constraints") or {}
    retries = constraints.get("maxTaskRetryCount")
    if retries is None:
        retries = (job.constraints or {}).get("maxTaskRetryCount") or 0
    container = body.get("containerSettings") or {}
    task = Task(job_id=job.id, id=body["id"], body=body, serial=fake.store.next_serial(),
                command_line=body["commandLine"],
                environment={s["name"]: s.get("value") or "" for s in body.get("environmentSettings") or []},
                image=container.get("imageName"), max_retries=retries,
                required_slots=body.get("requiredSlots") or 1)
    job.tasks[task.id.lower()] = task
    fake.store.all_tasks.append(task)
    fake.store.changed.notify_all()
    return task


@handles("Tasks_CreateTask")
def create_task(fake: "FakeBatch", request: Request) -> Response:
    body = request.body
    rules.check_task(body)
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        _job_accepts_tasks(job)
        if body["id"].lower() in job.tasks:
            raise errors.exists("Task")
        task = _new_task(fake, job, body)
        url = f"{request.base_url}/jobs/{quote(job.id)}/tasks/{quote(task.id)}"
        return _created(url, task.etag, task.last_modified)


def _result(status: str, task_id: str, error: errors.BatchServiceError | None = None,
            request_id: str = "") -> dict[str, Any]:
    result: dict[str, Any] = {"status": status, "taskId": task_id}
    if error is not None:
        result["error"] = error.body(request_id)
    return result


@handles("Tasks_CreateTaskCollection")
def create_task_collection(fake: "FakeBatch", request: Request) -> Response:
    knobs = fake.knobs
    tasks = request.body["value"]
    if len(tasks) > knobs.max_tasks_per_collection:
        raise errors.body_too_large(f"The collection has {len(tasks)} tasks; the maximum is "
                                    f"{knobs.max_tasks_per_collection}.")
    request_id = request.headers.get("client-request-id", "")
    results = []
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        _job_accepts_tasks(job)
        for index, body in enumerate(tasks):
            task_id = str(body.get("id"))
            if knobs.collection_servererror > 0 or knobs.matches("collection_servererror_pattern", task_id):
                knobs.collection_servererror = max(0, knobs.collection_servererror - 1)
                results.append(_result("servererror", task_id, errors.server_busy(), request_id))
                continue
            try:
                rules.check_task(body)
            except errors.BatchServiceError as error:
                results.append(_result("clienterror", task_id, error, request_id))
                continue
            if task_id.lower() in job.tasks:
                results.append(_result("clienterror", task_id, errors.exists("Task"), request_id))
                continue
            try:
                task = _new_task(fake, job, body)
            except errors.BatchServiceError as error:
                results.append(_result("clienterror", task_id, error, request_id))
                continue
            results.append({"status": "success", "taskId": task.id, "eTag": task.etag,
                            "lastModified": iso(task.last_modified),
                            "location": f"{request.base_url}/jobs/{quote(job.id)}/tasks/{quote(task.id)}"})
    return Response(200, {"value": results})


@handles("Tasks_GetTask")
def get_task(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        task = _task(fake, request.params["jobId"], request.params["taskId"])
        return _entity(task.view(request.base_url), task.etag, task.last_modified, request.query)


@handles("Tasks_ListTasks")
def list_tasks(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        views = [t.view(request.base_url) for t in job.tasks.values()]
    return Response(200, odata.page(views, request.query, request.base_url,
                                    f"/jobs/{quote(job.id)}/tasks", fake.knobs.max_page_size))


@handles("Tasks_TerminateTask")
def terminate_task(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        task = _task(fake, request.params["jobId"], request.params["taskId"])
        if task.state == "running":
            fake.engine.stop_task(task, ENDED)
        elif task.state == "active":
            task.failure_info = {"category": errors.USER_ERROR, "code": errors.TASK_ENDED,
                                 "message": "The task was ended"}
            task.result = "failure"
            task.end_time = utcnow()
            task.set_state("completed")
            fake.store.changed.notify_all()
    return Response(204)


@handles("Tasks_DeleteTask")
def delete_task(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        job = _job(fake, request.params["jobId"])
        task = _task(fake, request.params["jobId"], request.params["taskId"])
        if task.state == "running":
            fake.engine.stop_task(task, DELETED)
        del job.tasks[task.id.lower()]
        fake.store.changed.notify_all()
    return Response(200)


# -- task files -------------------------------------------------------------------------------

def _task_file(fake: "FakeBatch", request: Request) -> tuple[Task, Path, str]:
    with fake.store.lock:
        task = _task(fake, request.params["jobId"], request.params["taskId"])
        task_dir = task.task_dir
    name = unquote(request.params["filePath"]).replace("\\", "/").lstrip("/")
    if task_dir is None:
        raise errors.file_not_found(name)
    if not task_dir.exists():  # its node is gone (an auto pool goes with its job)
        raise errors.not_found("Node")
    path = (task_dir / name).resolve()
    if task_dir.resolve() not in (path, *path.parents):
        raise errors.file_not_found(name)  # no reaching outside the task directory
    return task, path, name


def _file_headers(path: Path, url: str) -> dict[str, str]:
    stat = path.stat()
    modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc)
    return {"ocp-creation-time": _http_date(datetime.fromtimestamp(stat.st_ctime, timezone.utc)),
            "ocp-batch-file-isdirectory": "true" if path.is_dir() else "false",
            "ocp-batch-file-url": url, "ocp-batch-file-mode": f"0{stat.st_mode:o}",
            "Last-Modified": _http_date(modified), "ETag": f"0x{int(stat.st_mtime_ns):X}"}


def _file_response(fake: "FakeBatch", request: Request, with_body: bool) -> Response:
    task, path, name = _task_file(fake, request)
    url = f"{request.base_url}/jobs/{quote(task.job_id)}/tasks/{quote(task.id)}/files/{quote(name, safe='')}"
    return file_answer(request, path, name, url, with_body)


def file_answer(request: Request, path: Path, name: str, url: str, with_body: bool) -> Response:
    """A file (or its properties) from a node, with the ocp-range the client asked for."""
    if not path.exists():
        raise errors.file_not_found(name)
    headers = _file_headers(path, url)
    if path.is_dir():
        return Response(200, b"" if with_body else None, headers, "application/octet-stream")
    data = path.read_bytes() if with_body else b""
    size = path.stat().st_size
    wanted = request.headers.get("ocp-range", "")
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
    if with_body and match:
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else size - 1
        data = data[first:last + 1]
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if not with_body:
        headers["Content-Length"] = str(size)
        return Response(200, None, headers, content_type)
    return Response(200, data, headers, content_type)


@handles("Tasks_GetTaskFile")
def get_task_file(fake: "FakeBatch", request: Request) -> Response:
    return _file_response(fake, request, with_body=True)


@handles("Tasks_GetTaskFileProperties")
def get_task_file_properties(fake: "FakeBatch", request: Request) -> Response:
    return _file_response(fake, request, with_body=False)


@handles("Tasks_ListTaskFiles")
def list_task_files(fake: "FakeBatch", request: Request) -> Response:
    with fake.store.lock:
        task = _task(fake, request.params["jobId"], request.params["taskId"])
        task_dir = task.task_dir
    recursive = request.query.get("recursive", "false").lower() == "true"
    views = []
    if task_dir is not None and task_dir.is_dir():
        entries = sorted(task_dir.rglob("*") if recursive else task_dir.iterdir())
        base = f"{request.base_url}/jobs/{quote(task.job_id)}/tasks/{quote(task.id)}/files/"
        for entry in entries:
            name = entry.relative_to(task_dir).as_posix()
            stat = entry.stat()
            views.append({"name": name, "url": base + quote(name, safe=""),
                          "isDirectory": entry.is_dir(),
                          "properties": {
                              "creationTime": iso(datetime.fromtimestamp(stat.st_ctime, timezone.utc)),
                              "lastModified": iso(datetime.fromtimestamp(stat.st_mtime, timezone.utc)),
                              "contentLength": str(0 if entry.is_dir() else stat.st_size),
                              "contentType": "application/octet-stream",
                              "fileMode": f"0{stat.st_mode:o}"}})
    path = f"/jobs/{quote(task.job_id)}/tasks/{quote(task.id)}/files"
    return Response(200, odata.page(views, request.query, request.base_url, path,
                                    fake.knobs.max_page_size))


from . import api_nodes  # noqa: E402,F401  (registers the node and preparation handlers)
