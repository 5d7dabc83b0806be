"""Campaigns that stop at the statistical uncertainty the physicist asks for.

With TARGET_UNCERTAINTY_PERCENT the first wave is TASK_COUNT tasks, in a job that waits for
more (it is sealed — ends with its last task — only once no more will come). As each task
succeeds its scorer output is folded into a running merge kept here (common/topas'
ScorerAccumulator: earlier runs are never read again); the relative standard error of the
region that matters (bins at or above TARGET_REGION_PERCENT_OF_MAX of the maximum) is
measured, and the 1/sqrt(N) law (common/adaptive.py) says how many tasks to add — with
fresh seeds, to the same job, on the same pool. Once the target is met nothing is added,
tasks not yet started are removed, and only the ones already running are waited for.
MAX_TASK_COUNT, MAX_COST, too many failures or the timeout end it too.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from common import campaign as cp
from common.adaptive import (BATCH, HISTORY, Measure, Target, decide, law_curve,
                             too_many_failures)
from common.errors import ToolError
from common.model import BlobInfo, JobSpec, TaskCounts
from common.topas import ScorerAccumulator, read_scorer
from common.topas.header import SECOND_MOMENT, STANDARD_DEVIATION, VARIANCE
from common.topas.summary import largest_in_region
from common.workflow.compute import LOG_NAMES
from common.workflow.context import Context, Run

SCORER_SUFFIXES = (".csv", ".binheader")
SPREAD = (SECOND_MOMENT, VARIANCE, STANDARD_DEVIATION)


@dataclass(frozen=True)
class Point:
    """One step of the convergence: runs folded, their histories, the error reached."""

    runs: int
    histories: int | None
    relative_error: float | None


def measure(accumulator: ScorerAccumulator, region_fraction: float) -> Measure:
    """The largest relative standard error over the bins at or above `region_fraction` of
    the maximum — per history when the runs report a spread, else from run to run."""
    header = accumulator.header
    method = HISTORY if header is not None and accumulator.histories and any(
        s in header.statistics for s in SPREAD) else BATCH
    batch = accumulator.batch()
    if batch is None or batch.keys.size == 0:
        return Measure(accumulator.runs, None, method)
    # the same function states the target in the reducer's summary (common/topas/summary.py)
    worst, bins = largest_in_region(batch.estimate,
                                    accumulator.relative_standard_error()[batch.keys],
                                    region_fraction)
    return Measure(accumulator.runs, worst, method, bins)


@dataclass
class AdaptiveSteering:
    """Steers one job toward the target (the wait's Steering: after_poll, text)."""

    run: Run
    job: JobSpec  # its tasks: every one submitted so far
    target: Target
    first_wave: int
    scorer: str | None
    accumulator: ScorerAccumulator = field(default_factory=ScorerAccumulator)
    folded: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    points: list[Point] = field(default_factory=list)
    last: Measure | None = None
    needed: int | None = None
    capped: bool = False
    sealed: bool = False
    _seen: tuple[int, int] = (-1, -1)

    @property
    def ctx(self) -> Context:
        return self.run.ctx

    @property
    def submitted(self) -> int:
        return len(self.job.tasks) - len(self.removed)

    def after_poll(self, counts: TaskCounts) -> int:
        if (counts.succeeded, counts.failed) != self._seen:
            self._seen = (counts.succeeded, counts.failed)
            self._fold_new_runs(counts)
            self._steer()
        return self.submitted

    def text(self) -> str:
        reached = (f"{100 * self.last.relative_error:.3g} %" if self.last and
                   self.last.relative_error is not None else "—")
        more = f", ~{self.needed} run(s) needed in all" \
            if self.needed is not None and not self.met else ""
        return f"uncertainty {reached} (target {100 * self.target.relative_error:g} %){more}"

    def _adding_text(self, count: int) -> str:
        """Why `count` tasks are added, in numbers that add up: the runs the law asks for
        in all are those done, those under way and those added (unless MAX_TASK_COUNT cut)."""
        reached = (f"uncertainty {100 * self.last.relative_error:.3g} % (target "
                   f"{100 * self.target.relative_error:g} %)" if self.last and
                   self.last.relative_error is not None else "no uncertainty measured yet")
        under_way = self.submitted - len(self.failed) - len(self.folded)
        if self.needed is None:
            return f"{reached}: a wave of the first wave's size"
        cut = " (MAX_TASK_COUNT allows no more)" if self.capped else ""
        return (f"{reached}; the 1/sqrt(N) law asks ~{self.needed} run(s) in all: "
                f"{len(self.folded)} done + {under_way} under way + {count} added{cut}")

    @property
    def met(self) -> bool:
        return self.last is not None and self.last.met(self.target)

    # -- folding ------------------------------------------------------------------------

    def _fold_new_runs(self, counts: TaskCounts) -> None:
        indices = {t.index for t in self.job.tasks} - self.removed
        if counts.failed > len(self.failed):
            by_id = {t.task_id: t.index for t in self.job.tasks}
            self.failed |= {by_id[f.task_id] for f in self.ctx.backend.task_failures(self.job.job_id)
                            if f.task_id in by_id}
        outputs = self._outputs(indices - self.folded - self.failed)
        for index in sorted(outputs):
            self._fold(index, outputs[index])
        if outputs:
            self.last = measure(self.accumulator, self.target.region_fraction)
            self.points.append(Point(self.accumulator.runs, self.accumulator.histories,
                                     self.last.relative_error))
            self.ctx.ui.debug(f"running merge: {self.accumulator.runs} run(s), "
                              f"relative error {self.last.relative_error}")

    def _outputs(self, waiting: set[int]) -> dict[int, list[BlobInfo]]:
        """The scorer files of runs that finished since the last look."""
        if not waiting:
            return {}
        found: dict[int, list[BlobInfo]] = {}
        for blob in self.run.store.list_blobs(cp.OUTPUT_PREFIX + "run"):
            head, _, rest = blob.name[len(cp.OUTPUT_PREFIX):].partition("/")
            if head[3:].isdigit() and int(head[3:]) in waiting and rest not in LOG_NAMES:
                found.setdefault(int(head[3:]), []).append(blob)
        return {i: blobs for i, blobs in found.items() if self._scorer_of(blobs, i) is not None}

    def _scorer_of(self, blobs: list[BlobInfo], index: int) -> BlobInfo | None:
        names = {b.name[len(cp.run_prefix(index)):]: b for b in blobs}
        if self.scorer is None:
            scorers = sorted(n for n in names if n.endswith(SCORER_SUFFIXES))
            if len(scorers) != 1:
                raise ToolError(f"{self.ctx.settings.sim.path.name}: TARGET_SCORER: the tasks write "
                                f"{len(scorers)} scorer file(s) ({', '.join(scorers) or 'none'}): "
                                "name the one whose uncertainty decides", exit_code=2)
            self.scorer = scorers[0]
        if self.scorer.endswith(".binheader") and self.scorer[:-6] not in names:
            return None  # its .bin has not arrived yet
        return names.get(self.scorer)

    def _fold(self, index: int, blobs: list[BlobInfo]) -> None:
        scorer = self._scorer_of(blobs, index)
        assert scorer is not None
        with tempfile.TemporaryDirectory(prefix="batch-fold-") as folder:
            local = Path(folder) / Path(scorer.name).name
            self.run.store.download_blob(scorer, local)
            if scorer.name.endswith(".binheader"):
                data = next(b for b in blobs if b.name == scorer.name[:-6])
                self.run.store.download_blob(data, Path(folder) / Path(data.name).name)
            try:
                self.accumulator.add(read_scorer(local), scorer.name)
            except (ToolError, ValueError, OSError) as error:
                # said with the run's file in storage, not the temporary copy read here
                words = str(error).replace(str(local), scorer.name).splitlines()[0][:300]
                raise ToolError(f"TARGET_SCORER {self.scorer!r}: {scorer.name} cannot be "
                                f"measured ({words}): name a TOPAS scorer output in "
                                "TARGET_SCORER") from None
        self.folded.add(index)

    # -- steering -----------------------------------------------------------------------

    def _steer(self) -> None:
        finished = len(self.folded) + len(self.failed)
        if too_many_failures(len(self.failed), finished):
            raise ToolError(f"{len(self.failed)} of {finished} task(s) failed: too many for the "
                            "campaign to be trusted to converge (see the failures above)")
        if self.met:
            self._stop_adding()
            return
        if self.last is None and len(self.folded) == 0 and finished < self.submitted:
            return  # nothing measured yet: wait for the first run
        decision = decide(self.last or Measure(0, None, BATCH), self.target, self.submitted,
                          len(self.failed), self.first_wave)
        self.needed, self.capped = decision.needed, decision.capped
        if decision.add:
            self._add(decision.add)
        elif self.capped or (self.submitted >= (self.target.max_tasks or self.submitted)):
            self._seal()

    def _add(self, count: int) -> None:
        start = max(t.index for t in self.job.tasks) + 1
        new = tuple(cp.worker_task(self.ctx.settings, i) for i in range(start, start + count))
        tasks = f"task-{start}" if count == 1 else f"task-{start}..task-{start + count - 1}"
        self.ctx.ui.info(f"adding {count} task(s) ({tasks}): {self._adding_text(count)}")
        self.run.record.change_job(self.job.job_id,
                               task_ids=self.run.record.manifest.job(self.job.job_id).task_ids
                               + tuple(t.task_id for t in new),
                               task_indices=self.run.record.manifest.job(self.job.job_id).task_indices
                               + tuple(t.index for t in new))
        # Recorded first, so a runner stopped here leaves no task unrecorded; --attach
        # adds what the job lacks.
        self.ctx.before_step("add-tasks")
        self.ctx.backend.add_tasks(replace(self.job, tasks=new))
        self.job = replace(self.job, tasks=self.job.tasks + new)
        if self.target.max_tasks and len(self.job.tasks) >= self.target.max_tasks:
            self._seal()

    def _stop_adding(self) -> None:
        """Target met: remove what has not started, wait only for what runs, end the job."""
        if self.sealed:
            return
        waiting = {t.task_id: t for t in self.job.tasks
                   if t.index not in self.folded | self.failed | self.removed}
        idle = [waiting[i] for i in self.ctx.backend.active_task_ids(self.job.job_id) if i in waiting]
        if idle:
            self.ctx.backend.delete_tasks(self.job.job_id, [t.task_id for t in idle])
            self.removed |= {t.index for t in idle}
            kept = [t for t in self.job.tasks if t.index not in self.removed]
            self.run.record.change_job(self.job.job_id, task_ids=tuple(t.task_id for t in kept),
                                   task_indices=tuple(t.index for t in kept))
            self.ctx.ui.info(f"target met: {len(idle)} task(s) not started were removed")
        self._seal()

    def _seal(self) -> None:
        if not self.sealed:
            self.ctx.backend.seal_job(self.job.job_id)
            self.sealed = True

    seal = _seal


def target_of(ctx: Context) -> Target:
    goals = ctx.settings.sim.goals
    assert goals.target_percent is not None
    return Target(goals.target_percent / 100, goals.region_percent / 100,
                  goals.max_task_count or 0)


def law_points(steering: AdaptiveSteering) -> list[float]:
    return law_curve(steering.last or Measure(0, None, BATCH), [p.runs for p in steering.points])
