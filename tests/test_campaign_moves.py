"""Moving a campaign tried locally to Azure, signing in without a key, and what the dry run
and the configuration check promise — through the real scripts, with Azure settings that
pass every check (a dry run reaches nothing behind them)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, write_json
from test_hostile_state import azure_app

RUNNER = str(REPO / "batch_simulation_runner.py")
REDUCER = str(REPO / "batch_data_reducer.py")
OFFLINE_PRICES = "http://127.0.0.1:9/api/retail/prices"  # nothing answers there


def run(campaign, script: str, env, *args: str, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, str(campaign.simconfig), *args],
                          cwd=cwd or campaign.root, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [l for l in result.stderr.splitlines() if l.startswith("error:")]


@pytest.fixture
def offline(script_env, tmp_path):
    return {**script_env, "BATCH_TOOL_PRICES_URL": OFFLINE_PRICES,
            "XDG_CACHE_HOME": str(tmp_path / "cache")}


# ---------------------------------------------------------------------------- 6. local -> Azure


def test_a_campaign_tried_locally_moves_to_azure_by_the_command_it_is_given(campaign, offline,
                                                                            tmp_path):
    """"the campaign ran on the 'local' backend, not azure: pass --backend local" was a dead
    end, and --dry-run accepted the same configuration (exit 0)."""
    assert run(campaign, RUNNER, offline, "--no-input").returncode == 0
    app = azure_app(campaign, tmp_path)
    campaign.update(PRICE_PER_NODE_HOUR=0.1)
    real = run(campaign, RUNNER, offline, "--appconfig", str(app), "--no-input")
    assert real.returncode == 2
    [line] = errors(real)
    assert "ran on the 'local' backend, not azure: to work on it there, pass --backend local" in line
    move = re.search(r"set the local campaign's manifest aside with `([^`]+)`", line)[1]
    assert "then run it again with --overwrite" in line and "new SIM_ID" in line
    dry = run(campaign, RUNNER, offline, "--appconfig", str(app), "--dry-run")
    assert dry.returncode == 2 and errors(dry) == [line.replace(
        re.search(r"local-(\d+)", line)[0], re.search(r"local-(\d+)", errors(dry)[0])[0])]
    moved = subprocess.run(move, shell=True, cwd=campaign.root, capture_output=True, text=True)
    assert moved.returncode == 0, moved.stderr
    assert list(campaign.root.glob("tiny-campaign.local-*.campaign.json"))
    ready = run(campaign, RUNNER, offline, "--appconfig", str(app), "--dry-run", "--overwrite")
    assert ready.returncode == 0, ready.stderr
    assert "Dry run of campaign tiny-campaign (azure backend)" in ready.stdout
    # without --overwrite the dry run says, as the real run would, what the local runs need
    plain = run(campaign, RUNNER, offline, "--appconfig", str(app), "--dry-run")
    assert plain.returncode == 2
    assert "the results folder sim/nodes_output already holds run1..run2" in errors(plain)[0]
    # and the local campaign is still there to be looked at, under its new name
    local = json.loads(next(campaign.root.glob("tiny-campaign.local-*.campaign.json")).read_text())
    assert local["backend"] == "local" and local["jobs"]


# ---------------------------------------------------------------------------- 9. Entra ID


def keyless(campaign, tmp_path: Path, **app) -> Path:
    path = azure_app(campaign, tmp_path)
    data = json.loads(path.read_text())
    for key in ("STORAGE_ACCOUNT_KEY", "BATCH_ACCOUNT_KEY"):
        data.pop(key)
    data.update(app)
    return write_json(path, data)


def signed_out(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """No az, no managed identity, no service principal, no token cache."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    bare = {k: v for k, v in env.items() if not k.startswith(("AZURE_", "IDENTITY_", "MSI_"))}
    return {**bare, "HOME": str(home), "PATH": "/usr/bin:/bin", "AZURE_CONFIG_DIR": str(home / ".azure")}


