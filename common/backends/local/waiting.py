"""Task dependencies on the local agent: which waiting tasks may run, and which never will.

As Batch schedules them: a task runs once every task it depends on has succeeded; one that
failed blocks it for good (it stays active, never runs). A dependency is named by id, or by
an inclusive range of integer ids — which selects the job's tasks whose ids are integers in
it, leading zeros ignored ("4", "04" and "004" are all task 4, and the first of them to
complete decides). A named id the job does not have (yet) is waited for. Ids are compared
without regard to case, as Batch's are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from common.model import TaskSpec

READY, WAIT, BLOCKED = "ready", "wait", "blocked"


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    end_time: float


def _integer(task_id: str) -> int | None:
    text = task_id[1:] if task_id[:1] == "-" else task_id
    return int(task_id) if text.isdigit() and text.isascii() else None


def verdict(task: TaskSpec, job_tasks: Iterable[str], outcomes: dict[str, Outcome]
            ) -> tuple[str, tuple[str, ...]]:
    """READY, WAIT, or BLOCKED with the failed tasks that block it (ids lower-cased)."""
    failed: list[str] = []
    waiting = False
    for task_id in (t.lower() for t in task.depends_on):
        found = outcomes.get(task_id)
        if found is None:
            waiting = True
        elif not found.succeeded:
            failed.append(task_id)
    if task.depends_on_ranges:
        by_number: dict[int, list[str]] = {}
        for task_id in job_tasks:
            number = _integer(task_id)
            if number is not None and any(a <= number <= b for a, b in task.depends_on_ranges):
                by_number.setdefault(number, []).append(task_id.lower())
        for ids in by_number.values():
            done = sorted((outcomes[i].end_time, i) for i in ids if i in outcomes)
            if not done:
                waiting = True
            elif not outcomes[done[0][1]].succeeded:
                failed.append(done[0][1])
    if failed:
        return BLOCKED, tuple(sorted(set(failed)))
    return (WAIT if waiting else READY), ()


@dataclass
class Waiting:
    """The tasks of each job that wait for others, and how the job's tasks ended."""

    tasks: dict[Path, dict[str, TaskSpec]] = field(default_factory=dict)
    outcomes: dict[Path, dict[str, Outcome]] = field(default_factory=dict)
    blocked: dict[Path, set[str]] = field(default_factory=dict)
    changed: bool = False  # something ended or was added since the last release()

    def add(self, job: Path, task: TaskSpec) -> None:
        self.tasks.setdefault(job, {})[task.task_id] = task
        self.changed = True

    def ended(self, job: Path, task_id: str, succeeded: bool, end_time: float) -> None:
        self.outcomes.setdefault(job, {})[task_id.lower()] = Outcome(succeeded, end_time)
        self.changed = True

    def release(self, job_tasks: dict[Path, list[str]]
                ) -> tuple[list[tuple[Path, str]], list[tuple[Path, str, tuple[str, ...]]]]:
        """The tasks that may run now (they leave the waiting list), and those newly
        blocked, each with what blocks it (they stay, counted active, until removed)."""
        ready, blocked = [], []
        self.changed = False
        for job, waiting in self.tasks.items():
            outcomes = self.outcomes.get(job, {})
            stuck = self.blocked.setdefault(job, set())
            for task_id, task in list(waiting.items()):
                if task_id in stuck:
                    continue
                state, why = verdict(task, job_tasks.get(job, ()), outcomes)
                if state == READY:
                    del waiting[task_id]
                    ready.append((job, task_id))
                elif state == BLOCKED:
                    stuck.add(task_id)
                    blocked.append((job, task_id, why))
        return ready, blocked

    def cancel(self, job: Path, task_ids: Iterable[str]) -> list[str]:
        """Tasks removed from the job while they waited: they leave the list; which did."""
        waiting = self.tasks.get(job, {})
        gone = [t for t in task_ids if t in waiting]
        for task_id in gone:
            del waiting[task_id]
            self.blocked.get(job, set()).discard(task_id)
        return gone

    def jobs(self) -> list[Path]:
        return [job for job, waiting in self.tasks.items() if waiting]
