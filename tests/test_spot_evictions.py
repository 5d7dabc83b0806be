"""An all-Spot pool survives Azure taking every node back — through the real runner, against
the fake Batch service, which evicts Spot nodes as Azure does: their tasks are requeued, their
VMs deleted (disk and job preparation state gone) and re-created under the same node ids when
capacity returns, so the job preparation task runs again on each.

Microsoft's documentation these tests hold the tool and the fake to: the spec's BatchNodeState
"preempted" (tasks that were running "will be rescheduled when another Compute Node becomes
available"), BatchPool.currentLowPriorityNodes ("Spot/Low-priority Compute Nodes which have
been preempted are included in this count"), and "Use Spot VMs with Batch workloads" (Batch
"attempts to replenish lost capacity to get back to target").
"""
from __future__ import annotations

from conftest import write_json
from test_azure_e2e import RUNNER, azure_env  # noqa: F401
from test_azure_reality import TopasCampaign

SLOW_RUN = """#!/bin/sh
set -e
/root/topas/bin/topas main.txt
sleep 3
"""


def all_spot(tmp_path, azurite, fake, **sim) -> TopasCampaign:
    campaign = TopasCampaign(tmp_path / "spot", azurite, fake, run_sh=SLOW_RUN, POOL_NODE_COUNT=0,
                             SPOT_NODE_COUNT=2, TASK_COUNT=3, PRICE_PER_NODE_HOUR=0.10,
                             SPOT_PRICE_PER_NODE_HOUR=0.02, **sim)
    write_json(campaign.simconfig, campaign.sim)
    return campaign


def fast(env: dict[str, str]) -> dict[str, str]:
    return {**env, "BATCH_TOOL_HEALTH_SECONDS": "0.2"}


def evict_every_spot_node(fake, after: float, back_after: float | None) -> None:
    knobs = fake.knobs
    knobs.preemptions, knobs.preempt_after = 1, after
    knobs.preempt_nodes, knobs.preemption_lasts = None, back_after


def test_every_spot_node_preempted_at_once_comes_back_and_the_campaign_completes(
        tmp_path, azurite, fake_batch, azure_env):
    campaign = all_spot(tmp_path, azurite, fake_batch)
    evict_every_spot_node(fake_batch, after=1.0, back_after=3.0)
    result = campaign.run(RUNNER, "--no-input", env=fast(azure_env))
    assert result.returncode == 0, result.stderr
    assert "3 of 3 task(s) succeeded" in result.stdout
    assert "2 Spot node(s) preempted (all of them), being replaced by Batch" in result.stderr
    assert "no node can run" not in result.stderr
    requeued = sum(t.requeue_count for t in fake_batch.tasks)
    assert requeued >= 1  # the tasks running at the eviction went back to the queue
    assert f"{requeued} task run(s) requeued after Spot preemptions" in result.stdout
    # each re-created VM ran the job preparation again (its disk had gone with the old one),
    # and the tasks that ran there succeeded
    runs = fake_batch.preparation_runs
    again = {r.node_id for r in runs if r.incarnation == 2 and r.result == "success"}
    assert again and again <= {r.node_id for r in runs if r.incarnation == 1}
    assert all(t.result == "success" for t in fake_batch.tasks)
    assert {t.node_id for t in fake_batch.tasks if t.requeue_count} <= again
    assert campaign.leftovers() == ([], [])


def test_spot_nodes_that_never_come_back_stop_the_campaign_at_its_timeout(
        tmp_path, azurite, fake_batch, azure_env):
    campaign = all_spot(tmp_path, azurite, fake_batch, TIMEOUT_MINUTES=0.3)
    evict_every_spot_node(fake_batch, after=1.0, back_after=None)
    result = campaign.run(RUNNER, "--no-input", env=fast(azure_env))
    assert result.returncode == 1
    assert "preempted (all of them), being replaced by Batch" in result.stderr
    assert "timed out after 0.3 minutes" in result.stderr
    assert "no node can run" not in result.stderr  # not given up as a dead pool
    assert campaign.leftovers() == ([], [])  # job and pool deleted at the question's default
