"""The tiered read path on every backend pair: SQLite or PostgreSQL, memory or Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import kuya_store as ks
from kuya_store.db.engine import driver_arguments
from kuya_store.demo import FakeMarketplace
from readback import rows as _rows

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
SAME_CARD = "  2023 topps chrome VICTOR wembanyama 1 "
MakeStore = Callable[..., ks.CompsStore]


@pytest.fixture
def clock() -> ks.ManualClock:
    return ks.ManualClock()


@pytest.fixture
def market(clock: ks.ManualClock) -> FakeMarketplace:
    return FakeMarketplace(listings=12, clock=clock)


@pytest.fixture(params=["sqlite", "postgresql", "pgbouncer"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each backend, and PostgreSQL once more through PgBouncer in transaction mode."""
    if request.param == "pgbouncer":
        return f"{request.getfixturevalue('pgbouncer_url')}?pgbouncer=true"
    return str(request.getfixturevalue(f"{request.param.replace('postgresql', 'postgres')}_url"))


async def test_remembered_arguments_still_refuse_bad_input_and_keep_types_apart(
    market: FakeMarketplace, clock: ks.ManualClock
) -> None:
    # A search's validated arguments are memoised: nothing may slip past the checks.
    fetchers = {"sold": market.sold}
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://", mode="cache_only", fetchers=fetchers, clock=clock
    ) as store:
        for pages in (1, 1.0, True, "1"):
            await store.comps.search(QUERY, params={"pages": pages})
        assert [type(c.params["pages"]) for c in market.calls] == [int, float, bool, str]
        assert (await store.comps.search(QUERY, params={"pages": True})).cache_hit
        for _ in range(2):
            with pytest.raises(ks.InvalidInputError, match="query"):
                await store.comps.search(QUERY + "\x00")
            with pytest.raises(ks.InvalidInputError, match="params"):
                await store.comps.search(QUERY, params={"pages": [1]})
            with pytest.raises(ks.InvalidInputError, match="search_type"):
                await store.comps.search(QUERY, search_type="sould")
        answer = await store.comps.search(f"  {QUERY} ", filters=ks.SearchFilters(raw_only=True))
        assert answer.query == QUERY and answer.filters.raw_only
        assert len(market.calls) == 5  # the plain query was not searched before


