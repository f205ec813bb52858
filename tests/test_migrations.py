"""Migrations on SQLite and PostgreSQL: up, down, up again with data; models agree with them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from kuya_store import migrations
from kuya_store.db.tables import metadata

TABLES = {
    "searches",
    "price_snapshots",
    "listing_cache",
    "users",
    "saved_searches",
    "search_results",
}


# What the partitioned layout on PostgreSQL changes from the models (docs/schema.md): no
# foreign key may point at the partitioned searches.id, and a partition key is NOT NULL.
PARTITIONED_LAYOUT = {
    ("add_fk", "search_results_search_id_fkey"),
    ("add_fk", "listing_cache_search_id_fkey"),
    ("add_fk", "price_snapshots_search_id_fkey"),
    ("modify_nullable", "searches.created_at"),
}


def _described(difference: Any) -> tuple[str, str]:
    if isinstance(difference, list):  # column changes come as a list of one change
        (kind, _schema, table, column, *_rest) = difference[0]
        return kind, f"{table}.{column}"
    return difference[0], str(getattr(difference[1], "name", difference[1]))


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _insert_rows(url: str) -> None:
    engine = create_async_engine(url)
    moment = datetime(2026, 11, 1, 12, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            user = (
                await conn.execute(
                    sa.text("INSERT INTO users (email) VALUES ('a@example.com') RETURNING id")
                )
            ).scalar_one()
            search = (
                await conn.execute(
                    sa.text(
                        "INSERT INTO searches (query, search_type, user_id) "
                        "VALUES ('wemby', 'sold', :u) RETURNING id"
                    ),
                    {"u": user},
                )
            ).scalar_one()
            await conn.execute(
                metadata.tables["price_snapshots"].insert(),
                {
                    "card_identifier": "wemby",
                    "snapshot_date": moment.date(),
                    "market_value": Decimal("12.34"),
                    "search_id": search,
                },
            )
            await conn.execute(
                metadata.tables["listing_cache"].insert(),
                {
                    "item_id": "1",
                    "title": "t",
                    "price": Decimal("1.00"),
                    "sold": False,
                    "search_id": search,
                },
            )
            await conn.execute(
                metadata.tables["saved_searches"].insert(),
                {"user_id": user, "name": "n", "query": "q"},
            )
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade_with_rows(database_url: str) -> None:
    assert await migrations.current_async(database_url) is None
    await migrations.upgrade_async(database_url)
    assert await migrations.current_async(database_url) == migrations.head()
    assert await _tables(database_url) >= TABLES
    await _insert_rows(database_url)

    await migrations.downgrade_async(database_url, "base")
    assert await migrations.current_async(database_url) is None
    assert not (TABLES & await _tables(database_url))

    await migrations.upgrade_async(database_url)
    await _insert_rows(database_url)
    assert await migrations.current_async(database_url) == migrations.head()


def test_sync_api_from_plain_code(database_url: str) -> None:
    migrations.upgrade(database_url)
    assert migrations.current(database_url) == migrations.head()
    migrations.downgrade(database_url, "base")
    assert migrations.current(database_url) is None


async def test_sync_api_inside_a_running_loop(database_url: str) -> None:
    # As a FastAPI lifespan would call it: the loop is running in this thread.
    migrations.upgrade(database_url)
    assert migrations.current(database_url) == migrations.head()


async def test_models_and_migrations_agree(migrated_url: str) -> None:
    engine = create_async_engine(migrated_url)

    def ours_only(obj: Any, name: str | None, type_: str, reflected: bool, other: Any) -> bool:
        # A partition (searches_p2026_12_01, ...) and its indexes belong to its parent.
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return table is None or table.name in metadata.tables

    def diff(conn: sa.Connection) -> list[object]:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "version_table": migrations.VERSION_TABLE,
                "include_object": ours_only,
            },
        )
        return list(compare_metadata(context, metadata))

    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    # Only tables of other owners (our version table) may appear; nothing of ours differs.
    ours = [d for d in differences if not (isinstance(d, tuple) and d[0] == "remove_table")]
    expected = PARTITIONED_LAYOUT if migrated_url.startswith("postgresql") else set()
    assert {_described(d) for d in ours} == expected
    assert len(ours) == len(expected)


async def test_own_version_table_leaves_host_alembic_alone(database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        )
        await conn.execute(sa.text("INSERT INTO alembic_version VALUES ('hostapp01')"))
        await conn.execute(sa.text("CREATE TABLE host_things (id INTEGER PRIMARY KEY)"))
    await migrations.upgrade_async(database_url)
    await migrations.downgrade_async(database_url, "base")
    async with engine.connect() as conn:
        version = (
            await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
        ).scalar_one()
        assert version == "hostapp01"
        assert "host_things" in await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    await engine.dispose()


def test_concurrent_upgrades_on_postgres(postgres_url: str) -> None:
    code = "import sys; from kuya_store import migrations; migrations.upgrade(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, postgres_url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert migrations.current(postgres_url) == migrations.head()


async def test_bad_url_is_invalid_input_naming_the_field() -> None:
    with pytest.raises(migrations_error(), match="database_url"):
        migrations.upgrade("mysql://root:hunter2@localhost/x")


def migrations_error() -> type[Exception]:
    from kuya_store import InvalidInputError

    return InvalidInputError


def test_head_is_shipped_in_the_package() -> None:
    assert migrations.head() == "0008"
    assert asyncio.iscoroutinefunction(migrations.upgrade_async)
