"""The local backend: the Batch contract honoured on one machine, with a folder as storage.

A pool is a detached agent process (agent.py) running at most
min(nodes x slots, CPUs) tasks at once; jobs and tasks are folders it watches (layout in
layout.py). The blob container is a folder with the same blob names as on Azure.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO, Iterable

from common.backends.local import layout as lay
from common.backends.base import Backend, BlobStore, Capabilities, StatusCallback
from common.backends.local.reaper import kill_marked
from common.config import SECRET_KEYS
from common.errors import ToolError
from common.model import BlobInfo, JobSpec, PoolSpec, TaskCounts, TaskFailure, TaskStats
from common.transfer import md5_of

STOP_TIMEOUT_SECONDS = 15.0
_PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the folder holding common/


class LocalBlobStore(BlobStore):
    """A blob container kept as a folder: blob 'a/b.csv' is the file <folder>/a/b.csv."""

    def __init__(self, folder: Path, container: str) -> None:
        self.folder = folder
        self.container = container

    @property
    def location(self) -> str:
        return str(self.folder)

    def exists(self) -> bool:
        return self.folder.is_dir()

    def create(self) -> bool:
        created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        return created

    def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        start = self.folder / prefix.rsplit("/", 1)[0] if "/" in prefix else self.folder
        if not start.exists():
            return []
        found = []
        for path in sorted(start.rglob("*")) if start.is_dir() else [start]:
            name = path.relative_to(self.folder).as_posix()
            if path.is_file() and name.startswith(prefix) and not _in_flight(path):
                found.append(BlobInfo(name, path.stat().st_size, md5_of(path)))
        return found

    def upload_file(self, source: BinaryIO, blob: str, md5: bytes) -> None:
        target = self.folder / blob
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.uploading")
        with partial.open("wb") as handle:
            shutil.copyfileobj(source, handle, 1 << 20)
        os.replace(partial, target)

    def download_blob(self, blob: BlobInfo, dest: Path) -> bytes | None:
        shutil.copyfile(self.folder / blob.name, dest)
        return None

    def read_tail(self, blob: str, max_bytes: int = 4096) -> str:
        try:
            with (self.folder / blob).open("rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - max_bytes))
                return handle.read().decode("utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            return ""

    def delete_blobs(self, names: Iterable[str]) -> None:
        for name in names:
            (self.folder / name).unlink(missing_ok=True)

    def delete_container(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _in_flight(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".uploading")


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class LocalBackend(Backend):
    name = "local"
    poll_seconds = 0.25  # reading a few small files: cheap, so progress stays live
    capabilities = Capabilities(bills=False, spot=False, task_dependencies=True)  # type: ignore[assignment]

    def __init__(self, root: Path, cpus: int | None = None) -> None:
        self.root = root
        self.cpus = cpus or usable_cpus()
        self._job_dirs: dict[str, Path] = {}
        self._totals: dict[Path, tuple[tuple[int, int], int]] = {}  # job -> (job.json stamp, tasks)

    # -- storage -----------------------------------------------------------------------

    def blob_store(self, container: str) -> BlobStore:
        return LocalBlobStore(lay.storage_dir(self.root, container), container)

    # -- pools -------------------------------------------------------------------------

    def slots_for(self, spec: PoolSpec) -> int:
        # Spot is simulated by nothing here: a Spot node is a node like the others
        return max(1, min((spec.node_count + spec.spot_node_count) * spec.slots_per_node, self.cpus))

    def threads_per_task(self, pool: PoolSpec) -> int | None:
        """This machine's CPUs shared by the tasks that run at once: its "nodes" are one."""
        return max(1, self.cpus // self.slots_for(pool))

    def prepare_pool(self, spec: PoolSpec, on_status: StatusCallback) -> None:
        pool = lay.pool_dir(self.root, spec.pool_id)
        slots = self.slots_for(spec)
        existing = lay.read_json(pool / "pool.json")
        if existing and existing.get("slots") != slots and self._agent_alive(pool):
            raise ToolError(
                f"local pool {spec.pool_id} is running with {existing.get('slots')} slots, "
                f"not {slots}: let its tasks finish, or delete it (answer yes to 'Delete job/pool')")
        reused = bool(existing) and self._agent_alive(pool)
        lay.write_json(pool / "pool.json", {"pool_id": spec.pool_id, "slots": slots,
                                            "node_count": spec.node_count,
                                            "storage_root": str(self.root / "storage")})
        self._ensure_agent(pool)
        verb = "reusing" if reused else "started"
        on_status(f"local pool {spec.pool_id}: {verb}, {slots} task(s) at once "
                  f"({spec.node_count} node(s), {self.cpus} CPU(s))")

    def _agent_alive(self, pool: Path) -> bool:
        lock = pool / "agent.lock"
        if not lock.exists():
            return False
        with lock.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def _ensure_agent(self, pool: Path) -> None:
        if self._agent_alive(pool):
            return
        env = {k: v for k, v in os.environ.items() if k not in SECRET_KEYS}
        env["PYTHONPATH"] = str(_PACKAGE_ROOT)
        with (pool / "agent.log").open("ab") as log:
            subprocess.Popen([sys.executable, "-m", "common.backends.local.agent", str(pool)],
                             cwd=pool, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, close_fds=True)
        deadline = time.monotonic() + 10
        while not self._agent_alive(pool):
            if time.monotonic() > deadline:
                raise ToolError(f"the local pool agent did not start: see {pool / 'agent.log'}")
            time.sleep(0.02)

    # -- jobs --------------------------------------------------------------------------

    def _job(self, job_id: str) -> Path | None:
        known = self._job_dirs.get(job_id)
        if known is not None and (known / "job.json").exists():
            return known
        found = list(self.root.glob(f"pools/*/jobs/{job_id}/job.json"))
        if not found:
            return None
        self._job_dirs[job_id] = found[0].parent
        return found[0].parent

    def _task_total(self, jdir: Path) -> int:
        """How many tasks the job has; job.json (every task id) is parsed only when it changes."""
        try:
            status = (jdir / "job.json").stat()
        except FileNotFoundError:
            return 0
        stamp = (status.st_ino, status.st_mtime_ns)
        cached = self._totals.get(jdir)
        if cached is None or cached[0] != stamp:
            cached = (stamp, len((lay.read_json(jdir / "job.json") or {}).get("tasks", [])))
            self._totals[jdir] = cached
        return cached[1]

    def submit_job(self, job: JobSpec, on_status: StatusCallback) -> str:
        if job.auto_pool is not None:  # nothing bills here: a pool per job, kept like any other
            self.prepare_pool(job.auto_pool, on_status)
        pool = lay.pool_dir(self.root, job.pool_id)
        if not (pool / "pool.json").exists():
            raise ToolError(f"local pool {job.pool_id} does not exist: create it before the job")
        jdir = lay.job_dir(pool, job.job_id)
        existing = lay.read_json(jdir / "job.json") or {}
        dependencies = existing.get("task_dependencies", job.task_dependencies)
        dependent = [t.task_id for t in job.tasks if t.depends_on or t.depends_on_ranges]
        if dependent and not dependencies:  # as Batch: TaskDependenciesNotSpecifiedOnJob
            raise ToolError(f"local job {job.job_id}: task {dependent[0]} depends on other tasks, "
                            "but the job was not made with task dependencies")
        known = existing.get("tasks", [])
        new = [t for t in job.tasks if t.task_id not in known]
        for task in new:
            lay.write_json(lay.task_dir(jdir, task.task_id) / "task.json", lay.task_to_json(task))
        prep = lay.task_to_json(job.preparation) if job.preparation else None
        shared = asdict(job.shared_data) if job.shared_data else existing.get("shared_data")
        lay.write_json(jdir / "job.json", {"job_id": job.job_id, "pool_id": job.pool_id,
                                           "container": job.container,
                                           "auto_pool": job.auto_pool is not None,
                                           "preparation": prep, "shared_data": shared,
                                           # tasks added later leave it as it was
                                           "sealed": existing.get("sealed", job.seal),
                                           "task_dependencies": dependencies,
                                           "tasks": known + [t.task_id for t in new]})
        batch = len(list((jdir / "queue").glob("*.json")))
        lay.write_json(jdir / "queue" / f"{batch:06d}.json", [t.task_id for t in new])
        self._ensure_agent(pool)
        return job.pool_id

    def add_tasks(self, job: JobSpec) -> None:
        self.submit_job(job, lambda _: None)  # new task ids go into the job's next queue batch

    def seal_job(self, job_id: str) -> None:
        """From now on the job is completed once none of its tasks waits or runs."""
        jdir = self._job(job_id)
        if jdir is None:
            raise ToolError(f"local job {job_id} does not exist")
        spec = lay.read_json(jdir / "job.json") or {}
        spec["sealed"] = True
        lay.write_json(jdir / "job.json", spec)

    def active_task_ids(self, job_id: str) -> list[str]:
        _, states = self._states(job_id)
        return [task_id for task_id, state in states if lay.bucket(state or None) == lay.ACTIVE]

    def task_ids(self, job_id: str) -> list[str]:
        jdir = self._job(job_id)
        if jdir is None:
            raise ToolError(f"local job {job_id} does not exist")
        return list((lay.read_json(jdir / "job.json") or {}).get("tasks", []))

    def delete_tasks(self, job_id: str, task_ids: list[str]) -> None:
        """The tasks leave job.json; the agent skips them (cancelled.json) when their turn comes."""
        jdir = self._job(job_id)
        if jdir is None:
            return
        gone = set(task_ids)
        cancelled = set(lay.read_json(jdir / "cancelled.json") or []) | gone
        lay.write_json(jdir / "cancelled.json", sorted(cancelled))
        spec = lay.read_json(jdir / "job.json") or {}
        spec["tasks"] = [t for t in spec.get("tasks", []) if t not in gone]
        lay.write_json(jdir / "job.json", spec)

    def job_state(self, job_id: str) -> str | None:
        if self._job(job_id) is None:
            return None
        counts = self.task_counts(job_id)
        sealed = (lay.read_json(self._job(job_id) / "job.json") or {}).get("sealed", True)
        return "active" if counts.active or counts.running or not sealed else "completed"

    def pool_exists(self, pool_id: str) -> bool:
        return (lay.pool_dir(self.root, pool_id) / "pool.json").exists()

    def _states(self, job_id: str) -> tuple[Path, list[tuple[str, dict]]]:
        jdir = self._job(job_id)
        if jdir is None:
            raise ToolError(f"local job {job_id} does not exist")
        tasks = (lay.read_json(jdir / "job.json") or {}).get("tasks", [])
        states = [(t, lay.read_json(lay.task_dir(jdir, t) / "state.json") or {}) for t in tasks]
        return jdir, states

    def task_counts(self, job_id: str, exact: bool = False) -> TaskCounts:
        """One small file the agent keeps (counts.json), not every task's state: a poll costs
        the same for 5 tasks and for 5,000."""
        jdir = self._job(job_id)
        if jdir is None:
            raise ToolError(f"local job {job_id} does not exist")
        tally = lay.read_json(jdir / "counts.json") or {}
        unseen = max(0, self._task_total(jdir) - tally.get("known", 0))  # not yet picked up
        counts = TaskCounts(active=tally.get(lay.ACTIVE, 0) + unseen,
                            running=tally.get(lay.RUNNING, 0),
                            succeeded=tally.get(lay.SUCCEEDED, 0), failed=tally.get(lay.FAILED, 0))
        if counts.active or counts.running:
            self._ensure_agent(jdir.parent.parent)  # an agent that idled out or died resumes
        return counts

    def task_failures(self, job_id: str) -> list[TaskFailure]:
        jdir, states = self._states(job_id)
        return [TaskFailure(task_id, state.get("exit_code"), state.get("failure_code"),
                            state.get("failure_message"))
                for task_id, state in states
                if state.get("state") == lay.COMPLETED and state.get("result") != "success"]

    def task_stats(self, job_id: str) -> TaskStats:
        _, states = self._states(job_id)
        return TaskStats(tuple(s["end_time"] - s["start_time"] for _, s in states
                               if s.get("result") == "success" and "start_time" in s
                               and "end_time" in s))

    def preparation_failures(self, job_id: str) -> list[TaskFailure]:
        jdir = self._job(job_id)
        state = lay.read_json(jdir / "prep" / "state.json") if jdir else None
        if not state or state.get("result") != "failure":
            return []
        tail = (jdir / "prep" / "stderr.txt").read_text(errors="replace").splitlines()[-10:] \
            if (jdir / "prep" / "stderr.txt").exists() else []
        return [TaskFailure("job preparation", state.get("exit_code"), state.get("failure_code"),
                            state.get("failure_message"), tuple(tail))]

    def delete_job(self, job_id: str) -> None:
        """Stops the job's tasks; a pool made for the job alone goes with it, as on Azure."""
        jdir = self._job(job_id)
        if jdir is None:
            return
        pool = jdir.parent.parent
        if (lay.read_json(jdir / "job.json") or {}).get("auto_pool"):
            self.delete_pool(pool.name)
            return
        (jdir / "DELETE").touch()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while self._agent_alive(pool) and not (jdir / "DELETED").exists():
            if time.monotonic() > deadline:
                raise ToolError(f"local job {job_id}: its tasks did not stop; see {pool / 'agent.log'}")
            time.sleep(0.05)
        shutil.rmtree(jdir, ignore_errors=True)

    def delete_pool(self, pool_id: str) -> None:
        pool = lay.pool_dir(self.root, pool_id)
        if not pool.exists():
            return
        if not self._agent_alive(pool):  # a dead agent's tasks may still run: they go too
            kill_marked(pool.resolve())
        if self._agent_alive(pool):
            pid = int((pool / "agent.pid").read_text() or 0)
            if pid > 0:
                os.kill(pid, signal.SIGTERM)  # the lock proves this pid is still our agent
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            while self._agent_alive(pool):
                if time.monotonic() > deadline:
                    raise ToolError(f"local pool {pool_id}: its agent (pid {pid}) did not stop")
                time.sleep(0.05)
        shutil.rmtree(pool, ignore_errors=True)