@pytest.fixture(params=["memory", "redis"])
def hot_tier(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_store(
    migrated_url: str,
    hot_tier: str,
    request: pytest.FixtureRequest,
    key_prefix: str,
    clock: ks.ManualClock,
    market: FakeMarketplace,
) -> AsyncIterator[MakeStore]:
    stores: list[ks.CompsStore] = []
    redis_url = request.getfixturevalue("redis_base_url") if hot_tier == "redis" else None

    def make(**overrides: Any) -> ks.CompsStore:
        options: dict[str, Any] = {
            "database_url": migrated_url,
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "write_flush_interval": 0.01,
            "fetch_backoff": 0.001,
            # These tests pin the plan's fixed windows; the sale-rate policy has its own.
            "freshness_policy": "fixed",
        }
        options.update(overrides)
        fetchers = options.pop("fetchers", {"sold": market.sold, "active": market.active})
        store = ks.CompsStore(fetchers=fetchers, clock=clock, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


def _engine(url: str) -> AsyncEngine:
    target, connect_args = driver_arguments(url)  # also through PgBouncer
    return create_async_engine(target, connect_args=connect_args)


async def _count(url: str, table: str, where: str = "") -> int:
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            sql = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")
            return int((await conn.execute(sa.text(sql))).scalar_one())
    finally:
        await engine.dispose()


async def test_each_tier_answers_in_turn(
    make_store: MakeStore, clock: ks.ManualClock, market: FakeMarketplace, hot_tier: str
) -> None:
    store = make_store()
    first = await store.comps.search(QUERY)
    assert (first.source, first.cache_hit, market.call_count) == ("api", False, 1)
    assert first.snapshot is not None and first.snapshot.card_identifier == first.card_identifier

    second = await store.comps.search(SAME_CARD)
    assert (second.source, second.cache_hit) == ("memory", True)
    assert second.listings == first.listings  # display data included, from the hot tier
    assert second.fetched_at == first.fetched_at

    if hot_tier == "redis":
        clock.advance(timedelta(seconds=10))  # past the near-cache's few seconds
        third = await store.comps.search(QUERY)
        assert third.source == "redis"
        assert third.listings == first.listings

    await store.flush()
    # A restart that loses the hot tier: a new process, and (with Redis) an empty keyspace.
    restarted = make_store(key_prefix="fresh" + store.settings.key_prefix)
    clock.advance(timedelta(minutes=10))
    from_db = await restarted.comps.search(QUERY)
    assert from_db.source == "database"
    assert from_db.fetched_at == first.fetched_at  # ten minutes old, and says so
    assert [x.item_id for x in from_db.listings] == [x.item_id for x in first.listings]
    assert all(x.extra == {} for x in from_db.listings)  # the database keeps no display data
    assert from_db.snapshot == first.snapshot
    assert market.call_count == 1

    refilled = await restarted.comps.search(QUERY)
    assert refilled.source == "memory"  # the database hit filled the tiers above it

    clock.advance(timedelta(minutes=21))  # 31 minutes after the fetch: stale everywhere
    again = await restarted.comps.search(QUERY)
    assert again.source == "api"
    assert market.call_count == 2


@pytest.mark.parametrize(
    ("search_type", "window"), [("sold", timedelta(minutes=30)), ("active", timedelta(minutes=5))]
)
async def test_freshness_boundaries(
    make_store: MakeStore,
    clock: ks.ManualClock,
    market: FakeMarketplace,
    search_type: str,
    window: timedelta,
) -> None:
    store = make_store()
    await store.comps.search(QUERY, search_type)
    clock.advance(window - timedelta(seconds=1))
    assert (await store.comps.search(QUERY, search_type)).cache_hit
    clock.advance(timedelta(seconds=1))
    assert (await store.comps.search(QUERY, search_type)).source == "api"
    assert market.call_count == 2


async def test_database_freshness_boundary(
    make_store: MakeStore, clock: ks.ManualClock, market: FakeMarketplace
) -> None:
    writer = make_store(redis_url=None)
    await writer.comps.search(QUERY, "active")
    await writer.flush()
    clock.advance(timedelta(minutes=4, seconds=59))
    assert (await make_store(redis_url=None).comps.search(QUERY, "active")).source == "database"
    clock.advance(timedelta(seconds=1))
    assert (await make_store(redis_url=None).comps.search(QUERY, "active")).source == "api"


async def test_one_fetch_writes_one_search_n_listings_n_links(
    make_store: MakeStore, migrated_url: str
) -> None:
    store = make_store()
    result = await store.comps.search(QUERY, params={"pages": 2})
    await store.flush()
    n = len(result.listings)
    assert n == 24
    assert await _count(migrated_url, "searches") == 1
    assert await _count(migrated_url, "listing_cache") == n
    assert await _count(migrated_url, "search_results") == n
    assert await _count(migrated_url, "price_snapshots") == 1
    row = (await _rows(migrated_url, "SELECT * FROM searches"))[0]
    assert row["cache_hit"] in (False, 0)
    assert row["items_count"] == n and row["pages_scraped"] == 2
    assert row["search_type"] == "sold" and row["query"] == QUERY
    filters = row["filters"] if isinstance(row["filters"], dict) else json.loads(row["filters"])
    assert filters == {"raw_only": False, "base_only": False, "exclude_auto": False}


async def test_every_hit_is_logged(make_store: MakeStore, migrated_url: str) -> None:
    store = make_store()
    await store.comps.search(QUERY)
    for _ in range(25):
        await store.comps.search(QUERY, user_id=None)
    await store.flush()
    assert await _count(migrated_url, "searches") == 26
    assert await _count(migrated_url, "searches", "cache_hit = true") == 25
    metrics = store.metrics()
    assert metrics["api_calls"] == 1 and metrics["api_calls_saved"] == 25
    assert metrics["writes"]["written"] == 26 and metrics["writes"]["dropped"] == 0


async def test_display_data_never_reaches_the_database(
    make_store: MakeStore, migrated_url: str
) -> None:
    async def fetch(request: ks.FetchRequest) -> list[dict[str, Any]]:
        return [
            {
                "item_id": f"X{i}",
                "title": f"{request.query} PSA 10",
                "price": "12.50",
                "sold": True,
                "extra": {
                    "link": f"https://shop.example/itm/X{i}",
                    "thumbnail": "https://img.example/x.jpg",
                },
                "seller_feedback": 99.1,  # unknown top-level field: dropped everywhere
            }
            for i in range(3)
        ]

    store = make_store()
    result = await store.comps.search(QUERY, fetcher=fetch)
    assert all("seller_feedback" not in x.model_dump() for x in result.listings)
    assert result.listings[0].extra["link"].startswith("https://shop.example")
    await store.flush()
    for table in ("listing_cache", "searches", "price_snapshots", "search_results"):
        for row in await _rows(migrated_url, f"SELECT * FROM {table}"):
            text = json.dumps(row, default=str)
            assert "shop.example" not in text and "img.example" not in text, table
            assert "seller_feedback" not in text and "99.1" not in text, table
    if store.settings.redis_url:
        raw = [
            await store._hot.client.get(key)  # type: ignore[attr-defined]
            async for key in store._hot.client.scan_iter(f"{store.settings.key_prefix}:*:r:*")  # type: ignore[attr-defined]
        ]
        assert raw and all(b"seller_feedback" not in value for value in raw)
        assert all(b"shop.example" in value for value in raw)  # display data is a hot-tier matter


async def test_params_are_part_of_the_identity(
    make_store: MakeStore, market: FakeMarketplace
) -> None:
    store = make_store()
    await store.comps.search(QUERY, params={"pages": 1, "sort_by": "date_desc"})
    assert (await store.comps.search(QUERY, params={"sort_by": "date_desc", "pages": 1})).cache_hit
    assert (
        await store.comps.search(QUERY, params={"pages": 2, "sort_by": "date_desc"})
    ).source == "api"
    assert [c.params for c in market.calls] == [
        {"pages": 1, "sort_by": "date_desc"},
        {"pages": 2, "sort_by": "date_desc"},
    ]


async def test_filters_are_served_from_one_fetch(
    make_store: MakeStore, market: FakeMarketplace
) -> None:
    store = make_store()
    everything = await store.comps.search(QUERY)
    raw = await store.comps.search(QUERY, filters={"raw_only": True})
    assert raw.cache_hit and market.call_count == 1
    assert raw.filters == ks.SearchFilters(raw_only=True)
    assert len(raw.listings) <= len(everything.listings)
    assert market.calls[0].filters == ks.SearchFilters()  # the fetcher is asked unfiltered


async def test_cache_only_mode_never_touches_the_database(
    make_store: MakeStore, market: FakeMarketplace, postgres_url: str
) -> None:
    # An unmigrated database: any query against it would fail.
    store = make_store(mode="cache_only", database_url=postgres_url)
    await store.comps.search(QUERY)
    assert (await store.comps.search(QUERY)).cache_hit
    assert await store.flush()
    assert not await store.ping_database()
    assert store.metrics()["database"]["queries"]["count"] == 0


async def test_dual_write_writes_everything_but_never_reads(
    make_store: MakeStore, market: FakeMarketplace, migrated_url: str
) -> None:
    store = make_store(mode="dual_write")
    await store.comps.search(QUERY)
    await store.comps.search(QUERY)
    await store.flush()
    assert await _count(migrated_url, "searches") == 2
    other = make_store(mode="dual_write", key_prefix="other" + store.settings.key_prefix)
    assert (await other.comps.search(QUERY)).source == "api"  # the database is never read
    assert market.call_count == 2


async def test_switching_modes_back_and_forth_loses_nothing(
    make_store: MakeStore, migrated_url: str, key_prefix: str
) -> None:
    expected_rows = 0
    for round_, mode in enumerate(
        ["read_through", "cache_only", "dual_write", "read_through", "cache_only", "read_through"]
    ):
        store = make_store(mode=mode, key_prefix=f"{key_prefix}m{round_}")
        await store.comps.search(f"{QUERY} round {round_}")
        await store.comps.search(f"{QUERY} round {round_}")
        await store.close()
        if mode != "cache_only":
            expected_rows += 2
        assert await _count(migrated_url, "searches") == expected_rows
    # Rolling back to read_through finds every earlier written result.
    store = make_store(mode="read_through", key_prefix=f"{key_prefix}final")
    assert (await store.comps.search(f"{QUERY} round 3")).source == "database"


@pytest.mark.parametrize("hot_tier", ["redis"])
async def test_corrupt_hot_entry_is_a_miss_and_is_overwritten(
    make_store: MakeStore, market: FakeMarketplace, redis_client: Any
) -> None:
    store = make_store(near_cache_size=0, mode="cache_only")
    await store.comps.search(QUERY)
    keys = [k async for k in redis_client.scan_iter(f"{store.settings.key_prefix}:*:r:*")]
    assert len(keys) == 1
    for garbage in (b"\x80not json", b'{"v": 1, "listings": "nope"}', b'{"v": 99}', b"\x00" * 10):
        await redis_client.set(keys[0], garbage)
        result = await store.comps.search(QUERY)
        assert result.source == "api"
        assert (await store.comps.search(QUERY)).source == "redis"  # overwritten with a good value
    assert store.metrics()["corrupt_entries"] >= 4  # every read of a bad value counts
    assert market.call_count == 5


async def test_invalidate_clears_every_tier(
    make_store: MakeStore, market: FakeMarketplace, migrated_url: str
) -> None:
    store = make_store()
    await store.comps.search(QUERY)
    await store.comps.search(QUERY, params={"pages": 2})
    await store.comps.search(QUERY, "active")
    await store.comps.invalidate(SAME_CARD, "sold")
    assert (await store.comps.search(QUERY)).source == "api"
    assert (await store.comps.search(QUERY, params={"pages": 2})).source == "api"
    assert (await store.comps.search(QUERY, "active")).cache_hit  # another search type: kept
    await store.flush()
    # The rows are history and stay; after invalidate, a restarted store would not use them.
    assert await _count(migrated_url, "searches", "cache_hit = false") == 5


async def test_get_listing_and_listings_due_for_refresh(
    make_store: MakeStore, clock: ks.ManualClock
) -> None:
    store = make_store()
    result = await store.comps.search(QUERY, "active")
    await store.flush()
    stored = await store.comps.get_listing(result.listings[0].item_id)
    assert stored.item_id == result.listings[0].item_id
    assert stored.price == result.listings[0].price and stored.extra == {}
    with pytest.raises(ks.NotFoundError):
        await store.comps.get_listing("no-such-item")
    assert await store.comps.listings_due_for_refresh(10) == []
    clock.advance(timedelta(minutes=5))
    due = await store.comps.listings_due_for_refresh(5)
    assert len(due) == 5


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x" * 10_000}, "query"),
        ({"query": "wemby\x00"}, "query"),
        ({"query": 42}, "query"),
        ({"search_type": "auction"}, "search_type"),
        ({"filters": {"graded_only": True}}, "filters.graded_only"),
        ({"filters": {"raw_only": "maybe"}}, "filters.raw_only"),
        ({"params": {"pages": float("nan")}}, "params.pages"),
        ({"params": {"nested": {"a": 1}}}, "params.nested"),
        ({"params": ["pages", 1]}, "params"),
        ({"user_id": -1}, "user_id"),
    ],
)
async def test_bad_search_input_is_rejected_before_anything_is_written(
    make_store: MakeStore,
    migrated_url: str,
    market: FakeMarketplace,
    call: dict[str, Any],
    field: str,
) -> None:
    store = make_store()
    arguments: dict[str, Any] = {"query": QUERY, **call}
    with pytest.raises(ks.InvalidInputError) as info:
        await store.comps.search(**arguments)
    assert info.value.field == field
    await store.flush()
    assert market.call_count == 0
    assert await _count(migrated_url, "searches") == 0


