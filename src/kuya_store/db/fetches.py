"""The reads of stored fetches: a result's newest fetch, and the sales of a card's day.

The read-through path asks for the newest stored fetch before every paid fetch, so on
PostgreSQL it is one statement that selects the fetch's row and its listings as one
array per column, in position order: one round trip, one row, and nothing at all when no
fetch is stored. It runs through the driver's own connection outside a transaction (the
values come typed by PostgreSQL), or as plain SQL through SQLAlchemy inside one (behind
PgBouncer in transaction mode). SQLite asks its two statements through SQLAlchemy.

A sold fetch's write values the card's day again (``persistence``): one statement gives
the day's newest fetch, whether every sale of the day holds the version this fetch
wrote, and, only when that is not so, the sales themselves. When it is so, on
PostgreSQL the same statement writes the fetch's own valuation as the day's row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from kuya_store.db.rows import LISTING_FIELDS
from kuya_store.db.tables import (
    ListingRow,
    PriceSnapshotRow,
    SearchResultRow,
    SearchRow,
    metadata,
)
from kuya_store.db.types import Money, UTCDateTime
from kuya_store.models import PriceSnapshot, SearchType

__all__ = [
    "HEAD_FIELDS",
    "NEWEST_RESULT_SQL",
    "SNAPSHOT_FIELDS",
    "SNAPSHOT_UPDATE_COLUMNS",
    "day_sales",
    "listing_columns",
    "newest_head",
    "newest_listings",
    "newest_result_text",
]

_searches = metadata.tables[SearchRow.__tablename__]
_listings = metadata.tables[ListingRow.__tablename__]
_links = metadata.tables[SearchResultRow.__tablename__]
_snapshots = metadata.tables[PriceSnapshotRow.__tablename__]

SNAPSHOT_FIELDS = tuple(PriceSnapshot.model_fields)
"""A snapshot's fields: the ``price_snapshots`` columns a valuation fills."""
SNAPSHOT_UPDATE_COLUMNS = (
    *(name for name in SNAPSHOT_FIELDS if name not in ("card_identifier", "snapshot_date")),
    "search_id",
)
"""What a new valuation of a card's day overwrites in its row."""

HEAD_FIELDS = ("id", "query", "created_at", "pages_scraped", "params", "complete")
"""What the newest fetch's ``searches`` row gives a stored result."""


def _listing_column(name: str) -> str:
    # A listing row of the store always says whether it sold; one written by hand may not.
    return "coalesce(l.sold, false)" if name == "sold" else f"l.{name}"


NEWEST_RESULT_SQL = f"""
SELECT {", ".join(f"h.{name}" for name in HEAD_FIELDS)},
    {", ".join(f"s.{name}" for name in LISTING_FIELDS)}
FROM (
    SELECT {", ".join(HEAD_FIELDS)} FROM searches
    WHERE result_key = $1 AND cache_hit IS false AND created_at >= $2
    ORDER BY created_at DESC, id DESC
    LIMIT 1
) AS h
CROSS JOIN LATERAL (
    SELECT {
    ", ".join(
        f"array_agg({_listing_column(name)} ORDER BY r.position) AS {name}"
        for name in LISTING_FIELDS
    )
}
    FROM search_results AS r JOIN listing_cache AS l ON l.id = r.listing_id
    WHERE r.search_id = h.id
) AS s
"""
"""PostgreSQL: the newest fetch of a ``result_key`` at or after a moment (``$1``, ``$2``)
and its listings, one array per field of :data:`LISTING_FIELDS` (``NULL`` for none)."""

newest_result_text = sa.text(NEWEST_RESULT_SQL.replace("$1", ":key").replace("$2", ":since"))
""":data:`NEWEST_RESULT_SQL` for SQLAlchemy (inside a transaction): its values untyped by
SQLAlchemy, as the driver gives them."""


newest_head = (
    sa.select(*(_searches.c[name] for name in HEAD_FIELDS))
    .where(
        _searches.c.result_key == sa.bindparam("key", type_=sa.String),
        _searches.c.cache_hit.is_(False),
        _searches.c.created_at >= sa.bindparam("since", type_=UTCDateTime),
    )
    .order_by(_searches.c.created_at.desc(), _searches.c.id.desc())
    .limit(1)
)
"""SQLite: the newest fetch's :data:`HEAD_FIELDS` of ``key`` at or after ``since`` (then
:data:`newest_listings`)."""


