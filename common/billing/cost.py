"""What a campaign's nodes cost: prices, node-hours, the running meter, estimates, summaries.

Owns the arithmetic only: no network, no disk, no clock of its own (the meter is given one).
Where prices come from is pricing.py; this module takes them as `Prices` (or
`PriceUnknown`, which every function here accepts and reports instead of a cost).

Counts are what a pool reports (Batch: currentDedicatedNodes and currentLowPriorityNodes,
the latter being Spot nodes today). Azure bills a node from its allocation, including the
minutes it spends starting, so whatever the pool counts is counted here.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Callable, Sequence

SECONDS_PER_HOUR = 3600.0
# What a node-hour may cost, in any currency the price list offers: from the cheapest Spot
# B-series in USD to the largest M-series in Korean won, with room on both sides. Outside it a price is a hostile or broken
# answer (1e300 would print as 300 digits and never let a budget stop; 1e-300 would never
# let it be reached), and it is refused with its source named.
MIN_PRICE, MAX_PRICE = 1e-4, 1e6


def price_in_range(per_hour: float) -> bool:
    return math.isfinite(per_hour) and MIN_PRICE <= per_hour <= MAX_PRICE


class Unknown(Enum):
    """Why there is no price, so a caller can tell a typo from a network problem."""

    OFFLINE = "offline"  # no connection, refused, closed
    TIMEOUT = "timeout"
    UNKNOWN_SIZE = "unknown size"  # the price list has no such VM size in the region
    NO_LINUX_METER = "no Linux meter"
    NO_PUBLIC_PRICES = "no public price list"  # e.g. Azure operated by 21Vianet (China)
    NO_REGION = "no region"  # the region cannot be derived from the Batch account URL
    BAD_ANSWER = "bad answer"  # HTTP error, not the API's JSON, wrong currency, endless paging
    INVALID = "invalid input"  # a VM size, region, currency or URL that cannot be asked for
    NOT_GIVEN = "not given"


@dataclass(frozen=True)
class PriceUnknown:
    """No usable price, and the one-line reason a user can act on."""

    reason: str
    kind: Unknown = Unknown.NOT_GIVEN


@dataclass(frozen=True)
class Prices:
    """Per node-hour prices of one VM size in one region, in `currency`.

    Either price may be None: some sizes are never Spot, and a configuration may give
    only one. `notes` say what a user should know about how the prices were chosen.
    """

    dedicated_per_hour: float | None
    spot_per_hour: float | None
    currency: str
    source: str
    fetched_at: datetime | None = None  # None for prices given in the configuration
    cached: bool = False
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        given = [p for p in (self.dedicated_per_hour, self.spot_per_hour) if p is not None]
        if not given:
            raise ValueError("Prices needs a dedicated or a Spot price")
        if any(not math.isfinite(p) or p < 0 for p in given):
            raise ValueError(f"prices must be finite and not negative: {given}")


PriceInfo = Prices | PriceUnknown | None  # None: nobody gave or looked up a price


@dataclass(frozen=True)
class NodeCounts:
    dedicated: int = 0
    spot: int = 0

    def __post_init__(self) -> None:
        if self.dedicated < 0 or self.spot < 0:
            raise ValueError(f"node counts cannot be negative: {self}")

    @property
    def total(self) -> int:
        return self.dedicated + self.spot


@dataclass(frozen=True)
class NodeHours:
    dedicated: float = 0.0
    spot: float = 0.0

    @property
    def total(self) -> float:
        return self.dedicated + self.spot


# ---------------------------------------------------------------------------- cost


def missing_price(hours: NodeHours, prices: PriceInfo) -> str | None:
    """Why `hours` cannot be priced, or None when they can."""
    if prices is None:
        return "no price given"
    if isinstance(prices, PriceUnknown):
        return prices.reason
    if hours.dedicated > 0 and prices.dedicated_per_hour is None:
        return "no price for dedicated nodes"
    if hours.spot > 0 and prices.spot_per_hour is None:
        return "no price for Spot nodes"
    return None


def cost_of(hours: NodeHours, prices: PriceInfo) -> float | None:
    """Node-hours times the price of their kind; None when a needed price is missing."""
    if missing_price(hours, prices) is not None:
        return None
    assert isinstance(prices, Prices)
    # A kind with no hours costs nothing even when it has no price.
    return (hours.dedicated * (prices.dedicated_per_hour or 0.0)
            + hours.spot * (prices.spot_per_hour or 0.0))


# ---------------------------------------------------------------------------- meter


@dataclass
class _Accumulated:
    dedicated_s: float = 0.0
    spot_s: float = 0.0


class CostMeter:
    """Integrates node-hours from samples of a pool's current node counts.

    Between two samples the pool may have grown or shrunk at any moment, so each interval
    is counted at the larger of the counts at its ends: the meter may over-count by up to
    one sampling interval of the change, never under-count, which is the safe side for a
    budget. After the last sample the last counts are assumed to continue until now.
    """

    def __init__(self, prices: PriceInfo, clock: Callable[[], float] = time.monotonic) -> None:
        self.prices = prices
        self._clock = clock
        self._done = _Accumulated()
        self._last: NodeCounts | None = None
        self._last_at = 0.0

    def observe(self, counts: NodeCounts) -> None:
        """Record the pool's counts as reported now (NodeCounts() once the pool is gone)."""
        at = self._clock()
        if self._last is not None:
            elapsed = max(0.0, at - self._last_at)  # a clock that steps back adds nothing
            self._done.dedicated_s += elapsed * max(self._last.dedicated, counts.dedicated)
            self._done.spot_s += elapsed * max(self._last.spot, counts.spot)
        self._last, self._last_at = counts, max(at, self._last_at)

    def node_hours(self) -> NodeHours:
        """Node-hours from the first sample until now."""
        dedicated_s, spot_s = self._done.dedicated_s, self._done.spot_s
        if self._last is not None:
            open_s = max(0.0, self._clock() - self._last_at)
            dedicated_s += open_s * self._last.dedicated
            spot_s += open_s * self._last.spot
        return NodeHours(dedicated_s / SECONDS_PER_HOUR, spot_s / SECONDS_PER_HOUR)

    def cost(self) -> float | None:
        """Cost so far in the prices' currency; None when a needed price is unknown."""
        return cost_of(self.node_hours(), self.prices)

    def reached(self, budget: float | None) -> bool:
        """True once the cost so far is at least `budget`.

        False when there is no budget or no price: a caller holding a budget should check
        `missing_price` up front and tell the user the budget cannot be enforced.
        """
        spent = self.cost()
        return budget is not None and spent is not None and spent >= budget

    def summary(self) -> str:
        return format_usage(self.node_hours(), self.prices)


