"""What a campaign aims at and may spend (simconfig.json): the statistical target that ends an
adaptive campaign, Spot nodes, prices and the budget. All optional: without them a campaign
runs its TASK_COUNT tasks on dedicated nodes, as before.

Read with the same reader as the rest of the simconfig (common/config/reader.py), so every problem
is one line naming the file, the key and the fix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from common.billing.cost import MAX_PRICE, MIN_PRICE
from common.output_patterns import kept_by

GOAL_KEYS = ("TARGET_UNCERTAINTY_PERCENT", "TARGET_SCORER", "TARGET_REGION_PERCENT_OF_MAX",
             "MAX_TASK_COUNT", "SPOT_NODE_COUNT", "PRICE_PER_NODE_HOUR", "SPOT_PRICE_PER_NODE_HOUR",
             "PRICE_CURRENCY", "MAX_COST")
MAX_TASKS = 100_000
DEFAULT_REGION_PERCENT = 50.0
MAX_TASKS_FACTOR = 10  # MAX_TASK_COUNT defaults to this many times TASK_COUNT
# The smallest target: from a run's typical 1-10 % it takes 10^4-10^6 runs, at the edge of
# MAX_TASKS; 1e-9 % would take 10^20.
MIN_TARGET_PERCENT = 0.01
SCORER_SUFFIXES = (".csv", ".binheader")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class Goals:
    target_percent: float | None = None  # relative standard error (1 sigma) to reach, in %
    target_scorer: str | None = None  # the scorer output that decides, relative to a run folder
    region_percent: float = DEFAULT_REGION_PERCENT  # bins at or above this % of the maximum
    max_task_count: int | None = None  # never more tasks in all (adaptive campaigns)
    spot_nodes: int = 0  # Spot (low-priority) nodes beside the dedicated ones
    price: float | None = None  # per dedicated node-hour; None: looked up
    spot_price: float | None = None  # per Spot node-hour; None: looked up
    currency: str = "USD"
    max_cost: float | None = None  # the campaign's budget in `currency`

    @property
    def adaptive(self) -> bool:
        return self.target_percent is not None


def _optional_number(r: Any, key: str, low: float, high: float, fix: str) -> float | None:
    if r.data.get(key) is None:
        return None
    return r.number(key, 0.0, low, high, fix)


def _target_scorer(r: Any) -> str | None:
    value = r.string("TARGET_SCORER", False, "name the scorer file, e.g. DoseAtPhantom.csv")
    if value is None:
        return None
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or any(c in value for c in "*?["):
        r.bad("TARGET_SCORER", f"{value!r} is not a file name inside a run folder",
              "give the scorer output as the tasks write it, e.g. DoseAtPhantom.csv")
        return None
    return path.as_posix()


def _price(r: Any, key: str, fix: str) -> float | None:
    """A price per node-hour: 0 (free), or a price some VM has (MIN_PRICE..MAX_PRICE)."""
    value = _optional_number(r, key, -1e-300, 1e300, fix)
    if value is not None and value != 0 and not MIN_PRICE <= value <= MAX_PRICE:
        r.bad(key, f"is {value:g}, not a price per node-hour ({MIN_PRICE:g} to {MAX_PRICE:g}, "
              "or 0 for nodes that cost nothing)", fix)
        return None
    return value


def read_goals(r: Any, task_count: int | None) -> Goals:
    """The goal keys of one simconfig (problems recorded on the reader `r`)."""
    target = _optional_number(r, "TARGET_UNCERTAINTY_PERCENT", 0, 100,
                              "give the relative standard error to reach, in percent, e.g. 1.0")
    if target is not None and target < MIN_TARGET_PERCENT:
        r.bad("TARGET_UNCERTAINTY_PERCENT", f"is {target:g} %, which no campaign reaches "
              f"(the tasks needed grow as 1/target²)",
              f"give at least {MIN_TARGET_PERCENT:g} (percent), e.g. 1.0")
        target = None
    for key in ("TARGET_SCORER", "TARGET_REGION_PERCENT_OF_MAX"):
        if r.data.get(key) is not None and r.data.get("TARGET_UNCERTAINTY_PERCENT") is None:
            r.bad(key, "is set without TARGET_UNCERTAINTY_PERCENT, so nothing would use it",
                  "set TARGET_UNCERTAINTY_PERCENT too (an adaptive campaign), or remove the key")
    region = _optional_number(r, "TARGET_REGION_PERCENT_OF_MAX", 0, 100,
                              "give the percentage of the maximum that bounds the region, e.g. 50")
    first = task_count or 1
    limit = r.integer("MAX_TASK_COUNT", MAX_TASKS_FACTOR * first if target else first,
                      first, MAX_TASKS, f"use the most tasks in all, from TASK_COUNT ({first}) to "
                      f"{MAX_TASKS}") if r.data.get("MAX_TASK_COUNT") is not None or target else None
    if r.data.get("MAX_TASK_COUNT") is not None and target is None:
        r.bad("MAX_TASK_COUNT", "is set without TARGET_UNCERTAINTY_PERCENT",
              "set TARGET_UNCERTAINTY_PERCENT too (an adaptive campaign), or remove the key")
    spot = r.integer("SPOT_NODE_COUNT", 0, 0, 2000, "use the Spot nodes beside the dedicated ones, 0-2000")
    currency = r.string("PRICE_CURRENCY", False, "use a three-letter currency code, e.g. EUR") or "USD"
    if not _CURRENCY.match(currency):
        r.bad("PRICE_CURRENCY", f"{currency!r} is not a currency code", "use e.g. USD, EUR or GBP")
    return Goals(
        target_percent=target, target_scorer=_target_scorer(r),
        region_percent=region if region is not None else DEFAULT_REGION_PERCENT,
        max_task_count=limit, spot_nodes=spot or 0,
        price=_price(r, "PRICE_PER_NODE_HOUR", "give the price of a dedicated node-hour, "
                     "e.g. 0.096"),
        spot_price=_price(r, "SPOT_PRICE_PER_NODE_HOUR", "give the price of a Spot node-hour, "
                          "e.g. 0.019"),
        currency=currency,
        max_cost=_optional_number(r, "MAX_COST", 0, 1e9,
                                  f"give the campaign's budget in {currency}, e.g. 25"))


def check_goals(r: Any, goals: Goals, patterns: tuple[str, ...], dedicated_nodes: int | None) -> None:
    """What the goals mean together with the rest of the simconfig: a TARGET_SCORER the
    tasks' outputs can hold, a budget that prices can reach."""
    scorer = goals.target_scorer
    if scorer is not None and goals.adaptive:
        needed = [scorer] + ([scorer[:-len("header")]] if scorer.endswith(".binheader") else [])
        if not scorer.endswith(SCORER_SUFFIXES):
            r.bad("TARGET_SCORER", f"{scorer!r} is not a TOPAS scorer output",
                  "name a scorer file the tasks write: a .csv or a .binheader")
        elif patterns and not all(kept_by(name, patterns) for name in needed):
            r.bad("TARGET_SCORER", f"{scorer!r} matches none of OUTPUT_FILE_PATTERNS "
                  f"({', '.join(map(repr, patterns))}), so it would never be stored",
                  "name a file the patterns keep (a .binheader needs its .bin kept too), or "
                  "add a pattern for it")
    kinds = [(key, price) for key, price, nodes in
             (("PRICE_PER_NODE_HOUR", goals.price, dedicated_nodes),
              ("SPOT_PRICE_PER_NODE_HOUR", goals.spot_price, goals.spot_nodes)) if nodes]
    if goals.max_cost is not None and kinds and all(price == 0 for _, price in kinds):
        r.bad("MAX_COST", f"is set but {' and '.join(k for k, _ in kinds)} "
              f"{'is' if len(kinds) == 1 else 'are'} 0: the budget would never be reached",
              "give the real price per node-hour, or remove MAX_COST")
