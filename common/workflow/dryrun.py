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
from common.errors import EXIT_OK, ToolError
from common.manifest import Manifest, load
from common.model import Script
from common.reducer_source import describe
from common.workflow.context import Context, Outcome, billing_mode, command
from common.workflow.metering import estimate_lines
from common.workflow.records import belongs
from common.workflow.runner import pack, runs_in_the_way


def plan(ctx: Context, reducer: bool) -> Outcome:
    settings, ids = ctx.settings, ctx.ids
    earlier = _refusals(ctx, reducer)
    if reducer:
        pool, job = cp.reducer_pool(settings, ids), cp.reducer_job(settings, ids)
    else:
        pool, job = cp.worker_pool(settings, ids), cp.worker_job(settings, ids)
        job = replace(job, seal=not settings.sim.goals.adaptive)
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
        seconds = tuple(s for j in (earlier.jobs if earlier else ()) for s in j.task_seconds)
        lines += estimate_lines(ctx, seconds)
    for title, text in ctx.backend.describe(pool, job):
        lines += [f"--- {title}", text]
    return Outcome(EXIT_OK, tuple(lines))


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