def _listing(item_id: str, price: Any) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "title": "2023 Topps Chrome Wembanyama",
        "price": price,
        "sold": True,
    }


@pytest.mark.parametrize(
    ("listings", "field"),
    [
        ([_listing("A", "1.00"), _listing("A", "2.00")], "fetcher.listings[1].item_id"),
        ([_listing("A", "1.00"), _listing("B", "-3.00")], "fetcher.listings.1.price"),
        ([_listing("A", float("nan"))], "fetcher.listings.0.price"),
        ([_listing("A", float("inf"))], "fetcher.listings.0.price"),
        ([_listing("A", "100000000.00")], "fetcher.listings.0.price"),
        ([{**_listing("A", "1.00"), "title": ""}], "fetcher.listings.0.title"),
        (
            [{**_listing("A", "1.00"), "sold_date": "2026-01-01T00:00:00"}],
            "fetcher.listings.0.sold_date",
        ),
    ],
)
async def test_invalid_fetcher_data_is_rejected_and_nothing_is_stored(
    make_store: MakeStore, migrated_url: str, listings: list[dict[str, Any]], field: str
) -> None:
    async def fetch(request: ks.FetchRequest) -> Any:
        return {"listings": listings}

    store = make_store()
    with pytest.raises(ks.InvalidInputError) as info:
        await store.comps.search(QUERY, fetcher=fetch)
    assert info.value.field.replace("[", ".").replace("]", "") == field.replace("[", ".").replace(
        "]", ""
    )
    await store.flush()
    for table in ("searches", "listing_cache", "price_snapshots"):
        assert await _count(migrated_url, table) == 0
    # An error is never cached: the next call asks the fetcher again.
    with pytest.raises(ks.InvalidInputError):
        await store.comps.search(QUERY, fetcher=fetch)


