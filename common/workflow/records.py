"""Opening the campaign's manifest for a script, and refusing to start what would collide.

A script claims the manifest while it runs (common/manifest.py); a second runner on the same
campaign finds the claim, or a job of the campaign still active, and stops at once with exit
2 — before it creates anything — naming the job and the ways on (--attach, --cleanup).
"""
from __future__ import annotations

import os
import shlex
import socket
from contextlib import contextmanager
from typing import Iterator

from common.config.files import display
from common.errors import EXIT_FAILED, EXIT_USAGE, ToolError
from common.manifest import JobRecord, Manifest, ManifestFile, RunClaim, check_belongs, load
from common.model import JobKind, Script
from common.workflow.context import Context, command
from common.workflow.runs import local_runs

ACTIVE = "active"


def existing(ctx: Context) -> ManifestFile:
    """The campaign's manifest, checked; a ToolError when there is none."""
    found = load(ctx.manifest_path)
    if found is None:
        raise ToolError(f"no campaign manifest at {ctx.manifest_path}: nothing to pick up for "
                        f"{ctx.settings.sim.sim_id} (it is written when a campaign starts)")
    belongs(ctx, found)
    ctx.ui.info(f"campaign manifest: {ctx.manifest_path}")
    return ManifestFile(ctx.manifest_path, found, ctx.ui.warn)


def belongs(ctx: Context, manifest: Manifest) -> None:
    """Exit 2 for a manifest of another campaign or backend — saying, for another backend,
    the command that sets the campaign aside so that it can start afresh here."""
    check_belongs(manifest, ctx.manifest_path, ctx.settings.sim.sim_id, ctx.settings.backend,
                  elsewhere=_start_afresh(ctx, manifest))


def _start_afresh(ctx: Context, manifest: Manifest) -> str:
    """How a campaign tried on one backend moves to another: its manifest set aside (nothing
    deleted), and the runs downloaded here moved into replaced-<time>/ by --overwrite."""
    path = ctx.manifest_path
    aside = path.with_name(f"{manifest.sim_id}.{manifest.backend}-{ctx.ids.stamp}.campaign.json")
    move = f"mv {shlex.quote(str(path))} {shlex.quote(str(aside))}"
    folder = ctx.settings.sim.local_results_path
    downloaded = bool(local_runs(folder)) or (folder / "results").exists()
    then = (f", then run it again with --overwrite (the runs in {display(folder)} are moved "
            "into replaced-<time>/ there, never deleted)") if downloaded else ", then run it again"
    return (f"to start it afresh on the {ctx.settings.backend} backend, set the "
            f"{manifest.backend} campaign's manifest aside with `{move}`{then}; or give the "
            "simconfig a new SIM_ID")


def active_jobs(ctx: Context, manifest: Manifest, kind: JobKind | None = None) -> list[JobRecord]:
    """Jobs of the campaign (of `kind`) the service still runs: asked, not assumed."""
    return [job for job in manifest.jobs if (kind is None or job.kind == kind)
            and not job.job_deleted and ctx.backend.job_state(job.job_id) == ACTIVE]


def refuse_if_busy(ctx: Context, kind: JobKind) -> None:
    """Exit 2, before anything is created, when another script works on the campaign or a job
    of this kind still runs."""
    found = load(ctx.manifest_path)
    if found is None:
        return
    belongs(ctx, found)
    # a runner waits only for the workers; a reducer for anything (the runs must be done)
    running = active_jobs(ctx, found, JobKind.WORKERS if kind is JobKind.WORKERS else None)
    if running:
        job = running[0]
        script = job.kind.script
        raise ToolError(
            f"campaign {found.sim_id}: job {job.job_id} is still running: wait for it with "
            f"`{command(ctx, script, '--attach')}`, or stop it and settle with "
            f"`{command(ctx, script, '--cleanup')}`", exit_code=2)
    busy = [c for c in found.claims if c.script in tuple(Script) and c.alive()]
    if busy:
        claim = busy[0]
        raise ToolError(f"campaign {found.sim_id} is in use by another {claim.script} "
                        f"(pid {claim.pid} on {claim.host}, since {claim.started}): let it "
                        f"finish (`{command(ctx, Script(claim.script), '--status')}` shows where it is), "
                        f"or stop it first", exit_code=2)


@contextmanager
def claimed(ctx: Context, record: ManifestFile, script: str) -> Iterator[None]:
    """This script's claim on the manifest, for as long as it runs (`script`: a Script, or
    what else holds it: "attach", "cleanup"). Inside it something exists already, so an
    error that would say "nothing was created" (exit 2) leaves with exit 1."""
    record.claim(RunClaim(ctx.run_token, os.getpid(), socket.gethostname(), script))
    try:
        yield
    except ToolError as error:
        if error.exit_code != EXIT_USAGE:
            raise
        # exit 2 promises nothing was created: past the claim, the manifest at least was
        raise ToolError(*error.lines, exit_code=EXIT_FAILED) from error
    finally:
        try:
            record.release(ctx.run_token)
        except (OSError, ToolError):
            pass  # a manifest that went away cannot hold a claim either


def open_for_run(ctx: Context) -> ManifestFile:
    """The manifest of a new run (created, or continued for this SIM_ID)."""
    existing_manifest = load(ctx.manifest_path)
    if existing_manifest is not None:
        belongs(ctx, existing_manifest)
    fresh = Manifest(sim_id=ctx.settings.sim.sim_id, backend=ctx.settings.backend,
                     container=ctx.ids.container, simconfig=str(ctx.settings.sim.path))
    record = ManifestFile.open(ctx.manifest_path, fresh, ctx.ui.warn)
    ctx.ui.info(f"campaign manifest: {record.path}")
    return record


def runs_merged(manifest: Manifest) -> bool:
    """Whether a reducer job succeeded after the latest worker job: the merged result is of
    the runs as they are. Runs added, replaced or rerun since (a second campaign of the
    SIM_ID) are not merged yet, and the reducer still needs the container."""
    last_workers = max((n for n, j in enumerate(manifest.jobs) if j.kind is JobKind.WORKERS),
                       default=-1)
    return any(j.kind is JobKind.REDUCER and j.succeeded
               for j in manifest.jobs[last_workers + 1:])
