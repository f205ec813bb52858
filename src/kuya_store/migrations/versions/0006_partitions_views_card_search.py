"""The search log and the price snapshots are partitioned by time on PostgreSQL.

``searches`` becomes range-partitioned by ``created_at`` (UTC days) and ``price_snapshots``
by ``snapshot_date`` (months), each with a default partition, rows included: the old table
is renamed, the partitioned one created like it, a partition made for every day (month)
that has rows and for the days ahead, the rows copied, and the keys and indexes built.
A key on a partitioned table must include the partition key, so the primary keys become
``(id, created_at)`` and ``(id, snapshot_date)`` and ``searches.created_at`` is NOT NULL;
the foreign keys that pointed at ``searches.id`` go, and the store does what they did
(``docs/schema.md`` says why). SQLite keeps its tables as they are.

Also on PostgreSQL: the materialized views the analytics read (``analytics_views.py``)
below the watermark in ``analytics_watermark``, and the card directory of card search
(``cards.py``) with its full-text and trigram indexes; on SQLite, card search's FTS5 table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from kuya_store.db.partitions import SEARCHES, SNAPSHOTS, PartitionSpec, plan_partitions

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The foreign keys to searches.id of revision 0001: (name, table, ON DELETE).
_SEARCH_REFERENCES = (
    ("search_results_search_id_fkey", "search_results", "CASCADE"),
    ("listing_cache_search_id_fkey", "listing_cache", "SET NULL"),
    ("price_snapshots_search_id_fkey", "price_snapshots", "SET NULL"),
)
# Every index of each table as revision 0005 left it (name, definition after the table).
_INDEXES = {
    "searches": (
        ("idx_searches_query", "USING hash (query)"),
        ("idx_searches_created_at", "(created_at)"),
        ("idx_searches_user_id", "(user_id)"),
        ("idx_searches_result_key", "(result_key, created_at)"),
        ("idx_searches_card_identifier", "(card_identifier)"),
    ),
    "price_snapshots": (
        ("idx_price_snapshots_card", "(card_identifier)"),
        ("idx_price_snapshots_date", "(snapshot_date)"),
        ("idx_price_snapshots_search_id", "(search_id)"),
    ),
}
# Constraints other than the primary key, as SQL after ADD CONSTRAINT.
_CONSTRAINTS = {
    "searches": (("searches_user_id_fkey", "FOREIGN KEY (user_id) REFERENCES users (id)"),),
    "price_snapshots": (
        (
            "price_snapshots_card_identifier_snapshot_date_key",
            "UNIQUE (card_identifier, snapshot_date)",
        ),
    ),
}


# The analytics views (kuya_store/analytics_views.py), below a watermark that maintain()
# moves; -infinity until then, so every answer is live until the first refresh.
_VIEWS = (
    """CREATE TABLE analytics_watermark (
        id SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
        watermark TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT '-infinity',
        refreshed_at TIMESTAMP WITH TIME ZONE
    )""",
    "INSERT INTO analytics_watermark (id) VALUES (1)",
    """CREATE MATERIALIZED VIEW search_stats_daily AS
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, search_type, execution_time_ms,
           count(*) AS searches, count(*) FILTER (WHERE cache_hit IS TRUE) AS cache_hits,
           COALESCE(sum(GREATEST(COALESCE(pages_scraped, 1), 1))
                    FILTER (WHERE cache_hit IS NOT TRUE), 0) AS api_calls
    FROM searches WHERE created_at < (SELECT watermark FROM analytics_watermark)
    GROUP BY 1, 2, 3""",
    "CREATE UNIQUE INDEX search_stats_daily_key "
    "ON search_stats_daily (day, search_type, execution_time_ms)",
    # Every day at once, for the most common question (since the beginning).
    """CREATE MATERIALIZED VIEW search_stats_total AS
    SELECT search_type, execution_time_ms, sum(searches)::bigint AS searches,
           sum(cache_hits)::bigint AS cache_hits, sum(api_calls)::bigint AS api_calls
    FROM search_stats_daily GROUP BY 1, 2""",
    "CREATE UNIQUE INDEX search_stats_total_key "
    "ON search_stats_total (search_type, execution_time_ms)",
    """CREATE MATERIALIZED VIEW card_searches_daily AS
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
           COALESCE(card_identifier, lower(query)) AS card,
           count(*) AS searches, count(*) FILTER (WHERE cache_hit IS TRUE) AS cache_hits,
           max(query) AS query, max(created_at) AS last_searched_at
    FROM searches WHERE created_at < (SELECT watermark FROM analytics_watermark)
    GROUP BY 1, 2""",
    "CREATE UNIQUE INDEX card_searches_daily_key ON card_searches_daily (day, card)",
)
# Card search (kuya_store/cards.py): the searched cards with their words as a tsvector and,
# where pg_trgm may be created, a trigram index for typos.
_CARD_SEARCH = (
    """DO $kuya$ BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'card search without pg_trgm (full-text only): %', SQLERRM;
    END $kuya$""",
    """CREATE MATERIALIZED VIEW card_directory AS
    SELECT card, sum(searches)::bigint AS searches, sum(cache_hits)::bigint AS cache_hits,
           max(query) AS query, max(last_searched_at) AS last_searched_at,
           replace(card, '-', ' ') AS words,
           to_tsvector('simple', replace(card, '-', ' ')) AS document
    FROM card_searches_daily GROUP BY card""",
    "CREATE UNIQUE INDEX card_directory_key ON card_directory (card)",
    "CREATE INDEX card_directory_document ON card_directory USING gin (document)",
    """DO $kuya$ BEGIN
        IF EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_trgm') THEN
            EXECUTE 'CREATE INDEX card_directory_words ON card_directory '
                    'USING gin (words gin_trgm_ops)';
        END IF;
    END $kuya$""",
)
# On SQLite: every card name once, and its FTS5 index, kept by triggers.
_SQLITE_CARD_SEARCH = (
    "CREATE TABLE card_names (card TEXT NOT NULL PRIMARY KEY)",
    "CREATE VIRTUAL TABLE card_names_fts USING fts5(card, content='card_names', "
    "tokenize='trigram')",
    """CREATE TRIGGER card_names_indexed AFTER INSERT ON card_names BEGIN
        INSERT INTO card_names_fts (rowid, card) VALUES (NEW.rowid, NEW.card);
    END""",
    """CREATE TRIGGER card_names_from_searches AFTER INSERT ON searches BEGIN
        INSERT OR IGNORE INTO card_names (card)
        VALUES (coalesce(NEW.card_identifier, lower(NEW.query)));
    END""",
    "INSERT OR IGNORE INTO card_names (card) "
    "SELECT DISTINCT coalesce(card_identifier, lower(query)) FROM searches",
)
_SQLITE_DROP_CARD_SEARCH = (
    "DROP TRIGGER IF EXISTS card_names_from_searches",
    "DROP TRIGGER IF EXISTS card_names_indexed",
    "DROP TABLE IF EXISTS card_names_fts",
    "DROP TABLE IF EXISTS card_names",
)
_DROP_VIEWS = (
    "DROP MATERIALIZED VIEW IF EXISTS card_directory",
    "DROP MATERIALIZED VIEW IF EXISTS card_searches_daily",
    "DROP MATERIALIZED VIEW IF EXISTS search_stats_total",
    "DROP MATERIALIZED VIEW IF EXISTS search_stats_daily",
    "DROP TABLE IF EXISTS analytics_watermark",
)


def _run(sql: str) -> None:
    op.execute(sa.text(sql))


def _query(sql: str) -> list[Any]:
    return list(op.get_bind().execute(sa.text(sql)))


def _rebuild(table: str, old: str, partition_by: str | None) -> None:
    """Recreate ``table`` like ``old`` (partitioned or not) with its keys, indexes and rows.

    The caller has renamed the table to ``old`` and freed its index and constraint names.
    """
    by = f" PARTITION BY {partition_by}" if partition_by else ""
    _run(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS){by}")


def _finish(table: str, old: str, primary_key: str) -> None:
    _run(f"INSERT INTO {table} SELECT * FROM {old}")
    _run(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({primary_key})")
    for name, definition in _CONSTRAINTS[table]:
        _run(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
    for name, definition in _INDEXES[table]:
        _run(f"CREATE INDEX {name} ON {table} {definition}")
    _run(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
    _run(f"DROP TABLE {old}")


def _set_aside(table: str, old: str) -> None:
    """Rename ``table`` to ``old`` and free every name the rebuilt table takes again."""
    _run(f"ALTER SEQUENCE {table}_id_seq OWNED BY NONE")
    for name, _ in _INDEXES[table]:
        _run(f"DROP INDEX {name}")
    for name, _ in _CONSTRAINTS[table]:
        _run(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    _run(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
    _run(f"ALTER TABLE {table} RENAME TO {old}")


def _partition(spec: PartitionSpec) -> None:
    table, old = spec.table, f"{spec.table}_unpartitioned"
    # Rows without a time take the migration's (a partition key is NOT NULL).
    ((now,),) = _query("SELECT now()")
    days = [r[0] for r in _query(f"SELECT DISTINCT {spec.day_sql()} FROM {table}")]
    if None in days:
        days = [now.date() if day is None else day for day in days]
        _run(f"UPDATE {table} SET {spec.column} = now() WHERE {spec.column} IS NULL")
    _set_aside(table, old)
    _rebuild(table, old, f"RANGE ({spec.column})")
    _run(f"ALTER TABLE {table} ALTER COLUMN {spec.column} SET NOT NULL")
    _run(f"CREATE TABLE {spec.default} PARTITION OF {table} DEFAULT")
    for partition in plan_partitions(spec, [], now, None, days).create:
        _run(spec.create_sql(partition))
    _finish(table, old, f"id, {spec.column}")


def _unpartition(spec: PartitionSpec, nullable: bool) -> None:
    table, old = spec.table, f"{spec.table}_partitioned"
    _set_aside(table, old)
    _rebuild(table, old, None)
    if nullable:
        _run(f"ALTER TABLE {table} ALTER COLUMN {spec.column} DROP NOT NULL")
    _finish(table, old, "id")


def _forget_partman() -> None:
    """pg_partman must not keep tables that are no longer partitioned."""
    found = _query(
        "SELECT n.nspname FROM pg_extension e "
        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_partman'"
    )
    if not found:
        return
    schema = found[0][0]
    ((own,),) = _query("SELECT current_schema()")
    for spec in (SEARCHES, SNAPSHOTS):
        _run(f"DELETE FROM {schema}.part_config WHERE parent_table = '{own}.{spec.table}'")
        _run(f"DROP TABLE IF EXISTS {schema}.template_{own}_{spec.table}")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for statement in _SQLITE_CARD_SEARCH:
            _run(statement)
        return
    for name, table, _ in _SEARCH_REFERENCES:
        _run(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    _partition(SEARCHES)
    _partition(SNAPSHOTS)
    for statement in (*_VIEWS, *_CARD_SEARCH):
        _run(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for statement in _SQLITE_DROP_CARD_SEARCH:
            _run(statement)
        return
    for statement in _DROP_VIEWS:
        _run(statement)
    _forget_partman()
    _unpartition(SNAPSHOTS, nullable=False)
    _unpartition(SEARCHES, nullable=True)
    # What the store kept in place of the foreign keys holds; anything else is cleared the
    # way the keys would have, so they can be added back.
    for _, table, action in _SEARCH_REFERENCES:
        missing = f"NOT EXISTS (SELECT 1 FROM searches s WHERE s.id = {table}.search_id)"
        if action == "CASCADE":
            _run(f"DELETE FROM {table} WHERE {missing}")
        else:
            _run(f"UPDATE {table} SET search_id = NULL WHERE search_id IS NOT NULL AND {missing}")
    for name, table, action in _SEARCH_REFERENCES:
        _run(
            f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY (search_id) "
            f"REFERENCES searches (id) ON DELETE {action}"
        )
