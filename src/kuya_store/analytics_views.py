"""Analytics from materialized views on PostgreSQL, with the same answers as the live queries.

The views, made by revision 0006 and refreshed ``CONCURRENTLY`` by ``maintain()`` (readers
never wait for a refresh), summarise the search log below a watermark, a moment kept in
``analytics_watermark``:

- ``search_stats_daily``: per UTC day, search type and ``execution_time_ms``, how many
  searches and cache hits: totals, hit rates and exact nearest-rank percentiles add up
  from it (``search_stats_total``: the same summed over every day);
- ``card_searches_daily``: per UTC day and card, searches, cache hits, the greatest query
  text and the last search: what ``top_searches`` and the daily per-card counts need.

An answer adds what the views hold to what the log holds at or after the watermark (and
the part of a ``since`` day before it), in one statement, so it sees one snapshot of both.
With a refresh every few minutes that live part is a few minutes of the log. The only
staleness: a row written more than the refresh margin after its ``created_at`` (the write
buffer replaying an outage) and below the watermark is counted from the next refresh on.
Until the first refresh the watermark is ``-infinity`` and every answer is the live one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kuya_store.db.tables import metadata
from kuya_store.db.types import UTCDateTime

__all__ = [
    "REFRESH_MARGIN",
    "VIEWS",
    "Histogram",
    "consistent",
    "daily_rows",
    "merged",
    "nearest_rank",
    "refresh_views",
    "stats_rows",
    "top_rows",
    "views_present",
    "watermark",
]

REFRESH_MARGIN = timedelta(minutes=1)
"""How far below the refresh moment the watermark is set: rows written within it are live."""
VIEWS = ("search_stats_daily", "search_stats_total", "card_searches_daily", "card_directory")
"""In refresh order: ``search_stats_total`` sums ``search_stats_daily`` over every day, and
the card directory (``cards.py``) sums ``card_searches_daily``."""

_searches = metadata.tables["searches"]
_stats = sa.table(
    "search_stats_daily",
    sa.column("day"),
    sa.column("search_type"),
    sa.column("execution_time_ms"),
    sa.column("searches"),
    sa.column("cache_hits"),
    sa.column("api_calls"),
)
_total = sa.table(
    "search_stats_total",
    sa.column("search_type"),
    sa.column("execution_time_ms"),
    sa.column("searches"),
    sa.column("cache_hits"),
    sa.column("api_calls"),
)
_cards = sa.table(
    "card_searches_daily",
    sa.column("day"),
    sa.column("card"),
    sa.column("searches"),
    sa.column("cache_hits"),
    sa.column("query"),
    sa.column("last_searched_at"),
)
_directory = sa.table(
    "card_directory",
    sa.column("card"),
    sa.column("searches"),
    sa.column("cache_hits"),
    sa.column("query"),
    sa.column("last_searched_at"),
)


@dataclass(frozen=True, slots=True)
class Histogram:
    """How many searches took each number of milliseconds (``None``: not recorded)."""

    counts: dict[int | None, int]
    hits: int
    calls: int = 0
    """Upstream requests the fetches among them made (a page each)."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def nearest_rank(histogram: Histogram, p: int) -> int | None:
    """The live query's percentile: rank from every row, value among the timed ones.

    The live query computes the offset ``ceil(p * total / 100) - 1`` over all rows and
    reads that row of the timed ones in order, ``None`` when there are fewer.
    """
    total = histogram.total
    if total == 0:
        return None
    offset = min(total - 1, max(0, -(-p * total // 100) - 1))
    seen = 0
    for value in sorted(v for v in histogram.counts if v is not None):
        seen += histogram.counts[value]
        if seen > offset:
            return value
    return None


def _first_full_day(since: datetime | None) -> date | None:
    if since is None:
        return None
    moment = since.astimezone(UTC)
    day = moment.date()
    return day if moment.time() == time(0) else day + timedelta(days=1)


async def watermark(conn: AsyncConnection) -> datetime | None:
    """The views' watermark, in the snapshot of the read; ``None`` before the first refresh.

    Call :func:`consistent` first: the views must be read in the same snapshot. The moment
    is then a plain parameter, so the planner prunes the log to the partitions after it.
    """
    value = await conn.scalar(
        sa.text(
            "SELECT CASE WHEN watermark = '-infinity' THEN NULL ELSE watermark END "
            "FROM analytics_watermark"
        )
    )
    return value if isinstance(value, datetime) else None


async def consistent(conn: AsyncConnection) -> None:
    """One snapshot for every statement of this read (a refresh may commit in between)."""
    if conn.dialect.name == "postgresql" and not conn.in_transaction():
        await conn.execution_options(isolation_level="REPEATABLE READ")


def _live(since: datetime | None, mark: datetime) -> sa.ColumnElement[bool]:
    """Rows the views cannot give: at or after the watermark, and the part day of ``since``."""
    watermark: Any = sa.literal(mark, UTCDateTime)
    tail: sa.ColumnElement[bool] = _searches.c.created_at >= watermark
    if since is None:
        return tail
    day = _first_full_day(since)
    assert day is not None
    edge = datetime.combine(day, time(0), UTC)
    head = sa.and_(
        _searches.c.created_at < edge,
        _searches.c.created_at < watermark,
    )
    return sa.and_(_searches.c.created_at >= since, sa.or_(tail, head))


def _from_view(day_column: Any, since: datetime | None) -> list[Any]:
    first = _first_full_day(since)
    return [] if first is None else [day_column >= first]


async def views_present(conn: AsyncConnection) -> bool:
    """Whether this database has the views (PostgreSQL at revision 0006 or later)."""
    if conn.dialect.name != "postgresql":
        return False
    found = await conn.scalar(sa.text("SELECT to_regclass('search_stats_daily') IS NOT NULL"))
    return bool(found)


async def stats_rows(
    conn: AsyncConnection, since: datetime | None, mark: datetime
) -> dict[str, Histogram]:
    """The histogram of every search type since ``since``, from the views and the live rest."""
    hit = sa.func.count().filter(_searches.c.cache_hit.is_(True))
    pages = sa.func.greatest(sa.func.coalesce(_searches.c.pages_scraped, 1), 1)
    calls = sa.func.coalesce(sa.func.sum(pages).filter(_searches.c.cache_hit.is_not(True)), 0)
    live = (
        sa.select(
            _searches.c.search_type,
            _searches.c.execution_time_ms,
            sa.func.count().label("searches"),
            hit.label("cache_hits"),
            calls.label("api_calls"),
        )
        .where(_live(since, mark))
        .group_by(_searches.c.search_type, _searches.c.execution_time_ms)
    )
    # Since the beginning: every day summed already, a row per search type and latency.
    source = _total if since is None else _stats
    kept = sa.select(
        source.c.search_type,
        source.c.execution_time_ms,
        source.c.searches,
        source.c.cache_hits,
        source.c.api_calls,
    ).where(*([] if since is None else _from_view(_stats.c.day, since)))
    both = sa.union_all(kept, live).subquery()
    rows = await conn.execute(
        sa.select(
            both.c.search_type,
            both.c.execution_time_ms,
            sa.func.sum(both.c.searches),
            sa.func.sum(both.c.cache_hits),
            sa.func.sum(both.c.api_calls),
        ).group_by(both.c.search_type, both.c.execution_time_ms)
    )
    counts: dict[str, dict[int | None, int]] = {}
    hits: dict[str, int] = {}
    spent: dict[str, int] = {}
    for kind, ms, searches, cache_hits, api_calls in rows:
        counts.setdefault(kind, {})[None if ms is None else int(ms)] = int(searches)
        hits[kind] = hits.get(kind, 0) + int(cache_hits)
        spent[kind] = spent.get(kind, 0) + int(api_calls or 0)
    return {kind: Histogram(counts[kind], hits[kind], spent[kind]) for kind in counts}


def merged(histograms: Iterable[Histogram]) -> Histogram:
    counts: dict[int | None, int] = {}
    hits = calls = 0
    for histogram in histograms:
        hits += histogram.hits
        calls += histogram.calls
        for value, count in histogram.counts.items():
            counts[value] = counts.get(value, 0) + count
    return Histogram(counts, hits, calls)


async def top_rows(
    conn: AsyncConnection, limit: int, since: datetime | None, mark: datetime
) -> list[Any]:
    """``top_searches`` rows from the views and the live rest: card, query, counts, last."""
    card = card_key()
    live = (
        sa.select(
            card.label("card"),
            sa.func.count().label("searches"),
            sa.func.count().filter(_searches.c.cache_hit.is_(True)).label("cache_hits"),
            sa.func.max(_searches.c.query).label("query"),
            sa.func.max(_searches.c.created_at).label("last_searched_at"),
        )
        .where(_live(since, mark))
        .group_by(card)
    )
    # Since the beginning: the directory has a row per card, the daily view one per day.
    source = _directory if since is None else _cards
    kept = sa.select(
        source.c.card,
        source.c.searches,
        source.c.cache_hits,
        source.c.query,
        source.c.last_searched_at,
    ).where(*([] if since is None else _from_view(_cards.c.day, since)))
    both = sa.union_all(kept, live).subquery()
    count = sa.func.sum(both.c.searches).label("n")
    last = sa.func.max(both.c.last_searched_at).label("last")
    rows = await conn.execute(
        sa.select(
            both.c.card, sa.func.max(both.c.query), count, sa.func.sum(both.c.cache_hits), last
        )
        .group_by(both.c.card)
        .order_by(count.desc(), last.desc(), both.c.card)
        .limit(limit)
    )
    return list(rows)


def card_key() -> sa.ColumnElement[str]:
    """The card a search-log row counts for, as the views group it."""
    return sa.func.coalesce(_searches.c.card_identifier, sa.func.lower(_searches.c.query))


async def daily_rows(
    conn: AsyncConnection, card: str, since: datetime, mark: datetime | None
) -> list[tuple[date, int, int]]:
    """Searches and cache hits of one card per UTC day since ``since`` (a UTC midnight)."""
    day: Any = (
        sa.cast(sa.func.timezone("UTC", _searches.c.created_at), sa.Date)
        if conn.dialect.name == "postgresql"
        else sa.func.date(_searches.c.created_at)  # SQLite keeps UTC text
    )
    hit = sa.func.count().filter(_searches.c.cache_hit.is_(True))
    live_where = [card_key() == card, _searches.c.created_at >= since]
    if mark is not None:
        live_where.append(_searches.c.created_at >= sa.literal(mark, UTCDateTime))
    live = (
        sa.select(day.label("day"), sa.func.count().label("searches"), hit.label("cache_hits"))
        .where(*live_where)
        .group_by(day)
    )
    parts: Any = live
    if mark is not None:
        kept = sa.select(_cards.c.day, _cards.c.searches, _cards.c.cache_hits).where(
            _cards.c.card == card, _cards.c.day >= since.date()
        )
        parts = sa.union_all(kept, live)
    both = parts.subquery()
    rows = await conn.execute(
        sa.select(both.c.day, sa.func.sum(both.c.searches), sa.func.sum(both.c.cache_hits))
        .group_by(both.c.day)
        .order_by(both.c.day)
    )
    return [
        (r[0] if isinstance(r[0], date) else date.fromisoformat(r[0]), int(r[1]), int(r[2]))
        for r in rows
    ]


async def refresh_views(conn: AsyncConnection, now: datetime) -> list[str]:
    """Move the watermark to ``now - REFRESH_MARGIN`` and refresh the views with it."""
    if not await views_present(conn):
        return []
    await conn.execute(
        sa.text("UPDATE analytics_watermark SET watermark = :at, refreshed_at = now()"),
        {"at": now - REFRESH_MARGIN},
    )
    for view in VIEWS:
        await conn.execute(sa.text(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}"))
    return list(VIEWS)
