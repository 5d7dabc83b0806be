"""Spot nodes, a cost you can see and a budget you can cap — through the real scripts, against
the fake Batch service (which validates the pool against the spec and can preempt Spot
nodes) and a local stand-in for the Azure Retail Prices API."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, write_json
from test_azure_e2e import RUNNER, azure_campaign, azure_env  # noqa: F401
from test_azure_reality import TopasCampaign
from tests.support.price_server import PriceServer, sample_items

SLOW_RUN = """#!/bin/sh
set -e
/root/topas/bin/topas main.txt
sleep 3
"""


@pytest.fixture
def spot(tmp_path, azurite, fake_batch) -> TopasCampaign:
    campaign = TopasCampaign(tmp_path / "spot", azurite, fake_batch, run_sh=SLOW_RUN,
                             POOL_NODE_COUNT=1, SPOT_NODE_COUNT=3, TASK_COUNT=4,
                             PRICE_PER_NODE_HOUR=0.10, SPOT_PRICE_PER_NODE_HOUR=0.02)
    return campaign


def fast(env: dict[str, str]) -> dict[str, str]:
    return {**env, "BATCH_TOOL_HEALTH_SECONDS": "0.2"}


def test_a_pool_of_dedicated_and_spot_nodes_is_asked_for_and_metered(spot, azure_env):
    result = spot.run(RUNNER, "--no-input", env=fast(azure_env))
    assert result.returncode == 0, result.stderr
    create = next(r for r in spot.fake.requests if r.operation == "Jobs_CreateJob")
    pool = create.body["poolInfo"]["autoPoolSpecification"]["pool"]
    assert (pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"]) == (1, 3)
    assert "1 dedicated + 3 Spot x STANDARD_D2S_V3" in result.stderr
    assert re.search(r"used: [\d.]+ node-hours \([\d.]+ dedicated, [\d.]+ Spot\), .* USD",
                     result.stdout), result.stdout
    manifest = json.loads((spot.root / f"{spot.sim_id}.campaign.json").read_text())
    [job] = manifest["jobs"]
    dedicated, spot_hours = job["node_hours"]
    assert dedicated > 0 and spot_hours > 2.5 * dedicated  # 3 Spot nodes beside 1 dedicated
    assert job["cost"] > 0 and job["currency"] == "USD" and len(job["task_seconds"]) == 4


def test_a_preempted_spot_node_requeues_its_task_and_the_campaign_completes(spot, azure_env):
    spot.fake.knobs.preemptions = 1
    spot.fake.knobs.preempt_after = 1.0
    spot.sim.update(POOL_NODE_COUNT=0, SPOT_NODE_COUNT=2, TASK_COUNT=2)
    write_json(spot.simconfig, spot.sim)
    result = spot.run(RUNNER, "--no-input", env=fast(azure_env))
    assert result.returncode == 0, result.stderr
    assert "2 of 2 task(s) succeeded" in result.stdout
    assert "1 task run(s) requeued after Spot preemptions" in result.stdout
    assert "requeues are not retries" in result.stdout
    assert any(t.requeue_count == 1 for t in spot.fake.tasks)


def test_max_cost_stops_the_campaign_deletes_the_job_and_keeps_the_data(spot, azure_env):
    # 3,600 per node-hour is 1 a node-second: 4 nodes reach 2.00 in half a second
    spot.sim.update(PRICE_PER_NODE_HOUR=3600, SPOT_PRICE_PER_NODE_HOUR=3600, MAX_COST=2,
                    TASK_COUNT=8)
    write_json(spot.simconfig, spot.sim)
    (spot.root / "sim" / "run.sh").write_text("#!/bin/sh\nsleep 60\n")
    started = time.monotonic()
    result = spot.run(RUNNER, "--no-input", env=fast(azure_env))
    assert result.returncode == 1
    assert time.monotonic() - started < 45  # not the 60 s the tasks would take
    assert "MAX_COST 2.00 USD reached" in result.stderr.splitlines()[-1]
    assert "The budget is reached. Delete job" in result.stderr
    assert spot.leftovers() == ([], [])
    assert (spot.results.parent / "run.sh").exists()
    manifest = json.loads((spot.root / f"{spot.sim_id}.campaign.json").read_text())
    assert any("MAX_COST reached" in e for e in manifest["events"])


def test_a_budget_without_a_price_is_refused_before_anything_is_created(spot, azure_env):
    spot.sim.pop("PRICE_PER_NODE_HOUR")
    spot.sim.pop("SPOT_PRICE_PER_NODE_HOUR")
    spot.sim.update(MAX_COST=10)
    write_json(spot.simconfig, spot.sim)
    result = spot.run(RUNNER, "--no-input", env=azure_env)
    assert result.returncode == 2
    assert "MAX_COST: 10.00 USD cannot be enforced" in result.stderr
    assert spot.fake.request_count == 0


def test_dry_run_estimates_from_the_price_list_and_earlier_task_durations(spot, azure_env, tmp_path):
    server = PriceServer(sample_items()).start()
    try:
        spot.sim.pop("PRICE_PER_NODE_HOUR")
        spot.sim.pop("SPOT_PRICE_PER_NODE_HOUR")
        write_json(spot.simconfig, spot.sim)
        spot.write_app(BATCH_ACCOUNT_URL="https://mybatch.westeurope.batch.azure.com")
        env = {**azure_env, "BATCH_TOOL_PRICES_URL": server.url,
               "XDG_CACHE_HOME": str(tmp_path / "cache")}
        dry = spot.run(RUNNER, "--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr
        assert "0.1/0.02 USD per node-hour" in dry.stdout or "0.10/0.02" in dry.stdout
        assert "at most:" in dry.stdout and "expected:" not in dry.stdout
        asked = len(server.requests)
        assert asked >= 1
        # an earlier campaign of this SIM_ID left its task durations: an expected cost too
        manifest = {"sim_id": spot.sim_id, "backend": "azure", "container": spot.sim_id,
                    "simconfig": str(spot.simconfig), "jobs": [
                        {"job_id": "old-job", "kind": "workers", "pool_id": None,
                         "task_ids": ["task-1"], "task_indices": [1], "task_seconds": [600.0]}]}
        write_json(spot.root / f"{spot.sim_id}.campaign.json", manifest)
        again = spot.run(RUNNER, "--dry-run", env=env)
        assert again.returncode == 0, again.stderr
        assert "expected:" in again.stdout
        assert len(server.requests) == asked  # the day-long cache answered
        assert spot.fake.request_count == 0
    finally:
        server.stop()


def test_offline_prices_mean_node_hours_only(spot, azure_env, tmp_path):
    spot.sim.pop("PRICE_PER_NODE_HOUR")
    spot.sim.pop("SPOT_PRICE_PER_NODE_HOUR")
    write_json(spot.simconfig, spot.sim)
    spot.write_app(BATCH_ACCOUNT_URL="https://mybatch.westeurope.batch.azure.com")
    env = {**azure_env, "BATCH_TOOL_PRICES_URL": "http://127.0.0.1:9/api/retail/prices",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    dry = spot.run(RUNNER, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "prices: unknown: cannot reach the price list" in dry.stdout and "node-hours" in dry.stdout
