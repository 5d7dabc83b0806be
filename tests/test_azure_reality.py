"""A first campaign on a real Batch node works: each thing the real service and a real
container do, enforced by the fake service, run through the real scripts.

The worker image here is built like a TOPAS image (tests/support/images.py): a shell and core
tools only (no unzip, python3 or awk), TOPAS under /root (mode 0700), reached through an
ENTRYPOINT. Each test would fail against the tool as it was before these behaviours were
handled: the container sandbox runs as the node user, applies the image's ENTRYPOINT, pulls
private images only with matching credentials; auto pools take their nodes' files with them;
replies get lost; counts lag; nodes break.
"""
from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

import batch_data_reducer
import batch_simulation_runner
from common.backends.azure import backend as azure_backend
from common.signals import Terminated
from conftest import AZURITE_ACCOUNT, AZURITE_KEY, write_json
from test_azure_e2e import REDUCER, RUNNER, CampaignOnFake, azure_env  # noqa: F401
from tests.azure_settings import FAKE_DOCKER_TOKEN
from tests.support.images import GENERIC_IMAGE, TOPAS_IMAGE

RUN_SH = """#!/bin/sh
# The simulation: TOPAS on the parameter file (the seed is set in it per task).
set -e
/root/topas/bin/topas main.txt
sleep 1  # long enough for the runner to see the pool before the job (and pool) ends
"""
FAILING_RUN_SH = """#!/bin/sh
echo "first line" >&2
echo "real problem in task $1" >&2
exit 3
"""


class TopasCampaign(CampaignOnFake):
    """A small TOPAS-like campaign on the fake service and Azurite."""

    def __init__(self, root: Path, azurite, fake, run_sh: str = RUN_SH, **sim) -> None:
        self.root, self.fake = root, fake
        folder = root / "sim"
        folder.mkdir(parents=True)
        (folder / "run.sh").write_text(run_sh)
        (folder / "run.sh").chmod(0o755)
        (folder / "main.txt").write_text('s:Ge/World/Material = "G4_WATER"\ni:Ts/Seed = 1\n')
        self.sim_id = f"tp-{uuid.uuid4().hex[:10]}"
        self.sim = {"SIM_ID": self.sim_id, "POOL_NODE_COUNT": 2, "TASK_COUNT": 3,
                    "POOL_VM_SIZE": "STANDARD_D2S_V3", "LOCAL_SIM_PATH": "sim", "RUN_SCRIPT": "run.sh",
                    "REDUCER_SCRIPT": "builtin:topas", "OUTPUT_FILE_PATTERNS": ["Dose.csv"],
                    "SEED_PARAMETER_FILES": ["main.txt"], "TIMEOUT_MINUTES": 5, **sim}
        self.simconfig = write_json(root / "simconfig.json", self.sim)
        self.app = {"BACKEND": "azure", "STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
                    "STORAGE_ACCOUNT_KEY": AZURITE_KEY, "STORAGE_ACCOUNT_URL": azurite.url,
                    "BATCH_ACCOUNT_NAME": fake.account_name, "BATCH_ACCOUNT_KEY": fake.account_key,
                    "BATCH_ACCOUNT_URL": fake.url, "WORKER_DOCKER_IMAGE": TOPAS_IMAGE,
                    "REDUCER_DOCKER_IMAGE": "python:3.12-slim", "DOCKER_USER": "myuser",
                    "DOCKER_TOKEN": FAKE_DOCKER_TOKEN}
        self.write_app()

    def write_app(self, **changes) -> None:
        self.app.update(changes)
        write_json(self.root / "appconfig.json", {k: v for k, v in self.app.items() if v is not None})

    @property
    def results(self) -> Path:
        return self.root / "sim" / "nodes_output"


@pytest.fixture
def topas(tmp_path, azurite, fake_batch) -> TopasCampaign:
    return TopasCampaign(tmp_path / "tp", azurite, fake_batch)


def test_a_shell_only_image_with_topas_under_root_and_an_entrypoint_runs(topas, azure_env):
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert "3 of 3 task(s) succeeded" in result.stdout
    seeds = {i: (topas.results / f"run{i}" / "Dose.csv").read_text().split(", ")[-1].strip()
             for i in (1, 2, 3)}
    from common.campaign import sim_seed
    assert seeds == {i: str(sim_seed(topas.sim_id, i)) for i in (1, 2, 3)}  # set by sh alone
    # the simulation folder was unpacked once per node, on the node's OS, not in the image
    preps = [r for r in topas.fake.requests if r.operation == "Jobs_CreateJob"]
    assert preps and "jobPreparationTask" in preps[0].body
    assert topas.leftovers() == ([], [])


