"""Two runs never collide, the manifest is the truth and is never obeyed blindly, no result
is lost — through the real scripts, with real processes and real signals (local backend)."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest
from rich.console import Console

from common.backends.local.backend import LocalBackend
from common.config import load_settings
from common.errors import ToolError
from common.manifest import JobRecord, Manifest, ManifestFile, load
from common.model import JobKind
from common.prompts import NO_INPUT, Prompter
from common.transfer import DownloadReport
from common.ui import Ui
from common.workflow import Context, Run, runner
from common.workflow.records import existing
from conftest import REPO

pytestmark = pytest.mark.slow  # real processes racing, signals, big downloads

RUNNER = str(REPO / "batch_simulation_runner.py")
REDUCER = str(REPO / "batch_data_reducer.py")
SLOW = """#!/bin/bash
sleep "${SLEEP:-3}"
echo "value $1" > "out_$1.txt"
"""


def run(campaign, script: str, env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, str(campaign.simconfig), *args],
                          cwd=campaign.root, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def start(campaign, script: str, env, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, script, str(campaign.simconfig), *args],
                            cwd=campaign.root, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        time.sleep(0.05)


def running_task(campaign) -> bool:
    return any(json.loads(p.read_text()).get("state") == "running"
               for p in campaign.storage.glob("pools/*/jobs/*/tasks/*/state.json"))


@pytest.fixture
def slow(campaign):
    (campaign.sim_dir / "run.sh").write_text(SLOW)
    return campaign


# ---------------------------------------------------------------------------- two runners


def test_a_second_runner_on_a_busy_campaign_refuses_before_creating_anything(slow, script_env):
    first = start(slow, RUNNER, script_env, "--no-input")
    wait_for(lambda: running_task(slow))
    second = run(slow, RUNNER, script_env, "--no-input")
    assert second.returncode == 2, second.stderr
    [line] = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert "is still running" in line or "in use by another runner" in line
    assert "--attach" in line or "let it finish" in line
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err  # the first one was not disturbed
    jobs = json.loads((slow.root / "tiny-campaign.campaign.json").read_text())["jobs"]
    assert len(jobs) == 1


def _add_jobs(path: str, offset: int) -> None:
    record = ManifestFile(Path(path), load(Path(path)))
    for n in range(40):
        record.add_job(JobRecord(f"job-{offset + n}", "workers", None, ("task-1",), (1,)))


def test_two_processes_updating_the_manifest_lose_nothing(tmp_path):
    path = tmp_path / "c.campaign.json"
    ManifestFile.open(path, Manifest("c-1", "local", "c-1", "simconfig.json"))
    workers = [multiprocessing.Process(target=_add_jobs, args=(str(path), i * 1000)) for i in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert len(load(path).jobs) == 80  # each process re-read what the other wrote


# ---------------------------------------------------------------------------- the manifest is checked


@pytest.mark.parametrize("change, field", [
    ({"container": "/tmp/victim"}, "container"),
    ({"container": "../../victim"}, "container"),
    ({"sim_id": "someone-else"}, "sim_id"),
    ({"backend": "azure"}, "backend"),
    ({"jobs": [{"job_id": "../x", "kind": "workers", "pool_id": None, "task_ids": [],
                "task_indices": []}]}, "jobs[0].job_id"),
])
def test_a_tampered_manifest_is_refused_naming_the_field(campaign, script_env, tmp_path, change, field):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    path = campaign.root / "tiny-campaign.campaign.json"
    data = json.loads(path.read_text())
    data.update({k: (str(victim) if v == "/tmp/victim" else v) for k, v in change.items()})
    path.write_text(json.dumps(data))
    result = run(campaign, RUNNER, script_env, "--cleanup", "--yes")
    assert result.returncode == 2, result.stderr
    assert field in result.stderr.splitlines()[-1]
    assert (victim / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("damage", ["directory", "binary", "deep"])
def test_a_broken_manifest_is_exit_2_not_an_internal_error(campaign, script_env, damage):
    path = campaign.root / "tiny-campaign.campaign.json"
    if damage == "directory":
        path.mkdir()
    elif damage == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)
    result = run(campaign, RUNNER, script_env, "--status")
    assert result.returncode == 2, result.stderr
    assert "internal error" not in result.stderr and "move it aside" in result.stderr


# ---------------------------------------------------------------------------- no result lost


def listing_reducer(campaign) -> None:
    """A reducer that writes the run folders it was given into results/runs.txt."""
    campaign.update(REDUCER_SCRIPT="reduce.sh", REDUCER_PATH="reducer")
    folder = campaign.root / "reducer"
    folder.mkdir(exist_ok=True)
    (folder / "reduce.sh").write_text('#!/bin/bash\nls "$1" > "$1/results/runs.txt"\n')


def test_runs_that_exist_are_not_overwritten_without_being_asked(campaign, script_env):
    listing_reducer(campaign)
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    assert run(campaign, REDUCER, script_env, "--no-input").returncode == 0
    merged = campaign.results / "results"
    assert merged.exists()
    again = run(campaign, RUNNER, script_env, "--no-input")
    assert again.returncode == 2
    assert "already has run1..run2" in again.stderr and "--overwrite" in again.stderr
    assert "STARTING_NODE to 3" in again.stderr
    # new runs beside the old ones: the old merged result is set aside, never left beside them
    campaign.update(STARTING_NODE=3)
    more = run(campaign, RUNNER, script_env, "--no-input")
    assert more.returncode == 0, more.stderr
    assert not merged.exists() and list(campaign.results.glob("replaced-*/results"))
    assert not list(campaign.container.glob("nodes_output/results/*"))
    # --overwrite replaces runs 3-4, keeping the earlier copies aside
    replaced = run(campaign, RUNNER, script_env, "--no-input", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert list(campaign.results.glob("replaced-*/run3"))


def test_a_second_reduction_leaves_no_file_of_the_first_beside_its_own(campaign, script_env):
    """A merge writes file by file: a file the first reducer wrote and the second does not
    used to stay in results/ (in storage and here) and pass for part of the new result."""
    listing_reducer(campaign)
    reducer = campaign.root / "reducer" / "reduce.sh"
    reducer.write_text('#!/bin/bash\nls "$1" > "$1/results/runs.txt"\necho old > "$1/results/a.txt"\n')
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    assert run(campaign, REDUCER, script_env, "--no-input").returncode == 0
    merged = campaign.results / "results"
    assert (merged / "a.txt").exists()
    shutil.rmtree(merged)  # this copy lost: storage holds the only one
    reducer.write_text('#!/bin/bash\nls "$1" > "$1/results/runs.txt"\n')
    again = run(campaign, REDUCER, script_env, "--no-input")
    assert again.returncode == 0, again.stderr
    assert "the earlier merged result was moved aside" in again.stdout + again.stderr
    assert (merged / "runs.txt").exists() and not (merged / "a.txt").exists()
    assert not (campaign.container / "nodes_output" / "results" / "a.txt").exists()
    kept = list(campaign.results.glob("replaced-*/results/a.txt"))
    assert kept and kept[0].read_text() == "old\n"  # from storage, verified, before deletion


def in_process_run(campaign) -> Run:
    """The runner's Run for this campaign, in this process, asking nothing."""
    settings = load_settings(campaign.simconfig)
    ctx = Context(settings=settings, backend=LocalBackend(settings.app.local_storage_path),
                  prompter=Prompter(NO_INPUT, ask=input, say=lambda _: None, is_terminal=False),
                  ui=Ui(Console(file=io.StringIO())))
    return Run(ctx, ctx.backend.blob_store(ctx.ids.container), existing(ctx), JobKind.WORKERS)


