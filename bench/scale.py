"""The partitioned search log at 10 million rows over 90 days (``docs/scaling.md``).

Two databases get the same rows, loaded server-side (``INSERT .. SELECT FROM
generate_series``), 90% cache hits, 50,000 cards of log-uniform popularity: one at revision
0003 (one table, the foreign keys pointing at it), one at the newest revision (a partition
per UTC day). Then, in this order:

- a time-bounded query (one day of the log) with partition pruning, against the same query
  with ``enable_partition_pruning`` off and against the one table of revision 0003;
- ``search_stats()`` from the materialized views against the live query (``fresh=True``);
- the retention purge of the oldest 30 days: ``maintain()`` dropping partitions against
  ``DELETE`` on the table of revision 0003 (its foreign keys fire for every row), and what
  a ``VACUUM`` then adds to give the space back.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg

import kuya_store as ks
from bench.servers import drop_database
from bench.stats import Target, pct
from kuya_store.db.maintenance import maintain
from kuya_store.db.partitions import SEARCHES

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 90
# Card popularity is log-uniform (card k searched about 1/k as often as card 1, as search
# logs are: a few cards most of the time); hits answer in 1-8 ms, fetches in 0.2-3 s.
LOAD = """
INSERT INTO searches (query, search_type, created_at, execution_time_ms, cache_hit,
                      card_identifier, result_key)
SELECT 'Prospect ' || card, CASE WHEN g % 4 = 0 THEN 'active' ELSE 'sold' END,
       timestamptz '2026-01-01 00:00+00' + (g::float8 / {rows} * {days}) * interval '1 day',
       CASE WHEN g % 10 = 0 THEN 200 + (g::bigint * 7919) % 2800 ELSE 1 + g % 8 END,
       g % 10 <> 0, 'prospect-' || card,
       CASE WHEN g % 10 = 0 THEN md5(card::text) END
FROM generate_series(0, {rows} - 1) AS g,
     LATERAL (SELECT floor(exp(((g::bigint * 2654435761) % 1000003) / 1000003.0
                               * ln(50000)))::int - 1 AS card) AS pick
"""
ONE_DAY = (
    "SELECT count(*), sum(CASE WHEN cache_hit THEN 1 ELSE 0 END) FROM searches "
    "WHERE created_at >= $1 AND created_at < $2"
)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _database(pg_url: str, admin: asyncpg.Connection, revision: str) -> str:
    name = f"bench_scale_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = pg_url.rsplit("/", 1)[0] + f"/{name}"
    await ks.migrations.upgrade_async(url, revision)
    return url


async def _load(url: str, rows: int, partitioned: bool) -> float:
    conn = await asyncpg.connect(_dsn(url), command_timeout=3600)
    try:
        if partitioned:
            for offset in range(DAYS + 1):
                partition = SEARCHES.partition(START.date() + timedelta(days=offset))
                exists = await conn.fetchval("SELECT to_regclass($1)", partition.name)
                if exists is None:
                    await conn.execute(SEARCHES.create_sql(partition))
        started = time.perf_counter()
        await conn.execute(LOAD.format(rows=rows, days=DAYS))
        await conn.execute("VACUUM ANALYZE searches")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _timed(conn: asyncpg.Connection, sql: str, *args: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await conn.fetch(sql, *args)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def _one_day(url: str, n: int, pruning: bool = True) -> float:
    conn = await asyncpg.connect(_dsn(url))
    try:
        if not pruning:
            await conn.execute("SET enable_partition_pruning = off")
        day = START + timedelta(days=45)
        args = (day, day + timedelta(days=1))
        await _timed(conn, ONE_DAY, *args, n=3)
        return pct(await _timed(conn, ONE_DAY, *args, n=n), 50)
    finally:
        await conn.close()


async def _pruning(url: str, legacy: str, n: int) -> tuple[float, float, float]:
    """One day's rows: pruned, pruning off, and from the one table of revision 0003."""
    return await _one_day(url, n), await _one_day(url, n, False), await _one_day(legacy, n)


async def _stats(url: str, now: datetime, live_runs: int) -> tuple[float, float, float, bool]:
    settings = ks.StoreSettings(database_url=url, db_command_timeout=3600)
    async with ks.CompsStore(settings, clock=lambda: now) as store:
        started = time.perf_counter()
        await store.maintain()  # refreshes the views
        refresh = time.perf_counter() - started
        await store.analytics.search_stats()
        view = []
        for _ in range(10):
            started = time.perf_counter()
            from_view = await store.analytics.search_stats()
            view.append((time.perf_counter() - started) * 1000)
        live = []
        for _ in range(live_runs):
            started = time.perf_counter()
            from_log = await store.analytics.search_stats(fresh=True)
            live.append((time.perf_counter() - started) * 1000)
    return pct(view, 50), pct(live, 50), refresh, from_view == from_log


