"""The steps of each script, backend-neutral: upload, pool, job, wait, report, clean up.

`run_simulation` is batch_simulation_runner.py and `run_reducer` is batch_data_reducer.py;
`attach`, `cleanup`, `status` and `rerun_failed` pick a campaign up again from its manifest
(common/manifest.py), which records every effect as it happens. Anything that costs money
(job, pool) is offered for deletion on every way out, Ctrl-C and crashes included; data is
deleted only when the user says so and every result has a verified local copy (or the user
confirms the loss at a terminal).
"""
from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Callable, TypeVar

from common import campaign as cp
from common.backends.base import Backend, BlobStore
from common.config import Settings
from common.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ToolError
from common.manifest import (REDUCER, WORKERS, JobRecord, Manifest, ManifestFile, check_belongs, load,
                             manifest_path)
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
    # Test hook: called with each step's name before it runs (fault injection).
    before_step: Callable[[str], None] = lambda step: None
    # Marks the jobs this run creates, so a resent creation knows its own job.
    run_token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def ids(self) -> cp.CampaignIds:
        return cp.CampaignIds(self.settings.sim.sim_id, self.started.strftime("%Y%m%d%H%M%S"))

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.settings.sim.path, self.settings.sim.sim_id)

    def step(self, name: str, text: str) -> None:
        self.before_step(name)
        self.ui.step(text)


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    summary: tuple[str, ...]


def _billing_mode(ctx: Context, job: JobSpec | JobRecord) -> str:
    if ctx.backend.name == "local":
        return "billing: none (local backend)"
    if job.auto_pool:
        return "billing safety: on — Batch deletes the pool when the job ends, even if this script dies"
    return "billing safety: off (AUTO_DELETE_POOL false) — the pool bills until it is deleted"


# ---------------------------------------------------------------------------- manifest


def _open_manifest(ctx: Context) -> ManifestFile:
    ids = ctx.ids
    existing = load(ctx.manifest_path)
    if existing is not None:
        check_belongs(existing, ctx.manifest_path, ctx.settings.sim.sim_id, ctx.settings.backend)
    fresh = Manifest(sim_id=ctx.settings.sim.sim_id, backend=ctx.settings.backend,
                     container=ids.container, simconfig=str(ctx.settings.sim.path))
    record = ManifestFile.open(ctx.manifest_path, fresh)
    ctx.ui.info(f"campaign manifest: {record.path}")
    return record


def _existing_manifest(ctx: Context) -> ManifestFile:
    found = load(ctx.manifest_path)
    if found is None:
        raise ToolError(f"no campaign manifest at {ctx.manifest_path}: nothing to pick up for "
                        f"{ctx.settings.sim.sim_id} (it is written when a campaign starts)")
    check_belongs(found, ctx.manifest_path, ctx.settings.sim.sim_id, ctx.settings.backend)
    ctx.ui.info(f"campaign manifest: {ctx.manifest_path}")
    return ManifestFile(ctx.manifest_path, found)


# ---------------------------------------------------------------------------- shared steps


def _upload(ctx: Context, store: BlobStore, record: ManifestFile, source: Path, blob: str) -> None:
    record.uploaded(blob)  # before the effect: a crash mid-upload still leaves it on record
    if upload_if_changed(store, source, blob):
        ctx.ui.info(f"uploaded {blob} ({source.stat().st_size:,} bytes)")
    else:
        ctx.ui.info(f"{blob} is unchanged in storage: nothing uploaded")


def _start_job(ctx: Context, record: ManifestFile, pool: PoolSpec, job: JobSpec, kind: str) -> None:
    """Create (or reuse) the pool, submit the job; the manifest knows each before it exists."""
    entry = JobRecord(job_id=job.job_id, kind=kind, pool_id=None if job.auto_pool else pool.pool_id,
                      task_ids=tuple(t.task_id for t in job.tasks),
                      task_indices=tuple(t.index for t in job.tasks), auto_pool=bool(job.auto_pool))
    record.add_job(entry)
    if job.auto_pool is None:
        ctx.step("pool", f"Preparing pool {pool.pool_id}")
        ctx.backend.prepare_pool(pool, ctx.ui.info)
    ctx.step("submit", f"Submitting job {job.job_id} with {len(job.tasks)} task(s)")
    ctx.ui.info(_billing_mode(ctx, job))
    pool_id = ctx.backend.submit_job(replace(job, owner=ctx.run_token), ctx.ui.info)
    record.change_job(job.job_id, pool_id=pool_id)


