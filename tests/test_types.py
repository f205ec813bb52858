"""Money and moments round-trip exactly on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import StatementError

from kuya_store.db.checks import ping
from kuya_store.db.engine import create_engine
from kuya_store.db.tables import metadata
from kuya_store.settings import StoreSettings

AMOUNTS = [
    Decimal(x) for x in ("0.00", "0.01", "0.10", "19.99", "1234567.89", "99999999.99", "33.33")
]


@pytest.fixture
async def engine(migrated_url: str):  # type: ignore[no-untyped-def]
    # The library's own engine: foreign keys on and WAL for SQLite, the tuned pool for PostgreSQL.
    engine = create_engine(StoreSettings(database_url=migrated_url))
    yield engine
    await engine.dispose()


async def test_decimal_round_trip_is_exact(engine) -> None:  # type: ignore[no-untyped-def]
    table = metadata.tables["listing_cache"]
    async with engine.begin() as conn:
        await conn.execute(
            table.insert(),
            [
                {"item_id": str(i), "title": "t", "price": amount}
                for i, amount in enumerate(AMOUNTS)
            ],
        )
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(table.c.price).order_by(table.c.id))).scalars().all()
        total = (await conn.execute(sa.select(sa.func.max(table.c.price)))).scalar_one()
        cheap = (
            await conn.execute(sa.select(sa.func.count()).where(table.c.price < Decimal("20.00")))
        ).scalar_one()
    assert rows == AMOUNTS
    assert all(isinstance(r, Decimal) and r.as_tuple().exponent == -2 for r in rows)
    assert total == Decimal("99999999.99")
    assert cheap == 4  # ordering and comparisons are numeric, not textual


async def test_timestamps_come_back_aware_utc(engine) -> None:  # type: ignore[no-untyped-def]
    table = metadata.tables["listing_cache"]
    manila = timezone(timedelta(hours=8))
    moment = datetime(2026, 11, 25, 20, 30, 15, 123456, tzinfo=manila)
    async with engine.begin() as conn:
        await conn.execute(table.insert(), {"item_id": "x", "title": "t", "sold_date": moment})
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(table.c.sold_date, table.c.first_seen))).one()
    assert row.sold_date == moment
    assert row.sold_date.tzinfo == UTC
    assert row.first_seen.tzinfo == UTC  # the server default, read back aware too
    assert abs(row.first_seen - datetime.now(UTC)) < timedelta(minutes=5)


async def test_naive_datetimes_are_rejected(engine) -> None:  # type: ignore[no-untyped-def]
    table = metadata.tables["listing_cache"]
    async with engine.begin() as conn:
        with pytest.raises(StatementError, match="naive datetime"):
            await conn.execute(
                table.insert(), {"item_id": "x", "title": "t", "ttl": datetime(2026, 1, 1)}
            )


async def test_json_columns_round_trip(engine) -> None:  # type: ignore[no-untyped-def]
    table = metadata.tables["searches"]
    filters = {"raw_only": True, "base_only": False, "exclude_auto": True}
    async with engine.begin() as conn:
        await conn.execute(
            table.insert(), {"query": "q", "search_type": "sold", "filters": filters}
        )
        await conn.execute(table.insert(), {"query": "q", "search_type": "sold", "filters": None})
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(table.c.filters).order_by(table.c.id))).scalars().all()
        nulls = (
            await conn.execute(sa.select(sa.func.count()).where(table.c.filters.is_(None)))
        ).scalar_one()
    assert rows == [filters, None]
    assert nulls == 1  # a missing value is SQL NULL, not JSON 'null'


async def test_foreign_keys_are_enforced(engine) -> None:  # type: ignore[no-untyped-def]
    table = metadata.tables["saved_searches"]
    async with engine.begin() as conn:
        with pytest.raises(sa.exc.IntegrityError):
            await conn.execute(table.insert(), {"user_id": 999, "name": "n", "query": "q"})


async def test_sqlite_runs_with_wal(sqlite_url: str) -> None:
    engine = create_engine(StoreSettings(database_url=sqlite_url))
    async with engine.connect() as conn:
        mode = (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar_one()
        keys = (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar_one()
    await engine.dispose()
    assert (mode, keys) == ("wal", 1)


def test_postgres_engine_uses_a_checked_pool_and_statement_cache(postgres_url: str) -> None:
    settings = StoreSettings(
        database_url=postgres_url, pool_size=7, statement_cache_size=321, pool_check_window=0
    )
    engine = create_engine(settings)
    pool = engine.sync_engine.pool
    # Without a check window each checkout checks the connection (one round trip), as
    # pool_pre_ping would; the window's reads are tested in test_unchecked_reads.py.
    assert sa.event.contains(engine.sync_engine, "checkout", ping)
    assert pool.size() == 7  # type: ignore[attr-defined]
    import asyncio

    async def probe() -> int:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            # The driver adapter's LRU of prepared statements, sized by the setting.
            return int(raw.dbapi_connection._prepared_statement_cache.capacity)  # type: ignore[union-attr]

    assert asyncio.run(probe()) == 321
    asyncio.run(engine.dispose())
