"""Only failures a retry can fix are retried; every fetcher output is validated alike."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

import kuya_store as ks
from kuya_store.retries import http_status, is_transient_fetch_error

QUERY = "2023 Topps Chrome Victor Wembanyama #1"


# -- the classification, without servers ---------------------------------------------------


def _httpx_status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://api.example.com/search")
    response = httpx.Response(code, request=request)
    return httpx.HTTPStatusError(f"{code}", request=request, response=response)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ks.TransientFetchError("try later"), True),
        (ks.PermanentFetchError("bad key"), False),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (_httpx_status(429), True),
        (_httpx_status(408), True),
        (_httpx_status(500), True),
        (_httpx_status(503), True),
        (_httpx_status(400), False),
        (_httpx_status(401), False),
        (_httpx_status(403), False),
        (_httpx_status(404), False),
        (httpx.ConnectTimeout("slow"), True),
        (httpx.ReadError("reset"), True),
        (urllib.error.HTTPError("https://x", 404, "Not Found", {}, None), False),  # type: ignore[arg-type]
        (urllib.error.HTTPError("https://x", 502, "Bad Gateway", {}, None), True),  # type: ignore[arg-type]
        (ks.InvalidInputError("fetcher.listings[0].price", "is not a number"), False),
        (KeyError("api_key"), False),
        (ValueError("could not parse"), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_what_is_worth_another_paid_call(exc: BaseException, transient: bool) -> None:
    assert is_transient_fetch_error(exc) is transient


def test_status_from_every_client() -> None:
    assert http_status(_httpx_status(418)) == 418
    assert http_status(ks.PermanentFetchError("x", status=401)) == 401
    assert http_status(RuntimeError("no status")) is None


# -- a real HTTP upstream ------------------------------------------------------------------


class _Upstream(BaseHTTPRequestHandler):
    plan: ClassVar[list[int]] = []
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        code = type(self).plan.pop(0) if type(self).plan else 200
        body = b'{"items": [{"id": "A1", "title": "Wembanyama #1 PSA 10", "price": 189.99}]}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Upstream.plan = []
    _Upstream.hits = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/search"
    server.shutdown()
    server.server_close()


def _httpx_fetcher(url: str) -> ks.Fetcher:
    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        async with httpx.AsyncClient() as client:
            response = await client.get(url, params={"q": request.query})
            response.raise_for_status()  # the store reads the status off the error
            items = response.json()["items"]
        return ks.FetchResult(
            listings=[
                {"item_id": i["id"], "title": i["title"], "price": i["price"], "sold": True}
                for i in items
            ]
        )

    return fetch


@pytest.mark.parametrize(
    ("plan", "hits", "succeeds"),
    [
        ([403], 1, False),  # a missing or bad API key: paid once
        ([404], 1, False),
        ([429, 200], 2, True),  # rate limited: retried with backoff
        ([503, 502, 200], 3, True),
        ([500, 500, 500], 3, False),
    ],
)
async def test_real_http_upstream(
    migrated_url: str, upstream: str, plan: list[int], hits: int, succeeds: bool
) -> None:
    _Upstream.plan = list(plan)
    async with ks.CompsStore(
        database_url=migrated_url,
        fetchers={"sold": _httpx_fetcher(upstream)},
        fetch_backoff=0.001,
        fetch_attempts=3,
    ) as store:
        if succeeds:
            result = await store.comps.search(QUERY)
            assert result.listings[0].price == Decimal("189.99")
        else:
            with pytest.raises(ks.FetcherError) as caught:
                await store.comps.search(QUERY)
            assert isinstance(caught.value.__cause__, httpx.HTTPStatusError)
        assert _Upstream.hits == hits
        assert store.metrics()["api_calls"] == hits


async def test_permanent_failure_is_paid_once_by_200_concurrent_searches(
    migrated_url: str,
) -> None:
    calls = 0

    async def no_key(request: ks.FetchRequest) -> ks.FetchResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(1.0)  # every search arrives while the one call is under way
        raise ks.PermanentFetchError("missing API key", status=401)

    # No stored tier to look in first, so every search reaches the one flight at once.
    async with ks.CompsStore(
        database_url=migrated_url, mode="cache_only", fetchers={"sold": no_key}
    ) as store:
        outcomes = await asyncio.gather(
            *(store.comps.search(QUERY) for _ in range(200)), return_exceptions=True
        )
    assert calls == 1
    assert all(isinstance(o, ks.FetcherError) for o in outcomes)


# -- prices alike however they arrive ------------------------------------------------------


def _float_listing(kind: str) -> Any:
    fields = {"item_id": "F1", "title": "Ohtani 2018 Topps Update RC", "sold": True}
    if kind == "model":
        return ks.Listing(price=6.240000000000001, **fields)
    if kind == "dict":
        return {"price": 6.240000000000001, **fields}
    return ks.Listing.model_construct(price=6.240000000000001, **fields)


@pytest.mark.parametrize("kind", ["model", "dict", "constructed"])
async def test_float_price_gives_one_outcome(migrated_url: str, kind: str) -> None:
    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        return ks.FetchResult.model_construct(listings=[_float_listing(kind)], pages_scraped=1)

    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": fetch}) as store:
        result = await store.comps.search(QUERY)
        assert result.listings[0].price == Decimal("6.24")
        assert store.metrics()["api_calls"] == 1


@pytest.mark.parametrize("price", [float("nan"), -5.0, Decimal("-1"), "abc", float("inf")])
@pytest.mark.parametrize("construct", [True, False])
async def test_impossible_price_is_named_however_it_is_built(
    migrated_url: str, price: Any, construct: bool
) -> None:
    fields = {"item_id": "B1", "title": "Wembanyama #1", "price": price, "sold": True}

    async def fetch(request: ks.FetchRequest) -> Any:
        if construct:
            listing = ks.Listing.model_construct(**fields)
            return ks.FetchResult.model_construct(listings=[listing], pages_scraped=1)
        return {"listings": [fields]}

    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": fetch}) as store:
        with pytest.raises(ks.InvalidInputError) as caught:
            await store.comps.search(QUERY)
        assert caught.value.field == "fetcher.listings[0].price"
        assert store.metrics()["api_calls"] == 1  # invalid data is the fetcher's bug
        assert await store.flush()
    assert store.metrics()["writes"]["written"] == 0  # nothing stored


def test_listing_rounds_like_a_fetch_result() -> None:
    built = ks.Listing(item_id="1", title="t", price=6.240000000000001)
    parsed = ks.FetchResult(listings=[{"item_id": "1", "title": "t", "price": 6.240000000000001}])
    assert built.price == parsed.listings[0].price == Decimal("6.24")
    assert ks.Listing(item_id="1", title="t", price="6.245").price == Decimal("6.25")
    assert ks.Listing(item_id="1", title="t", price=Decimal("6.2449")).price == Decimal("6.24")
    with pytest.raises(ValueError, match="price"):
        ks.Listing(item_id="1", title="t", price=-0.5)


async def test_fetchers_own_model_error_is_invalid_data_paid_once(migrated_url: str) -> None:
    async def builds_bad_listing(request: ks.FetchRequest) -> ks.FetchResult:
        return ks.FetchResult(listings=[ks.Listing(item_id="", title="x", price="1")])

    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": builds_bad_listing}, fetch_backoff=0.001
    ) as store:
        with pytest.raises(ks.InvalidInputError) as caught:
            await store.comps.search(QUERY)
        assert caught.value.field.startswith("fetcher")
        assert store.metrics()["api_calls"] == 1
