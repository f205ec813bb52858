"""``store.analytics``: price history and trends, search statistics, the most searched cards."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kuya_store.analytics_views import (
    Histogram,
    consistent,
    daily_rows,
    merged,
    nearest_rank,
    stats_rows,
    top_rows,
    views_present,
    watermark,
)
from kuya_store.db.driver_reads import PooledDriver
from kuya_store.db.engine import DatabaseFeature, idle_driver_connection, single_statement
from kuya_store.db.rows import models_from_rows as _stored
from kuya_store.db.snapshot_reads import (
    CARD,
    POINT_FIELDS,
    POINT_MONEY,
    SNAPSHOT_MONEY,
    history_sql,
    points_sql,
)
from kuya_store.db.snapshot_reads import SNAPSHOT_FIELDS as _SNAPSHOT_FIELDS
from kuya_store.db.snapshot_reads import SNAPSHOT_JSON as _SNAPSHOT_JSON
from kuya_store.db.tables import metadata
from kuya_store.db.types import Money
from kuya_store.errors import InvalidInputError, NotFoundError
from kuya_store.models import PriceSnapshot, _Frozen
from kuya_store.persistence import snapshot_from_row
from kuya_store.pricing import GradingOutlook, grading_outlook, normalize_card

__all__ = [
    "Analytics",
    "DailySearches",
    "PriceTrend",
    "SearchStats",
    "TopSearch",
    "TrendPoint",
    "TypeStats",
]

_snapshots = metadata.tables["price_snapshots"]
_searches = metadata.tables["searches"]
_CENT = Decimal("0.01")
_SNAPSHOT_COLUMNS: list[sa.ColumnElement[Any]] = [_snapshots.c[name] for name in _SNAPSHOT_FIELDS]


def _driver_typed(columns: Sequence[sa.ColumnElement[Any]]) -> list[sa.ColumnElement[Any]]:
    """The columns as PostgreSQL's driver types them: its ``Decimal`` of a ``NUMERIC(10, 2)``
    already has two places, so ``Money`` has nothing to add (SQLite keeps it: integer cents)."""
    plain = sa.Numeric(10, 2, asdecimal=True)
    return [
        sa.type_coerce(c, plain).label(c.key) if isinstance(c.type, Money) else c for c in columns
    ]


_PG_SNAPSHOT_COLUMNS = _driver_typed(_SNAPSHOT_COLUMNS)
_POINT_COLUMNS: list[sa.ColumnElement[Any]] = [
    _snapshots.c.snapshot_date,
    _snapshots.c.market_value,
]
_PG_POINT_COLUMNS = _driver_typed(_POINT_COLUMNS)


def _history(
    columns: Sequence[sa.ColumnElement[Any]], card: str, start: date | None, end: date | None
) -> sa.Select[Any]:
    stmt = sa.select(*columns).where(_snapshots.c.card_identifier == card)
    if start is not None:
        stmt = stmt.where(_snapshots.c.snapshot_date >= start)
    if end is not None:
        stmt = stmt.where(_snapshots.c.snapshot_date <= end)
    return stmt.order_by(_snapshots.c.snapshot_date)


class TrendPoint(_Frozen):
    """One day's market value."""

    snapshot_date: date
    market_value: Decimal


class PriceTrend(_Frozen):
    """How a card's market value moved over a window of days."""

    card_identifier: str
    days: int
    points: list[TrendPoint]
    change_pct: Decimal | None
    """Last over first market value, in percent; ``None`` with fewer than two points."""
    slope_per_day: Decimal | None
    """Least-squares change of market value per day; ``None`` with fewer than two points."""
    direction: Literal["up", "down", "flat", "unknown"]


class TypeStats(_Frozen):
    """Search statistics of one search type (or of all)."""

    total: int
    cache_hits: int
    cache_hit_rate: float
    api_calls: int
    api_calls_saved: int
    p50_ms: int | None
    p95_ms: int | None


class SearchStats(TypeStats):
    """Search statistics over a window, overall and per search type."""

    since: datetime | None
    by_type: dict[str, TypeStats]


class TopSearch(_Frozen):
    """A card and how often it was searched."""

    card_identifier: str
    query: str
    searches: int
    cache_hits: int
    last_searched_at: datetime


class DailySearches(_Frozen):
    """How often one card was searched on one UTC day."""

    day: date
    searches: int
    cache_hits: int


