"""--dry-run: what a script would create and send, built in full but never sent.

The request bodies (secrets and SAS signatures hidden), the order they would go in — create
the job with onAllTasksComplete noaction, add the tasks, then terminatejob, which is what
makes the job (and its auto pool) end by itself — and where the reducer's code comes from.
"""
from __future__ import annotations

import tempfile
from dataclasses import replace

from common import campaign as cp
from common.errors import EXIT_OK
from common.manifest import load
from common.reducer_source import describe
from common.workflow.context import Context, Outcome, billing_mode
from common.workflow.metering import estimate_lines
from common.topas_setup import describe as describe_topas
from common.workflow.runner import pack
from common.workflow.shared_data import describe_data, preview


def plan(ctx: Context, reducer: bool) -> Outcome:
    settings, ids = ctx.settings, ctx.ids
    if reducer:
        pool, job = cp.reducer_pool(settings, ids), cp.reducer_job(settings, ids)
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
    else:
        earlier = load(ctx.manifest_path) if ctx.manifest_path.exists() else None
        seconds = tuple(s for j in (earlier.jobs if earlier else ()) for s in j.task_seconds)
        lines += estimate_lines(ctx, seconds)
        lines += describe_data(ctx) + describe_topas(settings)
    for title, text in ctx.backend.describe(pool, job):
        lines += [f"--- {title}", text]
    return Outcome(EXIT_OK, tuple(lines))
