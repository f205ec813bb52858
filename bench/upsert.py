"""Bulk upsert throughput: ``Database.persist_fetch`` against raw asyncpg ``executemany``.

Both write the same fetches (1,000 listings each, half of them seen by the fetch before)
into ``listing_cache`` of a freshly migrated schema, one transaction per fetch, with
``INSERT .. ON CONFLICT (item_id) DO UPDATE``. kuya-store's transaction also writes the
fetch's ``searches`` row and its 1,000 ``search_results`` links; the baseline writes only
the listings, so the comparison is tilted towards the baseline.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

import kuya_store as ks
from bench.records import fetch_record
from bench.stats import Target
from kuya_store.metrics import Metrics
from kuya_store.persistence import LISTING_UPDATE_COLUMNS, Database, FetchRecord

# The same columns as kuya-store writes, so both sides do the same work per row.
UPDATED = LISTING_UPDATE_COLUMNS
COLUMNS = ("item_id", "first_seen", *UPDATED)
UPSERT = (
    f"INSERT INTO listing_cache ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "
    f"ON CONFLICT (item_id) DO UPDATE SET "
    f"{', '.join(f'{c} = EXCLUDED.{c}' for c in UPDATED)}"
)
START = datetime(2026, 11, 1, tzinfo=UTC)


def _listings(fetch: int, size: int) -> list[ks.Listing]:
    first = fetch * size // 2
    return [
        ks.Listing(
            item_id=f"U{first + i:09d}",
            title=f"2023 Topps Chrome Wembanyama #1 lot {first + i}",
            price=Decimal(10 + (first + i) % 50) + Decimal("0.99"),
            sold=True,
            listing_type="auction",
            condition="Ungraded",
            bids=i % 9,
            watchers=i % 13,
            sold_date=START + timedelta(minutes=first + i),
        )
        for i in range(size)
    ]


def _record(fetch: int, listings: list[ks.Listing]) -> FetchRecord:
    return fetch_record(fetch, listings, START + timedelta(hours=fetch))


def _rows(record: FetchRecord, search_id: int) -> list[tuple[object, ...]]:
    moment = record.search.created_at
    rows = []
    for x in sorted(record.result.listings, key=lambda x: x.item_id):
        values = {
            **x.model_dump(include=set(COLUMNS)),
            "first_seen": moment,
            "last_updated": moment,
            "ttl": record.listing_ttl,
            "search_id": search_id,
        }
        rows.append(tuple(values[name] for name in COLUMNS))
    return rows


async def _fresh_schema(database: Database) -> None:
    await ks.migrations.downgrade_async(database.engine, "base")
    await ks.migrations.upgrade_async(database.engine)


async def _asyncpg(dsn: str, database: Database, records: list[FetchRecord]) -> float:
    await _fresh_schema(database)
    conn = await asyncpg.connect(dsn)
    try:
        search_id = await conn.fetchval(
            "INSERT INTO searches (query, search_type) VALUES ('wemby', 'sold') RETURNING id"
        )
        batches = [_rows(r, search_id) for r in records]  # built before the clock starts
        started = time.perf_counter()
        for rows in batches:
            async with conn.transaction():
                await conn.executemany(UPSERT, rows)
        elapsed = time.perf_counter() - started
        stored = await conn.fetchval("SELECT count(*) FROM listing_cache")
    finally:
        await conn.close()
    assert stored == _distinct(records), stored
    return elapsed


async def _kuya(database: Database, records: list[FetchRecord]) -> float:
    await _fresh_schema(database)
    assert await database.ping()
    started = time.perf_counter()
    for record in records:
        await database.persist_fetch(record)
    elapsed = time.perf_counter() - started
    async with database.engine.connect() as conn:
        stored = (await conn.exec_driver_sql("SELECT count(*) FROM listing_cache")).scalar_one()
    assert stored == _distinct(records), stored
    return elapsed


def _distinct(records: list[FetchRecord]) -> int:
    return len({x.item_id for r in records for x in r.result.listings})


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    fetches, size = max(4, int(20 * scale)), 1000
    total = fetches * size
    print(f"\n## bulk upsert on PostgreSQL ({fetches} fetches x {size:,} listings, best of 2)")
    records = [_record(f, _listings(f, size)) for f in range(fetches)]
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    database = Database(ks.StoreSettings(database_url=pg_url), Metrics())
    try:
        raw_times, ours_times = [], []
        for _ in range(2):  # alternate, so neither side always runs on a warmer server
            raw_times.append(await _asyncpg(dsn, database, records))
            ours_times.append(await _kuya(database, records))
        await ks.migrations.downgrade_async(database.engine, "base")
    finally:
        await database.close()
    raw_rate = total / min(raw_times)
    ours_rate = total / min(ours_times)
    print(f"{'asyncpg executemany ON CONFLICT (baseline)':<52} {raw_rate:12,.0f} listings/s")
    print(f"{'kuya-store persist_fetch':<52} {ours_rate:12,.0f} listings/s")
    print(f"ratio: kuya-store/asyncpg = {ours_rate / raw_rate:.2f}x the throughput")
    return []
