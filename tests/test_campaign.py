"""Pure builders: ids, seeds, commands and task specs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    assert "\n./run.sh 11 || status=$?\n" in job.tasks[0].command
    assert job.tasks[0].inputs == ()  # the job preparation task brings the inputs, once a node
    assert [i.blob for i in job.preparation.inputs] == [cp.SIM_ARCHIVE_BLOB, cp.SIMCONFIG_BLOB]
    destinations = {o.pattern: o.destination for o in job.tasks[0].outputs}
    assert destinations == {"out_*.txt": "nodes_output/run11/", "../std*.txt": "nodes_output/run11/"}


def test_plain_file_pattern_becomes_a_full_blob_name():
    output = cp.output_under("Dose.csv", "nodes_output/run2/", "success")
    assert output.destination == "nodes_output/run2/Dose.csv"


@pytest.fixture
def shell_only(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH holds busybox's sh, cp and rm — and nothing else: what a
    task's container must at least have (no unzip, python3, awk or sed)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        if os.environ.get("CI"):
            pytest.fail("busybox is missing in CI (run_tests.sh installs busybox-static)")
        pytest.skip("busybox is not installed")
    tools = tmp_path / "shell-only-bin"
    tools.mkdir()
    for tool in ("sh", "cp", "rm"):
        (tools / tool).symlink_to(busybox)
    return {"PATH": str(tools)}


def prepare(tmp_path: Path, sim: Path, run_script: str, env: dict[str, str] | None = None) -> Path:
    """Run the job preparation command as a node would, on its own OS: returns its folder."""
    prep = tmp_path / "prep"
    prep.mkdir()
    build_archive(sim, prep / cp.SIM_ARCHIVE_BLOB)
    (prep / cp.SIMCONFIG_BLOB).write_text("{}")
    command = cp.preparation_command(cp.SIM_ARCHIVE_BLOB, cp.SIM_FOLDER, (cp.SIMCONFIG_BLOB,), run_script)
    done = subprocess.run(["/bin/sh", "-c", command], cwd=prep, capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    return prep


def run_task(tmp_path: Path, prep: Path, command: str, env: dict[str, str],
             name: str = "wd") -> subprocess.CompletedProcess:
    wd = tmp_path / name
    wd.mkdir()
    return subprocess.run(["sh", "-c", command], cwd=wd, capture_output=True, text=True,
                          env={**env, "AZ_BATCH_JOB_PREP_WORKING_DIR": str(prep)})


def test_a_task_needs_only_a_shell_and_cp(tmp_path, shell_only):
    sim = tmp_path / "sim"
    (sim / "sub").mkdir(parents=True)
    script = sim / "sub" / "go.sh"
    script.write_text('#!/bin/sh\necho "index=$1 cwd=${PWD##*/}"; [ -e simconfig.json ]\n')
    script.chmod(0o644)  # the preparation makes RUN_SCRIPT executable
    prep = prepare(tmp_path, sim, "sub/go.sh")
    result = run_task(tmp_path, prep, cp.worker_command("sub/go.sh", 5), shell_only)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "index=5 cwd=wd"
    assert (tmp_path / "wd" / "simconfig.json").exists()


def test_preparation_unpacks_with_python_when_the_node_has_no_unzip(tmp_path, shell_only):
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "go.sh").write_text("#!/bin/sh\necho ran\n")
    (sim / "go.sh").chmod(0o755)
    (sim / "tool.sh").write_text("#!/bin/sh\n")
    (sim / "tool.sh").chmod(0o755)
    (sim / "data.txt").write_text("1 2 3\n")
    tools = Path(shell_only["PATH"])
    (tools / "python3").symlink_to(sys.executable)
    (tools / "chmod").symlink_to(shutil.which("busybox"))
    prep = prepare(tmp_path, sim, "go.sh", env=shell_only)
    assert (prep / "sim" / "tool.sh").stat().st_mode & 0o777 == 0o755  # the mode bits survive
    assert (prep / "sim" / "data.txt").stat().st_mode & 0o777 == 0o644
    (tools / "python3").unlink()
    again = subprocess.run(["/bin/sh", "-c", cp.preparation_command(cp.SIM_ARCHIVE_BLOB, "x")],
                           cwd=prep, capture_output=True, text=True, env=shell_only)
    assert again.returncode == 127
    assert "neither unzip nor python3" in again.stderr


def test_task_keeps_its_exit_code_and_leaves_no_link_to_upload(tmp_path, shell_only):
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "go.sh").write_text("#!/bin/sh\nmkdir -p out 2>/dev/null; ln -s /etc/passwd p.txt\n"
                               "ln -s /etc sub.d\necho x > kept.txt\nexit 3\n")
    prep = prepare(tmp_path, sim, "go.sh")
    env = {"PATH": shell_only["PATH"] + ":/usr/bin:/bin"}  # the run script may use more tools
    result = run_task(tmp_path, prep, cp.worker_command("go.sh", 1), env)
    assert result.returncode == 3, result.stderr
    wd = tmp_path / "wd"
    assert (wd / "kept.txt").exists()
    assert not (wd / "p.txt").is_symlink() and not (wd / "sub.d").is_symlink()


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


def test_seed_is_written_into_topas_parameter_files(tmp_path, shell_only):
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "main.txt").write_text('s:Ge/World/Material = "G4_WATER"\n  I:TS/SEED = 17\n'
                                  'i:Ts/NumberOfThreads = 1\n#i:Ts/Seed = 5\ni:Ts/SeedX = 2\n'
                                  's:Ts/Path = "a\\b"\n')
    (sim / "other.txt").write_text("d:Ge/World/HLX = 10 cm")  # no seed line, no final newline
    (sim / "go.sh").write_text("#!/bin/sh\nfor f in main.txt other.txt; do while IFS= read -r l "
                               "|| [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done < $f; done\n")
    prep = prepare(tmp_path, sim, "go.sh")
    command = cp.worker_command("go.sh", 3, ("main.txt", "other.txt"))
    result = run_task(tmp_path, prep, command, {**shell_only, "SIM_SEED": "123456789"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        's:Ge/World/Material = "G4_WATER"', "i:Ts/Seed = 123456789", "i:Ts/NumberOfThreads = 1",
        "#i:Ts/Seed = 5", "i:Ts/SeedX = 2", 's:Ts/Path = "a\\b"',
        "d:Ge/World/HLX = 10 cm", "i:Ts/Seed = 123456789"]
    assert "SEED = 17" in (prep / "sim" / "main.txt").read_text()  # only the task's copy changes


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
