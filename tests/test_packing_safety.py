"""Nothing outside the simulation folder, and no secret, leaves the machine in SIM_DIR.zip.

The real runner runs as a subprocess against the local backend: links leaving the folder,
FIFOs, sockets, unreadable files and files holding a secret end it with exit code 2 and a
line naming them, before any container exists; links inside are stored as what they point
to; the appconfig in use is never packed; files of 2 GiB and more are zipped (zip64); a
runner killed while packing leaves no temporary zip behind.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from common.packaging import build_archive
from conftest import REPO, write_json

RUNNER = str(REPO / "batch_simulation_runner.py")
TOKEN = "ghp_FAKE_packing_Zq81LmW3"
CHUNK = 1 << 20  # the packer reads files in blocks of this size


def runner(campaign, env, *args: str, prefix: tuple[str, ...] = (), timeout: float = 120):
    return subprocess.run([*prefix, sys.executable, RUNNER, str(campaign.simconfig), *args],
                          cwd=campaign.root, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def assert_refused(result, *names: str) -> list[str]:
    """Exit 2, one `error:` line per named path, and nothing was created in storage."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for name in names:
        assert any(f"error: sim/{name}: " in line for line in lines), (name, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return lines


def no_container(campaign) -> bool:
    return not (campaign.container / "SIM_DIR.zip").exists()


def zip_of(campaign) -> zipfile.ZipFile:
    return zipfile.ZipFile(campaign.container / "SIM_DIR.zip")


# ---------------------------------------------------------------------------- links


def _outside(campaign) -> Path:
    secret = campaign.root / "home" / "secret.txt"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("outside the folder\n")
    return secret


LINKS = {
    "etc-passwd": lambda c, sim: (sim / "p").symlink_to("/etc/passwd") or "p",
    "home-secret": lambda c, sim: (sim / "s").symlink_to(_outside(c)) or "s",
    "folder-outside": lambda c, sim: (sim / "d").symlink_to(_outside(c).parent) or "d",
    "chain": lambda c, sim: ((sim / "b").symlink_to(_outside(c)),
                             (sim / "a").symlink_to("b")) and "a",
    "relative-through-linked-folder": lambda c, sim: (
        (sim / "inner").mkdir(), (sim / "inner" / "up").symlink_to("../../home/secret.txt"),
        _outside(c), (sim / "view").symlink_to("inner")) and "inner/up",
    "dangling": lambda c, sim: (sim / "gone").symlink_to(sim / "no-such-file") or "gone",
    "loop": lambda c, sim: (sim / "again").symlink_to(".") or "again",
}


@pytest.mark.parametrize("case", sorted(LINKS))
def test_a_link_leaving_the_folder_is_refused_by_name(campaign, script_env, case):
    name = LINKS[case](campaign, campaign.sim_dir)
    result = runner(campaign, script_env, "--no-input")
    lines = assert_refused(result, name)
    if case == "relative-through-linked-folder":  # named once where it is, once through view/
        assert any("error: sim/view/up: " in line for line in lines), lines
    assert no_container(campaign)
    assert "outside the folder" not in result.stderr + result.stdout


def test_links_inside_the_folder_are_stored_as_what_they_point_to(campaign, script_env):
    data = campaign.sim_dir / "data"
    data.mkdir()
    (data / "table.txt").write_text("inside\n")
    (campaign.sim_dir / "alias.txt").symlink_to("data/table.txt")
    (campaign.sim_dir / "tables").symlink_to(data)  # a linked folder was dropped silently
    campaign.update(TASK_COUNT=1, POOL_NODE_COUNT=1)
    result = runner(campaign, script_env, "--no-input")
    assert result.returncode == 0, result.stderr
    archive = zip_of(campaign)
    assert sorted(archive.namelist()) == ["alias.txt", "data/table.txt", "run.sh", "tables/table.txt"]
    assert archive.read("alias.txt") == archive.read("tables/table.txt") == b"inside\n"


# ---------------------------------------------------------------------------- the appconfig, secrets


def test_the_appconfig_in_use_is_never_packed_whatever_its_name(campaign, script_env):
    app = campaign.sim_dir / "app.local.json"
    write_json(app, {"BACKEND": "local", "LOCAL_STORAGE_PATH": str(campaign.storage),
                     "GIT_TOKEN": TOKEN})
    (campaign.sim_dir / "settings").symlink_to("app.local.json")  # the same file under a link
    campaign.update(TASK_COUNT=1, POOL_NODE_COUNT=1)
    result = runner(campaign, script_env, "--no-input", "--appconfig", str(app))
    assert result.returncode == 0, result.stderr
    archive = zip_of(campaign)
    assert sorted(archive.namelist()) == ["run.sh"]
    assert TOKEN.encode() not in (campaign.container / "SIM_DIR.zip").read_bytes()


@pytest.mark.parametrize("source", ["appconfig", "environment"])
def test_a_file_holding_a_secret_is_refused(campaign, script_env, source):
    if source == "appconfig":
        write_json(campaign.appconfig, {"BACKEND": "local", "LOCAL_STORAGE_PATH": str(campaign.storage),
                                        "GIT_TOKEN": TOKEN})
    else:
        script_env = {**script_env, "GIT_TOKEN": TOKEN}
    (campaign.sim_dir / "notes").mkdir()
    (campaign.sim_dir / "notes" / "old-appconfig.json").write_text(f'{{"GIT_TOKEN": "{TOKEN}"}}')
    for args in (["--dry-run"], ["--no-input"]):
        result = runner(campaign, script_env, *args)
        [line] = assert_refused(result, "notes/old-appconfig.json")
        assert "holds the value of a secret" in line and TOKEN not in result.stderr
    assert no_container(campaign)


def test_a_secret_across_two_read_blocks_is_found(tmp_path):
    folder = tmp_path / "sim"
    folder.mkdir()
    (folder / "big.bin").write_bytes(b"x" * (CHUNK - 5) + TOKEN.encode() + b"y" * 10)
    with pytest.raises(Exception) as refused, tempfile.TemporaryFile() as handle:
        build_archive(folder, handle, secrets=(TOKEN,))
    assert getattr(refused.value, "exit_code", None) == 2 and "big.bin" in str(refused.value)


# ---------------------------------------------------------------------------- special files


def test_fifo_and_socket_are_refused_without_hanging(campaign, script_env):
    os.mkfifo(campaign.sim_dir / "pipe")  # reading it would wait forever for a writer
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(campaign.sim_dir / "sock"))
    try:
        for args in (["--dry-run"], ["--no-input"]):
            result = runner(campaign, script_env, *args, timeout=60)
            lines = assert_refused(result, "pipe", "sock")
            assert any("is a FIFO" in line for line in lines) and any("is a socket" in line
                                                                      for line in lines)
    finally:
        server.close()
    assert no_container(campaign)