# ---------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """Node-hours a campaign is expected (or at most allowed) to use, and how."""

    hours: NodeHours
    wall_hours: float  # how long the pool is assumed to exist
    basis: str  # one line: what the figure is made of

    def cost(self, prices: PriceInfo) -> float | None:
        return cost_of(self.hours, prices)


def upper_bound(nodes: NodeCounts, max_minutes: float) -> Estimate:
    """Every node for the longest the pool can live: nodes x price x `max_minutes`.

    Pass the longest the pool can bill: with an auto pool that is the job's maximum
    wall-clock time (TIMEOUT_MINUTES plus the margin the workflow adds); a named pool
    bills until someone deletes it, so its bound holds only if the cleanup question is
    answered yes when the wait ends.
    """
    if max_minutes < 0 or not math.isfinite(max_minutes):
        raise ValueError(f"max_minutes must be finite and not negative: {max_minutes}")
    wall = max_minutes / 60.0
    return Estimate(NodeHours(nodes.dedicated * wall, nodes.spot * wall), wall,
                    f"{_node_phrase(nodes)} x {wall:.2f} h")


def expected(task_seconds: Sequence[float], tasks: int, slots_per_node: int,
             nodes: NodeCounts) -> Estimate:
    """Node-hours of a campaign like an earlier one whose tasks took `task_seconds`.

    Formula: the earlier durations, repeated in order to `tasks` tasks, are replayed onto
    nodes x slots_per_node slots, each task going to the slot that frees first (as Batch
    hands out tasks); the pool lives until the last task ends (makespan), and every node
    is billed for all of it: node-hours = nodes x makespan.

    Left out: pool start-up (allocation, start task, image pull: minutes, billed once a
    node is allocated), the reducer and its pool, blob storage and transactions, egress
    of downloads, retries and reruns, Spot evictions, and taxes or discounts. Durations
    measured with another VM size or TASK_SLOTS_PER_NODE do not carry over.
    """
    slots = nodes.total * slots_per_node
    _check_expected_inputs(task_seconds, tasks, slots_per_node, slots)
    makespan_h = makespan_seconds(task_seconds, tasks, slots) / SECONDS_PER_HOUR
    return Estimate(NodeHours(nodes.dedicated * makespan_h, nodes.spot * makespan_h),
                    makespan_h,
                    f"{tasks} task(s) on {_node_phrase(nodes)} x {slots_per_node} "
                    f"slot(s), {makespan_h:.2f} h from an earlier campaign's task times")


def _check_expected_inputs(task_seconds: Sequence[float], tasks: int, slots_per_node: int,
                           slots: int) -> None:
    if not task_seconds:
        raise ValueError("expected() needs at least one earlier task duration")
    if any(not math.isfinite(s) or s < 0 for s in task_seconds):
        raise ValueError("task durations must be finite and not negative")
    if tasks < 0 or slots_per_node < 1 or slots < 1:
        raise ValueError(f"need tasks >= 0 and at least one slot (tasks={tasks}, "
                         f"slots_per_node={slots_per_node}, slots={slots})")


