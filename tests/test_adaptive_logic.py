"""The arithmetic of aiming at an uncertainty: how many tasks the 1/sqrt(N) law asks for."""
from __future__ import annotations

import math

import pytest

from common.adaptive import (BATCH, HISTORY, MARGIN, Measure, Target, decide, law_curve,
                             tasks_in_all, too_many_failures)


def test_two_runs_at_0_707_percent_need_about_seven_for_0_4_percent():
    # the shipped example: one task reaches ~1 %; two reach 1/sqrt(2) of that
    measure = Measure(runs=2, relative_error=0.01 / math.sqrt(2), method=HISTORY)
    assert tasks_in_all(measure, Target(0.004)) == math.ceil(6.25 * MARGIN)  # 7, not 14
    decision = decide(measure, Target(0.004, max_tasks=20), submitted=2, failed=0, first_wave=2)
    assert (decision.add, decision.needed, decision.capped) == (5, 7, False)


def test_tasks_already_under_way_are_counted_and_a_met_target_adds_nothing():
    measure = Measure(runs=3, relative_error=0.006, method=HISTORY)
    assert decide(measure, Target(0.004), submitted=8, failed=0, first_wave=2).add == 0  # 8 in all
    assert decide(measure, Target(0.004), submitted=7, failed=0, first_wave=2).add == 1
    assert decide(Measure(5, 0.0039, HISTORY), Target(0.004), 5, 0, 2).add == 0


def test_failed_tasks_are_replaced_and_the_cap_is_kept():
    measure = Measure(runs=2, relative_error=0.01 / math.sqrt(2), method=HISTORY)
    assert decide(measure, Target(0.004), submitted=3, failed=1, first_wave=2).add == 5
    capped = decide(measure, Target(0.004, max_tasks=4), submitted=2, failed=0, first_wave=2)
    assert (capped.add, capped.capped) == (2, True)
    assert decide(measure, Target(0.004, max_tasks=2), 2, 0, 2).add == 0


def test_the_batch_method_waits_for_three_runs_and_aims_further():
    assert tasks_in_all(Measure(2, 0.01, BATCH), Target(0.005)) is None
    # unknown yet and nothing else under way: another wave of the first wave's size
    assert decide(Measure(2, 0.01, BATCH), Target(0.005), submitted=2, failed=0, first_wave=2).add == 2
    assert decide(Measure(1, 0.01, BATCH), Target(0.005), submitted=2, failed=0, first_wave=2).add == 0
    assert tasks_in_all(Measure(4, 0.01, BATCH), Target(0.005)) == math.ceil(16 * 1.2)


def test_law_curve_and_failure_share():
    curve = law_curve(Measure(4, 0.01, HISTORY), [1, 4, 16])
    assert curve == pytest.approx([0.02, 0.01, 0.005])
    assert not too_many_failures(1, 3) and not too_many_failures(1, 4)
    assert too_many_failures(2, 4) and not too_many_failures(2, 8)