async def _purge_by_drop(url: str, now: datetime) -> tuple[float, int]:
    settings = ks.StoreSettings(
        database_url=url, search_log_retention=timedelta(days=DAYS - 30), db_command_timeout=3600
    )
    async with ks.CompsStore(settings) as store:
        assert store._database is not None
        started = time.perf_counter()
        report = await maintain(store._database.engine, settings, now, views=False)
        return time.perf_counter() - started, len(report.dropped)


async def _purge_by_delete(url: str, cutoff: date) -> tuple[float, float, int]:
    conn = await asyncpg.connect(_dsn(url), command_timeout=3600)
    try:
        started = time.perf_counter()
        status = await conn.execute(
            "DELETE FROM searches WHERE created_at < $1",
            datetime.combine(cutoff, datetime.min.time(), UTC),
        )
        deleted = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("VACUUM searches")
        vacuumed = time.perf_counter() - started
    finally:
        await conn.close()
    return deleted, vacuumed, int(status.split()[-1])


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    # A smoke run (scale < 1) loads 30,000: it only checks that every step runs.
    rows = int(10_000_000 * scale**2) if scale >= 1 else 30_000
    now = START + timedelta(days=DAYS)
    cutoff = (now - timedelta(days=DAYS - 30)).date()
    print(f"\n## the partitioned search log: {rows:,} rows over {DAYS} days")
    admin = await asyncpg.connect(_dsn(pg_url))
    made: list[str] = []
    try:
        partitioned = await _database(pg_url, admin, "head")
        legacy = await _database(pg_url, admin, "0003")
        made = [partitioned, legacy]
        for url, kind in ((partitioned, True), (legacy, False)):
            seconds = await _load(url, rows, kind)
            layout = "partitioned by day" if kind else "one table (revision 0003)"
            print(f"loaded {rows:,} rows, {layout}: {seconds:.1f} s (with VACUUM ANALYZE)")

        pruned, unpruned, single = await _pruning(partitioned, legacy, 20 if scale >= 1 else 5)
        print(f"one day's rows, pruned to one partition    p50 {pruned:9.2f} ms")
        print(f"the same query, pruning off (every one)    p50 {unpruned:9.2f} ms")
        print(f"the same query on one table (rev. 0003)    p50 {single:9.2f} ms")

        view, live, refresh, same = await _stats(partitioned, now, 3 if scale >= 1 else 2)
        print(f"search_stats() from the views              p50 {view:9.2f} ms")
        print(f"search_stats(fresh=True), the live query   p50 {live:9.2f} ms")
        print(f"refreshing the views (maintain)            {refresh * 1000:9.0f} ms")
        print(f"the views' answer is the live one: {same}")

        dropped_s, dropped = await _purge_by_drop(partitioned, now)
        deleted_s, vacuum_s, deleted = await _purge_by_delete(legacy, cutoff)
        print(f"purge 30 days: drop {dropped} partitions        {dropped_s * 1000:9.1f} ms")
        print(f"purge 30 days: DELETE {deleted:,} rows       {deleted_s * 1000:9.1f} ms")
        print(f"  and the VACUUM that gives the space back  {vacuum_s * 1000:9.1f} ms")
    finally:
        for url in made:
            name = url.rsplit("/", 1)[1]
            await drop_database(admin, name)
        await admin.close()
    purge_ratio = deleted_s / max(dropped_s, 1e-9)
    stats_ratio = live / max(view, 1e-9)
    return [
        Target(
            "retention purge of 30 of 90 days: partition drop vs DELETE",
            ">= 100x faster",
            f"{purge_ratio:.0f}x ({dropped_s * 1000:.0f} ms vs {deleted_s:.1f} s; {rows:,} rows)",
            purge_ratio >= 100,
        ),
        Target(
            "search_stats from the views vs live",
            ">= 50x faster",
            f"{stats_ratio:.0f}x ({view:.1f} ms vs {live:.0f} ms; same answer: {same})",
            stats_ratio >= 50 and same,
        ),
        Target(
            "one day of the log: pruned vs pruning off vs one table (no target)",
            "report",
            f"{pruned:.1f} / {unpruned:.1f} / {single:.1f} ms p50",
            True,
        ),
    ]
