"""Pure builders of a reduction as a tree of Batch tasks: the plan, its tasks and its job.

When the built-in TOPAS merge reduces more runs than REDUCER_FAN_IN, one task merging
every run would download all of them to one node and read them in one process. Instead
the runs are split into groups of at most REDUCER_FAN_IN: a first-level task merges one
group straight from storage into a partial merged output (nodes_output/partials/1-<n>/,
with each scorer's .merge.json: the runs and histories it stands for); tasks of the next
level merge at most REDUCER_FAN_IN partials, and so on, until one task — the one the flat
reducer has, `reducer` — merges the last partials into nodes_output/results/. The merge of
merged outputs is the same associative merge, exact, weighted by their records. Each task
depends on the tasks it merges (Batch's dependsOn), so the service starts it once they
have all succeeded, and never when one failed.

Everything here is a function of its arguments, so the reducer, --dry-run, --attach and
the tests see the same tree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from common import campaign as cp
from common.config import BUILTIN_TOPAS, Settings
from common.model import SUCCESS, InputFile, JobSpec, OutputFile, TaskSpec

PARTIALS_PREFIX = f"{cp.OUTPUT_PREFIX}partials/"
ROOT_TASK_ID = "reducer"  # the flat reducer's task id: its logs are results/reducer_*.txt
# A partial merge tests nothing and writes no summary or picture; it keeps each run's
# statistics (<file>.merge.runs.npz) so that the last merge tests every run against all.
PARTIAL_OPTIONS = ("--partial",)
# What the merge writes (common/topas/record.py, extras.py), named here because importing
# common.topas loads polars, whose threads would then take a Ctrl-C meant for a question.
RECORD_SUFFIX = ".merge.json"
SUMMARY_DIR = "merge-summary"


@dataclass(frozen=True)
class TreeTask:
    """One merge of the tree."""

    task_id: str
    level: int  # 1: merges runs; above: merges the partial outputs of the level below
    number: int  # 1-based within its level
    runs: tuple[int, ...]  # every run it stands for
    children: tuple["TreeTask", ...] = ()  # the tasks whose outputs it merges (level > 1)
    final: bool = False  # writes nodes_output/results/

    @property
    def output(self) -> str:
        """The blob prefix its merged output goes to."""
        return output_of(self.task_id)

    @property
    def log_prefix(self) -> str:
        """Where its stdout.txt and stderr.txt go (the final task's, as the flat reducer's)."""
        return f"{cp.RESULTS_PREFIX}reducer_" if self.final else self.output

    @property
    def depends_on(self) -> tuple[str, ...]:
        return tuple(child.task_id for child in self.children)


@dataclass(frozen=True)
class TreePlan:
    """The tasks level by level, the final one last."""

    fan_in: int
    tasks: tuple[TreeTask, ...]

    @property
    def levels(self) -> int:
        return self.tasks[-1].level

    @property
    def per_level(self) -> tuple[int, ...]:
        return tuple(sum(1 for t in self.tasks if t.level == level)
                     for level in range(1, self.levels + 1))

    @property
    def runs(self) -> tuple[int, ...]:
        return self.tasks[-1].runs

    @property
    def widest(self) -> int:
        """The most tasks that can run at once (the first level)."""
        return max(self.per_level)

    def text(self, nodes: int) -> str:
        """What the tree will be, in one line."""
        levels = " + ".join(f"{n}" for n in self.per_level)
        return (f"a tree of {len(self.tasks)} reducer tasks in {self.levels} levels ({levels}), "
                f"each merging at most {self.fan_in} (REDUCER_FAN_IN) of the {len(self.runs)} "
                f"runs or of the partial merges below it, on {nodes} node(s)")


def output_of(task_id: str) -> str:
    """Where the tree task `task_id` puts its merged output: the final task into results/,
    `merge-<level>-<n>` into nodes_output/partials/<level>-<n>/."""
    if task_id == ROOT_TASK_ID:
        return cp.RESULTS_PREFIX
    level, _, number = task_id.removeprefix("merge-").partition("-")
    return f"{PARTIALS_PREFIX}{level}-{number}/"


def split(items: tuple, fan_in: int) -> list[tuple]:
    """`items` in ceil(n / fan_in) consecutive groups whose sizes differ by one at most: the
    tasks of a level then take about as long as each other."""
    groups = math.ceil(len(items) / fan_in)
    base, extra = divmod(len(items), groups)
    found, start = [], 0
    for number in range(groups):
        size = base + (1 if number < extra else 0)
        found.append(tuple(items[start:start + size]))
        start += size
    return found


def plan_tree(runs: tuple[int, ...], fan_in: int) -> TreePlan | None:
    """The tree that merges `runs` at most `fan_in` at a time; None when one task merges
    them all (no more runs than the fan-in)."""
    if fan_in < 2:
        raise ValueError("a tree needs a fan-in of at least 2")
    if len(runs) <= fan_in:
        return None
    level = [TreeTask(f"merge-1-{n}", 1, n, group)
             for n, group in enumerate(split(tuple(runs), fan_in), 1)]
    tasks = list(level)
    depth = 1
    while True:
        depth += 1
        groups = split(tuple(level), fan_in)
        final = len(groups) == 1
        level = [TreeTask(ROOT_TASK_ID if final else f"merge-{depth}-{n}", depth, n,
                          tuple(r for child in group for r in child.runs), group, final)
                 for n, group in enumerate(groups, 1)]
        tasks += level
        if final:
            return TreePlan(fan_in, tuple(tasks))


def node_count(plan: TreePlan, wanted: int) -> int:
    """REDUCER_NODE_COUNT, but no more nodes than tasks can run at once."""
    return max(1, min(wanted, plan.widest))


def tree_task(task: TreeTask, index: int, sim_id: str, merge_options: tuple[str, ...],
              partial_options: tuple[str, ...] = ()) -> TaskSpec:
    """The Batch task of one merge: its inputs are exactly the folders it merges, so the
    command names them with a glob (no command line grows with the fan-in)."""
    if task.level == 1:
        inputs = tuple(InputFile(cp.run_prefix(r)) for r in task.runs)
        sources = f"{cp.OUTPUT_PREFIX}run*/"
    else:
        inputs = tuple(InputFile(child.output) for child in task.children)
        sources = f"{PARTIALS_PREFIX}*/"  # its own output folder does not exist yet
    options = merge_options if task.final else partial_options + PARTIAL_OPTIONS
    command = "\n".join(cp.reducer_start_lines() + [cp.builtin_merge(options, task.output, sources)])
    return TaskSpec(task_id=task.task_id, index=index, command=command, inputs=inputs,
                    outputs=(OutputFile(f"{task.output}**/*", task.output, SUCCESS),
                             *cp.reducer_logs(task.log_prefix)),
                    environment=(("SIM_ID", sim_id),), depends_on=task.depends_on)


def tree_job(settings: Settings, ids: cp.CampaignIds, plan: TreePlan,
             merge_options: tuple[str, ...], partial_options: tuple[str, ...] = ()) -> JobSpec:
    """The reducer job of a tree: leaves first, so a service that schedules in order of
    submission starts them first."""
    tasks = tuple(tree_task(t, i, settings.sim.sim_id, merge_options, partial_options)
                  for i, t in enumerate(plan.tasks))
    return cp.reducer_job_spec(settings, ids, tasks, node_count(plan, settings.sim.reducer_node_count),
                               task_dependencies=True)


def wanted_plan(settings: Settings, runs: tuple[int, ...], dependencies: bool) -> TreePlan | None:
    """The tree for these runs, or None for one task: a user's own reducer script, a backend
    without task dependencies, or no more runs than REDUCER_FAN_IN."""
    if (settings.sim.reducer_script or BUILTIN_TOPAS) != BUILTIN_TOPAS or not dependencies:
        return None
    return plan_tree(runs, settings.sim.reducer_fan_in)


def reduction_job(settings: Settings, ids: cp.CampaignIds, plan: TreePlan | None,
                  leave_out: tuple[int, ...], merge_options: tuple[str, ...],
                  partial_options: tuple[str, ...] = ()) -> JobSpec:
    """The reducer's job: the tree when there is one, else one task as ever. `merge_options`
    for the merge that writes results/, `partial_options` for a tree's partial merges."""
    if plan is None:
        return cp.reducer_job(settings, ids, leave_out=leave_out, merge_options=merge_options)
    return tree_job(settings, ids, plan, merge_options, partial_options)


# ---------------------------------------------------------------------------- after a failure


def blocked(depends: dict[str, tuple[str, ...]], failed: set[str]) -> set[str]:
    """The tasks that can never run: every task that depends, directly or through others,
    on a failed one (Batch blocks them; they stay active for ever)."""
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for task_id, parents in depends.items():
            if task_id not in found and any(p in failed or p in found for p in parents):
                found.add(task_id)
                changed = True
    return found
