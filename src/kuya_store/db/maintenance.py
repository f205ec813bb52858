"""``store.maintain()``: partitions ahead, retention, and refreshed analytics views.

Run it on a schedule (``kuya-store db maintain`` from cron, every few minutes). Each table
is kept in its own transaction, under an advisory lock so two schedulers take turns, with
a ``lock_timeout`` so a long query never makes every search queue behind maintenance.

On PostgreSQL with the partitioned layout: missing partitions are created (the current
one, those ahead, and those that rows caught by the default partition belong to, which
move there); with pg_partman installed it is registered for both tables and its
``run_maintenance`` creates partitions on its own schedule as well (never retention:
dropping a search-log partition must first clear what points at its searches, which only
the store knows). Partitions wholly older than the retention are dropped. On SQLite, or a
table that is not partitioned, retention deletes the rows instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kuya_store.analytics_views import refresh_views
from kuya_store.db.partitions import (
    PARTITIONED,
    SEARCHES,
    Partition,
    PartitionSpec,
    plan_partitions,
    retention_cutoff,
)
from kuya_store.db.tables import metadata
from kuya_store.models import _Frozen
from kuya_store.settings import StoreSettings

__all__ = ["MAINTENANCE_LOCK_KEY", "MaintenanceReport", "maintain", "release_search_ids"]

MAINTENANCE_LOCK_KEY = 0x6B757962
"""PostgreSQL advisory lock held by maintenance, so two schedulers never overlap."""
_LOCK_TIMEOUT = "10s"
# Columns that point at searches.id: (table, column, what deleting the search does).
_REFERENCES = (
    ("search_results", "search_id", "delete"),
    ("listing_cache", "search_id", "null"),
    ("price_snapshots", "search_id", "null"),
)


class MaintenanceReport(_Frozen):
    """What ``maintain()`` did to the partitioned tables, for a scheduled job to log."""

    created: list[str] = Field(default_factory=list)
    """Partitions created."""
    dropped: list[str] = Field(default_factory=list)
    """Partitions dropped by retention."""
    moved_rows: int = 0
    """Rows moved from a default partition into the partition made for them."""
    deleted_rows: int = 0
    """Rows retention deleted one by one (SQLite, unpartitioned tables, default partitions)."""
    views_refreshed: list[str] = Field(default_factory=list)
    partman: bool = False
    """pg_partman is installed and keeps the partitions too."""


def _retention(settings: StoreSettings, spec: PartitionSpec) -> timedelta | None:
    return settings.search_log_retention if spec is SEARCHES else settings.snapshot_retention


async def release_search_ids(conn: AsyncConnection, source: str, where: str = "TRUE") -> None:
    """Do what the foreign keys to ``searches`` did before the table was partitioned.

    For the searches ``SELECT id FROM {source} WHERE {where}`` names, before they go: their
    result links are deleted, and listings and snapshots that name them keep no search.
    Only the rows that can point at them are read: those in the searches' id range (each
    referencing column is indexed), then checked against ``source``'s own key.
    """
    bounds = f"SELECT min(id), max(id) FROM {source} WHERE {where}"
    low, high = (await conn.execute(sa.text(bounds))).one()
    if low is None:
        return
    for table, column, action in _REFERENCES:
        named = await conn.execute(
            sa.text(f"SELECT DISTINCT {column} FROM {table} WHERE {column} BETWEEN :low AND :high"),
            {"low": low, "high": high},
        )
        candidates = [r[0] for r in named]
        if not candidates:
            continue
        going = [
            r[0]
            for r in await conn.execute(
                sa.text(f"SELECT id FROM {source} WHERE ({where}) AND id = ANY(:ids)"),
                {"ids": candidates},
            )
        ]
        if not going:
            continue
        target = (
            f"DELETE FROM {table}" if action == "delete" else f"UPDATE {table} SET {column} = NULL"
        )
        await conn.execute(sa.text(f"{target} WHERE {column} = ANY(:ids)"), {"ids": going})


async def _partman_schema(conn: AsyncConnection) -> str | None:
    schema = await conn.scalar(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pg_partman'"
        )
    )
    return None if schema is None else str(schema)


async def _is_partitioned(conn: AsyncConnection, table: str) -> bool:
    kind = await conn.scalar(
        sa.text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:table)"),
        {"table": table},
    )
    return bool(kind == "p")


async def _partitions(conn: AsyncConnection, table: str) -> list[str]:
    rows = await conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:table)"
        ),
        {"table": table},
    )
    return [r[0] for r in rows]


async def _register_partman(conn: AsyncConnection, schema: str, spec: PartitionSpec) -> None:
    """Hand the table to pg_partman, once; it makes its own default partition, so ours moves."""
    parent = f"{await conn.scalar(sa.text('SELECT current_schema()'))}.{spec.table}"
    known = await conn.scalar(
        sa.text(f"SELECT 1 FROM {schema}.part_config WHERE parent_table = :parent"),
        {"parent": parent},
    )
    if known:
        return
    moving = f"{spec.table}_default_moving"
    await conn.execute(sa.text(f"ALTER TABLE {spec.table} DETACH PARTITION {spec.default}"))
    await conn.execute(sa.text(f"ALTER TABLE {spec.default} RENAME TO {moving}"))
    await conn.execute(
        sa.text(
            f"SELECT {schema}.create_parent(p_parent_table => :parent, p_control => :column, "
            "p_type => 'native', p_interval => :interval, p_premake => :premake, "
            "p_jobmon => false)"
        ),
        {
            "parent": parent,
            "column": spec.column,
            "interval": spec.partman_interval,
            "premake": spec.premake,
        },
    )
    await conn.execute(
        sa.text(
            f"UPDATE {schema}.part_config SET infinite_time_partitions = true, retention = NULL "
            "WHERE parent_table = :parent"
        ),
        {"parent": parent},
    )
    await conn.execute(sa.text(f"INSERT INTO {spec.table} SELECT * FROM {moving}"))
    await conn.execute(sa.text(f"DROP TABLE {moving}"))


async def _create(conn: AsyncConnection, spec: PartitionSpec, partition: Partition) -> int:
    """Create one partition; rows the default partition holds for its range move into it."""
    in_range = spec.in_range_sql(partition)
    waiting = await conn.scalar(sa.text(f"SELECT count(*) FROM {spec.default} WHERE {in_range}"))
    if not waiting:
        await conn.execute(sa.text(spec.create_sql(partition)))
        return 0
    # The default partition may not hold rows of a new partition's range: move them first.
    await conn.execute(
        sa.text(
            f"CREATE TABLE {partition.name} "
            f"(LIKE {spec.table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
    )
    await conn.execute(
        sa.text(
            f"WITH moved AS (DELETE FROM {spec.default} WHERE {in_range} RETURNING *) "
            f"INSERT INTO {partition.name} SELECT * FROM moved"
        )
    )
    bounds = f"FROM ({spec.bound(partition.start)}) TO ({spec.bound(partition.end)})"
    await conn.execute(
        sa.text(f"ALTER TABLE {spec.table} ATTACH PARTITION {partition.name} FOR VALUES {bounds}")
    )
    return int(waiting)


async def _keep_partitioned(
    conn: AsyncConnection,
    spec: PartitionSpec,
    settings: StoreSettings,
    now: datetime,
    partman: str | None,
    report: dict[str, Any],
) -> None:
    if partman is not None:
        await _register_partman(conn, partman, spec)
        await conn.execute(
            sa.text(
                f"SELECT {partman}.run_maintenance(p_parent_table => :parent, "
                "p_analyze => false, p_jobmon => false)"
            ),
            {"parent": f"{await conn.scalar(sa.text('SELECT current_schema()'))}.{spec.table}"},
        )
    retention = _retention(settings, spec)
    cutoff = retention_cutoff(now, retention)
    if cutoff is not None:
        old = f"{spec.column} < {spec.bound(cutoff)}"
        if spec is SEARCHES:
            await release_search_ids(conn, spec.default, old)
        deleted = await conn.execute(sa.text(f"DELETE FROM {spec.default} WHERE {old}"))
        report["deleted_rows"] += int(deleted.rowcount or 0)
    days = [
        r[0]
        for r in await conn.execute(
            sa.text(f"SELECT DISTINCT {spec.day_sql()} FROM {spec.default}")
        )
    ]
    plan = plan_partitions(spec, await _partitions(conn, spec.table), now, retention, days)
    for partition in plan.create:
        report["moved_rows"] += await _create(conn, spec, partition)
        report["created"].append(partition.name)
    for partition in plan.drop:
        if spec is SEARCHES:
            await release_search_ids(conn, f"ONLY {partition.name}")
        await conn.execute(sa.text(f"DROP TABLE {partition.name}"))
        report["dropped"].append(partition.name)


async def _delete_old(
    conn: AsyncConnection, spec: PartitionSpec, settings: StoreSettings, now: datetime
) -> int:
    """Retention on a table that is not partitioned: its foreign keys clear what pointed at it."""
    cutoff = retention_cutoff(now, _retention(settings, spec))
    if cutoff is None:
        return 0
    table = metadata.tables[spec.table]
    bound: Any = datetime.combine(cutoff, datetime.min.time(), UTC) if spec.timestamp else cutoff
    result = await conn.execute(sa.delete(table).where(table.c[spec.column] < bound))
    return int(result.rowcount or 0)


async def maintain(
    engine: AsyncEngine, settings: StoreSettings, now: datetime, *, views: bool = True
) -> MaintenanceReport:
    """Keep both partitioned tables, then refresh the analytics views (unless ``views`` is off).

    ``now`` is the store's clock: retention counts from it.
    """
    report: dict[str, Any] = {"created": [], "dropped": [], "moved_rows": 0, "deleted_rows": 0}
    postgres = engine.dialect.name == "postgresql"
    partman = None
    for spec in PARTITIONED:
        async with engine.begin() as conn:
            if not postgres:
                report["deleted_rows"] += await _delete_old(conn, spec, settings, now)
                continue
            await conn.execute(sa.text(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'"))
            await conn.execute(sa.text("SET LOCAL TIME ZONE 'UTC'"))
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MAINTENANCE_LOCK_KEY}
            )
            if not await _is_partitioned(conn, spec.table):
                report["deleted_rows"] += await _delete_old(conn, spec, settings, now)
                continue
            partman = await _partman_schema(conn)
            await _keep_partitioned(conn, spec, settings, now, partman, report)
    if postgres and views:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'"))
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MAINTENANCE_LOCK_KEY}
            )
            report["views_refreshed"] = await refresh_views(conn, now)
    return MaintenanceReport(**report, partman=partman is not None)
