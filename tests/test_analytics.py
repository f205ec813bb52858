"""Price history, trends, search statistics and top searches on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

import kuya_store as ks
from kuya_store.db.tables import metadata
from kuya_store.demo import FakeMarketplace

CARD = "1986 Fleer Michael Jordan #57"
START = date(2026, 10, 1)


@pytest.fixture
def clock() -> ks.ManualClock:
    return ks.ManualClock(datetime(2026, 10, 30, 12, tzinfo=UTC))


@pytest.fixture
async def store(migrated_url: str, clock: ks.ManualClock) -> AsyncIterator[ks.CompsStore]:
    market = FakeMarketplace(listings=10, clock=clock)
    async with ks.CompsStore(
        database_url=migrated_url,
        clock=clock,
        fetchers={"sold": market.sold, "active": market.active},
        write_flush_interval=0.01,
    ) as store:
        yield store


async def _insert_snapshots(store: ks.CompsStore, card: str, values: list[str | None]) -> None:
    table = metadata.tables["price_snapshots"]
    rows = [
        {
            "card_identifier": ks.normalize_card(card),
            "snapshot_date": START + timedelta(days=i),
            "market_value": None if v is None else Decimal(v),
            "fmv_low": None if v is None else Decimal(v) * Decimal("0.9"),
            "fmv_high": None if v is None else Decimal(v) * Decimal("1.1"),
            "sample_size": 10,
        }
        for i, v in enumerate(values)
    ]
    async with store._database.engine.begin() as conn:  # type: ignore[union-attr]
        await conn.execute(table.insert(), rows)


async def test_price_history_oldest_first_within_bounds(store: ks.CompsStore) -> None:
    await _insert_snapshots(store, CARD, ["100.00", "110.00", "120.00", "130.00"])
    await _insert_snapshots(store, "2003 Topps Chrome LeBron James #111", ["5.00"])
    history = await store.analytics.price_history(CARD)
    assert [h.market_value for h in history] == [
        Decimal(x) for x in ("100.00", "110.00", "120.00", "130.00")
    ]
    assert [h.snapshot_date for h in history] == [START + timedelta(days=i) for i in range(4)]
    window = await store.analytics.price_history(
        "1986 fleer michael jordan 57",
        start=START + timedelta(days=1),
        end=START + timedelta(days=2),
    )
    assert [h.market_value for h in window] == [Decimal("110.00"), Decimal("120.00")]
    assert await store.analytics.price_history("no such card") == []
    with pytest.raises(ks.InvalidInputError, match="^start"):
        await store.analytics.price_history(CARD, start=START, end=START - timedelta(days=1))


async def test_history_rows_are_exactly_the_validated_snapshots(store: ks.CompsStore) -> None:
    # Rows are built without validating again what the column types typed: every field,
    # the analyses, the places of each amount and the set fields must still be what
    # validating the stored row gives.
    table = metadata.tables["price_snapshots"]
    analysis = {"base": {"count": 3, "median": "1.05", "premium_pct": "0.0"}}
    rows = [
        {
            "card_identifier": ks.normalize_card(CARD),
            "snapshot_date": START + timedelta(days=i),
            "fmv_low": Decimal("0.01"),
            "fmv_high": Decimal("99999999.99"),
            "market_value": Decimal(value) if value else None,
            "quick_sale": Decimal("1"),
            "patient_sale": Decimal("2.5"),
            "sample_size": i,
            "min_price": Decimal("0"),
            "max_price": Decimal("12.30"),
            "avg_price": None,
            "volume_confidence": "medium" if i % 2 else None,
            "parallel_analysis": analysis if i % 2 else None,
            "grading_analysis": {"raw": {"count": i, "median": None}, "PSA 10": {}},
        }
        for i, value in enumerate(["19.99", None, "0.10", "120"])
    ]
    async with store._database.engine.begin() as conn:  # type: ignore[union-attr]
        await conn.execute(table.insert(), rows)
    async with store._database.engine.connect() as conn:  # type: ignore[union-attr]
        stored = (await conn.execute(sa.select(table).order_by(table.c.snapshot_date))).mappings()
        expected = [
            ks.PriceSnapshot.model_validate(
                {name: r[name] for name in ks.PriceSnapshot.model_fields}
            )
            for r in stored.all()
        ]
    history = await store.analytics.price_history(CARD)
    assert history == expected
    for got, want in zip(history, expected, strict=True):
        assert type(got) is ks.PriceSnapshot
        assert got.model_dump_json() == want.model_dump_json()
        assert got.model_fields_set == want.model_fields_set
        assert [repr(getattr(got, f)) for f in ks.PriceSnapshot.model_fields] == [
            repr(getattr(want, f)) for f in ks.PriceSnapshot.model_fields
        ]
        with pytest.raises(ValidationError):
            got.market_value = Decimal("1.00")  # type: ignore[misc]
    trend = await store.analytics.price_trend(CARD, days=60)
    assert trend.points == [
        ks.TrendPoint(snapshot_date=s.snapshot_date, market_value=s.market_value)
        for s in expected
        if s.market_value is not None
    ]
    assert [repr(p.market_value) for p in trend.points] == [
        "Decimal('19.99')",
        "Decimal('0.10')",
        "Decimal('120.00')",
    ]


async def test_price_trend_change_and_slope(store: ks.CompsStore) -> None:
    await _insert_snapshots(store, CARD, ["100.00", None, "120.00", "130.00", "140.00"])
    trend = await store.analytics.price_trend(CARD, days=30)
    assert trend.change_pct == Decimal("40.00")
    assert [p.market_value for p in trend.points] == [
        Decimal(x) for x in ("100.00", "120.00", "130.00", "140.00")
    ]
    # least squares over days 0, 2, 3, 4 and values 100, 120, 130, 140: exactly 10 a day
    assert trend.slope_per_day == Decimal("10.00")
    assert trend.direction == "up"
    flat = await store.analytics.price_trend("no such card")
    assert (flat.change_pct, flat.slope_per_day, flat.direction) == (None, None, "unknown")
    with pytest.raises(ks.InvalidInputError, match="^days"):
        await store.analytics.price_trend(CARD, days=0)


async def test_sold_searches_build_one_snapshot_per_card_per_day(
    store: ks.CompsStore, clock: ks.ManualClock
) -> None:
    for _ in range(3):  # three days, two fetches a day
        await store.comps.search(CARD)
        clock.advance(timedelta(hours=1))
        await store.comps.search(CARD, params={"pages": 2})
        clock.advance(timedelta(hours=23))
    await store.flush()
    history = await store.analytics.price_history(CARD)
    assert len(history) == 3
    assert all(h.market_value is not None and h.sample_size > 0 for h in history)


async def test_search_stats_match_counted_searches(
    store: ks.CompsStore, clock: ks.ManualClock
) -> None:
    for i in range(4):
        await store.comps.search(f"{CARD} {i}")  # 4 fetches
    for _ in range(6):
        await store.comps.search(f"{CARD} 0")  # 6 hits
    await store.comps.search(CARD, "active")  # 1 fetch
    await store.comps.search(CARD, "active")  # 1 hit
    await store.flush()
    stats = await store.analytics.search_stats()
    assert (stats.total, stats.cache_hits, stats.api_calls, stats.api_calls_saved) == (12, 7, 5, 7)
    assert stats.cache_hit_rate == round(7 / 12, 4)
    assert stats.by_type["sold"].total == 10 and stats.by_type["sold"].cache_hits == 6
    assert stats.by_type["active"].total == 2 and stats.by_type["active"].api_calls == 1
    assert stats.p50_ms is not None and stats.p95_ms is not None and stats.p50_ms <= stats.p95_ms
    later = await store.analytics.search_stats(since=clock() + timedelta(seconds=1))
    assert later.total == 0 and later.p50_ms is None


async def test_latency_percentiles_are_nearest_rank(store: ks.CompsStore) -> None:
    table = metadata.tables["searches"]
    async with store._database.engine.begin() as conn:  # type: ignore[union-attr]
        await conn.execute(
            table.insert(),
            [
                {
                    "query": "q",
                    "search_type": "sold",
                    "execution_time_ms": ms,
                    "cache_hit": ms % 2 == 0,
                }
                for ms in range(100, 0, -1)
            ],
        )
    stats = await store.analytics.search_stats()
    assert (stats.total, stats.p50_ms, stats.p95_ms) == (100, 50, 95)


async def test_top_searches_group_spellings_of_one_card(store: ks.CompsStore) -> None:
    for query in (
        CARD,
        CARD.lower(),
        "1986 FLEER Michael Jordan 57",
        "2003 Topps Chrome LeBron James #111",
    ):
        await store.comps.search(query)
    await store.flush()
    top = await store.analytics.top_searches(limit=5)
    assert [t.searches for t in top] == [3, 1]
    assert top[0].card_identifier == ks.normalize_card(CARD)
    assert top[0].cache_hits == 2
    assert top[0].last_searched_at.tzinfo is not None
    assert len(await store.analytics.top_searches(limit=1)) == 1


async def test_cache_only_store_has_no_analytics() -> None:
    async with ks.CompsStore(mode="cache_only") as store:
        with pytest.raises(ks.StorageUnavailableError):
            await store.analytics.price_history(CARD)


async def test_price_history_is_an_index_scan_on_postgres(postgres_url: str) -> None:
    await ks.migrations.upgrade_async(postgres_url)
    async with ks.CompsStore(database_url=postgres_url) as store:
        engine = store._database.engine  # type: ignore[union-attr]
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO price_snapshots (card_identifier, snapshot_date, market_value) "
                    "SELECT 'prospect-' || c, DATE '2026-01-01' + d, 10 + c % 50 "
                    "FROM generate_series(1, 1000) c, generate_series(0, 49) d"
                )
            )
            await conn.execute(sa.text("ANALYZE price_snapshots"))
        statement = store.analytics.history_statement(
            "prospect-77", date(2026, 1, 1), date(2026, 3, 1)
        )
        compiled = statement.compile(engine.sync_engine, compile_kwargs={"literal_binds": True})
        async with engine.connect() as conn:
            plan = "\n".join(r[0] for r in await conn.execute(sa.text(f"EXPLAIN {compiled}")))
        assert "Index" in plan and "Seq Scan" not in plan, plan
        assert len(await store.analytics.price_history("prospect-77")) == 50


def test_rows_of_a_model_with_private_state_are_built_by_model_construct() -> None:
    # the fast path sets fields only: a model with private attributes takes the full path
    from pydantic import PrivateAttr

    from kuya_store.analytics import _stored
    from kuya_store.models import _Frozen

    class Tally(_Frozen):
        total: int
        _seen: int = PrivateAttr(default=7)

    (got,) = _stored(Tally, ("total",), [(3,)])
    assert got == Tally.model_construct(total=3)
    assert got._seen == 7
