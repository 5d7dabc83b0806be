"""The campaign manifest: what this tool created, uploaded, deleted and downloaded.

One small JSON file per SIM_ID beside the simconfig (`<SIM_ID>.campaign.json`), written
before the first effect and after every one, so a closed terminal, a crash or Ctrl-C never
loses track of a pool that bills or of results not yet saved: `--status`, `--attach` and
`--cleanup` start from it. It holds names, counts and paths, never a secret.

Two processes may work on one campaign (a runner and a later `--cleanup`, or two runners
started by mistake): every change is a read-modify-write of the file on disk under an
exclusive lock (fcntl, on a `.lock` file beside it), so no process ever loses another's
record (common/manifest_lock.py: waited for a bounded time, its holder named). A running
script also leaves a *claim* in it (pid, host), which is how a second
runner learns that the campaign is busy. The file is read, not obeyed: every field is
checked (ids by Batch's rules, the container by the storage service's, SIM_ID and backend
against the configuration) and anything else is refused with exit 2, naming the field.
"""
from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from common.errors import ToolError
from common.manifest_lock import PID_MAX, held, process_start
from common.model import JobKind, RunSetup
MAX_BYTES = 16 * 1024 * 1024  # a manifest is a few KB; anything this big is not one
# Seeds are a bijection of the index below 2**31 (common/campaign.py: sim_seed): an index
# past it would run with the seed of another run.
MAX_TASK_INDEX = 2 ** 31 - 1
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    kind: JobKind
    pool_id: str | None  # None until an auto pool has been given its id by the service
    task_ids: tuple[str, ...]
    task_indices: tuple[int, ...]
    auto_pool: bool = False  # the pool is deleted by the service when the job ends
    created: str = field(default_factory=_now)
    job_deleted: bool = False
    pool_deleted: bool = False
    failed_indices: tuple[int, ...] = ()  # task indices that failed, kept after the job is gone
    succeeded: bool = False  # every task succeeded (a reducer's result exists)
    node_hours: tuple[float, float] = (0.0, 0.0)  # (dedicated, Spot) so far
    cost: float | None = None  # in `currency`; None when a price is unknown
    currency: str = ""
    task_seconds: tuple[float, ...] = ()  # durations of the tasks that succeeded (estimates)
    requeues: int = 0  # tasks Batch put back after a Spot preemption
    setup: RunSetup | None = None  # TOPAS threads and histories each of its runs was told
    shared_data: str | None = None  # key of the Geant4 data its nodes staged
    # A reducer tree (common/merge_tree.py), aligned with task_ids: the tasks each task
    # depends on, and the runs it stands for. Empty for a job without dependencies.
    task_depends: tuple[tuple[str, ...], ...] = ()
    task_runs: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class RunClaim:
    """A script working on the campaign right now (removed when it ends)."""

    token: str
    pid: int
    host: str
    script: str  # "runner", "reducer", "cleanup"...
    started: str = field(default_factory=_now)

    def alive(self) -> bool:
        """Whether its process still runs (a claim from another host is taken as alive).
        A pid no process of ours can have (0, 1, negative, past the largest) is no claim,
        nor is a process that started after the claim was made (its pid was reused)."""
        if self.host != socket.gethostname():
            return True
        if not 1 < self.pid <= PID_MAX:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = process_start(self.pid)
        try:
            claimed = datetime.fromisoformat(self.started).timestamp()
        except (ValueError, TypeError, OverflowError):
            return True
        # a minute of slack: the claim's time is whole seconds, and the kernel's boot time
        # (from which a start time is reckoned) may differ from the wall clock by a step
        return started is None or started <= claimed + 60


@dataclass(frozen=True)
class Manifest:
    sim_id: str
    backend: str
    container: str
    simconfig: str
    created: str = field(default_factory=_now)
    uploaded: tuple[str, ...] = ()
    jobs: tuple[JobRecord, ...] = ()
    downloads: tuple[str, ...] = ()
    container_deleted: bool = False
    events: tuple[str, ...] = ()
    claims: tuple[RunClaim, ...] = ()

    def latest(self, kind: JobKind) -> JobRecord | None:
        found = [j for j in self.jobs if j.kind == kind]
        return found[-1] if found else None

    def open_jobs(self) -> list[JobRecord]:
        """Jobs whose job or pool was not deleted by this tool (they may still cost money)."""
        return [j for j in self.jobs if not j.job_deleted or not (j.pool_deleted or j.auto_pool)]

    def job(self, job_id: str) -> JobRecord:
        return next(j for j in self.jobs if j.job_id == job_id)


