"""What happens on a node: a task, a job preparation task or a start task really runs.

Each runs in its own worker thread, as a node agent would run it:

1. pre-processing: for a container task the image is pulled (containers.pull: unknown or
   private images without matching credentials fail as Docker does) and resource files are
   downloaded with their SAS URLs by the agent, on the host;
2. the command line runs — a container task in a bubblewrap sandbox with `docker create`
   semantics (containers.py), anything else on the host OS with the node's environment —
   as the user Batch maps it to (root only for an admin auto-user), with stdout/stderr to
   `<task dir>/stdout.txt` / `stderr.txt`, rerun while it exits non-zero and retries remain;
3. output files are uploaded per their upload condition by the agent, on the host (it
   follows links, as a process reading files does), logged to fileuploadout.txt and
   fileuploaderr.txt; a failed upload fails the task.

Folders follow a node's layout: `<node root>/workitems/<job>/job-1/<task>/wd`, the job
preparation task in `.../job-1/jobpreparation/`, and they go when the node goes.
Worker threads never hold the store lock while doing I/O or waiting for a process.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import blobs, containers, errors, outputs
from .knobs import Knobs
from .state import Job, Node, Pool, Preparation, Store, Task, UploadRecord, utcnow

PREPARATION_DIR = "jobpreparation"


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


def job_dir(node: Node, job: Job) -> Path:
    assert node.root is not None
    return node.root / "workitems" / job.id / "job-1"


def registries(pool: Pool, settings: dict[str, Any] | None) -> list[containers.Registry]:
    """Credentials a node has for pulls: the pool's registries, then the task's own."""
    vm = pool.body.get("virtualMachineConfiguration") or {}
    found = list(((vm.get("containerConfiguration") or {}).get("containerRegistries")) or [])
    if settings and settings.get("registry"):
        found.append(settings["registry"])
    return [containers.Registry(r.get("registryServer") or containers.DOCKER_HUB,
                                r.get("username") or "", r.get("password") or "") for r in found]


class NodeWork:
    """Runs things on nodes for one Engine; `finish` hands a task's outcome back to it."""

    def __init__(self, store: Store, knobs: Knobs,
                 finish: Callable[[Task, Runtime, int | None, dict[str, Any] | None], None]) -> None:
        self.store, self.knobs, self.finish = store, knobs, finish
        self.stopping = False

    # -- environment ----------------------------------------------------------------------

    def batch_env(self, runtime: Runtime, task_dir: Path, task_id: str) -> dict[str, str]:
        """The variables Batch sets for a task (start tasks get a subset)."""
        node, job = runtime.node, runtime.job
        assert node.root is not None
        prep = job_dir(node, job) / PREPARATION_DIR
        env = {
            "AZ_BATCH_ACCOUNT_NAME": runtime.account,
            "AZ_BATCH_ACCOUNT_URL": runtime.base_url,
            "AZ_BATCH_POOL_ID": runtime.pool.id,
            "AZ_BATCH_NODE_ID": node.id,
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.dedicated else "false",
            "AZ_BATCH_NODE_ROOT_DIR": str(node.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(node.root / "shared"),
            "AZ_BATCH_NODE_STARTUP_DIR": str(node.root / "startup"),
            "AZ_BATCH_JOB_ID": job.id,
            "AZ_BATCH_TASK_ID": task_id,
            "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
        }
        if job.body.get("jobPreparationTask"):
            env.update(AZ_BATCH_JOB_PREP_DIR=str(prep), AZ_BATCH_JOB_PREP_WORKING_DIR=str(prep / "wd"))
        for setting in job.body.get("commonEnvironmentSettings") or []:
            env[setting["name"]] = setting.get("value") or ""
        return env

    # -- processes ------------------------------------------------------------------------

    def launch(self, runtime: Runtime, body: dict[str, Any], env: dict[str, str], task_dir: Path,
               uid: int, out: Any, err: Any) -> subprocess.Popen:
        """Start a command as a node would: in its container, or on the host OS."""
        settings = body.get("containerSettings")
        working_dir = task_dir / "wd"
        if settings:
            image = containers.pull(self.knobs.images, settings["imageName"],
                                    registries(runtime.pool, settings))
            options = containers.parse_run_options(settings.get("containerRunOptions"))
            argv = containers.container_argv(image, options, body["commandLine"])
            if settings.get("workingDirectory") == "containerImageDefault":
                working_dir = Path(image.workdir)
            assert runtime.node.root is not None
            prep = job_dir(runtime.node, runtime.job) / PREPARATION_DIR
            writable, read_only = containers.batch_mounts(
                settings, runtime.node.root, task_dir, prep if prep.is_dir() else None)
            launch = containers.Launch(image, argv, uid, containers.container_env(image, options, env),
                                       working_dir, writable, read_only)
            return containers.start(launch, out, err)
        command = containers.as_user(["bash", "-c", body["commandLine"]], uid)
        return subprocess.Popen(command, cwd=working_dir, env={**self.knobs.host_env, **env},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)

    def run_once(self, holder: Task | Preparation, runtime: Runtime, body: dict[str, Any],
                 env: dict[str, str], task_dir: Path, uid: int) -> int | None:
        """One attempt; None when stopped before it started."""
        with (task_dir / "stdout.txt").open("wb") as out, (task_dir / "stderr.txt").open("wb") as err:
            with self.store.lock:
                if self.stopping or getattr(holder, "stop_reason", None) is not None:
                    return None
                try:
                    process = self.launch(runtime, body, env, task_dir, uid, out, err)
                except containers.ContainerError as error:
                    raise TaskFailed(failure(error.code, error.message, Message=error.detail)) from None
                except OSError as exc:
                    raise TaskFailed(failure(errors.COMMAND_PROGRAM_NOT_FOUND,
                                             "The program specified in the task's command line "
                                             "was not found", Message=str(exc))) from None
                holder.process = process
            code = process.wait()
            with self.store.lock:
                holder.process = None
        return code if code >= 0 else 128 - code  # a signal death, as a shell reports it

    # -- tasks ----------------------------------------------------------------------------

    def run_task(self, task: Task, runtime: Runtime) -> None:
        with self.store.lock:
            task_dir = job_dir(runtime.node, runtime.job) / task.id
            task.task_dir = task_dir
            env = self.batch_env(runtime, task_dir, task.id)
            env.update(task.environment)
            task.env_seen = env
            body = task.body
            uid = containers.user_for(body.get("userIdentity"), task.serial)
        working_dir = task_dir / "wd"
        working_dir.mkdir(parents=True, exist_ok=True)
        (runtime.node.root / "shared").mkdir(parents=True, exist_ok=True)  # type: ignore[operator]
        failure_info: dict[str, Any] | None = None
        exit_code: int | None = None
        try:
            self._preprocess(task, runtime, body, working_dir)
            containers.give_to(task_dir, uid)
            exit_code = self._run_attempts(task, runtime, body, env, task_dir, uid)
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
        self.finish(task, runtime, exit_code, failure_info)

    def _preprocess(self, task: Task, runtime: Runtime, body: dict[str, Any],
                    working_dir: Path) -> None:
        settings = body.get("containerSettings")
        if self.knobs.strict_container_settings and runtime.pool.container_configured != bool(settings):
            raise TaskFailed(failure(
                errors.CONTAINER_INVALID_SETTINGS,
                "At least one value of specified task container settings is invalid",
                Message="The pool has a containerConfiguration, so tasks need containerSettings"
                if runtime.pool.container_configured else
                "The pool has no containerConfiguration, so tasks must not have containerSettings"))
        image = (settings or {}).get("imageName")
        if image and self.knobs.matches("image_pull_failure", image):
            raise TaskFailed(failure(
                errors.CONTAINER_INVALID_IMAGE, "One or more container images specified are invalid",
                ContainerImage=image,
                Message=f"Error response from daemon: pull access denied for {image}, repository "
                        "does not exist or may require 'docker login' (fake-batch knob "
                        "image_pull_failure)"))
        if image:
            try:
                containers.pull(self.knobs.images, image, registries(runtime.pool, settings))
            except containers.ContainerError as error:
                raise TaskFailed(failure(error.code, error.message, ContainerImage=image,
                                         Message=error.detail)) from None
        download_resource_files(body.get("resourceFiles") or [], working_dir)

    def _run_attempts(self, task: Task, runtime: Runtime, body: dict[str, Any],
                      env: dict[str, str], task_dir: Path, uid: int) -> int | None:
        while True:
            if self.knobs.matches("fail_tasks", task.id):
                (task_dir / "stderr.txt").write_bytes(
                    f"fake-batch: task {task.id} failed on purpose (knob fail_tasks)\n".encode())
                exit_code: int | None = self.knobs.fail_exit_code
            else:
                exit_code = self.run_once(task, runtime, body, env, task_dir, uid)
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

    # -- job preparation ------------------------------------------------------------------

    def run_preparation(self, prep: Preparation, runtime: Runtime) -> None:
        """The job's preparation task on this node, once, before its tasks (spec: retried up to
        its maxTaskRetryCount; a failure keeps the job's tasks off the node)."""
        body = dict(runtime.job.body["jobPreparationTask"])
        task_dir = job_dir(runtime.node, runtime.job) / PREPARATION_DIR
        env = self.batch_env(runtime, task_dir, body.get("id") or "jobpreparation")
        env.update({s["name"]: s.get("value") or "" for s in body.get("environmentSettings") or []})
        uid = containers.user_for(body.get("userIdentity"), runtime.job.serial)
        limit = int((body.get("constraints") or {}).get("maxTaskRetryCount") or 0)
        info: dict[str, Any] | None = None
        code: int | None = None
        try:
            (task_dir / "wd").mkdir(parents=True, exist_ok=True)
            with self.store.lock:
                prep.task_dir = task_dir
            download_resource_files(body.get("resourceFiles") or [], task_dir / "wd")
            containers.give_to(task_dir, uid)
            if self.knobs.job_preparation_failure:
                body["commandLine"] = "/bin/sh -c 'echo fake-batch: job preparation fails on " \
                                      "purpose >&2; exit 1'"
            while True:
                code = self.run_once(prep, runtime, body, env, task_dir, uid)
                if code in (0, None) or self.stopping or not (limit == -1 or prep.retry_count < limit):
                    break
                prep.retry_count += 1
            if code:
                info = failure(errors.FAILURE_EXIT_CODE,
                               "The task process exited with an unexpected exit code",
                               Message=f"The job preparation task exited with code {code}")
        except TaskFailed as failed:
            info = failed.info
        except OSError as error:  # the node went away under it (its pool was deleted)
            info = failure("NodeGone", "The node left the pool", Message=str(error))
        with self.store.lock:
            prep.exit_code, prep.failure_info = code, info
            prep.result = "failure" if info or code is None else "success"
            prep.end_time = utcnow()
            prep.state = "completed"
            self.store.changed.notify_all()


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
