"""After ``upgrade``, PostgreSQL holds the migration plan's schema: the migration plan's DDL is run verbatim in a
second database and both catalogues are compared column by column, constraint by constraint."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from kuya_store import migrations

SEED_DDL = (Path(__file__).parent / "data" / "seed_schema.sql").read_text()
SEED_TABLES = ("searches", "price_snapshots", "listing_cache", "users", "saved_searches")

# Everything the library adds on top of the migration plan, each explained in docs/schema.md.
ADDED_COLUMNS = {
    ("searches", "card_identifier"),
    ("searches", "params"),
    ("searches", "result_key"),
    ("searches", "fetch_stats"),
    ("searches", "complete"),
    ("searches", "record_key"),
    ("saved_searches", "search_type"),
    ("saved_searches", "last_alert_observation"),
    ("saved_searches", "last_alerted_at"),
}
ADDED_INDEXES = {
    "idx_searches_result_key",
    "idx_searches_card_identifier",
    "idx_price_snapshots_search_id",
    "idx_listing_cache_search_id",
    "idx_search_results_listing_id",
    "search_results_pkey",
    "kuya_store_alembic_version_pkc",
    "idx_saved_searches_alerts",
    "api_usage_pkey",
    "binders_pkey",
    "binders_user_id_name_key",
    "collection_cards_pkey",
    "idx_collection_cards_user",
    "idx_collection_cards_binder",
    "idx_collection_cards_valued",
    "idx_collection_cards_card",
    # The analytics views and their watermark (revision 0006).
    "analytics_watermark_pkey",
    "search_stats_daily_key",
    "search_stats_total_key",
    "card_searches_daily_key",
    # Card search's directory: its key, full-text and trigram indexes (revision 0006).
    "card_directory_key",
    "card_directory_document",
    "card_directory_words",
    # A record written once wherever it is replayed from (revision 0007).
    "uq_searches_record_key",
}
# Indexes the plan defines that had to change for correctness, each explained in docs/schema.md.
CHANGED_INDEXES = {
    "idx_searches_query": ("USING btree", "USING hash"),
    "searches_pkey": ("(id)", "(id, created_at)"),
    "price_snapshots_pkey": ("(id)", "(id, snapshot_date)"),
}
ADDED_TABLES = {
    "search_results",
    "kuya_store_alembic_version",
    "api_usage",
    "binders",
    "collection_cards",
    "analytics_watermark",
}
# Foreign keys the plan leaves at NO ACTION that must not block purging old searches.
SET_NULL_FKS = {"price_snapshots_search_id_fkey", "listing_cache_search_id_fkey"}

# The partitioned layout (docs/schema.md): a key must include the partition key, which is
# NOT NULL; no foreign key can point at searches.id alone, so the store keeps its meaning.
CHANGED_COLUMNS = {("searches", "created_at"): {"is_nullable": "NO"}}
CHANGED_CONSTRAINTS = {"searches_pkey": "id,created_at", "price_snapshots_pkey": "id,snapshot_date"}
REMOVED_CONSTRAINTS = {"price_snapshots_search_id_fkey", "listing_cache_search_id_fkey"}
# The plan's second index on listing_cache.item_id, which its UNIQUE key already has
# (revision 0008).
REMOVED_INDEXES = {"idx_listing_cache_item_id"}
PARTITIONED_TABLES = {"searches": "created_at", "price_snapshots": "snapshot_date"}
_NOT_A_PARTITION = "NOT IN (SELECT relname FROM pg_class WHERE relispartition)"

COLUMNS_SQL = f"""
SELECT table_name, column_name, data_type, character_maximum_length,
       numeric_precision, numeric_scale, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = 'public' AND table_name {_NOT_A_PARTITION}
"""
INDEXES_SQL = f"SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename {_NOT_A_PARTITION}"
CONSTRAINTS_SQL = f"""
SELECT tc.constraint_name, tc.table_name, tc.constraint_type,
       (SELECT rc.delete_rule FROM information_schema.referential_constraints rc
        WHERE rc.constraint_name = tc.constraint_name
          AND rc.constraint_schema = tc.table_schema LIMIT 1) AS delete_rule,
       (SELECT string_agg(kcu.column_name, ',' ORDER BY kcu.ordinal_position)
        FROM information_schema.key_column_usage kcu
        WHERE kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema
          AND kcu.table_name = tc.table_name) AS columns
FROM information_schema.table_constraints tc
WHERE tc.table_schema = 'public' AND tc.table_name {_NOT_A_PARTITION}
  AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')