def test_the_earlier_merged_result_stays_in_storage_when_no_copy_could_be_made(
        campaign, script_env, monkeypatch):
    listing_reducer(campaign)
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    assert run(campaign, REDUCER, script_env, "--no-input").returncode == 0
    stored = sorted(campaign.container.glob("nodes_output/results/*"))
    monkeypatch.setattr(runner, "download_prefix", lambda *a, **k: DownloadReport(
        downloaded=(), skipped=(), failed=(("nodes_output/results/runs.txt", "disk full"),),
        bytes=0))
    step = in_process_run(campaign)
    with pytest.raises(ToolError, match=r"could not keep a copy of the earlier merged result "
                                        r"\(nodes_output/results/runs.txt: disk full\); it stays"):
        runner.set_aside_merged_result(step)
    assert sorted(campaign.container.glob("nodes_output/results/*")) == stored


def test_the_reducer_refuses_failed_runs_unless_told_to_merge_what_is_there(campaign, script_env):
    (campaign.sim_dir / "run.sh").write_text(
        '#!/bin/bash\n[ "$1" = 2 ] && { echo broken >&2; exit 3; }\necho "value $1" > "out_$1.txt"\n')
    listing_reducer(campaign)
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 1
    refused = run(campaign, REDUCER, script_env, "--no-input")
    assert refused.returncode == 1
    assert "1 run(s) have no outputs — failed (logs only): run2" in refused.stderr
    partial = run(campaign, REDUCER, script_env, "--no-input", "--allow-partial")
    assert partial.returncode == 0, partial.stderr
    assert "runs merged: run1; left out (--allow-partial): run2" in partial.stdout
    assert (campaign.results / "results" / "runs.txt").read_text().split() == ["results", "run1"]


def test_the_reducer_refuses_while_the_workers_still_run(slow, script_env):
    runner = start(slow, RUNNER, script_env, "--no-input")
    wait_for(lambda: running_task(slow))
    reducer = run(slow, REDUCER, script_env, "--no-input")
    assert reducer.returncode == 2
    assert "is still running" in reducer.stderr and "--attach" in reducer.stderr
    runner.communicate(timeout=120)


def spawn(campaign, script: str, env, *args: str):
    return pexpect.spawn(sys.executable, [script, str(campaign.simconfig), *args],
                         cwd=str(campaign.root), env=env, encoding="utf-8", timeout=60,
                         dimensions=(40, 200))


