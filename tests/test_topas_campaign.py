"""A real OpenTOPAS campaign, end to end: examples/topas_water_phantom through the runner and
the reducer with --backend azure against the fake Batch service and Azurite, in a stand-in
of the official image (tests/support/images.py: its `topas` checks what real TOPAS and
Geant4 check — the data where promised, the parameter files — and writes TOPAS's formats).

The Geant4 data goes up once to the shared container (a second campaign uploads nothing),
reaches every node in its job preparation task, and each task sees it read-only; damaged
data fails the preparation with one line naming the data set, and no task starts.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContentSettings

from conftest import AZURITE_ACCOUNT, AZURITE_KEY, REPO, write_json
from common.geant4.upload import SHARED_CONTAINER
from tests.support.geant4 import make_geant4_data
from tests.support.images import OPENTOPAS_IMAGE

RUNNER = str(REPO / "batch_simulation_runner.py")
REDUCER = str(REPO / "batch_data_reducer.py")
EXAMPLE = REPO / "examples" / "topas_water_phantom"


class TopasCampaign:
    """The TOPAS example, copied, configured for the fake service and Azurite."""

    def __init__(self, root: Path, azurite, fake, data: Path) -> None:
        self.root, self.fake, self.azurite = root, fake, azurite
        shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("nodes_output", "appconfig.json"))
        self.sim = json.loads((root / "simconfig.json").read_text())
        self.sim.update(SIM_ID=f"tp-{uuid.uuid4().hex[:10]}", TASK_COUNT=3, POOL_NODE_COUNT=2,
                        TIMEOUT_MINUTES=5)
        self.simconfig = write_json(root / "simconfig.json", self.sim)
        self.app = {"BACKEND": "azure", "STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
                    "STORAGE_ACCOUNT_KEY": AZURITE_KEY, "STORAGE_ACCOUNT_URL": azurite.url,
                    "BATCH_ACCOUNT_NAME": fake.account_name, "BATCH_ACCOUNT_KEY": fake.account_key,
                    "BATCH_ACCOUNT_URL": fake.url, "WORKER_DOCKER_IMAGE": OPENTOPAS_IMAGE,
                    "REDUCER_DOCKER_IMAGE": "python:3.12-slim", "GEANT4_DATA_DIR": str(data)}
        write_json(root / "appconfig.json", self.app)

    def update(self, **sim) -> None:
        self.sim.update(sim)
        write_json(self.simconfig, self.sim)

    def configure(self, **app) -> None:
        self.app.update(app)
        self.app = {k: v for k, v in self.app.items() if v is not None}
        write_json(self.root / "appconfig.json", self.app)

    def run(self, script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, script, str(self.simconfig), *args], cwd=self.root,
                              env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=240)

    @property
    def results(self) -> Path:
        return self.root / "simulation" / "nodes_output"


@pytest.fixture
def topas_env(script_env, tmp_path) -> dict[str, str]:
    # Each test's own cache of content keys: the "read once" of one test is not another's.
    return {**script_env, "BATCH_TOOL_POLL_SECONDS": "0.2", "BATCH_TOOL_HEALTH_SECONDS": "0.5",
            "BATCH_TOOL_RETRY_SCALE": "0.05", "XDG_CACHE_HOME": str(tmp_path / "cache")}


@pytest.fixture
def g4data(tmp_path) -> Path:
    return make_geant4_data(tmp_path / "G4Data", salt=uuid.uuid4().hex)


def _shared(azurite):
    service = BlobServiceClient(azurite.url, credential={"account_name": AZURITE_ACCOUNT,
                                                          "account_key": AZURITE_KEY})
    return service.get_container_client(SHARED_CONTAINER)


def _lines(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


def test_official_image_campaign_runs_with_the_geant4_data_staged_once(
        tmp_path, azurite, fake_batch, g4data, topas_env):
    first = TopasCampaign(tmp_path / "first", azurite, fake_batch, g4data)
    done = first.run(RUNNER, "--no-input", env=topas_env)
    assert done.returncode == 0, done.stderr
    assert "3 of 3 task(s) succeeded (azure backend)" in done.stdout
    assert _lines(done.stderr, "Geant4 data") and "uploaded 0 bytes" not in done.stderr

    for index in (1, 2, 3):  # outputs in the task folder, in TOPAS's formats
        run = first.results / f"run{index}"
        assert (run / "DoseInPhantom.csv").read_text().startswith("# TOPAS Version:")
        assert (run / "DoseInPhantomBinary.binheader").exists() and (run / "DoseInPhantomBinary.bin").exists()
        log = (run / "stdout.txt").read_text()
        # the data where promised, read-only; the seed and the node's threads injected
        [said] = _lines(log, "stand-in: seed")
        assert "(read-only: yes)" in said and "/geant4-data/" in said
        assert int(re.search(r"threads (\d+)", said).group(1)) >= 1
        seeds = re.search(r"seed (\d+)", said).group(1)
        assert seeds != "1"  # each task's own SIM_SEED, not the file's
    # Each node got the data in its job preparation, before its first task; the tasks saw only
    # their folders, the preparation's and the node's shared folder (read-only).
    tasks = [t for t in fake_batch.tasks if t.body["id"].startswith("task-")]
    mounts = tasks[0].body["containerSettings"]["containerHostBatchBindMounts"]
    assert {(m["source"], m.get("isReadOnly", False)) for m in mounts} == {
        ("Task", False), ("JobPrep", True), ("Shared", True)}
    assert {t.body["containerSettings"]["imageName"] for t in tasks} == {f"docker.io/{OPENTOPAS_IMAGE}"}

    shared = _shared(azurite)
    blobs = {b.name: b.size for b in shared.list_blobs()}
    assert [n for n in blobs if n.startswith("sets/")] and len([n for n in blobs if n.startswith("datasets/")]) == 6
    manifest = json.loads(first.root.joinpath(f"{first.sim['SIM_ID']}.campaign.json").read_text())
    [job] = manifest["jobs"]
    assert job["setup"]["threads"] is not None or "nproc" in job["setup"]["threads_from"]
    assert job["setup"]["histories"] == 1_000_000  # what water_phantom.txt says
    assert job["shared_data"]

    # The reducer merges the runs; its histories come from the files.
    reduced = first.run(REDUCER, "--no-input", env=topas_env)
    assert reduced.returncode == 0, reduced.stderr
    merged = first.results / "results" / "DoseInPhantom.csv"
    assert "# TOPAS Version" in merged.read_text()

    # A second campaign (another SIM_ID, the same data folder) uploads no data at all.
    second = TopasCampaign(tmp_path / "second", azurite, fake_batch, g4data)
    again = second.run(RUNNER, "--no-input", env=topas_env)
    assert again.returncode == 0, again.stderr
    assert _lines(again.stderr, "0 bytes uploaded"), again.stderr
    assert "reading Geant4 data set" not in again.stderr  # the content keys were remembered
    assert {b.name: b.size for b in shared.list_blobs()} == blobs
    # No cleanup deletes the shared container.
    cleaned = second.run(RUNNER, "--cleanup", "--yes", env=topas_env)
    assert cleaned.returncode in (0, 1), cleaned.stderr
    assert shared.exists()


def _partial_archive(folder: Path, name: str) -> bytes:
    """A .tar.gz of data set `name` without its last file (as an interrupted copy leaves it)."""
    files = sorted(p for p in (folder / name).rglob("*") if p.is_file())[:-1]
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w|") as archive:
        for path in files:
            archive.add(path, arcname=f"{name}/{path.relative_to(folder / name).as_posix()}")
    return raw.getvalue()


def test_a_partial_data_set_fails_the_preparation_with_one_line_and_no_task_runs(
        tmp_path, azurite, fake_batch, g4data, topas_env):
    campaign = TopasCampaign(tmp_path / "c", azurite, fake_batch, g4data)
    dry = campaign.run(RUNNER, "--dry-run", env=topas_env)
    assert dry.returncode == 0, dry.stderr
    # Put a partial G4EMLOW where its archive will be looked for: the names are content keys,
    # so a campaign reuses what it finds (a broken upload of someone else's).
    from common.geant4.data import content_keys, scan
    from common.geant4.upload import archive_blob
    keys = content_keys(scan(g4data), environ={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    damaged = _partial_archive(g4data, "G4EMLOW8.6.1")
    shared = _shared(azurite)
    if not shared.exists():
        shared.create_container()
    shared.upload_blob(archive_blob("G4EMLOW8.6.1", keys["G4EMLOW8.6.1"]), damaged, overwrite=True,
                       content_settings=ContentSettings(content_md5=hashlib.md5(damaged).digest()))
    done = campaign.run(RUNNER, "--no-input", env=topas_env)
    assert done.returncode == 1
    [line] = _lines(done.stderr, "the job preparation task failed")
    assert "Geant4 data set G4EMLOW8.6.1 is partial: 2 of 3 files" in line
    assert not any(t.body["id"].startswith("task-") and t.state == "completed" and t.exit_code
                   for t in fake_batch.tasks)  # not 500 failed tasks: none ran
    assert "task(s) failed" not in done.stderr


def test_without_the_data_every_task_fails_as_geant4_does(tmp_path, azurite, fake_batch, g4data,
                                                          topas_env):
    campaign = TopasCampaign(tmp_path / "c", azurite, fake_batch, g4data)
    campaign.configure(GEANT4_DATA_DIR=None)
    campaign.update(TASK_COUNT=1, POOL_NODE_COUNT=1)
    done = campaign.run(RUNNER, "--no-input", env=topas_env)
    assert done.returncode == 1
    assert "ENSDFSTATE.dat is not found." in done.stderr or "G4ENSDFSTATEDATA" in done.stderr


def test_histories_and_threads_are_written_unless_the_files_set_them(
        tmp_path, azurite, fake_batch, g4data, topas_env):
    campaign = TopasCampaign(tmp_path / "c", azurite, fake_batch, g4data)
    main = campaign.root / "simulation" / "water_phantom.txt"
    main.write_text(main.read_text().replace("i:So/Beam/NumberOfHistoriesInRun = 1000000", ""))
    campaign.update(TASK_COUNT=2, TOPAS_THREADS=3, HISTORIES_PER_TASK=25_000)
    dry = campaign.run(RUNNER, "--dry-run", env=topas_env)
    assert dry.returncode == 0, dry.stderr
    assert "i:So/Beam/NumberOfHistoriesInRun = 25,000 (HISTORIES_PER_TASK)" in dry.stdout
    assert "i:Ts/NumberOfThreads = 3 (TOPAS_THREADS)" in dry.stdout
    assert "$AZ_BATCH_NODE_SHARED_DIR/geant4-data/" in dry.stdout
    done = campaign.run(RUNNER, "--no-input", env=topas_env)
    assert done.returncode == 0, done.stderr
    said = (campaign.results / "run1" / "stdout.txt").read_text()
    assert "threads 3, histories 25000" in said
    manifest = json.loads(campaign.root.joinpath(f"{campaign.sim['SIM_ID']}.campaign.json").read_text())
    assert manifest["jobs"][0]["setup"] == {"threads": 3, "threads_from": "TOPAS_THREADS",
                                           "histories": 25000, "histories_from": "HISTORIES_PER_TASK"}

    assert "each run: 3 thread(s) (TOPAS_THREADS), 25,000 histories" in done.stderr

    # The user's own setting wins, and the dry run (and the run) say so.
    main.write_text(main.read_text() + "\ni:Ts/NumberOfThreads = 2\ni:So/Beam/NumberOfHistoriesInRun = 7000\n")
    dry = campaign.run(RUNNER, "--dry-run", "--overwrite", env=topas_env)  # runs 1-2 exist
    assert dry.returncode == 0, dry.stderr
    assert "your own setting wins: Ts/NumberOfThreads = 2 (water_phantom.txt) — TOPAS_THREADS is not applied" in dry.stdout
    assert "So/Beam/NumberOfHistoriesInRun = 7000 (water_phantom.txt) — HISTORIES_PER_TASK is not applied" in dry.stdout


def test_data_already_in_the_storage_account_is_fetched_file_by_file(
        tmp_path, azurite, fake_batch, g4data, topas_env):
    """GEANT4_DATA_URL: a G4Data folder copied into a container as it is (azcopy, az storage
    blob upload-batch): listed, keyed, fetched by each node, verified by size and MD5."""
    service = BlobServiceClient(azurite.url, credential={"account_name": AZURITE_ACCOUNT,
                                                          "account_key": AZURITE_KEY})
    container = service.get_container_client(f"g4user{uuid.uuid4().hex[:8]}")
    container.create_container()
    for path in sorted(p for p in g4data.rglob("*") if p.is_file()):
        container.upload_blob(f"geant4/11.3/{path.relative_to(g4data).as_posix()}", path.read_bytes())
    container.upload_blob("geant4/11.3/README.txt", b"not a data set")
    campaign = TopasCampaign(tmp_path / "c", azurite, fake_batch, g4data)
    campaign.configure(GEANT4_DATA_DIR=None,
                       GEANT4_DATA_URL=f"{azurite.url}/{container.container_name}/geant4/11.3")
    campaign.update(TASK_COUNT=1, POOL_NODE_COUNT=1)
    done = campaign.run(RUNNER, "--no-input", env=topas_env)
    assert done.returncode == 0, done.stderr
    assert "nothing to upload" in done.stderr
    said = (campaign.results / "run1" / "stdout.txt").read_text()
    assert "(read-only: yes)" in said and "Geant4 data" in said


def test_the_example_runs_on_the_local_backend_with_topas_on_the_path(tmp_path, g4data, script_env):
    """What examples/topas_water_phantom/README.md tells: the local backend, `topas` on PATH
    (here the stand-in), the data folder used in place; then the built-in merge."""
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("nodes_output", "appconfig.json"))
    app = json.loads((root / "appconfig.local.example.json").read_text())
    app.update(GEANT4_DATA_DIR=str(g4data), LOCAL_STORAGE_PATH=str(tmp_path / "localbatch"))
    write_json(root / "appconfig.json", app)
    sim = json.loads((root / "simconfig.json").read_text())
    sim.update(TASK_COUNT=2, POOL_NODE_COUNT=2, TIMEOUT_MINUTES=5)
    write_json(root / "simconfig.json", sim)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "topas").write_text(f"#!/bin/sh\nexec {sys.executable} "
                                   f"{REPO / 'tests' / 'support' / 'standin_topas.py'} \"$@\"\n")
    (bin_dir / "topas").chmod(0o755)
    env = {**script_env, "PATH": f"{bin_dir}:{script_env['PATH']}",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    try:
        dry = subprocess.run([sys.executable, RUNNER, "simconfig.json", "--dry-run"], cwd=root, env=env,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert dry.returncode == 0, dry.stderr
        assert "used in place" in dry.stdout and "i:Ts/NumberOfThreads = 1" in dry.stdout
        for script in (RUNNER, REDUCER):
            done = subprocess.run([sys.executable, script, "simconfig.json", "--no-input"], cwd=root,
                                  env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=240)
            assert done.returncode == 0, done.stderr
        said = (root / "simulation" / "nodes_output" / "run1" / "stdout.txt").read_text()
        assert f"Geant4 data {g4data.resolve()} (read-only: no)" in said  # in place
        merged = root / "simulation" / "nodes_output" / "results" / "DoseInPhantom.csv"
        assert merged.read_text().startswith("# TOPAS Version")
    finally:
        from conftest import stop_local_pools
        stop_local_pools(tmp_path / "localbatch")


def test_a_spot_node_back_after_an_eviction_has_the_data_before_its_task(
        tmp_path, azurite, fake_batch, g4data, topas_env):
    """Batch re-creates an evicted Spot node (its disk gone) and runs the job preparation
    again before the task it requeues: the task still finds the data, read-only."""
    campaign = TopasCampaign(tmp_path / "c", azurite, fake_batch, g4data)
    script = campaign.root / "simulation" / "run_topas.sh"
    script.write_text(script.read_text().replace("exec topas", "sleep 1\nexec topas"))
    campaign.update(TASK_COUNT=1, POOL_NODE_COUNT=0, SPOT_NODE_COUNT=1, SPOT_PRICE_PER_NODE_HOUR=0.1,
                    PRICE_PER_NODE_HOUR=1.0)
    knobs = fake_batch.knobs
    knobs.preemptions, knobs.preempt_after, knobs.preemption_lasts = 1, 0.3, 0.5
    done = campaign.run(RUNNER, "--no-input", env=topas_env)
    assert done.returncode == 0, done.stderr
    assert knobs.preemptions == 0  # the eviction happened
    said = (campaign.results / "run1" / "stdout.txt").read_text()
    assert "(read-only: yes)" in said
    # the VM came back empty (the fake re-creates it): the preparation — the data's staging
    # with it — ran again there before the requeued task, and succeeded
    runs = fake_batch.preparation_runs
    again = {r.node_id for r in runs if r.incarnation == 2 and r.result == "success"}
    assert again and {t.node_id for t in fake_batch.tasks if t.requeue_count} <= again
