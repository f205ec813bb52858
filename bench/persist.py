"""Persisting one 200-listing fetch: kuya-store's bulk upserts against a naive per-row ORM loop."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

import kuya_store as ks
from bench.records import fetch_record
from bench.stats import Target
from kuya_store.db.tables import ListingRow, SearchResultRow, SearchRow
from kuya_store.metrics import Metrics
from kuya_store.persistence import Database, FetchRecord

TARGET = 10.0


def _listings(round_: int) -> list[ks.Listing]:
    # Half the listings were seen before, half are new: a realistic re-fetch.
    return [
        ks.Listing(
            item_id=f"R{(round_ * 100 + i):07d}",
            title=f"2023 Topps Chrome Wembanyama #1 lot {i}",
            price=f"{10 + i % 50}.99",
            sold=True,
            listing_type="auction",
            bids=i % 9,
            sold_date=datetime(2026, 11, 1, tzinfo=UTC) + timedelta(minutes=i),
        )
        for i in range(200)
    ]


def _record(round_: int) -> FetchRecord:
    return fetch_record(round_, _listings(round_), datetime.now(UTC))


async def _naive(session: AsyncSession, record: FetchRecord) -> None:
    """What hand-rolled code often does: select each listing, update or add it, one by one."""
    row = SearchRow(**record.search.row())
    session.add(row)
    await session.flush()
    for position, x in enumerate(record.result.listings):
        found = (
            await session.execute(sa.select(ListingRow).where(ListingRow.item_id == x.item_id))
        ).scalar_one_or_none()
        if found is None:
            found = ListingRow(
                item_id=x.item_id,
                title=x.title,
                price=x.price,
                sold=x.sold,
                sold_date=x.sold_date,
                listing_type=x.listing_type,
                bids=x.bids,
                search_id=row.id,
                ttl=record.listing_ttl,
            )
            session.add(found)
        else:
            found.title, found.price, found.last_updated = (
                x.title,
                x.price,
                record.search.created_at,
            )
        await session.flush()
        session.add(SearchResultRow(search_id=row.id, position=position, listing_id=found.id))
    await session.commit()


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    rounds = max(5, int(30 * scale))
    print(f"\n## persist one 200-listing fetch on PostgreSQL ({rounds} fetches each)")
    database = Database(ks.StoreSettings(database_url=pg_url), Metrics())
    await ks.migrations.downgrade_async(database.engine, "base")
    await ks.migrations.upgrade_async(database.engine)
    naive_times, bulk_times = [], []
    for i in range(rounds):
        async with AsyncSession(database.engine, expire_on_commit=False) as session:
            started = time.perf_counter()
            await _naive(session, _record(i))
            naive_times.append(time.perf_counter() - started)
    await ks.migrations.downgrade_async(database.engine, "base")
    await ks.migrations.upgrade_async(database.engine)
    for i in range(rounds):
        started = time.perf_counter()
        await database.persist_fetch(_record(i))
        bulk_times.append(time.perf_counter() - started)
    await database.close()
    naive_ms = statistics.median(naive_times) * 1000
    bulk_ms = statistics.median(bulk_times) * 1000
    print(f"{'naive per-row ORM loop (baseline)':<52} median {naive_ms:8.1f} ms")
    print(f"{'kuya-store persist_fetch (bulk ON CONFLICT)':<52} median {bulk_ms:8.1f} ms")
    rate = 200 / (bulk_ms / 1000)
    ratio = naive_ms / bulk_ms
    print(f"ratio: {ratio:.1f}x faster; {rate:,.0f} listings/s upserted")
    return [
        Target(
            "persist one 200-listing fetch vs naive loop",
            f">= {TARGET:.0f}x faster",
            f"{ratio:.1f}x ({bulk_ms:.1f} vs {naive_ms:.1f} ms)",
            ratio >= TARGET,
        )
    ]
