"""Price lookup against a local Retail Prices API server: meters, paging, faults, the cache."""
from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from common.billing.cost import PriceUnknown, Prices, Unknown
from common.billing.price_list import (BadAnswer, Meter, PriceKey, canonical_vm_size, choose_prices,
                               parse_page, query_url, region_from_batch_url, same_origin)
from common.billing.pricing import (CACHE_FORMAT, PRICES_URL_ENV, LookupOptions, cache_path, lookup,
                            prices_for_campaign)
from tests.support.price_server import PriceServer, vm_item

D2 = "Standard_D2s_v3"
WE = "westeurope"
BATCH_URL = "https://myaccount.westeurope.batch.azure.com"
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a developer's proxy must not answer
    made = PriceServer(page_size=2).start()
    yield made
    made.stop()
    assert not made.errors, made.errors


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def opts(server, tmp_path, clock) -> LookupOptions:
    return LookupOptions(base_url=server.url, cache_dir=tmp_path / "cache", now=clock,
                         timeout=3.0, environ={})


def skips(server: PriceServer) -> list[int]:
    return [r.skip for r in server.requests]


# ---------------------------------------------------------------------------- meters


def test_dedicated_and_spot_are_found_across_pages(server, opts):
    prices = lookup(D2, WE, "USD", opts)
    # Windows (0.20, 0.04), Low Priority (0.03) and the non-primary meter (0.50) are passed over.
    assert prices == Prices(0.10, 0.02, "USD", f"Azure retail prices, {WE}, {D2}, Linux",
                            fetched_at=T0)
    assert skips(server) == [0, 2, 4]  # dedicated on page 2, Spot on page 3
    assert server.requests[0].filter == {"serviceName": "Virtual Machines",
                                         "armRegionName": WE, "armSkuName": D2,
                                         "priceType": "Consumption"}
    assert server.requests[0].currency == "USD"


def test_a_size_spelt_as_batch_takes_it_is_asked_in_the_price_lists_spelling(server, opts):
    prices = lookup("STANDARD_D2S_V3", "WestEurope", "usd", opts)
    assert isinstance(prices, Prices) and prices.dedicated_per_hour == 0.10
    assert {r.filter["armSkuName"] for r in server.requests} == {D2}


def test_a_size_with_only_windows_meters_has_no_price(server, opts):
    result = lookup("Standard_F2s_v2", WE, "USD", opts)
    assert result.kind is Unknown.NO_LINUX_METER
    assert "no Linux pay-as-you-go meter for Standard_F2s_v2 in westeurope" in result.reason


def test_an_unknown_size_says_so_and_asks_again_in_the_users_spelling(server, opts):
    result = lookup("STANDARD_NOPE9_V9", WE, "USD", opts)
    assert result == PriceUnknown("the price list has no Standard_NOPE9_v9 in westeurope: "
                                  "check POOL_VM_SIZE and the region", Unknown.UNKNOWN_SIZE)
    assert [r.filter["armSkuName"] for r in server.requests] == ["Standard_NOPE9_v9",
                                                                 "STANDARD_NOPE9_V9"]


def test_a_size_in_another_region_is_unknown_there(server, opts):
    assert lookup("Standard_D4s_v3", "eastus", "USD", opts).kind is Unknown.UNKNOWN_SIZE


def test_a_size_without_spot_has_a_dedicated_price_and_a_note(server, opts):
    prices = lookup("Standard_B1s", WE, "USD", opts)
    assert (prices.dedicated_per_hour, prices.spot_per_hour) == (0.012, None)
    assert prices.notes == ("no Spot price for Standard_B1s in westeurope",)


def test_low_priority_stands_in_for_spot_only_when_there_is_no_spot_meter(server, opts):
    prices = lookup("Standard_A1_v2", WE, "USD", opts)
    assert (prices.dedicated_per_hour, prices.spot_per_hour) == (0.05, 0.01)
    assert "Low Priority" in prices.notes[0]


def test_prices_come_in_the_currency_asked_for(server, opts):
    prices = lookup(D2, WE, "EUR", opts)
    assert (prices.dedicated_per_hour, prices.spot_per_hour, prices.currency) == (0.09, 0.018,
                                                                                  "EUR")
    assert {r.currency for r in server.requests} == {"EUR"}


def test_a_currency_the_price_list_refuses_is_unknown(server, opts):
    result = lookup(D2, WE, "XYZ", opts)
    assert result.kind is Unknown.BAD_ANSWER and "HTTP 400" in result.reason


# ---------------------------------------------------------------------------- faults


