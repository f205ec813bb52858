"""The example apps, driven through their frameworks' test clients on real backends."""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

import kuya_store as ks
from kuya_store.testing.servers import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CARD = "2023 Topps Chrome Victor Wembanyama #1"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"kuya_examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Client(Protocol):
    def get(self, url: str, **kwargs: Any) -> Any: ...


def _json(response: Any) -> Any:
    return (
        response.json()
        if hasattr(response, "json") and callable(response.json)
        else response.get_json()
    )


@pytest.fixture(params=["fastapi", "flask"])
def make_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    opened: list[Any] = []

    def make(**store_kwargs: Any) -> Client:
        if request.param == "fastapi":
            app = _load("fastapi_app").create_app(**store_kwargs)
            client = TestClient(app)
            client.__enter__()
            opened.append(lambda: client.__exit__(None, None, None))
            return client
        module = _load("flask_app")
        app = module.create_app(**store_kwargs)
        opened.append(lambda: module.KuyaStore.close(app))
        return app.test_client()

    yield make
    for close in opened:
        close()


def _body(response: Any) -> str:
    return (
        response.text
        if hasattr(response, "text") and isinstance(response.text, str)
        else response.get_data(as_text=True)
    )


def test_endpoints_end_to_end(
    make_client: Any, database_url: str, redis_base_url: str, key_prefix: str
) -> None:
    client = make_client(database_url=database_url, redis_url=redis_base_url, key_prefix=key_prefix)

    first = (
        client.get("/comps", params={"query": CARD})
        if hasattr(client, "base_url")
        else client.get("/comps", query_string={"query": CARD})
    )
    assert first.status_code == 200, _body(first)
    data = _json(first)
    assert data["source"] == "api" and data["listings"] and data["snapshot"]["market_value"]
    assert isinstance(data["listings"][0]["price"], str)  # money travels as exact text

    def get(url: str, **query: Any) -> Any:
        if hasattr(client, "base_url"):
            return client.get(url, params=query)
        return client.get(url, query_string=query)

    again = get("/comps", query=CARD.lower(), raw_only="true")
    assert _json(again)["source"] in ("memory", "redis") and _json(again)["cache_hit"]
    assert len(_json(again)["listings"]) <= len(data["listings"])
    assert _json(get("/active", query=CARD))["search_type"] == "active"

    bad = get("/comps", query="  ")
    assert bad.status_code == 422
    assert _json(bad)["field"] == "query"

    card = quote(CARD, safe="")  # "#1" would otherwise start a URL fragment
    analytics = get(f"/analytics/{card}")
    assert analytics.status_code == 200
    payload = _json(analytics)
    assert len(payload["history"]) == 1 and payload["chart"]
    assert payload["chart"] == f"/analytics/{card}/chart.svg"
    svg = get(payload["chart"])
    assert svg.headers["content-type"].startswith("image/svg+xml")
    ET.fromstring(_body(svg))
    empty = ET.fromstring(_body(get("/analytics/no such card/chart.svg")))
    assert any(
        t.text == "No price data yet" for t in empty.iter("{http://www.w3.org/2000/svg}text")
    )

    assert _json(get("/health/live")) == {"status": "alive"}
    ready = get("/health/ready")
    assert ready.status_code == 200
    assert _json(ready) == {"status": "healthy", "redis": True, "database": True}

    metrics = _body(get("/metrics"))
    assert "kuya_store_searches_total" in metrics and 'kuya_store_tier_hits_total{tier="' in metrics
    assert "kuya_store_api_calls_saved_total" in metrics
    assert "kuya_store_database_size_bytes" in metrics

    dashboard = _body(get("/admin"))
    assert "Top searches" in dashboard and "API calls saved" in dashboard
    assert (
        "2023 Topps Chrome Victor Wembanyama #1" in dashboard or "wembanyama" in dashboard.lower()
    )
    assert 'id="card-search"' in dashboard

    found = _json(get("/cards/search", q="wembanyma chrome"))  # a typo
    assert found[0]["card_identifier"] == ks.normalize_card(CARD)
    assert found[0]["searches"] >= 1 and found[0]["market_value"] is not None
    searched = _body(get("/admin", q="wemby chrome"))
    assert f'data-card="{ks.normalize_card(CARD)}"' in searched.split('id="card-matches"')[1]
    assert "No card matches." in _body(get("/admin", q="zzzqqq"))


