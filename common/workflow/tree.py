"""The reducer's tree of tasks while it runs and after: blocked tasks, partial merges.

Batch never starts a task whose dependency failed, and never ends it either: it stays
active, so the job — and its auto pool — would wait for ever (until its wall-clock limit).
So once a task of the tree has failed, the tasks that depend on it (directly or through
others) are removed from the job before they can run (they never could), the wait ends
when every task that can still run has completed, and the job ends by itself.

Partial merges (nodes_output/partials/) are intermediate: stale ones of an earlier
reduction are removed before a new tree starts (the new tree would read them otherwise),
and this tree's are removed once the final result is verified to stand for all of them —
never before, and never when the tree failed (their logs say why).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from common import campaign as cp
from common import merge_tree as mt
from common.manifest import JobRecord
from common.model import TaskCounts
from common.ui import counts_text
from common.workflow.context import Run

RECORD_BYTES = 1 << 20  # a merge record is a few hundred bytes


def is_tree(job: JobRecord) -> bool:
    return bool(job.task_depends)


def depends_of(job: JobRecord) -> dict[str, tuple[str, ...]]:
    return dict(zip(job.task_ids, job.task_depends))


@dataclass
class TreeSteering:
    """What the wait does each poll for a tree: remove what a failure blocks."""

    run: Run
    job: JobRecord
    removed: set[str] = field(default_factory=set)  # blocked, removed from the job unrun
    failed: set[str] = field(default_factory=set)
    _failures_seen: int = 0

    def after_poll(self, counts: TaskCounts) -> int:
        if counts.failed > self._failures_seen:
            self._failures_seen = counts.failed
            backend = self.run.ctx.backend
            self.failed = {f.task_id for f in backend.task_failures(self.job.job_id)}
            self._remove(mt.blocked(depends_of(self.job), self.failed) - self.removed)
        return len(self.job.task_ids) - len(self.removed)

    def _remove(self, blocked: set[str]) -> None:
        if not blocked:
            return
        backend = self.run.ctx.backend
        waiting = set(backend.active_task_ids(self.job.job_id)) & blocked  # never started
        if waiting:
            backend.delete_tasks(self.job.job_id, sorted(waiting))
            self.removed |= waiting
            self.run.record.note(f"removed {len(waiting)} reducer task(s) blocked by the "
                                 f"failure of {', '.join(sorted(self.failed))}")

    def text(self) -> str:
        return f"{len(self.removed)} blocked by a failure" if self.removed else ""

    def lines(self) -> tuple[str, ...]:
        if not self.removed:
            return ()
        return (f"  blocked by the failed task(s) {', '.join(sorted(self.failed))}: "
                f"{len(self.removed)} task(s) never ran and were removed from the job so it "
                f"ends ({', '.join(sorted(self.removed)[:6])}"
                f"{', ...' if len(self.removed) > 6 else ''})",)


def runs_held(job: JobRecord, task_id: str) -> tuple[int, ...]:
    """The runs a task of a tree stands for (empty for any other task)."""
    if not job.task_runs or task_id not in job.task_ids:
        return ()
    return job.task_runs[job.task_ids.index(task_id)]


def log_blob(job: JobRecord, task_id: str, name: str) -> str:
    """Where a reducer task's stdout.txt or stderr.txt is kept."""
    if not is_tree(job) or task_id == mt.ROOT_TASK_ID:
        return f"{cp.RESULTS_PREFIX}reducer_{name}"
    return mt.output_of(task_id) + name


# ---------------------------------------------------------------------------- partial merges


def remove_stale_partials(run: Run) -> None:
    """Partial merges of an earlier reduction: a new tree writes file by file into the same
    folders, so a file the new one does not write would be merged as if it were new."""
    store = run.store
    stale = [b.name for b in store.list_blobs(mt.PARTIALS_PREFIX)] if store.exists() else []
    if stale:
        store.delete_blobs(stale)
        run.record.note(f"removed {len(stale)} partial merge file(s) of an earlier reduction")
        run.ctx.ui.info(f"removed {len(stale)} file(s) of an earlier reduction's partial merges "
                        f"({mt.PARTIALS_PREFIX}; they are made again from the runs)")


def _records(run: Run, prefix: str) -> dict[str, int]:
    """The runs each merge record under `prefix` names, by its path below the prefix."""
    found = {}
    for blob in run.store.list_blobs(prefix):
        relative = blob.name[len(prefix):]
        if not relative.endswith(mt.RECORD_SUFFIX) or PurePosixPath(relative).parts[0] == mt.SUMMARY_DIR:
            continue
        try:
            found[relative] = int(json.loads(run.store.read_tail(blob.name, RECORD_BYTES))["runs"])
        except (ValueError, KeyError, TypeError):
            found[relative] = -1  # unreadable: the result cannot be verified from it
    return found


def result_problems(run: Run, job: JobRecord) -> list[str]:
    """Why the result in results/ does not (yet) replace the partial merges the final task
    merged: each of their records must have its counterpart there, standing for their runs."""
    final = job.task_ids.index(mt.ROOT_TASK_ID)
    expected: dict[str, int] = {}
    for child in job.task_depends[final]:
        for relative, runs in _records(run, mt.output_of(child)).items():
            expected[relative] = expected.get(relative, 0) + runs
    merged = _records(run, cp.RESULTS_PREFIX)
    return [f"{name}: the result stands for {merged.get(name, 0)} run(s), its inputs for {runs}"
            for name, runs in sorted(expected.items()) if merged.get(name) != runs]


def settle(run: Run, job: JobRecord, counts: TaskCounts | None,
           steering: TreeSteering | None) -> tuple[str, ...]:
    """After the wait: what the summary says of the tree; its partial merges removed once
    the result is verified to replace them."""
    lines = steering.lines() if steering else ()
    if counts is None or counts.failed or counts.succeeded < len(job.task_ids):
        partials = run.store.list_blobs(mt.PARTIALS_PREFIX)
        if partials:
            lines += (f"  partial merges kept in {mt.PARTIALS_PREFIX} ({len(partials)} file(s), "
                      "with each task's stdout.txt and stderr.txt); the next reducer run "
                      "removes them",)
        return lines
    problems = result_problems(run, job)
    if problems:
        run.ctx.ui.warn(f"the merged result does not match its inputs, so the partial merges "
                        f"stay in {mt.PARTIALS_PREFIX}: {problems[0]}")
        return lines
    partials = [b.name for b in run.store.list_blobs(mt.PARTIALS_PREFIX)]
    run.store.delete_blobs(partials)
    run.record.note(f"removed {len(partials)} partial merge file(s): the result replaces them")
    return lines + (f"  tree: {len(job.task_ids)} tasks ({counts_text(counts)}); its "
                    f"{len(partials)} partial merge file(s) were removed from storage once the "
                    "result was verified to stand for all their runs",)