def _wait(ctx: Context, job_id: str, total: int, pool_id: str | None = None) -> TaskCounts | None:
    """Until every one of the `total` tasks submitted has completed, or the timeout.

    Batch's task counts "may not always be up to date": counts that do not account for every
    task are never taken for the end; an exact count over the task list settles it.
    """
    minutes = ctx.settings.sim.timeout_minutes
    ctx.step("wait", f"Waiting for {total} task(s) (timeout {minutes:g} min; Ctrl-C to stop waiting)")
    deadline = ctx.clock() + minutes * 60
    next_check, said = ctx.clock(), set()  # a first look at once, then now and then
    with ctx.ui.task_progress(total, "tasks") as update:
        while True:
            counts = ctx.backend.task_counts(job_id)
            if counts.completed < total and not counts.active and not counts.running:
                counts = ctx.backend.task_counts(job_id, exact=True)
            if counts_text(counts) not in said:
                said.add(counts_text(counts))
                ctx.ui.debug(f"task states: {counts_text(counts)}")
            update(counts)
            if counts.completed >= total:
                return counts
            if ctx.clock() >= next_check:
                _check_progress(ctx, job_id, pool_id, counts, said)
                next_check = ctx.clock() + ctx.backend.health_seconds
            if ctx.clock() >= deadline:
                ctx.ui.error(f"timed out after {minutes:g} minutes: {counts_text(counts)}")
                return None
            ctx.sleep(ctx.poll_seconds)


def _check_progress(ctx: Context, job_id: str, pool_id: str | None, counts: TaskCounts,
                    said: set[str]) -> None:
    """Stop waiting at once when no node can run the tasks that wait; say, once, what is
    wrong with some nodes while the others carry on."""
    health = ctx.backend.pool_health(pool_id) if pool_id else None
    problems = []
    if health is not None:
        problems += [f"pool {pool_id}: {e}" for e in health.resize_errors]
        if health.broken:
            problems.append(f"pool {pool_id}: {health.broken} node(s) cannot run tasks ({health.text()})")
        if health.dead and counts.active:
            raise ToolError(f"pool {pool_id}: no node can run the {counts.active} waiting task(s) "
                            f"({health.text()}" + (f"; {'; '.join(health.resize_errors)}"
                                                   if health.resize_errors else "") + ")")
    preparations = ctx.backend.preparation_failures(job_id) if counts.active and not counts.running else []
    for failure in preparations:
        problems.append(f"{failure.task_id}: {_failure_text(failure)}"
                        + (f" | {failure.stderr_tail[-1]}" if failure.stderr_tail else ""))
    if preparations and (health is None or len(preparations) >= health.usable):
        raise ToolError(*[f"the job preparation task failed, so no task can start: {p}"
                          for p in problems if p.startswith("job preparation")][:3])
    for problem in problems:
        if problem not in said:
            ctx.ui.warn(f"{problem} — the campaign goes on with the other nodes")
            said.add(problem)


def _failure_text(failure: TaskFailure) -> str:
    code = "no exit code" if failure.exit_code is None else f"exit code {failure.exit_code}"
    info = f" [{failure.failure_code}: {failure.failure_message}]" if failure.failure_code else ""
    return code + info


