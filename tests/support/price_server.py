"""A local stand-in for the Azure Retail Prices API (GET /api/retail/prices), for the tests.

It answers as the real service does: `$filter` with `<field> eq '<value>'` clauses joined
by `and` (values case-sensitive, as in the API's current versions; the filter field
`priceType` selects the items' `type`), `currencyCode='EUR'` converting prices, and pages
of `page_size` items whose `NextPageLink` points back at this server with `$skip`.

Knobs inject what a real network does: `fail_status` (with `fail_after` good answers
first), `hold` (answer nothing until the server stops), `close_without_answer`, `endless`
(a next page for ever), `next_link_base` (a next page somewhere else), `body` (answer
these bytes), `redirect_to` (answer 302 to this URL). Every request is logged in `requests`; handler crashes in `errors`.
The prices in `sample_items()` are invented round numbers, not Azure's.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlsplit

PATH = "/api/retail/prices"
ITEM_FIELD = {"priceType": "type"}  # filter name -> item field where they differ
FILTERABLE = {"armRegionName", "armSkuName", "priceType", "serviceName", "location",
              "meterId", "meterName", "productName", "skuName", "serviceFamily", "productId"}


def vm_item(arm_sku: str, region: str, meter_name: str, price: float, *,
            product: str = "Virtual Machines DSv3 Series", price_type: str = "Consumption",
            primary: bool = True, unit: str = "1 Hour",
            start: str = "2024-01-01T00:00:00Z") -> dict[str, Any]:
    """One item shaped as the API writes it (prices in USD)."""
    return {
        "currencyCode": "USD", "tierMinimumUnits": 0.0, "retailPrice": price,
        "unitPrice": price, "armRegionName": region, "location": region.upper(),
        "effectiveStartDate": start, "meterId": f"meter-{arm_sku}-{meter_name}-{price}",
        "meterName": meter_name, "productId": "DZH318Z0BQ4L", "skuId": "DZH318Z0BQ4L/00TG",
        "productName": product, "skuName": meter_name, "serviceName": "Virtual Machines",
        "serviceId": "DZH313Z7MMC8", "serviceFamily": "Compute", "unitOfMeasure": unit,
        "type": price_type, "isPrimaryMeterRegion": primary, "armSkuName": arm_sku,
    }


def sample_items() -> list[dict[str, Any]]:
    """A small catalogue. For Standard_D2s_v3 in westeurope, in this order, with
    page_size=2: [Windows, Low Priority] [Linux 0.10, Windows Spot] [non-primary, Spot 0.02]."""
    d2, we, win = "Standard_D2s_v3", "westeurope", "Virtual Machines DSv3 Series Windows"
    return [
        vm_item(d2, we, "D2s v3", 0.20, product=win),
        vm_item(d2, we, "D2s v3 Low Priority", 0.03),
        vm_item(d2, we, "D2s v3", 0.07, price_type="DevTestConsumption"),
        vm_item(d2, we, "D2s v3", 0.10),
        vm_item(d2, we, "D2s v3 Spot", 0.04, product=win),
        vm_item(d2, we, "D2s v3", 500.0, price_type="Reservation", unit="1 Hour"),
        vm_item(d2, we, "D2s v3", 0.50, primary=False),
        vm_item(d2, we, "D2s v3 Spot", 0.02),
        vm_item(d2, "eastus", "D2s v3", 0.09),
        vm_item(d2, "eastus", "D2s v3 Spot", 0.018),
        vm_item("Standard_D4s_v3", we, "D4s v3", 0.20),
        vm_item("Standard_D4s_v3", we, "D4s v3 Spot", 0.04),
        # B-series has no Spot at all; A1 v2 only its retired Low Priority meter.
        vm_item("Standard_B1s", we, "B1s", 0.012, product="Virtual Machines BS Series"),
        vm_item("Standard_A1_v2", we, "A1 v2", 0.05, product="Virtual Machines Av2 Series"),
        vm_item("Standard_A1_v2", we, "A1 v2 Low Priority", 0.01,
                product="Virtual Machines Av2 Series"),
        vm_item("Standard_F2s_v2", we, "F2s v2", 0.15,
                product="Virtual Machines FSv2 Series Windows"),
    ]


@dataclass(frozen=True)
class SeenRequest:
    path: str
    filter: dict[str, str]
    currency: str
    skip: int


_CLAUSE = re.compile(r"\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*")
_AND = re.compile(r"and\s+", re.IGNORECASE)


def parse_filter(text: str) -> dict[str, str]:
    """"a eq 'x' and b eq 'y'" -> {"a": "x", "b": "y"}; ValueError for anything else."""
    clauses: dict[str, str] = {}
    pos = 0
    while True:
        clause = _CLAUSE.match(text, pos)
        if not clause or clause[1] not in FILTERABLE:
            raise ValueError(f"cannot parse the filter at {text[pos:]!r}")
        clauses[clause[1]] = clause[2].replace("''", "'")
        pos = clause.end()
        if pos == len(text):
            return clauses
        joiner = _AND.match(text, pos)
        if not joiner:
            raise ValueError(f"expected 'and' at {text[pos:]!r}")
        pos = joiner.end()


class PriceServer:
    def __init__(self, items: Iterable[dict[str, Any]] | None = None, *, page_size: int = 100,
                 rates: dict[str, float] | None = None) -> None:
        self.items = list(sample_items() if items is None else items)
        self.page_size = page_size
        self.rates = rates or {"USD": 1.0, "EUR": 0.9}
        self.fail_status: int | None = None
        self.fail_after = 0
        self.hold = False
        self.close_without_answer = False
        self.endless = False
        self.next_link_base: str | None = None
        self.body: bytes | None = None
        self.redirect_to: str | None = None
        self.requests: list[SeenRequest] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        # A short poll so stop() returns at once (the default 0.5 s adds up over many tests).
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{PATH}"

    def start(self) -> "PriceServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()  # held requests answer, so no client waits on us
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "PriceServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ answers

    def answer(self, raw_query: str) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for one GET: the API's behaviour without the knobs."""
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        currency = query.get("currencyCode", "'USD'").strip("'")
        try:
            clauses = parse_filter(query.get("$filter", "")) if query.get("$filter") else {}
            skip = int(query.get("$skip", "0"))
        except ValueError as exc:
            return 400, {"Error": {"Code": "BadRequest", "Message": str(exc)}}
        self._log(SeenRequest(PATH, clauses, currency, skip))
        if currency not in self.rates:
            return 400, {"Error": {"Code": "BadRequest",
                                   "Message": f"Invalid currency code {currency}"}}
        matched = [i for i in self.items if _matches(i, clauses)]
        page = [_in_currency(i, currency, self.rates[currency])
                for i in matched[skip:skip + self.page_size]]
        more = self.endless or skip + self.page_size < len(matched)
        return 200, {"BillingCurrency": currency, "CustomerEntityId": "Default",
                     "CustomerEntityType": "Retail", "Items": page,
                     "NextPageLink": self._next_link(raw_query, skip) if more else None,
                     "Count": len(page)}

    def _next_link(self, raw_query: str, skip: int) -> str:
        kept = "&".join(p for p in raw_query.split("&") if not p.startswith(("$skip=", "%24skip=")))
        return f"{self.next_link_base or self.url}?{kept}&$skip={skip + self.page_size}"

    def _log(self, seen: SeenRequest) -> None:
        with self._lock:
            self.requests.append(seen)

    def _should_fail(self) -> bool:
        with self._lock:
            return self.fail_status is not None and len(self.requests) > self.fail_after

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    self._get()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer
                except Exception as exc:  # a crash here would look like a network fault
                    server.errors.append(f"{type(exc).__name__}: {exc}")
                    raise

            def _get(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != PATH:
                    return self._send(404, {"Error": {"Code": "NotFound", "Message": parts.path}})
                status, body = server.answer(parts.query)
                if server.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.hold:
                    server._released.wait()
                if server.close_without_answer:
                    self.close_connection = True
                    return
                if server._should_fail():
                    status, body = server.fail_status or 500, {"Error": {"Code": "Injected"}}
                self._send(status, body)

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = server.body if server.body is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _matches(item: dict[str, Any], clauses: dict[str, str]) -> bool:
    return all(str(item.get(ITEM_FIELD.get(k, k))) == v for k, v in clauses.items())


def _in_currency(item: dict[str, Any], currency: str, rate: float) -> dict[str, Any]:
    return {**item, "currencyCode": currency, "retailPrice": round(item["retailPrice"] * rate, 6),
            "unitPrice": round(item["unitPrice"] * rate, 6)}

