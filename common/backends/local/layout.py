"""Where the local backend keeps things on disk, shared by its client and its agent process.

    <root>/storage/<container>/<blob name>          the blob container stand-in
    <root>/pools/<pool>/pool.json                     the pool's spec
    <root>/pools/<pool>/agent.lock, agent.pid, agent.log
    <root>/pools/<pool>/jobs/<job>/job.json           the job's spec (container, task ids)
    <root>/pools/<pool>/jobs/<job>/queue/<n>.json     task ids handed to the agent, in order
    <root>/pools/<pool>/jobs/<job>/DELETE             asks the agent to stop the job's tasks
    <root>/pools/<pool>/jobs/<job>/counts.json        task counts, kept by the agent
    <root>/pools/<pool>/jobs/<job>/tasks/<task>/      task.json, state.json, stdout.txt,
                                                      stderr.txt and wd/ (its working dir)

A task that depends on others (a job with "task_dependencies") waits, state.json absent,
until they have all succeeded; when one failed its state.json says "active" with
"blocked_by": it never runs, as on Batch.

Every JSON file is written whole (temp file + rename), so a reader never sees half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common.model import InputFile, OutputFile, TaskSpec

ACTIVE, RUNNING, COMPLETED = "active", "running", "completed"
SUCCEEDED, FAILED = "succeeded", "failed"
# counts.json: tasks the agent knows of, by state (a task it has not seen yet is active).
COUNT_KEYS = ("known", ACTIVE, RUNNING, SUCCEEDED, FAILED)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def bucket(state: dict[str, Any] | None) -> str:
    """Which count a task's state.json puts it in."""
    if not state:
        return ACTIVE
    if state.get("state") == COMPLETED:
        return SUCCEEDED if state.get("result") == "success" else FAILED
    return RUNNING if state.get("state") == RUNNING else ACTIVE


def write_counts(job: Path, counts: dict[str, int]) -> None:
    """Like write_json, but never creates the job folder again once it has been deleted."""
    try:
        fd, tmp = tempfile.mkstemp(dir=job, prefix=".tmp-", suffix=".json")
    except FileNotFoundError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(counts, handle)
    try:
        os.replace(tmp, job / "counts.json")
    except FileNotFoundError:
        pass


def storage_dir(root: Path, container: str) -> Path:
    return root / "storage" / container


def pool_dir(root: Path, pool_id: str) -> Path:
    return root / "pools" / pool_id


def job_dir(pool: Path, job_id: str) -> Path:
    return pool / "jobs" / job_id


def task_dir(job: Path, task_id: str) -> Path:
    return job / "tasks" / task_id


def task_to_json(task: TaskSpec) -> dict[str, Any]:
    return asdict(task)


def task_from_json(data: dict[str, Any]) -> TaskSpec:
    return TaskSpec(
        task_id=data["task_id"],
        index=data["index"],
        command=data["command"],
        inputs=tuple(InputFile(**i) for i in data["inputs"]),
        outputs=tuple(OutputFile(**o) for o in data["outputs"]),
        environment=tuple((k, v) for k, v in data["environment"]),
        seed=data.get("seed"),
        max_retries=data.get("max_retries", 0),
        reads_shared_data=data.get("reads_shared_data", False),
        depends_on=tuple(data.get("depends_on", ())),
        depends_on_ranges=tuple((a, b) for a, b in data.get("depends_on_ranges", ())),
    )