def test_entra_id_without_a_sign_in_is_one_line_within_seconds(campaign, offline, tmp_path):
    """2 min 11 s of "storage: the service: no answer; retry 1 of 6", then ~15 lines of
    `internal error: ClientAuthenticationError(...)`."""
    app = keyless(campaign, tmp_path, STORAGE_ACCOUNT_URL="https://127.0.0.1:9/devstoreaccount1",
                  BATCH_ACCOUNT_URL="https://127.0.0.1:9")
    campaign.update(PRICE_PER_NODE_HOUR=0.1)
    started = time.monotonic()
    result = run(campaign, RUNNER, signed_out(offline, tmp_path), "--appconfig", str(app),
                 "--no-input", timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == 2, result.stderr
    assert "retry" not in result.stderr and "internal error" not in result.stderr
    [line] = errors(result)
    assert line.startswith("error: storage: not signed in to Entra ID (tried environment variables")
    assert "a managed identity" in line and "Azure CLI (not installed)" in line
    assert "`az login`" in line and "STORAGE_ACCOUNT_KEY" in line
    assert not (campaign.root / "tiny-campaign.campaign.json").exists()  # nothing created


def test_an_http_endpoint_without_a_key_is_refused_at_configuration_time(campaign, offline,
                                                                         tmp_path):
    app = keyless(campaign, tmp_path, STORAGE_ACCOUNT_URL="http://127.0.0.1:9/devstoreaccount1")
    result = run(campaign, RUNNER, offline, "--appconfig", str(app), "--dry-run")
    assert result.returncode == 2
    [line] = errors(result)
    assert "STORAGE_ACCOUNT_URL: is http://, but without STORAGE_ACCOUNT_KEY" in line
    assert "internal error" not in result.stderr


# ---------------------------------------------------------------------------- 15. goals


@pytest.mark.parametrize("changes, key, words", [
    ({"TARGET_UNCERTAINTY_PERCENT": 1, "TARGET_SCORER": "Dose.csv"}, "TARGET_SCORER",
     "matches none of OUTPUT_FILE_PATTERNS ('out_*.txt')"),
    ({"TARGET_UNCERTAINTY_PERCENT": 1, "TARGET_SCORER": "out_1.txt"}, "TARGET_SCORER",
     "is not a TOPAS scorer output"),
    ({"TARGET_SCORER": "out_1.csv"}, "TARGET_SCORER", "is set without TARGET_UNCERTAINTY_PERCENT"),
    ({"TARGET_REGION_PERCENT_OF_MAX": 20}, "TARGET_REGION_PERCENT_OF_MAX",
     "is set without TARGET_UNCERTAINTY_PERCENT"),
    ({"TARGET_UNCERTAINTY_PERCENT": 1e-9}, "TARGET_UNCERTAINTY_PERCENT", "which no campaign reaches"),
    ({"PRICE_PER_NODE_HOUR": 0, "MAX_COST": 10}, "MAX_COST", "the budget would never be reached"),
    ({"PRICE_PER_NODE_HOUR": 1e300}, "PRICE_PER_NODE_HOUR", "not a price per node-hour"),
])
def test_goal_keys_that_cannot_work_are_refused_before_anything_runs(campaign, offline, changes,
                                                                      key, words):
    campaign.update(**changes)
    for args in (("--dry-run",), ("--no-input",)):
        result = run(campaign, RUNNER, offline, *args)
        assert result.returncode == 2, result.stderr
        [line] = errors(result)
        assert f"simconfig.json: {key}: " in line and words in line, line
    assert not campaign.container.exists()


def test_a_target_scorer_that_is_no_scorer_is_named_in_the_error_not_a_temporary_path(campaign,
                                                                                       script_env):
    campaign.update(OUTPUT_FILE_PATTERNS=["*.csv"], TARGET_UNCERTAINTY_PERCENT=1,
                    TARGET_SCORER="table.csv")
    (campaign.sim_dir / "run.sh").write_text('#!/bin/bash\necho "a,b" > table.csv\n')
    result = run(campaign, RUNNER, script_env, "--no-input")
    assert result.returncode == 1, result.stderr  # something ran: not "nothing was created"
    line = errors(result)[-1]
    assert line.startswith("error: TARGET_SCORER 'table.csv': nodes_output/run")
    assert "/tmp" not in line and "batch-fold-" not in line


# ---------------------------------------------------------------------------- 16. the dry run


def test_the_dry_run_cost_lines_say_each_thing_once(campaign, offline, tmp_path):
    app = azure_app(campaign, tmp_path)
    campaign.update(SPOT_PRICE_PER_NODE_HOUR=0.02)  # no Spot nodes: nothing to say of Spot
    dry = run(campaign, RUNNER, offline, "--appconfig", str(app), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    cost = [l for l in dry.stdout.splitlines() if l.startswith(("  prices:", "  at most:",
                                                               "  expected:", "  budget"))]
    assert cost[0] == ("  prices: unknown: cannot reach the price list (127.0.0.1:9): nothing "
                       "answers on that address and port (offline?)") or \
        cost[0].startswith("  prices: 0.02 USD per Spot node-hour"), cost
    text = "\n".join(cost)
    assert "at most: at most" not in text and "expected: expected" not in text
    assert "[Errno" not in text and text.count("cannot reach the price list") == 1
    assert "Spot price unknown" not in text
    assert cost[1] == ("  at most: 2 dedicated node(s) x 0.58 h: 1.17 node-hours (1.17 dedicated, "
                       "0.00 Spot); cost unknown (no price)")


def test_the_dry_run_refuses_a_budget_the_real_run_refuses(campaign, offline, tmp_path):
    """"budget (MAX_COST): ... the campaign stops when it is reached" with exit 0, while the
    real run refused it (exit 2)."""
    app = azure_app(campaign, tmp_path)
    campaign.update(MAX_COST=5)
    dry = run(campaign, RUNNER, offline, "--appconfig", str(app), "--dry-run")
    real = run(campaign, RUNNER, offline, "--appconfig", str(app), "--no-input")
    assert (dry.returncode, real.returncode) == (2, 2)
    assert errors(dry) == errors(real)
    assert "MAX_COST: 5.00 USD cannot be enforced" in errors(dry)[0]
