"""Right data, newest data: snapshots describe their listings, late writes never win."""

from __future__ import annotations

import asyncio
import random
import string
from datetime import timedelta
from decimal import Decimal
from typing import Any

import kuya_store as ks
from kuya_store.keys import ResultIdentity
from readback import rows as _rows

CARD = "1986 Fleer Michael Jordan #57"


def _sale(item: str, title: str, price: str, clock: ks.ManualClock) -> ks.Listing:
    return ks.Listing(item_id=item, title=title, price=Decimal(price), sold=True, sold_date=clock())


def _jordan_market(clock: ks.ManualClock) -> list[ks.Listing]:
    """Six raw sales about $1,190 and four PSA slabs far above them."""
    raw = [
        _sale(f"R{i}", "1986 Fleer Michael Jordan #57 Rookie", p, clock)
        for i, p in enumerate(["1150", "1175", "1190", "1200", "1210", "1230"])
    ]
    slabs = [
        _sale(f"P{i}", f"1986 Fleer Michael Jordan #57 PSA {g}", p, clock)
        for i, (g, p) in enumerate([("8", "4200"), ("9", "9800"), ("8", "4350"), ("7", "2500")])
    ]
    return raw + slabs


async def test_snapshot_values_only_the_listings_shown(migrated_url: str) -> None:
    clock = ks.ManualClock()

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        return ks.FetchResult(listings=_jordan_market(clock))

    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": fetch}, clock=clock
    ) as store:
        everything = await store.comps.search(CARD)
        raw = await store.comps.search(CARD, filters={"raw_only": True})
        assert len(raw.listings) == 6
        assert raw.snapshot is not None and everything.snapshot is not None
        assert raw.snapshot.sample_size == 6
        assert Decimal("1150") <= raw.snapshot.market_value <= Decimal("1230")  # type: ignore[operator]
        assert raw.snapshot.max_price == Decimal("1230.00")
        assert everything.snapshot.sample_size == 10
        # Served again from the hot tier, and after a restart from the database alone.
        assert (await store.comps.search(CARD, filters={"raw_only": True})).snapshot == raw.snapshot
        await store.flush()
    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": fetch}, clock=clock
    ) as store:
        again = await store.comps.search(CARD, filters={"raw_only": True})
        assert again.source == "database"
        assert again.snapshot is not None
        assert again.snapshot.sample_size == 6
        assert again.snapshot.market_value == raw.snapshot.market_value


async def test_params_variants_never_carry_each_others_values(migrated_url: str) -> None:
    clock = ks.ManualClock()

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        cheap = request.params.get("condition") == "raw"
        prices = ["10", "12", "15"] if cheap else ["480", "500", "525"]
        return ks.FetchResult(
            listings=[
                _sale(f"{'C' if cheap else 'G'}{i}", "Wembanyama Prizm #136", p, clock)
                for i, p in enumerate(prices)
            ]
        )

    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": fetch}, clock=clock
    ) as store:
        await store.comps.search("Wembanyama Prizm #136", params={"condition": "raw"})
        await store.comps.search("Wembanyama Prizm #136", params={"condition": "graded"})
        await store.flush()
    # A restart: the database answers each variant with its own valuation.
    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": fetch}, clock=clock
    ) as store:
        cheap = await store.comps.search("Wembanyama Prizm #136", params={"condition": "raw"})
        graded = await store.comps.search("Wembanyama Prizm #136", params={"condition": "graded"})
        assert (cheap.source, graded.source) == ("database", "database")
        assert cheap.snapshot is not None and graded.snapshot is not None
        assert cheap.snapshot.max_price == Decimal("15.00")
        assert graded.snapshot.min_price == Decimal("480.00")


async def _daily_row(url: str, order: list[str]) -> dict[str, Any]:
    clock = ks.ManualClock()

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        everything = _jordan_market(clock)
        if request.query.endswith("-psa"):
            return ks.FetchResult(listings=everything[:6])  # the upstream hid the slabs
        return ks.FetchResult(listings=everything)

    await ks.migrations.upgrade_async(url)
    async with ks.CompsStore(database_url=url, fetchers={"sold": fetch}, clock=clock) as store:
        for query in order:
            await store.comps.search(query)
            clock.advance(timedelta(minutes=1))
        await store.flush()
    rows = await _rows(url, "SELECT * FROM price_snapshots")
    assert len(rows) == 1  # UNIQUE(card_identifier, snapshot_date)
    return rows[0]


