"""The listing upsert of a fetched result, and on PostgreSQL the one statement that writes it.

On PostgreSQL a fetch's ``searches`` row, its listings and its ``search_results`` links go
in one statement whose listing parameters are arrays, one per column::

    WITH search AS (
        INSERT INTO searches (...) VALUES (...)
        ON CONFLICT (record_key, created_at) DO NOTHING RETURNING id),
    written AS (
        INSERT INTO listing_cache (...) SELECT ..., search.id
            FROM unnest($1::varchar(50)[], ...) WITH ORDINALITY AS incoming (...)
            JOIN search ON true ORDER BY incoming.ord
        ON CONFLICT (item_id) DO UPDATE SET title = CASE WHEN <newer> THEN ... END, ...
        RETURNING id, item_id),
    linked AS (
        INSERT INTO search_results (search_id, position, listing_id)
        SELECT search.id, positions.n - 1, written.id
            FROM unnest($m::varchar[]) WITH ORDINALITY AS positions (item_id, n)
            JOIN written ON written.item_id = positions.item_id JOIN search ON true)
    SELECT id FROM search

A replayed record meets the unique ``record_key``: ``search`` is empty, so nothing else is
written and no id comes back.

Why this statement and not the others PostgreSQL offers (``bench/upsert.py`` measures them
on the same rows, ``bench/REPORT.md`` section 12.3 has the figures):

- ``executemany`` (or SQLAlchemy's multi-row ``VALUES`` pages) sends 13 parameters per
  row and has the server bind and run the statement once per row (or per page); an
  array per column is one parameter each, encoded by asyncpg in binary, one execution.
- ``COPY`` into a temporary table (``ON COMMIT DROP``) plus the same ``INSERT .. SELECT``
  costs more round trips (the table, the ``COPY``, the insert, the search row's own) and
  a catalog entry made and dropped by every transaction, for a client encoding a little
  cheaper than arrays (9 against 12 ms of CPU per 1,000 listings). Inside
  ``persist_fetch`` it was 12-34% slower at 60 and 200 listings a fetch and even at
  1,000: real fetches have tens to a few hundred listings, and the catalog churn of a
  temporary table per fetch is a cost a busy primary pays in autovacuum of
  ``pg_class``/``pg_attribute`` too. ``unnest`` it is.
- Arrays are plain bind parameters: the statement goes on the driver's own connection
  (``db/driver_writes.py``, timed as SQLAlchemy's statements are) or through
  SQLAlchemy's asyncpg dialect behind PgBouncer in transaction mode, and the links need
  no ids sent back to the client (the ``RETURNING`` rows feed the
  next ``INSERT``): one round trip for the three tables, where a fetch of tens of
  listings spends as much on round trips as on rows.

SQLite has no arrays and no ``COPY``: it keeps the same upsert executed with many
parameter sets (SQLAlchemy's "insertmanyvalues").

Both keep the same rules: newest data wins (the ``CASE``), rows go in ``item_id`` order
so concurrent writers lock them in the same order, and an ``item_id`` given twice in one
fetch is written once, with its last occurrence (``ON CONFLICT`` may not touch a row
twice in one statement), every position linking to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator, TypeEngine

from kuya_store.db.rows import LISTING_FIELDS
from kuya_store.models import Listing

__all__ = [
    "LISTING_COLUMNS",
    "LISTING_UPDATE_COLUMNS",
    "listing_arrays",
    "listing_rows",
    "newest_per_item",
    "newest_wins",
    "postgres_upsert_with_links",
]

LISTING_COLUMNS = LISTING_FIELDS
"""A listing's own columns: what each listing of a fetch brings (as the reads select them)."""

# What a re-fetched listing overwrites; ``first_seen`` (and the row's id) stay.
LISTING_UPDATE_COLUMNS = (
    *LISTING_COLUMNS[1:],
    "last_updated",
    "ttl",
    "search_id",
)

# Per fetch, not per listing: bound once as scalars on PostgreSQL.
_FETCH_COLUMNS = ("first_seen", "last_updated", "ttl", "search_id")


def newest_per_item(listings: Sequence[Listing]) -> list[Listing]:
    """Each ``item_id`` once, its last occurrence (the newest the fetch holds), by ``item_id``.

    ``item_id`` order is code-point order, the same in every process, so two writers of
    overlapping listings take their row locks in the same order and never deadlock.
    """
    last: dict[str, Listing] = {}
    for listing in listings:
        last[listing.item_id] = listing
    return [last[item_id] for item_id in sorted(last)]


