"""The engine: pools come up, nodes start, tasks are scheduled, jobs end.

One engine thread advances time-driven state (allocation, node start, deletions, job
completion) and hands active tasks to free task slots — after the job's preparation task has
run on that node, when the job has one. What then happens on the node (pulling the image,
the sandboxed container, resource and output files) is node.py's. Spot nodes can be
preempted (a knob): their running tasks go back to active, as Batch requeues them.

Worker threads never hold the store lock while doing I/O or waiting for a process.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import traceback
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from . import containers, dependencies, errors
from .knobs import Knobs
from .node import NodeWork, Runtime, TaskFailed, download_resource_files, failure, job_dir
from .state import Job, Node, Pool, Preparation, Store, Task, utcnow

TICK = 0.02  # the engine also wakes on every change; this bounds timer latency

# Reasons a running task is stopped from outside.
ENDED = "ended"  # job terminated: the task completes, failed
REQUEUE = "requeue"  # its node left (pool deleted, Spot node preempted): back to active
DELETED = "deleted"  # job deleted: the task goes away with it

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_duration(text: str | None) -> float | None:
    """Seconds in an ISO 8601 duration of days/hours/minutes/seconds (what clients send)."""
    match = _DURATION.match(text or "")
    if not match:
        return None
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()


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
        self.work = NodeWork(store, knobs, self._finish)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling, kill every task process, and wait for the workers."""
        with self.store.lock:
            self._stopping = self.work.stopping = True
            for task in self.store.all_tasks:
                if task.state == "running":
                    self.stop_task(task, DELETED)
            for pool in self.store.pools.values():
                for node in pool.nodes:
                    _kill_node(node)
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
            self._allocate(pool, now)
            pool.set_allocation_state("steady")
        for node in pool.nodes:
            if node.state == "starting" and now >= node.ready_at:
                self._node_started(pool, node)
            elif node.state == "preempted" and now >= node.ready_at:
                self._recreate(node, now)  # capacity is back: a new VM under the same node id
            elif node.state == "running" and not node.dedicated and self._preempt_now(node, now):
                self._preempt(pool, node, now)

    def _preempt_now(self, node: Node, now: float) -> bool:
        """Knob preemptions: a Spot node that has run a task this long is taken away."""
        if self.knobs.preemptions <= 0 or self.knobs.preempt_after is None:
            return False
        started = [t.start_time for t in self.store.all_tasks
                   if t.key in node.running and t.start_time is not None]
        return bool(started) and (utcnow() - min(started)).total_seconds() >= self.knobs.preempt_after

    def _preempt(self, pool: Pool, node: Node, now: float) -> None:
        """Azure takes Spot nodes back (knobs.preempt_nodes of them, this one first)."""
        self.knobs.preemptions -= 1
        others = [n for n in pool.nodes if not n.dedicated and n is not node
                  and n.state != "preempted"]
        others.sort(key=lambda n: n.state != "running")  # busy nodes go first
        count = self.knobs.preempt_nodes
        victims = [node] + (others if count is None else others[:max(0, count - 1)])
        lasts = self.knobs.preemption_lasts
        for victim in victims:
            self.evict(victim, now + lasts if lasts is not None else float("inf"))

    def evict(self, node: Node, back_at: float) -> None:
        """A Spot node preempted: its running tasks are requeued (not a retry: Batch counts
        them in requeueCount) and its VM is deleted — the disk with the job preparation's
        files, and the record that the preparation ran. It keeps its id and its place in the
        pool (currentLowPriorityNodes counts it) until capacity returns at `back_at`."""
        for task in self.store.all_tasks:
            if task.state == "running" and task.node_id == node.id:
                self.stop_task(task, REQUEUE)
        _kill_node(node)
        node.set_state("preempted")
        node.ready_at = back_at
        node.preparations = {}
        node.start_task_info = None
        node.start_task_running = False
        if node.root is not None and node.root.exists():
            gone = node.root.with_name(f"{node.root.name}.evicted-{node.incarnation}")
            node.root.rename(gone)  # processes still in it die there; the new VM starts empty
            self._spawn(_remove_later, [gone], [node])

    def _recreate(self, node: Node, now: float) -> None:
        node.incarnation += 1
        node.boot_time = utcnow()
        node.set_state("starting")
        node.ready_at = now + self.knobs.node_start_delay

    def _allocate(self, pool: Pool, now: float) -> None:
        """The nodes a resize gets: all, none (a resize error) or some (a partial one)."""
        dedicated = int(pool.body.get("targetDedicatedNodes") or 0)
        spot = int(pool.body.get("targetLowPriorityNodes") or 0)
        count = dedicated + spot
        if self.knobs.resize_error:
            pool.resize_errors = [{"code": self.knobs.resize_error,
                                   "message": self.knobs.resize_error_message}]
            count = min(count, self.knobs.partial_allocation or 0)
        for index in range(count):
            suffix = "d" if index < dedicated else "p"
            node_id = f"tvmps_{pool.serial:04d}{index:04d}{uuid.uuid4().hex[:24]}_{suffix}"
            allocated = utcnow()
            pool.nodes.append(Node(allocation_time=allocated, boot_time=allocated,
                id=node_id, pool_id=pool.id, dedicated=index < dedicated, slots=pool.slots_per_node,
                ip=f"10.{pool.serial % 250}.{index // 250}.{index % 250 + 4}",
                ready_at=now + self.knobs.node_start_delay,
                root=self.root / "nodes" / pool.id / node_id))

    def _node_started(self, pool: Pool, node: Node) -> None:
        assert node.root is not None
        node.root.mkdir(parents=True, exist_ok=True)
        broken = pool.nodes.index(node) < self.knobs.unusable_node_count
        if self.knobs.unusable_nodes or broken:
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
        self._stop_preparations(job)
        self.store.changed.notify_all()

    def delete_job(self, job: Job) -> None:
        job.set_state("deleting")
        job.delete_at = time.monotonic() + self.knobs.job_delete_delay
        for task in job.tasks.values():
            if task.state == "running":
                self.stop_task(task, DELETED)
        self._stop_preparations(job)
        self._end_auto_pool(job)
        self.store.changed.notify_all()

    def _stop_preparations(self, job: Job) -> None:
        for pool in self.store.pools.values():
            for node in pool.nodes:
                prep = node.preparations.get(job.id.lower())
                if prep is not None:
                    _kill(prep.process)

    def _end_auto_pool(self, job: Job) -> None:
        spec = (job.body.get("poolInfo") or {}).get("autoPoolSpecification")
        if spec and spec.get("poolLifetimeOption") == "job" and not spec.get("keepAlive"):
            pool = self.store.pools.get(job.pool_id.lower())
            if pool is not None and pool.state != "deleting":
                self.delete_pool(pool)

    def delete_pool(self, pool: Pool) -> None:
        """Deleting: tasks running on its nodes go back to active; the nodes, and every file
        on them, go; the pool answers 404 later."""
        pool.set_state("deleting")
        pool.delete_at = time.monotonic() + self.knobs.pool_delete_delay
        for task in self.store.all_tasks:
            if task.state == "running" and task.pool_id == pool.id:
                self.stop_task(task, REQUEUE)
        for node in pool.nodes:
            _kill_node(node)
            node.set_state("leavingpool")
        self._spawn(_remove_later, [n.root for n in pool.nodes if n.root is not None],
                    list(pool.nodes))
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
                if task.state != "active" or not dependencies.ready(job, task):
                    continue  # a task waiting for others does not hold up the ones behind it
                node = self._pick_node(pool, job, task.required_slots)
                if node is None:
                    break  # FIFO within a job: later tasks wait too
                self._assign(task, job, pool, node)
                running += 1

    def _pick_node(self, pool: Pool, job: Job, slots: int) -> Node | None:
        prep = job.body.get("jobPreparationTask")
        candidates = [n for n in pool.nodes if n.free_slots >= slots]
        if prep is not None:
            wait = prep.get("waitForSuccess", True)
            for node in candidates:
                if job.id.lower() not in node.preparations:
                    self._prepare(job, pool, node)
            candidates = [n for n in candidates if n.ready_for(job.id.lower(), wait)]
        if not candidates:
            return None
        if (pool.body.get("taskSchedulingPolicy") or {}).get("nodeFillType") == "pack":
            return candidates[0]
        return max(candidates, key=lambda n: n.free_slots)  # "spread", the default

    def _prepare(self, job: Job, pool: Pool, node: Node) -> None:
        """Run the job's preparation task on this node before any of its tasks."""
        prep = Preparation()
        node.preparations[job.id.lower()] = prep
        runtime = Runtime(self.account, self.base_url(), pool, node, job)
        self._spawn(self._guard, self.work.run_preparation, prep, runtime)

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
                                  name=f"fake-batch-{getattr(target, '__name__', 'work')}")
        self._workers.append(worker)
        worker.start()
        return worker

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception:
            self.crashes.append(traceback.format_exc())

    def stop_task(self, task: Task, reason: str) -> None:
        """Ask a running task to stop (caller holds the lock); its worker finishes it."""
        task.stop_reason = reason
        _kill(task.process)

    # -- running a task -----------------------------------------------------------------

    def _run_task(self, task: Task, runtime: Runtime) -> None:
        try:
            self.work.run_task(task, runtime)
        except Exception:  # a bug here must not leave the task running and its slot taken
            self.crashes.append(traceback.format_exc())
            info = {"category": errors.SERVER_ERROR, "code": "FakeBatchCrash",
                    "message": "The fake Batch service failed while running the task"}
            self._finish(task, runtime, None, info)

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
                self._after_failure(task)
            self.store.changed.notify_all()

    def _after_failure(self, task: Task) -> None:
        """The job action of a failed task, when its job asks for exit options' job actions."""
        job = self.store.jobs.get(task.job_id.lower())
        if (job is None or job.state != "active" or task.result != "failure"
                or job.body.get("onTaskFailure") != dependencies.PERFORM_EXIT_OPTIONS):
            return
        if dependencies.job_action(task) == "terminate":
            self.terminate_job(job, "TaskFailed")

    # -- start tasks ----------------------------------------------------------------------

    def _run_start_task(self, pool: Pool, node: Node, start: dict[str, Any], wait: bool) -> None:
        try:
            self._run_start_task_steps(pool, node, start, wait)
        except Exception:
            self.crashes.append(traceback.format_exc())

    def _run_start_task_steps(self, pool: Pool, node: Node, start: dict[str, Any],
                              wait: bool) -> None:
        assert node.root is not None
        startup = node.root / "startup"
        working_dir = startup / "wd"
        working_dir.mkdir(parents=True, exist_ok=True)
        env = dict(self.knobs.host_env)
        env.update({"AZ_BATCH_POOL_ID": pool.id, "AZ_BATCH_NODE_ID": node.id,
                    "AZ_BATCH_NODE_ROOT_DIR": str(node.root),
                    "AZ_BATCH_NODE_STARTUP_DIR": str(startup),
                    "AZ_BATCH_TASK_WORKING_DIR": str(working_dir)})
        env.update({s["name"]: s.get("value") or "" for s in start.get("environmentSettings") or []})
        uid = containers.user_for(start.get("userIdentity"), pool.serial)
        command = containers.as_user(shlex.split(start["commandLine"]), uid)  # exec'd, no shell
        started = utcnow()
        retries, limit = 0, int(start.get("maxTaskRetryCount") or 0)
        info: dict[str, Any] | None = None
        code: int | None = None
        try:
            download_resource_files(start.get("resourceFiles") or [], working_dir)
            containers.give_to(startup, uid)
            while True:
                with (startup / "stdout.txt").open("wb") as out, \
                        (startup / "stderr.txt").open("wb") as err:
                    with self.store.lock:
                        if self._stopping or pool.state == "deleting":
                            return
                        node.process = subprocess.Popen(
                            command, cwd=working_dir, env=env, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=err, start_new_session=True)
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




def _kill_node(node: Node) -> None:
    """Everything running on a node: its start task and job preparation tasks."""
    _kill(node.process)
    for prep in node.preparations.values():
        _kill(prep.process)


def _remove_later(roots: list[Path], nodes: list[Node], patience: float = 5.0) -> None:
    """A removed node takes its disk with it: once its killed tasks have let go, delete it."""
    deadline = time.monotonic() + patience
    def busy(node: Node) -> bool:
        return bool(node.running) or any(p.state == "running" for p in node.preparations.values())
    while time.monotonic() < deadline and any(busy(n) for n in nodes):
        time.sleep(0.02)
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
