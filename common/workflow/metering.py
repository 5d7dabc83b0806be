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


def start_metering(ctx: Context) -> Metering | None:
    """Prices for this campaign, said once; refuses (exit 2) a budget it could not enforce."""
    prices = campaign_prices(ctx)
    goals = ctx.settings.sim.goals
    if prices is None:
        return None
    ctx.ui.info(f"prices: {format_prices(prices)}")
    hours = NodeHours(1.0 if ctx.settings.sim.pool_node_count else 0.0, 1.0 if goals.spot_nodes else 0.0)
    if goals.max_cost is not None and missing_price(hours, prices):
        raise ToolError(f"simconfig.json: MAX_COST: {format_money(goals.max_cost, goals.currency)} "
                        f"cannot be enforced: {missing_price(hours, prices)}: set "
                        "PRICE_PER_NODE_HOUR (and SPOT_PRICE_PER_NODE_HOUR for Spot nodes)",
                        exit_code=2)
    return Metering(prices, goals.max_cost, CostMeter(prices, ctx.clock), goals.currency)


def estimate_lines(ctx: Context, task_seconds: tuple[float, ...] = ()) -> list[str]:
    """For --dry-run: the most the campaign can cost (every node for the job's longest life)
    and, from an earlier campaign's task durations, what it is expected to cost."""
    from common.billing.cost import expected
    prices = campaign_prices(ctx)
    if prices is None:
        return [f"  cost: none ({ctx.backend.name} backend)"]
    sim = ctx.settings.sim
    nodes = NodeCounts(sim.pool_node_count, sim.goals.spot_nodes)
    minutes = sim.timeout_minutes + WALL_CLOCK_MARGIN_MINUTES
    lines = [f"  prices: {format_prices(prices)}",
             f"  at most: {format_estimate(upper_bound(nodes, minutes), prices)}"]
    if task_seconds:
        tasks = sim.goals.max_task_count or sim.task_count
        lines.append(f"  expected: {format_estimate(expected(task_seconds, tasks, sim.task_slots_per_node, nodes), prices)}")
    if sim.goals.max_cost is not None:
        lines.append(f"  budget (MAX_COST): {format_money(sim.goals.max_cost, sim.goals.currency)}: "
                     "the campaign stops when it is reached")
    return lines
