"""Node-hours and cost: the meter on a hand-moved clock, the estimates, the one-line summaries."""
from __future__ import annotations

import pytest

from common.billing.cost import (CostMeter, NodeCounts, NodeHours, PriceUnknown, Prices, Unknown,
                         cost_of, expected, format_estimate, format_money, format_price,
                         format_prices, format_usage, makespan_seconds, missing_price,
                         upper_bound)

PRICES = Prices(0.10, 0.02, "USD", "test")
HOUR = 3600.0


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0  # not zero: nothing may assume the clock starts there

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


# ---------------------------------------------------------------------------- meter


def test_the_meter_integrates_dedicated_and_spot_apart(clock):
    meter = CostMeter(PRICES, clock)
    meter.observe(NodeCounts(0, 0))  # pool created, nothing allocated yet
    clock.advance(600)
    meter.observe(NodeCounts(2, 0))  # 2 nodes appeared at some moment in these 10 minutes
    clock.advance(3000)
    meter.observe(NodeCounts(2, 1))
    clock.advance(1800)  # no sample since: the last counts go on
    hours = meter.node_hours()
    # dedicated: 600 s x 2 (the larger end) + 3000 s x 2 + 1800 s x 2 = 10800 s
    # Spot: 3000 s x 1 (the larger end) + 1800 s x 1 = 4800 s
    assert hours.dedicated == pytest.approx(3.0)
    assert hours.spot == pytest.approx(4800 / HOUR)
    assert meter.cost() == pytest.approx(3.0 * 0.10 + 4800 / HOUR * 0.02)


def test_a_shrinking_pool_is_counted_at_the_larger_end_then_stops(clock):
    meter = CostMeter(PRICES, clock)
    meter.observe(NodeCounts(4, 0))
    clock.advance(HOUR)
    meter.observe(NodeCounts(0, 0))  # deleted at some moment in that hour
    clock.advance(10 * HOUR)
    assert meter.node_hours() == NodeHours(4.0, 0.0)


def test_no_sample_means_nothing_used(clock):
    meter = CostMeter(PRICES, clock)
    clock.advance(HOUR)
    assert meter.node_hours() == NodeHours(0.0, 0.0)
    assert meter.cost() == 0.0


def test_a_clock_that_steps_back_adds_nothing(clock):
    meter = CostMeter(PRICES, clock)
    meter.observe(NodeCounts(1, 0))
    clock.advance(HOUR)
    meter.observe(NodeCounts(1, 0))
    clock.advance(-2 * HOUR)
    meter.observe(NodeCounts(1, 0))
    assert meter.node_hours().dedicated == pytest.approx(1.0)
    clock.advance(3 * HOUR)  # one hour past the latest time seen
    assert meter.node_hours().dedicated == pytest.approx(2.0)


def test_reached_compares_the_cost_so_far_with_the_budget(clock):
    meter = CostMeter(PRICES, clock)
    meter.observe(NodeCounts(10, 0))  # 1.00 USD per hour
    clock.advance(0.5 * HOUR)
    assert not meter.reached(0.51)
    clock.advance(0.02 * HOUR)  # 0.52 USD: past the budget without a float tie
    assert meter.reached(0.51)
    assert not meter.reached(None)


@pytest.mark.parametrize("prices", [None, PriceUnknown("offline", Unknown.OFFLINE),
                                    Prices(0.10, None, "USD", "test")])
def test_without_a_needed_price_there_is_no_cost_and_no_budget_stop(clock, prices):
    meter = CostMeter(prices, clock)
    meter.observe(NodeCounts(3, 3))
    clock.advance(HOUR)
    assert meter.cost() is None
    assert not meter.reached(0.0)


def test_a_missing_spot_price_does_not_matter_without_spot_nodes(clock):
    meter = CostMeter(Prices(0.10, None, "USD", "test"), clock)
    meter.observe(NodeCounts(2, 0))
    clock.advance(HOUR)
    assert meter.cost() == pytest.approx(0.20)
    assert meter.summary() == ("2.00 node-hours (2.00 dedicated, 0.00 Spot), 0.20 USD at "
                               "0.10 USD per dedicated node-hour")


def test_missing_price_names_what_is_missing():
    assert missing_price(NodeHours(1, 0), None) == "no price given"
    assert missing_price(NodeHours(1, 0), PriceUnknown("timeout")) == "timeout"
    assert missing_price(NodeHours(0, 1), Prices(0.1, None, "USD", "t")) == \
        "no price for Spot nodes"
    assert missing_price(NodeHours(1, 0), Prices(None, 0.1, "USD", "t")) == \
        "no price for dedicated nodes"
    assert missing_price(NodeHours(1, 1), PRICES) is None


@pytest.mark.parametrize("bad", [dict(dedicated_per_hour=None, spot_per_hour=None),
                                 dict(dedicated_per_hour=-0.1, spot_per_hour=None),
                                 dict(dedicated_per_hour=float("inf"), spot_per_hour=0.1)])
def test_prices_refuse_nonsense(bad):
    with pytest.raises(ValueError):
        Prices(currency="USD", source="t", **bad)