def test_a_server_that_is_down_gives_unknown_not_an_exception(tmp_path, clock):
    server = PriceServer().start()
    url = server.url
    server.stop()
    result = lookup(D2, WE, "USD", LookupOptions(base_url=url, cache_dir=tmp_path, now=clock,
                                                 environ={}))
    assert result.kind is Unknown.OFFLINE
    assert result.reason.startswith("cannot reach the price list (127.0.0.1:")


def test_a_server_that_does_not_answer_in_time_gives_unknown(server, tmp_path, clock):
    server.hold = True  # answers only when the fixture stops it
    options = LookupOptions(base_url=server.url, cache_dir=tmp_path, now=clock, timeout=0.3,
                            environ={})
    result = lookup(D2, WE, "USD", options)
    assert result.kind is Unknown.TIMEOUT
    assert result.reason.endswith("did not answer within 0.3 s")
    assert len(server.requests) == 1  # it was asked, and the lookup did not wait for it


def test_a_fetch_that_hangs_outside_the_socket_is_still_given_up(tmp_path, clock):
    # e.g. name resolution on a half-connected network: no socket timeout applies to it.
    stuck = threading.Event()

    def hanging_fetch(url: str, timeout: float) -> bytes:
        stuck.wait(30)
        return b"{}"

    try:
        result = lookup(D2, WE, "USD", LookupOptions(
            base_url="https://prices.example", cache_dir=tmp_path, now=clock, timeout=0.2,
            fetch=hanging_fetch, environ={}))
    finally:
        stuck.set()
    assert result.kind is Unknown.TIMEOUT


def test_a_connection_closed_without_an_answer_gives_unknown(server, opts):
    server.close_without_answer = True
    assert lookup(D2, WE, "USD", opts).kind is Unknown.OFFLINE


@pytest.mark.parametrize("fail_after", [0, 1])
def test_an_http_error_on_any_page_gives_unknown_not_half_a_price(server, opts, fail_after):
    server.fail_status, server.fail_after = 503, fail_after
    result = lookup(D2, WE, "USD", opts)
    assert result == PriceUnknown(f"the price list (127.0.0.1:{server.server.server_address[1]})"
                                  " answered HTTP 503", Unknown.BAD_ANSWER)
    assert len(server.requests) == fail_after + 1


def test_an_answer_that_is_not_json_gives_unknown(server, opts):
    server.body = b"<html>captive portal</html>"
    result = lookup(D2, WE, "USD", opts)
    assert result.kind is Unknown.BAD_ANSWER and "not JSON" in result.reason


def test_paging_is_bounded(server, opts):
    server.endless = True
    result = lookup(D2, WE, "USD", replace(opts, max_pages=3))
    assert result.kind is Unknown.BAD_ANSWER and "more than 3 pages" in result.reason
    assert skips(server) == [0, 2, 4]


def test_a_next_page_elsewhere_is_not_followed(server, opts):
    server.next_link_base = "http://prices.example.invalid/api/retail/prices"
    result = lookup(D2, WE, "USD", opts)
    assert result.kind is Unknown.BAD_ANSWER and "prices.example.invalid" in result.reason
    assert len(server.requests) == 1


def test_nothing_is_asked_for_names_that_cannot_be_asked_for(server, opts):
    assert lookup("Standard_D2s_v3' or 1 eq 1", WE, "USD", opts).kind is Unknown.INVALID
    assert lookup(D2, "west europe", "USD", opts).kind is Unknown.INVALID
    assert lookup(D2, WE, "EURO", opts).kind is Unknown.INVALID
    assert server.requests == []


# ---------------------------------------------------------------------------- where to ask


def test_the_environment_variable_points_the_lookup_elsewhere(server, tmp_path, clock):
    options = LookupOptions(cache_dir=tmp_path, now=clock, environ={PRICES_URL_ENV: server.url})
    assert isinstance(lookup(D2, WE, "USD", options), Prices)
    assert len(server.requests) == 3


def test_the_parameter_wins_over_the_environment_variable(server, tmp_path, clock):
    options = LookupOptions(base_url=server.url, cache_dir=tmp_path, now=clock,
                            environ={PRICES_URL_ENV: "http://127.0.0.1:9/nothing-here"})
    assert isinstance(lookup(D2, WE, "USD", options), Prices)


def test_a_price_list_url_that_is_not_http_is_refused(tmp_path):
    result = lookup(D2, WE, "USD", LookupOptions(cache_dir=tmp_path,
                                                 environ={PRICES_URL_ENV: "file:///etc/passwd"}))
    assert result.kind is Unknown.INVALID and PRICES_URL_ENV in result.reason