def test_ready_is_503_only_when_nothing_can_answer(
    make_client: Any, sqlite_url: str, postgres_base_url: str
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    dead_db = f"postgresql+asyncpg://kuya:pw@127.0.0.1:{free_port()}/gone"

    def status(client: Any) -> tuple[int, Any]:
        response = client.get("/health/ready")
        return response.status_code, _json(response)

    degraded = make_client(database_url=sqlite_url, redis_url=dead_redis)
    assert status(degraded) == (200, {"status": "degraded", "redis": False, "database": True})
    # The fetcher still answers every search (at a cost): degraded, not out of rotation.
    fetching = make_client(database_url=dead_db, redis_url=dead_redis, create_schema=False)
    assert status(fetching) == (200, {"status": "degraded", "redis": False, "database": False})
    down = make_client(database_url=dead_db, redis_url=dead_redis, create_schema=False, fetchers={})
    assert status(down) == (503, {"status": "unhealthy", "redis": False, "database": False})
    live = down.get("/health/live")
    assert live.status_code == 200


def test_the_sold_listings_fetcher_reads_the_sale_date_text() -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    api = _load("sold_listings_api")
    now = datetime(2025, 11, 27, 12, 0, tzinfo=UTC)
    page = [
        {
            "title": "2023 Topps Chrome Wembanyama #1 RC PSA 10",
            "price": {"raw": "$1,190.00", "extracted": 1190.0},
            "link": "https://www.ebay.com/itm/2023-topps/256789012345",
            "buying_format": "Buy It Now",
            "sold_date": "Sold  Nov 24, 2025",
        },
        {
            "title": "2023 Topps Chrome Wembanyama #1 RC",
            "price": "$120.50",
            "item_id": "111",
            "buying_format": "Auction",
            "bids": 12,
            "sold_date": "Sold 3d ago",
        },
        {"title": "no price", "item_id": "112", "price": "$10.00 to $20.00"},
        {"title": "odd date", "item_id": "113", "price": "$5", "sold_date": "last spring"},
        {"title": "repeated", "item_id": "111", "price": "$1"},
    ]
    listings = api.listings_from_page(page, now=now)
    assert [listing.item_id for listing in listings] == ["256789012345", "111", "113"]
    slab, auction, odd = listings
    assert slab.price == Decimal("1190.00") and slab.listing_type == "buy_it_now"
    assert slab.sold_date == datetime(2025, 11, 24, tzinfo=UTC)
    assert auction.listing_type == "auction" and auction.bids == 12
    assert auction.sold_date == datetime(2025, 11, 24, 12, 0, tzinfo=UTC)
    assert odd.sold_date is None and all(listing.sold for listing in listings)


def test_the_collection_route(make_client: Any, sqlite_url: str) -> None:
    from kuya_store.demo import FakeMarketplace

    market = FakeMarketplace()
    with ks.SyncCompsStore(
        database_url=sqlite_url, fetchers={"sold": market.sold, "active": market.active}
    ) as store:
        store.create_schema()
        ana = store.accounts.create_user("ana@example.com", "correct horse battery staple")
        binder = store.collections.create_binder(ana.id, "Rookies")
        store.collections.add_card(ana.id, binder.id, CARD, purchase_price="1.00")
        assert store.collections.revalue(budget=1).valued == 1
    client = make_client(database_url=sqlite_url)
    response = client.get(f"/users/{ana.id}/collection")
    assert response.status_code == 200, _body(response)
    data = _json(response)
    [card] = data["cards"]
    assert card["query"] == CARD and card["last_value"] and card["gain"]
    assert data["summary"]["cards"] == 1 and data["summary"]["cost_basis"] == "1.00"
    assert len(data["history"]) == 1 and data["history"][0]["value"] == card["last_value"]
    assert _json(client.get(f"/users/{ana.id + 1}/collection"))["cards"] == []


def test_listing_links_come_back_after_a_restart_or_are_rebuilt(
    make_client: Any, sqlite_url: str, redis_base_url: str, key_prefix: str, tmp_path: Path
) -> None:
    import redis

    def comps(client: Any) -> Any:
        if hasattr(client, "base_url"):
            response = client.get("/comps", params={"query": CARD})
        else:
            response = client.get("/comps", query_string={"query": CARD})
        assert response.status_code == 200, _body(response)
        return _json(response)

    def flushed(client: Any) -> None:  # the analytics route waits for the write buffer
        assert client.get(f"/analytics/{quote(CARD, safe='')}").status_code == 200

    first = comps(before := make_client(database_url=sqlite_url))
    assert first["source"] == "api" and first["display_complete"] is True
    links = {x["item_id"]: x["extra"]["link"] for x in first["listings"]}
    assert all(link.startswith("https://marketplace.example/itm/") for link in links.values())
    flushed(before)

    # A restart without Redis: display data is gone, every link is rebuilt from item_id.
    after = comps(make_client(database_url=sqlite_url))
    assert after["source"] == "database" and after["display_complete"] is False
    assert [x["item_id"] for x in after["listings"]] == list(links)
    for listing in after["listings"]:
        assert listing["extra"] == {"link": f"https://www.ebay.com/itm/{listing['item_id']}"}

    # With Redis, a restarted app shows the listings' own links again.
    elsewhere = f"sqlite+aiosqlite:///{tmp_path / 'with-redis.db'}"
    options = {"database_url": elsewhere, "redis_url": redis_base_url, "key_prefix": key_prefix}
    fetched = comps(with_redis := make_client(**options))
    assert fetched["source"] == "api"
    flushed(with_redis)
    client = redis.Redis.from_url(redis_base_url)
    try:
        results = list(client.scan_iter(f"{key_prefix}:v1:[rt]:*"))
        assert results and client.delete(*results)  # the result left the hot tier
    finally:
        client.close()
    again = comps(make_client(**options))
    assert again["source"] == "database" and again["display_complete"] is True
    assert again["listings"] == fetched["listings"]
    assert all("marketplace.example" in x["extra"]["link"] for x in again["listings"])
