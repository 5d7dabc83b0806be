"""Picking a campaign up again from its manifest: --attach, --cleanup, --status.

The manifest is read, not obeyed (common/manifest.py checks every field); what it names is
asked of the service before anything is done with it.
"""
from __future__ import annotations

from dataclasses import replace

from common import campaign as cp
from common.merge_tree import PARTIALS_PREFIX, blocked
from common.errors import EXIT_FAILED, EXIT_OK, ToolError
from common.manifest import JobRecord, Manifest
from common.model import JobKind, JobSpec, Script
from common.ui import counts_text
from common.workflow.compute import LOG_NAMES, wait
from common.workflow.context import Context, Outcome, Run, command
from common.workflow.ending import cleanup_questions, finish
from common.workflow.records import claimed, existing
from common.workflow.reducer import finish_reduction, wait_for
from common.workflow.safety import costly, guarded
from common.workflow.tree import depends_of, is_tree


def attach(ctx: Context, kind: JobKind) -> Outcome:
    """Wait for a campaign started earlier (no new pool, job or tasks), then the questions."""
    record = existing(ctx)
    job = record.manifest.latest(kind)
    if job is None or job.job_deleted:
        raise ToolError(f"campaign {ctx.settings.sim.sim_id} has no {kind} job to attach to "
                        f"(manifest {record.path})")
    state = ctx.backend.job_state(job.job_id)
    if state is None:
        raise ToolError(f"job {job.job_id} no longer exists on the {ctx.backend.name} backend; "
                        "run --cleanup to settle the rest")
    ctx.ui.step(f"Attaching to job {job.job_id} ({len(job.task_ids)} task(s))")
    run = Run(ctx, ctx.backend.blob_store(record.manifest.container), record, kind)
    adaptive = kind is JobKind.WORKERS and ctx.settings.sim.goals.adaptive
    removed: set[str] = set()  # a reducer tree's tasks a failure blocked: removed unrun
    if kind is JobKind.WORKERS:
        spec = cp.worker_job(ctx.settings, ctx.ids, indices=job.task_indices, job_id=job.job_id)
        _add_what_the_job_lacks(ctx, replace(spec, seal=not adaptive), state)
    else:
        removed = _removed_reducer_tasks(ctx, job)
    if adaptive:  # pick the waves up where they were
        from common.workflow.metering import start_metering
        from common.workflow.runner import run_adaptive_job
        with claimed(ctx, record, "attach"):
            return run_adaptive_job(run, replace(spec, seal=False), start_metering(ctx),
                                    started=True)
    with claimed(ctx, record, "attach"):
        if kind is JobKind.REDUCER:
            counts, steering = guarded(run, {job.job_id}, lambda: wait_for(run, job, removed))
            return finish_reduction(run, job, counts, steering)
        counts = guarded(run, {job.job_id},
                         lambda: wait(ctx, job.job_id, len(job.task_ids), job.pool_id))
        return finish(run, job, counts)


def _removed_reducer_tasks(ctx: Context, job: JobRecord) -> set[str]:
    """The reducer's tasks the job lacks because a failure blocked them (a tree's, removed
    unrun); any other one missing means the reducer was stopped while submitting."""
    lacking = set(job.task_ids) - set(ctx.backend.task_ids(job.job_id))
    if lacking and is_tree(job):
        failed = {f.task_id for f in ctx.backend.task_failures(job.job_id)}
        removed = lacking & blocked(depends_of(job), failed)
        lacking -= removed
    else:
        removed = set()
    if lacking:
        # Its tasks are built from the runs found at the time: not to be guessed again here.
        what = ("its task (the reducer was stopped while submitting it)" if len(job.task_ids) == 1
                else f"{len(lacking)} of its tasks (the reducer was stopped while submitting them)")
        raise ToolError(f"job {job.job_id} lacks {what}: remove the job with "
                        f"`{command(ctx, Script.REDUCER, '--cleanup')}`, then run the reducer again")
    return removed


def _add_what_the_job_lacks(ctx: Context, spec: JobSpec, state: str) -> None:
    """Tasks the manifest records but the job does not have: the runner was stopped after
    recording them and before (or while) adding them — it records first, so that no task
    ever runs unrecorded. Without them the wait would never end; they are added with the
    ids and seeds recorded. A fixed campaign's active job is then told to end with its
    last task: the stopped runner may not have got that far, and an auto pool would bill
    until someone deleted it."""
    present = set(ctx.backend.task_ids(spec.job_id))
    missing = tuple(task for task in spec.tasks if task.task_id not in present)
    if missing:
        ctx.ui.info(f"{len(missing)} task(s) recorded but not in job {spec.job_id} (the runner "
                    f"was stopped while adding them): adding them now")
        ctx.backend.add_tasks(replace(spec, tasks=missing))
    if spec.seal and state == "active":
        ctx.backend.seal_job(spec.job_id)


