"""A manifest read from disk is read, not obeyed: every field is checked (ids by Batch's
rules, the container by the storage service's, SIM_ID and backend against the
configuration) and anything else is refused with exit 2, naming the field."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from common.errors import ToolError
from common.manifest.model import (MAX_TASK_INDEX, JobRecord, Manifest, RunClaim)
from common.model import JobKind, RunSetup

MAX_BYTES = 16 * 1024 * 1024  # a manifest is a few KB; anything this big is not one
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")


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


