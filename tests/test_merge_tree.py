"""The reducer tree's pure parts: the plan (common/merge_tree.py), its tasks and job, what the
Azure builders send for it, what a failure blocks, and how the manifest keeps it."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from common import campaign as cp
from common import merge_tree as mt
from common.backends.azure import builders as bb
from common.manifest import Manifest, ManifestFile, load
from common.model import JobKind
from tests.azure_settings import azure_settings
from tests.test_batch_builders import IDS, SETUP, URLS

BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def leaves(plan: mt.TreePlan) -> list[mt.TreeTask]:
    return [t for t in plan.tasks if t.level == 1]


@pytest.mark.parametrize("runs, fan_in, shape", [
    (64, 8, (8, 1)), (20, 4, (5, 2, 1)), (17, 16, (2, 1)), (1000, 16, (63, 4, 1)),
    (100_000, 1000, (100, 1)), (9, 2, (5, 3, 2, 1))])
def test_the_plan_merges_every_run_once_in_balanced_groups(runs, fan_in, shape):
    indices = tuple(range(3, 3 + runs))
    plan = mt.plan_tree(indices, fan_in)
    assert plan.per_level == shape and plan.levels == len(shape)
    assert [r for leaf in leaves(plan) for r in leaf.runs] == list(indices)
    assert plan.runs == indices and plan.tasks[-1].final and plan.tasks[-1].task_id == "reducer"
    for level in range(1, plan.levels + 1):
        sizes = [len(t.runs if level == 1 else t.children) for t in plan.tasks if t.level == level]
        assert max(sizes) <= fan_in and max(sizes) - min(sizes) <= 1
        if level > 1:  # the level below, each task merged by exactly one task here
            below = [c.task_id for t in plan.tasks if t.level == level for c in t.children]
            assert below == [t.task_id for t in plan.tasks if t.level == level - 1]
    ids = [t.task_id for t in plan.tasks]
    assert len(set(ids)) == len(ids) and all(BATCH_ID.match(i) for i in ids)
    assert len({t.output for t in plan.tasks}) == len(ids)


def test_no_tree_for_no_more_runs_than_the_fan_in():
    assert mt.plan_tree(tuple(range(16)), 16) is None
    with pytest.raises(ValueError):
        mt.plan_tree(tuple(range(5)), 1)


def test_the_tree_job_and_its_requests(tmp_path):
    settings = azure_settings(tmp_path, REDUCER_FAN_IN=4, REDUCER_NODE_COUNT=50)
    plan = mt.plan_tree(tuple(range(1, 11)), 4)  # 3 + 1 tasks
    job = mt.reduction_job(settings, IDS, plan, (), ("--allow-inconsistent",))
    assert job.task_dependencies and job.auto_pool.node_count == 3  # no more than can run at once
    leaf, root = job.tasks[0], job.tasks[-1]
    assert [i.blob for i in leaf.inputs] == ["nodes_output/run1/", "nodes_output/run2/",
                                             "nodes_output/run3/", "nodes_output/run4/"]
    # a partial merge tests nothing (--allow-inconsistent is the last merge's business) and
    # keeps each run's statistics for it
    assert leaf.command.endswith("merge --partial --out "
                                 "nodes_output/partials/1-1/ nodes_output/run*/")
    assert root.command.endswith("merge --allow-inconsistent --out nodes_output/results/ "
                                 "nodes_output/partials/*/")  # plots only for the result
    assert [i.blob for i in root.inputs] == [f"nodes_output/partials/1-{n}/" for n in (1, 2, 3)]
    assert root.depends_on == ("merge-1-1", "merge-1-2", "merge-1-3") and not leaf.depends_on
    assert {o.destination for o in root.outputs} == {
        "nodes_output/results/", "nodes_output/results/reducer_stdout.txt",
        "nodes_output/results/reducer_stderr.txt"}
    assert {o.destination for o in leaf.outputs} == {
        "nodes_output/partials/1-1/", "nodes_output/partials/1-1/stdout.txt",
        "nodes_output/partials/1-1/stderr.txt"}

    body = bb.job_options(job, SETUP, URLS).as_dict()
    assert body["usesTaskDependencies"] is True
    assert body["poolInfo"]["autoPoolSpecification"]["pool"]["targetDedicatedNodes"] == 3
    sent = bb.task_options(root, job, URLS).as_dict()
    assert sent["dependsOn"] == {"taskIds": ["merge-1-1", "merge-1-2", "merge-1-3"]}
    assert "dependsOn" not in bb.task_options(leaf, job, URLS).as_dict()
    ranged = dataclasses.replace(leaf, depends_on=(), depends_on_ranges=((1, 9), (12, 12)))
    assert bb.task_options(ranged, job, URLS).as_dict()["dependsOn"] == {
        "taskIdRanges": [{"start": 1, "end": 9}, {"start": 12, "end": 12}]}
    flat = cp.reducer_job(settings, IDS)
    assert "usesTaskDependencies" not in bb.job_options(flat, SETUP, URLS).as_dict()


def test_when_there_is_a_tree(tmp_path):
    settings = azure_settings(tmp_path, REDUCER_FAN_IN=4)
    runs = tuple(range(10))
    assert mt.wanted_plan(settings, runs, dependencies=True) is not None
    assert mt.wanted_plan(settings, runs, dependencies=False) is None  # a backend without them
    assert mt.wanted_plan(settings, runs[:4], dependencies=True) is None
    own = dataclasses.replace(settings, sim=dataclasses.replace(settings.sim, reducer_script="mine.sh"))
    assert mt.wanted_plan(own, runs, dependencies=True) is None  # a user's script: one task


def test_what_a_failure_blocks():
    plan = mt.plan_tree(tuple(range(20)), 4)  # 5 + 2 + 1
    depends = {t.task_id: t.depends_on for t in plan.tasks}
    assert mt.blocked(depends, {"merge-1-4"}) == {"merge-2-2", "reducer"}
    assert mt.blocked(depends, {"merge-1-1", "merge-1-5"}) == {"merge-2-1", "merge-2-2", "reducer"}
    assert mt.blocked(depends, {"reducer"}) == set()
    assert mt.blocked(depends, set()) == set()


def test_the_manifest_keeps_the_tree_and_refuses_a_forged_one(tmp_path):
    from common.manifest import JobRecord
    path = tmp_path / "x.campaign.json"
    record = JobRecord("job-1", JobKind.REDUCER, None, ("merge-1-1", "merge-1-2", "reducer"),
                       (0, 1, 2), task_depends=((), (), ("merge-1-1", "merge-1-2")),
                       task_runs=((1, 2), (3, 4), (1, 2, 3, 4)))
    ManifestFile.open(path, Manifest("xyz", "local", "xyz", "s.json", jobs=(record,)))
    assert load(path).jobs[0] == record
    data = json.loads(path.read_text())
    data["jobs"][0]["task_depends"][2] = ["merge-1-1", "somebody-elses"]
    path.write_text(json.dumps(data))
    with pytest.raises(Exception, match="task_depends.2.*is not a task of the job"):
        load(path)
    data["jobs"][0]["task_depends"] = [[]]
    path.write_text(json.dumps(data))
    with pytest.raises(Exception, match="one per task id"):
        load(path)


def test_the_names_of_what_the_merge_writes_agree_with_it():
    from common.topas.extras import SUMMARY_DIR
    from common.topas.record import RECORD_SUFFIX
    assert (mt.RECORD_SUFFIX, mt.SUMMARY_DIR) == (RECORD_SUFFIX, SUMMARY_DIR)


def test_the_scripts_do_not_load_polars_before_they_merge():
    """polars' threads would take the SIGINT of a second Ctrl-C at a question, which then
    never interrupts the main thread's read (tests/test_campaign_safety.py shows it)."""
    import subprocess
    import sys
    code = ("import sys, common.cli, common.workflow, common.workflow.tree, common.merge_tree; "
            "print(any('polars' in m for m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