def _type_stats(histogram: Histogram) -> TypeStats:
    total, hits = histogram.total, histogram.hits
    return TypeStats(
        total=total,
        cache_hits=hits,
        cache_hit_rate=round(hits / total, 4) if total else 0.0,
        api_calls=histogram.calls,
        api_calls_saved=hits,
        p50_ms=nearest_rank(histogram, 50),
        p95_ms=nearest_rank(histogram, 95),
    )


def _as_datetime(value: date | datetime | None, field: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInputError(field, "must be timezone-aware")
        return value
    raise InvalidInputError(field, "must be a datetime")


def _as_date(value: date | datetime | None, field: str) -> date | None:
    """The UTC day of a bound: snapshots are dated in UTC, like every moment the store keeps."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInputError(field, "must be timezone-aware (naive datetimes are ambiguous)")
        return value.astimezone(UTC).date()
    if isinstance(value, date):
        return value
    raise InvalidInputError(field, "must be a date or datetime")


def _slope(points: list[TrendPoint]) -> Decimal:
    origin = points[0].snapshot_date
    xs = [Decimal((p.snapshot_date - origin).days) for p in points]
    ys = [p.market_value for p in points]
    n = Decimal(len(points))
    mean_x = sum(xs, Decimal(0)) / n
    mean_y = sum(ys, Decimal(0)) / n
    spread = sum(((x - mean_x) ** 2 for x in xs), Decimal(0))
    if spread == 0:
        return Decimal("0.00")
    covariance = sum(((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)), Decimal(0))
    return (covariance / spread).quantize(_CENT, rounding=ROUND_HALF_UP)


class Analytics(DatabaseFeature):
    """Read-only analytics over the persistent tier (the migration plan's Phase 4).

    On PostgreSQL the search statistics come from materialized views kept by
    ``maintain()`` (``analytics_views.py``); ``fresh=True`` runs the live query instead.
    Both give the same answers on the same data.
    """

    _purpose = "analytics read the database"
    _views: bool | None = None

    async def _watermark(self, conn: AsyncConnection, fresh: bool) -> datetime | None:
        """The views' watermark when the views answer; ``None`` for the live query."""
        if fresh:
            return None
        await consistent(conn)
        if self._views is None:
            self._views = await views_present(conn)
        return await watermark(conn) if self._views else None

    @staticmethod
    def history_statement(
        card_identifier: str, start: date | None, end: date | None
    ) -> sa.Select[Any]:
        """The query behind :meth:`price_history` (one index range scan per card)."""
        return _history(_SNAPSHOT_COLUMNS, card_identifier, start, end)

    async def price_history(
        self, card: str, start: date | datetime | None = None, end: date | datetime | None = None
    ) -> list[PriceSnapshot]:
        """A card's daily snapshots between ``start`` and ``end`` (inclusive), oldest first.

        ``card`` is what a user would type; it is normalised like a search. A bound is a
        date (a UTC day) or a timezone-aware datetime, which stands for its UTC day.
        """
        card_identifier = normalize_card(card)
        first, last = _as_date(start, "start"), _as_date(end, "end")
        if first is not None and last is not None and first > last:
            raise InvalidInputError("start", "must not be after end")

        async def on_driver(driver: Any) -> list[PriceSnapshot]:
            # The driver's own rows: typed by PostgreSQL, money and JSON as text decoded here.
            sql, args = history_sql(card_identifier, first, last)
            rows = await driver.fetch(sql, *args)
            same = {CARD: card_identifier}
            return _stored(
                PriceSnapshot, _SNAPSHOT_FIELDS, rows, _SNAPSHOT_JSON, same, SNAPSHOT_MONEY
            )

        async def read(conn: AsyncConnection) -> list[PriceSnapshot]:
            driver = idle_driver_connection(conn)
            if driver is not None:
                return await on_driver(driver)
            conn = await single_statement(conn)
            pg = conn.dialect.name == "postgresql"
            columns = _PG_SNAPSHOT_COLUMNS if pg else _SNAPSHOT_COLUMNS
            statement = _history(columns, card_identifier, first, last)
            return _stored(PriceSnapshot, _SNAPSHOT_FIELDS, await conn.execute(statement))

        async def pooled(conn: PooledDriver) -> list[PriceSnapshot]:
            return await on_driver(conn.driver)

        return await self._driver_read(pooled, read)

    async def price_trend(self, card: str, days: int = 30) -> PriceTrend:
        """Change in percent and slope per day of the market value over the last ``days``."""
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
            raise InvalidInputError("days", "must be an integer from 1 to 3650")
        today = self._clock().date()
        card_identifier = normalize_card(card)

        start = today - timedelta(days=days)

        async def on_driver(driver: Any) -> list[TrendPoint]:
            sql, args = points_sql(card_identifier, start, today)
            rows = await driver.fetch(sql, *args)
            return _stored(TrendPoint, POINT_FIELDS, rows, decimal_fields=POINT_MONEY)

        async def read(conn: AsyncConnection) -> list[TrendPoint]:
            driver = idle_driver_connection(conn)
            if driver is not None:
                return await on_driver(driver)
            conn = await single_statement(conn)
            pg = conn.dialect.name == "postgresql"
            statement = _history(
                _PG_POINT_COLUMNS if pg else _POINT_COLUMNS, card_identifier, start, today
            ).where(_snapshots.c.market_value.is_not(None))
            return _stored(TrendPoint, POINT_FIELDS, await conn.execute(statement))

        async def pooled(conn: PooledDriver) -> list[TrendPoint]:
            return await on_driver(conn.driver)

        points = await self._driver_read(pooled, read)
        change = slope = None
        direction: Literal["up", "down", "flat", "unknown"] = "unknown"
        if len(points) >= 2:
            first, last = points[0].market_value, points[-1].market_value
            if first > 0:
                change = ((last - first) / first * 100).quantize(_CENT, rounding=ROUND_HALF_UP)
            slope = _slope(points)
            direction = "up" if slope > 0 else "down" if slope < 0 else "flat"
        return PriceTrend(
            card_identifier=normalize_card(card),
            days=days,
            points=points,
            change_pct=change,
            slope_per_day=slope,
            direction=direction,
        )

    async def grading_outlook(
        self,
        card: str,
        *,
        odds: dict[str, float | Decimal],
        grading_cost: Decimal | float | str,
        raw_value: Decimal | float | str | None = None,
    ) -> GradingOutlook:
        """Is grading this raw card worth it? From the card's newest snapshot.

        The newest ``price_snapshots`` row of the card gives each grade's market value
        (its ``grading_analysis``); ``odds`` and ``grading_cost`` are the caller's, see
        :func:`kuya_store.grading_outlook` and ``docs/pricing.md``.

        Raises:
            NotFoundError: no snapshot of the card holds sales by grade.
            InvalidInputError: bad odds or cost, or no raw value to compare with.
        """
        card_identifier = normalize_card(card)
        stmt = (
            sa.select(_snapshots)
            .where(
                _snapshots.c.card_identifier == card_identifier,
                _snapshots.c.grading_analysis.is_not(None),
            )
            .order_by(_snapshots.c.snapshot_date.desc())
            .limit(1)
        )
        async with self._connect() as conn:
            row = (await conn.execute(stmt)).first()
        snapshot = None if row is None else snapshot_from_row(row)
        if snapshot is None or not snapshot.grading_analysis:
            raise NotFoundError(f"no sales by grade stored for card {card_identifier!r}")
        return grading_outlook(snapshot, odds=odds, grading_cost=grading_cost, raw_value=raw_value)

    async def search_stats(
        self, since: datetime | None = None, *, fresh: bool = False
    ) -> SearchStats:
        """Totals, cache hit rate, API calls (made and saved) and latency percentiles.

        Args:
            fresh: run the live query over the search log rather than the views.
        """
        start = _as_datetime(since, "since")
        where = [_searches.c.created_at >= start] if start is not None else []
        hit = sa.case((_searches.c.cache_hit.is_(True), 1), else_=0)

        async def read(conn: AsyncConnection) -> SearchStats:
            mark = await self._watermark(conn, fresh)
            if mark is not None:
                kinds = await stats_rows(conn, start, mark)
                overall = _type_stats(merged(kinds.values()))
                by_type = {kind: _type_stats(kinds[kind]) for kind in sorted(kinds)}
                return SearchStats(**overall.model_dump(), since=start, by_type=by_type)
            rows = await conn.execute(
                sa.select(_searches.c.search_type, sa.func.count(), sa.func.sum(hit))
                .where(*where)
                .group_by(_searches.c.search_type)
            )
            counts = {r[0]: (int(r[1]), int(r[2] or 0)) for r in rows}
            by_type = {
                kind: await self._type_stats(
                    conn, total, hits, [*where, _searches.c.search_type == kind]
                )
                for kind, (total, hits) in sorted(counts.items())
            }
            total = sum(t for t, _ in counts.values())
            hits = sum(h for _, h in counts.values())
            overall = await self._type_stats(conn, total, hits, where)
            return SearchStats(**overall.model_dump(), since=start, by_type=by_type)

        return await self._read(read)

    async def _type_stats(self, conn: Any, total: int, hits: int, where: list[Any]) -> TypeStats:
        # Every page a fetch asked was one paid request (a fetch row with no count: one).
        pages = sa.case(
            (sa.or_(_searches.c.pages_scraped.is_(None), _searches.c.pages_scraped < 1), 1),
            else_=_searches.c.pages_scraped,
        )
        calls = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(pages), 0)).where(
                *where, _searches.c.cache_hit.is_(False)
            )
        )
        return TypeStats(
            total=total,
            cache_hits=hits,
            cache_hit_rate=round(hits / total, 4) if total else 0.0,
            api_calls=int(calls or 0),
            api_calls_saved=hits,
            p50_ms=await self._percentile(conn, where, 50, total),
            p95_ms=await self._percentile(conn, where, 95, total),
        )

    @staticmethod
    async def _percentile(conn: Any, where: list[Any], p: int, total: int) -> int | None:
        # Nearest rank by ORDER BY .. OFFSET: the same SQL on PostgreSQL and SQLite.
        if total == 0:
            return None
        offset = min(total - 1, max(0, -(-p * total // 100) - 1))
        value = (
            await conn.execute(
                sa.select(_searches.c.execution_time_ms)
                .where(*where, _searches.c.execution_time_ms.is_not(None))
                .order_by(_searches.c.execution_time_ms)
                .offset(offset)
                .limit(1)
            )
        ).scalar()
        return int(value) if value is not None else None

    async def top_searches(
        self, limit: int = 10, since: datetime | None = None, *, fresh: bool = False
    ) -> list[TopSearch]:
        """The most searched cards, most searched first (``fresh``: the live query)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInputError("limit", "must be an integer from 1 to 1000")
        start = _as_datetime(since, "since")
        card = sa.func.coalesce(_searches.c.card_identifier, sa.func.lower(_searches.c.query))
        hit = sa.case((_searches.c.cache_hit.is_(True), 1), else_=0)
        count = sa.func.count().label("searches")
        last = sa.func.max(_searches.c.created_at).label("last")
        stmt = (
            sa.select(
                card.label("card"), sa.func.max(_searches.c.query), count, sa.func.sum(hit), last
            )
            .group_by(card)
            .order_by(count.desc(), last.desc(), card)
            .limit(limit)
        )
        if start is not None:
            stmt = stmt.where(_searches.c.created_at >= start)

        async def read(conn: AsyncConnection) -> list[Any]:
            mark = await self._watermark(conn, fresh)
            if mark is not None:
                return await top_rows(conn, limit, start, mark)
            return list((await conn.execute(stmt)).all())

        rows = await self._read(read)
        return [
            TopSearch(
                card_identifier=r[0],
                query=r[1],
                searches=int(r[2]),
                cache_hits=int(r[3] or 0),
                last_searched_at=r[4],
            )
            for r in rows
        ]

    async def daily_searches(
        self, card: str, days: int = 30, *, fresh: bool = False
    ) -> list[DailySearches]:
        """How often a card was searched on each of the last ``days`` UTC days, oldest first.

        Days without a search are left out. ``card`` is normalised like a search.
        """
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
            raise InvalidInputError("days", "must be an integer from 1 to 3650")
        card_identifier = normalize_card(card)
        first = self._clock().astimezone(UTC).date() - timedelta(days=days - 1)
        since = datetime.combine(first, datetime.min.time(), UTC)

        async def read(conn: AsyncConnection) -> list[DailySearches]:
            mark = await self._watermark(conn, fresh)
            rows = await daily_rows(conn, card_identifier, since, mark)
            return [DailySearches(day=d, searches=n, cache_hits=h) for d, n, h in rows]

        return await self._read(read)
