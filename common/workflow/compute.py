"""Jobs on the compute service: start one, wait for every task, say what went wrong.

Waiting trusts nothing that cannot be checked: Batch's task counts "may not always be up to
date", so counts that do not account for every submitted task never end the wait; a pool
whose nodes cannot run tasks, or whose job preparation failed everywhere, ends it at once
in the service's words. Failure reports read the tasks' stderr from storage, which outlives
the nodes (an auto pool's nodes are gone when its job ends).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from common import campaign as cp
from common.backends.base import BlobStore
from common.errors import ToolError
from common.manifest import JobRecord
from common.model import JobKind, JobSpec, PoolHealth, PoolSpec, TaskCounts, TaskFailure
from common.output_patterns import pattern_regex
from common.ui import counts_text, runs_text
from common.workflow.context import Context, Run, billing_mode
from common.workflow.metering import BudgetReached, Metering
from common.workflow.tree import log_blob, runs_held

STDERR_TAIL_LINES = 10
LOG_NAMES = ("stdout.txt", "stderr.txt")


def start_job(run: Run, pool: PoolSpec, job: JobSpec,
              task_runs: tuple[tuple[int, ...], ...] = ()) -> None:
    """Create (or reuse) the pool, submit the job; the manifest knows each before it exists
    (a reducer tree's dependencies, and the runs each of its tasks stands for, too)."""
    ctx, record = run.ctx, run.record
    entry = JobRecord(job_id=job.job_id, kind=run.kind, pool_id=None if job.auto_pool else pool.pool_id,
                      task_ids=tuple(t.task_id for t in job.tasks),
                      task_indices=tuple(t.index for t in job.tasks), auto_pool=bool(job.auto_pool),
                      setup=job.setup, shared_data=job.shared_data.key if job.shared_data else None,
                      task_depends=tuple(t.depends_on for t in job.tasks)
                      if job.task_dependencies else (), task_runs=task_runs)
    record.add_job(entry)
    if job.auto_pool is None:
        ctx.step("pool", f"Preparing pool {pool.pool_id}")
        ctx.backend.prepare_pool(pool, ctx.ui.info)
    ctx.step("submit", f"Submitting job {job.job_id} with {len(job.tasks)} task(s)")
    ctx.ui.info(billing_mode(ctx, job))
    pool_id = ctx.backend.submit_job(replace(job, owner=ctx.run_token), ctx.ui.info)
    record.change_job(job.job_id, pool_id=pool_id)


class Steering(Protocol):
    """What else a wait does each poll: an adaptive campaign folds finished runs and adds
    tasks (common/workflow/adaptive.py)."""

    def after_poll(self, counts: TaskCounts) -> int:
        """Act on the counts; return how many tasks the job has now."""

    def text(self) -> str:
        """A few words for the progress line."""


def wait(ctx: Context, job_id: str, total: int, pool_id: str | None = None,
         metering: Metering | None = None, steering: Steering | None = None) -> TaskCounts | None:
    """Until every task submitted has completed, or the timeout (None); the budget, when
    there is one, ends it at once (BudgetReached)."""
    minutes = ctx.settings.sim.timeout_minutes
    ctx.step("wait", f"Waiting for {total} task(s) (timeout {minutes:g} min; Ctrl-C to stop waiting)")
    deadline = ctx.clock() + minutes * 60
    next_check, said = ctx.clock(), set()  # a first look at the nodes at once, then now and then
    preempted = ""
    with ctx.ui.task_progress(total, "tasks") as update:
        while True:
            counts = current_counts(ctx, job_id, total, said)
            if steering is not None:
                total = steering.after_poll(counts)
            notes = [steering.text() if steering else "", metering.short() if metering else "",
                     preempted]
            update(counts, " · ".join(n for n in notes if n), total)
            if counts.completed >= total:
                return counts
            if ctx.clock() >= next_check:
                health = check_progress(ctx, job_id, pool_id, counts, said)
                preempted = health.preempted_text() if health is not None else ""
                if metering is not None:
                    metering.sample(health)
                next_check = ctx.clock() + ctx.backend.health_seconds
            if metering is not None and metering.over_budget():
                raise BudgetReached(f"MAX_COST {metering.budget_text()} reached: {metering.line()}")
            if ctx.clock() >= deadline:
                ctx.ui.error(f"timed out after {minutes:g} minutes: {counts_text(counts)}")
                return None
            ctx.sleep(ctx.poll_seconds)


def current_counts(ctx: Context, job_id: str, total: int, said: set[str]) -> TaskCounts:
    """The service's counts, or — when they leave tasks out — an exact count of the tasks."""
    counts = ctx.backend.task_counts(job_id)
    if counts.completed < total and not counts.active and not counts.running:
        counts = ctx.backend.task_counts(job_id, exact=True)
    if counts_text(counts) not in said:
        said.add(counts_text(counts))
        ctx.ui.debug(f"task states: {counts_text(counts)}")
    return counts


def check_progress(ctx: Context, job_id: str, pool_id: str | None, counts: TaskCounts,
                   said: set[str]) -> PoolHealth | None:
    """Stop waiting at once when no node can run the tasks that wait; say, once, what is
    wrong with some nodes while the others carry on. Returns the pool's health."""
    health = ctx.backend.pool_health(pool_id) if pool_id else None
    problems = []
    if health is not None:
        problems += [f"pool {pool_id}: {e}" for e in health.resize_errors]
        if health.broken:
            problems.append(f"pool {pool_id}: {health.broken} node(s) cannot run tasks ({health.text()})")
        if health.dead and counts.active:
            extra = f"; {'; '.join(health.resize_errors)}" if health.resize_errors else ""
            raise ToolError(f"pool {pool_id}: no node can run the {counts.active} waiting "
                            f"task(s) ({health.text()}{extra})")
        if health.preempted and f"preempted {health.preempted}" not in said:
            said.add(f"preempted {health.preempted}")  # said again only when the number changes
            ctx.ui.info(f"pool {pool_id}: {health.preempted_text()}; their tasks are requeued "
                        "and run when nodes are back (the timeout and MAX_COST still apply)")
    preparations = ctx.backend.preparation_failures(job_id) if counts.active and not counts.running else []
    words = [f"{f.task_id}: {failure_text(f)}" + (f" | {f.stderr_tail[-1]}" if f.stderr_tail else "")
             for f in preparations]
    if preparations and (health is None or len(preparations) >= health.usable):
        raise ToolError(f"the job preparation task failed, so no task can start: {words[0]}",
                        *words[1:3])
    for problem in problems + words:
        if problem not in said:
            ctx.ui.warn(f"{problem} — the campaign goes on with the other nodes")
            said.add(problem)
    return health


def failure_text(failure: TaskFailure) -> str:
    code = "no exit code" if failure.exit_code is None else f"exit code {failure.exit_code}"
    info = f" [{failure.failure_code}: {failure.failure_message}]" if failure.failure_code else ""
    return code + info


def report_failures(run: Run, job: JobRecord, counts: TaskCounts) -> list[TaskFailure]:
    """Each failed task with the end of its stderr, read from the output blobs."""
    if not counts.failed:
        return []
    ctx, store = run.ctx, run.store
    failures = ctx.backend.task_failures(job.job_id)
    index_of = dict(zip(job.task_ids, job.task_indices))
    ctx.ui.error(f"{len(failures)} of {len(job.task_ids)} task(s) failed:")
    for failure in failures:
        held = runs_held(job, failure.task_id)
        ctx.ui.info(f"{failure.task_id}: {failure_text(failure)}"
                    + (f" — it merged {len(held)} run(s): {runs_text(held)}" if held else ""))
        tail = failure.stderr_tail or tuple(stderr_tail(store, job, index_of.get(failure.task_id),
                                                        failure.task_id))
        for line in tail:
            ctx.ui.info(f"    | {line}")
    return failures


def stderr_tail(store: BlobStore, job: JobRecord, index: int | None, task_id: str = "") -> list[str]:
    if job.kind is JobKind.REDUCER:
        blob = log_blob(job, task_id, "stderr.txt")
    elif index is None:
        return []
    else:
        blob = f"{cp.run_prefix(index)}stderr.txt"
    return store.read_tail(blob).splitlines()[-STDERR_TAIL_LINES:]


# ---------------------------------------------------------------------------- outputs


def missing_outputs(store: BlobStore, job: JobRecord, patterns: tuple[str, ...],
                    failed: set[int]) -> dict[int, list[str]]:
    """For each task that succeeded, the output patterns that matched no file: a task that
    exits 0 but whose pattern is misspelt ("Dose.cvs") produced nothing to merge."""
    found: dict[int, list[str]] = {}
    names: dict[int, list[str]] = {}
    for blob in store.list_blobs(cp.OUTPUT_PREFIX):
        head, _, rest = blob.name[len(cp.OUTPUT_PREFIX):].partition("/")
        if head.startswith("run") and head[3:].isdigit() and rest and rest not in LOG_NAMES:
            names.setdefault(int(head[3:]), []).append(rest)
    regexes = [(p, pattern_regex(p)) for p in patterns]
    for index in sorted(set(job.task_indices) - failed):
        lacking = [p for p, regex in regexes if not any(regex.match(n) for n in names.get(index, []))]
        if lacking:
            found[index] = lacking
    return found


def report_missing_outputs(ctx: Context, missing: dict[int, list[str]]) -> None:
    if not missing:
        return
    ctx.ui.error(f"{len(missing)} task(s) succeeded but wrote no file for an output pattern:")
    for index, patterns in sorted(missing.items())[:20]:
        shown = ", ".join(repr(p) for p in patterns)
        ctx.ui.info(f"task-{index}: nothing matched {shown} (kept: {cp.run_prefix(index)}"
                    "stdout.txt, stderr.txt) — check OUTPUT_FILE_PATTERNS in the simconfig")
