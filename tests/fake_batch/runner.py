"""The engine: pools come up, nodes start, tasks really run, jobs end.

One engine thread advances time-driven state (allocation, node start, deletions, job
completion) and hands active tasks to free task slots. Each scheduled task then runs in its
own worker thread, as a node would run it:

1. pre-processing: container settings checked against the pool, the image "pulled" (never
   run: there is no Docker here, but the requested image is recorded and a pull failure can
   be injected), resource files downloaded with their SAS URLs;
2. the command line run by `bash -c` in `<task dir>/wd` with the task's environment,
   stdout/stderr to `<task dir>/stdout.txt` / `stderr.txt`; rerun while it exits non-zero
   and retries remain (maxTaskRetryCount, -1 = unlimited);
3. output files uploaded per their upload condition, logged to fileuploadout.txt and
   fileuploaderr.txt; a failed upload fails the task;
4. the task completes with executionInfo (exit code, result, failureInfo) and nodeInfo.

Worker threads never hold the store lock while doing I/O or waiting for a process.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from . import blobs, errors, outputs
from .knobs import Knobs
from .state import Job, Node, Pool, Store, Task, UploadRecord, utcnow

TICK = 0.02  # the engine also wakes on every change; this bounds timer latency

# Reasons a running task is stopped from outside.
ENDED = "ended"  # job terminated: the task completes, failed
REQUEUE = "requeue"  # its node left (pool deleted): back to active
DELETED = "deleted"  # job deleted: the task goes away with it

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_duration(text: str | None) -> float | None:
    """Seconds in an ISO 8601 duration of days/hours/minutes/seconds (what clients send)."""
    match = _DURATION.match(text or "")
    if not match:
        return None
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()


def failure(code: str, message: str, **details: str) -> dict[str, Any]:
    info: dict[str, Any] = {"category": errors.USER_ERROR, "code": code, "message": message}
    if details:
        info["details"] = [{"name": name, "value": value} for name, value in details.items()]
    return info


class TaskFailed(Exception):
    """Pre-processing or upload failed: carries the task's failureInfo."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info["message"])
        self.info = info


@dataclass
class Runtime:
    """What a worker needs besides the task: taken under the lock, used without it."""

    account: str
    base_url: str
    pool: Pool
    node: Node
    job: Job


