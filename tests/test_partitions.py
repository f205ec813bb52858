"""The partitioned search log and price snapshots: the plan, the migration, ``maintain()``.

The plan is plain code tested alone; the rest runs on real PostgreSQL (and SQLite, where
retention deletes rows instead of dropping partitions).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

import kuya_store as ks
from kuya_store.cli import main
from kuya_store.db.partitions import SEARCHES, SNAPSHOTS, plan_partitions
from kuya_store.demo import FakeMarketplace

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)


# -- the plan, without servers -----------------------------------------------------------


def test_the_current_partition_and_those_ahead_are_made() -> None:
    plan = plan_partitions(SEARCHES, [], NOW, None)
    assert [p.name for p in plan.create] == [
        f"searches_p2026_01_{day:02d}" for day in range(10, 18)
    ]
    assert plan.drop == ()
    months = plan_partitions(SNAPSHOTS, ["price_snapshots_p2026_01"], NOW, None)
    assert [(p.name, p.start, p.end) for p in months.create] == [
        ("price_snapshots_p2026_02", date(2026, 2, 1), date(2026, 3, 1)),
        ("price_snapshots_p2026_03", date(2026, 3, 1), date(2026, 4, 1)),
        ("price_snapshots_p2026_04", date(2026, 4, 1), date(2026, 5, 1)),
    ]


def test_rows_in_the_default_partition_get_their_own() -> None:
    existing = [SEARCHES.name(NOW.date() + timedelta(days=d)) for d in range(8)]
    plan = plan_partitions(SEARCHES, existing, NOW, None, [date(2025, 12, 31), date(2026, 1, 2)])
    assert [p.name for p in plan.create] == ["searches_p2025_12_31", "searches_p2026_01_02"]
    year_end = plan_partitions(SNAPSHOTS, [], datetime(2026, 12, 5, tzinfo=UTC), None)
    assert [p.name for p in year_end.create][:2] == [
        "price_snapshots_p2026_12",
        "price_snapshots_p2027_01",
    ]


def test_retention_drops_whole_partitions_only() -> None:
    existing = [
        "searches_p2026_01_03",
        "searches_p2026_01_04",
        "searches_p2026_01_05",
        "searches_default",  # never a candidate
        "searches_archive",  # not a name of ours: left alone
    ]
    plan = plan_partitions(SEARCHES, existing, NOW, timedelta(days=5, hours=6))
    # Five days and six hours before noon on the 10th is 06:00 on the 5th: the 5th stays.
    assert [p.name for p in plan.drop] == ["searches_p2026_01_03", "searches_p2026_01_04"]
    # A default row older than the retention gets no partition made only to be dropped.
    old = plan_partitions(SEARCHES, existing, NOW, timedelta(days=5), [date(2026, 1, 1)])
    assert "searches_p2026_01_01" not in [p.name for p in old.create]


def test_partition_names_round_trip_and_reject_strangers() -> None:
    assert SEARCHES.parse("searches_p2026_02_29") is None  # no such day
    assert SEARCHES.parse("searches_p2026_02_28") == SEARCHES.partition(date(2026, 2, 28))
    assert SNAPSHOTS.parse("price_snapshots_p2026_13") is None
    assert SNAPSHOTS.parse("searches_p2026_01") is None


# -- the migration converts a populated database and back ---------------------------------


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


_FILL = """
INSERT INTO users (id, email) VALUES (7, 'a@example.com');
INSERT INTO searches (id, query, search_type, created_at, cache_hit, user_id, card_identifier,
                      result_key)
VALUES (1, 'wemby', 'sold', '2026-11-20 10:00+00', false, 7, 'wemby', 'k1'),
       (2, 'wemby', 'sold', '2026-11-20 23:59:59+00', true, NULL, 'wemby', NULL),
       (3, 'ohtani', 'active', '2026-11-21 00:00+00', false, NULL, 'ohtani', 'k2'),
       (4, 'ohtani', 'sold', NULL, true, NULL, 'ohtani', NULL);