def manifest_path(simconfig: Path, sim_id: str) -> Path:
    return simconfig.resolve().parent / f"{sim_id}.campaign.json"


# ---------------------------------------------------------------------------- reading, checked


class _Bad(Exception):
    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")


def _typed(data: Any, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    if not isinstance(data, dict) or key not in data:
        raise _Bad(f"{where}{key}", "is missing")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Bad(f"{where}{key}", f"has the wrong type ({type(value).__name__})")
    return value


def _strings(data: Any, key: str, where: str = "", default: tuple = ()) -> tuple[str, ...]:
    if isinstance(data, dict) and key not in data:
        return default
    values = _typed(data, key, list, where)
    if not all(isinstance(v, str) for v in values):
        raise _Bad(f"{where}{key}", "must be a list of strings")
    return tuple(values)


def _batch_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _BATCH_ID.match(value):
        raise _Bad(where, f"{str(value)[:80]!r} is not a Batch id")
    return value


def _job(data: Any, index: int) -> JobRecord:
    where = f"jobs[{index}]."
    kind = _typed(data, "kind", str, where)
    if kind not in tuple(JobKind):
        raise _Bad(f"{where}kind", f"{kind[:40]!r} is not one of: {', '.join(map(repr, map(str, JobKind)))}")
    pool = data.get("pool_id")
    indices = _typed(data, "task_indices", list, where)
    failed = data.get("failed_indices", [])
    for name, numbers in (("task_indices", indices), ("failed_indices", failed)):
        if not isinstance(numbers, list) or not all(isinstance(n, int) and not isinstance(n, bool)
                                                    and 0 <= n <= MAX_TASK_INDEX for n in numbers):
            raise _Bad(f"{where}{name}", f"must be a list of task indices (0 to {MAX_TASK_INDEX})")
    if len(set(indices)) != len(indices):
        raise _Bad(f"{where}task_indices", "names a task index twice")
    strangers = sorted(set(failed) - set(indices))
    if strangers:
        raise _Bad(f"{where}failed_indices", f"{strangers[0]} is not a task index of this job")
    task_ids = _strings(data, "task_ids", where)
    for number, task_id in enumerate(task_ids):
        _batch_id(task_id, f"{where}task_ids[{number}]")
    if len(task_ids) != len(indices):
        raise _Bad(f"{where}task_ids", "does not match task_indices")
    flags = {k: data.get(k, False) for k in ("auto_pool", "job_deleted", "pool_deleted", "succeeded")}
    if not all(isinstance(v, bool) for v in flags.values()):
        raise _Bad(where.rstrip("."), f"{', '.join(flags)} must be true or false")
    return JobRecord(job_id=_batch_id(data.get("job_id"), f"{where}job_id"), kind=JobKind(kind),
                     pool_id=None if pool is None else _batch_id(pool, f"{where}pool_id"),
                     task_ids=task_ids, task_indices=tuple(indices),
                     created=str(data.get("created", "")), failed_indices=tuple(failed),
                     setup=_setup(data.get("setup"), where),
                     shared_data=_key(data.get("shared_data"), f"{where}shared_data"),
                     **_usage(data, where), **_tree(data, where, task_ids), **flags)


def _tree(data: dict, where: str, task_ids: tuple[str, ...]) -> dict[str, Any]:
    """A reducer tree's dependencies (ids of the same job) and runs, one entry per task."""
    depends, runs = data.get("task_depends", []), data.get("task_runs", [])
    for name, rows in (("task_depends", depends), ("task_runs", runs)):
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows) or (
                rows and len(rows) != len(task_ids)):
            raise _Bad(f"{where}{name}", "must be a list of lists, one per task id")
    known = set(task_ids)
    for number, row in enumerate(depends):
        for task_id in row:
            if _batch_id(task_id, f"{where}task_depends[{number}]") not in known:
                raise _Bad(f"{where}task_depends[{number}]", f"{task_id!r} is not a task of the job")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for row in runs for n in row):
        raise _Bad(f"{where}task_runs", "must hold run indices")
    return {"task_depends": tuple(tuple(row) for row in depends),
            "task_runs": tuple(tuple(row) for row in runs)}


