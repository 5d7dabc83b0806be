"""State the tool reads back — its manifest, its lock, its price cache, a price list's answer
— made hostile or broken, through the real scripts: never a hang, never an internal error,
never a task that is not the campaign's, never raw control characters on the terminal."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from common.campaign import sim_seed
from common.billing.price_list import price_key
from common.billing.pricing import cache_entry, cache_path
from common.billing.cost import Prices
from conftest import REPO, write_json
from tests.support.price_server import PriceServer, sample_items, vm_item

RUNNER = str(REPO / "batch_simulation_runner.py")
REDUCER = str(REPO / "batch_data_reducer.py")
FAKE_KEY = "ZmFrZS1rZXktZm9yLXRlc3RzLW9ubHk="  # base64 of nothing real


def run(campaign, script: str, env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, str(campaign.simconfig), *args],
                          cwd=campaign.root, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def manifest_file(campaign) -> Path:
    return campaign.root / "tiny-campaign.campaign.json"


def edit_manifest(campaign, change) -> None:
    path = manifest_file(campaign)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def last_error(result: subprocess.CompletedProcess) -> str:
    return [l for l in result.stderr.splitlines() if l.startswith("error:")][-1]


# ---------------------------------------------------------------------------- 3. indices


@pytest.mark.parametrize("failed", [[77], [2**31 + 1], [10**30]])
def test_failed_indices_that_are_not_the_jobs_are_refused(campaign, script_env, failed):
    """[77] reran a task the campaign never had; 2**31 + 1 ran with run 1's seed (identical
    outputs merged as independent); 10**30 made run1000...0."""
    assert sim_seed("tiny-campaign", 2**31 + 1) == sim_seed("tiny-campaign", 1)  # why it matters
    campaign.sim_dir.joinpath("run.sh").write_text(
        '#!/bin/bash\n[ "$1" = 2 ] && exit 3\necho "value $1" > "out_$1.txt"\n')
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 1
    edit_manifest(campaign, lambda d: d["jobs"][0].update(failed_indices=failed))
    rerun = run(campaign, RUNNER, script_env, "--rerun-failed", "--no-input")
    assert rerun.returncode == 2, rerun.stderr
    assert "jobs[0].failed_indices" in last_error(rerun)
    assert len(json.loads(manifest_file(campaign).read_text())["jobs"]) == 1
    assert sorted(p.name for p in campaign.container.glob("nodes_output/run*")) == ["run1", "run2"]


def test_a_task_index_twice_in_a_job_is_refused(campaign, script_env):
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    edit_manifest(campaign, lambda d: d["jobs"][0].update(task_ids=["task-1", "task-1b"],
                                                          task_indices=[1, 1]))
    result = run(campaign, RUNNER, script_env, "--status")
    assert result.returncode == 2 and "names a task index twice" in last_error(result)


# ---------------------------------------------------------------------------- 4. the guard


def test_a_manifest_replaced_during_the_wait_stops_through_the_guard(campaign, script_env):
    """A manifest replaced by a link while the job ran exited 2 ("nothing was created") with
    the pool still there; now the cleanup question, then exit 1."""
    campaign.sim_dir.joinpath("run.sh").write_text('#!/bin/bash\nsleep 3\necho "v" > "out_$1.txt"\n')
    proc = subprocess.Popen([sys.executable, RUNNER, str(campaign.simconfig), "--no-input"],
                            cwd=campaign.root, env=script_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not list(campaign.storage.glob("pools/*/jobs/*/tasks/*/state.json")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    path = manifest_file(campaign)
    copy = campaign.root / "copy.json"
    shutil.copy(path, copy)
    path.unlink()
    path.symlink_to(copy)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "The campaign stopped with an error. Delete job" in err
    assert "is not a regular file" in last_error(subprocess.CompletedProcess([], 1, out, err))
    pools = campaign.storage / "pools"
    assert not pools.exists() or not any(pools.iterdir())  # nothing left running


# ---------------------------------------------------------------------------- 12, 13. claims


@pytest.mark.parametrize("pid", [0, 1, -1, 2**70, 99_999_999])
def test_a_claim_no_process_can_hold_does_not_block_the_campaign(campaign, script_env, pid):
    """pid 0, 1 and -1 counted as alive (advice: stop an unrelated process); 2**70 was an
    internal error (OverflowError)."""
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    edit_manifest(campaign, lambda d: d.update(claims=[{
        "token": "x", "pid": pid, "host": os.uname().nodename, "script": "runner",
        "started": "2026-01-01T00:00:00+00:00"}]))
    campaign.update(STARTING_NODE=3)
    result = run(campaign, RUNNER, script_env, "--no-input")
    assert result.returncode == 0, result.stderr


def test_a_claim_of_a_process_started_after_it_is_a_reused_pid(campaign, script_env):
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    other = subprocess.Popen(["sleep", "60"])
    try:
        edit_manifest(campaign, lambda d: d.update(claims=[{
            "token": "x", "pid": other.pid, "host": os.uname().nodename, "script": "runner",
            "started": "2026-01-01T00:00:00+00:00"}]))
        campaign.update(STARTING_NODE=3)
        assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    finally:
        other.kill()
        other.wait()


# ---------------------------------------------------------------------------- 12. the lock


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("script", [RUNNER, REDUCER])
def test_a_held_manifest_lock_is_named_and_waited_for_a_bounded_time(campaign, script_env, script):
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    lock = campaign.root / ".tiny-campaign.campaign.json.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        campaign.update(STARTING_NODE=3)
        started = time.monotonic()
        result = run(campaign, script, {**script_env, "BATCH_TOOL_LOCK_WAIT_SECONDS": "1"},
                     "--no-input", timeout=30)
        assert time.monotonic() - started < 20
        assert result.returncode == 2, result.stderr
        assert f"held by pid {holder.pid}" in result.stderr  # said while waiting...
        line = last_error(result)
        assert f"has been held by pid {holder.pid}" in line and "for more than 1 s" in line
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------- prices


def azure_app(campaign, tmp_path: Path) -> Path:
    """An Azure appconfig that passes every check (nothing behind it is reached by a dry run)."""
    campaign.update(POOL_VM_SIZE="STANDARD_D2S_V3")
    return write_json(tmp_path / "app.azure.json", {
        "BACKEND": "azure", "STORAGE_ACCOUNT_NAME": "mystorage", "STORAGE_ACCOUNT_KEY": FAKE_KEY,
        "BATCH_ACCOUNT_NAME": "mybatch", "BATCH_ACCOUNT_KEY": FAKE_KEY,
        "BATCH_ACCOUNT_URL": "https://mybatch.westeurope.batch.azure.com",
        "WORKER_DOCKER_IMAGE": "myuser/topas:4.0", "REDUCER_DOCKER_IMAGE": "myuser/topas:4.0"})


@pytest.fixture
def prices(campaign, script_env, tmp_path, monkeypatch):
    """A price list on 127.0.0.1, an empty cache, and a dry run of an Azure campaign."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = PriceServer(sample_items()).start()
    cache = tmp_path / "cache"
    env = {**script_env, "BATCH_TOOL_PRICES_URL": server.url, "XDG_CACHE_HOME": str(cache),
           "NO_PROXY": "127.0.0.1,localhost"}
    app = azure_app(campaign, tmp_path)

    class Prices_:
        url = server.url
        cache_file = cache_path(cache / "batch-campaigns",
                                price_key("STANDARD_D2S_V3", "westeurope", "USD"))

        @staticmethod
        def dry() -> subprocess.CompletedProcess:
            return run(campaign, RUNNER, env, "--appconfig", str(app), "--dry-run", timeout=60)
    Prices_.server = server
    yield Prices_
    server.stop()