def test_without_root_the_image_files_under_root_are_out_of_reach(topas, azure_env):
    topas.write_app(RUN_AS_ROOT=False)
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "3 of 3 task(s) failed:" in result.stderr
    assert "/root/topas/bin/topas: Permission denied" in result.stderr  # from the stderr blob
    assert topas.leftovers() == ([], [])


def test_keeping_the_image_entrypoint_hands_it_the_command(topas, azure_env):
    topas.write_app(KEEP_IMAGE_ENTRYPOINT=True)
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "TOPAS: '/bin/sh' is not a parameter file" in result.stderr


def test_a_private_image_pulls_only_with_its_registrys_credentials(topas, azure_env):
    topas.write_app(DOCKER_TOKEN="dckr_pat_WRONG")
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "ContainerInvalidImage" in result.stderr and "incorrect username or password" in result.stderr
    assert "dckr_pat_WRONG" not in result.stderr + result.stdout


def test_each_image_gets_its_own_registry(topas, azure_env):
    """Worker on Docker Hub (DOCKER_*), reducer in a private ACR (REDUCER_DOCKER_*)."""
    topas.write_app(REDUCER_DOCKER_IMAGE=GENERIC_IMAGE, REDUCER_DOCKER_USER="u",
                    REDUCER_DOCKER_TOKEN="p")
    runner = topas.run(RUNNER, "--no-input", env=azure_env)
    assert runner.returncode == 0, runner.stderr
    topas.run(REDUCER, "--no-input", env=azure_env)  # the image has no python: the merge fails
    registries = {}
    for request in topas.fake.requests:
        if request.operation == "Jobs_CreateJob":
            pool = request.body["poolInfo"]["autoPoolSpecification"]["pool"]
            config = pool["virtualMachineConfiguration"]["containerConfiguration"]
            registries[config["containerImageNames"][0]] = [
                (r["registryServer"], r["username"]) for r in config["containerRegistries"]]
    assert registries == {"docker.io/myuser/topas:4.0": [("docker.io", "myuser")],
                          GENERIC_IMAGE: [("myregistry.azurecr.io", "u")]}


def test_failure_reports_and_the_reducer_log_come_from_storage_not_the_gone_node(
        tmp_path, azurite, fake_batch, azure_env):
    failing = TopasCampaign(tmp_path / "f", azurite, fake_batch, run_sh=FAILING_RUN_SH, TASK_COUNT=2)
    result = failing.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "| real problem in task 1" in result.stderr and "| real problem in task 2" in result.stderr
    # the auto pool, its nodes and their files went with the job: nothing was asked of them
    task = next(t for t in fake_batch.tasks if t.id == "task-1")
    assert task.task_dir is not None and not task.task_dir.exists()
    assert not [r for r in fake_batch.requests if r.operation == "Tasks_GetTaskFile"]


def test_lost_replies_and_throttling_still_add_every_task_once(topas, azure_env):
    topas.fake.knobs.drop_replies = {"Tasks_CreateTaskCollection": 1, "Jobs_CreateJob": 1,
                                     "Jobs_UpdateJob": 1}
    topas.fake.knobs.throttled_fraction = 0.15
    topas.fake.knobs.timeout_fraction = 0.05
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert "3 of 3 task(s) succeeded" in result.stdout
    lost = [r for r in topas.fake.requests if r.status == -1]
    assert {r.operation for r in lost} == {"Tasks_CreateTaskCollection", "Jobs_CreateJob",
                                            "Jobs_UpdateJob"}
    ids = [t.id for t in topas.fake.tasks]
    assert sorted(ids) == ["task-1", "task-2", "task-3"]  # each once, none twice


def test_lagging_counts_never_end_the_wait_early(topas, azure_env):
    topas.fake.knobs.task_counts_lag_polls = 1000  # every count answer is late
    topas.fake.knobs.node_start_delay = 0.5
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert "3 of 3 task(s) succeeded" in result.stdout
    assert all((topas.results / f"run{i}" / "Dose.csv").exists() for i in (1, 2, 3))


def test_one_unusable_node_among_good_ones_is_said_and_the_campaign_goes_on(topas, azure_env):
    topas.sim.update(POOL_NODE_COUNT=3)
    write_json(topas.simconfig, topas.sim)
    topas.fake.knobs.unusable_node_count = 1
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert "is unusable: NodeUnusable" in result.stderr and "goes on with the other nodes" in result.stderr


