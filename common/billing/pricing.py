"""VM prices per node-hour from the Azure Retail Prices API, cached on disk for a day.

Owns the effects around price_list.py: the HTTP GETs with their paging and time
limit, the one-day disk cache, and `prices_for_campaign`, where prices from the
configuration win. HTTP, the cache folder and the clock are injected (`LookupOptions`).
A lookup never raises: an offline machine gets a `PriceUnknown` with the reason within
`timeout` seconds, and the campaign goes on without a price.
"""
from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import stat
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from common.billing.cost import PriceUnknown, Prices, Unknown, price_in_range
from common.billing.price_list import (BadAnswer, Meter, PriceKey, choose_prices, parse_page, price_key,
                               query_url, region_from_batch_url, same_origin)
from common.cache import default_cache_dir

DEFAULT_PRICES_URL = "https://prices.azure.com/api/retail/prices"
PRICES_URL_ENV = "BATCH_TOOL_PRICES_URL"
CACHE_TTL = timedelta(days=1)
CACHE_FORMAT = "batch-campaigns/retail-price/1"
DEFAULT_TIMEOUT = 5.0  # seconds for the whole lookup, every page included
MAX_PAGES = 10  # one VM size in one region is a handful of meters: one page in practice
MAX_BODY = 4 * 1024 * 1024

Fetch = Callable[[str, float], bytes]  # (url, timeout seconds) -> body; raises OSError & co
T = TypeVar("T")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is followed only to the same scheme, host and port: a price list that
    sends the lookup to another host is not the price list asked."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        from common.billing.price_list import same_origin
        if not same_origin(newurl, req.full_url):
            raise BadAnswer(f"the price list ({_host(req.full_url)}) redirected the lookup to "
                            f"another host ({_host(newurl)}): not followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameHostRedirects())


def http_get(url: str, timeout: float) -> bytes:
    """GET `url` (environment proxies honoured, redirects within its host only); HTTPError
    for a status other than 2xx."""
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "batch-campaigns-pricing"})
    with _OPENER.open(request, timeout=timeout) as response:
        body = response.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise BadAnswer(f"the price list answered more than {MAX_BODY} bytes")
    return body


@dataclass(frozen=True)
class LookupOptions:
    """Where and how to ask. The defaults are the real API, the user's cache, the real clock."""

    base_url: str | None = None  # else $BATCH_TOOL_PRICES_URL, else DEFAULT_PRICES_URL
    cache_dir: Path | None = None  # else default_cache_dir()
    use_cache: bool = True
    timeout: float = DEFAULT_TIMEOUT
    max_pages: int = MAX_PAGES
    now: Callable[[], datetime] = _utc_now
    fetch: Fetch = http_get
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


def prices_url(options: LookupOptions) -> str | PriceUnknown:
    url = (options.base_url or options.environ.get(PRICES_URL_ENV) or DEFAULT_PRICES_URL).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return PriceUnknown(f"price list URL {url!r} (from {PRICES_URL_ENV} or the caller) "
                            "is not an http(s) URL", Unknown.INVALID)
    return url


# ---------------------------------------------------------------------------- cache


def cache_path(folder: Path, key: PriceKey) -> Path:
    return folder / f"prices-{key.region}-{key.vm_size.lower()}-{key.currency.lower()}.json"


def cache_entry(key: PriceKey, price_list: str, prices: Prices) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "price_list": price_list, "vm_size": key.vm_size,
            "region": key.region, "currency": key.currency,
            "fetched_at": (prices.fetched_at or _utc_now()).isoformat(),
            "dedicated_per_hour": prices.dedicated_per_hour,
            "spot_per_hour": prices.spot_per_hour, "source": prices.source,
            "notes": list(prices.notes)}


class CacheRefused(ValueError):
    """A cache entry that is well-formed but holds a price no VM has (a hostile file)."""


