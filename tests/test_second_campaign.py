"""The second campaign, the interrupted one, and the one started from another folder —
through the real scripts (local backend): nothing the next step needs is deleted unasked,
every way on is a command that runs as printed, and no message sends the user in a loop."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from common.errors import ToolError
from common.transfer import DownloadReport
from common.workflow import runner
from conftest import REPO, stop_local_pools
from test_campaign_later import start_and_kill
from test_campaign_safety import in_process_run

RUNNER = str(REPO / "batch_simulation_runner.py")
REDUCER = str(REPO / "batch_data_reducer.py")
GENERATION = """#!/bin/bash
set -e
echo "value $1 generation $(cat "$GENERATION_FILE")" > "out_$1.txt"
"""


def run(campaign, script: str, env, *args: str, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, str(campaign.simconfig), *args],
                          cwd=cwd or campaign.root, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def listing_reducer(campaign) -> None:
    """A reducer that writes the run folders it was given into results/runs.txt."""
    campaign.update(REDUCER_SCRIPT="reduce.sh", REDUCER_PATH="reducer")
    folder = campaign.root / "reducer"
    folder.mkdir(exist_ok=True)
    (folder / "reduce.sh").write_text('#!/bin/bash\nls "$1" > "$1/results/runs.txt"\n')


def merged_runs(campaign) -> list[str]:
    return (campaign.results / "results" / "runs.txt").read_text().split()


@pytest.fixture
def generations(campaign, script_env):
    """Each run writes which generation of the campaign made it (bumped by the test)."""
    counter = campaign.root / "generation"
    counter.write_text("1")
    (campaign.sim_dir / "run.sh").write_text(GENERATION)
    return {**script_env, "GENERATION_FILE": str(counter)}


# ---------------------------------------------------------------------------- 1. --yes


@pytest.mark.parametrize("second", ["overwrite", "more runs", "downloads moved aside"])
def test_yes_never_deletes_the_container_the_next_reducer_needs(campaign, script_env, second):
    """After a reducer has run once, a second runner with --yes used to answer "Delete storage
    container ... with all task outputs and the merged result?" yes; the reducer then found
    no container and sent the user back to the runner, which refused."""
    listing_reducer(campaign)
    assert run(campaign, RUNNER, script_env, "--yes").returncode == 0
    first_reducer = "--yes" if second == "downloads moved aside" else "--no-input"
    assert run(campaign, REDUCER, script_env, first_reducer).returncode == 0
    args = ["--yes"]
    if second == "overwrite":
        args.append("--overwrite")
    elif second == "more runs":
        campaign.update(STARTING_NODE=3)
    else:  # the container went with the first reducer; the downloads are moved away
        assert not campaign.container.exists()
        shutil.move(campaign.results, campaign.root / "elsewhere")
    again = run(campaign, RUNNER, script_env, *args)
    assert again.returncode == 0, again.stderr
    assert "still needs the task outputs in it. [y/N] no (default: --yes does not answer" \
        in again.stderr
    assert "container kept: the reducer reads the task outputs from it" in again.stdout
    assert campaign.container.is_dir()
    reducer = run(campaign, REDUCER, script_env, "--yes")
    assert reducer.returncode == 0, reducer.stderr
    expected = ["results", "run1", "run2"] + (["run3", "run4"] if second == "more runs" else [])
    assert merged_runs(campaign) == expected


# ---------------------------------------------------------------------------- 2. --overwrite


def test_overwrite_keeps_a_verified_copy_of_runs_never_downloaded(campaign, generations):
    """With nodes_output/ gone, --overwrite --no-input used to delete the stored runs with
    no copy anywhere."""
    assert run(campaign, RUNNER, generations, "--no-input").returncode == 0
    shutil.rmtree(campaign.results)
    (campaign.root / "generation").write_text("2")
    again = run(campaign, RUNNER, generations, "--no-input", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert "after downloading and verifying a copy" in again.stderr
    [aside] = campaign.results.glob("replaced-*")
    assert (aside / "run1" / "out_1.txt").read_text() == "value 1 generation 1\n"
    assert (aside / "run2" / "stdout.txt").exists()
    assert (campaign.results / "run1" / "out_1.txt").read_text() == "value 1 generation 2\n"


def test_overwrite_keeps_both_copies_when_the_local_one_differs(campaign, generations):
    assert run(campaign, RUNNER, generations, "--no-input").returncode == 0
    edited = campaign.results / "run1" / "out_1.txt"
    edited.write_text("edited by hand\n")
    (campaign.root / "generation").write_text("2")
    again = run(campaign, RUNNER, generations, "--no-input", "--overwrite")
    assert again.returncode == 0, again.stderr
    [aside] = campaign.results.glob("replaced-*")
    assert (aside / "run1" / "out_1.txt").read_text() == "edited by hand\n"
    assert (aside / "from-storage" / "run1" / "out_1.txt").read_text() == "value 1 generation 1\n"


def test_overwrite_deletes_nothing_when_no_copy_can_be_made(campaign, script_env, monkeypatch):
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    shutil.rmtree(campaign.results)
    stored = sorted(campaign.container.glob("nodes_output/run1/*"))
    monkeypatch.setattr(runner, "download_prefix", lambda *a, **k: DownloadReport(
        downloaded=(), skipped=(), failed=(("nodes_output/run1/out_1.txt", "disk full"),),
        bytes=0))
    step = in_process_run(campaign)
    with pytest.raises(ToolError, match=r"could not keep a copy of run1/out_1.txt \(disk full\) "
                                        r"before replacing it; nothing was deleted from storage"):
        runner.set_aside_old_results(step, [1, 2])
    assert sorted(campaign.container.glob("nodes_output/run1/*")) == stored


# ---------------------------------------------------------------------------- 5. interrupted


def test_one_command_finishes_the_runs_an_interrupted_campaign_never_finished(campaign, script_env):
    """Ctrl-C (job deleted) with run3..run4 unfinished: the reducer pointed at --rerun-failed,
    which said "no failed task: nothing to rerun"; the runner's STARTING_NODE advice added
    TASK_COUNT new runs instead of the two missing."""
    listing_reducer(campaign)
    slow = campaign.root / "slow"
    slow.touch()
    campaign.update(TASK_COUNT=4)
    (campaign.sim_dir / "run.sh").write_text(
        f'#!/bin/bash\nif [ "$1" -ge 3 ] && [ -f {slow} ]; then sleep 60; fi\n'
        'echo "value $1" > "out_$1.txt"\n')
    proc = subprocess.Popen([sys.executable, RUNNER, str(campaign.simconfig), "--no-input"],
                            cwd=campaign.root, env=script_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stored = campaign.container / "nodes_output"
    deadline = time.monotonic() + 60
    while not all((stored / f"run{i}" / f"out_{i}.txt").exists() for i in (1, 2)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    slow.unlink()
    refused = run(campaign, REDUCER, script_env, "--no-input")
    assert refused.returncode == 1 and "never stored: run3..run4" in refused.stderr
    again = run(campaign, RUNNER, script_env, "--no-input")
    assert again.returncode == 2
    assert "finish the 2 run(s) that never finished (run3..run4) with `" in again.stderr
    advice = re.search(r"never finished \(run3\.\.run4\) with `([^`]+)`", again.stderr)[1]
    finished = subprocess.run(advice, shell=True, cwd=campaign.root, env=script_env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "(never finished: run3..run4): task-3, task-4" in finished.stderr
    assert run(campaign, REDUCER, script_env, "--no-input").returncode == 0
    assert merged_runs(campaign) == ["results", "run1", "run2", "run3", "run4"]


def test_rerun_failed_after_cleanup_finishes_what_the_deleted_job_never_ran(campaign, script_env):
    slow = campaign.root / "slow"
    slow.touch()
    campaign.sim_dir.joinpath("run.sh").write_text(
        f'#!/bin/bash\nif [ -f {slow} ]; then sleep 60; fi\necho "value $1" > "out_$1.txt"\n')
    start_and_kill(campaign, script_env)
    assert run(campaign, RUNNER, script_env, "--cleanup", "--no-input").returncode == 0
    slow.unlink()
    rerun = run(campaign, RUNNER, script_env, "--rerun-failed", "--no-input")
    assert rerun.returncode == 0, rerun.stderr
    assert "2 of 2 task(s) succeeded" in rerun.stdout
    assert (campaign.results / "run2" / "out_2.txt").read_text() == "value 2\n"


# ---------------------------------------------------------------------------- 7. the wrapper


def test_run_example_passes_each_script_only_what_it_accepts(tmp_path, script_env):
    """./run_example.sh --overwrite used to fail in the reducer: "unrecognized arguments"."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("run_example.sh", "batch_simulation_runner.py", "batch_data_reducer.py",
                 "requirements.txt", "simconfig.json", "appconfig.json"):
        shutil.copy(REPO / name, clone / name)
    shutil.copytree(REPO / "examples", clone / "examples",
                    ignore=shutil.ignore_patterns("nodes_output", "__pycache__", "*.csv"))
    (clone / "common").symlink_to(REPO / "common")
    (clone / ".venv").symlink_to(REPO / ".venv")
    env = {**script_env, "PIP_NO_INDEX": "1"}  # everything is installed: no network
    try:
        first = subprocess.run(["bash", "run_example.sh", "--no-input"], cwd=clone, env=env,
                               capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stderr
        again = subprocess.run(["bash", "run_example.sh", "--overwrite", "--no-input",
                                "--allow-inconsistent"], cwd=clone, env=env,
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert "unrecognized arguments" not in again.stderr
        assert "the replaced runs (run1..run4) were moved aside" in again.stderr
    finally:
        stop_local_pools(clone / ".localbatch")


def test_the_wrapper_knows_every_option_only_one_script_has():
    from common.cli import REDUCER as R, RUNNER as W, build_parser
    options = {s: {o for a in build_parser(s)._actions for o in a.option_strings} for s in (W, R)}
    text = (REPO / "run_example.sh").read_text()
    runner_only = set(re.search(r'RUNNER_ONLY=" (.*) "', text)[1].split())
    reducer_only = set(re.search(r'REDUCER_ONLY=" (.*) "', text)[1].split())
    assert runner_only == options[W] - options[R]
    assert reducer_only == options[R] - options[W]


# ---------------------------------------------------------------------------- 8. printed commands


def commands_in(*texts: str) -> list[str]:
    """Every command the scripts printed: `...` in messages, "Next: ...", "Rerun ...: ..."."""
    found = []
    for text in texts:
        found += re.findall(r"`([^`]*batch_(?:simulation_runner|data_reducer)\.py[^`]*)`", text)
        found += [line.split(": ", 1)[1] for line in text.splitlines()
                  if line.startswith(("Next: ", "Rerun the failed tasks: "))]
    return found


def test_every_printed_command_runs_as_printed_with_the_options_given(campaign, script_env,
                                                                       tmp_path):
    """The "Next:" lines dropped --appconfig: pasted, they failed with "appconfig.json: file
    not found". Here the appconfig has another name and the scripts run from another
    folder; every command printed is run as printed."""
    listing_reducer(campaign)
    shutil.move(campaign.appconfig, campaign.root / "app.local.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fixed = campaign.root / "fixed"
    campaign.sim_dir.joinpath("run.sh").write_text(
        f'#!/bin/bash\nif [ "$1" = 2 ] && [ ! -f {fixed} ]; then exit 3; fi\n'
        'echo "value $1" > "out_$1.txt"\n')
    app = os.path.relpath(campaign.root / "app.local.json", elsewhere)
    first = run(campaign, RUNNER, script_env, "--appconfig", app, "--no-input", cwd=elsewhere)
    assert first.returncode == 1
    printed = commands_in(first.stdout, first.stderr)
    assert printed and all("--appconfig" in c for c in printed), printed
    fixed.touch()
    ran = 0
    while printed:
        command = printed.pop(0)
        result = subprocess.run(command, shell=True, cwd=elsewhere, env=script_env,
                                capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=120)
        assert result.returncode == 0, (command, result.stderr)
        assert "file not found" not in result.stderr
        printed += [c for c in commands_in(result.stdout) if "--status" not in c]
        ran += 1
    assert ran >= 2  # --rerun-failed, then the reducer its summary names
    assert merged_runs(campaign) == ["results", "run1", "run2"]


# ---------------------------------------------------------------------------- 10, 11


def test_docker_token_in_the_shell_does_not_break_a_local_campaign(campaign, script_env):
    result = run(campaign, RUNNER, {**script_env, "DOCKER_TOKEN": "dckr_pat_elsewhere"},
                 "--dry-run")
    assert result.returncode == 0, result.stderr


def test_an_appconfig_not_found_says_where_it_looked_and_names_appconfig(campaign, script_env,
                                                                          tmp_path):
    shutil.move(campaign.appconfig, campaign.root / "app.local.json")
    result = run(campaign, RUNNER, script_env, "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert f"looked beside the simconfig ({campaign.root / 'appconfig.json'})" in line
    assert f"in the current folder ({tmp_path / 'appconfig.json'})" in line
    assert "--appconfig" in line


def test_a_new_campaign_in_a_folder_of_another_ones_runs_names_that_one(campaign, script_env):
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    run(campaign, RUNNER, script_env, "--cleanup", "--yes")
    campaign.update(SIM_ID="second-campaign")
    result = run(campaign, RUNNER, script_env, "--no-input")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "holds run1..run2 of campaign tiny-campaign" in line
    assert "second-campaign already has" not in line
    assert "LOCAL_RESULTS_PATH" in line
    dry = run(campaign, RUNNER, script_env, "--dry-run")
    assert dry.returncode == 2 and dry.stderr.strip().splitlines()[-1] == line


# ---------------------------------------------------------------------------- 17


def test_the_local_backend_says_nothing_of_money_and_names_one_run_once(campaign, script_env):
    campaign.update(STARTING_NODE=2, TASK_COUNT=1)
    result = run(campaign, RUNNER, script_env, "--no-input")
    assert result.returncode == 0, result.stderr
    assert "costs money" not in result.stderr
    assert "(its tasks stop; nothing bills on the local backend)? [Y/n]" in result.stderr
    assert "nodes_output/run2/ (" in result.stdout and "run2..run2" not in result.stdout


def test_the_manifest_lock_does_not_show_in_git_status(tmp_path, script_env):
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "examples" / "water_phantom", clone / "examples" / "water_phantom",
                    ignore=shutil.ignore_patterns("nodes_output", "__pycache__", "*.csv"))
    for name in ("simconfig.json", "appconfig.json", ".gitignore"):
        shutil.copy(REPO / name, clone / name)
    git = lambda *a: subprocess.run(["git", *a], cwd=clone, capture_output=True, text=True,  # noqa: E731
                                    check=True).stdout
    git("init", "-q")
    git("add", "-A")
    before = git("status", "--porcelain")
    try:
        result = subprocess.run([sys.executable, RUNNER, "simconfig.json", "--no-input"],
                                cwd=clone, env=script_env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
    finally:
        stop_local_pools(clone / ".localbatch")
    assert list(clone.glob(".*.lock"))  # the lock is there, beside the manifest...
    assert git("status", "--porcelain") == before  # ...and git does not list it


# ---------------------------------------------------------------------------- issue 23: downloads


BIG = """#!/bin/bash
set -e
head -c 3000000 /dev/zero > "big_$1.dat"
echo "value $1" > "out_$1.txt"
"""


@pytest.fixture
def big(campaign, script_env):
    campaign.update(OUTPUT_FILE_PATTERNS=["out_*.txt", "big_*.dat"])
    (campaign.sim_dir / "run.sh").write_text(BIG)
    return {**script_env, "BATCH_TOOL_DOWNLOAD_ASK_BYTES": "1000000"}


def test_a_big_campaign_downloads_only_the_logs_unasked_and_says_how_to_fetch_the_rest(campaign, big):
    result = run(campaign, RUNNER, big, "--yes")
    assert result.returncode == 0, result.stderr
    assert re.search(r"Download the task outputs \(8 file\(s\), 5\.7\d MiB\) to .*\? No: only the "
                     r"tasks' logs \(4 file\(s\), \d+ bytes\)\. \[y/N\] no \(default: --yes does "
                     r"not answer", result.stderr), result.stderr
    assert (campaign.results / "run1" / "stdout.txt").exists()
    assert not (campaign.results / "run1" / "big_1.dat").exists()
    [fetch] = re.findall(r"the other 4 file\(s\), 5\.7\d MiB stay in container tiny-campaign: "
                         r"to fetch them, run `([^`]+)` at a terminal", result.stderr)
    assert "--yes" not in fetch and "--no-input" not in fetch
    child = pexpect.spawn("/bin/bash", ["-c", fetch], cwd=str(campaign.root), env=big,
                          encoding="utf-8", timeout=60)
    child.expect(r"Download the task outputs .*\[y/N\] ")
    child.sendline("y")
    child.expect(r"Delete storage container .*\[y/N\] ")
    child.sendline("n")
    child.expect(pexpect.EOF)
    assert (campaign.results / "run1" / "big_1.dat").stat().st_size == 3_000_000


@pytest.mark.parametrize("choice, files", [("all", {"big_1.dat", "out_1.txt", "stdout.txt",
                                                    "stderr.txt"}),
                                           ("logs", {"stdout.txt", "stderr.txt"}),
                                           ("none", None)])
def test_download_task_outputs_chooses_without_a_question(campaign, big, choice, files):
    campaign.update(DOWNLOAD_TASK_OUTPUTS=choice)
    result = run(campaign, RUNNER, big, "--no-input")
    assert result.returncode == 0, result.stderr
    assert "Download the task outputs" not in result.stderr
    assert f"DOWNLOAD_TASK_OUTPUTS is {choice!r} (the task outputs are 8 file(s)" in result.stderr
    found = ({p.name for p in (campaign.results / "run1").iterdir()}
             if (campaign.results / "run1").exists() else None)
    assert found == files


def test_a_small_campaign_still_downloads_everything_and_says_how_much(campaign, script_env):
    result = run(campaign, RUNNER, script_env, "--no-input")
    assert re.search(r"Download the task outputs \(6 file\(s\), \d+ bytes\) to .*\? \[Y/n\] yes",
                     result.stderr), result.stderr
    assert (campaign.results / "run1" / "out_1.txt").exists()
    listing_reducer(campaign)
    reducer = run(campaign, REDUCER, script_env, "--no-input")
    assert re.search(r"Download the merged result \(3 file\(s\), \d+ bytes\) to "
                     r".*nodes_output/results\? \[Y/n\] yes", reducer.stderr), reducer.stderr