def _report_failures(ctx: Context, store: BlobStore, job: JobRecord,
                     counts: TaskCounts) -> list[TaskFailure]:
    """Each failed task with the end of its stderr — read from the output blobs, which outlive
    the node (with an auto pool the node and its files are gone when the job ends)."""
    if not counts.failed:
        return []
    failures = ctx.backend.task_failures(job.job_id)
    index_of = dict(zip(job.task_ids, job.task_indices))
    ctx.ui.error(f"{len(failures)} of {len(job.task_ids)} task(s) failed:")
    for failure in failures:
        ctx.ui.info(f"{failure.task_id}: {_failure_text(failure)}")
        tail = failure.stderr_tail or tuple(_stderr_tail(store, job, index_of.get(failure.task_id)))
        for line in tail:
            ctx.ui.info(f"    | {line}")
    return failures


def _stderr_tail(store: BlobStore, job: JobRecord, index: int | None) -> list[str]:
    if job.kind == REDUCER:
        blob = f"{cp.RESULTS_PREFIX}reducer_stderr.txt"
    elif index is None:
        return []
    else:
        blob = f"{cp.run_prefix(index)}stderr.txt"
    return store.read_tail(blob).splitlines()[-STDERR_TAIL_LINES:]


def _costly(record: ManifestFile, kind: str, only: set[str] | None = None) -> list[JobRecord]:
    """Open jobs of this kind (only those named in `only`, when given): what may still bill."""
    return [j for j in record.manifest.open_jobs()
            if j.kind == kind and (only is None or j.job_id in only)]


def _offer_compute_deletion(ctx: Context, record: ManifestFile, jobs: list[JobRecord],
                            why: str = "") -> None:
    """One question for everything of this run that may bill: its jobs and their pools."""
    if not jobs:
        return
    names = []
    for job in jobs:
        if not job.job_deleted:
            names.append(f"job {job.job_id}")
        if job.pool_id and not job.pool_deleted and not job.auto_pool:
            names.append(f"pool {job.pool_id}")
        elif job.auto_pool and not job.job_deleted:
            names[-1] += " with its pool"
    text = " and ".join(dict.fromkeys(names))
    if not ctx.prompter.confirm(f"{why}Delete {text} (a pool costs money while it exists)?", True):
        ctx.ui.warn(f"kept {text}: it bills while its pool exists; delete it later with --cleanup")
        record.note(f"kept {text}")
        return
    for job in jobs:
        _delete_compute(ctx, record, job)
    ctx.ui.info(f"deleted {text}")


def _delete_compute(ctx: Context, record: ManifestFile, job: JobRecord) -> None:
    if not job.job_deleted:
        ctx.backend.delete_job(job.job_id)
        record.change_job(job.job_id, job_deleted=True, pool_deleted=job.auto_pool or job.pool_deleted)
    if job.pool_id and not job.pool_deleted and not job.auto_pool:
        others = [j for j in record.manifest.open_jobs()
                  if j.pool_id == job.pool_id and j.job_id != job.job_id and not j.job_deleted]
        if not others:  # a shared named pool stays while another job of ours still uses it
            ctx.backend.delete_pool(job.pool_id)
            for same in record.manifest.jobs:
                if same.pool_id == job.pool_id:
                    record.change_job(same.job_id, pool_deleted=True)


T = TypeVar("T")
STDERR_TAIL_LINES = 10


def _guarded(ctx: Context, record: ManifestFile, kind: str, only: set[str],
             body: Callable[[], T]) -> T:
    """Run a part with effects; on Ctrl-C or any error, first offer to delete the jobs named
    in `only` (this run's) and their pools, which cost money. Data is never deleted here."""
    try:
        return body()
    except KeyboardInterrupt:
        ctx.ui.warn("interrupted: tasks keep running on the pool until it is deleted")
        record.note("interrupted")
        _offer_compute_deletion(ctx, record, _costly(record, kind, only), "Interrupted. ")
        raise ToolError("interrupted; no data was deleted", exit_code=EXIT_INTERRUPTED) from None
    except Exception as error:
        record.note(f"stopped by an error: {error.__class__.__name__}")
        try:
            _offer_compute_deletion(ctx, record, _costly(record, kind, only),
                                    "The campaign stopped with an error. ")
        except ToolError as also:  # the first error is the one to show; this one is said too
            ctx.ui.warn(f"{also}; check with --status, settle with --cleanup")
        raise