def makespan_seconds(task_seconds: Sequence[float], tasks: int, slots: int) -> float:
    """When the last of `tasks` tasks ends, durations cycled from `task_seconds`."""
    free_at = [0.0] * min(slots, tasks)
    heapq.heapify(free_at)
    for i in range(tasks):
        start = heapq.heappop(free_at)
        heapq.heappush(free_at, start + task_seconds[i % len(task_seconds)])
    return max(free_at, default=0.0)


def _node_phrase(nodes: NodeCounts) -> str:
    if nodes.spot == 0:
        return f"{nodes.dedicated} dedicated node(s)"
    if nodes.dedicated == 0:
        return f"{nodes.spot} Spot node(s)"
    return f"{nodes.total} nodes ({nodes.dedicated} dedicated, {nodes.spot} Spot)"


# ---------------------------------------------------------------------------- formatting


def format_price(per_hour: float) -> str:
    """0.096 -> '0.096', 0.0192 -> '0.0192', 1.5 -> '1.50': enough digits for a VM price."""
    text = f"{per_hour:.4f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def format_money(amount: float, currency: str) -> str:
    if 0 < amount < 0.005:
        return f"< 0.01 {currency}"  # '0.00' would read as free
    return f"{amount:.2f} {currency}"


def format_hours(hours: NodeHours) -> str:
    return (f"{hours.total:.2f} node-hours ({hours.dedicated:.2f} dedicated, "
            f"{hours.spot:.2f} Spot)")


def format_rates(prices: Prices) -> str:
    """'0.096/0.019 USD per node-hour' (dedicated/Spot), or the one price there is."""
    ded, spot, cur = prices.dedicated_per_hour, prices.spot_per_hour, prices.currency
    if ded is not None and spot is not None:
        return f"{format_price(ded)}/{format_price(spot)} {cur} per node-hour"
    if ded is not None:
        return f"{format_price(ded)} {cur} per dedicated node-hour"
    return f"{format_price(spot or 0.0)} {cur} per Spot node-hour"


def format_usage(hours: NodeHours, prices: PriceInfo) -> str:
    """One line: node-hours, and their cost or why there is none."""
    reason = missing_price(hours, prices)
    if reason is not None:
        return f"price unknown: {reason}; {format_hours(hours)}"
    assert isinstance(prices, Prices)
    amount = cost_of(hours, prices) or 0.0
    return (f"{format_hours(hours)}, {format_money(amount, prices.currency)} "
            f"at {format_rates(prices)}")


def format_estimate(estimate: Estimate, prices: PriceInfo) -> str:
    """'<basis>: <node-hours>, <cost>' for --dry-run; where a needed price is unknown, the
    node-hours and 'cost unknown' (the reason is said once, on the prices line)."""
    reason = missing_price(estimate.hours, prices)
    if reason is not None:
        return f"{estimate.basis}: {format_hours(estimate.hours)}; cost unknown (no price)"
    assert isinstance(prices, Prices)
    amount = cost_of(estimate.hours, prices) or 0.0
    used = NodeCounts(1 if estimate.hours.dedicated else 0, 1 if estimate.hours.spot else 0)
    return (f"{estimate.basis}: {format_hours(estimate.hours)}, "
            f"{format_money(amount, prices.currency)} at {format_rates(_of_kinds(prices, used))}")


def format_prices(prices: PriceInfo, nodes: NodeCounts | None = None) -> str:
    """Where the prices come from, with their notes, for the start of a run. With `nodes`,
    only what concerns the kinds of node the pool has (no word on Spot without Spot nodes)."""
    if prices is None:
        return "unknown: no price given"
    if isinstance(prices, PriceUnknown):
        return f"unknown: {prices.reason}"
    notes = list(prices.notes)
    if nodes is not None:
        unused = ("spot", "low priority") if not nodes.spot else ()
        unused += ("dedicated",) if not nodes.dedicated else ()
        notes = [n for n in notes if not any(word in n.lower() for word in unused)]
        prices = _of_kinds(prices, nodes)
    return "; ".join([f"{format_rates(prices)} ({prices.source})", *notes])


def _of_kinds(prices: Prices, nodes: NodeCounts) -> Prices:
    """The prices of the kinds of node there are (both when that would leave none)."""
    dedicated = prices.dedicated_per_hour if nodes.dedicated or not nodes.spot else None
    spot = prices.spot_per_hour if nodes.spot else None
    if dedicated is None and spot is None:
        return prices
    return Prices(dedicated, spot, prices.currency, prices.source, prices.fetched_at,
                  prices.cached, prices.notes)

