"""batch_data_reducer.py: one reducer task — or, for the built-in merge of many runs, a
tree of them (common/merge_tree.py, common/workflow/tree.py) — merges the campaign's runs
into nodes_output/results/, then the cleanup questions.

It never merges a campaign that is not done: while a worker job still runs it refuses (exit
2); when runs the manifest expects are missing or failed it stops (exit 1) naming them,
unless --allow-partial asks to merge what is there — and then the summary says which runs
are in. Run folders holding nothing but logs (failed tasks) are left out of the merge.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import campaign as cp
from common import merge_tree as mt
from common.backends.base import BlobStore
from common.errors import ToolError
from common.manifest import JobRecord, Manifest, load
from common.model import JobKind, Script, TaskCounts
from common.reducer_source import build_reducer_archive, describe
from common.workflow.compute import LOG_NAMES, start_job, wait
from common.workflow.context import Context, Outcome, Run, command
from common.workflow.ending import finish
from common.workflow.records import claimed, open_for_run, refuse_if_busy
from common.ui import runs_text
from common.workflow.runner import set_aside_merged_result, upload
from common.workflow.safety import guarded
from common.workflow.tree import TreeSteering, is_tree, remove_stale_partials, settle


@dataclass(frozen=True)
class Runs:
    """The run folders in storage, and which of them the merge takes."""

    complete: tuple[int, ...]  # hold outputs, not only logs
    incomplete: tuple[int, ...]  # logs only: their task failed
    missing: tuple[int, ...]  # expected (the manifest) but not in storage at all


def survey(store: BlobStore, manifest: Manifest | None) -> Runs:
    outputs: dict[int, bool] = {}
    for blob in store.list_blobs(cp.OUTPUT_PREFIX):
        head, _, rest = blob.name[len(cp.OUTPUT_PREFIX):].partition("/")
        if head.startswith("run") and head[3:].isdigit():
            index = int(head[3:])
            outputs[index] = outputs.get(index, False) or rest not in LOG_NAMES
    expected = {i for j in (manifest.jobs if manifest else ()) if j.kind is JobKind.WORKERS
                for i in j.task_indices}
    return Runs(complete=tuple(sorted(i for i, has in outputs.items() if has)),
                incomplete=tuple(sorted(i for i, has in outputs.items() if not has)),
                missing=tuple(sorted(expected - set(outputs))))


def check_runs(ctx: Context, store: BlobStore, runs: Runs) -> None:
    name = ctx.settings.sim.sim_id
    if not store.exists():
        raise ToolError(f"container {store.container} does not exist on the {ctx.backend.name} "
                        f"backend: run `{command(ctx, Script.RUNNER)}` first")
    if not runs.complete:
        raise ToolError(f"container {store.container} holds no task outputs under "
                        f"{cp.OUTPUT_PREFIX}run*/: run `{command(ctx, Script.RUNNER)}` for {name} first")
    absent = sorted(set(runs.incomplete) | set(runs.missing))
    if absent and not ctx.options.allow_partial:
        why = []
        if runs.incomplete:
            why.append(f"failed (logs only): {runs_text(runs.incomplete)}")
        if runs.missing:
            why.append(f"never stored: {runs_text(runs.missing)}")
        raise ToolError(f"campaign {name}: {len(absent)} run(s) have no outputs — "
                        f"{'; '.join(why)}: rerun them with `{command(ctx, Script.RUNNER, '--rerun-failed')}`, "
                        "or merge the others with --allow-partial")


def histories_option(ctx: Context, manifest: Manifest | None, merged: tuple[int, ...]) -> tuple[str, ...]:
    """`--histories N` when every run merged was told the same N (the manifest's record of
    what its parameter files said): scorers whose files report no histories get it (a
    file's own Histories_with_Scorer_Active always wins)."""
    told: dict[int, int | None] = {}
    for job in manifest.jobs if manifest else ():
        if job.kind is JobKind.WORKERS:
            for index in job.task_indices:  # a later job (a rerun) replaces an earlier run
                told[index] = job.setup.histories if job.setup else None
    values = {told.get(i) for i in merged}
    if len(values) != 1 or None in values:
        return ()
    histories = values.pop()
    ctx.ui.info(f"each run was told {histories:,} histories (manifest): the merge counts them "
                "for scorers whose files do not report their histories")
    return ("--histories", str(histories))


def merge_options(ctx: Context, manifest: Manifest | None = None, merged: tuple[int, ...] = ()
                  ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the options of the merge that writes results/, those of a tree's partial merges):
    --histories N at every level when every run merged was told N; the runs' test, with
    --allow-inconsistent and an adaptive campaign's target, only where results/ is made."""
    histories = histories_option(ctx, manifest, merged)
    return cp.merge_options(ctx.settings, ctx.options.allow_inconsistent) + histories, histories


def run_reducer(ctx: Context) -> Outcome:
    settings, ids = ctx.settings, ctx.ids
    refuse_if_busy(ctx, JobKind.REDUCER)
    store = ctx.backend.blob_store(ids.container)
    manifest = load(ctx.manifest_path)
    runs = survey(store, manifest)
    check_runs(ctx, store, runs)
    ctx.ui.step(f"Reducing {len(runs.complete)} run folder(s) of campaign {settings.sim.sim_id} "
                f"with {describe(settings)}")
    plan = mt.wanted_plan(settings, runs.complete, ctx.backend.capabilities.task_dependencies)
    job = mt.reduction_job(settings, ids, plan, runs.incomplete,
                           *merge_options(ctx, manifest, runs.complete))
    nodes = mt.node_count(plan, settings.sim.reducer_node_count) if plan else 1
    if plan is not None:
        ctx.ui.info(f"the merge runs as {plan.text(nodes)}")
    run = Run(ctx, store, open_for_run(ctx), JobKind.REDUCER)
    record = run.record
    with claimed(ctx, record, Script.REDUCER):
        set_aside_merged_result(run)
        remove_stale_partials(run)

        def compute() -> tuple[TaskCounts | None, TreeSteering | None]:
            upload_reducer(run)
            start_job(run, cp.reducer_pool(settings, ids, nodes), job,
                      task_runs=tuple(t.runs for t in plan.tasks) if plan else ())
            return wait_for(run, record.manifest.job(job.job_id))
        counts, steering = guarded(run, {job.job_id}, compute)
        left_out = sorted(set(runs.incomplete) | set(runs.missing))
        extra = (f"  runs merged: {runs_text(runs.complete)}"
                 + (f"; left out (--allow-partial): {runs_text(left_out)}" if left_out else ""),)
        return finish_reduction(run, record.manifest.job(job.job_id), counts, steering, extra)


def wait_for(run: Run, job: JobRecord, removed: set[str] | None = None
             ) -> tuple[TaskCounts | None, TreeSteering | None]:
    """Until the reducer's tasks are done; a tree's blocked tasks leave the job on the way
    (`removed`: those that left it before, when --attach picks the tree up)."""
    steering = TreeSteering(run, job, removed=set(removed or ())) if is_tree(job) else None
    return wait(run.ctx, job.job_id, len(job.task_ids), job.pool_id, steering=steering), steering


def finish_reduction(run: Run, job: JobRecord, counts: TaskCounts | None,
                     steering: TreeSteering | None, extra: tuple[str, ...] = ()) -> Outcome:
    """The summary and the cleanup questions; a tree settled first (its partial merges)."""
    if is_tree(job):
        extra += guarded(run, {job.job_id}, lambda: settle(run, job, counts, steering))
    return finish(run, run.record.manifest.job(job.job_id), counts,
                  show_log=lambda: show_reducer_log(run), extra=extra)


def upload_reducer(run: Run) -> None:
    ctx, store = run.ctx, run.store
    with tempfile.TemporaryDirectory(prefix="batch-reducer-") as tmp:
        archive = build_reducer_archive(ctx.settings, Path(tmp))
        ctx.step("upload", f"Uploading the reducer ({archive.files} file(s)) to container {store.container}")
        assert archive.path is not None
        upload(run, archive.path, cp.REDUCER_ARCHIVE_BLOB)
    upload(run, ctx.settings.sim.path, cp.SIMCONFIG_BLOB)


def show_reducer_log(run: Run) -> None:
    text = run.store.read_tail(f"{cp.RESULTS_PREFIX}reducer_stdout.txt").strip()
    for line in text.splitlines()[-20:]:
        run.ctx.ui.info(f"| {line}")