def cleanup(ctx: Context, kind: JobKind) -> Outcome:
    """Only the cleanup questions, for a campaign of any age, from its manifest."""
    record = existing(ctx)
    for job in costly(record, kind):  # what is already gone needs no question
        if ctx.backend.job_state(job.job_id) is None:
            gone = job.auto_pool or not job.pool_id or not ctx.backend.pool_exists(job.pool_id)
            record.change_job(job.job_id, job_deleted=True, pool_deleted=gone or job.pool_deleted)
    run = Run(ctx, ctx.backend.blob_store(record.manifest.container), record, kind)
    store = run.store
    with claimed(ctx, record, "cleanup"):
        ending = cleanup_questions(run, None)
    left = costly(record, kind)
    lines = [f"Cleanup of {ctx.settings.sim.sim_id} ({kind}): "
             + ("nothing left that bills." if not left else
                "still exist: " + ", ".join(j.job_id for j in left) + ".")]
    if ending.downloaded_to:
        lines.append(f"  downloaded to: {ending.downloaded_to}")
    lines.append(f"  container {store.container}: "
                 + ("deleted" if ending.container_deleted or not store.exists() else "kept"))
    return Outcome(EXIT_OK if ending.download_ok else EXIT_FAILED, tuple(lines))


def status(ctx: Context) -> Outcome:
    """The campaign's task counts and what still exists, from the manifest; changes nothing."""
    record = existing(ctx)
    manifest = record.manifest
    lines = [f"Campaign {manifest.sim_id} ({manifest.backend} backend), started {manifest.created}",
             f"  manifest: {record.path}"]
    lines += [_job_line(ctx, job) for job in manifest.jobs]
    lines.append(_container_line(ctx, manifest))
    lines += [f"  downloaded to: {folder}" for folder in manifest.downloads]
    return Outcome(EXIT_OK, tuple(lines))


def _usage(job: JobRecord) -> str:
    if not any(job.node_hours) and job.cost is None:
        return ""
    dedicated, spot = job.node_hours
    cost = f", {job.cost:.2f} {job.currency}" if job.cost is not None else ""
    return f"; used {dedicated + spot:.2f} node-hours ({dedicated:.2f} dedicated, {spot:.2f} Spot){cost}"


def _job_line(ctx: Context, job: JobRecord) -> str:
    return _job_state_line(ctx, job) + _usage(job)


def _job_state_line(ctx: Context, job: JobRecord) -> str:
    state = ctx.backend.job_state(job.job_id)
    pool = job.pool_id or "(auto pool)"
    pool_state = ("deleted with the job" if job.auto_pool and state is None else
                  "exists" if job.pool_id and ctx.backend.pool_exists(job.pool_id) else "gone")
    if state is None:
        gone = "deleted by this tool" if job.job_deleted else "gone"
        failed = f", {len(job.failed_indices)} task(s) had failed" if job.failed_indices else ""
        return f"  {job.kind} job {job.job_id}: {gone}{failed}; pool {pool}: {pool_state}"
    counts = counts_text(ctx.backend.task_counts(job.job_id))
    return f"  {job.kind} job {job.job_id}: {state} ({counts}); pool {pool}: {pool_state}"


def _container_line(ctx: Context, manifest: Manifest) -> str:
    """What the container holds, counted as a user thinks of it: results per run folder,
    the tasks' logs apart, the merged result apart."""
    store = ctx.backend.blob_store(manifest.container)
    if not store.exists():
        return f"  container {manifest.container}: gone"
    runs: set[str] = set()
    outputs = logs = merged = partial = 0
    for blob in store.list_blobs(cp.OUTPUT_PREFIX):
        if blob.name.startswith(cp.RESULTS_PREFIX):
            merged += 1
            continue
        if blob.name.startswith(PARTIALS_PREFIX):
            partial += 1
            continue
        head, _, rest = blob.name[len(cp.OUTPUT_PREFIX):].partition("/")
        runs.add(head)
        if rest in LOG_NAMES:
            logs += 1
        else:
            outputs += 1
    return (f"  container {manifest.container}: {outputs} output file(s) in {len(runs)} run "
            f"folder(s) (and {logs} log file(s)), {merged} merged result file(s)"
            + (f", {partial} file(s) of a reducer tree's partial merges" if partial else ""))