def test_a_fifo_as_the_price_cache_is_not_waited_on(prices):
    prices.cache_file.parent.mkdir(parents=True)
    os.mkfifo(prices.cache_file)
    result = prices.dry()  # used to hang for ever, reading the FIFO
    assert result.returncode == 0, result.stderr
    assert "prices: 0.10 USD per dedicated node-hour (Azure retail prices" in result.stdout


def test_a_deeply_nested_price_answer_is_one_line(prices):
    prices.server.body = b"[" * 100_000 + b"]" * 100_000
    result = prices.dry()
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr
    assert "prices: unknown: the price list answered JSON nested too deeply" in result.stdout


def test_a_deeply_nested_cache_file_is_ignored(prices):
    prices.cache_file.parent.mkdir(parents=True)
    prices.cache_file.write_text("[" * 100_000 + "]" * 100_000)
    result = prices.dry()
    assert result.returncode == 0, result.stderr
    assert "prices: 0.10 USD per dedicated node-hour (Azure retail prices" in result.stdout


@pytest.mark.parametrize("price", [1e300, 1e-6])  # the stand-in rounds to 6 decimals
def test_a_price_no_vm_has_is_refused_naming_its_source(prices, price):
    prices.server.items = [vm_item("Standard_D2s_v3", "westeurope", "D2s v3", price),
                           vm_item("Standard_D2s_v3", "westeurope", "D2s v3 Spot", 0.02)]
    result = prices.dry()
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("  prices:"))
    assert "Azure retail prices, westeurope, Standard_D2s_v3, Linux: the price list gave" in line
    assert f"{price:g} USD per hour" in line and "refused" in line
    assert not re.search(r"\d{20}", result.stdout)  # no 300-digit number anywhere
    assert not prices.cache_file.exists()  # and nothing cached