def test_query_url_asks_as_the_api_documents():
    url = query_url("https://prices.azure.com/api/retail/prices", D2, WE, "EUR")
    assert url == ("https://prices.azure.com/api/retail/prices?currencyCode='EUR'&$filter="
                   "serviceName%20eq%20'Virtual%20Machines'%20and%20armRegionName%20eq%20"
                   "'westeurope'%20and%20armSkuName%20eq%20'Standard_D2s_v3'%20and%20"
                   "priceType%20eq%20'Consumption'")
    assert query_url("http://mirror/p?api-version=1", D2, WE, "USD").startswith(
        "http://mirror/p?api-version=1&currencyCode=")


def test_next_page_links_with_an_explicit_default_port_are_the_same_place():
    base = "https://prices.azure.com/api/retail/prices"
    assert same_origin("https://prices.azure.com:443/api/retail/prices?$skip=100", base)
    assert same_origin("https://PRICES.azure.com/api/retail/prices?$skip=100", base)
    assert not same_origin("http://prices.azure.com/api/retail/prices?$skip=100", base)
    assert not same_origin("https://prices.azure.com.evil.example/x", base)


# ---------------------------------------------------------------------------- cache


def test_a_cache_hit_makes_no_request(server, opts, tmp_path):
    first = lookup(D2, WE, "USD", opts)
    second = lookup(D2, WE, "USD", opts)
    assert len(server.requests) == 3
    assert second == Prices(first.dedicated_per_hour, first.spot_per_hour, "USD", first.source,
                            fetched_at=T0, cached=True)
    folder = tmp_path / "cache"
    assert [p.name for p in folder.iterdir()] == ["prices-westeurope-standard_d2s_v3-usd.json"]


def test_the_cache_file_says_what_it_is(server, opts, tmp_path):
    lookup("Standard_A1_v2", WE, "EUR", opts)
    entry = json.loads((tmp_path / "cache" / "prices-westeurope-standard_a1_v2-eur.json")
                       .read_text())
    assert entry == {"format": CACHE_FORMAT, "price_list": server.url, "vm_size": "Standard_A1_v2",
                     "region": WE, "currency": "EUR", "fetched_at": "2026-05-01T12:00:00+00:00",
                     "dedicated_per_hour": 0.045, "spot_per_hour": 0.009,
                     "source": "Azure retail prices, westeurope, Standard_A1_v2, Linux",
                     "notes": [entry["notes"][0]]}
    assert "Low Priority" in entry["notes"][0]


def test_the_cache_expires_after_a_day(server, opts, clock):
    lookup(D2, WE, "USD", opts)
    clock.now = T0 + timedelta(hours=23, minutes=59)
    assert lookup(D2, WE, "USD", opts).cached
    assert len(server.requests) == 3
    clock.now = T0 + timedelta(days=1)
    fresh = lookup(D2, WE, "USD", opts)
    assert not fresh.cached and fresh.fetched_at == T0 + timedelta(days=1)
    assert len(server.requests) == 6


def test_the_cache_is_keyed_on_size_region_and_currency(server, opts):
    for size, region, currency in [(D2, WE, "USD"), (D2, WE, "EUR"), (D2, "eastus", "USD"),
                                   ("Standard_D4s_v3", WE, "USD")]:
        assert not lookup(size, region, currency, opts).cached
    assert lookup("standard_d2s_v3", WE, "usd", opts).cached


def _entry(**changes: object) -> dict:
    good = {"format": CACHE_FORMAT, "price_list": "PRICE_LIST", "vm_size": D2, "region": WE,
            "currency": "USD", "fetched_at": T0.isoformat(), "dedicated_per_hour": 9.0,
            "spot_per_hour": 1.0, "source": "s", "notes": []}
    return {**good, **changes}


