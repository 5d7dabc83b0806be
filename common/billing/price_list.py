"""The Azure Retail Prices API as data: what to ask it and how to read its answer (pure).

Owns: the region of a Batch account URL (and whether its cloud has a public price list),
the spelling of VM sizes the price list uses, the query URL, parsing a page of the answer,
and the choice of meters: Linux pay-as-you-go for dedicated nodes, Spot for Spot nodes.
No I/O here; pricing.py asks the API, pages, caches and bounds the time.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping
from urllib.parse import quote, urlsplit

from common.billing.cost import MAX_PRICE, MIN_PRICE, PriceUnknown, Prices, Unknown, price_in_range


class BadAnswer(ValueError):
    """The price list answered, but not what its API promises."""


# ---------------------------------------------------------------------------- region


@dataclass(frozen=True)
class _Cloud:
    batch_suffix: str
    name: str
    public_prices: bool


_CLOUDS = (
    _Cloud("batch.azure.com", "Azure", True),
    # US Government regions (usgovvirginia, ...) are in the public retail price list.
    _Cloud("batch.usgovcloudapi.net", "Azure Government", True),
    _Cloud("batch.chinacloudapi.cn", "Azure operated by 21Vianet (China)", False),
)
_REGION_RE = re.compile(r"^[a-z][a-z0-9]{1,40}$")


@dataclass(frozen=True)
class BatchRegion:
    """The Azure region of a Batch account, or why it cannot be used for a price."""

    region: str | None  # armRegionName, e.g. "westeurope"
    cloud: str | None
    problem: PriceUnknown | None = None


def region_from_batch_url(url: str | None) -> BatchRegion:
    """https://<account>.<region>.batch.azure.com (or a sovereign cloud's) -> its region."""
    host = (urlsplit(url or "").hostname or "").lower().rstrip(".")
    for cloud in _CLOUDS:
        if host.endswith("." + cloud.batch_suffix):
            return _region_in(host, cloud)
    shown = f"host {host}" if host else "(none)"  # never echo a user:password@ part
    return BatchRegion(None, None, PriceUnknown(
        f"cannot tell the region from BATCH_ACCOUNT_URL {shown}: it is not "
        "https://<account>.<region>.batch.azure.com; give PRICE_PER_NODE_HOUR",
        Unknown.NO_REGION))


def _region_in(host: str, cloud: _Cloud) -> BatchRegion:
    # A private endpoint name carries an extra 'privatelink' label; it is not the region.
    labels = [x for x in host[: -len(cloud.batch_suffix) - 1].split(".") if x != "privatelink"]
    if len(labels) < 2 or not _REGION_RE.match(labels[-1]):
        return BatchRegion(None, cloud.name, PriceUnknown(
            f"cannot tell the region from the Batch account host {host}: expected "
            f"<account>.<region>.{cloud.batch_suffix}; give PRICE_PER_NODE_HOUR",
            Unknown.NO_REGION))
    region = labels[-1]
    if not cloud.public_prices:
        return BatchRegion(region, cloud.name, PriceUnknown(
            f"{cloud.name} has no public retail price list; give PRICE_PER_NODE_HOUR",
            Unknown.NO_PUBLIC_PRICES))
    return BatchRegion(region, cloud.name)


# ---------------------------------------------------------------------------- names


_SIZE_RE = re.compile(r"^[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*$")
_SIZE_PART_RE = re.compile(r"^([A-Za-z]+)(\d+)((?:-\d+)?)([A-Za-z]*)$")
_LOWER_SUFFIXES = re.compile(r"^(?:v\d+|cc)$", re.IGNORECASE)


def canonical_vm_size(name: str) -> str:
    """STANDARD_D2S_V3 -> Standard_D2s_v3: the spelling the price list uses.

    Batch takes VM sizes in any case, but the price list's filter values are
    case-sensitive in its newer API versions. Family letters are upper case, feature
    letters lower case, 'v3' and 'cc' lower case, accelerator parts (A100, T4) upper.
    """
    parts = name.strip().split("_")
    out = [parts[0].capitalize()]
    for i, part in enumerate(parts[1:]):
        size = _SIZE_PART_RE.match(part) if i == 0 else None
        if size:
            out.append(size[1].upper() + size[2] + size[3] + size[4].lower())
        elif _LOWER_SUFFIXES.match(part):
            out.append(part.lower())
        elif part.lower() == "promo":
            out.append("Promo")
        else:
            out.append(part.upper())
    return "_".join(out)


def query_url(base: str, vm_size: str, region: str, currency: str) -> str:
    """The first page's URL. Inputs are checked first: none holds a quote."""
    clauses = (("serviceName", "Virtual Machines"), ("armRegionName", region),
               ("armSkuName", vm_size), ("priceType", "Consumption"))
    odata = " and ".join(f"{name} eq '{value}'" for name, value in clauses)
    joiner = "&" if "?" in base else "?"
    # '$filter' stays literal and quotes unescaped, as the API's own examples write them.
    currency_param = quote(f"'{currency}'", safe="'")
    filter_param = quote(odata, safe="'")
    return f"{base}{joiner}currencyCode={currency_param}&$filter={filter_param}"


def same_origin(link: str, base: str) -> bool:
    """Whether a next-page link is on the price list we asked (default ports spelt or not:
    the real API writes its links with an explicit ':443')."""
    return _origin(link) == _origin(base)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


@dataclass(frozen=True)
class PriceKey:
    """What a price is for, normalised: also the cache key."""

    vm_size: str  # canonical spelling
    region: str  # lower case
    currency: str  # upper case


