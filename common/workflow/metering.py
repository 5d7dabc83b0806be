"""What a campaign costs: prices at the start, node-hours while it runs, the budget.

Prices come from the simconfig or the Azure Retail Prices API (common/billing/pricing.py, cached a
day); node-hours are integrated from what the pool reports — dedicated and Spot apart, from
allocation on, preempted Spot nodes not counted (common/billing/cost.py). With MAX_COST set, the
wait stops as soon as the cost so far reaches it, within one poll, and the job and pool are
deleted as after Ctrl-C; the data is kept. On the local backend nothing bills.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from common.billing.cost import (CostMeter, NodeCounts, NodeHours, Prices, PriceUnknown, format_estimate,
                         format_money, format_prices, format_usage, missing_price, upper_bound)
from common.errors import ToolError
from common.model import PoolHealth
from common.billing.pricing import prices_for_campaign
from common.workflow.context import Context

# The job's own wall clock ends it after TIMEOUT_MINUTES plus this (common/campaign.py).
from common.campaign import WALL_CLOCK_MARGIN_MINUTES  # noqa: E402


class BudgetReached(ToolError):
    """MAX_COST reached: the campaign stops as on Ctrl-C (compute deleted, data kept)."""


@dataclass
class Metering:
    prices: Prices | PriceUnknown
    budget: float | None
    meter: CostMeter
    currency: str
    # called after each sample: the runner keeps the manifest's figures current for --status
    on_sample: Callable[["Metering"], None] | None = None

    def sample(self, health: PoolHealth | None) -> None:
        dedicated, spot = health.billed if health is not None else (0, 0)
        self.meter.observe(NodeCounts(dedicated, spot))
        if self.on_sample is not None:
            self.on_sample(self)

    def over_budget(self) -> bool:
        return self.meter.reached(self.budget)

    def hours(self) -> NodeHours:
        return self.meter.node_hours()

    def line(self) -> str:
        return format_usage(self.hours(), self.prices)

    def short(self) -> str:
        """For the live progress line: node-hours and cost so far."""
        hours, spent = self.hours(), self.meter.cost()
        money = f", {format_money(spent, self.currency)}" if spent is not None else ""
        return f"{hours.total:.2f} node-h{money}"

    def budget_text(self) -> str:
        return format_money(self.budget or 0.0, self.currency)


def campaign_prices(ctx: Context) -> Prices | PriceUnknown | None:
    """None on a backend that does not bill (local); else the prices to use, or why unknown."""
    if not ctx.backend.capabilities.bills:
        return None
    goals, sim = ctx.settings.sim.goals, ctx.settings.sim
    return prices_for_campaign(sim.pool_vm_size, ctx.settings.app.batch_account_url,
                               goals.currency, dedicated=goals.price, spot=goals.spot_price)


def _nodes(ctx: Context) -> NodeCounts:
    return NodeCounts(ctx.settings.sim.pool_node_count, ctx.settings.sim.goals.spot_nodes)


def check_budget(ctx: Context, prices: Prices | PriceUnknown) -> None:
    """Exit 2 for a MAX_COST that cannot be enforced (a price the pool needs is unknown):
    the real run and --dry-run alike."""
    goals, nodes = ctx.settings.sim.goals, _nodes(ctx)
    hours = NodeHours(1.0 if nodes.dedicated else 0.0, 1.0 if nodes.spot else 0.0)
    why = missing_price(hours, prices)
    if goals.max_cost is not None and why:
        raise ToolError(f"{ctx.settings.sim.path.name}: MAX_COST: "
                        f"{format_money(goals.max_cost, goals.currency)} cannot be enforced: "
                        f"{why}: set PRICE_PER_NODE_HOUR (and SPOT_PRICE_PER_NODE_HOUR for "
                        "Spot nodes)", exit_code=2)


def start_metering(ctx: Context) -> Metering | None:
    """Prices for this campaign, said once; refuses (exit 2) a budget it could not enforce."""
    prices = campaign_prices(ctx)
    goals = ctx.settings.sim.goals
    if prices is None:
        return None
    ctx.ui.info(f"prices: {format_prices(prices, _nodes(ctx))}")
    check_budget(ctx, prices)
    return Metering(prices, goals.max_cost, CostMeter(prices, ctx.clock), goals.currency)


def estimate_lines(ctx: Context, task_seconds: tuple[float, ...] = ()) -> list[str]:
    """For --dry-run: the most the campaign can cost (every node for the job's longest life)
    and, from an earlier campaign's task durations, what it is expected to cost — and the
    budget as the real run will treat it (refused, exit 2, when it cannot be enforced)."""
    from common.billing.cost import expected
    prices = campaign_prices(ctx)
    if prices is None:
        return [f"  cost: none ({ctx.backend.name} backend)"]
    check_budget(ctx, prices)
    sim, nodes = ctx.settings.sim, _nodes(ctx)
    minutes = sim.timeout_minutes + WALL_CLOCK_MARGIN_MINUTES
    lines = [f"  prices: {format_prices(prices, nodes)}",
             f"  at most: {format_estimate(upper_bound(nodes, minutes), prices)}"]
    if task_seconds:
        tasks = sim.goals.max_task_count or sim.task_count
        estimate = expected(task_seconds, tasks, sim.task_slots_per_node, nodes)
        lines.append(f"  expected: {format_estimate(estimate, prices)}")
    if sim.goals.max_cost is not None:
        lines.append(f"  budget (MAX_COST): {format_money(sim.goals.max_cost, sim.goals.currency)}: "
                     "the wait stops within one poll of the cost reaching it, and the job and "
                     "pool are deleted (the data is kept)")
    return lines