def _download(ctx: Context, store: BlobStore, record: ManifestFile, prefix: str) -> tuple[Path, bool]:
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


def _offer_container_deletion(ctx: Context, store: BlobStore, record: ManifestFile,
                              question: str) -> bool:
    if not store.exists() or not ctx.prompter.confirm(question, False):
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


@dataclass(frozen=True)
class _Ending:
    """What the cleanup questions did, for the summary."""

    compute_deleted: bool
    downloaded_to: Path | None
    download_ok: bool
    container_deleted: bool


def _cleanup_questions(ctx: Context, store: BlobStore, record: ManifestFile, kind: str,
                       only: set[str] | None) -> _Ending:
    ctx.step("cleanup", "Cleaning up")
    _offer_compute_deletion(ctx, record, _costly(record, kind, only))
    compute_deleted = not _costly(record, kind, only)
    if kind == REDUCER:
        _remove_reducer_code(ctx, store, record)
    prefix = cp.RESULTS_PREFIX if kind == REDUCER else cp.OUTPUT_PREFIX
    dest, ok = None, True
    where = ctx.settings.sim.local_results_path / ("results" if kind == REDUCER else "")
    what = "the merged result" if kind == REDUCER else "results"
    if store.exists() and store.list_blobs(prefix) and ctx.prompter.confirm(
            f"Download {what} ({prefix}) to {where}?", True):
        dest, ok = _download(ctx, store, record, prefix)
    question = (f"Delete storage container {store.container} with all task outputs and the merged "
                "result?" if kind == REDUCER else
                f"Delete storage container {store.container}? The reducer (batch_data_reducer.py) "
                "still needs the task outputs in it.")
    deleted = _offer_container_deletion(ctx, store, record, question)
    return _Ending(compute_deleted, dest, ok, deleted)


def _remove_reducer_code(ctx: Context, store: BlobStore, record: ManifestFile) -> None:
    ours = [b for b in record.manifest.uploaded if b == cp.REDUCER_ARCHIVE_BLOB]
    if ours and store.exists():
        store.delete_blobs(ours)
        record.update(uploaded=tuple(b for b in record.manifest.uploaded if b not in ours))
        ctx.ui.info(f"removed the reducer code this tool uploaded ({', '.join(ours)})")


def _finish(ctx: Context, store: BlobStore, record: ManifestFile, job: JobRecord,
            counts: TaskCounts | None) -> Outcome:
    failures = _guarded(ctx, record, job.kind, {job.job_id},
                        lambda: _report_failures(ctx, store, job, counts) if counts else [])
    index_of = dict(zip(job.task_ids, job.task_indices))
    record.change_job(job.job_id, failed_indices=tuple(sorted(
        index_of[f.task_id] for f in failures if f.task_id in index_of)))
    if job.kind == REDUCER and counts and not failures:
        _show_reducer_log(ctx, store)
    ending = _guarded(ctx, record, job.kind, {job.job_id},
                      lambda: _cleanup_questions(ctx, store, record, job.kind, {job.job_id}))
    results = job.kind != REDUCER or bool(ending.container_deleted or store.list_blobs(cp.RESULTS_PREFIX))
    all_succeeded = counts is not None and counts.succeeded >= len(job.task_ids)
    ok = all_succeeded and not failures and ending.download_ok and results
    return Outcome(EXIT_OK if ok else EXIT_FAILED, _summary(ctx, store, record, job, counts, ending))