async def test_failing_fetcher_raises_fetcher_error_and_caches_nothing(
    make_store: MakeStore,
) -> None:
    calls = 0

    def broken(request: ks.FetchRequest) -> ks.FetchResult:  # a sync fetcher: run in a thread
        nonlocal calls
        calls += 1
        raise ConnectionError("upstream 503")

    store = make_store(fetchers={"sold": broken}, fetch_attempts=3)
    for _ in range(2):
        with pytest.raises(ks.FetcherError, match="upstream 503"):
            await store.comps.search(QUERY)
    assert calls == 6  # three attempts per search, and the error was not cached
    assert store.metrics()["api_errors"] == 6


async def test_missing_fetcher_is_a_fetcher_error(make_store: MakeStore) -> None:
    store = make_store(fetchers={})
    with pytest.raises(ks.FetcherError, match="no fetcher registered"):
        await store.comps.search(QUERY, "active")


async def test_concurrent_identical_misses_make_one_call(
    make_store: MakeStore, market: FakeMarketplace, migrated_url: str
) -> None:
    market.latency = 0.05
    store = make_store()
    results = await asyncio.gather(*(store.comps.search(QUERY) for _ in range(50)))
    assert market.call_count == 1
    assert sum(not r.cache_hit for r in results) == 1
    await store.flush()
    assert await _count(migrated_url, "searches") == 50