def listing_columns(postgres: bool) -> list[sa.ColumnElement[Any]]:
    """A listing's :data:`LISTING_FIELDS`, typed as the model holds them.

    PostgreSQL's driver already gives a ``NUMERIC(10, 2)`` with two places and a
    ``timestamptz`` in UTC: there the columns skip ``Money`` and ``UTCDateTime``.
    """
    columns: list[sa.ColumnElement[Any]] = []
    for name in LISTING_FIELDS:
        column: sa.ColumnElement[Any] = _listings.c[name]
        if name == "sold":
            column = sa.func.coalesce(column, sa.false(), type_=sa.Boolean)
        elif postgres and isinstance(column.type, Money):
            column = sa.type_coerce(column, sa.Numeric(10, 2, asdecimal=True))
        elif postgres and isinstance(column.type, UTCDateTime):
            column = sa.type_coerce(column, sa.DateTime(timezone=True))
        columns.append(column.label(name))
    return columns


newest_listings = (
    sa.select(*listing_columns(postgres=False))
    .join(_links, _links.c.listing_id == _listings.c.id)
    .where(_links.c.search_id == sa.bindparam("search_id", type_=sa.Integer))
    .order_by(_links.c.position)
)
"""SQLite: the listings of fetch ``search_id``, in position order."""


def day_sales(
    postgres: bool, fields: Sequence[str] = LISTING_FIELDS, *, ordered: bool = True
) -> sa.Select[Any]:
    """The newest of a card's sold fetches of one UTC day, and the day's sales if needed.

    Parameters: ``card``, ``start`` and ``end`` (the day), ``search_id`` (the fetch
    being written) and ``trusted`` (whether that fetch's own valuation could stand for
    the day's). Rows: ``newest_id``, ``newest_at``, ``ours`` and each sale's ``fields``
    (of :data:`LISTING_FIELDS`; the default valuation reads fewer).
    On PostgreSQL also ``snapshot_<field>`` for each of :data:`SNAPSHOT_FIELDS` and
    ``created_at``: when ``ours``, the statement itself upserts that snapshot as the
    day's row (one round trip less); SQLite has no writes inside a query.

    ``ours`` is true when ``trusted``, the fetch is the day's newest and every listing
    linked to any of the day's fetches holds this fetch's version (its ``search_id``,
    which the newest-wins upsert sets with the values it writes): the day's sales are
    then exactly this fetch's listings, with its values. Then one row comes back with no
    listing; otherwise one row per sale (one row with no listing when the day has no
    sale), in ``item_id`` order when ``ordered``: a valuation of the set of sales asks
    for no order (the server's sort is a fifth of a large day's read).
    """
    search_id = sa.bindparam("search_id", type_=sa.Integer)
    day = (
        sa.select(_searches.c.id, _searches.c.created_at)
        .where(
            _searches.c.card_identifier == sa.bindparam("card", type_=sa.Text),
            _searches.c.search_type == SearchType.SOLD.value,
            _searches.c.cache_hit.is_(False),
            _searches.c.created_at >= sa.bindparam("start", type_=UTCDateTime),
            _searches.c.created_at < sa.bindparam("end", type_=UTCDateTime),
        )
        .cte("day")
    )
    newest = (
        sa.select(day.c.id.label("newest_id"), day.c.created_at.label("newest_at"))
        .order_by(day.c.created_at.desc(), day.c.id.desc())
        .limit(1)
        .subquery("newest")
    )
    seen = sa.select(_links.c.listing_id).join(day, day.c.id == _links.c.search_id)
    read = {*fields, *(("item_id",) if ordered else ())}
    sales = (
        sa.select(
            *(c for c in listing_columns(postgres) if c.name in read),
            _listings.c.search_id.label("holder"),
        )
        .where(_listings.c.id.in_(seen))
        .cte("sales")
    )
    foreign = sa.exists().where(sales.c.holder.is_distinct_from(search_id))
    ours = sa.and_(
        sa.bindparam("trusted", type_=sa.Boolean), newest.c.newest_id == search_id, ~foreign
    )
    ours_label = ours.label("ours")
    stmt = (
        sa.select(
            newest.c.newest_id,
            newest.c.newest_at,
            ours_label,
            *(sales.c[name] for name in fields),
        )
        .select_from(newest.outerjoin(sales, sa.not_(ours)))
        .order_by(*((sales.c.item_id,) if ordered else ()))
    )
    if not postgres:
        return stmt
    own = sa.select(
        *(
            sa.bindparam(f"snapshot_{name}", type_=_snapshots.c[name].type)
            for name in SNAPSHOT_FIELDS
        ),
        newest.c.newest_id,
        sa.bindparam("created_at", type_=_snapshots.c.created_at.type),
    ).where(ours)
    insert = postgresql.insert(_snapshots).from_select(
        [*SNAPSHOT_FIELDS, "search_id", "created_at"], own
    )
    # As every write of the day's row: the created_at of its first write stays.
    upsert = insert.on_conflict_do_update(
        index_elements=[_snapshots.c.card_identifier, _snapshots.c.snapshot_date],
        set_={name: insert.excluded[name] for name in SNAPSHOT_UPDATE_COLUMNS},
    )
    # Data-modifying CTEs run to completion whether or not the query reads them.
    return stmt.add_cte(upsert.cte("own_snapshot"))