def _summary(ctx: Context, store: BlobStore, record: ManifestFile, job: JobRecord,
             counts: TaskCounts | None, ending: _Ending) -> tuple[str, ...]:
    sim = ctx.settings.sim
    total = len(job.task_ids)
    state = ("timed out" if counts is None else
             f"{counts.succeeded} of {total} task(s) succeeded"
             + (f", {counts.failed} failed" if counts.failed else "")
             + (f", {total - counts.completed} not accounted for"
                if counts.completed < total else ""))
    title = "Campaign" if job.kind == WORKERS else "Reducer of"
    pool = job.pool_id or "(auto pool)"
    lines = [f"{title} {sim.sim_id}: {state} ({ctx.settings.backend} backend).",
             f"  job {job.job_id}, pool {pool}: "
             + ("deleted" if ending.compute_deleted else "still exist (delete with --cleanup)"),
             f"  {_billing_mode(ctx, job)}"]
    if job.kind == WORKERS:
        runs = f"{cp.OUTPUT_PREFIX}run{min(job.task_indices)}..run{max(job.task_indices)}/"
    else:
        runs = cp.RESULTS_PREFIX
    lines.append(f"  {'task outputs' if job.kind == WORKERS else 'merged result'}: container "
                 f"{store.container}, {runs}"
                 + (" (container deleted)" if ending.container_deleted else f" ({store.location})"))
    if ending.downloaded_to is not None:
        where = ending.downloaded_to / ("results" if job.kind == REDUCER else "")
        lines.append(f"  downloaded to: {where}")
    lines.append(f"  manifest: {record.path}")
    if counts is not None and counts.failed and job.kind == WORKERS:
        lines.append(f"Rerun the failed tasks: python batch_simulation_runner.py {sim.path} --rerun-failed")
    elif job.kind == WORKERS and not ending.container_deleted:
        lines.append(f"Next: python batch_data_reducer.py {sim.path}")
    return tuple(lines)


# ---------------------------------------------------------------------------- runner


def run_simulation(ctx: Context) -> Outcome:
    settings, ui, ids = ctx.settings, ctx.ui, ctx.ids
    sim = settings.sim
    ui.step(f"Campaign {sim.sim_id}: {sim.task_count} task(s) on {sim.pool_node_count} node(s), "
            f"{settings.backend} backend")
    record = _open_manifest(ctx)
    store = ctx.backend.blob_store(ids.container)
    _guarded(ctx, record, WORKERS, set(), lambda: _upload_simulation(ctx, store, record))
    return _run_worker_job(ctx, store, record, cp.worker_job(settings, ids))


def _run_worker_job(ctx: Context, store: BlobStore, record: ManifestFile, job: JobSpec) -> Outcome:
    pool = cp.worker_pool(ctx.settings, ctx.ids)

    def compute() -> TaskCounts | None:
        _start_job(ctx, record, pool, job, WORKERS)
        return _wait(ctx, job.job_id, len(job.tasks), _record_of(record, job.job_id).pool_id)
    counts = _guarded(ctx, record, WORKERS, {job.job_id}, compute)
    return _finish(ctx, store, record, _record_of(record, job.job_id), counts)


def _record_of(record: ManifestFile, job_id: str) -> JobRecord:
    return next(j for j in record.manifest.jobs if j.job_id == job_id)


def _upload_simulation(ctx: Context, store: BlobStore, record: ManifestFile) -> None:
    sim, app = ctx.settings.sim, ctx.settings.app
    # An anonymous file: nothing is left in the temporary folder whatever kills the process.
    with tempfile.TemporaryFile(prefix="batch-sim-") as handle:
        ctx.step("pack", f"Packing {sim.local_sim_path}")
        # Refuses (exit 2) links leaving the folder, FIFOs, unreadable files and secrets.
        archive = build_archive(sim.local_sim_path, handle,
                                exclude=(sim.local_results_path, app.local_storage_path),
                                exclude_files=(app.path,), secrets=app.secrets())
        ctx.ui.info(f"{archive.files} file(s), {archive.size:,} bytes")
        ctx.step("upload", f"Uploading to container {store.container} ({store.location})")
        if store.create():
            ctx.ui.info(f"created container {store.container}")
        record.uploaded(cp.SIM_ARCHIVE_BLOB)  # before the effect, as _upload does
        if upload_if_changed(store, handle, cp.SIM_ARCHIVE_BLOB):
            ctx.ui.info(f"uploaded {cp.SIM_ARCHIVE_BLOB} ({archive.size:,} bytes)")
        else:
            ctx.ui.info(f"{cp.SIM_ARCHIVE_BLOB} is unchanged in storage: nothing uploaded")
    _upload(ctx, store, record, sim.path, cp.SIMCONFIG_BLOB)


