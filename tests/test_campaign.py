"""Pure builders: ids, seeds, commands and task specs."""
from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from common import campaign as cp
from common.errors import ToolError
from common.config import load_settings
from common.packaging import build_archive


def test_seeds_are_unique_reproducible_and_in_range():
    seeds = [cp.sim_seed("water-phantom", i) for i in range(200_000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**31 for s in seeds)
    assert seeds[:5] == [cp.sim_seed("water-phantom", i) for i in range(5)]
    assert cp.sim_seed("other-campaign", 1) != cp.sim_seed("water-phantom", 1)


def test_ids_follow_the_original_scripts(campaign):
    ids = cp.CampaignIds("My-Sim", "20260101120000")
    assert ids.container == "my-sim"
    assert (ids.worker_pool, ids.worker_job) == ("My-Sim-workers", "My-Sim-workers-20260101120000")
    assert (ids.reducer_pool, ids.reducer_job) == ("My-Sim-reducer", "My-Sim-reducer-20260101120000")


def test_worker_tasks_number_from_starting_node_with_their_seed(campaign):
    campaign.update(TASK_COUNT=3, STARTING_NODE=11)
    settings = load_settings(campaign.simconfig)
    job = cp.worker_job(settings, cp.CampaignIds("tiny-campaign", "20260101120000"))
    assert [t.task_id for t in job.tasks] == ["task-11", "task-12", "task-13"]
    env = dict(job.tasks[0].environment)
    assert env["TASK_INDEX"] == "11" and env["SIM_SEED"] == str(cp.sim_seed("tiny-campaign", 11))
    assert job.tasks[0].command.endswith("exec ./run.sh 11")
    destinations = {o.pattern: o.destination for o in job.tasks[0].outputs}
    assert destinations == {"out_*.txt": "nodes_output/run11/", "../std*.txt": "nodes_output/run11/"}


def test_plain_file_pattern_becomes_a_full_blob_name():
    output = cp.output_under("Dose.csv", "nodes_output/run2/", "success")
    assert output.destination == "nodes_output/run2/Dose.csv"


def test_worker_command_unpacks_and_passes_the_index(tmp_path):
    sim = tmp_path / "sim"
    (sim / "sub").mkdir(parents=True)
    script = sim / "sub" / "go.sh"
    script.write_text('#!/bin/bash\necho "index=$1 cwd=$(basename $PWD)"\n')
    script.chmod(0o644)  # the command makes it executable, as Batch nodes lose no mode bits
    wd = tmp_path / "wd"
    wd.mkdir()
    build_archive(sim, wd / cp.SIM_ARCHIVE_BLOB)
    result = subprocess.run(["bash", "-c", cp.worker_command("sub/go.sh", 5)], cwd=wd,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "index=5 cwd=wd"


def test_archive_is_deterministic_and_leaves_out_results(tmp_path):
    sim = tmp_path / "sim"
    (sim / "nodes_output" / "run1").mkdir(parents=True)
    (sim / "nodes_output" / "run1" / "big.csv").write_text("result")
    (sim / "b.txt").write_text("b")
    (sim / "a.txt").write_text("a")
    (sim / "appconfig.json").write_text('{"STORAGE_ACCOUNT_KEY": "c2VjcmV0"}')  # never uploaded
    (sim / "results").mkdir()
    (sim / "results" / "x").write_text("x")
    first = build_archive(sim, tmp_path / "1.zip", exclude=(sim / "results",))
    (sim / "a.txt").touch()  # a new mtime must not change the bytes
    second = build_archive(sim, tmp_path / "2.zip", exclude=(sim / "results",))
    assert (tmp_path / "1.zip").read_bytes() == (tmp_path / "2.zip").read_bytes()
    assert zipfile.ZipFile(first.path).namelist() == ["a.txt", "b.txt"]
    assert second.files == 2


def test_seed_is_written_into_topas_parameter_files(tmp_path):
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "main.txt").write_text('s:Ge/World/Material = "G4_WATER"\n  I:TS/SEED = 17\ni:Ts/NumberOfThreads = 1\n')
    (sim / "other.txt").write_text("d:Ge/World/HLX = 10 cm")  # no seed line, no final newline
    (sim / "go.sh").write_text("#!/bin/bash\ncat main.txt other.txt\n")
    wd = tmp_path / "wd"
    wd.mkdir()
    build_archive(sim, wd / cp.SIM_ARCHIVE_BLOB)
    command = cp.worker_command("go.sh", 3, ("main.txt", "other.txt"))
    result = subprocess.run(["bash", "-c", command], cwd=wd, capture_output=True, text=True,
                            env={"SIM_SEED": "123456789", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        's:Ge/World/Material = "G4_WATER"', "i:Ts/Seed = 123456789", "i:Ts/NumberOfThreads = 1",
        "d:Ge/World/HLX = 10 cm", "i:Ts/Seed = 123456789"]


@pytest.mark.parametrize("value, what", [(["absent.txt"], "does not exist"),
                                         (["../outside.txt"], "is not inside"),
                                         ("main.txt", "must be a list")])
def test_bad_seed_parameter_files_are_refused(campaign, value, what):
    campaign.update(SEED_PARAMETER_FILES=value)
    with pytest.raises(ToolError) as refused:
        load_settings(campaign.simconfig)
    assert refused.value.exit_code == 2
    [line] = refused.value.lines
    assert line.startswith("simconfig.json: SEED_PARAMETER_FILES:") or "SEED_PARAMETER_FILES" in line
    assert what in line


def test_seed_parameter_files_reach_the_worker_command(campaign):
    (campaign.sim_dir / "main.txt").write_text("i:Ts/Seed = 1\n")
    campaign.update(SEED_PARAMETER_FILES=["main.txt"])
    task = cp.worker_task(load_settings(campaign.simconfig), 1)
    assert "set_seed main.txt" in task.command