# ---------------------------------------------------------------------------- estimates


def test_the_upper_bound_is_every_node_for_the_whole_time():
    estimate = upper_bound(NodeCounts(4, 2), max_minutes=90)
    assert estimate.hours == NodeHours(6.0, 3.0)
    assert estimate.cost(PRICES) == pytest.approx(6.0 * 0.10 + 3.0 * 0.02)
    assert format_estimate(estimate, PRICES) == (
        "6 nodes (4 dedicated, 2 Spot) x 1.50 h: 9.00 node-hours (6.00 dedicated, "
        "3.00 Spot), 0.66 USD at 0.10/0.02 USD per node-hour")


def test_the_expected_cost_replays_earlier_task_times_onto_the_slots():
    # 2 slots; tasks of 100, 200, 300, 100, 200, 300 s go each to the slot free first:
    # A: 0-100, 100-400, 400-700   B: 0-200, 200-300, 300-500   -> the pool lives 700 s.
    estimate = expected([100, 200, 300], tasks=6, slots_per_node=1, nodes=NodeCounts(2, 0))
    assert estimate.wall_hours == pytest.approx(700 / HOUR)
    assert estimate.hours.dedicated == pytest.approx(2 * 700 / HOUR)
    assert estimate.hours.spot == 0.0


def test_equal_tasks_run_in_waves_over_nodes_times_slots():
    # 10 tasks of 60 s on 2 nodes x 2 slots: three waves.
    assert makespan_seconds([60.0], tasks=10, slots=4) == 180.0
    estimate = expected([60.0], tasks=10, slots_per_node=2, nodes=NodeCounts(1, 1))
    assert estimate.hours == NodeHours(180 / HOUR, 180 / HOUR)


def test_fewer_tasks_than_slots_last_as_long_as_the_longest():
    assert makespan_seconds([50.0, 500.0, 5.0], tasks=3, slots=8) == 500.0
    assert makespan_seconds([50.0], tasks=0, slots=8) == 0.0


@pytest.mark.parametrize("args", [
    dict(task_seconds=[], tasks=1, slots_per_node=1, nodes=NodeCounts(1, 0)),
    dict(task_seconds=[-1.0], tasks=1, slots_per_node=1, nodes=NodeCounts(1, 0)),
    dict(task_seconds=[float("nan")], tasks=1, slots_per_node=1, nodes=NodeCounts(1, 0)),
    dict(task_seconds=[1.0], tasks=1, slots_per_node=0, nodes=NodeCounts(1, 0)),
    dict(task_seconds=[1.0], tasks=1, slots_per_node=1, nodes=NodeCounts(0, 0)),
    dict(task_seconds=[1.0], tasks=-1, slots_per_node=1, nodes=NodeCounts(1, 0)),
])
def test_expected_refuses_inputs_it_cannot_estimate_from(args):
    with pytest.raises(ValueError):
        expected(**args)


def test_upper_bound_refuses_a_negative_time():
    with pytest.raises(ValueError):
        upper_bound(NodeCounts(1, 0), -1)


# ---------------------------------------------------------------------------- formatting


def test_usage_line_with_prices():
    line = format_usage(NodeHours(1.0, 0.42), Prices(0.096, 0.019, "USD", "test"))
    assert line == ("1.42 node-hours (1.00 dedicated, 0.42 Spot), 0.10 USD at "
                    "0.096/0.019 USD per node-hour")


def test_usage_line_without_a_price_gives_the_reason():
    line = format_usage(NodeHours(1.0, 0.42), PriceUnknown("the price list did not answer"))
    assert line == ("price unknown: the price list did not answer; 1.42 node-hours "
                    "(1.00 dedicated, 0.42 Spot)")
    assert format_usage(NodeHours(1.0, 0.0), None).startswith("price unknown: no price given;")


@pytest.mark.parametrize("price, text", [(0.096, "0.096"), (0.0192, "0.0192"), (1.5, "1.50"),
                                         (12.0, "12.00"), (0.1, "0.10")])
def test_format_price(price, text):
    assert format_price(price) == text


def test_format_money_does_not_call_a_small_cost_free():
    assert format_money(0.004, "EUR") == "< 0.01 EUR"
    assert format_money(0.0, "EUR") == "0.00 EUR"
    assert format_money(12.345, "EUR") == "12.35 EUR"


def test_format_prices_says_where_they_come_from():
    prices = Prices(0.05, 0.01, "EUR", "Azure retail prices, westeurope, Standard_A1_v2, Linux",
                    notes=("no Spot meter: using the Low Priority price",))
    assert format_prices(prices) == (
        "0.05/0.01 EUR per node-hour (Azure retail prices, westeurope, Standard_A1_v2, Linux); "
        "no Spot meter: using the Low Priority price")
    assert format_prices(PriceUnknown("offline")) == "unknown: offline"
    assert format_prices(None) == "unknown: no price given"


def test_cost_of_is_zero_for_no_hours_even_without_prices_for_a_kind():
    assert cost_of(NodeHours(), Prices(None, 0.02, "USD", "t")) == 0.0