def _without_dac_override() -> tuple[str, ...]:
    """Root reads anything: drop the two capabilities that let it, for the child alone."""
    if os.geteuid() != 0:
        return ()
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


def test_unreadable_files_and_folders_are_refused_by_name(campaign, script_env):
    locked = campaign.sim_dir / "locked.dat"
    locked.write_text("private")
    private = campaign.sim_dir / "private"
    private.mkdir()
    (private / "inside.txt").write_text("x")
    locked.chmod(0)
    private.chmod(0)
    try:
        probe = subprocess.run([*_without_dac_override(), "cat", str(locked)], capture_output=True)
        assert probe.returncode != 0, "the unreadable file could be read: the test proves nothing"
        for args in (["--dry-run"], ["--no-input"]):
            result = runner(campaign, script_env, *args, prefix=_without_dac_override())
            lines = assert_refused(result, "locked.dat", "private")
            assert all("cannot be read (permission denied)" in line for line in lines), lines
    finally:
        private.chmod(0o755)
        locked.chmod(0o644)
    assert no_container(campaign)


# ---------------------------------------------------------------------------- large files


@pytest.mark.slow  # writes and zips 2 GiB
def test_a_file_of_2_gib_and_more_is_zipped_with_zip64(tmp_path):
    folder = tmp_path / "sim"
    folder.mkdir()
    size = (2 << 30) + 10
    with (folder / "phsp.phsp").open("wb") as sparse:  # holes: no disk used
        sparse.truncate(size)
    (folder / "run.sh").write_text("echo\n")
    with tempfile.TemporaryFile() as handle:
        archive = build_archive(folder, handle)
        handle.seek(0)
        with zipfile.ZipFile(handle) as zipped:
            sizes = {i.filename: i.file_size for i in zipped.infolist()}
            assert zipped.testzip() is None  # every CRC checks out
    assert archive.files == 2 and sizes == {"phsp.phsp": size, "run.sh": 5}
    assert archive.size < size // 100


def test_a_runner_killed_while_packing_leaves_no_temporary_zip(campaign, script_env, tmp_path):
    with (campaign.sim_dir / "phsp.phsp").open("wb") as sparse:
        sparse.truncate(16 << 30)  # packing it takes long enough to be killed in the middle
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    env = {**script_env, "TMPDIR": str(temp)}
    proc = subprocess.Popen([sys.executable, RUNNER, str(campaign.simconfig), "--no-input"],
                            cwd=campaign.root, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = ""
    while "Packing" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert list(temp.iterdir()) == []