def test_the_container_is_kept_while_a_job_of_the_campaign_runs(slow, script_env):
    """After a timeout the user keeps the job, downloads, and asks to delete the container:
    the job's tasks would then fail to upload (FileUploadContainerNotFound): refused."""
    slow.update(TIMEOUT_MINUTES=0.03)  # ~2 s: the tasks are still running at the end
    child = spawn(slow, RUNNER, {**script_env, "SLEEP": "20"})
    child.expect(r"Delete job .*\[Y/n\] ")
    child.sendline("n")
    # no question about the container: it is kept, and why
    child.expect(r"container tiny-campaign kept: job tiny-campaign-workers-\d+ still runs")
    child.expect(pexpect.EOF)
    assert slow.container.exists()
    assert run(slow, RUNNER, script_env, "--cleanup", "--yes").returncode == 0


def test_ctrl_c_then_no_names_attach_and_cleanup_and_a_second_ctrl_c_says_what_is_left(
        slow, script_env):
    child = spawn(slow, RUNNER, {**script_env, "SLEEP": "20"})
    child.expect("Waiting for 2 task")
    child.sendintr()
    child.expect(r"Interrupted\. Delete job .* \[Y/n\] ")
    child.sendline("n")
    child.expect("its tasks keep running")
    child.expect(r"--attach`")
    child.expect(r"--cleanup`")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert run(slow, RUNNER, script_env, "--cleanup", "--yes").returncode == 0
    # again, and a second Ctrl-C at the question: leave at once, saying what is left
    slow.update(STARTING_NODE=10)
    child = spawn(slow, RUNNER, {**script_env, "SLEEP": "20"})
    child.expect("Waiting for 2 task")
    child.sendintr()
    child.expect(r"Interrupted\. Delete job .* \[Y/n\] ")
    child.sendintr()
    child.expect(r"still running: job tiny-campaign-workers")  # the local backend bills nothing
    child.expect(r"remove it with `.*batch_simulation_runner\.py .*--cleanup`")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert run(slow, RUNNER, script_env, "--cleanup", "--yes").returncode == 0


def test_ctrl_c_during_a_big_download_drops_what_is_queued(tmp_path):
    """A real SIGINT while 4,000 files download: it stops within a second or two, keeping
    the files that were verified."""
    from common.backends.local.backend import LocalBlobStore
    from common.transfer import download_prefix

    started = []

    class SlowStore(LocalBlobStore):  # a distant account: each file takes a while
        def download_blob(self, blob, dest):
            if not started:  # the user presses Ctrl-C once the download is under way
                started.append(time.monotonic())
                threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            time.sleep(0.01)
            return super().download_blob(blob, dest)

    store = SlowStore(tmp_path / "container", "box")
    for n in range(4000):
        path = store.folder / "nodes_output" / "run1" / f"f{n}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(n))
    with pytest.raises(KeyboardInterrupt):
        download_prefix(store, "nodes_output/", tmp_path / "here", "nodes_output/", threads=4)
    assert time.monotonic() - started[0] < 2.3  # not the ~10 s the queue would take
    kept = list((tmp_path / "here" / "run1").glob("*.dat"))
    assert 0 < len(kept) < 4000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_the_wait_delete_nothing_and_note_it(slow, script_env, sig):
    proc = start(slow, RUNNER, {**script_env, "SLEEP": "10"}, "--no-input")
    wait_for(lambda: running_task(slow))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert f"{signal.Signals(sig).name}: stopped; nothing was deleted" in err
    data = json.loads((slow.root / "tiny-campaign.campaign.json").read_text())
    assert any(f"stopped by {signal.Signals(sig).name}" in e for e in data["events"])
    assert data["claims"] == []  # the claim is released
    assert running_task(slow)  # the tasks keep running: --attach or --cleanup later
    settled = run(slow, RUNNER, script_env, "--cleanup", "--yes")
    assert settled.returncode == 0, settled.stderr


def test_an_interrupt_python_swallowed_still_stops_the_download(tmp_path):
    """Ctrl-C landing in a weakref callback or __del__ is printed and ignored by Python; the
    download must still stop at once rather than fetch all 4,000 files."""
    from common.backends.local.backend import LocalBlobStore
    from common.transfer import download_prefix

    class SlowStore(LocalBlobStore):
        def download_blob(self, blob, dest):
            time.sleep(0.002)
            return super().download_blob(blob, dest)

    def swallow_an_interrupt(done_files, done_bytes):  # runs in the main thread, as Python does
        if done_files == 20:
            try:
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            except KeyboardInterrupt:
                pass  # "Exception ignored in: <function WeakSet.__init__.<locals>._remove>"

    store = SlowStore(tmp_path / "container", "box")
    for n in range(4000):
        path = store.folder / "nodes_output" / f"f{n}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(n))
    with pytest.raises(KeyboardInterrupt):
        download_prefix(store, "nodes_output/", tmp_path / "here", "nodes_output/",
                        on_progress=swallow_an_interrupt, threads=2)
    assert len(list((tmp_path / "here").glob("*.dat"))) < 200
