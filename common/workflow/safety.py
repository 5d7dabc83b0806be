"""Every way out of a part with effects offers to stop what bills — and deletes no data.

`guarded` runs a part; on Ctrl-C or any error it first offers to delete this run's jobs and
their pools (which cost money), notes it in the manifest, then lets the first error be the
one shown. SIGTERM and SIGHUP (common/signals.py) are noted too, but nobody is there to
answer: nothing is deleted, the tasks keep running, and --attach or --cleanup take it up.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from common.errors import EXIT_INTERRUPTED, ToolError
from common.manifest import JobRecord, ManifestFile
from common.model import JobKind
from common.signals import Terminated
from common.workflow.context import Run, command
from common.workflow.metering import BudgetReached

T = TypeVar("T")


def costly(record: ManifestFile, kind: JobKind, only: set[str] | None = None) -> list[JobRecord]:
    """Open jobs of this kind (only those named in `only`, when given): what may still bill."""
    return [j for j in record.manifest.open_jobs()
            if j.kind == kind and (only is None or j.job_id in only)]


def _names(jobs: list[JobRecord]) -> str:
    names = []
    for job in jobs:
        if not job.job_deleted:
            names.append(f"job {job.job_id}" + (" with its pool" if job.auto_pool else ""))
        if job.pool_id and not job.pool_deleted and not job.auto_pool:
            names.append(f"pool {job.pool_id}")
    return " and ".join(dict.fromkeys(names))


def offer_compute_deletion(run: Run, jobs: list[JobRecord], why: str = "") -> bool:
    """One question for everything of this run that may bill; True when it is all deleted."""
    if not jobs:
        return True
    ctx, record = run.ctx, run.record
    text = _names(jobs)
    if not ctx.prompter.confirm(f"{why}Delete {text} (a pool costs money while it exists)?", True):
        script = jobs[0].kind.script
        ctx.ui.warn(f"kept {text}: its tasks keep running and it bills while its pool exists; "
                    f"wait for it with `{command(ctx, script, '--attach')}` or delete it with "
                    f"`{command(ctx, script, '--cleanup')}`")
        record.note(f"kept {text}")
        return False
    for job in jobs:
        delete_compute(run, job)
    ctx.ui.info(f"deleted {text}")
    return True


def delete_compute(run: Run, job: JobRecord) -> None:
    ctx, record = run.ctx, run.record
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


def guarded(run: Run, only: set[str], body: Callable[[], T]) -> T:
    """Run a part with effects; on any way out but success, first offer to delete the jobs
    named in `only` (this run's) and their pools. Data is never deleted here."""
    ctx, record, kind = run.ctx, run.record, run.kind
    try:
        return body()
    except Terminated as stop:
        record.note(f"stopped by {stop.signal_name}: nothing deleted")
        left = costly(record, kind, only)
        if left:
            ctx.ui.warn(f"{stop.signal_name}: {_names(left)} keep(s) running; take it up later with "
                        f"`{command(ctx, kind.script, '--attach')}` or `--cleanup`")
        raise
    except BudgetReached:
        record.note("stopped: MAX_COST reached")
        offer_compute_deletion(run, costly(record, kind, only), "The budget is reached. ")
        raise
    except KeyboardInterrupt:
        record.note("interrupted")
        _interrupted(run, only)
        raise ToolError("interrupted; no data was deleted", exit_code=EXIT_INTERRUPTED) from None
    except Exception as error:
        record.note(f"stopped by an error: {error.__class__.__name__}")
        try:
            offer_compute_deletion(run, costly(record, kind, only),
                                   "The campaign stopped with an error. ")
        except KeyboardInterrupt:
            _still_running(run, only)
        except Exception as also:  # the first error is the one to show; this one is said too
            ctx.ui.warn(f"could not delete what bills ({also}): check with --status, settle "
                        f"with `{command(ctx, kind.script, '--cleanup')}`")
        raise


def _interrupted(run: Run, only: set[str]) -> None:
    jobs = costly(run.record, run.kind, only)
    if not jobs:
        return
    try:
        offer_compute_deletion(run, jobs, "Interrupted. ")
    except KeyboardInterrupt:  # a second Ctrl-C: leave at once, but say what is left
        _still_running(run, only)
        raise ToolError("interrupted twice; nothing was deleted", exit_code=EXIT_INTERRUPTED) from None


def _still_running(run: Run, only: set[str]) -> None:
    left = costly(run.record, run.kind, only)
    if left:
        run.ctx.ui.warn(f"still running, and billing while its pool exists: {_names(left)}; "
                        f"remove it with `{command(run.ctx, run.script, '--cleanup')}`")