"""


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _catalogue(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(_dsn(url))
    try:
        columns = {
            (r["table_name"], r["column_name"]): (
                r["data_type"],
                r["character_maximum_length"],
                r["numeric_precision"] if r["data_type"] == "numeric" else None,
                r["numeric_scale"] if r["data_type"] == "numeric" else None,
                r["is_nullable"],
                r["column_default"],
            )
            for r in await conn.fetch(COLUMNS_SQL)
        }
        # A partitioned table's own index is "ON ONLY" the parent; each partition has its own.
        indexes = {
            r["indexname"]: r["indexdef"].replace(" ON ONLY ", " ON ")
            for r in await conn.fetch(INDEXES_SQL)
        }
        constraints = {
            r["constraint_name"]: (
                r["table_name"],
                r["constraint_type"],
                r["columns"],
                r["delete_rule"],
            )
            for r in await conn.fetch(CONSTRAINTS_SQL)
        }
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                f"AND table_name {_NOT_A_PARTITION}"
            )
        }
    finally:
        await conn.close()
    return {"columns": columns, "indexes": indexes, "constraints": constraints, "tables": tables}


@pytest.fixture
async def seed_url(postgres_base_url: str) -> Any:
    name = f"seed_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_dsn(postgres_base_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_base_url).set(database=name).render_as_string(hide_password=False)
    conn = await asyncpg.connect(_dsn(url))
    await conn.execute(SEED_DDL)
    await conn.close()
    yield url
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_schema_matches_the_seed_ddl(postgres_url: str, seed_url: str) -> None:
    await migrations.upgrade_async(postgres_url)
    ours = await _catalogue(postgres_url)
    seed = await _catalogue(seed_url)

    assert seed["tables"] == set(SEED_TABLES)
    assert ours["tables"] == set(SEED_TABLES) | ADDED_TABLES

    for table in SEED_TABLES:
        seed_cols = {c: v for (t, c), v in seed["columns"].items() if t == table}
        our_cols = {c: v for (t, c), v in ours["columns"].items() if t == table}
        for column, spec in seed_cols.items():
            if (table, column) in CHANGED_COLUMNS:
                spec = (*spec[:4], CHANGED_COLUMNS[(table, column)]["is_nullable"], spec[5])
            assert our_cols.get(column) == spec, (
                f"{table}.{column}: {our_cols.get(column)} != {spec}"
            )
        extra = {(table, c) for c in our_cols.keys() - seed_cols.keys()}
        assert extra <= ADDED_COLUMNS, f"undocumented columns {extra}"
    for table, column in ADDED_COLUMNS:
        nullable, default = ours["columns"][(table, column)][4:6]
        assert nullable == "YES" or default is not None, f"{table}.{column} breaks old inserts"

    for name, definition in seed["indexes"].items():
        if name in REMOVED_INDEXES:
            assert name not in ours["indexes"], name
            continue
        if name in CHANGED_INDEXES:
            definition = definition.replace(*CHANGED_INDEXES[name])
        assert ours["indexes"].get(name) == definition, name
    assert set(ours["indexes"]) - set(seed["indexes"]) == ADDED_INDEXES
    assert "WHERE (sold = false)" in ours["indexes"]["idx_active_listings"]

    for name, (table, kind, columns, rule) in seed["constraints"].items():
        if name in REMOVED_CONSTRAINTS:
            assert name not in ours["constraints"], name
            continue
        columns = CHANGED_CONSTRAINTS.get(name, columns)
        assert name in ours["constraints"], name
        our_table, our_kind, our_columns, our_rule = ours["constraints"][name]
        assert (our_table, our_kind, our_columns) == (table, kind, columns), name
        expected_rule = "SET NULL" if name in SET_NULL_FKS else rule
        assert our_rule == expected_rule, name

    partitioned = await _partitioned(postgres_url)
    assert partitioned == PARTITIONED_TABLES
    for table in PARTITIONED_TABLES:
        assert f"{table}_default" in await _partitions(postgres_url, table)


async def _partitioned(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT c.relname, a.attname FROM pg_partitioned_table p "
            "JOIN pg_class c ON c.oid = p.partrelid "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0]"
        )
    finally:
        await conn.close()
    return {r["relname"]: r["attname"] for r in rows}


async def _partitions(url: str, table: str) -> set[str]:
    conn = await asyncpg.connect(_dsn(url))
    try:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = $1::regclass",
            table,
        )
    finally:
        await conn.close()
    return {r["relname"] for r in rows}