def rerun_failed(ctx: Context) -> Outcome:
    """Resubmit only the failed tasks of the latest worker job: same index and seed, new ids."""
    record = _existing_manifest(ctx)
    last = record.manifest.latest(WORKERS)
    if last is None:
        raise ToolError(f"campaign {ctx.settings.sim.sim_id} has no worker job to rerun")
    if ctx.backend.job_state(last.job_id) is not None:  # the live answer, if the job is still there
        failed = {f.task_id for f in ctx.backend.task_failures(last.job_id)}
        indices = tuple(i for t, i in zip(last.task_ids, last.task_indices) if t in failed)
    else:
        indices = last.failed_indices
    if not indices:
        return Outcome(EXIT_OK, (f"Job {last.job_id} has no failed task: nothing to rerun.",))
    retry = sum(1 for j in record.manifest.jobs if j.kind == WORKERS)  # the first job was 0
    ctx.ui.step(f"Rerunning {len(indices)} failed task(s) of {last.job_id}: "
                + ", ".join(f"task-{i}" for i in indices))
    job = cp.worker_job(ctx.settings, ctx.ids, indices=indices, retry=retry)
    store = ctx.backend.blob_store(ctx.ids.container)
    if not store.exists():
        raise ToolError(f"container {store.container} is gone: run the campaign again")
    return _run_worker_job(ctx, store, record, job)


# ---------------------------------------------------------------------------- reducer


def run_reducer(ctx: Context) -> Outcome:
    settings, ui, ids = ctx.settings, ctx.ui, ctx.ids
    store = ctx.backend.blob_store(ids.container)
    runs = _worker_runs(ctx, store)
    ui.step(f"Reducing {len(runs)} run folder(s) of campaign {settings.sim.sim_id} with "
            f"{describe(settings)}")
    record = _open_manifest(ctx)
    job = cp.reducer_job(settings, ids)

    def compute() -> TaskCounts | None:
        _upload_reducer(ctx, store, record)
        _start_job(ctx, record, cp.reducer_pool(settings, ids), job, REDUCER)
        return _wait(ctx, job.job_id, len(job.tasks), _record_of(record, job.job_id).pool_id)
    counts = _guarded(ctx, record, REDUCER, {job.job_id}, compute)
    return _finish(ctx, store, record, _record_of(record, job.job_id), counts)


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


def _upload_reducer(ctx: Context, store: BlobStore, record: ManifestFile) -> None:
    with tempfile.TemporaryDirectory(prefix="batch-reducer-") as tmp:
        archive = build_reducer_archive(ctx.settings, Path(tmp))
        ctx.step("upload", f"Uploading the reducer ({archive.files} file(s)) to container {store.container}")
        _upload(ctx, store, record, archive.path, cp.REDUCER_ARCHIVE_BLOB)
    _upload(ctx, store, record, ctx.settings.sim.path, cp.SIMCONFIG_BLOB)


def _show_reducer_log(ctx: Context, store: BlobStore) -> None:
    text = store.read_tail(f"{cp.RESULTS_PREFIX}reducer_stdout.txt").strip()
    for line in text.splitlines()[-20:]:
        ctx.ui.info(f"| {line}")


# ---------------------------------------------------------------------------- later: attach,
# cleanup, status


def attach(ctx: Context, kind: str) -> Outcome:
    """Wait for a campaign started earlier (no new pool, job or tasks), then the questions."""
    record = _existing_manifest(ctx)
    job = record.manifest.latest(kind)
    if job is None or job.job_deleted:
        raise ToolError(f"campaign {ctx.settings.sim.sim_id} has no {kind} job to attach to "
                        f"(manifest {record.path})")
    if ctx.backend.job_state(job.job_id) is None:
        raise ToolError(f"job {job.job_id} no longer exists on the {ctx.backend.name} backend; "
                        "run --cleanup to settle the rest")
    ctx.ui.step(f"Attaching to job {job.job_id} ({len(job.task_ids)} task(s))")
    store = ctx.backend.blob_store(record.manifest.container)
    counts = _guarded(ctx, record, kind, {job.job_id},
                      lambda: _wait(ctx, job.job_id, len(job.task_ids), job.pool_id))
    return _finish(ctx, store, record, job, counts)