def prices_from_entry(entry: Any, key: PriceKey, price_list: str,
                      now: datetime) -> Prices | None:
    """A fresh cache entry for exactly this key and price list, else None; CacheRefused for
    one whose prices are outside the sane range."""
    try:
        same = (entry["format"] == CACHE_FORMAT and entry["price_list"] == price_list
                and entry["vm_size"].lower() == key.vm_size.lower()
                and entry["region"] == key.region and entry["currency"] == key.currency)
        fetched = datetime.fromisoformat(entry["fetched_at"])
        age = now - fetched  # TypeError for a naive time: foreign, ignored
        if not same or not timedelta(0) <= age < CACHE_TTL:
            return None
        notes = entry["notes"]
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            return None
        dedicated, spot = _price(entry["dedicated_per_hour"]), _price(entry["spot_per_hour"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None
    for price in (dedicated, spot):
        if price is not None and not price_in_range(price):
            raise CacheRefused(f"{price:g} {key.currency} per node-hour")
    try:
        return Prices(dedicated, spot, key.currency, str(entry["source"])[:200], fetched,
                      cached=True, notes=tuple(n[:300] for n in notes))
    except ValueError:  # no price at all
        return None


def _price(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a price is a number")
    return float(value)


def read_cache(path: Path, key: PriceKey, price_list: str, now: datetime) -> Prices | None:
    """The cached prices, or None (missing, unreadable, corrupt, stale: ask the price list
    instead). Never waits on a FIFO; CacheRefused for prices no VM has."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None  # a FIFO, a device: not a cache file
            raw = handle.read(64 * 1024)
        entry = json.loads(raw)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return prices_from_entry(entry, key, price_list, now)


def write_cache(path: Path, entry: Mapping[str, Any]) -> None:
    """Atomic (temporary file + rename): a reader sees the old entry or the new one."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entry, handle, indent=2)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # a cache that cannot be written only costs the next run one request
    finally:
        if tmp is not None:
            _remove_quietly(tmp)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------- lookup


def lookup(vm_size: str, region: str, currency: str = "USD",
           options: LookupOptions = LookupOptions()) -> Prices | PriceUnknown:
    """Prices of `vm_size` in `region` from the cache or the price list; never raises."""
    key = price_key(vm_size, region, currency)
    if isinstance(key, PriceUnknown):
        return key
    base = prices_url(options)
    if isinstance(base, PriceUnknown):
        return base
    path = _cache_file(key, options)
    refused = None
    try:
        cached = read_cache(path, key, base, options.now()) if path is not None else None
    except CacheRefused as why:
        cached, refused = None, f"the price cache {path} held {why}, outside any VM's price: refused"
    if cached is not None:
        return cached
    result = _ask(key, vm_size.strip(), base, options)
    if path is not None and isinstance(result, Prices):
        write_cache(path, cache_entry(key, base, result))
    if refused and isinstance(result, Prices):
        return replace(result, notes=result.notes + (refused,))
    if refused:
        return PriceUnknown(f"{result.reason}; {refused}", result.kind)
    return result


def _cache_file(key: PriceKey, options: LookupOptions) -> Path | None:
    if not options.use_cache:
        return None
    folder = options.cache_dir or default_cache_dir(options.environ)
    return cache_path(folder, key) if folder is not None else None


def _ask(key: PriceKey, as_given: str, base: str, options: LookupOptions) -> Prices | PriceUnknown:
    def work() -> Prices | PriceUnknown:
        result = _ask_once(key, key.vm_size, base, options)
        if (isinstance(result, PriceUnknown) and result.kind is Unknown.UNKNOWN_SIZE
                and as_given != key.vm_size):
            # Our spelling may be wrong for an unusual size; the user's may be right.
            result = _ask_once(key, as_given, base, options)
        return result
    try:
        return _within(options.timeout, work)
    except (TimeoutError, _Timeout):
        return PriceUnknown(f"the price list ({_host(base)}) did not answer within "
                            f"{options.timeout:g} s", Unknown.TIMEOUT)
    except urllib.error.HTTPError as exc:
        return PriceUnknown(f"the price list ({_host(base)}) answered HTTP {exc.code}",
                            Unknown.BAD_ANSWER)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return PriceUnknown(f"the price list ({_host(base)}) did not answer within "
                                f"{options.timeout:g} s", Unknown.TIMEOUT)
        if isinstance(exc.reason, BadAnswer):  # a redirect elsewhere, from the opener
            return PriceUnknown(str(exc.reason), Unknown.BAD_ANSWER)
        return PriceUnknown(f"cannot reach the price list ({_host(base)}): "
                            f"{_why(exc.reason)} (offline?)", Unknown.OFFLINE)
    except (OSError, http.client.HTTPException) as exc:
        return PriceUnknown(f"cannot reach the price list ({_host(base)}): "
                            f"{_why(exc)} (offline?)", Unknown.OFFLINE)
    except BadAnswer as exc:
        return PriceUnknown(str(exc), Unknown.BAD_ANSWER)
    except ValueError as exc:  # urllib's InvalidURL and kin: the URL cannot be asked
        return PriceUnknown(f"cannot ask the price list at {base}: {exc}", Unknown.INVALID)


def _ask_once(key: PriceKey, spelling: str, base: str,
              options: LookupOptions) -> Prices | PriceUnknown:
    url = query_url(base, spelling, key.region, key.currency)
    meters: list[Meter] = []
    for _ in range(options.max_pages):
        page = parse_page(options.fetch(url, options.timeout))
        meters.extend(page.meters)
        if page.next_link is None:
            source = f"Azure retail prices, {key.region}, {key.vm_size}, Linux"
            return choose_prices(meters, key, source, options.now())
        if not same_origin(page.next_link, base):  # never follow an answer elsewhere
            raise BadAnswer("the price list's next page points elsewhere "
                            f"({urlsplit(page.next_link).netloc})")
        url = page.next_link
    raise BadAnswer(f"the price list had more than {options.max_pages} pages for one VM size")


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _why(reason: object) -> str:
    """A network failure in words ('the host name does not resolve'), not '[Errno -2] ...'."""
    if isinstance(reason, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(reason, ConnectionRefusedError) or getattr(reason, "errno", None) == errno.ECONNREFUSED:
        return "nothing answers on that address and port"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.rstrip(".")
    return str(reason) or type(reason).__name__


class _Timeout(Exception):
    pass


def _within(seconds: float, work: Callable[[], T]) -> T:
    """`work()` in a daemon thread, given up after `seconds`.

    A socket timeout bounds each read, not name resolution on a half-connected network
    nor a server that trickles bytes; the user should not wait on either for a price.
    """
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, work()))
        except BaseException as exc:  # handed to the caller's thread below
            box.append((False, exc))

    thread = threading.Thread(target=run, name="price-lookup", daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        raise _Timeout()
    ok, value = box[0]
    if ok:
        return value
    raise value


# ---------------------------------------------------------------------------- campaign


def prices_for_campaign(vm_size: str | None, batch_account_url: str | None, currency: str,
                        *, dedicated: float | None = None, spot: float | None = None,
                        options: LookupOptions = LookupOptions()) -> Prices | PriceUnknown:
    """Prices given in the configuration win; a missing one comes from the price list.

    With both given, nothing is asked. With one given, the other is looked up, and if
    that fails the given one is still used (a note says the other is unknown).
    """
    if dedicated is not None and spot is not None:
        return Prices(dedicated, spot, currency.upper(), "configuration")
    looked_up = _lookup_for_account(vm_size, batch_account_url, currency, options)
    if dedicated is None and spot is None:
        return looked_up
    return _combine(dedicated, spot, currency.upper(), looked_up)


def _lookup_for_account(vm_size: str | None, url: str | None, currency: str,
                        options: LookupOptions) -> Prices | PriceUnknown:
    if not vm_size:
        return PriceUnknown("no VM size (POOL_VM_SIZE) to look up", Unknown.INVALID)
    where = region_from_batch_url(url)
    if where.problem is not None or where.region is None:
        return where.problem or PriceUnknown("no region", Unknown.NO_REGION)
    return lookup(vm_size, where.region, currency, options)


def _combine(dedicated: float | None, spot: float | None, currency: str,
             looked_up: Prices | PriceUnknown) -> Prices:
    if isinstance(looked_up, PriceUnknown):
        missing = "Spot" if spot is None else "dedicated"
        return Prices(dedicated, spot, currency, "configuration",
                      notes=(f"{missing} price unknown: {looked_up.reason}",))
    return replace(
        looked_up,
        dedicated_per_hour=dedicated if dedicated is not None else looked_up.dedicated_per_hour,
        spot_per_hour=spot if spot is not None else looked_up.spot_per_hour,
        source=f"configuration and {looked_up.source}")
