"""Fault injection at every workflow step (local backend): an exception or a Ctrl-C at any
step leaves each pool and job deleted or kept by the user's choice, and --cleanup from the
manifest removes whatever remains. Data is never deleted by a fault."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from common.backends.local.backend import LocalBackend
from common.config import load_settings
from common.errors import EXIT_INTERRUPTED, ToolError
from common.manifest import load, manifest_path
from common.model import JobKind
from common.prompts import ASSUME_YES, INTERACTIVE, NO_INPUT, Prompter
from common.ui import Ui
from common.workflow import Context, cleanup, run_simulation

STEPS = ("pack", "upload", "pool", "submit", "wait", "cleanup", "download", "delete-container")


class Injected(Exception):
    pass


def context(campaign, mode=NO_INPUT, fail_at=None, fault=Injected, answers=None,
            seen: list[str] | None = None) -> Context:
    settings = load_settings(campaign.simconfig)
    seen = [] if seen is None else seen

    def before(step: str) -> None:
        seen.append(step)
        if step == fail_at:
            raise fault(f"injected at {step}")
    replies = iter(answers or [])
    prompter = Prompter(mode, ask=lambda _: next(replies), say=lambda _: None,
                        is_terminal=mode == INTERACTIVE)
    ui = Ui(Console(file=io.StringIO(), width=200))
    return Context(settings=settings, backend=LocalBackend(settings.app.local_storage_path),
                   prompter=prompter, ui=ui, before_step=before, poll_seconds=0.05)


def pools(campaign) -> list[str]:
    folder = campaign.storage / "pools"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def settle_with_cleanup(campaign) -> None:
    ctx = context(campaign)
    outcome = cleanup(ctx, JobKind.WORKERS)
    assert "nothing left that bills" in outcome.summary[0]
    assert pools(campaign) == []
    manifest = load(manifest_path(campaign.simconfig, "tiny-campaign"))
    assert all(j.job_deleted and (j.pool_deleted or j.auto_pool) for j in manifest.jobs)


# An auto pool is made with its job: that mode has no separate "pool" step.
CASES = [(step, auto) for step in STEPS for auto in (True, False) if not (auto and step == "pool")]


@pytest.mark.parametrize("step, auto_pool", CASES)
def test_an_error_at_any_step_offers_deletion_and_cleanup_settles_it(campaign, step, auto_pool):
    campaign.update(AUTO_DELETE_POOL=auto_pool)
    seen: list[str] = []
    if step == "delete-container":  # --yes keeps the container the reducer needs: type yes
        ctx = context(campaign, mode=INTERACTIVE, fail_at=step, seen=seen, answers=["y", "y", "y"])
    else:
        ctx = context(campaign, mode=ASSUME_YES, fail_at=step, seen=seen)
    with pytest.raises(Injected):
        run_simulation(ctx)
    assert seen[-1] == step
    if step == "pack":  # packing comes first: nothing exists yet, not even the manifest
        assert not ctx.manifest_path.exists() and not campaign.container.exists()
        return
    # --yes answered "delete job and pool": nothing that bills is left, whatever the step
    assert pools(campaign) == []
    if step != "delete-container":
        assert (campaign.container / "SIM_DIR.zip").exists() or step in ("pack", "upload")
    settle_with_cleanup(campaign)


@pytest.mark.parametrize("step", ("pool", "submit", "wait"))
def test_ctrl_c_keeps_data_and_exits_130(campaign, step):
    campaign.update(AUTO_DELETE_POOL=False)
    ctx = context(campaign, mode=NO_INPUT, fail_at=step, fault=KeyboardInterrupt)
    with pytest.raises(ToolError) as stopped:
        run_simulation(ctx)
    assert stopped.value.exit_code == EXIT_INTERRUPTED
    assert pools(campaign) == []  # the default answer deletes what bills
    assert (campaign.container / "SIM_DIR.zip").exists()
    settle_with_cleanup(campaign)


def test_a_kept_pool_is_removed_by_cleanup_later(campaign):
    campaign.update(AUTO_DELETE_POOL=False)
    ctx = context(campaign, mode=INTERACTIVE, fail_at="wait", answers=["n"])
    with pytest.raises(Injected):
        run_simulation(ctx)
    assert pools(campaign) == ["tiny-campaign-workers"]  # the user chose to keep it
    settle_with_cleanup(campaign)


def test_every_step_of_the_workflow_has_a_fault_test():
    """The steps named in common/workflow/ are exactly those injected above (8 steps), the
    adaptive campaign's own step ('add-tasks', injected in test_adaptive_campaign.py) and
    the Geant4 data's upload ('data', injected in test_workflow_memory.py)."""
    import re
    from pathlib import Path
    source = "".join(p.read_text() for p in (Path(__file__).parents[1] / "common" / "workflow").glob("*.py"))
    declared = set(re.findall(r'ctx\.step\("([a-z-]+)"', source))
    declared |= set(re.findall(r'before_step\("([a-z-]+)"\)', source))
    assert declared == set(STEPS) | {"add-tasks", "data"}
    adaptive_tests = (Path(__file__).parent / "test_adaptive_campaign.py").read_text()
    assert 'if step == "add-tasks":' in adaptive_tests
    memory_tests = (Path(__file__).parent / "test_workflow_memory.py").read_text()
    assert 'fail_at="data"' in memory_tests


def _asked(campaign, answers, action) -> list[str]:
    """Run a workflow with typed answers; return the questions it asked."""
    questions: list[str] = []
    replies = iter(answers)

    def ask(prompt: str) -> str:
        questions.append(prompt)
        return next(replies)
    settings = load_settings(campaign.simconfig)
    ctx = Context(settings=settings, backend=LocalBackend(settings.app.local_storage_path),
                  prompter=Prompter(INTERACTIVE, ask=ask, say=lambda _: None, is_terminal=True),
                  ui=Ui(Console(file=io.StringIO(), width=200)), poll_seconds=0.05)
    action(ctx)
    return questions


@pytest.mark.parametrize("path", ["runner", "reducer", "cleanup"])
def test_every_container_deletion_is_refused_without_verified_copies(campaign, path):
    from common.workflow import run_reducer
    # delete pool: yes; download: no; delete container: yes; lose the files for good: no
    refuse = ["y", "n", "y", "n"]
    if path == "runner":
        questions = _asked(campaign, refuse, run_simulation)
    else:
        _asked(campaign, ["y", "n", "n"], run_simulation)
        action = run_reducer if path == "reducer" else (lambda ctx: cleanup(ctx, JobKind.WORKERS))
        questions = _asked(campaign, refuse if path == "reducer" else refuse[1:], action)
    assert questions[-1].startswith("Delete the container anyway and lose ")
    assert campaign.container.exists()  # refused: nothing was downloaded and verified
    # A person at the terminal can still confirm the loss.
    _asked(campaign, ["y", "y"], _delete_container_confirmed)
    assert not campaign.container.exists()


def _delete_container_confirmed(ctx) -> None:
    from common.manifest import ManifestFile
    from common.workflow import Run, offer_container_deletion
    store = ctx.backend.blob_store("tiny-campaign")
    record = ManifestFile(ctx.manifest_path, load(ctx.manifest_path))
    run = Run(ctx, store, record, JobKind.WORKERS)
    assert offer_container_deletion(run, "Delete storage container?")