@pytest.mark.parametrize("content", [
    b"", b"{not json", b"\xff\xfe\x00", b"[]", b"null",
    json.dumps(_entry(format="someone-else/1")).encode(),
    json.dumps(_entry(price_list="https://elsewhere.example/prices")).encode(),
    json.dumps(_entry(vm_size="Standard_D4s_v3")).encode(),
    json.dumps(_entry(currency="EUR")).encode(),
    json.dumps(_entry(fetched_at="2026-05-01T12:00:00")).encode(),  # no time zone
    json.dumps(_entry(fetched_at=(T0 + timedelta(hours=1)).isoformat())).encode(),  # future
    json.dumps(_entry(fetched_at="yesterday")).encode(),
    json.dumps(_entry(dedicated_per_hour="9.0")).encode(),
    json.dumps(_entry(dedicated_per_hour=-1.0)).encode(),
    json.dumps(_entry(dedicated_per_hour=None, spot_per_hour=None)).encode(),
    json.dumps(_entry(notes="not a list")).encode(),
], ids=lambda c: c[:40].decode("latin-1"))
def test_a_corrupt_or_foreign_cache_file_is_ignored_and_replaced(server, opts, tmp_path, content):
    path = cache_path(tmp_path / "cache", PriceKey(D2, WE, "USD"))
    path.parent.mkdir(parents=True)
    path.write_bytes(content.replace(b"PRICE_LIST", server.url.encode()))
    prices = lookup(D2, WE, "USD", opts)
    assert (prices.dedicated_per_hour, prices.cached) == (0.10, False)
    assert json.loads(path.read_text())["dedicated_per_hour"] == 0.10


def test_the_good_entry_those_cases_start_from_is_a_hit(server, opts, tmp_path):
    # Without this, every case above could pass because no entry is ever read.
    path = cache_path(tmp_path / "cache", PriceKey(D2, WE, "USD"))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_entry(price_list=server.url)))
    assert lookup(D2, WE, "USD", opts).dedicated_per_hour == 9.0
    assert server.requests == []


def test_a_cache_that_cannot_be_written_is_not_fatal(server, tmp_path, clock):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    options = LookupOptions(base_url=server.url, cache_dir=blocker / "cache", now=clock,
                            environ={})
    assert lookup(D2, WE, "USD", options).dedicated_per_hour == 0.10


def test_without_the_cache_nothing_is_written(server, tmp_path, clock):
    options = LookupOptions(base_url=server.url, use_cache=False, now=clock,
                            environ={"XDG_CACHE_HOME": str(tmp_path)})
    lookup(D2, WE, "USD", options)
    lookup(D2, WE, "USD", options)
    assert len(server.requests) == 6 and list(tmp_path.iterdir()) == []