def listing_rows(
    listings: Sequence[Listing], moment: datetime, ttl: datetime, search_id: int
) -> list[dict[str, Any]]:
    """One parameter set per listing (deduplicated and ordered), for ``executemany``."""
    return [
        {
            "item_id": x.item_id,
            "title": x.title,
            "price": x.price,
            "listing_type": x.listing_type,
            "condition": x.condition,
            "sold": x.sold,
            "sold_date": x.sold_date,
            "bids": x.bids,
            "watchers": x.watchers,
            "first_seen": moment,
            "last_updated": moment,
            "ttl": ttl,
            "search_id": search_id,
        }
        for x in newest_per_item(listings)
    ]


def listing_arrays(listings: Sequence[Listing]) -> dict[str, list[Any]]:
    """The listings' columns as one list each (deduplicated, in ``item_id`` order).

    Also ``link_items``: the ``item_id`` of every position of the fetch, duplicates
    included, so every position gets its link. Values are a validated ``Listing``'s
    (exact money of two places at most, aware moments); a naive ``sold_date`` of a
    listing built without validation is refused here, as the column type refuses it.
    """
    kept = newest_per_item(listings)
    for x in kept:
        if x.sold_date is not None and x.sold_date.utcoffset() is None:
            raise ValueError("naive datetime rejected: pass a timezone-aware datetime")
    return {
        "item_id": [x.item_id for x in kept],
        "title": [x.title for x in kept],
        "price": [x.price for x in kept],
        "listing_type": [x.listing_type for x in kept],
        "condition": [x.condition for x in kept],
        "sold": [x.sold for x in kept],
        "sold_date": [x.sold_date for x in kept],
        "bids": [x.bids for x in kept],
        "watchers": [x.watchers for x in kept],
        "link_items": [x.item_id for x in listings],
    }


def newest_wins(insert: Any, table: sa.Table) -> dict[str, sa.ColumnElement[Any]]:
    """The ``SET`` of the upsert: a row takes the write's values only if it saw them later.

    Every conflicting row is updated (so ``RETURNING`` names it), but to its own values
    when it saw the listing later than this write did.
    """
    newer = insert.excluded.last_updated >= table.c.last_updated
    return {
        name: sa.case((newer, insert.excluded[name]), else_=table.c[name])
        for name in LISTING_UPDATE_COLUMNS
    }


class _DriverArray(TypeDecorator[list[Any]]):
    """An array parameter handed to the driver as it is, cast to its items' column type.

    SQLAlchemy would run the item type's conversion on every element (a third of a
    fetch's write); :func:`listing_arrays` has already given each value its column's
    form, and asyncpg encodes the lists in binary.
    """

    impl = postgresql.ARRAY
    cache_ok = True

    def __init__(self, item_type: TypeEngine[Any]) -> None:
        super().__init__(item_type)
        self.item_type = item_type  # part of the statement cache's key: the cast differs

    def bind_processor(self, dialect: Dialect) -> None:
        return None


def postgres_upsert_with_links(listings: sa.Table, links: sa.Table) -> Insert:
    """The one PostgreSQL statement that upserts a fetch's listings and inserts its links.

    Parameters: one array per name of :data:`LISTING_COLUMNS` and ``link_items`` (as
    :func:`listing_arrays` gives them), and the scalars ``moment`` (``first_seen`` and
    ``last_updated`` of a new row), ``ttl`` and ``search_id``. Each array is cast to
    its column's type: a value the column cannot hold fails the statement, as in any
    insert.
    """
    search_id = sa.bindparam("search_id", type_=listings.c.search_id.type)
    written, linked = _listings_and_links(listings, search_id, None)
    return (
        sa.insert(links)
        .from_select(["search_id", "position", "listing_id"], linked)
        .add_cte(written)
    )