async def test_money_is_decimal_end_to_end(make_store: MakeStore, clock: ks.ManualClock) -> None:
    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        return ks.FetchResult(
            listings=[
                ks.Listing(
                    item_id="M", title="card", price=Decimal("0.10") + Decimal("0.20"), sold=True
                )
            ]
        )

    store = make_store()
    first = await store.comps.search(QUERY, fetcher=fetch)
    await store.flush()
    restarted = make_store(key_prefix="r" + store.settings.key_prefix)
    from_db = await restarted.comps.search(QUERY)
    for result in (first, from_db):
        assert result.listings[0].price == Decimal("0.30")
        assert isinstance(result.listings[0].price, Decimal)


async def test_health_and_metrics(make_store: MakeStore, hot_tier: str) -> None:
    store = make_store()
    health = await store.health()
    assert health.status == "healthy"
    assert health.database is True
    assert health.redis is (hot_tier == "redis")
    await store.comps.search(QUERY)
    await store.comps.search(QUERY)
    metrics = store.metrics()
    assert metrics["searches"] == 2
    assert sum(metrics["tier_hits"].values()) == 1
    assert metrics["latency"]["search"]["count"] == 2
    assert metrics["database"]["pool"]["class"]


async def test_a_fetch_larger_than_the_bind_parameter_limit(
    make_store: MakeStore, migrated_url: str
) -> None:
    # 3,000 listings x 13 columns is past both drivers' ~32,767 bind parameters.
    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        return ks.FetchResult(
            listings=[
                ks.Listing(item_id=f"BIG{i:05d}", title=f"card {i}", price="1.00", sold=True)
                for i in range(3000)
            ]
        )

    store = make_store()
    await store.comps.search(QUERY, fetcher=fetch)
    assert await store.flush(timeout=120)
    assert await _count(migrated_url, "listing_cache") == 3000
    assert await _count(migrated_url, "search_results") == 3000
    assert store.metrics()["writes"]["rejected"] == 0


