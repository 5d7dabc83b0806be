"""The end of every script: the cleanup questions, downloads, and the summary.

Data is deleted only when the user says so and every result has a verified local copy (or
the loss is confirmed at a terminal) — and never while a job of the campaign still runs,
since its tasks would then fail to upload (FileUploadContainerNotFound). A question whose
yes would destroy what the next step of the same campaign needs — the runner's container,
which the reducer reads — is not answered by --yes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common import campaign as cp
from common.errors import EXIT_FAILED, EXIT_OK
from common.manifest import JobRecord
from common.model import BlobInfo, JobKind, Script, TaskCounts
from common.transfer import download_prefix, unverified_blobs
from common.workflow.compute import (LOG_NAMES, missing_outputs, report_failures,
                                     report_missing_outputs)
from common.workflow.context import Outcome, Run, billing_mode, command
from common.workflow.metering import Metering
from common.workflow.records import active_jobs, runs_merged
from common.ui import runs_text
from common.workflow.safety import costly, guarded, offer_compute_deletion

# Above this, the task outputs are downloaded only when a person at a terminal says yes (or
# DOWNLOAD_TASK_OUTPUTS says "all"): the laptop's disk and link are not the cloud's.
DOWNLOAD_ASK_BYTES = 2 * 1024 ** 3
DOWNLOAD_ASK_ENV = "BATCH_TOOL_DOWNLOAD_ASK_BYTES"  # another threshold (tests, small disks)


def download_threshold() -> int:
    try:
        value = int(os.environ.get(DOWNLOAD_ASK_ENV, DOWNLOAD_ASK_BYTES))
    except ValueError:
        return DOWNLOAD_ASK_BYTES
    return value if value >= 0 else DOWNLOAD_ASK_BYTES


@dataclass(frozen=True)
class Ending:
    """What the cleanup questions did, for the summary."""

    compute_deleted: bool
    downloaded_to: Path | None
    download_ok: bool
    container_deleted: bool
    container_kept_for_reducer: bool = False


def size_text(size: int) -> str:
    """62 bytes, 4.5 MiB, 2.31 GiB."""
    if size < 1024:
        return f"{size} bytes"
    for unit, power in (("KiB", 1), ("MiB", 2), ("GiB", 3), ("TiB", 4)):
        if size < 1024 ** (power + 1) or unit == "TiB":
            return f"{size / 1024 ** power:.3g} {unit}"
    return f"{size} bytes"  # not reached


def amount(blobs: list[BlobInfo]) -> str:
    return f"{len(blobs)} file(s), {size_text(sum(b.size for b in blobs))}"


def download(run: Run, prefix: str, blobs: list[BlobInfo] | None = None) -> tuple[Path, bool]:
    """Every blob under `prefix` (or those of `blobs`), verified, into the results folder."""
    ctx, store, record = run.ctx, run.store, run.record
    dest = ctx.settings.sim.local_results_path
    chosen = store.list_blobs(prefix) if blobs is None else blobs
    names = {b.name for b in chosen}
    size = sum(b.size for b in chosen)
    ctx.step("download", f"Downloading {len(chosen)} file(s), {size:,} bytes, from {prefix} to {dest}")
    with ctx.ui.transfer_progress(len(chosen), size, "download") as update:
        report = download_prefix(store, prefix, dest, cp.OUTPUT_PREFIX, on_progress=update,
                                 select=None if blobs is None else (lambda b: b.name in names))
    record.downloaded(dest)
    ctx.ui.info(f"{len(report.downloaded)} downloaded, {len(report.skipped)} already present "
                f"and verified, {len(report.failed)} failed")
    for name, why in report.failed:
        ctx.ui.error(f"{name}: not downloaded: {why}")
    return dest, report.ok


def is_log(blob: BlobInfo) -> bool:
    """A task's stdout.txt or stderr.txt (in its run folder)."""
    head, _, rest = blob.name[len(cp.OUTPUT_PREFIX):].partition("/")
    return head.startswith("run") and rest in LOG_NAMES


def offer_download(run: Run, reducing: bool) -> tuple[Path | None, bool]:
    """The download question, with the size it means. The reducer's is the merged result
    only. The runner's follows DOWNLOAD_TASK_OUTPUTS when set; else it is asked — and above
    the threshold (DOWNLOAD_ASK_BYTES) only a person at a terminal says yes to it (not
    --yes, not --no-input): the logs are downloaded, and the way to fetch the rest said."""
    ctx, store = run.ctx, run.store
    prefix = cp.RESULTS_PREFIX if reducing else cp.OUTPUT_PREFIX
    blobs = store.list_blobs(prefix) if store.exists() else []
    if not blobs:
        return None, True
    dest = ctx.settings.sim.local_results_path
    if reducing:
        if ctx.prompter.confirm(f"Download the merged result ({amount(blobs)}) to "
                                f"{dest / 'results'}?", True):
            return download(run, prefix, blobs)
        return None, True
    logs = [b for b in blobs if is_log(b)]
    configured = choice = ctx.settings.sim.download_task_outputs
    size = sum(b.size for b in blobs)
    if choice is None:
        big = size > download_threshold()
        question = f"Download the task outputs ({amount(blobs)}) to {dest}?"
        if big:
            question += f" No: only the tasks' logs ({amount(logs)})."
        choice = "all" if ctx.prompter.confirm(question, not big, risky=big) else \
            "logs" if big else "none"
    else:
        ctx.ui.info(f"DOWNLOAD_TASK_OUTPUTS is {choice!r} (the task outputs are {amount(blobs)})")
    if choice == "none":
        return None, True
    if choice == "all":
        return download(run, prefix, blobs)
    rest = [b for b in blobs if not is_log(b)]
    got = download(run, prefix, logs) if logs else (dest, True)
    if rest:
        cleanup = command(ctx, Script.RUNNER, '--cleanup', answers=False)
        how = (f'set DOWNLOAD_TASK_OUTPUTS to "all" (or remove it) and run `{cleanup}`'
               if configured else f"run `{cleanup}` at a terminal and answer yes to the "
               'download, or set DOWNLOAD_TASK_OUTPUTS to "all" first')
        ctx.ui.info(f"the other {amount(rest)} stay in container {store.container}: to fetch "
                    f"them, {how}")
    return got


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
    dest, ok = offer_download(run, reducing)
    merged = runs_merged(record.manifest)
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
    an adaptive campaign (`verdict`), when the target was met (failed tasks were replaced).
    Guarded as a whole: an error between its steps still offers to delete the job."""
    return guarded(run, {job.job_id}, lambda: _finish(run, job, counts, show_log, extra,
                                                      metering, verdict))


def _finish(run: Run, job: JobRecord, counts: TaskCounts | None, show_log,
            extra: tuple[str, ...], metering: Metering | None, verdict) -> Outcome:
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
    runs = f"{cp.OUTPUT_PREFIX}{runs_text(job.task_indices)}/" if workers else cp.RESULTS_PREFIX
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
