"""The environment a local task starts with: what Azure Batch sets on a node (its ids and
folders), the task's own variables, and the mark by which its agent's reaper finds every
process it starts."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from common.backends.local.reaper import MARK_VARIABLE
from common.model import TaskSpec


def task_environment(pool_id: str, job: Path, tdir: Path, task: TaskSpec, node_id: str,
                     mark: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "AZ_BATCH_POOL_ID": pool_id,
        "AZ_BATCH_JOB_ID": job.name,
        "AZ_BATCH_TASK_ID": task.task_id,
        "AZ_BATCH_NODE_ID": node_id,
        "AZ_BATCH_TASK_DIR": str(tdir),
        "AZ_BATCH_TASK_WORKING_DIR": str(tdir / "wd"),
        "AZ_BATCH_JOB_PREP_DIR": str(job / "prep"),
        "AZ_BATCH_JOB_PREP_WORKING_DIR": str(job / "prep" / "wd"),
    })
    env.update(dict(task.environment))
    env[MARK_VARIABLE] = mark  # inherited by all it starts: see reaper.py
    # Tasks call `python3`: make it the interpreter (and venv) the tool itself runs in.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    return env
