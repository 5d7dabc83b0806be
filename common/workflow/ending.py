"""The end of every script: the cleanup questions, downloads, and the summary.

Data is deleted only when the user says so and every result has a verified local copy (or
the loss is confirmed at a terminal) — and never while a job of the campaign still runs,
since its tasks would then fail to upload (FileUploadContainerNotFound). A question whose
yes would destroy what the next step of the same campaign needs — the runner's container,
which the reducer reads — is not answered by --yes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common import campaign as cp
from common.errors import EXIT_FAILED, EXIT_OK
from common.manifest import JobRecord
from common.model import JobKind, Script, TaskCounts
from common.transfer import download_prefix, unverified_blobs
from common.workflow.compute import (missing_outputs, report_failures,
                                         report_missing_outputs)
from common.workflow.context import Outcome, Run, billing_mode, command
from common.workflow.metering import Metering
from common.workflow.records import active_jobs, reducer_has_run
from common.workflow.safety import costly, guarded, offer_compute_deletion


@dataclass(frozen=True)
class Ending:
    """What the cleanup questions did, for the summary."""

    compute_deleted: bool
    downloaded_to: Path | None
    download_ok: bool
    container_deleted: bool
    container_kept_for_reducer: bool = False


def download(run: Run, prefix: str) -> tuple[Path, bool]:
    ctx, store, record = run.ctx, run.store, run.record
    dest = ctx.settings.sim.local_results_path
    blobs = store.list_blobs(prefix)
    size = sum(b.size for b in blobs)
    ctx.step("download", f"Downloading {len(blobs)} file(s), {size:,} bytes, from {prefix} to {dest}")
    with ctx.ui.transfer_progress(len(blobs), size, "download") as update:
        report = download_prefix(store, prefix, dest, cp.OUTPUT_PREFIX, on_progress=update)
    record.downloaded(dest)
    ctx.ui.info(f"{len(report.downloaded)} downloaded, {len(report.skipped)} already present "
                f"and verified, {len(report.failed)} failed")
    for name, why in report.failed:
        ctx.ui.error(f"{name}: not downloaded: {why}")
    return dest, report.ok


def offer_container_deletion(run: Run, question: str, needed_later: bool = False) -> bool:
    """Delete the container only if asked, nothing of the campaign runs, and every result
    has a verified copy here (or a person at a terminal accepts the loss)."""
    ctx, store, record = run.ctx, run.store, run.record
    if not store.exists():
        return False
    running = active_jobs(ctx, record.manifest)
    if running:
        ctx.ui.info(f"container {store.container} kept: job {running[0].job_id} still runs and "
                    "writes its outputs into it")
        return False
    if not ctx.prompter.confirm(question, False, risky=needed_later):
        return False
    dest = ctx.settings.sim.local_results_path
    missing = unverified_blobs(store, cp.OUTPUT_PREFIX, dest, cp.OUTPUT_PREFIX)
    if missing:
        ctx.ui.warn(f"{len(missing)} result file(s) under {cp.OUTPUT_PREFIX} have no verified "
                    f"copy in {dest} (e.g. {missing[0]})")
        if not ctx.prompter.confirm(f"Delete the container anyway and lose {len(missing)} "
                                    "file(s) for good?", False, risky=True):
            ctx.ui.info("container kept")
            return False
    ctx.before_step("delete-container")
    store.delete_container()
    record.update(container_deleted=True)
    ctx.ui.info(f"deleted container {store.container}")
    return True


def cleanup_questions(run: Run, only: set[str] | None) -> Ending:
    ctx, store, record, kind = run.ctx, run.store, run.record, run.kind
    reducing = kind is JobKind.REDUCER
    ctx.step("cleanup", "Cleaning up")
    offer_compute_deletion(run, costly(record, kind, only))
    compute_deleted = not costly(record, kind, only)
    if reducing:
        remove_reducer_code(run)
    prefix = cp.RESULTS_PREFIX if reducing else cp.OUTPUT_PREFIX
    dest, ok = None, True
    where = ctx.settings.sim.local_results_path / ("results" if reducing else "")
    what = "the merged result" if reducing else "results"
    if store.exists() and store.list_blobs(prefix) and ctx.prompter.confirm(
            f"Download {what} ({prefix}) to {where}?", True):
        dest, ok = download(run, prefix)
    merged = reducer_has_run(record.manifest)
    if reducing or merged:
        question = (f"Delete storage container {store.container} with all task outputs and "
                    "the merged result?")
    else:
        question = (f"Delete storage container {store.container}? The reducer "
                    "(batch_data_reducer.py) still needs the task outputs in it.")
    needed_later = kind is JobKind.WORKERS and not merged
    deleted = offer_container_deletion(run, question, needed_later=needed_later)
    return Ending(compute_deleted, dest, ok, deleted, needed_later and not deleted)


def remove_reducer_code(run: Run) -> None:
    ctx, store, record = run.ctx, run.store, run.record
    ours = [b for b in record.manifest.uploaded if b == cp.REDUCER_ARCHIVE_BLOB]
    if ours and store.exists():
        store.delete_blobs(ours)
        record.update(uploaded=tuple(b for b in record.manifest.uploaded if b not in ours))
        ctx.ui.info(f"removed the reducer code this tool uploaded ({', '.join(ours)})")


def finish(run: Run, job: JobRecord, counts: TaskCounts | None, show_log=None,
           extra: tuple[str, ...] = (), metering: Metering | None = None, verdict=None) -> Outcome:
    """Report, ask the cleanup questions, sum up. The exit code is 0 only when every task
    submitted succeeded and produced its outputs, and every download was verified — or, in
    an adaptive campaign (`verdict`), when the target was met (failed tasks were replaced)."""
    ctx, store, record = run.ctx, run.store, run.record
    job = record.manifest.job(job.job_id)  # an adaptive campaign added tasks to it
    workers = job.kind is JobKind.WORKERS
    usage = guarded(run, {job.job_id}, lambda: record_usage(run, job, metering))
    failures = guarded(run, {job.job_id}, lambda: report_failures(run, job, counts) if counts else [])
    index_of = dict(zip(job.task_ids, job.task_indices))
    failed = {index_of[f.task_id] for f in failures if f.task_id in index_of}
    missing = {}
    if workers and counts is not None:
        missing = guarded(run, {job.job_id}, lambda: missing_outputs(
            store, job, ctx.settings.sim.output_file_patterns, failed))
        report_missing_outputs(ctx, missing)
    all_succeeded = counts is not None and counts.succeeded >= len(job.task_ids)
    record.change_job(job.job_id, failed_indices=tuple(sorted(failed | set(missing))),
                      succeeded=all_succeeded and not failures and not missing)
    if show_log is not None and counts and not failures:
        show_log()
    ending = guarded(run, {job.job_id}, lambda: cleanup_questions(run, {job.job_id}))
    results = workers or bool(ending.container_deleted or store.list_blobs(cp.RESULTS_PREFIX))
    ok = all_succeeded and not failures and not missing and ending.download_ok and results
    if verdict is not None:
        ok = verdict.met and counts is not None and ending.download_ok
        extra = verdict.lines + extra
    lines = summary(run, job, counts, ending, missing)
    # what the run used and reached, before the command to run next
    cut = len(lines) - 1 if lines and lines[-1].startswith(("Next:", "Rerun")) else len(lines)
    lines = lines[:cut] + usage + extra + lines[cut:]
    return Outcome(EXIT_OK if ok else EXIT_FAILED, lines)


def record_usage(run: Run, job: JobRecord, metering: Metering | None) -> tuple[str, ...]:
    """Node-hours and cost (Azure), task durations (for later estimates) and Spot requeues:
    into the manifest, and lines for the summary."""
    ctx, record = run.ctx, run.record
    stats = ctx.backend.task_stats(job.job_id) if ctx.backend.job_state(job.job_id) else None
    changes: dict = {}
    lines = []
    if stats is not None:
        changes.update(task_seconds=stats.durations, requeues=stats.requeues)
        if stats.requeues:
            lines.append(f"  {stats.requeues} task run(s) requeued after Spot preemptions "
                         "(Batch reruns them by itself; requeues are not retries)")
    if metering is not None:
        hours = metering.hours()
        changes.update(node_hours=(round(hours.dedicated, 6), round(hours.spot, 6)),
                       cost=metering.meter.cost(), currency=metering.currency)
        lines.append(f"  used: {metering.line()}")
    if changes:
        record.change_job(job.job_id, **changes)
    return tuple(lines)


def summary(run: Run, job: JobRecord, counts: TaskCounts | None, ending: Ending,
            missing: dict[int, list[str]] | None = None) -> tuple[str, ...]:
    ctx, store, record = run.ctx, run.store, run.record
    workers = job.kind is JobKind.WORKERS
    sim = ctx.settings.sim
    total = len(job.task_ids)
    state = ("timed out" if counts is None else
             f"{counts.succeeded} of {total} task(s) succeeded"
             + (f", {counts.failed} failed" if counts.failed else "")
             + (f", {total - counts.completed} not accounted for" if counts.completed < total else "")
             + (f", {len(missing)} wrote no file for an output pattern" if missing else ""))
    title = "Campaign" if workers else "Reducer of"
    pool = job.pool_id or "(auto pool)"
    lines = [f"{title} {sim.sim_id}: {state} ({ctx.settings.backend} backend).",
             f"  job {job.job_id}, pool {pool}: "
             + ("deleted" if ending.compute_deleted else "still exist (delete with --cleanup)"),
             f"  {billing_mode(ctx, job)}"]
    runs = (f"{cp.OUTPUT_PREFIX}run{min(job.task_indices)}..run{max(job.task_indices)}/"
            if workers else cp.RESULTS_PREFIX)
    lines.append(f"  {'task outputs' if workers else 'merged result'}: container "
                 f"{store.container}, {runs}"
                 + (" (container deleted)" if ending.container_deleted else f" ({store.location})"))
    if ending.container_kept_for_reducer:
        lines.append("  container kept: the reducer reads the task outputs from it")
    if ending.downloaded_to is not None:
        where = ending.downloaded_to / ("" if workers else "results")
        lines.append(f"  downloaded to: {where}")
    lines.append(f"  manifest: {record.path}")
    if counts is not None and (counts.failed or missing) and workers:
        lines.append(f"Rerun the failed tasks: {command(ctx, Script.RUNNER, '--rerun-failed')}")
    elif workers and not ending.container_deleted:
        lines.append(f"Next: {command(ctx, Script.REDUCER)}")
    return tuple(lines)