SELECT setval('searches_id_seq', 4);
INSERT INTO listing_cache (id, item_id, title, price, sold, search_id)
VALUES (1, 'i1', 'Wemby PSA 10', 100.00, true, 1), (2, 'i2', 'Ohtani', 20.00, false, 3);
SELECT setval('listing_cache_id_seq', 2);
INSERT INTO search_results (search_id, position, listing_id) VALUES (1, 0, 1), (3, 0, 2);
INSERT INTO price_snapshots (id, card_identifier, search_id, snapshot_date, market_value)
VALUES (1, 'wemby', 1, '2026-10-05', 90.00), (2, 'wemby', 1, '2026-11-20', 100.00),
       (3, 'ohtani', NULL, '2026-11-21', 20.00);
SELECT setval('price_snapshots_id_seq', 3);
"""
_CONTENT = {
    "searches": "SELECT id, query, search_type, cache_hit, user_id, result_key, "
    "created_at IS NULL AS no_time FROM searches ORDER BY id",
    "listing_cache": "SELECT id, item_id, search_id FROM listing_cache ORDER BY id",
    "search_results": "SELECT * FROM search_results ORDER BY search_id, position",
    "price_snapshots": "SELECT id, card_identifier, search_id, snapshot_date, market_value "
    "FROM price_snapshots ORDER BY id",
}
_FOREIGN_KEYS = """
SELECT conname FROM pg_constraint WHERE contype = 'f' AND confrelid = 'searches'::regclass
AND conrelid IN ('search_results'::regclass, 'listing_cache'::regclass,
                 'price_snapshots'::regclass)