def postgres_persist_fetch(
    searches: sa.Table, listings: sa.Table, links: sa.Table, search_columns: Sequence[str]
) -> sa.Select[Any]:
    """The fetch's ``searches`` row, listings and links in one statement; selects the new id.

    The search row is inserted as the search log inserts it (a replayed record meets the
    unique ``record_key`` and is skipped); the listings and links are joined to that insert,
    so a replay writes nothing and selects no row. Parameters: those of
    :func:`postgres_upsert_with_links` but ``search_id``, and ``search_<column>`` for each
    of ``search_columns``.
    """
    insert = postgresql.insert(searches).values(
        {
            name: sa.bindparam(f"search_{name}", type_=searches.c[name].type)
            for name in search_columns
        }
    )
    search = (
        insert.on_conflict_do_nothing(index_elements=[searches.c.record_key, searches.c.created_at])
        .returning(searches.c.id)
        .cte("search")
    )
    written, linked = _listings_and_links(listings, search.c.id, search)
    links_written = (
        sa.insert(links).from_select(["search_id", "position", "listing_id"], linked).cte("linked")
    )
    # Data-modifying CTEs run to completion whether or not the query reads them.
    return sa.select(search.c.id).add_cte(written, links_written)


def _listings_and_links(
    listings: sa.Table, search_id: sa.ColumnElement[Any], search: sa.CTE | None
) -> tuple[sa.CTE, sa.Select[Any]]:
    """The listing upsert over the arrays (a CTE), and the select of the links to insert."""
    incoming = (
        sa.func.unnest(
            *(
                sa.bindparam(name, type_=_DriverArray(listings.c[name].type))
                for name in LISTING_COLUMNS
            )
        )
        .table_valued(
            *(sa.column(name, listings.c[name].type) for name in LISTING_COLUMNS),
            with_ordinality="ord",
        )
        .render_derived(name="incoming")
    )
    moment = sa.bindparam("moment", type_=listings.c.last_updated.type)
    rows = sa.select(
        *(incoming.c[name] for name in LISTING_COLUMNS),
        moment,
        moment,
        sa.bindparam("ttl", type_=listings.c.ttl.type),
        search_id,
    )
    if search is not None:  # no search row written (a replay): no listing rows either
        rows = rows.select_from(incoming.join(search, sa.true()))
    rows = rows.order_by(incoming.c.ord)  # the item_id order of the arrays: the lock order
    insert = postgresql.insert(listings).from_select([*LISTING_COLUMNS, *_FETCH_COLUMNS], rows)
    written = (
        insert.on_conflict_do_update(
            index_elements=[listings.c.item_id], set_=newest_wins(insert, listings)
        )
        .returning(listings.c.id, listings.c.item_id)
        .cte("written")
    )
    positions = (
        sa.func.unnest(sa.bindparam("link_items", type_=_DriverArray(sa.String())))
        .table_valued("item_id", with_ordinality="n")
        .render_derived(name="positions")
    )
    joined = positions.join(written, written.c.item_id == positions.c.item_id)
    if search is not None:
        joined = joined.join(search, sa.true())
    linked = sa.select(search_id, positions.c.n - sa.literal_column("1"), written.c.id)
    return written, linked.select_from(joined)


def _unbounded(item_type: TypeEngine[Any]) -> TypeEngine[Any]:
    # An array cast to VARCHAR(n)[] would cut a longer value silently; the column's own
    # assignment refuses it, as an insert of plain values does.
    return sa.String() if isinstance(item_type, sa.String) else item_type


def postgres_log_searches(searches: sa.Table, search_columns: Sequence[str]) -> Any:
    """The search log's batch insert with one array per column: one statement, any size.

    Parameters: a list per name of ``search_columns``, the rows' values in order (each as
    its column's type processes it: the arrays are handed to the driver as they are). A
    replayed record meets the unique ``record_key`` and is skipped; ``RETURNING`` names
    the rows written, in the arrays' order.
    """
    incoming = (
        sa.func.unnest(
            *(
                sa.bindparam(name, type_=_DriverArray(_unbounded(searches.c[name].type)))
                for name in search_columns
            )
        )
        .table_valued(
            *(sa.column(name, searches.c[name].type) for name in search_columns),
            with_ordinality="ord",
        )
        .render_derived(name="incoming")
    )
    rows = sa.select(*(incoming.c[name] for name in search_columns)).order_by(incoming.c.ord)
    return (
        postgresql.insert(searches)
        .from_select(list(search_columns), rows)
        .on_conflict_do_nothing(index_elements=[searches.c.record_key, searches.c.created_at])
        .returning(searches.c.id)
    )
