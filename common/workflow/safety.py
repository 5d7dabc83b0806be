"""Every way out of a part with effects offers to stop what bills — and deletes no data.

`guarded` runs a part; on Ctrl-C or any error it first offers to delete this run's jobs and
their pools (which cost money), notes it in the manifest, then lets the first error be the
one shown. SIGTERM and SIGHUP (common/signals.py) are noted too, but nobody is there to
answer: nothing is deleted, the tasks keep running, and --attach or --cleanup take it up.

Guards nest (a whole run is guarded, and so is each of its parts): an error is settled by
the innermost guard only, so the question is asked once. Exit code 2 promises that nothing
was created or deleted, so an error of that kind met inside a guard — a manifest replaced
while the job ran, a setting found wrong only by the tasks' outputs — leaves with exit 1.
The guard itself never depends on the manifest being writable: what bills is deleted even
when the deletion cannot be recorded.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from common.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, ToolError
from common.manifest import JobRecord, ManifestFile
from common.model import JobKind
from common.signals import Terminated
from common.workflow.context import Run, command
from common.workflow.metering import BudgetReached

T = TypeVar("T")
_SETTLED = "_settled_by_a_guard"


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
    ctx = run.ctx
    text = _names(jobs)
    # Only where a pool bills is that the reason to say yes (the local backend: it does not).
    reason = " (a pool costs money while it exists)" if ctx.backend.capabilities.bills else \
        f" (its tasks stop; nothing bills on the {ctx.backend.name} backend)"
    if not ctx.prompter.confirm(f"{why}Delete {text}{reason}?", True):
        script = jobs[0].kind.script
        bills = "it bills while its pool exists; " if ctx.backend.capabilities.bills else ""
        ctx.ui.warn(f"kept {text}: its tasks keep running and {bills}wait for it with "
                    f"`{command(ctx, script, '--attach')}` or delete it with "
                    f"`{command(ctx, script, '--cleanup')}`")
        note(run, f"kept {text}")
        return False
    for job in jobs:
        delete_compute(run, job)
    ctx.ui.info(f"deleted {text}")
    return True


def delete_compute(run: Run, job: JobRecord) -> None:
    """Delete the job and (unless another job of ours uses it) its named pool. The service
    is told first; the manifest is told after, as far as it can be."""
    ctx, record = run.ctx, run.record
    if not job.job_deleted:
        ctx.backend.delete_job(job.job_id)
        _record(run, lambda: record.change_job(
            job.job_id, job_deleted=True, pool_deleted=job.auto_pool or job.pool_deleted))
    if job.pool_id and not job.pool_deleted and not job.auto_pool:
        others = [j for j in record.manifest.open_jobs()
                  if j.pool_id == job.pool_id and j.job_id != job.job_id and not j.job_deleted]
        if not others:  # a shared named pool stays while another job of ours still uses it
            ctx.backend.delete_pool(job.pool_id)
            for same in record.manifest.jobs:
                if same.pool_id == job.pool_id:
                    _record(run, lambda: record.change_job(same.job_id, pool_deleted=True))


def _record(run: Run, write: Callable[[], None]) -> None:
    """A change of the manifest that must not stop what the guard does (the manifest may be
    what went wrong): said, not raised."""
    try:
        write()
    except (ToolError, OSError) as error:
        text = error.lines[0] if isinstance(error, ToolError) else str(error)
        run.ctx.ui.warn(f"the manifest could not record it ({text})")


def note(run: Run, event: str) -> None:
    _record(run, lambda: run.record.note(event))


def _first_guard(error: BaseException) -> bool:
    """True the first time a guard meets this error (an outer guard lets it pass)."""
    if getattr(error, _SETTLED, False):
        return False
    try:
        setattr(error, _SETTLED, True)
    except AttributeError:  # an exception type without a __dict__: settle it every time
        pass
    return True


def _settled(error: ToolError) -> ToolError:
    setattr(error, _SETTLED, True)
    return error


def guarded(run: Run, only: set[str] | None, body: Callable[[], T]) -> T:
    """Run a part with effects; on any way out but success, first offer to delete the jobs
    named in `only` (this run's; None: every job of the kind) and their pools. Data is
    never deleted here."""
    ctx, kind = run.ctx, run.kind
    try:
        return body()
    except Terminated as stop:
        if _first_guard(stop):
            note(run, f"stopped by {stop.signal_name}: nothing deleted")
            left = costly(run.record, kind, only)
            if left:
                ctx.ui.warn(f"{stop.signal_name}: {_names(left)} keep(s) running; take it up "
                            f"later with `{command(ctx, kind.script, '--attach')}` or "
                            f"`{command(ctx, kind.script, '--cleanup')}`")
        raise
    except BudgetReached as budget:
        if _first_guard(budget):
            note(run, "stopped: MAX_COST reached")
            offer_compute_deletion(run, costly(run.record, kind, only), "The budget is reached. ")
        raise
    except KeyboardInterrupt:
        note(run, "interrupted")
        _interrupted(run, only)
        raise _settled(ToolError("interrupted; no data was deleted",
                                 exit_code=EXIT_INTERRUPTED)) from None
    except Exception as error:
        if not _first_guard(error):
            raise
        note(run, f"stopped by an error: {error.__class__.__name__}")
        try:
            offer_compute_deletion(run, costly(run.record, kind, only),
                                   "The campaign stopped with an error. ")
        except KeyboardInterrupt:
            _still_running(run, only)
        except Exception as also:  # the first error is the one to show; this one is said too
            ctx.ui.warn(f"could not delete what bills ({also}): check with "
                        f"`{command(ctx, kind.script, '--status')}`, settle with "
                        f"`{command(ctx, kind.script, '--cleanup')}`")
        if isinstance(error, ToolError) and error.exit_code == EXIT_USAGE:
            # exit 2 says nothing was created: not so once a guard is needed
            raise _settled(ToolError(*error.lines, exit_code=EXIT_FAILED)) from error
        raise


def _interrupted(run: Run, only: set[str] | None) -> None:
    jobs = costly(run.record, run.kind, only)
    if not jobs:
        return
    try:
        offer_compute_deletion(run, jobs, "Interrupted. ")
    except KeyboardInterrupt:  # a second Ctrl-C: leave at once, but say what is left
        _still_running(run, only)
        raise _settled(ToolError("interrupted twice; nothing was deleted",
                                 exit_code=EXIT_INTERRUPTED)) from None


def _still_running(run: Run, only: set[str] | None) -> None:
    left = costly(run.record, run.kind, only)
    if left:
        bills = ", and billing while its pool exists" if run.ctx.backend.capabilities.bills else ""
        run.ctx.ui.warn(f"still running{bills}: {_names(left)}; "
                        f"remove it with `{command(run.ctx, run.script, '--cleanup')}`")
