"""The steps of each script, backend-neutral: upload, pool, job, wait, report, clean up.

`run_simulation` is batch_simulation_runner.py and `run_reducer` is batch_data_reducer.py.
They talk to a Backend and a BlobStore only. Anything that costs money (job, pool) is
offered for deletion on every way out, Ctrl-C included; data is deleted only when the user
says so and every result has a verified local copy (or the user confirms the loss).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from common import campaign as cp
from common.backends.base import Backend, BlobStore
from common.config import Settings
from common.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ToolError
from common.model import JobSpec, PoolSpec, TaskCounts, TaskFailure
from common.packaging import build_archive
from common.prompts import Prompter
from common.reducer_source import build_reducer_archive, describe
from common.transfer import download_prefix, unverified_blobs, upload_if_changed
from common.ui import Ui, counts_text


@dataclass(frozen=True)
class Context:
    settings: Settings
    backend: Backend
    prompter: Prompter
    ui: Ui
    started: datetime = field(default_factory=datetime.now)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll_seconds: float = 1.0

    @property
    def ids(self) -> cp.CampaignIds:
        return cp.CampaignIds(self.settings.sim.sim_id, self.started.strftime("%Y%m%d%H%M%S"))


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    summary: tuple[str, ...]


@dataclass
class _Compute:
    """The job and pool this run created or used: what must be offered for deletion."""

    pool_id: str | None = None
    job_id: str | None = None
    deleted: bool = False


# ---------------------------------------------------------------------------- shared steps


def _upload(ctx: Context, store: BlobStore, source: Path, blob: str) -> None:
    if upload_if_changed(store, source, blob):
        ctx.ui.info(f"uploaded {blob} ({source.stat().st_size:,} bytes)")
    else:
        ctx.ui.info(f"{blob} is unchanged in storage: nothing uploaded")


def _run_job(ctx: Context, pool: PoolSpec, job: JobSpec, compute: _Compute) -> TaskCounts | None:
    """Prepare the pool, submit the job, wait. None means the timeout came first."""
    ctx.ui.step(f"Preparing pool {pool.pool_id}")
    compute.pool_id = pool.pool_id
    ctx.backend.prepare_pool(pool, ctx.ui.info)
    ctx.ui.step(f"Submitting job {job.job_id} with {len(job.tasks)} task(s)")
    compute.job_id = job.job_id
    ctx.backend.submit_job(job)
    return _wait(ctx, job.job_id, len(job.tasks))


def _wait(ctx: Context, job_id: str, total: int) -> TaskCounts | None:
    minutes = ctx.settings.sim.timeout_minutes
    ctx.ui.step(f"Waiting for {total} task(s) (timeout {minutes:g} min; Ctrl-C to stop waiting)")
    deadline = ctx.clock() + minutes * 60
    with ctx.ui.task_progress(total, "tasks") as update:
        while True:
            counts = ctx.backend.task_counts(job_id)
            update(counts)
            if counts.total and counts.active == 0 and counts.running == 0:
                return counts
            if ctx.clock() >= deadline:
                ctx.ui.error(f"timed out after {minutes:g} minutes: {counts_text(counts)}")
                return None
            ctx.sleep(ctx.poll_seconds)


def _report_failures(ctx: Context, job_id: str, counts: TaskCounts) -> list[TaskFailure]:
    if not counts.failed:
        return []
    failures = ctx.backend.task_failures(job_id)
    ctx.ui.error(f"{len(failures)} of {counts.total} task(s) failed:")
    for failure in failures:
        code = "no exit code" if failure.exit_code is None else f"exit code {failure.exit_code}"
        info = f" [{failure.failure_code}: {failure.failure_message}]" if failure.failure_code else ""
        ctx.ui.info(f"{failure.task_id}: {code}{info}")
        for line in failure.stderr_tail:
            ctx.ui.info(f"    | {line}")
    return failures


def _offer_compute_deletion(ctx: Context, compute: _Compute, why: str = "") -> None:
    if compute.pool_id is None or compute.deleted:
        return
    names = " and ".join(n for n in (compute.job_id and f"job {compute.job_id}",
                                      f"pool {compute.pool_id}") if n)
    if ctx.prompter.confirm(f"{why}Delete {names} (a pool costs money while it exists)?", True):
        if compute.job_id:
            ctx.backend.delete_job(compute.job_id)
        ctx.backend.delete_pool(compute.pool_id)
        compute.deleted = True
        ctx.ui.info(f"deleted {names}")
    else:
        ctx.ui.warn(f"kept {names}: delete it when done, it is billed while it exists")


def _guarded(ctx: Context, compute: _Compute, body: Callable[[], TaskCounts | None]) -> TaskCounts | None:
    """Run the compute part; on Ctrl-C or an error, offer to delete what costs money first."""
    try:
        return body()
    except KeyboardInterrupt:
        ctx.ui.warn("interrupted: tasks keep running on the pool until it is deleted")
        _offer_compute_deletion(ctx, compute, "Interrupted. ")
        raise ToolError("interrupted; no data was deleted", exit_code=EXIT_INTERRUPTED) from None
    except ToolError:
        _offer_compute_deletion(ctx, compute, "The campaign stopped with an error. ")
        raise


def _download(ctx: Context, store: BlobStore, prefix: str) -> tuple[Path, bool]:
    dest = ctx.settings.sim.local_results_path
    blobs = store.list_blobs(prefix)
    size = sum(b.size for b in blobs)
    ctx.ui.step(f"Downloading {len(blobs)} file(s), {size:,} bytes, from {prefix} to {dest}")
    with ctx.ui.transfer_progress(len(blobs), size, "download") as update:
        report = download_prefix(store, prefix, dest, cp.OUTPUT_PREFIX, on_progress=update)
    ctx.ui.info(f"{len(report.downloaded)} downloaded, {len(report.skipped)} already present "
                f"and verified, {len(report.failed)} failed")
    for name, why in report.failed:
        ctx.ui.error(f"{name}: not downloaded: {why}")
    return dest, report.ok


def _offer_container_deletion(ctx: Context, store: BlobStore, question: str) -> bool:
    if not ctx.prompter.confirm(question, False):
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
    store.delete_container()
    ctx.ui.info(f"deleted container {store.container}")
    return True


# ---------------------------------------------------------------------------- runner


def run_simulation(ctx: Context) -> Outcome:
    settings, ui, ids = ctx.settings, ctx.ui, ctx.ids
    sim = settings.sim
    ui.step(f"Campaign {sim.sim_id}: {sim.task_count} task(s) on {sim.pool_node_count} node(s), "
            f"{settings.backend} backend")
    store = ctx.backend.blob_store(ids.container)
    _upload_simulation(ctx, store)
    compute = _Compute()
    job = cp.worker_job(settings, ids)
    counts = _guarded(ctx, compute, lambda: _run_job(ctx, cp.worker_pool(settings, ids), job, compute))
    failures = _report_failures(ctx, job.job_id, counts) if counts else []
    ui.step("Cleaning up")
    _offer_compute_deletion(ctx, compute)
    downloaded_ok, dest = True, None
    if ctx.prompter.confirm(f"Download results ({cp.OUTPUT_PREFIX}) to "
                            f"{sim.local_results_path}?", True):
        dest, downloaded_ok = _download(ctx, store, cp.OUTPUT_PREFIX)
    deleted = _offer_container_deletion(
        ctx, store, f"Delete storage container {store.container}? The reducer "
                    "(batch_data_reducer.py) still needs the task outputs in it.")
    ok = counts is not None and not failures and downloaded_ok
    return Outcome(EXIT_OK if ok else EXIT_FAILED,
                   _runner_summary(ctx, store, job, counts, compute, dest, deleted))


def _upload_simulation(ctx: Context, store: BlobStore) -> None:
    sim = ctx.settings.sim
    with tempfile.TemporaryDirectory(prefix="batch-sim-") as tmp:
        ctx.ui.step(f"Packing {sim.local_sim_path}")
        archive = build_archive(sim.local_sim_path, Path(tmp) / cp.SIM_ARCHIVE_BLOB,
                                exclude=(sim.local_results_path, ctx.settings.app.local_storage_path))
        ctx.ui.info(f"{archive.files} file(s), {archive.size:,} bytes")
        ctx.ui.step(f"Uploading to container {store.container} ({store.location})")
        if store.create():
            ctx.ui.info(f"created container {store.container}")
        _upload(ctx, store, archive.path, cp.SIM_ARCHIVE_BLOB)
        _upload(ctx, store, sim.path, cp.SIMCONFIG_BLOB)


def _runner_summary(ctx: Context, store: BlobStore, job: JobSpec, counts: TaskCounts | None,
                    compute: _Compute, dest: Path | None, deleted: bool) -> tuple[str, ...]:
    sim = ctx.settings.sim
    state = ("timed out" if counts is None else
             f"{counts.succeeded} of {len(job.tasks)} task(s) succeeded"
             + (f", {counts.failed} failed" if counts.failed else ""))
    lines = [f"Campaign {sim.sim_id}: {state} ({ctx.settings.backend} backend).",
             f"  job {job.job_id}, pool {job.pool_id}: {'deleted' if compute.deleted else 'still exist'}",
             f"  task outputs: container {store.container}, {cp.OUTPUT_PREFIX}run"
             f"{sim.starting_node}..run{sim.task_indices[-1]}/"
             + (" (container deleted)" if deleted else f" ({store.location})")]
    if dest is not None:
        lines.append(f"  downloaded to: {dest}")
    if not deleted:
        lines.append(f"Next: python batch_data_reducer.py {sim.path}")
    return tuple(lines)


# ---------------------------------------------------------------------------- reducer


def run_reducer(ctx: Context) -> Outcome:
    settings, ui, ids = ctx.settings, ctx.ui, ctx.ids
    store = ctx.backend.blob_store(ids.container)
    runs = _worker_runs(ctx, store)
    ui.step(f"Reducing {len(runs)} run folder(s) of campaign {settings.sim.sim_id} with "
            f"{describe(settings)}")
    uploaded = _upload_reducer(ctx, store)
    compute = _Compute()
    job = cp.reducer_job(settings, ids)
    counts = _guarded(ctx, compute, lambda: _run_job(ctx, cp.reducer_pool(settings, ids), job, compute))
    failures = _report_failures(ctx, job.job_id, counts) if counts else []
    if counts and not failures:
        _show_reducer_log(ctx, job)
    ui.step("Cleaning up")
    _offer_compute_deletion(ctx, compute)
    store.delete_blobs(uploaded)
    ui.info(f"removed the reducer code this run uploaded ({', '.join(uploaded)})")
    downloaded_ok, dest = True, None
    results = store.list_blobs(cp.RESULTS_PREFIX)
    if results and ctx.prompter.confirm(
            f"Download the merged result ({cp.RESULTS_PREFIX}) to "
            f"{settings.sim.local_results_path / 'results'}?", True):
        dest, downloaded_ok = _download(ctx, store, cp.RESULTS_PREFIX)
    deleted = _offer_container_deletion(
        ctx, store, f"Delete storage container {store.container} with all task outputs and the "
                    "merged result?")
    ok = counts is not None and not failures and downloaded_ok and bool(results)
    lines = [f"Reducer of {settings.sim.sim_id}: "
             + ("timed out" if counts is None else "failed" if failures else "done")
             + f" ({settings.backend} backend).",
             f"  job {job.job_id}, pool {job.pool_id}: {'deleted' if compute.deleted else 'still exist'}",
             f"  merged result: container {store.container}, {cp.RESULTS_PREFIX}"
             + (" (container deleted)" if deleted else f" ({len(results)} file(s))")]
    if dest is not None:
        lines.append(f"  downloaded to: {dest / 'results'}")
    return Outcome(EXIT_OK if ok else EXIT_FAILED, tuple(lines))


def _worker_runs(ctx: Context, store: BlobStore) -> list[str]:
    name = ctx.settings.sim.sim_id
    if not store.exists():
        raise ToolError(f"container {store.container} does not exist on the {ctx.backend.name} "
                        f"backend: run batch_simulation_runner.py for {name} first")
    runs = sorted({b.name.split("/")[1] for b in store.list_blobs(cp.OUTPUT_PREFIX)
                   if b.name.count("/") >= 2 and b.name.split("/")[1].startswith("run")})
    if not runs:
        raise ToolError(f"container {store.container} holds no task outputs under "
                        f"{cp.OUTPUT_PREFIX}run*/: run batch_simulation_runner.py for {name} first")
    return runs


def _upload_reducer(ctx: Context, store: BlobStore) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="batch-reducer-") as tmp:
        archive = build_reducer_archive(ctx.settings, Path(tmp))
        ctx.ui.step(f"Uploading the reducer ({archive.files} file(s)) to container {store.container}")
        _upload(ctx, store, archive.path, cp.REDUCER_ARCHIVE_BLOB)
    _upload(ctx, store, ctx.settings.sim.path, cp.SIMCONFIG_BLOB)
    return [cp.REDUCER_ARCHIVE_BLOB]


def _show_reducer_log(ctx: Context, job: JobSpec) -> None:
    text = ctx.backend.task_output(job.job_id, job.tasks[0].task_id, "stdout.txt").strip()
    for line in text.splitlines()[-20:]:
        ctx.ui.info(f"| {line}")


# ---------------------------------------------------------------------------- --dry-run


def plan(ctx: Context, reducer: bool) -> Outcome:
    """What the script would create and send, built in full but never sent (--dry-run)."""
    settings, ids = ctx.settings, ctx.ids
    if reducer:
        pool, job = cp.reducer_pool(settings, ids), cp.reducer_job(settings, ids)
    else:
        pool, job = cp.worker_pool(settings, ids), cp.worker_job(settings, ids)
        with tempfile.TemporaryDirectory(prefix="batch-sim-") as tmp:
            archive = build_archive(settings.sim.local_sim_path, Path(tmp) / cp.SIM_ARCHIVE_BLOB,
                                    exclude=(settings.sim.local_results_path,
                                             settings.app.local_storage_path))
        ctx.ui.info(f"{cp.SIM_ARCHIVE_BLOB} would hold {archive.files} file(s), {archive.size:,} bytes")
    lines = [f"Dry run of {'the reducer' if reducer else 'campaign'} {settings.sim.sim_id} "
             f"({settings.backend} backend): nothing was created, uploaded or sent.",
             f"  container {ids.container}, pool {pool.pool_id}, job {job.job_id}, "
             f"{len(job.tasks)} task(s)"]
    for title, text in ctx.backend.describe(pool, job):
        lines += [f"--- {title}", text]
    return Outcome(EXIT_OK, tuple(lines))
