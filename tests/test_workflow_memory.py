"""The workflow's own logic, in-process on the in-memory backend (tests/support/memory_backend.py):
what a campaign records, reports and offers to delete, with no process, server or sandbox —
the quick tier's view of the two scripts. The same flows run for real, through the scripts,
on the local backend and the fake Azure service in the slow tier."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from common.config import load_settings
from common.errors import EXIT_FAILED, EXIT_OK, ToolError
from common.manifest import load
from common.model import JobKind, TaskSpec
from common.prompts import NO_INPUT, Prompter
from common.ui import Ui
from common.workflow import Context, Options, rerun_failed, run_simulation, status
from conftest import Campaign
from tests.support.memory_backend import MemoryBackend, TaskRun

RUN_SH = "#!/bin/sh\necho never run here\n"


def task_2_fails(task: TaskSpec) -> TaskRun:
    if task.index == 2 and not task.task_id.endswith("-r1"):
        return TaskRun(exit_code=7, stderr="first line\nthe real reason task 2 failed\n")
    return TaskRun(files={f"out_{task.index}.txt": f"value {task.index}\n".encode()},
                   stdout=f"task {task.index} ok\n")


class Run:
    """One in-process script run: the context, what it printed, what it asked."""

    def __init__(self, campaign: Campaign, backend: MemoryBackend, fail_at: str | None = None) -> None:
        self.output = io.StringIO()
        self.steps: list[str] = []

        def before(step: str) -> None:
            self.steps.append(step)
            if step == fail_at:
                raise ToolError(f"injected at {step}")
        self.ctx = Context(settings=load_settings(campaign.simconfig, env={}), backend=backend,
                           prompter=Prompter(NO_INPUT, ask=lambda _: "", say=self.output.write,
                                             is_terminal=False),
                           ui=Ui(Console(file=self.output, width=300)), before_step=before,
                           poll_seconds=0, sleep=lambda _: None, options=Options())

    @property
    def text(self) -> str:
        return self.output.getvalue()


@pytest.fixture
def tiny(tmp_path: Path) -> Campaign:
    return Campaign(tmp_path / "campaign", RUN_SH, TASK_COUNT=3)


def test_a_campaign_records_runs_and_downloads_every_output(tiny):
    backend = MemoryBackend()
    run = Run(tiny, backend)
    outcome = run_simulation(run.ctx)
    assert outcome.exit_code == EXIT_OK, run.text
    assert outcome.summary[0] == "Campaign tiny-campaign: 3 of 3 task(s) succeeded (local backend)."
    assert any("billing: none (memory backend)" in line for line in outcome.summary)
    assert outcome.summary[-1].startswith("Next: ") and "batch_data_reducer.py" in outcome.summary[-1]
    manifest = load(run.ctx.manifest_path)
    (job,) = manifest.jobs
    assert job.kind is JobKind.WORKERS and job.task_indices == (1, 2, 3) and job.succeeded
    assert job.job_deleted  # the question's default: delete what bills
    for i in (1, 2, 3):
        assert (tiny.results / f"run{i}" / f"out_{i}.txt").read_text() == f"task-{i}\n"
    assert backend.calls[0].startswith("submit_job")  # an auto pool comes with its job


def test_a_failed_task_is_named_with_its_stderr_and_rerun_alone(tiny):
    backend = MemoryBackend(task_2_fails)
    run = Run(tiny, backend)
    outcome = run_simulation(run.ctx)
    assert outcome.exit_code == EXIT_FAILED
    assert "1 of 3 task(s) failed:" in run.text and "task-2: exit code 7" in run.text
    assert "the real reason task 2 failed" in run.text  # read from the stored stderr
    assert outcome.summary[-1].startswith("Rerun the failed tasks:")
    assert load(run.ctx.manifest_path).jobs[0].failed_indices == (2,)
    again = Run(tiny, backend)
    outcome = rerun_failed(again.ctx)
    assert outcome.exit_code == EXIT_OK, again.text
    rerun = load(again.ctx.manifest_path).jobs[-1]
    assert rerun.task_ids == ("task-2-r1",) and rerun.task_indices == (2,)


def test_an_error_after_the_job_exists_offers_to_delete_it_and_keeps_the_data(tiny):
    backend = MemoryBackend()
    run = Run(tiny, backend, fail_at="wait")
    with pytest.raises(ToolError, match="injected at wait"):
        run_simulation(run.ctx)
    assert "The campaign stopped with an error. Delete job" in run.text
    assert any(c.startswith("delete_job") for c in backend.calls)
    manifest = load(run.ctx.manifest_path)
    assert manifest.jobs[0].job_deleted and not manifest.container_deleted
    assert backend.blob_store("tiny-campaign").list_blobs("SIM_DIR.zip")  # data kept
    assert "stopped by an error" in json.dumps(manifest.events)


def test_status_reads_the_manifest_and_asks_the_service(tiny):
    backend = MemoryBackend()
    run_simulation(Run(tiny, backend).ctx)
    outcome = status(Run(tiny, backend).ctx)
    text = "\n".join(outcome.summary)
    assert "workers job tiny-campaign-workers-" in text and "deleted by this tool" in text
    assert "3 output file(s) in 3 run folder(s) (and 6 log file(s))" in text


def test_a_backend_that_cannot_add_tasks_refuses_an_adaptive_campaign_before_anything(tiny):
    from dataclasses import replace
    backend = MemoryBackend()
    backend.capabilities = replace(backend.capabilities, adds_tasks=False)
    tiny.update(TARGET_UNCERTAINTY_PERCENT=1.0, TARGET_SCORER="Dose.csv", OUTPUT_FILE_PATTERNS=["Dose.csv"])
    run = Run(tiny, backend)
    with pytest.raises(ToolError) as refused:
        run_simulation(run.ctx)
    assert refused.value.exit_code == 2
    assert "TARGET_UNCERTAINTY_PERCENT: the memory backend cannot add tasks" in refused.value.lines[0]
    assert backend.calls == [] and backend.containers == {}
    assert not run.ctx.manifest_path.exists()


def test_the_geant4_data_goes_up_once_and_a_fault_while_it_does_leaves_nothing_billing(tmp_path):
    """The 'data' step of the runner (common/workflow/shared_data.py): the shared container
    gets the data sets once; a second campaign sends nothing; a fault there, before any pool
    or job exists, stops the run with the data kept."""
    from conftest import write_json
    from tests.support.geant4 import make_geant4_data
    from tests.support.memory_backend import SHARED_CONTAINER
    campaign = Campaign(tmp_path / "campaign", RUN_SH, TASK_COUNT=2)
    write_json(campaign.appconfig, {"BACKEND": "local", "LOCAL_STORAGE_PATH": str(campaign.storage),
                                    "GEANT4_DATA_DIR": str(make_geant4_data(tmp_path / "g4"))})
    backend = MemoryBackend()
    broken = Run(campaign, backend, fail_at="data")
    with pytest.raises(ToolError, match="injected at data"):
        run_simulation(broken.ctx)
    assert not any(c.startswith(("prepare_pool", "submit_job")) for c in backend.calls)
    assert load(broken.ctx.manifest_path).jobs == ()
    first = Run(campaign, backend)
    assert run_simulation(first.ctx).exit_code == EXIT_OK, first.text
    assert backend.containers[SHARED_CONTAINER]
    assert re.search(r"Geant4 data \S+: uploaded [1-9][\d,]* bytes", first.text), first.text
    campaign.update(STARTING_NODE=3)
    second = Run(campaign, backend)
    assert run_simulation(second.ctx).exit_code == EXIT_OK, second.text
    assert "0 bytes uploaded" in second.text