def test_a_partial_allocation_is_said_and_the_campaign_goes_on(topas, azure_env):
    topas.sim.update(POOL_NODE_COUNT=4)
    write_json(topas.simconfig, topas.sim)
    topas.fake.knobs.resize_error = "AllocationTimedout"
    topas.fake.knobs.resize_error_message = "Only 2 of 4 nodes could be allocated in time."
    topas.fake.knobs.partial_allocation = 2
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert "AllocationTimedout: Only 2 of 4 nodes" in result.stderr


def test_a_failing_job_preparation_stops_the_wait_with_its_words(topas, azure_env):
    topas.fake.knobs.job_preparation_failure = True
    azure_env = {**azure_env, "BATCH_TOOL_HEALTH_SECONDS": "0.5"}
    result = topas.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 1
    assert "the job preparation task failed, so no task can start" in result.stderr
    assert "job preparation fails on purpose" in result.stderr
    assert topas.leftovers() == ([], [])


def test_dry_run_shows_container_options_user_and_full_image_names(topas, azure_env):
    result = topas.run(RUNNER, "--dry-run", env=azure_env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert '"containerRunOptions": "--entrypoint /bin/sh"' in out
    assert '"elevationLevel": "admin"' in out
    assert '"imageName": "docker.io/myuser/topas:4.0"' in out
    assert '"jobPreparationTask"' in out
    order = [out.index(step) for step in ("POST /jobs (", "addtaskcollection x", "PATCH /jobs/")]
    assert order == sorted(order) and "terminatejob" in out
    assert topas.fake.request_count == 0


def in_this_process(env: dict[str, str], monkeypatch) -> None:
    """The scripts' environment for a main() run here (to stop it at a chosen call)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_attach_adds_the_tasks_a_stopped_runner_never_added_and_ends_the_job(
        topas, azure_env, monkeypatch):
    """SIGTERM while the tasks were being added (one of three in): the job had two tasks
    fewer than the manifest and was never told to end with its last task, so --attach
    waited for ever and the job with its auto pool stayed. Now --attach adds the missing
    tasks under their recorded ids and ends the job with its last task."""
    real_add = azure_backend.add_tasks

    def stopped_while_adding(client, job_id, tasks, sleep):
        real_add(client, job_id, tasks[:1], sleep=sleep)
        raise Terminated(signal.SIGTERM)
    in_this_process(azure_env, monkeypatch)
    monkeypatch.setattr(azure_backend, "add_tasks", stopped_while_adding)
    assert batch_simulation_runner.main([str(topas.simconfig), "--no-input"]) == 128 + 15
    monkeypatch.undo()
    assert sorted(t.id for t in topas.fake.tasks) == ["task-1"]
    topas.fake.clear_requests()
    result = topas.run(RUNNER, "--attach", "--no-input", env=azure_env)
    assert result.returncode == 0, result.stderr
    assert "2 task(s) recorded but not in job" in result.stderr
    assert "3 of 3 task(s) succeeded" in result.stdout
    assert sorted(t.id for t in topas.fake.tasks) == ["task-1", "task-2", "task-3"]
    sealed = [r for r in topas.fake.requests if r.operation == "Jobs_UpdateJob"
              and r.body.get("onAllTasksComplete") == "terminatejob"]
    assert sealed, [(r.method, r.operation) for r in topas.fake.requests]


def test_attach_to_a_reducer_job_without_its_task_says_so_instead_of_waiting(
        topas, azure_env, monkeypatch):
    def stopped_before_adding(client, job_id, tasks, sleep):
        raise Terminated(signal.SIGTERM)
    assert topas.run(RUNNER, "--no-input", env=azure_env).returncode == 0
    in_this_process(azure_env, monkeypatch)
    monkeypatch.setattr(azure_backend, "add_tasks", stopped_before_adding)
    assert batch_data_reducer.main([str(topas.simconfig), "--no-input"]) == 128 + 15
    monkeypatch.undo()
    result = topas.run(REDUCER, "--attach", "--no-input", env=azure_env)
    assert result.returncode == 1, result.stderr
    assert "lacks its task (the reducer was stopped while submitting it)" in result.stderr
    assert "--cleanup --no-input`, then run the reducer again" in result.stderr
    cleaned = topas.run(REDUCER, "--cleanup", "--no-input", env=azure_env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "nothing left that bills" in cleaned.stdout
