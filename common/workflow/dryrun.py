"""--dry-run: what a script would create and send, built in full but never sent — and every
refusal the real run would meet, met here the same way (exit 2).

The request bodies (secrets and SAS signatures hidden), the order they would go in — create
the job with onAllTasksComplete noaction, add the tasks, then terminatejob, which is what
makes the job (and its auto pool) end by itself — and where the reducer's code comes from.
Before that, what the real run checks first: the campaign's manifest (another backend,
another SIM_ID, a live claim), runs it would overwrite, a budget it could not enforce. Only
reading is done: storage is asked for the runs only when a manifest says the campaign has
a container; Batch is asked nothing.
"""
from __future__ import annotations

import tempfile
from dataclasses import replace

from common import campaign as cp
from common import merge_tree as mt
from common.errors import EXIT_OK, ToolError
from common.manifest import Manifest, load
from common.model import JobKind, JobSpec, PoolSpec, Script
from common.reducer_source import describe
from common.workflow.context import Context, Outcome, billing_mode, command
from common.workflow.metering import estimate_lines
from common.worker.setup import describe as describe_topas
from common.workflow.shared_data import describe_data, preview
from common.workflow.records import belongs
from common.workflow.runner import pack, runs_in_the_way


def plan(ctx: Context, reducer: bool) -> Outcome:
    settings, ids = ctx.settings, ctx.ids
    tree: list[str] = []
    earlier = _refusals(ctx, reducer)
    if reducer:
        pool, job, tree = _reduction(ctx)
    else:
        pool, job = cp.worker_pool(settings, ids), cp.worker_job(settings, ids)
        job = replace(job, seal=not settings.sim.goals.adaptive, shared_data=preview(ctx))
        with tempfile.TemporaryFile(prefix="batch-sim-") as handle:
            archive = pack(ctx, handle)
        ctx.ui.info(f"{cp.SIM_ARCHIVE_BLOB} would hold {archive.files} file(s), {archive.size:,} bytes")
    lines = [f"Dry run of {'the reducer' if reducer else 'campaign'} {settings.sim.sim_id} "
             f"({settings.backend} backend): nothing was created, uploaded or sent.",
             f"  container {ids.container}, pool {pool.pool_id}, job {job.job_id}, "
             f"{len(job.tasks)} task(s); {billing_mode(ctx, job)}"]
    if reducer:
        lines.append(f"  reducer code: {describe(settings)}")
        lines += tree
    else:
        seconds = tuple(s for j in (earlier.jobs if earlier else ()) for s in j.task_seconds)
        lines += estimate_lines(ctx, seconds)
        lines += describe_data(ctx) + describe_topas(settings)
    for title, text in ctx.backend.describe(pool, job):
        lines += [f"--- {title}", text]
    return Outcome(EXIT_OK, tuple(lines))


def _reduction(ctx: Context) -> tuple[PoolSpec, JobSpec, list[str]]:
    """The reducer's pool and job for the runs the campaign expects (its manifest's, else the
    simconfig's task indices: the real reducer looks at storage), and what the tree will be."""
    settings, ids = ctx.settings, ctx.ids
    earlier = load(ctx.manifest_path) if ctx.manifest_path.exists() else None
    expected = sorted({i for j in (earlier.jobs if earlier else ()) if j.kind is JobKind.WORKERS
                       for i in j.task_indices})
    runs = tuple(expected) or tuple(settings.sim.task_indices)
    source = "the manifest expects" if expected else "the simconfig names (TASK_COUNT)"
    plan = mt.wanted_plan(settings, runs, ctx.backend.capabilities.task_dependencies)
    job = mt.reduction_job(settings, ids, plan, (), cp.merge_options(settings, ctx.options.allow_inconsistent))
    if plan is None:
        return cp.reducer_pool(settings, ids), job, [
            f"  one reducer task merges all {len(runs)} runs {source} "
            f"(REDUCER_FAN_IN {settings.sim.reducer_fan_in})"]
    nodes = mt.node_count(plan, settings.sim.reducer_node_count)
    first = {t.task_id for t in plan.tasks if t.number == 1}  # one task of each level first
    shown = tuple(t for t in job.tasks if t.task_id in first) + tuple(
        t for t in job.tasks if t.task_id not in first)
    return cp.reducer_pool(settings, ids, nodes), replace(job, tasks=shown), [
        f"  the merge of the {len(runs)} runs {source} runs as {plan.text(nodes)}; "
        f"partial merges go to {mt.PARTIALS_PREFIX}<level>-<n>/ and leave storage once the "
        "result is verified"]


def _refusals(ctx: Context, reducer: bool) -> Manifest | None:
    """The real run's first checks, read-only; returns the campaign's manifest, if any."""
    earlier = load(ctx.manifest_path)
    script = Script.REDUCER if reducer else Script.RUNNER
    if earlier is not None:
        belongs(ctx, earlier)
        busy = [c for c in earlier.claims if c.script in tuple(Script) and c.alive()]
        if busy:
            claim = busy[0]
            raise ToolError(f"campaign {earlier.sim_id} is in use by another {claim.script} "
                            f"(pid {claim.pid} on {claim.host}): the real run would stop here; "
                            f"`{command(ctx, script, '--status')}` shows where it is", exit_code=2)
    if not reducer:  # storage is asked only where the manifest says there is a container
        asked = earlier is not None and not earlier.container_deleted
        runs_in_the_way(ctx, ctx.backend.blob_store(ctx.ids.container) if asked else None,
                        tuple(ctx.settings.sim.task_indices))
    return earlier