def _setup(data: Any, where: str) -> RunSetup | None:
    """Threads and histories its runs were told (shown and used for the merge's --histories)."""
    if data is None:
        return None
    where = f"{where}setup"
    if not isinstance(data, dict):
        raise _Bad(where, "must be an object")
    counts = [data.get("threads"), data.get("histories")]
    if not all(c is None or (isinstance(c, int) and not isinstance(c, bool) and c > 0) for c in counts):
        raise _Bad(where, "threads and histories must be positive whole numbers or null")
    return RunSetup(counts[0], str(data.get("threads_from", ""))[:200], counts[1],
                    str(data.get("histories_from", ""))[:200])


def _key(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f<>a-z-]{1,64}", value):
        raise _Bad(where, "is not a data key")
    return value


def _usage(data: dict, where: str) -> dict[str, Any]:
    """What the job used (only ever shown and estimated from, never acted on)."""
    hours = data.get("node_hours", [0.0, 0.0])
    seconds = data.get("task_seconds", [])
    cost = data.get("cost")
    numbers = lambda values: isinstance(values, list) and all(  # noqa: E731
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values)
    if not numbers(hours) or len(hours) != 2 or not numbers(seconds) or not (
            cost is None or numbers([cost])) or not isinstance(data.get("requeues", 0), int):
        raise _Bad(f"{where}node_hours", "node_hours, cost, task_seconds or requeues are not numbers")
    return {"node_hours": (float(hours[0]), float(hours[1])), "cost": cost,
            "currency": str(data.get("currency", ""))[:3], "task_seconds": tuple(seconds),
            "requeues": data.get("requeues", 0)}


def _claim(data: Any, index: int) -> RunClaim:
    where = f"claims[{index}]."
    return RunClaim(token=_typed(data, "token", str, where), pid=_typed(data, "pid", int, where),
                    host=_typed(data, "host", str, where), script=_typed(data, "script", str, where),
                    started=str(data.get("started", "")))


def _from_json(data: Any) -> Manifest:
    if not isinstance(data, dict):
        raise _Bad("(top level)", "is not a JSON object")
    container = _typed(data, "container", str)
    if not _CONTAINER.match(container):
        raise _Bad("container", f"{container[:80]!r} is not a blob container name")
    jobs = _typed(data, "jobs", list)
    claims = data.get("claims", [])
    if not isinstance(claims, list):
        raise _Bad("claims", "must be a list")
    deleted = data.get("container_deleted", False)
    if not isinstance(deleted, bool):
        raise _Bad("container_deleted", "must be true or false")
    return Manifest(sim_id=_typed(data, "sim_id", str), backend=_typed(data, "backend", str),
                    container=container, simconfig=_typed(data, "simconfig", str),
                    created=str(data.get("created", "")), uploaded=_strings(data, "uploaded"),
                    jobs=tuple(_job(j, i) for i, j in enumerate(jobs)),
                    downloads=_strings(data, "downloads"), container_deleted=deleted,
                    events=_strings(data, "events"),
                    claims=tuple(_claim(c, i) for i, c in enumerate(claims)))


def _refuse(path: Path, what: str) -> ToolError:
    return ToolError(f"{path}: {what}: this is not a campaign manifest this tool wrote; move it "
                     "aside (the jobs and pools it named must then be checked by hand)",
                     exit_code=2)