def price_key(vm_size: str, region: str, currency: str) -> PriceKey | PriceUnknown:
    if not _SIZE_RE.match(vm_size.strip()):
        return PriceUnknown(f"{vm_size!r} is not a VM size name", Unknown.INVALID)
    if not _REGION_RE.match(region.strip().lower()):
        return PriceUnknown(f"{region!r} is not an Azure region name", Unknown.INVALID)
    if not re.match(r"^[A-Za-z]{3}$", currency.strip()):
        return PriceUnknown(f"{currency!r} is not a three-letter currency code", Unknown.INVALID)
    return PriceKey(canonical_vm_size(vm_size), region.strip().lower(), currency.strip().upper())


# ---------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Meter:
    """One item of the price list, reduced to what the choice needs."""

    arm_sku_name: str
    region: str
    product_name: str
    meter_name: str
    sku_name: str
    price_type: str
    currency: str
    per_hour: float | None  # None when the unit is not hours
    primary: bool
    effective_start: str

    @property
    def windows(self) -> bool:
        return "windows" in self.product_name.lower()

    @property
    def spot(self) -> bool:
        return "spot" in self.meter_name.lower() or "spot" in self.sku_name.lower()

    @property
    def low_priority(self) -> bool:
        return "low priority" in self.meter_name.lower() or "low priority" in self.sku_name.lower()


_HOURS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/?\s*hours?\s*$", re.IGNORECASE)


def meter_from_item(item: Mapping[str, Any]) -> Meter | None:
    """A price-list item as a Meter; None for an item missing what the choice needs."""
    try:
        price = item["retailPrice"]
        if isinstance(price, bool) or not isinstance(price, (int, float)):
            return None
        unit = _HOURS_RE.match(str(item.get("unitOfMeasure", "")))
        per_hour = price / float(unit[1]) if unit and float(unit[1]) > 0 else None
        return Meter(str(item["armSkuName"]), str(item["armRegionName"]),
                     str(item.get("productName", "")), str(item.get("meterName", "")),
                     str(item.get("skuName", "")), str(item.get("type", "")),
                     str(item.get("currencyCode", "")), per_hour,
                     item.get("isPrimaryMeterRegion") is True,
                     str(item.get("effectiveStartDate", "")))
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Page:
    meters: tuple[Meter, ...]
    next_link: str | None


def parse_page(body: bytes) -> Page:
    """One answer of the price list; BadAnswer when it is not the API's JSON."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise BadAnswer("the price list answered JSON nested too deeply to be its answer") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadAnswer(f"the price list answered something that is not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("Items"), list):
        raise BadAnswer("the price list answered JSON without an 'Items' list")
    link = data.get("NextPageLink")
    meters = (meter_from_item(i) for i in data["Items"] if isinstance(i, dict))
    return Page(tuple(m for m in meters if m is not None),
                link if isinstance(link, str) and link else None)


def choose_prices(meters: Iterable[Meter], key: PriceKey, source: str,
                  fetched_at: datetime) -> Prices | PriceUnknown:
    """The Linux pay-as-you-go and Spot prices of `key` among `meters` (pure)."""
    mine = [m for m in meters if m.arm_sku_name.lower() == key.vm_size.lower()
            and m.region.lower() == key.region and m.price_type == "Consumption"
            and m.per_hour is not None and math.isfinite(m.per_hour)
            and m.per_hour > 0]  # a 0 meter is a placeholder, not a price
    if not mine:
        return PriceUnknown(f"the price list has no {key.vm_size} in {key.region}: check "
                            "POOL_VM_SIZE and the region", Unknown.UNKNOWN_SIZE)
    insane = next((m for m in mine if not price_in_range(m.per_hour or 0.0)), None)
    if insane is not None:
        return PriceUnknown(f"{source}: the price list gave {insane.per_hour:g} {insane.currency[:3]} "
                            f"per hour for {key.vm_size} ({insane.meter_name[:60]!r}), outside "
                            f"{MIN_PRICE:g}-{MAX_PRICE:g}: refused", Unknown.BAD_ANSWER)
    foreign = sorted({m.currency for m in mine if m.currency.upper() != key.currency})
    if foreign:
        return PriceUnknown(f"the price list answered in {', '.join(foreign)}, not "
                            f"{key.currency}", Unknown.BAD_ANSWER)
    linux = [m for m in mine if not m.windows]
    dedicated = [m for m in linux if not m.spot and not m.low_priority]
    if not dedicated:
        return PriceUnknown(f"the price list has no Linux pay-as-you-go meter for "
                            f"{key.vm_size} in {key.region}", Unknown.NO_LINUX_METER)
    notes: list[str] = []
    dedicated_price = _pick(dedicated, "dedicated", notes)
    spot_price = _spot_price(linux, key, notes)
    return Prices(dedicated_price, spot_price, key.currency, source, fetched_at,
                  notes=tuple(notes))


def _spot_price(linux: list[Meter], key: PriceKey, notes: list[str]) -> float | None:
    spot = [m for m in linux if m.spot]
    if spot:
        return _pick(spot, "Spot", notes)
    low = [m for m in linux if m.low_priority]
    if low:
        notes.append("no Spot meter: using the Low Priority price (Spot's retired "
                     "predecessor) for Spot nodes")
        return _pick(low, "Low Priority", notes)
    notes.append(f"no Spot price for {key.vm_size} in {key.region}")
    return None


def _pick(meters: list[Meter], kind: str, notes: list[str]) -> float:
    """The primary-region meter with the latest start date; the highest if still several."""
    pool = [m for m in meters if m.primary] or meters
    latest = max(m.effective_start for m in pool)
    prices = sorted({m.per_hour for m in pool if m.effective_start == latest and m.per_hour})
    if len(prices) > 1:
        notes.append(f"several {kind} meters ({', '.join(map(str, prices))}): using the highest")
    return prices[-1]
