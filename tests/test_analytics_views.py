"""Analytics from the materialized views give the live queries' answers on the same data."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import kuya_store as ks
from kuya_store.analytics_views import VIEWS, Histogram, nearest_rank

# 3,000 searches over about eleven days: both search types, cache hits and misses, latencies
# with repeats and gaps, rows without a latency and rows without a card identifier.
FILL = """
INSERT INTO searches (query, search_type, created_at, execution_time_ms, cache_hit,
                      card_identifier)
SELECT 'Prospect ' || (g % 37), CASE WHEN g % 3 = 0 THEN 'active' ELSE 'sold' END,
       timestamptz '2026-01-01 00:00+00' + g * interval '317 seconds',
       CASE WHEN g % 11 = 0 THEN NULL ELSE (g * 7919) % 500 END,
       g % 4 <> 0,
       CASE WHEN g % 13 = 0 THEN NULL ELSE 'prospect-' || (g % 37) END
FROM generate_series(1, 3000) AS g
"""
REFRESHED_AT = datetime(2026, 1, 7, 12, tzinfo=UTC)
SINCE = [
    None,
    datetime(2025, 12, 1, tzinfo=UTC),  # before every row
    datetime(2026, 1, 3, tzinfo=UTC),  # a UTC midnight
    datetime(2026, 1, 3, 5, 17, 11, tzinfo=UTC),  # inside a day
    datetime(2026, 1, 7, 11, 58, tzinfo=UTC),  # the watermark's day, before it
    datetime(2026, 1, 7, 11, 59, 30, tzinfo=UTC),  # after the watermark
    datetime(2026, 2, 1, tzinfo=UTC),  # after every row
]


def _live_percentile(values: list[int | None], p: int) -> int | None:
    """The live query, as plain code: offset from every row, read among the timed ones."""
    if not values:
        return None
    offset = min(len(values) - 1, max(0, -(-p * len(values) // 100) - 1))
    timed = sorted(v for v in values if v is not None)
    return timed[offset] if offset < len(timed) else None


def test_percentiles_from_a_histogram_are_the_live_ones() -> None:
    rng = random.Random(7)
    for _ in range(500):
        values = [rng.choice([None, *range(rng.randint(1, 30))]) for _ in range(rng.randint(0, 40))]
        counts: dict[int | None, int] = {}
        for v in values:
            counts[v] = counts.get(v, 0) + 1
        for p in (1, 50, 95, 100):
            assert nearest_rank(Histogram(counts, 0), p) == _live_percentile(values, p), values


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _same_answers(store: ks.CompsStore) -> None:
    analytics = store.analytics
    for since in SINCE:
        assert await analytics.search_stats(since) == await analytics.search_stats(
            since, fresh=True
        ), since
        for limit in (3, 1000):
            assert await analytics.top_searches(limit, since) == await analytics.top_searches(
                limit, since, fresh=True
            ), (since, limit)
    for card in ("prospect 5", "Prospect 26"):
        assert await analytics.daily_searches(card, days=60) == await analytics.daily_searches(
            card, days=60, fresh=True
        )


@pytest.fixture
async def filled(postgres_url: str) -> str:
    await ks.migrations.upgrade_async(postgres_url)
    await _execute(postgres_url, FILL)
    return postgres_url


async def test_views_give_the_live_answers(filled: str) -> None:
    clock = ks.ManualClock(REFRESHED_AT)
    async with ks.CompsStore(database_url=filled, clock=clock) as store:
        await _same_answers(store)  # never refreshed: everything is the live part
        report = await store.maintain()
        assert report.views_refreshed == list(VIEWS)
        await _same_answers(store)
        stats = await store.analytics.search_stats()
        assert stats.total == 3000 and set(stats.by_type) == {"sold", "active"}
        assert stats.p50_ms is not None
        daily = await store.analytics.daily_searches("prospect 5", days=60)
        expected = sum(1 for g in range(1, 3001) if g % 37 == 5 and g % 13 != 0)
        assert sum(d.searches for d in daily) == expected
        assert daily[0].day >= date(2026, 1, 1)


async def test_the_views_answer_and_only_a_refresh_sees_late_rows(filled: str) -> None:
    clock = ks.ManualClock(REFRESHED_AT)
    async with ks.CompsStore(database_url=filled, clock=clock) as store:
        await store.maintain()
        # Rows after the watermark are live at once.
        await _execute(
            filled,
            "INSERT INTO searches (query, search_type, created_at, execution_time_ms, "
            "cache_hit, card_identifier) VALUES ('new', 'sold', '2026-01-20 10:00+00', 3, "
            "false, 'new')",
        )
        await _same_answers(store)
        # A row written late, below the watermark, and one deleted below it: the views
        # still count what they were refreshed with (proof that they answered) ...
        await _execute(
            filled,
            "DELETE FROM searches WHERE created_at < '2026-01-02 00:00+00' AND cache_hit; "
            "INSERT INTO searches (query, search_type, created_at, cache_hit, card_identifier) "
            "VALUES ('late', 'active', '2026-01-05 09:00+00', true, 'late')",
        )
        kept = await store.analytics.search_stats()
        live = await store.analytics.search_stats(fresh=True)
        assert kept.total != live.total
        # ... until the next refresh.
        clock.advance(timedelta(minutes=5))
        await store.maintain()
        await _same_answers(store)


async def test_sqlite_answers_live_whatever_fresh_says(sqlite_url: str) -> None:
    await ks.migrations.upgrade_async(sqlite_url)
    clock = ks.ManualClock(REFRESHED_AT)
    fetch = ks.FetchResult(listings=[])
    async with ks.CompsStore(database_url=sqlite_url, clock=clock) as store:
        for i in range(5):
            await store.comps.search(f"prospect {i % 2}", fetcher=lambda request: fetch)
            clock.advance(timedelta(hours=7))
        assert await store.flush()
        report = await store.maintain()
        assert report.views_refreshed == []
        await _same_answers(store)
        daily = await store.analytics.daily_searches("prospect 0", days=10)
        # Searched at noon on the 7th, then 02:00 and 16:00 on the 8th.
        assert [(d.day.day, d.searches) for d in daily] == [(7, 1), (8, 2)]
