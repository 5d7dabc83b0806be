"""The local backend's "Batch service": one detached process per pool that runs its tasks.

Started by backend.py as `python -m common.backends.local.agent POOL_DIR`, it
outlives the script that started it, as an Azure pool does: a closed terminal or Ctrl-C
does not stop the tasks, and a later run can read their states from disk. Each task gets
its own working directory with its inputs copied from the storage folder, runs with /bin/sh
as its own process group, and has its output files copied back to the container when it
ends (logs always, results only on success, like Batch's upload conditions).

At most `slots` tasks run at once; a task that depends on others waits until they have
succeeded, and is blocked for good when one failed (waiting.py). SIGTERM (pool deletion) stops every task and the agent.
After IDLE_SECONDS with nothing queued or running the agent exits; the client starts a new
one when it next needs the pool.
"""
from __future__ import annotations

import fcntl
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from common.backends.local import layout as lay
from common.backends.local.reaper import agent_mark, kill_marked, start_reaper
from common.backends.local.environment import task_environment
from common.backends.local.files import collect_outputs, stage_inputs
from common.backends.local.shared import place as place_shared_data
from common.backends.local.waiting import Waiting
from common.model import TaskSpec

POLL_SECONDS = 0.05
KILL_GRACE_SECONDS = 3.0
LOCK_TRIES, LOCK_TRY_SECONDS = 50, 0.02
RECENT_NS = 2_000_000_000
IDLE_SECONDS = float(os.environ.get("LOCALBATCH_AGENT_IDLE_SECONDS", "600"))


def now() -> float:
    return time.time()