def write_cache(prices, dedicated: float, source: str = "Azure retail prices") -> None:
    key = price_key("STANDARD_D2S_V3", "westeurope", "USD")
    entry = cache_entry(key, prices.url, Prices(dedicated, 0.02, "USD", source,
                                                fetched_at=datetime.now(timezone.utc)))
    write_json(prices.cache_file, entry)


def test_a_cached_price_of_zero_is_refused_and_the_price_list_asked(prices):
    write_cache(prices, 0.0)
    result = prices.dry()
    assert result.returncode == 0, result.stderr
    assert "prices: 0.10 USD per dedicated node-hour (Azure retail prices" in result.stdout
    assert f"the price cache {prices.cache_file} held 0 USD per node-hour" in result.stdout
    assert len(prices.server.requests) >= 1


def test_escape_sequences_from_the_cache_are_shown_escaped(prices):
    write_cache(prices, 0.1, source="\x1b]0;owned\x07\x1b[2Jcache")
    result = prices.dry()
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    assert "\\x1b]0;owned\\x07\\x1b[2Jcache" in result.stdout
    assert prices.server.requests == []  # the cache answered


def test_a_redirect_to_another_host_is_not_followed(prices):
    elsewhere = PriceServer(sample_items()).start()
    try:
        prices.server.redirect_to = elsewhere.url.replace("127.0.0.1", "localhost")
        result = prices.dry()
        assert result.returncode == 0, result.stderr
        assert "redirected the lookup to another host (localhost:" in result.stdout
        assert elsewhere.requests == []
    finally:
        elsewhere.stop()


def test_escape_sequences_from_the_manifest_are_shown_escaped(campaign, script_env):
    assert run(campaign, RUNNER, script_env, "--no-input").returncode == 0
    edit_manifest(campaign, lambda d: d.update(downloads=["/tmp/x\x1b[2J\x1b]0;owned\x07",
                                                          "/tmp/\u202eevil"]))
    status = run(campaign, RUNNER, script_env, "--status")
    assert status.returncode == 0, status.stderr
    assert "\x1b" not in status.stdout and "\u202e" not in status.stdout
    assert "downloaded to: /tmp/x\\x1b[2J\\x1b]0;owned\\x07" in status.stdout
    assert "downloaded to: /tmp/\\u202eevil" in status.stdout