def cleanup(ctx: Context, kind: str) -> Outcome:
    """Only the cleanup questions, for a campaign of any age, from its manifest."""
    record = _existing_manifest(ctx)
    for job in _costly(record, kind):  # what is already gone needs no question
        if ctx.backend.job_state(job.job_id) is None:
            gone = job.auto_pool or not job.pool_id or not ctx.backend.pool_exists(job.pool_id)
            record.change_job(job.job_id, job_deleted=True, pool_deleted=gone or job.pool_deleted)
    store = ctx.backend.blob_store(record.manifest.container)
    ending = _cleanup_questions(ctx, store, record, kind, None)
    left = _costly(record, kind)
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
    record = _existing_manifest(ctx)
    manifest = record.manifest
    lines = [f"Campaign {manifest.sim_id} ({manifest.backend} backend), started {manifest.created}",
             f"  manifest: {record.path}"]
    for job in manifest.jobs:
        state = ctx.backend.job_state(job.job_id)
        pool = job.pool_id or "(auto pool)"
        pool_state = ("deleted with the job" if job.auto_pool and state is None else
                      "exists" if job.pool_id and ctx.backend.pool_exists(job.pool_id) else "gone")
        if state is None:
            gone = "deleted by this tool" if job.job_deleted else "gone"
            failed = f", {len(job.failed_indices)} task(s) had failed" if job.failed_indices else ""
            lines.append(f"  {job.kind} job {job.job_id}: {gone}{failed}; pool {pool}: {pool_state}")
        else:
            counts = counts_text(ctx.backend.task_counts(job.job_id))
            lines.append(f"  {job.kind} job {job.job_id}: {state} ({counts}); pool {pool}: {pool_state}")
    store = ctx.backend.blob_store(manifest.container)
    if store.exists():
        outputs = store.list_blobs(cp.OUTPUT_PREFIX)
        runs = {b.name.split("/")[1] for b in outputs if b.name.count("/") >= 2}
        results = [b for b in outputs if b.name.startswith(cp.RESULTS_PREFIX)]
        lines.append(f"  container {manifest.container}: {len(outputs)} output file(s) in "
                     f"{len(runs - {'results'})} run folder(s), {len(results)} merged result file(s)")
    else:
        lines.append(f"  container {manifest.container}: gone")
    for folder in manifest.downloads:
        lines.append(f"  downloaded to: {folder}")
    return Outcome(EXIT_OK, tuple(lines))


# ---------------------------------------------------------------------------- --dry-run


def plan(ctx: Context, reducer: bool) -> Outcome:
    """What the script would create and send, built in full but never sent (--dry-run)."""
    settings, ids = ctx.settings, ctx.ids
    if reducer:
        pool, job = cp.reducer_pool(settings, ids), cp.reducer_job(settings, ids)
    else:
        pool, job = cp.worker_pool(settings, ids), cp.worker_job(settings, ids)
        sim, app = settings.sim, settings.app
        with tempfile.TemporaryFile(prefix="batch-sim-") as handle:
            archive = build_archive(sim.local_sim_path, handle,
                                    exclude=(sim.local_results_path, app.local_storage_path),
                                    exclude_files=(app.path,), secrets=app.secrets())
        ctx.ui.info(f"{cp.SIM_ARCHIVE_BLOB} would hold {archive.files} file(s), {archive.size:,} bytes")
    lines = [f"Dry run of {'the reducer' if reducer else 'campaign'} {settings.sim.sim_id} "
             f"({settings.backend} backend): nothing was created, uploaded or sent.",
             f"  container {ids.container}, pool {pool.pool_id}, job {job.job_id}, "
             f"{len(job.tasks)} task(s); {_billing_mode(ctx, job)}"]
    for title, text in ctx.backend.describe(pool, job):
        lines += [f"--- {title}", text]
    return Outcome(EXIT_OK, tuple(lines))
