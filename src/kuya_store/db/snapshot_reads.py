"""The driver's SQL of a card's snapshots between two days: a price history, a trend's points.

One SQL text per set of bounds, so PostgreSQL still prunes the months a bound rules out.
The card is not selected: every row holds the one asked for, which the models take from
the query (``rows.models_from_rows(same=...)``). ``JSONB`` and money come as text, each
column decoded in one pass (``rows.decode_json_texts``, ``rows.decimal_texts``): the
driver's own codecs cost more per value.
"""

from __future__ import annotations

import functools
from datetime import date
from typing import Any

import sqlalchemy as sa

from kuya_store.db.tables import metadata
from kuya_store.db.types import Money
from kuya_store.models import PriceSnapshot

__all__ = [
    "CARD",
    "POINT_FIELDS",
    "POINT_MONEY",
    "SNAPSHOT_FIELDS",
    "SNAPSHOT_JSON",
    "SNAPSHOT_MONEY",
    "history_sql",
    "points_sql",
]

_snapshots = metadata.tables["price_snapshots"]

CARD = "card_identifier"
SNAPSHOT_FIELDS = tuple(PriceSnapshot.model_fields)
"""A snapshot's fields, in the model's order."""
SNAPSHOT_JSON = tuple(n for n in SNAPSHOT_FIELDS if isinstance(_snapshots.c[n].type, sa.JSON))
"""The snapshot fields whose column is JSON."""
SNAPSHOT_MONEY = tuple(n for n in SNAPSHOT_FIELDS if isinstance(_snapshots.c[n].type, Money))
"""The snapshot fields whose column is money (``NUMERIC(10, 2)`` on PostgreSQL)."""
_HISTORY_COLUMNS = tuple(n for n in SNAPSHOT_FIELDS if n != CARD)
POINT_FIELDS = ("snapshot_date", "market_value")
POINT_MONEY = ("market_value",)


def history_sql(card: str, start: date | None, end: date | None) -> tuple[str, list[Any]]:
    """Every snapshot field but the card, of ``card`` from ``start`` to ``end``, oldest first."""
    sql = _sql(_HISTORY_COLUMNS, start is not None, end is not None, False)
    return sql, _args(card, start, end)


def points_sql(card: str, start: date, end: date) -> tuple[str, list[Any]]:
    """:data:`POINT_FIELDS` of the card's valued snapshots from ``start`` to ``end``."""
    return _sql(POINT_FIELDS, True, True, True), _args(card, start, end)


def _args(card: str, start: date | None, end: date | None) -> list[Any]:
    return [card, *(bound for bound in (start, end) if bound is not None)]


@functools.cache
def _sql(columns: tuple[str, ...], bounded_below: bool, bounded_above: bool, valued: bool) -> str:
    where, count = [f"{CARD} = $1"], 1
    for bounded, op in ((bounded_below, ">="), (bounded_above, "<=")):
        if bounded:
            count += 1
            where.append(f"snapshot_date {op} ${count}")
    if valued:
        where.append("market_value IS NOT NULL")
    as_text = (*SNAPSHOT_JSON, *SNAPSHOT_MONEY)
    selected = (f"{n}::text AS {n}" if n in as_text else n for n in columns)
    return (
        f"SELECT {', '.join(selected)} FROM price_snapshots "
        f"WHERE {' AND '.join(where)} ORDER BY snapshot_date"
    )