"""


async def _content(conn: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    return {name: [dict(r) for r in await conn.fetch(sql)] for name, sql in _CONTENT.items()}


async def _children(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        table,
    )
    return {r[0] for r in rows}


async def test_the_migration_converts_a_populated_database_and_back(postgres_url: str) -> None:
    await ks.migrations.upgrade_async(postgres_url, "0005")
    conn = await asyncpg.connect(_dsn(postgres_url))
    try:
        await conn.execute(_FILL)
        before = await _content(conn)
        assert len(await conn.fetch(_FOREIGN_KEYS)) == 3

        await ks.migrations.upgrade_async(postgres_url, "0006")
        after = await _content(conn)
        assert after["searches"][3]["no_time"] is False  # a time-less row got the migration's
        after["searches"][3]["no_time"] = True
        assert after == before
        searches = await _children(conn, "searches")
        assert {"searches_p2026_11_20", "searches_p2026_11_21", "searches_default"} <= searches
        snapshots = await _children(conn, "price_snapshots")
        assert {"price_snapshots_p2026_10", "price_snapshots_p2026_11"} <= snapshots
        assert await conn.fetchval("SELECT count(*) FROM ONLY searches_default") == 0
        assert await conn.fetchval("SELECT count(*) FROM searches_p2026_11_20") == 2
        assert await conn.fetch(_FOREIGN_KEYS) == []
        new_id = await conn.fetchval(
            "INSERT INTO searches (query, search_type) VALUES ('x', 'sold') RETURNING id"
        )
        assert new_id == 5  # the sequence carried over
        await conn.execute("DELETE FROM searches WHERE id = 5")

        await ks.migrations.downgrade_async(postgres_url, "0005")
        back = await _content(conn)
        back["searches"][3]["no_time"] = True
        assert back == before
        assert (
            await conn.fetchval(
                "SELECT relkind::text FROM pg_class WHERE oid = 'searches'::regclass"
            )
            == "r"
        )
        assert len(await conn.fetch(_FOREIGN_KEYS)) == 3
        await ks.migrations.upgrade_async(postgres_url)
        assert await ks.migrations.current_async(postgres_url) == ks.migrations.head()
    finally:
        await conn.close()


# -- maintain() on the partitioned layout --------------------------------------------------


async def _fill_days(store: ks.CompsStore, clock: ks.ManualClock, days: list[int]) -> None:
    """On each day of January 2026 (noon), a fetch and a cache hit of one card."""
    for day in days:
        clock.now = datetime(2026, 1, day, 12, tzinfo=UTC)
        await store.comps.search(f"prospect {day}")
        clock.advance(60)
        await store.comps.search(f"prospect {day}")  # a hit: the log only
    assert await store.flush()


async def test_maintain_moves_rows_out_of_the_default_and_applies_retention(
    postgres_url: str,
) -> None:
    await ks.migrations.upgrade_async(postgres_url)
    clock = ks.ManualClock(NOW)
    market = FakeMarketplace(listings=3, clock=clock)
    async with ks.CompsStore(
        database_url=postgres_url,
        fetchers={"sold": market.sold},
        clock=clock,
        search_log_retention=timedelta(days=5),
        write_flush_interval=0.01,
    ) as store:
        await _fill_days(store, clock, [1, 3, 5, 10])
        clock.now = NOW
        report = await store.maintain()
        # Rows of the 1st and 3rd are past the retention: deleted from the default partition.
        assert report.deleted_rows == 4
        # The searches of the 5th and the 10th, and the four days' snapshots (kept: no
        # snapshot retention), into the partitions made for them.
        assert report.moved_rows == 4 + 4
        assert {"searches_p2026_01_05", "searches_p2026_01_10"} <= set(report.created)
        assert "searches_p2026_01_17" in report.created  # a week ahead
        assert report.dropped == [] and report.partman is False
        again = await store.maintain()
        assert (again.created, again.dropped, again.moved_rows) == ([], [], 0)

        conn = await asyncpg.connect(_dsn(postgres_url))
        try:
            assert await conn.fetchval("SELECT count(*) FROM ONLY searches_default") == 0
            assert await conn.fetchval("SELECT count(*) FROM searches_p2026_01_05") == 2
            # A time-bounded query reads one partition.
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN SELECT count(*) FROM searches WHERE created_at >= "
                    "'2026-01-10 00:00+00' AND created_at < '2026-01-11 00:00+00'"
                )
            )
            assert "searches_p2026_01_10" in plan
            assert "searches_p2026_01_05" not in plan and "searches_default" not in plan
            clock.now = NOW + timedelta(days=3)
            later = await store.maintain()
            assert later.dropped == ["searches_p2026_01_05"]
            # What pointed at the dropped searches went the way the foreign keys would have.
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM search_results r "
                    "WHERE NOT EXISTS (SELECT 1 FROM searches s WHERE s.id = r.search_id)"
                )
                == 0
            )
            for table in ("listing_cache", "price_snapshots"):
                dangling = await conn.fetchval(
                    f"SELECT count(*) FROM {table} t WHERE t.search_id IS NOT NULL "
                    "AND NOT EXISTS (SELECT 1 FROM searches s WHERE s.id = t.search_id)"
                )
                assert dangling == 0, table
            assert await conn.fetchval("SELECT count(*) FROM searches") == 2  # the 10th
            assert await conn.fetchval("SELECT count(*) FROM price_snapshots") == 4  # kept
        finally:
            await conn.close()


async def test_purge_and_analytics_on_the_layout_after_maintain(migrated_url: str) -> None:
    clock = ks.ManualClock(NOW)
    market = FakeMarketplace(listings=3, clock=clock)
    async with ks.CompsStore(
        database_url=migrated_url,
        fetchers={"sold": market.sold},
        clock=clock,
        write_flush_interval=0.01,
    ) as store:
        await _fill_days(store, clock, [2, 4, 6, 8])
        clock.now = NOW
        await store.maintain()  # PostgreSQL: every row now in a partition of its own day
        stats = await store.analytics.search_stats(since=datetime(2026, 1, 4, tzinfo=UTC))
        assert (stats.total, stats.cache_hits) == (6, 3)
        top = await store.analytics.top_searches(limit=10, since=datetime(2026, 1, 6, tzinfo=UTC))
        assert sorted(t.card_identifier for t in top) == ["prospect-6", "prospect-8"]
        history = await store.analytics.price_history("prospect 4")
        assert [s.snapshot_date for s in history] == [date(2026, 1, 4)]
        report = await store.backup.purge_since(datetime(2026, 1, 5, tzinfo=UTC))
        assert (report.searches, report.snapshots) == (4, 2)
        stats = await store.analytics.search_stats()
        assert stats.total == 4


async def test_sqlite_retention_deletes_rows(sqlite_url: str) -> None:
    await ks.migrations.upgrade_async(sqlite_url)
    clock = ks.ManualClock(NOW)
    market = FakeMarketplace(listings=3, clock=clock)
    async with ks.CompsStore(
        database_url=sqlite_url,
        fetchers={"sold": market.sold},
        clock=clock,
        search_log_retention=timedelta(days=5),
        snapshot_retention=timedelta(days=7),
        write_flush_interval=0.01,
    ) as store:
        await _fill_days(store, clock, [1, 3, 5, 10])
        clock.now = NOW
        report = await store.maintain()
        assert report.created == [] and report.dropped == []
        assert report.deleted_rows == 4 + 1  # the searches of the 1st and 3rd, one snapshot
        assert (await store.analytics.search_stats()).total == 4


def test_db_maintain_command(sqlite_url: str) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade", "--database-url", sqlite_url]).exit_code == 0
    result = runner.invoke(
        main, ["db", "maintain", "--database-url", sqlite_url, "--search-log-retention", "P30D"]
    )
    assert result.exit_code == 0, result.output
    assert "created 0 partition(s)" in result.output
    bad = runner.invoke(
        main, ["db", "maintain", "--database-url", sqlite_url, "--search-log-retention", "soon"]
    )
    assert bad.exit_code == 2 and "search_log_retention" in bad.output


# -- pg_partman, when the extension is installed ------------------------------------------


async def test_pg_partman_is_registered_and_keeps_both_tables(
    replicated_db: tuple[str, str], streaming_pair: Any
) -> None:
    from kuya_store.testing.pg_cluster import install_partman

    primary, _ = replicated_db
    install_partman(streaming_pair.primary, make_url(primary).database)
    await ks.migrations.upgrade_async(primary)
    clock = ks.ManualClock(NOW)
    market = FakeMarketplace(listings=2, clock=clock)
    async with ks.CompsStore(
        database_url=primary, fetchers={"sold": market.sold}, clock=clock
    ) as store:
        await _fill_days(store, clock, [3])  # lands in the default partition
        report = await store.maintain()
        assert report.partman is True
        assert "searches_p2026_01_03" in report.created
        assert report.moved_rows == 2 + 1  # the two searches and the snapshot
        conn = await asyncpg.connect(_dsn(primary))
        try:
            config = {
                r["parent_table"]: (r["partition_interval"], r["retention"])
                for r in await conn.fetch(
                    "SELECT parent_table, partition_interval::text, retention "
                    "FROM partman.part_config"
                )
            }
            assert config == {
                "public.searches": ("1 day", None),
                "public.price_snapshots": ("1 mon", None),
            }
            assert "searches_default" in await _children(conn, "searches")
            assert await conn.fetchval("SELECT count(*) FROM searches_p2026_01_03") == 2
        finally:
            await conn.close()
        assert (await store.maintain()).created == []  # registered once
        await ks.migrations.downgrade_async(primary, "0005")  # partman lets go of them
        assert await ks.migrations.current_async(primary) == "0005"


@pytest.mark.parametrize("retention", ["-P1D", "0"])
def test_retention_must_be_positive(retention: str) -> None:
    with pytest.raises(ks.InvalidInputError, match="search_log_retention"):
        ks.StoreSettings(search_log_retention=retention)
