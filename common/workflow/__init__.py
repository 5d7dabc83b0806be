"""The steps of each script, backend-neutral: upload, pool, job, wait, report, clean up.

`run_simulation` is batch_simulation_runner.py and `run_reducer` is batch_data_reducer.py;
`attach`, `cleanup`, `status` and `rerun_failed` pick a campaign up again from its manifest
(common/manifest.py), which records every effect as it happens; `plan` is --dry-run.
Anything that costs money (job, pool) is offered for deletion on every way out, Ctrl-C and
crashes included; data is deleted only when the user says so and every result has a
verified local copy (or the user confirms the loss at a terminal).

Modules, by concern: context (what every step gets), records (the manifest for a run,
collisions refused), compute (jobs, waiting, failure reports), safety (the way out of a part
with effects), ending (cleanup questions, downloads, summary), runner, reducer, recovery
(--attach, --cleanup, --status), dryrun.
"""
from common.workflow.context import Context, Options, Outcome, Run
from common.workflow.dryrun import plan
from common.workflow.ending import offer_container_deletion
from common.workflow.recovery import attach, cleanup, status
from common.workflow.reducer import run_reducer
from common.workflow.runner import rerun_failed, run_simulation

__all__ = ["Context", "Options", "Outcome", "Run", "attach", "cleanup", "offer_container_deletion",
           "plan", "rerun_failed", "run_reducer", "run_simulation", "status"]