class Engine:
    """Advances state and runs tasks for one fake account."""

    def __init__(self, store: Store, knobs: Knobs, root: Path, account: str,
                 base_url: Callable[[], str]) -> None:
        self.store = store
        self.knobs = knobs
        self.root = root
        self.account = account
        self.base_url = base_url
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="fake-batch-engine", daemon=True)
        self._workers: list[threading.Thread] = []
        self.crashes: list[str] = []  # tracebacks from worker threads (bugs in the fake)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling, kill every task process, and wait for the workers."""
        with self.store.lock:
            self._stopping = True
            for task in self.store.all_tasks:
                if task.state == "running":
                    self.stop_task(task, DELETED)
            for pool in self.store.pools.values():
                for node in pool.nodes:
                    _kill(node.process)
            self.store.changed.notify_all()
        self._thread.join(timeout=5)
        for worker in list(self._workers):
            worker.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self.store.changed:
                if self._stopping:
                    return
                self._tick(time.monotonic())
                self.store.changed.wait(TICK)

    def _tick(self, now: float) -> None:
        for key, pool in list(self.store.pools.items()):
            self._advance_pool(key, pool, now)
        for key, job in list(self.store.jobs.items()):
            self._advance_job(key, job, now)
        self._schedule()
        self._workers = [w for w in self._workers if w.is_alive()]

    # -- pools and nodes ----------------------------------------------------------------

    def _advance_pool(self, key: str, pool: Pool, now: float) -> None:
        if pool.state == "deleting":
            if pool.delete_at is not None and now >= pool.delete_at:
                del self.store.pools[key]
            return
        if pool.allocation_state == "resizing" and now >= pool.allocate_at:
            if self.knobs.resize_error:
                pool.resize_errors = [{"code": self.knobs.resize_error,
                                       "message": self.knobs.resize_error_message}]
            else:
                dedicated = int(pool.body.get("targetDedicatedNodes") or 0)
                spot = int(pool.body.get("targetLowPriorityNodes") or 0)
                for index in range(dedicated + spot):
                    suffix = "d" if index < dedicated else "p"
                    pool.nodes.append(Node(
                        id=f"tvmps_{pool.serial:04d}{index:04d}{uuid.uuid4().hex[:24]}_{suffix}",
                        pool_id=pool.id, dedicated=index < dedicated, slots=pool.slots_per_node,
                        ip=f"10.{pool.serial % 250}.{index // 250}.{index % 250 + 4}",
                        ready_at=now + self.knobs.node_start_delay))
            pool.set_allocation_state("steady")
        for node in pool.nodes:
            if node.state == "starting" and now >= node.ready_at:
                self._node_started(pool, node)

    def _node_started(self, pool: Pool, node: Node) -> None:
        if self.knobs.unusable_nodes:
            node.errors = [{"code": "NodeUnusable",
                            "message": "The node is unusable (fake-batch knob unusable_nodes).",
                            "errorDetails": [{"name": "Reason", "value": "injected by test"}]}]
            node.set_state("unusable")
            return
        start = pool.body.get("startTask")
        if self.knobs.start_task_failure:
            stamp = _iso(utcnow())
            node.start_task_info = {
                "state": "completed", "startTime": stamp, "endTime": stamp, "exitCode": 1,
                "retryCount": 0, "result": "failure",
                "failureInfo": failure(errors.FAILURE_EXIT_CODE,
                                       "The task process exited with an unexpected exit code",
                                       Message="The start task exited with code 1 (fake-batch "
                                               "knob start_task_failure)")}
            node.set_state("starttaskfailed")
            return
        if start is None:
            node.set_state("idle")
            return
        wait = start.get("waitForSuccess", True)
        node.set_state("waitingforstarttask" if wait else "idle")
        node.start_task_running = True
        self._spawn(self._run_start_task, pool, node, dict(start), wait)

    # -- jobs -----------------------------------------------------------------------------

    def _advance_job(self, key: str, job: Job, now: float) -> None:
        if job.state == "deleting":
            if job.delete_at is not None and now >= job.delete_at:
                del self.store.jobs[key]
            return
        if job.state == "active":
            limit = parse_duration((job.constraints or {}).get("maxWallClockTime"))
            age = (utcnow() - job.created).total_seconds()
            if limit is not None and age > limit:
                self.terminate_job(job, "MaxWallClockTimeExpiry")
            elif job.on_all_tasks_complete == "terminatejob" and all(
                    t.state == "completed" for t in job.tasks.values()):
                self.terminate_job(job, "AllTasksComplete")
        if job.state == "terminating" and not any(t.state == "running" for t in job.tasks.values()):
            job.end_time = utcnow()
            job.set_state("completed")
            self._end_auto_pool(job)

    def terminate_job(self, job: Job, reason: str) -> None:
        """Terminate: running tasks are killed; the job completes once they have stopped."""
        job.terminate_reason = reason
        job.set_state("terminating")
        for task in job.tasks.values():
            if task.state == "running":
                self.stop_task(task, ENDED)
        self.store.changed.notify_all()

    def delete_job(self, job: Job) -> None:
        job.set_state("deleting")
        job.delete_at = time.monotonic() + self.knobs.job_delete_delay
        for task in job.tasks.values():
            if task.state == "running":
                self.stop_task(task, DELETED)
        self._end_auto_pool(job)
        self.store.changed.notify_all()

    def _end_auto_pool(self, job: Job) -> None:
        spec = (job.body.get("poolInfo") or {}).get("autoPoolSpecification")
        if spec and spec.get("poolLifetimeOption") == "job" and not spec.get("keepAlive"):
            pool = self.store.pools.get(job.pool_id.lower())
            if pool is not None and pool.state != "deleting":
                self.delete_pool(pool)

    def delete_pool(self, pool: Pool) -> None:
        """Deleting: tasks running on its nodes go back to active; the pool answers 404 later."""
        pool.set_state("deleting")
        pool.delete_at = time.monotonic() + self.knobs.pool_delete_delay
        for task in self.store.all_tasks:
            if task.state == "running" and task.pool_id == pool.id:
                self.stop_task(task, REQUEUE)
        for node in pool.nodes:
            _kill(node.process)
            node.set_state("leavingpool")
        self.store.changed.notify_all()

    # -- scheduling -----------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._stopping:
            return
        jobs = sorted((j for j in self.store.jobs.values() if j.state == "active"),
                      key=lambda j: (-j.priority, j.serial))
        for job in jobs:
            pool = self.store.pools.get(job.pool_id.lower())
            if pool is None or pool.state != "active":
                continue
            running = sum(1 for t in job.tasks.values() if t.state == "running")
            for task in job.tasks.values():
                if job.max_parallel_tasks != -1 and running >= job.max_parallel_tasks:
                    break
                if task.state != "active":
                    continue
                node = self._pick_node(pool, task.required_slots)
                if node is None:
                    break  # FIFO within a job: later tasks wait too
                self._assign(task, job, pool, node)
                running += 1

    @staticmethod
    def _pick_node(pool: Pool, slots: int) -> Node | None:
        candidates = [n for n in pool.nodes if n.free_slots >= slots]
        if not candidates:
            return None
        if (pool.body.get("taskSchedulingPolicy") or {}).get("nodeFillType") == "pack":
            return candidates[0]
        return max(candidates, key=lambda n: n.free_slots)  # "spread", the default

    def _assign(self, task: Task, job: Job, pool: Pool, node: Node) -> None:
        node.running[task.key] = task.required_slots
        node.set_state("running")
        task.pool_id, task.node_id = pool.id, node.id
        task.stop_reason = None
        task.start_time = utcnow()
        task.exit_code = task.result = task.failure_info = None
        task.set_state("running")
        runtime = Runtime(self.account, self.base_url(), pool, node, job)
        task.worker = self._spawn(self._run_task, task, runtime)

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        worker = threading.Thread(target=target, args=args, daemon=True,
                                  name=f"fake-batch-{target.__name__}")
        self._workers.append(worker)
        worker.start()
        return worker

    def stop_task(self, task: Task, reason: str) -> None:
        """Ask a running task to stop (caller holds the lock); its worker finishes it."""
        task.stop_reason = reason
        _kill(task.process)

    # -- running a task -----------------------------------------------------------------

    def _task_dir(self, task: Task, job: Job) -> Path:
        return self.root / "tasks" / f"{job.serial:04d}-{job.id}" / task.id

    def _environment(self, task: Task, runtime: Runtime, task_dir: Path) -> dict[str, str]:
        env = {name: os.environ[name] for name in self.knobs.inherit_env if name in os.environ}
        node_dir = self.root / "nodes" / runtime.pool.id / runtime.node.id
        env.update({
            "AZ_BATCH_ACCOUNT_NAME": runtime.account,
            "AZ_BATCH_ACCOUNT_URL": runtime.base_url,
            "AZ_BATCH_POOL_ID": runtime.pool.id,
            "AZ_BATCH_NODE_ID": runtime.node.id,
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if runtime.node.dedicated else "false",
            "AZ_BATCH_NODE_ROOT_DIR": str(self.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(node_dir / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(node_dir / "startup"),
            "AZ_BATCH_JOB_ID": task.job_id,
            "AZ_BATCH_TASK_ID": task.id,
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
        })
        for setting in runtime.job.body.get("commonEnvironmentSettings") or []:
            env[setting["name"]] = setting.get("value") or ""
        env.update(task.environment)
        return env

    def _run_task(self, task: Task, runtime: Runtime) -> None:
        try:
            self._run_task_steps(task, runtime)
        except Exception:  # a bug here must not leave the task running and its slot taken
            self.crashes.append(traceback.format_exc())
            info = {"category": errors.SERVER_ERROR, "code": "FakeBatchCrash",
                    "message": "The fake Batch service failed while running the task"}
            self._finish(task, runtime, None, info)

    def _run_task_steps(self, task: Task, runtime: Runtime) -> None:
        with self.store.lock:
            task_dir = self._task_dir(task, runtime.job)
            task.task_dir = task_dir
            env = self._environment(task, runtime, task_dir)
            task.env_seen = env
            body = task.body
            container = body.get("containerSettings")
        working_dir = task_dir / "wd"
        working_dir.mkdir(parents=True, exist_ok=True)
        Path(env["AZ_BATCH_NODE_SHARED_DIR"]).mkdir(parents=True, exist_ok=True)
        failure_info: dict[str, Any] | None = None
        exit_code: int | None = None
        try:
            self._preprocess(task, runtime, container, body, working_dir)
            exit_code = self._run_attempts(task, env, task_dir, working_dir)
        except TaskFailed as failed:
            failure_info = failed.info
        if task.stop_reason is None:
            if failure_info is None and exit_code:
                failure_info = failure(errors.FAILURE_EXIT_CODE,
                                       "The task process exited with an unexpected exit code",
                                       Message=f"The task process exited with code {exit_code}")
            ran_ok = failure_info is None and exit_code == 0
            try:
                self._upload_outputs(task, body.get("outputFiles") or [], ran_ok, task_dir)
            except TaskFailed as failed:
                failure_info = failure_info or failed.info
        self._finish(task, runtime, exit_code, failure_info)

    def _preprocess(self, task: Task, runtime: Runtime, container: dict[str, Any] | None,
                    body: dict[str, Any], working_dir: Path) -> None:
        if self.knobs.strict_container_settings and runtime.pool.container_configured != bool(container):
            raise TaskFailed(failure(
                errors.CONTAINER_INVALID_SETTINGS,
                "At least one value of specified task container settings is invalid",
                Message="The pool has a containerConfiguration, so tasks need containerSettings"
                if runtime.pool.container_configured else
                "The pool has no containerConfiguration, so tasks must not have containerSettings"))
        image = (container or {}).get("imageName")
        if image and self.knobs.matches("image_pull_failure", image):
            raise TaskFailed(failure(
                errors.CONTAINER_INVALID_IMAGE, "One or more container images specified are invalid",
                ContainerImage=image,
                Message=f"Error response from daemon: pull access denied for {image}, repository "
                        "does not exist or may require 'docker login' (fake-batch knob "
                        "image_pull_failure)"))
        download_resource_files(body.get("resourceFiles") or [], working_dir)

    def _run_attempts(self, task: Task, env: dict[str, str], task_dir: Path,
                      working_dir: Path) -> int | None:
        while True:
            exit_code = self._run_once(task, env, task_dir, working_dir)
            with self.store.lock:
                if exit_code is not None:
                    task.exit_codes.append(exit_code)
                retry = (exit_code not in (0, None) and task.stop_reason is None
                         and (task.max_retries == -1 or task.retry_count < task.max_retries))
                if not retry:
                    return exit_code
                task.retry_count += 1
                task.last_retry_time = utcnow()
                task.touch()

    def _run_once(self, task: Task, env: dict[str, str], task_dir: Path,
                  working_dir: Path) -> int | None:
        with (task_dir / "stdout.txt").open("wb") as out, (task_dir / "stderr.txt").open("wb") as err:
            if self.knobs.matches("fail_tasks", task.id):
                err.write(f"fake-batch: task {task.id} failed on purpose (knob fail_tasks)\n".encode())
                return self.knobs.fail_exit_code
            with self.store.lock:
                if task.stop_reason is not None:
                    return None
                try:
                    process = subprocess.Popen(["bash", "-c", task.command_line], cwd=working_dir,
                                               env=env, stdin=subprocess.DEVNULL, stdout=out,
                                               stderr=err, start_new_session=True)
                except OSError as exc:
                    raise TaskFailed(failure(errors.COMMAND_PROGRAM_NOT_FOUND,
                                             "The program specified in the task's command line "
                                             "was not found", Message=str(exc))) from None
                task.process = process
            code = process.wait()
            with self.store.lock:
                task.process = None
        # A signal death is reported as a shell would: 128 + signal number.
        return code if code >= 0 else 128 - code

    def _upload_outputs(self, task: Task, files: list[dict[str, Any]], ran_ok: bool,
                        task_dir: Path) -> None:
        if not files:
            return
        log: list[str] = []
        problems: list[tuple[str, str]] = []  # (failure code, message)
        for output in files:
            condition = (output.get("uploadOptions") or {}).get("uploadCondition", "taskcompletion")
            if condition == "tasksuccess" and not ran_ok or condition == "taskfailure" and ran_ok:
                continue
            destination = output["destination"]["container"]
            headers = {h["name"]: h.get("value", "") for h in destination.get("uploadHeaders") or []}
            pattern = output["filePattern"]
            for found in outputs.match(pattern, task_dir / "wd"):
                name = outputs.blob_name(pattern, destination.get("path"), found)
                record = self._upload_one(task, destination["containerUrl"], name, found.path, headers)
                with self.store.lock:
                    task.uploads.append(record)
                if record.ok:
                    log.append(f"uploaded {found.path} to {record.blob_url}")
                else:
                    log.append(f"FAILED {found.path} to {record.blob_url}: {record.error}")
                    problems.append((_upload_code(record.status), f"{found.path}: {record.error}"))
        (task_dir / "fileuploadout.txt").write_text("".join(line + "\n" for line in log))
        (task_dir / "fileuploaderr.txt").write_text("".join(f"{m}\n" for _, m in problems))
        if problems:
            code, message = problems[0]
            raise TaskFailed(failure(code, "One or more output files failed to upload",
                                     Message=message, FailedUploads=str(len(problems))))

    def _upload_one(self, task: Task, container_url: str, name: str, source: Path,
                    headers: dict[str, str]) -> UploadRecord:
        public = container_url.split("?", 1)[0].rstrip("/") + "/" + name
        if self.knobs.matches("upload_failure", task.id):
            return UploadRecord(str(source), public, False, None,
                                "connection refused (fake-batch knob upload_failure)")
        try:
            url = blobs.upload(container_url, name, source, headers)
            return UploadRecord(str(source), url, True, 201)
        except blobs.BlobError as error:
            return UploadRecord(str(source), public, False, error.status, error.message)

    def _finish(self, task: Task, runtime: Runtime, exit_code: int | None,
                failure_info: dict[str, Any] | None) -> None:
        with self.store.lock:
            node = runtime.node
            node.running.pop(task.key, None)
            if node.state == "running" and not node.running:
                node.set_state("idle")
            reason = task.stop_reason
            if reason == REQUEUE:
                task.requeue_count += 1
                task.last_requeue_time = utcnow()
                task.node_id = task.pool_id = None
                task.set_state("active")
            else:
                if reason in (ENDED, DELETED):
                    failure_info = failure(errors.TASK_ENDED, "The task was ended",
                                           Message="The job was terminated" if reason == ENDED
                                           else "The job was deleted")
                node.total_run += 1
                task.exit_code = exit_code
                task.failure_info = failure_info
                task.result = "failure" if failure_info or exit_code else "success"
                if task.result == "success":
                    node.total_succeeded += 1
                task.end_time = utcnow()
                task.set_state("completed")
            self.store.changed.notify_all()

    # -- start tasks ----------------------------------------------------------------------

    def _run_start_task(self, pool: Pool, node: Node, start: dict[str, Any], wait: bool) -> None:
        try:
            self._run_start_task_steps(pool, node, start, wait)
        except Exception:
            self.crashes.append(traceback.format_exc())

    def _run_start_task_steps(self, pool: Pool, node: Node, start: dict[str, Any],
                              wait: bool) -> None:
        startup = self.root / "nodes" / pool.id / node.id / "startup"
        working_dir = startup / "wd"
        working_dir.mkdir(parents=True, exist_ok=True)
        env = {name: os.environ[name] for name in self.knobs.inherit_env if name in os.environ}
        env.update({"AZ_BATCH_POOL_ID": pool.id, "AZ_BATCH_NODE_ID": node.id,
                    "AZ_BATCH_NODE_ROOT_DIR": str(self.root),
                    "AZ_BATCH_NODE_STARTUP_DIR": str(startup),
                    "AZ_BATCH_TASK_WORKING_DIR": str(working_dir)})
        env.update({s["name"]: s.get("value") or "" for s in start.get("environmentSettings") or []})
        started = utcnow()
        retries, limit = 0, int(start.get("maxTaskRetryCount") or 0)
        info: dict[str, Any] | None = None
        code: int | None = None
        try:
            download_resource_files(start.get("resourceFiles") or [], working_dir)
            while True:
                with (startup / "stdout.txt").open("wb") as out, \
                        (startup / "stderr.txt").open("wb") as err:
                    with self.store.lock:
                        if self._stopping or pool.state == "deleting":
                            return
                        node.process = subprocess.Popen(
                            ["bash", "-c", start["commandLine"]], cwd=working_dir, env=env,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                            start_new_session=True)
                    code = node.process.wait()
                    with self.store.lock:
                        node.process = None
                if code == 0 or self._stopping or not (limit == -1 or retries < limit):
                    break
                retries += 1
            if code:
                info = failure(errors.FAILURE_EXIT_CODE,
                               "The task process exited with an unexpected exit code",
                               Message=f"The start task exited with code {code}")
        except TaskFailed as failed:
            info = failed.info
        with self.store.lock:
            node.start_task_running = False
            node.start_task_info = {
                "state": "completed", "startTime": _iso(started), "endTime": _iso(utcnow()),
                "retryCount": retries, "result": "failure" if info else "success",
                **({"exitCode": code} if code is not None else {}),
                **({"failureInfo": info} if info else {})}
            node.touch()
            if node.state == "waitingforstarttask":
                node.set_state("starttaskfailed" if info and wait else "idle")
            self.store.changed.notify_all()


def _iso(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _kill(process: subprocess.Popen | None) -> None:
    """Kill a task's whole process group (it was started in its own session)."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _upload_code(status: int | None) -> str:
    return {403: errors.FILE_UPLOAD_ACCESS_DENIED, 404: errors.FILE_UPLOAD_CONTAINER_NOT_FOUND,
            409: errors.FILE_UPLOAD_CONFLICT}.get(status or 0, errors.FILE_UPLOAD_MISC_ERROR)


def download_resource_files(files: list[dict[str, Any]], working_dir: Path) -> None:
    """Fetch resource files into the working directory, or raise TaskFailed as a node would."""
    for resource in files:
        target = working_dir / (resource.get("filePath") or "")
        if resource.get("httpUrl"):
            _download(resource["httpUrl"], target, resource)
            continue
        container = resource["storageContainerUrl"]
        public = container.split("?", 1)[0]
        try:
            names = blobs.list_blobs(container, resource.get("blobPrefix"))
        except blobs.BlobError as error:
            code = {403: errors.RESOURCE_CONTAINER_ACCESS_DENIED,
                    404: errors.RESOURCE_CONTAINER_NOT_FOUND}.get(
                error.status or 0, errors.RESOURCE_CONTAINER_LIST_MISC_ERROR)
            raise TaskFailed(failure(code, "The blobs of a resource file container could not be "
                                     "listed", ContainerUrl=public, Message=error.message)) from None
        for name in names:
            blob_url = blobs.SasUrl.parse(container).child(name)
            _download(f"{blob_url.public}?{blob_url.query}" if blob_url.query else blob_url.public,
                      target / name, resource)


def _download(url: str, target: Path, resource: dict[str, Any]) -> None:
    try:
        blobs.download(url, target)
    except blobs.BlobError as error:
        code = {403: errors.BLOB_ACCESS_DENIED, 404: errors.BLOB_NOT_FOUND}.get(
            error.status or 0, errors.BLOB_DOWNLOAD_MISC_ERROR)
        message = {errors.BLOB_ACCESS_DENIED: "Access for one of the specified Azure Blob(s) is denied",
                   errors.BLOB_NOT_FOUND: "One of the specified Azure Blob(s) is not found"}.get(
            code, "An error occurred while downloading one of the specified Azure Blob(s)")
        raise TaskFailed(failure(code, message, BlobSource=error.url, FilePath=str(target),
                                 Message=error.message)) from None
    if resource.get("fileMode"):
        target.chmod(int(resource["fileMode"], 8))
