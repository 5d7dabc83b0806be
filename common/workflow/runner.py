"""batch_simulation_runner.py: pack and upload the simulation, run one task per index, wait,
report, ask the cleanup questions — and --rerun-failed.

Before it creates anything the runner refuses (exit 2) what would collide: another runner on
the campaign, a job of it still running, or runs that already exist (a changed parameter
would silently overwrite them) unless --overwrite is given or STARTING_NODE adds new ones.
When runs are added or replaced, the old merged result no longer describes them: it is
removed from storage and set aside locally, never left beside the new runs.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from common import campaign as cp
from common.backends.base import BlobStore
from common.errors import EXIT_OK, ToolError, usage_error
from common.config.files import display
from common.manifest import load
from common.model import BlobInfo, JobKind, JobSpec, Script, TaskCounts
from common.packaging import Archive, build_archive
from common.transfer import download_prefix, is_verified, local_path, upload_if_changed
from common.worker.setup import notes as topas_notes
from common.workflow.compute import start_job, wait
from common.workflow.context import Context, Outcome, Run, command
from common.workflow.ending import finish
from common.workflow.metering import Metering, start_metering
from common.workflow.records import claimed, existing, open_for_run, refuse_if_busy
from common.ui import runs_text
from common.workflow.runs import (holder_of, local_runs, recorded_failures, run_index,
                                  stored_runs, unfinished)
from common.workflow.safety import guarded
from common.workflow.shared_data import check_data, stage_data


def run_simulation(ctx: Context) -> Outcome:
    settings, ids, sim = ctx.settings, ctx.ids, ctx.settings.sim
    ctx.ui.step(f"Campaign {sim.sim_id}: {sim.task_count} task(s) on {sim.pool_node_count} "
                f"node(s), {settings.backend} backend")
    if sim.goals.adaptive and not ctx.backend.capabilities.adds_tasks:
        raise usage_error(f"{sim.path.name}: TARGET_UNCERTAINTY_PERCENT: the {ctx.backend.name} "
                          "backend cannot add tasks to a running job, which a campaign aimed at "
                          "an uncertainty needs: remove the key and set TASK_COUNT, or use "
                          "another backend")
    refuse_if_busy(ctx, JobKind.WORKERS)
    for note in topas_notes(settings):
        ctx.ui.info(note)
    metering = start_metering(ctx)  # a budget it could not enforce is refused here
    store = ctx.backend.blob_store(ids.container)
    replaced = runs_in_the_way(ctx, store, tuple(sim.task_indices))
    with tempfile.TemporaryFile(prefix="batch-sim-") as handle:
        archive = pack(ctx, handle)  # refuses (exit 2) before the manifest or anything exists
        data = check_data(ctx)  # the Geant4 data too
        run = Run(ctx, store, open_for_run(ctx), JobKind.WORKERS)
        job = cp.worker_job(settings, ids)

        def simulate() -> Outcome:
            guarded(run, set(), lambda: upload_simulation(run, handle, archive))
            shared = guarded(run, set(), lambda: stage_data(run, data))
            set_aside_old_results(run, replaced)
            staged = replace(job, shared_data=shared)
            if sim.goals.adaptive:
                return run_adaptive_job(run, replace(staged, seal=False), metering)
            return run_worker_job(run, staged, metering)
        with claimed(ctx, run.record, Script.RUNNER):
            # everything after the first effect: any error is settled as Ctrl-C is (exit 1)
            return guarded(run, {job.job_id}, simulate)


def run_worker_job(run: Run, job: JobSpec, metering: Metering | None = None) -> Outcome:
    ctx, record = run.ctx, run.record
    pool = cp.worker_pool(ctx.settings, ctx.ids)

    _keep_usage(run, job.job_id, metering)

    def compute() -> TaskCounts | None:
        start_job(run, pool, job)
        return wait(ctx, job.job_id, len(job.tasks), record.manifest.job(job.job_id).pool_id,
                    metering=metering)
    counts = guarded(run, {job.job_id}, compute)
    return finish(run, record.manifest.job(job.job_id), counts, metering=metering)


def run_adaptive_job(run: Run, job: JobSpec, metering: Metering | None = None,
                     started: bool = False) -> Outcome:
    """The first wave, then waves until the target uncertainty (common/workflow/adaptive.py);
    `started`: the job exists already (--attach picks it up)."""
    from common.workflow.adaptive import AdaptiveSteering, target_of
    from common.workflow.convergence import conclude
    ctx, record = run.ctx, run.record
    goals = ctx.settings.sim.goals
    steering = AdaptiveSteering(run, job, target_of(ctx), ctx.settings.sim.task_count,
                                goals.target_scorer)
    _keep_usage(run, job.job_id, metering)

    def compute() -> TaskCounts | None:
        if not started:
            start_job(run, cp.worker_pool(ctx.settings, ctx.ids), job)
        counts = wait(ctx, job.job_id, len(job.tasks), record.manifest.job(job.job_id).pool_id,
                      metering=metering, steering=steering)
        steering.seal()  # nothing more will come: the job (and its auto pool) may end
        return counts
    counts = guarded(run, {job.job_id}, compute)
    verdict = guarded(run, {job.job_id}, lambda: conclude(run, steering))
    return finish(run, record.manifest.job(job.job_id), counts, metering=metering, verdict=verdict)


def _keep_usage(run: Run, job_id: str, metering: Metering | None) -> None:
    """While the job runs, the manifest holds its node-hours and cost (for --status)."""
    if metering is not None:
        metering.on_sample = lambda m: run.record.change_job(
            job_id, node_hours=(round(m.hours().dedicated, 6), round(m.hours().spot, 6)),
            cost=m.meter.cost(), currency=m.currency)


def pack(ctx: Context, handle: BinaryIO) -> Archive:
    sim, app = ctx.settings.sim, ctx.settings.app
    ctx.step("pack", f"Packing {sim.local_sim_path}")
    # An anonymous file: nothing is left in the temporary folder whatever kills the process.
    # Refuses (exit 2) links leaving the folder, FIFOs, unreadable files and secrets.
    archive = build_archive(sim.local_sim_path, handle,
                            exclude=(sim.local_results_path, app.local_storage_path)
                            + ((app.geant4_data_dir,) if app.geant4_data_dir else ()),
                            exclude_files=(app.path,), secrets=app.secrets())
    ctx.ui.info(f"{archive.files} file(s), {archive.size:,} bytes")
    return archive


def upload_simulation(run: Run, handle: BinaryIO, archive: Archive) -> None:
    ctx, store = run.ctx, run.store
    ctx.step("upload", f"Uploading to container {store.container} ({store.location})")
    if store.create():
        ctx.ui.info(f"created container {store.container}")
    upload(run, handle, cp.SIM_ARCHIVE_BLOB, archive.size)
    upload(run, ctx.settings.sim.path, cp.SIMCONFIG_BLOB)


def upload(run: Run, source: Path | BinaryIO, blob: str, size: int | None = None) -> None:
    ctx, store = run.ctx, run.store
    run.record.uploaded(blob)  # before the effect: a crash mid-upload still leaves it on record
    if size is None and isinstance(source, Path):
        size = source.stat().st_size
    if upload_if_changed(store, source, blob):
        ctx.ui.info(f"uploaded {blob} ({size:,} bytes)")
    else:
        ctx.ui.info(f"{blob} is unchanged in storage: nothing uploaded")


# ---------------------------------------------------------------------------- runs in the way


def runs_in_the_way(ctx: Context, store: BlobStore | None, indices: tuple[int, ...]) -> list[int]:
    """The runs this campaign would overwrite; exit 2 unless --overwrite allows it. `store`
    None: the local results folder only (a dry run with no container to ask)."""
    stored = stored_runs(store).any if store is not None else frozenset()
    folder = ctx.settings.sim.local_results_path
    here = local_runs(folder)
    existing_runs = stored | here
    colliding = sorted(existing_runs & set(indices))
    if colliding and not ctx.options.overwrite:
        raise ToolError(_collision(ctx, store, colliding, sorted(stored & set(colliding)),
                                   max(existing_runs) + 1), exit_code=2)
    return colliding if existing_runs else []


def _collision(ctx: Context, store: BlobStore | None, colliding: list[int], in_storage: list[int],
               next_free: int) -> str:
    """Whose runs are in the way, and every way on."""
    sim, name = ctx.settings.sim, ctx.settings.sim.sim_id
    folder = display(sim.local_results_path)
    record = load(ctx.manifest_path)
    ours = record is not None and str(sim.local_results_path) in record.downloads
    holder = None if in_storage or ours else holder_of(sim.local_results_path,
                                                       ctx.manifest_path.parent, name)
    if in_storage:
        where = f"campaign {name} already has {runs_text(colliding)} (container {ctx.ids.container}" \
                + (f" and {folder})" if set(colliding) - set(in_storage) else ")")
    elif ours:
        where = f"campaign {name} already has {runs_text(colliding)} (downloaded to {folder})"
    else:
        whose = f" of campaign {holder}" if holder else ""
        where = f"the results folder {folder} already holds {runs_text(colliding)}{whose}"
    ways = ["pass --overwrite to replace them (their copies are moved aside, never deleted)",
            f"set STARTING_NODE to {next_free} in the simconfig to add new runs"]
    if holder:
        ways.insert(0, "give this campaign a results folder of its own (LOCAL_RESULTS_PATH)")
    asked = record is not None and store is not None and store.exists()
    missing = unfinished(record, stored_runs(store)) if asked else set()
    if missing:
        ways.insert(0, f"finish the {len(missing)} run(s) that never finished "
                       f"({runs_text(missing)}) with `{command(ctx, Script.RUNNER, '--rerun-failed')}`")
    return f"{where}: running again would overwrite them: " + "; or ".join(ways)


def set_aside_old_results(run: Run, replaced: list[int]) -> None:
    """Runs replaced (--overwrite) go; a merged result of the earlier runs no longer describes
    the campaign: both leave storage and are moved aside here — every stored file downloaded
    and verified first, or nothing is deleted — never deleted locally."""
    ctx, store, record = run.ctx, run.store, run.record
    set_aside_merged_result(run)
    local = ctx.settings.sim.local_results_path
    old = [p for p in (local / f"run{i}" for i in replaced) if p.exists()]
    aside = _aside(ctx) if old else None
    for path in old:
        shutil.move(str(path), str(aside / path.name))
    blobs = _stored_blobs(store, set(replaced))
    if blobs:
        aside = aside or _aside(ctx)
        _keep_copies(run, blobs, aside)
        store.delete_blobs([b.name for b in blobs])
        record.note(f"removed {len(blobs)} blob(s) of replaced runs, kept in {aside}")
        ctx.ui.info(f"removed the replaced runs from storage ({len(blobs)} file(s)) after "
                    f"downloading and verifying a copy")
    if aside is not None:
        ctx.ui.info(f"the replaced runs ({runs_text(replaced)}) were moved aside: {aside}")


def _stored_blobs(store: BlobStore, indices: set[int]) -> list[BlobInfo]:
    """The blobs of these runs, from one listing."""
    if not indices or not store.exists():
        return []
    return [b for b in store.list_blobs(cp.OUTPUT_PREFIX + "run")
            if run_index(b.name[len(cp.OUTPUT_PREFIX):].partition("/")[0]) in indices]


def _keep_copies(run: Run, blobs: list[BlobInfo], aside: Path) -> None:
    """A verified copy of every stored file of the replaced runs in `aside`, beside the local
    copies moved there (in from-storage/ where a local copy differs); ToolError before
    anything is deleted if one cannot be made."""
    missing = [b for b in blobs if not is_verified(b, local_path(aside, b.name, cp.OUTPUT_PREFIX))]
    local = {b.name for b in missing
             if (aside / b.name[len(cp.OUTPUT_PREFIX):].partition("/")[0]).exists()}
    for target, names in ((aside / "from-storage", local),
                          (aside, {b.name for b in missing} - local)):
        if not names:
            continue
        report = download_prefix(run.store, cp.OUTPUT_PREFIX + "run", target, cp.OUTPUT_PREFIX,
                                 select=lambda b, chosen=names: b.name in chosen)
        if not report.ok:
            name, why = report.failed[0]
            raise ToolError(f"could not keep a copy of {name[len(cp.OUTPUT_PREFIX):]} ({why}) "
                            "before replacing it; nothing was deleted from storage")


def set_aside_merged_result(run: Run) -> None:
    """An earlier merged result describes the runs as they were, and a new merge writes file
    by file: whatever the new one does not write would stay beside it and pass for part of
    it. So it leaves storage and the local results/ folder before anything new is made —
    kept in replaced-<time>/results/, from a verified download, before any blob is deleted."""
    ctx, store, record = run.ctx, run.store, run.record
    blobs = store.list_blobs(cp.RESULTS_PREFIX) if store.exists() else []
    local = ctx.settings.sim.local_results_path / "results"
    if not blobs and not local.exists():
        return
    aside = _aside(ctx)
    if local.exists():
        shutil.move(str(local), str(aside / "results"))
    if blobs:
        report = download_prefix(store, cp.RESULTS_PREFIX, aside, cp.OUTPUT_PREFIX)
        if not report.ok:
            name, why = report.failed[0]
            raise ToolError(f"could not keep a copy of the earlier merged result ({name}: {why}); "
                            f"it stays in storage and nothing was deleted")
        store.delete_blobs([b.name for b in blobs])
        record.note(f"moved the earlier merged result ({len(blobs)} blob(s)) out of storage "
                    f"to {aside}")
    ctx.ui.info(f"the earlier merged result was moved aside (a new one replaces it): {aside}")


def _aside(ctx: Context) -> Path:
    aside = ctx.settings.sim.local_results_path / f"replaced-{ctx.ids.stamp}"
    aside.mkdir(parents=True, exist_ok=True)
    return aside


# ---------------------------------------------------------------------------- --rerun-failed


def rerun_failed(ctx: Context) -> Outcome:
    """Resubmit the tasks of the campaign whose runs are not there: failed (or succeeded
    without their outputs), or never finished (the job was stopped by Ctrl-C, --cleanup or
    the timeout) — same index and seed, new task ids."""
    record = existing(ctx)
    manifest = record.manifest
    last = manifest.latest(JobKind.WORKERS)
    if last is None:
        raise ToolError(f"campaign {ctx.settings.sim.sim_id} has no worker job to rerun")
    refuse_if_busy(ctx, JobKind.WORKERS)
    store = ctx.backend.blob_store(manifest.container)
    if not store.exists():
        raise ToolError(f"container {store.container} is gone: run the campaign again")
    failed = recorded_failures(manifest)
    if ctx.backend.job_state(last.job_id) is not None:  # the live answer, if the job is still there
        live = {f.task_id for f in ctx.backend.task_failures(last.job_id)}
        failed |= {i for t, i in zip(last.task_ids, last.task_indices) if t in live}
    never = unfinished(manifest, stored_runs(store)) - failed
    indices = tuple(sorted(failed | never))
    if not indices:
        return Outcome(EXIT_OK, (f"Every run of campaign {ctx.settings.sim.sim_id} has its "
                                 "outputs: nothing to rerun.",))
    retry = sum(1 for j in manifest.jobs if j.kind is JobKind.WORKERS)  # the first was 0
    parts = ([f"failed: {runs_text(failed)}"] if failed else []) + \
        ([f"never finished: {runs_text(never)}"] if never else [])
    ctx.ui.step(f"Rerunning {len(indices)} task(s) of {ctx.settings.sim.sim_id} "
                f"({'; '.join(parts)}): " + ", ".join(f"task-{i}" for i in indices))
    job = cp.worker_job(ctx.settings, ctx.ids, indices=indices, retry=retry)
    metering = start_metering(ctx)
    data = check_data(ctx)
    run = Run(ctx, store, record, JobKind.WORKERS)
    with claimed(ctx, record, Script.RUNNER):
        def rerun() -> Outcome:
            set_aside_old_results(run, [])
            shared = guarded(run, set(), lambda: stage_data(run, data))
            return run_worker_job(run, replace(job, shared_data=shared), metering)
        return guarded(run, {job.job_id}, rerun)
