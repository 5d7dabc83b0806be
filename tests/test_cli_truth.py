"""The command line tells the truth in the situations a new user meets, through the real
scripts: --yes end to end, a pattern that matches nothing, a wrong account URL, -v, the
Azure template, --status and --cleanup after the reducer."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, write_json
from test_azure_e2e import REDUCER, RUNNER, azure_campaign, azure_env  # noqa: F401
from test_campaign_e2e import example  # noqa: F401


def run(script: str, simconfig: Path, env, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, str(simconfig), *args], cwd=simconfig.parent,
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def test_the_example_with_yes_runs_end_to_end(example, script_env):
    """./run_example.sh --yes: the runner keeps the container the reducer needs; the reducer
    may delete it once its result is downloaded and verified."""
    simconfig = example / "simconfig.json"
    runner = run(RUNNER, simconfig, script_env, "--yes")
    assert runner.returncode == 0, runner.stderr
    assert "--yes does not answer this one" in runner.stderr
    assert "container kept: the reducer reads the task outputs from it" in runner.stdout
    reducer = run(REDUCER, simconfig, script_env, "--yes")
    assert reducer.returncode == 0, reducer.stderr
    assert "deleted container water-phantom-example" in reducer.stderr
    assert (example / "examples" / "water_phantom" / "nodes_output" / "results" / "DoseAtPhantom.csv").exists()


def test_a_pattern_that_matches_nothing_fails_the_run_naming_it(campaign, script_env):
    campaign.update(OUTPUT_FILE_PATTERNS=["out_*.txt", "DoseAtPhantom.cvs"])
    result = run(RUNNER, campaign.simconfig, script_env, "--no-input")
    assert result.returncode == 1
    assert "2 task(s) succeeded but wrote no file for an output pattern:" in result.stderr
    assert "task-1: nothing matched 'DoseAtPhantom.cvs'" in result.stderr
    assert "2 wrote no file for an output pattern" in result.stdout


def test_a_pattern_that_matches_nothing_is_found_on_azure_too(azure_campaign, azure_env):
    azure_campaign.update(OUTPUT_FILE_PATTERNS=["DoseAtPhantom.cvs"], TASK_COUNT=2,
                          POOL_NODE_COUNT=2)
    result = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "task-2: nothing matched 'DoseAtPhantom.cvs'" in result.stderr


def test_a_wrong_storage_url_is_one_line_with_the_retries_shown(azure_campaign, azure_env):
    azure_campaign.app["STORAGE_ACCOUNT_URL"] = "http://127.0.0.1:9/devstoreaccount1"
    write_json(azure_campaign.root / "appconfig.json", azure_campaign.app)
    started = time.monotonic()
    result = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach http://127.0.0.1:9")
    assert "nothing answers on that address and port" in last and "STORAGE_ACCOUNT_URL" in last
    retries = [l for l in result.stderr.splitlines() if "retry " in l and "storage:" in l]
    assert retries, "the SDK's silent retries are shown as they happen"
    assert time.monotonic() - started < 60


def test_verbose_shows_each_request_and_where_the_time_went(azure_campaign, azure_env):
    azure_campaign.update(TASK_COUNT=1, POOL_NODE_COUNT=1)
    result = azure_campaign.run(RUNNER, "--no-input", "-v", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert re.search(r"POST 127\.0\.0\.1:\d+/jobs -> 201 \d+ ms", result.stderr)
    assert re.search(r"PUT 127\.0\.0\.1:\d+/devstoreaccount1/az-\w+/SIM_DIR\.zip -> 201", result.stderr)
    assert "sig=" not in result.stderr
    assert "task states: active" in result.stderr
    assert "where the time went:" in result.stderr


def test_the_azure_template_passes_with_its_placeholders_filled(tmp_path, script_env):
    template = json.loads((REPO / "appconfig.azure.example.json").read_text())
    shutil.copytree(REPO / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("nodes_output", "*.csv", "__pycache__"))
    shutil.copy(REPO / "simconfig.json", tmp_path / "simconfig.json")
    write_json(tmp_path / "appconfig.json", template)
    as_shipped = run(RUNNER, tmp_path / "simconfig.json", script_env, "--dry-run")
    assert as_shipped.returncode == 2
    lines = [l for l in as_shipped.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == sum(1 for k, v in template.items() if "<" in str(v) and not k.startswith("_"))
    assert all("is still the template's placeholder" in l for l in lines)
    filled = {k: v for k, v in template.items()}
    filled.update(STORAGE_ACCOUNT_NAME="mystorage", BATCH_ACCOUNT_NAME="mybatch",
                  BATCH_ACCOUNT_URL="https://mybatch.westeurope.batch.azure.com",
                  WORKER_DOCKER_IMAGE="myuser/topas:4.0", DOCKER_USER="myuser")
    write_json(tmp_path / "appconfig.json", filled)
    env = {**script_env, "DOCKER_TOKEN": "dckr_pat_from_the_environment"}
    dry = run(RUNNER, tmp_path / "simconfig.json", env, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dckr_pat_from_the_environment" not in dry.stdout + dry.stderr


def test_status_counts_results_logs_and_merged_files_apart(campaign, script_env):
    campaign.update(REDUCER_SCRIPT="reduce.sh", REDUCER_PATH="reducer")
    folder = campaign.root / "reducer"
    folder.mkdir()
    (folder / "reduce.sh").write_text('#!/bin/bash\necho merged > "$1/results/all.txt"\n')
    assert run(RUNNER, campaign.simconfig, script_env, "--no-input").returncode == 0
    assert run(REDUCER, campaign.simconfig, script_env, "--no-input").returncode == 0
    status = run(RUNNER, campaign.simconfig, script_env, "--status")
    assert ("container tiny-campaign: 2 output file(s) in 2 run folder(s) (and 4 log file(s)), "
            "3 merged result file(s)") in status.stdout
    cleanup = run(RUNNER, campaign.simconfig, script_env, "--cleanup", "--no-input")
    assert "still needs the task outputs" not in cleanup.stderr
    assert "with all task outputs and the merged result?" in cleanup.stderr


def test_dry_run_of_a_git_reducer_names_its_source_without_credentials(campaign, script_env):
    campaign.update(REDUCER_SCRIPT="merge.py")
    app = json.loads(campaign.appconfig.read_text())
    app.update(GIT_USER="someone", GIT_REPO="reducers",
               GIT_BASE_URL="https://someone:s3cretpassw0rd@git.example.org")
    write_json(campaign.appconfig, app)
    result = run(REDUCER, campaign.simconfig, script_env, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "reducer code: merge.py from git repository https://***@git.example.org/someone/reducers.git" \
        in result.stdout or "reducer code: merge.py from git repository https://" in result.stdout
    assert "s3cretpassw0rd" not in result.stdout + result.stderr