async def test_daily_snapshot_values_every_sale_seen_that_day(
    sqlite_url: str, tmp_path: Any
) -> None:
    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    first = await _daily_row(sqlite_url, [CARD, f"{CARD} -psa"])
    second = await _daily_row(other, [f"{CARD} -psa", CARD])
    # Whichever variant was fetched last, the day's row values the ten distinct sales.
    assert first["sample_size"] == second["sample_size"] == 10
    assert first["market_value"] == second["market_value"]


async def test_late_older_fetch_never_overwrites_newer_listing_prices(migrated_url: str) -> None:
    later = ks.ManualClock()
    earlier = ks.ManualClock(later() - timedelta(hours=1))

    def fetcher(price: str, clock: ks.ManualClock) -> ks.Fetcher:
        async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
            return ks.FetchResult(listings=[_sale("X1", "Wembanyama Prizm #136", price, clock)])

        return fetch

    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"active": fetcher("120", later)}, clock=later
    ) as store:
        await store.comps.search("Wembanyama Prizm #136", "active")
        await store.flush()
    # A fetch made an hour earlier reaches the database now (a replay after an outage).
    async with ks.CompsStore(
        database_url=migrated_url,
        fetchers={"active": fetcher("95", earlier)},
        clock=earlier,
        mode="dual_write",  # it does not read the database, so it fetches
    ) as store:
        await store.comps.search("Wembanyama Prizm #136", "active")
        await store.flush()
        assert (await store.comps.get_listing("X1")).price == Decimal("120.00")


async def test_database_hit_never_overwrites_a_newer_redis_value(
    migrated_url: str, redis_base_url: str, key_prefix: str
) -> None:
    clock = ks.ManualClock()
    version = ["old"]

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        price = "10" if version[0] == "old" else "99"
        return ks.FetchResult(listings=[_sale("W1", "Wembanyama Prizm #136", price, clock)])

    options: dict[str, Any] = {
        "database_url": migrated_url,
        "redis_url": redis_base_url,
        "key_prefix": key_prefix,
        "fetchers": {"sold": fetch},
        "clock": clock,
        "near_cache_size": 0,
    }
    async with ks.CompsStore(**options) as first:
        await first.comps.search("Wembanyama Prizm #136")
        await first.flush()
        clock.advance(timedelta(minutes=1))
        version[0] = "new"
        await first.comps.search("Wembanyama Prizm #136", refresh=True)  # newer, in Redis
        identity = ResultIdentity.of_query("Wembanyama Prizm #136", ks.SearchType.SOLD, {})
        # What another worker that read the older database row would write back.
        older = await first._database.newest_result(identity, clock() - timedelta(hours=1))  # type: ignore[union-attr]
        assert older is not None
        await first._hot.set(identity, older, timedelta(minutes=5))  # type: ignore[attr-defined]
        answer = await first.comps.search("Wembanyama Prizm #136")
        assert answer.listings[0].price == Decimal("99.00")


async def test_query_of_5000_characters_is_logged(migrated_url: str) -> None:
    rng = random.Random(7)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(700)]
    query = ("Wembanyama " + " ".join(f"-{w}" for w in words))[:5000].rstrip(" -")

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        return ks.FetchResult(listings=[])

    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": fetch}) as store:
        await store.comps.search(query)
        await store.comps.search(query)
        assert await store.flush()
        assert store.metrics()["writes"]["rejected"] == 0
    rows = await _rows(migrated_url, "SELECT length(query) AS n FROM searches")
    assert [r["n"] for r in rows] == [len(query)] * 2


async def test_concurrent_refresh_is_one_call(migrated_url: str) -> None:
    calls = 0

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return ks.FetchResult(listings=[])

    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": fetch}) as store:
        await store.comps.search(CARD)
        results = await asyncio.gather(*(store.comps.search(CARD, refresh=True) for _ in range(20)))
        assert calls == 2  # the first fetch, then one refresh for all twenty
        assert sum(not r.cache_hit for r in results) == 1