class Agent:
    def __init__(self, pool: Path) -> None:
        self.pool = pool
        spec = lay.read_json(pool / "pool.json") or {}
        self.pool_id = spec.get("pool_id", pool.name)
        self.storage_root = Path(spec["storage_root"])
        self.slots = max(1, int(spec.get("slots", 1)))
        self.queue: queue.Queue[tuple[Path, str] | None] = queue.Queue()
        self.seen_batches: set[Path] = set()
        self.running: dict[Path, subprocess.Popen] = {}  # task dir -> process
        self.deleted_jobs: set[Path] = set()
        self.lock = threading.Lock()
        self.preparing: dict[Path, threading.Lock] = {}  # job -> held while its prep runs
        self.stopping = threading.Event()
        self.last_busy = now()
        self.mark = agent_mark(pool, f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
        self.tallies: dict[Path, dict[str, int]] = {}  # job -> counts, written to counts.json
        self.dirty: set[Path] = set()
        self.containers: dict[Path, Path] = {}
        self.jobs: list[Path] = []  # job folders, listed again when jobs/ changes
        self.stamps: dict[Path, int | None] = {}  # folder -> mtime at the last look
        self.waiting = Waiting()  # tasks that wait for the tasks they depend on
        self.waiting_lock = threading.Lock()  # slots record endings; the main loop releases
        self.cancel_stamps: dict[Path, int | None] = {}  # job -> cancelled.json mtime

    # -- discovery ---------------------------------------------------------------------

    def recover(self) -> None:
        """Tasks a dead agent left 'running' cannot be followed any more: kill whatever of them
        still runs (its reaper may have died with it), then fail them."""
        kill_marked(self.pool, spare=self.mark)
        for state_file in self.pool.glob("jobs/*/tasks/*/state.json"):
            state = lay.read_json(state_file) or {}
            if state.get("state") == lay.RUNNING:
                state.update(state=lay.COMPLETED, result="failure", exit_code=None,
                             failure_code="NodeAgentLost",
                             failure_message="the local agent running this task stopped",
                             end_time=now())
                lay.write_json(state_file, state)

    def discover(self) -> None:
        for batch in sorted(self.pool.glob("jobs/*/queue/*.json")):
            if batch in self.seen_batches:
                continue
            self.seen_batches.add(batch)
            job = batch.parent.parent
            cancelled = set(lay.read_json(job / "cancelled.json") or [])
            dependencies = bool((lay.read_json(job / "job.json") or {}).get("task_dependencies"))
            for task_id in lay.read_json(batch) or []:
                if task_id in cancelled:
                    continue  # no longer needed (an adaptive campaign met its target)
                state = lay.read_json(lay.task_dir(job, task_id) / "state.json")
                self.tally(job, None, lay.bucket(state))  # counted before a slot can take it
                if state is not None and state.get("state") == lay.COMPLETED:
                    with self.waiting_lock:
                        self.waiting.ended(job, task_id, state.get("result") == "success",
                                           state.get("end_time") or 0.0)
                elif dependencies and (state is None or state.get("blocked_by")):
                    self.hold(job, task_id)
                elif state is None:
                    self.queue.put((job, task_id))

    def hold(self, job: Path, task_id: str) -> None:
        """A task of a job with dependencies: queued at once if it depends on nothing."""
        task = lay.task_from_json(lay.read_json(lay.task_dir(job, task_id) / "task.json"))
        if not task.depends_on and not task.depends_on_ranges:
            self.queue.put((job, task_id))
            return
        with self.waiting_lock:
            self.waiting.add(job, task)

    def release(self) -> None:
        """Queue the waiting tasks whose dependencies all succeeded; mark the ones a failed
        dependency blocks (they stay active and never run, as on Batch)."""
        self.forget_cancelled()
        with self.waiting_lock:
            if not self.waiting.changed:
                return
            jobs = {job: (lay.read_json(job / "job.json") or {}).get("tasks", [])
                    for job in self.waiting.jobs()}
            ready, blocked = self.waiting.release(jobs)
        for job, task_id in ready:
            self.queue.put((job, task_id))
        for job, task_id, why in blocked:
            lay.write_json(lay.task_dir(job, task_id) / "state.json",
                           {"state": lay.ACTIVE, "blocked_by": list(why)})
            print(f"{job.name}/{task_id}: blocked by the failure of {', '.join(why)}; it will "
                  "never run", file=sys.stderr, flush=True)

    def forget_cancelled(self) -> None:
        """Waiting tasks removed from their job (delete_tasks) leave the counts."""
        for job in self.waiting.jobs():
            stamp = _mtime(job / "cancelled.json")
            if stamp == self.cancel_stamps.get(job):
                continue
            self.cancel_stamps[job] = stamp
            with self.waiting_lock:
                gone = self.waiting.cancel(job, lay.read_json(job / "cancelled.json") or [])
            for _ in gone:
                self.forget(job)

    def forget(self, job: Path) -> None:
        with self.lock:  # it leaves the counts, as it left job.json
            counts = self.tallies.setdefault(job, dict.fromkeys(lay.COUNT_KEYS, 0))
            counts["known"] -= 1
            counts[lay.ACTIVE] -= 1
            self.dirty.add(job)

    # -- counts ------------------------------------------------------------------------

    def tally(self, job: Path, old: str | None, new: str) -> None:
        """Move one task between counts; the client reads them in one file (counts.json)."""
        with self.lock:
            counts = self.tallies.setdefault(job, dict.fromkeys(lay.COUNT_KEYS, 0))
            if old is None:
                counts["known"] += 1
            else:
                counts[old] -= 1
            counts[new] += 1
            self.dirty.add(job)

    def flush_counts(self) -> None:
        with self.lock:
            changed = {job: dict(self.tallies[job]) for job in self.dirty}
            self.dirty.clear()
        for job, counts in changed.items():
            if job not in self.deleted_jobs:
                lay.write_counts(job, counts)

    def anything_new(self) -> bool:
        """Whether a job or a batch of tasks may have come since the last look: a few stat()
        calls, not a glob, 20 times a second. A folder changed within the last seconds counts
        as changed, since a second change in the same clock tick leaves its mtime as it was."""
        jobs = self.pool / "jobs"
        stamps = {folder: _mtime(folder) for folder in [jobs, *(j / "queue" for j in self.jobs)]}
        if stamps.get(jobs) != self.stamps.get(jobs) or _recent(stamps.get(jobs)):
            self.jobs = sorted(p for p in jobs.iterdir() if p.is_dir()) if jobs.is_dir() else []
        changed = stamps != self.stamps or any(_recent(s) for s in stamps.values())
        self.stamps = stamps
        return changed

    def handle_deletions(self) -> None:
        for job in self.jobs:
            if job in self.deleted_jobs or not (job / "DELETE").exists():
                continue
            self.deleted_jobs.add(job)
            self.kill(lambda task: task.parent.parent == job)
            lay.write_json(job / "DELETED", {"time": now()})

    # -- running -----------------------------------------------------------------------

    def slot(self, node_id: str) -> None:
        while not self.stopping.is_set():
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            job, task_id = item
            if job in self.deleted_jobs or not job.exists():
                continue
            self.last_busy = now()
            try:
                self.run_task(job, task_id, node_id)
            except Exception as exc:  # a vanished job folder must not stop the slot
                print(f"{task_id}: {exc!r}", file=sys.stderr, flush=True)
            finally:
                self.last_busy = now()

    def run_task(self, job: Path, task_id: str, node_id: str) -> None:
        tdir = lay.task_dir(job, task_id)
        task = lay.task_from_json(lay.read_json(tdir / "task.json"))
        if job not in self.containers:  # job.json lists every task id: read it once
            self.containers[job] = self.storage_root / (lay.read_json(job / "job.json") or {})["container"]
        container = self.containers[job]
        wd = tdir / "wd"
        if task_id in set(lay.read_json(job / "cancelled.json") or []):
            self.forget(job)
            return
        state = {"state": lay.RUNNING, "node_id": node_id, "start_time": now()}
        lay.write_json(tdir / "state.json", state)
        self.tally(job, lay.ACTIVE, lay.RUNNING)
        prepared = self.prepare(job, container, node_id)
        if prepared is not None:
            self.finish(tdir, state, None, "JobPreparationFailed", prepared)
            return
        try:
            stage_inputs(task, container, wd)
        except OSError as exc:
            self.finish(tdir, state, None, "ResourceFileDownloadError", f"input not staged: {exc}")
            return
        env = self.task_env(job, tdir, task, node_id)
        for attempt in range(task.max_retries + 1):  # Batch's maxTaskRetryCount
            state["retry_count"] = attempt
            code = self.execute(job, tdir, task, env)
            if code == 0 or job in self.deleted_jobs or self.stopping.is_set():
                break
        if job in self.deleted_jobs or self.stopping.is_set():
            return
        failure = collect_outputs(task, tdir, container, succeeded=code == 0)
        self.finish(tdir, state, code, *failure)

    def prepare(self, job: Path, container: Path, node_id: str) -> str | None:
        """Run the job's preparation task once (all "nodes" here share one disk), before its
        first task, as Batch does on each node. None when done, else why it failed."""
        spec = (lay.read_json(job / "job.json") or {}).get("preparation")
        if not spec:
            return None
        with self.lock:
            gate = self.preparing.setdefault(job, threading.Lock())
        pdir = job / "prep"
        with gate:
            state = lay.read_json(pdir / "state.json")
            if state is None:
                task = lay.task_from_json(spec)
                state = {"state": lay.RUNNING, "node_id": node_id, "start_time": now()}
                shared = place_shared_data((lay.read_json(job / "job.json") or {}).get("shared_data"),
                                           pdir / "wd")
                try:
                    if shared is not None:
                        raise OSError(shared)
                    stage_inputs(task, container, pdir / "wd")
                    code = self.execute(job, pdir, task, self.task_env(job, pdir, task, node_id))
                except OSError as exc:
                    code, state["failure_message"] = None, shared or f"input not staged: {exc}"
                state.update(state=lay.COMPLETED, result="success" if code == 0 else "failure",
                             exit_code=code, end_time=now(),
                             failure_code=None if code == 0 else "JobPreparationFailed",
                             failure_message=None if code == 0 else state.get("failure_message")
                             or _last_line(pdir / "stderr.txt", f"exit code {code}"))
                lay.write_json(pdir / "state.json", state)  # not a task: no count changes
        state = lay.read_json(pdir / "state.json") or {}
        if state.get("result") == "success":
            return None
        return f"the job preparation task failed: {state.get('failure_message')}"

    def execute(self, job: Path, tdir: Path, task: TaskSpec, env: dict[str, str]) -> int:
        """One run of the command, its output replacing any earlier attempt's."""
        with (tdir / "stdout.txt").open("wb") as out, (tdir / "stderr.txt").open("wb") as err:
            proc = subprocess.Popen(["/bin/sh", "-c", task.command], cwd=tdir / "wd", stdout=out,
                                    stderr=err, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
            with self.lock:
                self.running[tdir] = proc
            if job in self.deleted_jobs or self.stopping.is_set():
                _signal_group(proc, signal.SIGKILL)
            code = proc.wait()
            with self.lock:
                self.running.pop(tdir, None)
        return code

    def finish(self, tdir: Path, state: dict, code: int | None, failure_code: str | None,
               failure_message: str | None) -> None:
        ok = code == 0 and failure_code is None
        state.update(state=lay.COMPLETED, result="success" if ok else "failure", exit_code=code,
                     failure_code=failure_code, failure_message=failure_message, end_time=now())
        lay.write_json(tdir / "state.json", state)  # before the count: a reader of counts.json
        self.tally(tdir.parent.parent, lay.RUNNING, lay.bucket(state))  # finds the state there
        with self.waiting_lock:
            self.waiting.ended(tdir.parent.parent, tdir.name, ok, state["end_time"])

    def task_env(self, job: Path, tdir: Path, task: TaskSpec, node_id: str) -> dict[str, str]:
        return task_environment(self.pool_id, job, tdir, task, node_id, self.mark)

    def kill(self, which) -> None:
        with self.lock:
            procs = [p for t, p in self.running.items() if which(t)]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = now() + KILL_GRACE_SECONDS
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - now()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)

    # -- main loop ---------------------------------------------------------------------

    def idle(self) -> bool:
        with self.lock:
            busy = bool(self.running)
        # A task that waits for another keeps the agent: it may yet run. One that a failure
        # blocked does not (it never will); the next agent finds it again.
        with self.waiting_lock:
            pending = any(set(self.waiting.tasks[job]) - self.waiting.blocked.get(job, set())
                          for job in self.waiting.jobs())
        return not busy and not pending and self.queue.empty() and now() - self.last_busy > IDLE_SECONDS

    def serve(self) -> None:
        self.recover()
        threads = [threading.Thread(target=self.slot, args=(f"local-node-{n}",), daemon=True)
                   for n in range(1, self.slots + 1)]
        for thread in threads:
            thread.start()
        while not self.stopping.is_set() and self.pool.exists() and not self.idle():
            if self.anything_new():
                self.discover()
            self.release()
            self.handle_deletions()
            self.flush_counts()
            time.sleep(POLL_SECONDS)
        self.stopping.set()
        self.kill(lambda task: True)
        kill_marked(self.pool, only=self.mark)  # what left the tasks' process groups
        self.flush_counts()


def _mtime(folder: Path) -> int | None:
    try:
        return folder.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _recent(stamp: int | None) -> bool:
    return stamp is not None and time.time_ns() - stamp < RECENT_NS


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(path: Path, default: str) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return default
    return lines[-1] if lines else default


def _take_lock(handle) -> bool:
    """The pool's lock, unless another agent holds it. A client asking whether an agent is
    alive holds it shared for an instant: an agent starting in that instant used to take
    that for another agent and quit, and the client then waited for it in vain. A real
    agent holds it for good, so a second of trying tells the two apart."""
    for _ in range(LOCK_TRIES):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(LOCK_TRY_SECONDS)
    return False


def main(argv: list[str]) -> int:
    pool = Path(argv[0]).resolve()
    lock_handle = (pool / "agent.lock").open("a")
    if not _take_lock(lock_handle):
        return 0  # another agent serves this pool
    (pool / "agent.pid").write_text(str(os.getpid()))
    agent = Agent(pool)
    reaper_pipe = start_reaper(pool, agent.mark)  # noqa: F841  # open until this process ends
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    agent.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
