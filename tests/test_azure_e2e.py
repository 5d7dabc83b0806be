"""Both scripts with --backend azure against the fake Batch service and Azurite: the example
campaign to a merged result identical to the local backend's, and each misbehaviour of the
service ending with the right message and exit code, with no pool or job left behind."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import AZURITE_ACCOUNT, AZURITE_KEY, REPO, write_json
from tests.azure_settings import FAKE_DOCKER_TOKEN
from tests.support.images import EXAMPLE_HISTORIES

RUNNER = str(REPO / "batch_simulation_runner.py")
REDUCER = str(REPO / "batch_data_reducer.py")


class CampaignOnFake:
    """A campaign folder (root, simconfig, sim) run against the fake service (fake)."""

    root: Path
    simconfig: Path
    sim: dict
    fake: object

    def update(self, **sim) -> None:
        self.sim.update(sim)
        write_json(self.simconfig, self.sim)

    def run(self, script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, str(self.simconfig), *args], cwd=self.root,
                              env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=180)

    def leftovers(self) -> tuple[list[str], list[str]]:
        """Pools and jobs the fake still has (deleting ones count as gone)."""
        client = self.fake.client()
        # The SDK's enums are str subclasses: compare, do not str() them (that gives the name).
        pools = [p.id for p in client.list_pools() if p.state != "deleting"]
        jobs = [j.id for j in client.list_jobs() if j.state != "deleting"]
        return pools, jobs


class AzureCampaign(CampaignOnFake):
    """The shipped example, copied, configured for the fake service and Azurite."""

    def __init__(self, root: Path, azurite, fake) -> None:
        self.root, self.fake = root, fake
        shutil.copytree(REPO / "examples" / "water_phantom", root / "examples" / "water_phantom",
                        ignore=shutil.ignore_patterns("nodes_output", "__pycache__", "*.csv"))
        self.sim_id = f"az-{uuid.uuid4().hex[:10]}"
        self.sim = json.loads((REPO / "simconfig.json").read_text())
        self.sim.update(SIM_ID=self.sim_id, TIMEOUT_MINUTES=5)
        self.simconfig = write_json(root / "simconfig.json", self.sim)
        self.app = {"BACKEND": "azure", "STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
                    "STORAGE_ACCOUNT_KEY": AZURITE_KEY, "STORAGE_ACCOUNT_URL": azurite.url,
                    "BATCH_ACCOUNT_NAME": fake.account_name, "BATCH_ACCOUNT_KEY": fake.account_key,
                    "BATCH_ACCOUNT_URL": fake.url, "WORKER_DOCKER_IMAGE": "myuser/waterphantom:1.0",
                    "REDUCER_DOCKER_IMAGE": "python:3.12-slim", "DOCKER_USER": "myuser",
                    "DOCKER_TOKEN": FAKE_DOCKER_TOKEN}
        write_json(root / "appconfig.json", self.app)

    @property
    def results(self) -> Path:
        return self.root / "examples" / "water_phantom" / "nodes_output"


@pytest.fixture
def azure_env(script_env) -> dict[str, str]:
    # The example's image runs EXAMPLE_HISTORIES histories (tests/support/images.py): the local
    # backend, which runs on this machine, gets the same number from the script environment.
    assert script_env["EXAMPLE_HISTORIES"] == EXAMPLE_HISTORIES
    # Faults are injected on purpose: the same retries, a fraction of their back-off.
    return {**script_env, "BATCH_TOOL_POLL_SECONDS": "0.2", "BATCH_TOOL_RETRY_SCALE": "0.05"}


@pytest.fixture
def azure_campaign(tmp_path, azurite, fake_batch) -> AzureCampaign:
    return AzureCampaign(tmp_path / "az", azurite, fake_batch)


def test_example_campaign_on_azure_matches_the_local_backend(azure_campaign, azure_env, tmp_path):
    runner = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert runner.returncode == 0, runner.stderr
    assert "4 of 4 task(s) succeeded (azure backend)" in runner.stdout
    assert "billing safety: on" in runner.stdout
    reducer = azure_campaign.run(REDUCER, "--no-input", env=azure_env)
    assert reducer.returncode == 0, reducer.stderr
    merged = (azure_campaign.results / "results" / "DoseAtPhantom.csv").read_bytes()

    # The same campaign (same SIM_ID, so the same seeds) on the local backend.
    local = tmp_path / "local"
    shutil.copytree(azure_campaign.root / "examples", local / "examples",
                    ignore=shutil.ignore_patterns("nodes_output"))
    write_json(local / "simconfig.json", azure_campaign.sim)
    write_json(local / "appconfig.json", {"BACKEND": "local"})
    for script in (RUNNER, REDUCER):
        done = subprocess.run([sys.executable, script, str(local / "simconfig.json"), "--no-input"],
                              cwd=local, env=azure_env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=180)
        assert done.returncode == 0, done.stderr
    local_merged = local / "examples" / "water_phantom" / "nodes_output" / "results" / "DoseAtPhantom.csv"
    assert local_merged.read_bytes() == merged
    assert azure_campaign.leftovers() == ([], [])

    tasks = azure_campaign.fake.tasks
    # Full names (Batch applies docker.io's credentials only to names that start with it), run
    # as root in the container with /bin/sh as the entrypoint (the image's own one refuses).
    assert {t.image for t in tasks} == {"docker.io/myuser/waterphantom:1.0",
                                        "docker.io/library/python:3.12-slim"}
    assert {t.body["containerSettings"].get("containerRunOptions") for t in tasks} == {
        "--entrypoint /bin/sh"}
    assert {t.body["userIdentity"]["autoUser"]["elevationLevel"] for t in tasks} == {"admin"}


def test_quota_reached_stops_at_once_and_leaves_nothing(azure_campaign, azure_env):
    azure_campaign.fake.knobs.resize_error = "AccountCoreQuotaReached"
    result = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "AccountCoreQuotaReached: The specified account has reached VM core quota" in result.stderr
    assert "Traceback" not in result.stderr
    assert azure_campaign.leftovers() == ([], [])


@pytest.mark.parametrize("knob, words", [("start_task_failure", "start task failed"),
                                         ("unusable_nodes", "is unusable")])
def test_broken_nodes_stop_at_once(azure_campaign, azure_env, knob, words):
    setattr(azure_campaign.fake.knobs, knob, True)
    result = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert words in result.stderr
    assert azure_campaign.leftovers() == ([], [])


def test_failed_task_is_named_with_its_exit_code_and_stderr(azure_campaign, azure_env):
    azure_campaign.fake.knobs.fail_tasks = "^task-3$"
    azure_campaign.fake.knobs.fail_exit_code = 42
    result = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "1 of 4 task(s) failed:" in result.stderr
    assert "task-3: exit code 42 [FailureExitCode:" in result.stderr
    assert "3 of 4 task(s) succeeded, 1 failed" in result.stdout
    assert azure_campaign.leftovers() == ([], [])


def test_failed_output_upload_is_reported(azure_campaign, azure_env):
    azure_campaign.fake.knobs.upload_failure = "^task-2$"
    result = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "task-2: exit code 0 [FileUpload" in result.stderr


def test_image_pull_error_is_reported(azure_campaign, azure_env):
    azure_campaign.fake.knobs.image_pull_failure = "waterphantom"
    result = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "[ContainerInvalidImage:" in result.stderr
    assert azure_campaign.leftovers() == ([], [])


def test_transient_503s_and_500s_are_survived_with_bounded_requests(azure_campaign, azure_env):
    azure_campaign.fake.knobs.busy_fraction = 0.15
    azure_campaign.fake.knobs.internal_error_fraction = 0.05
    result = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert azure_campaign.fake.request_count < 400


def test_wrong_batch_key_is_a_clear_error(azure_campaign, azure_env):
    azure_campaign.app["BATCH_ACCOUNT_KEY"] = "d3Jvbmcga2V5IGZvciB0aGUgZmFrZSBhY2NvdW50"
    write_json(azure_campaign.root / "appconfig.json", azure_campaign.app)
    result = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "refused the credentials" in result.stderr
    assert "Traceback" not in result.stderr


def test_named_pool_is_reused_and_kept_only_by_choice(azure_campaign, azure_env):
    azure_campaign.update(AUTO_DELETE_POOL=False, TASK_COUNT=2, POOL_NODE_COUNT=2)
    first = azure_campaign.run(RUNNER, "--no-input", env=azure_env)
    assert first.returncode == 0, first.stderr
    assert "billing safety: off" in first.stdout
    assert azure_campaign.leftovers() == ([], [])


def test_dry_run_sends_nothing(azure_campaign, azure_env):
    result = azure_campaign.run(RUNNER, "--dry-run", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert azure_campaign.fake.request_count == 0
    assert '"autoPoolSpecification"' in result.stdout and "sig=***" in result.stdout
    assert FAKE_DOCKER_TOKEN not in result.stdout + result.stderr
    assert AZURITE_KEY not in result.stdout + result.stderr
