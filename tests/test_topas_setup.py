"""What each TOPAS run is told: threads and histories written into SEED_PARAMETER_FILES by the
task's own shell (the user's setting wins), the parameter files read as TOPAS reads them,
the cores of a VM size, what the manifest records and the merge is given, and how the
Azure requests carry the Geant4 data (staged in the preparation, read-only in the task)."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from common import campaign as cp
from common.worker import setup as ts
from common.backends.azure import builders as bb
from common.config import PoolImage, load_settings
from common.errors import ToolError
from common.manifest import Manifest, ManifestFile, JobRecord, load
from common.model import JobKind, RunSetup, SharedData
from common.worker.parameters import read_chain
from common.ui import Ui
from common.worker.cores import vm_cores
from common.workflow.reducer import histories_option
from conftest import write_json
from tests.azure_settings import azure_settings


@pytest.mark.parametrize("size, cores", [
    ("Standard_D4s_v5", 4), ("STANDARD_D2S_V3", 2), ("Standard_E32-8s_v5", 8),
    ("Standard_HB120rs_v3", 120), ("Standard_F16s_v2", 16), ("Standard_NC24ads_A100_v4", 24),
    ("Standard_A2_v2", 2), ("Standard_B2ms", 2), ("Standard_D16d_v5", 16),
    ("Standard_D3_v2", None), ("Standard_DS3_v2", None), ("Standard_D4", None), ("Standard_G5", None),
    ("Standard_A4", None), ("Standard_D2_v2_Promo", None), ("", None), (None, None), ("D4s_v5", None)])
def test_vm_cores_follow_azures_naming_convention_or_say_unknown(size, cores):
    assert vm_cores(size) == cores


def test_parameter_files_are_read_as_topas_reads_them(tmp_path):
    (tmp_path / "main.txt").write_text('includeFile = a.txt b.txt missing.txt\n'
                                       'i:TS/NumberOfThreads = 2 # mine\ns:Ts/Name = "x # y"\n')
    (tmp_path / "a.txt").write_text("i:Ts/NumberOfThreads = 8\ni:So/Beam/NumberOfHistoriesInRun = 5\n"
                                    's:So/Beam/Type = "Beam"\n')
    (tmp_path / "b.txt").write_text("i:So/Beam/NumberOfHistoriesInRun = 7\n")
    chain = read_chain(tmp_path / "main.txt", tmp_path)
    assert chain.get("ts/numberofthreads").value == "2"  # the file's own value wins
    assert chain.get("Ts/Name").value == '"x # y"'
    hist = chain.get("So/Beam/NumberOfHistoriesInRun")
    assert (hist.integer, hist.file) == (7, "b.txt")  # the last include wins
    assert chain.sources() == ("Beam",) and chain.unread == ("missing.txt",)


def _campaign(tmp_path: Path, main: str, **sim) -> Path:
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "run.sh").write_text("#!/bin/sh\ncat main.txt\n")
    (tmp_path / "sim" / "run.sh").chmod(0o755)
    (tmp_path / "sim" / "main.txt").write_text(main)
    write_json(tmp_path / "appconfig.json", {"BACKEND": "local"})
    return write_json(tmp_path / "simconfig.json", {
        "SIM_ID": "topas-setup", "POOL_NODE_COUNT": 1, "LOCAL_SIM_PATH": "sim",
        "RUN_SCRIPT": "run.sh", "OUTPUT_FILE_PATTERNS": ["*.csv"],
        "SEED_PARAMETER_FILES": ["main.txt"], **sim})


@pytest.mark.parametrize("sim, main, words", [
    ({"SEED_PARAMETER_FILES": None, "TOPAS_THREADS": 4}, "", "SEED_PARAMETER_FILES names no parameter file"),
    ({"HISTORIES_PER_TASK": 10}, 's:So/A/Type = "Beam"\ns:So/B/Type = "Beam"\n', "defines 2 sources (A, B)"),
    ({"HISTORIES_PER_TASK": 10}, "", "defines no source"),
    ({"TOPAS_THREADS": 0}, "", "outside 1..1024"),
])
def test_bad_threads_and_histories_are_one_line(tmp_path, sim, main, words):
    simconfig = _campaign(tmp_path, main, **sim)
    data = json.loads(simconfig.read_text())
    write_json(simconfig, {k: v for k, v in data.items() if v is not None})
    with pytest.raises(ToolError) as refused:
        load_settings(simconfig)
    assert refused.value.exit_code == 2
    assert any(words in line for line in refused.value.lines), refused.value.lines


def _run_task(tmp_path: Path, settings, env: dict[str, str]) -> list[str]:
    """The worker command of task 1, run by busybox's sh alone on the prepared folder."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sh", "cp", "rm", "cat"):
        (tools / tool).symlink_to(busybox)
    prep = tmp_path / "prep"
    (prep / "sim").mkdir(parents=True)
    for path in (tmp_path / "sim").iterdir():
        shutil.copy2(path, prep / "sim" / path.name)
    command = cp.worker_task(settings, 1).command
    wd = tmp_path / "wd"
    wd.mkdir()
    done = subprocess.run(["sh", "-c", command], cwd=wd, capture_output=True, text=True,
                          env={"PATH": str(tools), "AZ_BATCH_JOB_PREP_WORKING_DIR": str(prep),
                               "SIM_SEED": "4242", **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_threads_histories_and_data_folder_are_written_with_shell_builtins(tmp_path):
    simconfig = _campaign(tmp_path, 's:So/Beam/Type = "Beam"\n  s:ts/G4DataDirectory = "/home/me/G4Data"\n',
                          TOPAS_THREADS=6, HISTORIES_PER_TASK=12345)
    (tmp_path / "G4Data").mkdir()
    write_json(tmp_path / "appconfig.json", {"BACKEND": "local", "GEANT4_DATA_DIR": "G4Data"})
    for name in ("G4ENSDFSTATE3.0", "G4EMLOW8.6.1"):
        (tmp_path / "G4Data" / name).mkdir()
    settings = load_settings(simconfig)
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "geant4-data.env").write_text("export TOPAS_G4_DATA_DIR='/node/shared/g4'\n")
    lines = _run_task(tmp_path, settings, {})
    assert lines == ['s:So/Beam/Type = "Beam"', 's:Ts/G4DataDirectory = "/node/shared/g4"',
                     "i:Ts/Seed = 4242", "i:Ts/NumberOfThreads = 6",
                     "i:So/Beam/NumberOfHistoriesInRun = 12345"]
    assert ts.run_setup(settings) == RunSetup(6, "TOPAS_THREADS", 12345, "HISTORIES_PER_TASK")


def test_the_users_own_setting_wins_and_the_dry_run_says_so(tmp_path):
    simconfig = _campaign(tmp_path, 'includeFile = beam.txt\ni:Ts/NumberOfThreads = 2\n',
                          TOPAS_THREADS=6, HISTORIES_PER_TASK=12345)
    (tmp_path / "sim" / "beam.txt").write_text('s:So/Beam/Type = "Beam"\n'
                                               "i:So/Beam/NumberOfHistoriesInRun = 500\n"
                                               "i:Tf/NumberOfSequentialTimes = 3\n")
    settings = load_settings(simconfig)
    assert _run_task(tmp_path, settings, {}) == ["includeFile = beam.txt", "i:Ts/NumberOfThreads = 2",
                                                 "i:Ts/Seed = 4242"]
    text = "\n".join(ts.describe(settings))
    assert "your own setting wins: Ts/NumberOfThreads = 2 (main.txt) — TOPAS_THREADS is not applied" in text
    assert "So/Beam/NumberOfHistoriesInRun = 500 (beam.txt) — HISTORIES_PER_TASK is not applied" in text
    setup = ts.run_setup(settings)
    assert (setup.threads, setup.histories) == (2, 1500)  # 500 x 3 sequential times
    assert setup.threads_from == "main.txt (your setting)"


def test_without_topas_threads_a_task_uses_its_share_of_the_node(tmp_path):
    settings = load_settings(_campaign(tmp_path, "", TASK_SLOTS_PER_NODE=2))
    known = ts.with_node_threads(settings, 4)
    assert "TOPAS_THREADS=4" in cp.worker_task(known, 1).command
    assert ts.threads_for(known) == (4, "the node's cores / 2 task slots")
    # Unknown to the tool (a legacy VM size): the task counts the cores on its node.
    assert _run_task(tmp_path, settings, {})[-1] == "i:Ts/NumberOfThreads = 1"  # no nproc: 1 / 2 -> 1
    assert ts.run_setup(settings).threads is None


def test_campaigns_without_parameter_files_get_the_commands_they_had(tmp_path):
    simconfig = _campaign(tmp_path, "")
    data = json.loads(simconfig.read_text())
    del data["SEED_PARAMETER_FILES"]
    settings = load_settings(write_json(simconfig, data))
    command = cp.worker_task(settings, 1).command
    assert "set_param" not in command and "TOPAS_THREADS" not in command
    assert cp.worker_job(settings, cp.CampaignIds("topas-setup", "1")).setup is None


def test_keep_image_entrypoint_is_refused_with_the_official_image(tmp_path):
    simconfig = _campaign(tmp_path, "")
    write_json(tmp_path / "appconfig.json", {
        "BACKEND": "local", "KEEP_IMAGE_ENTRYPOINT": True,
        "WORKER_DOCKER_IMAGE": "docker.io/opentopas/opentopas:v4.3.0-geant4-11.4.2"})
    with pytest.raises(ToolError) as refused:
        load_settings(simconfig)
    [line] = refused.value.lines
    assert "KEEP_IMAGE_ENTRYPOINT: is true, but the official OpenTOPAS image's entrypoint" in line


# ---------------------------------------------------------------------------- Azure requests


def test_the_preparation_stages_the_data_first_and_tasks_see_it_read_only(tmp_path):
    settings = azure_settings(tmp_path)
    app = dataclasses.replace(settings.app, geant4_data_dir=tmp_path)
    job = cp.worker_job(dataclasses.replace(settings, app=app), cp.CampaignIds("g", "1"))
    shared = SharedData(key="0123456789abcdef", datasets=(("G4EMLOW8.6.1", "G4LEDATA"),),
                        layout="archives", container="geant4-data-shared-by-batch-campaigns-keep")
    job = dataclasses.replace(job, shared_data=shared)
    urls = bb.TaskUrls(read={"SIM_DIR.zip": "https://a/c/SIM_DIR.zip?sig=A",
                             "simconfig.json": "https://a/c/simconfig.json?sig=B",
                             "geant4_stage.py": "https://a/c/geant4_stage.py?sig=C"},
                       read_list="https://a/c?sig=D", write="https://a/c?sig=E",
                       data_source="https://a/geant4-data-shared-by-batch-campaigns-keep?sp=rl&sig=F")
    setup = bb.NodeSetup(PoolImage("microsoft-dsvm", "ubuntu-hpc", "2404"), "batch.node.ubuntu 24.04", None)
    prep = bb.job_options(job, setup, urls).as_dict()["jobPreparationTask"]
    assert prep["commandLine"].startswith("/bin/sh -c 'command -v python3")
    assert "python3 geant4_stage.py || exit $?; set -e" in prep["commandLine"]
    env = {e["name"]: e["value"] for e in prep["environmentSettings"]}
    assert env["G4STAGE_KEY"] == "0123456789abcdef" and env["G4STAGE_LAYOUT"] == "archives"
    assert [f["filePath"] for f in prep["resourceFiles"]][-1] == "geant4_stage.py"
    assert "sig=F" not in bb.redacted_json(bb.job_options(job, setup, urls))
    task = bb.task_options(job.tasks[0], job, urls).as_dict()
    assert task["containerSettings"]["containerHostBatchBindMounts"] == [
        {"source": "Task", "isReadOnly": False}, {"source": "JobPrep", "isReadOnly": True},
        {"source": "Shared", "isReadOnly": True}]
    assert ". \"$AZ_BATCH_JOB_PREP_WORKING_DIR/geant4-data.env\"" in task["commandLine"]
    plain = cp.worker_job(settings, cp.CampaignIds("g", "1"))  # no data: nothing changes
    assert "containerHostBatchBindMounts" not in bb.task_options(plain.tasks[0], plain, urls).as_dict()["containerSettings"]


# ---------------------------------------------------------------------------- manifest, merge


def test_the_manifest_records_what_runs_were_told_and_the_merge_gets_their_histories(tmp_path):
    path = tmp_path / "m.campaign.json"
    record = ManifestFile.open(path, Manifest(sim_id="mmm", backend="local", container="mmm", simconfig="s"))
    told = RunSetup(4, "the node's cores / 1 task slot", 20000, "main.txt")
    for job_id, indices in (("j1", (1, 2)), ("j2", (3,))):
        record.add_job(JobRecord(job_id, JobKind.WORKERS, None, tuple(f"task-{i}" for i in indices),
                                 indices, setup=told, shared_data="0123456789abcdef"))
    manifest = load(path)
    assert manifest.jobs[0].setup == told and manifest.jobs[0].shared_data == "0123456789abcdef"
    ctx = type("C", (), {"ui": Ui(Console(stderr=True, quiet=True))})()  # what it says is not read
    assert histories_option(ctx, manifest, (1, 2, 3)) == ("--histories", "20000")
    record.add_job(JobRecord("j3", JobKind.WORKERS, None, ("task-3-r1",), (3,),
                             setup=dataclasses.replace(told, histories=5)))
    assert histories_option(ctx, load(path), (1, 2, 3)) == ()  # runs told different numbers
    assert histories_option(ctx, load(path), (1, 2)) == ("--histories", "20000")
    data = json.loads(path.read_text())
    data["jobs"][0]["setup"]["threads"] = "all"
    path.write_text(json.dumps(data))
    with pytest.raises(ToolError, match="jobs\\[0\\].setup: threads and histories"):
        load(path)