def load(path: Path) -> Manifest | None:
    """The manifest at `path`, checked field by field; None when there is none."""
    try:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise _refuse(path, "is not a regular file")
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refuse(path, f"cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    if len(raw) > MAX_BYTES:
        raise _refuse(path, f"is larger than {MAX_BYTES // 2**20} MB")
    try:
        return _from_json(json.loads(raw.decode("utf-8")))
    except UnicodeDecodeError:
        raise _refuse(path, "is not UTF-8 text") from None
    except RecursionError:
        raise _refuse(path, "is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _refuse(path, f"is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError:  # e.g. an integer of thousands of digits
        raise _refuse(path, "holds a number too long to be one") from None
    except _Bad as bad:
        raise _refuse(path, str(bad)) from None


def check_belongs(manifest: Manifest, path: Path, sim_id: str, backend: str,
                  elsewhere: str = "") -> None:
    """A manifest of another campaign or backend is never acted on. `elsewhere`: the way to
    start the campaign afresh on `backend` instead (said after the way to work on it)."""
    if manifest.sim_id != sim_id:
        raise ToolError(f"{path}: sim_id is {manifest.sim_id[:60]!r}, not this campaign's "
                        f"{sim_id!r}: move it aside, or use the simconfig it belongs to", exit_code=2)
    if manifest.container != sim_id.lower():
        raise ToolError(f"{path}: container is {manifest.container!r}, not {sim_id.lower()!r} "
                        "(the container is always the SIM_ID in lower case): move it aside",
                        exit_code=2)
    if manifest.backend != backend:
        raise ToolError(f"{path}: the campaign ran on the {manifest.backend!r} backend, not "
                        f"{backend}: to work on it there, pass --backend {manifest.backend}"
                        + (f"; {elsewhere}" if elsewhere else ""), exit_code=2)


# ---------------------------------------------------------------------------- writing, locked


class ManifestFile:
    """The manifest on disk. Every change is applied to what is on disk *now*, under an
    exclusive lock, and written whole (temp file + rename); `manifest` is the latest state."""

    def __init__(self, path: Path, manifest: Manifest,
                 say: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.say = say  # told when the lock must be waited for

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with held(self.lock_path, self.path, self.say):
            yield

    @classmethod
    def open(cls, path: Path, fresh: Manifest,
             say: Callable[[str], None] | None = None) -> "ManifestFile":
        """The existing manifest of this SIM_ID (a campaign can be extended), or a new one."""
        made = cls(path, fresh, say)
        made._change(lambda current: _continued(current, fresh))
        return made

    def _change(self, change: Callable[[Manifest | None], Manifest]) -> None:
        with self._locked():
            current = load(self.path)
            self.manifest = change(current)
            self._write()

    def _write(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(self.manifest), handle, indent=2)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def refresh(self) -> Manifest:
        with self._locked():
            self.manifest = load(self.path) or self.manifest
        return self.manifest

    def update(self, **changes: Any) -> None:
        self._change(lambda m: replace(m or self.manifest, **changes))

    def note(self, event: str) -> None:
        self._change(lambda m: replace(m or self.manifest,
                                       events=(m or self.manifest).events + (f"{_now()} {event}",)))

    def uploaded(self, blob: str) -> None:
        def add(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            return m if blob in m.uploaded else replace(m, uploaded=m.uploaded + (blob,))
        self._change(add)

    def add_job(self, record: JobRecord) -> None:
        def add(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            return replace(m, jobs=tuple(j for j in m.jobs if j.job_id != record.job_id) + (record,))
        self._change(add)

    def change_job(self, job_id: str, **changes: Any) -> None:
        def change(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            return replace(m, jobs=tuple(replace(j, **changes) if j.job_id == job_id else j
                                         for j in m.jobs))
        self._change(change)

    def downloaded(self, folder: Path) -> None:
        def add(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            return m if str(folder) in m.downloads else replace(m, downloads=m.downloads + (str(folder),))
        self._change(add)

    def claim(self, claim: RunClaim) -> list[RunClaim]:
        """Add this run's claim; returns the other live claims (dead ones are dropped)."""
        others: list[RunClaim] = []

        def add(m: Manifest | None) -> Manifest:
            m = m or self.manifest
            others[:] = [c for c in m.claims if c.token != claim.token and c.alive()]
            return replace(m, claims=tuple(others) + (claim,))
        self._change(add)
        return others

    def release(self, token: str) -> None:
        self._change(lambda m: replace(m or self.manifest, claims=tuple(
            c for c in (m or self.manifest).claims if c.token != token)))


def _continued(current: Manifest | None, fresh: Manifest) -> Manifest:
    if current is None:
        return fresh
    if current.container_deleted:  # a new campaign in a container made anew
        return replace(current, container_deleted=False, uploaded=())
    return current
