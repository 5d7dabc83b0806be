"""Aiming a campaign at a statistical uncertainty instead of a task count: the arithmetic.

Pure functions of numbers (no I/O, no clock): the running merge measures the relative
standard error of the region that matters; these functions say whether the target is met
and how many tasks to add. The law they lean on: with every task running the same number
of histories, the relative standard error falls as 1/sqrt(histories) — so n runs that
reach r need about n * (r / target)^2 runs in all to reach the target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Aim a little past the law's count so the target is usually met by the next wave, but
# never grossly past it (a miss costs one more small wave; an overshoot costs every task).
MARGIN = 1.08
# With the run-to-run (batch) method, a standard error from a few runs is itself uncertain:
# aim further, and estimate nothing from fewer runs than this.
BATCH_MARGIN = 1.2
MIN_BATCH_RUNS = 3
HISTORY = "history"  # per-history statistics (Second_Moment): precise from the first run
BATCH = "batch"  # the spread of the runs' results


@dataclass(frozen=True)
class Target:
    """What the physicist asked for (TARGET_* and MAX_TASK_COUNT in simconfig.json)."""

    relative_error: float  # e.g. 0.004 for 0.4 %
    region_fraction: float = 0.5  # bins at or above this fraction of the maximum
    max_tasks: int = 0  # never more tasks than this in all


@dataclass(frozen=True)
class Measure:
    """The running merge now."""

    runs: int  # successful runs folded in
    relative_error: float | None  # largest relative standard error in the region (None: unknown)
    method: str  # HISTORY or BATCH
    region_bins: int = 0

    def met(self, target: Target) -> bool:
        return self.relative_error is not None and self.relative_error <= target.relative_error


def tasks_in_all(measure: Measure, target: Target) -> int | None:
    """How many successful runs the 1/sqrt(N) law says reach the target, with the margin;
    None when it cannot say yet (no usable estimate)."""
    if measure.runs <= 0 or measure.relative_error is None or not math.isfinite(measure.relative_error):
        return None
    if measure.method == BATCH and measure.runs < MIN_BATCH_RUNS:
        return None
    margin = BATCH_MARGIN if measure.method == BATCH else MARGIN
    ratio = measure.relative_error / target.relative_error
    return max(measure.runs, math.ceil(measure.runs * ratio * ratio * margin - 1e-9))


@dataclass(frozen=True)
class Decision:
    add: int  # tasks to add now
    needed: int | None  # the law's count of runs in all (None: not known yet)
    capped: bool  # MAX_TASK_COUNT keeps it from adding what the law asks


def decide(measure: Measure, target: Target, submitted: int, failed: int, first_wave: int) -> Decision:
    """Tasks to add now, given those submitted so far (whether done, running or waiting) of
    which `failed` failed. Nothing once the target is met; a wave of the first wave's size
    while the estimate is unknown but nothing is left to wait for."""
    if measure.met(target):
        return Decision(0, measure.runs, False)
    needed = tasks_in_all(measure, target)
    expected = submitted - failed  # the runs that will count, once the ones under way end
    if needed is None:
        want = first_wave if expected <= measure.runs else 0
    else:
        want = max(0, needed - expected)
    room = max(0, target.max_tasks - submitted) if target.max_tasks else want
    return Decision(min(want, room), needed, want > room)


def law_curve(measure: Measure, runs: list[int]) -> list[float]:
    """The 1/sqrt(N) line through the current point, for the convergence plot."""
    if measure.relative_error is None or measure.runs <= 0:
        return [math.nan for _ in runs]
    return [measure.relative_error * math.sqrt(measure.runs / n) for n in runs]


def too_many_failures(failed: int, finished: int) -> bool:
    """Failed tasks do not count toward the target and are replaced — until they are so many
    that the campaign is broken rather than unlucky: more than a quarter of at least 4."""
    return finished >= 4 and failed * 4 > finished