async def test_flush_on_an_empty_buffer_keeps_the_writer_alive(
    make_store: MakeStore, migrated_url: str
) -> None:
    store = make_store()
    assert await store.flush(timeout=5)
    assert await store.flush(timeout=5)
    await store.comps.search(QUERY)
    await store.comps.search(QUERY)
    assert await store.flush(timeout=5)
    assert await store.flush(timeout=5)
    await store.comps.search(QUERY)
    assert await store.flush(timeout=5)
    assert await _count(migrated_url, "searches") == 3


async def test_filters_sent_upstream_when_asked(
    make_store: MakeStore, market: FakeMarketplace
) -> None:
    store = make_store(filter_upstream=True)
    raw = await store.comps.search(QUERY, filters={"raw_only": True})
    everything = await store.comps.search(QUERY)
    assert (raw.source, everything.source) == ("api", "api")  # filters are part of the key now
    assert [c.filters for c in market.calls] == [
        ks.SearchFilters(raw_only=True),
        ks.SearchFilters(),
    ]
    assert raw.listings == everything.listings  # the fetcher filtered; the store did not
    assert (await store.comps.search(QUERY, filters={"raw_only": True})).cache_hit


class HalfPrice:
    """A valuator that an application plugs in through the settings."""

    def value(
        self, card_identifier: str, listings: Any, *, snapshot_date: Any, now: Any
    ) -> ks.PriceSnapshot:
        prices = sorted(x.price for x in listings)
        return ks.PriceSnapshot(
            card_identifier=card_identifier,
            snapshot_date=snapshot_date,
            sample_size=len(prices),
            market_value=prices[len(prices) // 2] / 2,
        )


async def test_valuator_from_settings_and_constructor(make_store: MakeStore) -> None:
    by_setting = make_store(valuator=f"{__name__}:HalfPrice")
    snapshot = (await by_setting.comps.search(QUERY)).snapshot
    assert snapshot is not None and snapshot.volume_confidence is None  # not the default's
    with pytest.raises(ks.InvalidInputError, match="^valuator"):
        make_store(valuator="kuya_store.models:to_money")
    default = make_store(key_prefix="d" + by_setting.settings.key_prefix, mode="cache_only")
    assert (await default.comps.search(QUERY)).snapshot.volume_confidence is not None  # type: ignore[union-attr]


async def test_fetcher_values_are_normalised_before_storing(make_store: MakeStore) -> None:
    from datetime import datetime, timezone

    manila = timezone(timedelta(hours=8))

    async def fetch(request: ks.FetchRequest) -> list[dict[str, Any]]:
        return [
            {
                "item_id": "F1",
                "title": "card",
                "price": 0.1 + 0.2,
                "sold": True,
                "sold_date": datetime(2026, 11, 25, 20, 0, tzinfo=manila),
            },
            {"item_id": "F2", "title": "card", "price": "19.999", "sold": True},
        ]

    store = make_store()
    result = await store.comps.search(QUERY, fetcher=fetch)
    first, second = result.listings
    assert (first.price, second.price) == (Decimal("0.30"), Decimal("20.00"))
    assert first.sold_date is not None and first.sold_date.utcoffset() == timedelta(0)
    assert first.sold_date == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert json.loads(result.model_dump_json())["listings"][0]["price"] == "0.30"


async def test_oversized_display_data_is_rejected(make_store: MakeStore, migrated_url: str) -> None:
    async def fetch(request: ks.FetchRequest) -> list[dict[str, Any]]:
        return [{"item_id": "X", "title": "card", "price": "1.00", "extra": {"blob": "x" * 10_000}}]

    store = make_store()
    with pytest.raises(ks.InvalidInputError, match="at most 8192 bytes") as info:
        await store.comps.search(QUERY, fetcher=fetch)
    assert info.value.field == "fetcher.listings"
    await store.flush()
    assert await _count(migrated_url, "listing_cache") == 0