def test_the_default_cache_folder_follows_xdg_cache_home(server, tmp_path, clock):
    options = LookupOptions(base_url=server.url, now=clock,
                            environ={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    lookup(D2, WE, "USD", options)
    assert (tmp_path / "xdg" / "batch-campaigns" /
            "prices-westeurope-standard_d2s_v3-usd.json").is_file()


def test_unknown_prices_are_not_cached(server, opts, tmp_path):
    lookup("Standard_F2s_v2", WE, "USD", opts)
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------- region


@pytest.mark.parametrize("url, region, kind", [
    (BATCH_URL, WE, None),
    ("https://MyAccount.WestEurope.batch.azure.com/", WE, None),
    ("https://acct.westeurope.privatelink.batch.azure.com", WE, None),
    ("https://acct.usgovvirginia.batch.usgovcloudapi.net", "usgovvirginia", None),
    ("https://acct.chinanorth3.batch.chinacloudapi.cn", "chinanorth3",
     Unknown.NO_PUBLIC_PRICES),
    ("http://127.0.0.1:8123", None, Unknown.NO_REGION),
    ("https://acct.batch.azure.com", None, Unknown.NO_REGION),
    ("https://user:secret@batch.example.org", None, Unknown.NO_REGION),
    (None, None, Unknown.NO_REGION),
])
def test_region_from_batch_url(url, region, kind):
    found = region_from_batch_url(url)
    assert found.region == region
    assert (found.problem.kind if found.problem else None) is kind
    if found.problem:
        assert "secret" not in found.problem.reason
        assert "PRICE_PER_NODE_HOUR" in found.problem.reason


@pytest.mark.parametrize("given, canonical", [
    ("STANDARD_D2S_V3", "Standard_D2s_v3"),
    ("standard_nc24ads_a100_v4", "Standard_NC24ads_A100_v4"),
    ("Standard_M416-208s_v2", "Standard_M416-208s_v2"),
    ("standard_dc2ads_cc_v5", "Standard_DC2ads_cc_v5"),
    ("standard_ds2_v2", "Standard_DS2_v2"),
    ("Standard_NC6_Promo", "Standard_NC6_Promo"),
    ("standard_hb176rs_v4", "Standard_HB176rs_v4"),
    ("basic_a1", "Basic_A1"),
])
def test_canonical_vm_size(given, canonical):
    assert canonical_vm_size(given) == canonical


# ---------------------------------------------------------------------------- choice (pure)


def _meter(price: float, **changes) -> Meter:
    base = dict(arm_sku_name=D2, region=WE, product_name="Virtual Machines DSv3 Series",
                meter_name="D2s v3", sku_name="D2s v3", price_type="Consumption",
                currency="USD", per_hour=price, primary=True,
                effective_start="2024-01-01T00:00:00Z")
    return Meter(**{**base, **changes})


def _choose(*meters: Meter):
    return choose_prices(meters, PriceKey(D2, WE, "USD"), "test", T0)


def test_the_latest_primary_meter_wins_and_a_tie_takes_the_highest():
    newer = _meter(0.11, effective_start="2025-06-01T00:00:00Z")
    assert _choose(_meter(0.10), newer).dedicated_per_hour == 0.11
    tie = _choose(_meter(0.10), _meter(0.12), _meter(0.02, meter_name="D2s v3 Spot"))
    assert tie.dedicated_per_hour == 0.12
    assert tie.notes == ("several dedicated meters (0.1, 0.12): using the highest",)


def test_zero_priced_non_hourly_and_non_consumption_meters_are_not_prices():
    assert _choose(_meter(0.0), _meter(0.3, per_hour=None), _meter(9.0, price_type="Reservation"),
                   _meter(0.05, price_type="DevTestConsumption")).kind is Unknown.UNKNOWN_SIZE


def test_meters_in_another_currency_are_refused():
    result = _choose(_meter(0.1, currency="EUR"))
    assert result == PriceUnknown("the price list answered in EUR, not USD", Unknown.BAD_ANSWER)


def test_parse_page_keeps_well_formed_items_and_hourly_units():
    page = parse_page(json.dumps({"Items": [
        vm_item(D2, WE, "D2s v3", 1.0, unit="10 Hours"), {"armSkuName": D2},
        vm_item(D2, WE, "D2s v3", 1.0, unit="1 GB/Month"), "junk",
        {**vm_item(D2, WE, "D2s v3", 1.0), "retailPrice": "1.0"},
    ], "NextPageLink": None}).encode())
    assert [m.per_hour for m in page.meters] == [0.1, None]
    assert page.next_link is None


@pytest.mark.parametrize("body", [b'{"items": []}', b"[]", b'{"Items": {}}', b"\xff"])
def test_parse_page_refuses_what_is_not_the_apis_answer(body):
    with pytest.raises(BadAnswer):
        parse_page(body)


# ---------------------------------------------------------------------------- campaign


def _refuse(url: str, timeout: float) -> bytes:
    raise AssertionError(f"nothing should be asked: {url}")


def test_prices_from_the_configuration_win_and_nothing_is_asked(tmp_path):
    prices = prices_for_campaign("Standard_D2s_v3", BATCH_URL, "eur", dedicated=0.2, spot=0.05,
                                 options=LookupOptions(cache_dir=tmp_path, fetch=_refuse))
    assert prices == Prices(0.2, 0.05, "EUR", "configuration")


def test_a_missing_configured_price_is_looked_up(server, opts):
    prices = prices_for_campaign(D2, BATCH_URL, "USD", dedicated=0.5, options=opts)
    assert (prices.dedicated_per_hour, prices.spot_per_hour) == (0.5, 0.02)
    assert prices.source.startswith("configuration and Azure retail prices")


def test_a_configured_price_survives_a_failed_lookup_of_the_other(server, opts):
    server.fail_status = 500
    prices = prices_for_campaign(D2, BATCH_URL, "USD", spot=0.05, options=opts)
    assert (prices.dedicated_per_hour, prices.spot_per_hour) == (None, 0.05)
    assert prices.notes[0].startswith("dedicated price unknown: the price list")


def test_the_campaign_lookup_finds_the_region_in_the_batch_url(server, opts):
    assert prices_for_campaign(D2, BATCH_URL, "USD", options=opts).dedicated_per_hour == 0.10
    assert server.requests[0].filter["armRegionName"] == WE


@pytest.mark.parametrize("vm_size, url, kind", [
    (D2, "https://acct.chinanorth3.batch.chinacloudapi.cn", Unknown.NO_PUBLIC_PRICES),
    (D2, "http://127.0.0.1:8123", Unknown.NO_REGION),
    (None, BATCH_URL, Unknown.INVALID),
])
def test_the_campaign_lookup_says_why_it_cannot_ask(tmp_path, vm_size, url, kind):
    result = prices_for_campaign(vm_size, url, "USD",
                                 options=LookupOptions(cache_dir=tmp_path, fetch=_refuse))
    assert result.kind is kind

