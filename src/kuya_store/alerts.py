"""Price alerts on saved searches: fire when the watched price falls below the threshold.

An alert watches the latest market value of a card (sold searches) or the cheapest active
listing (active searches). Each observation has a key, kept on the saved search, so the
same observation never fires twice.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kuya_store.clock import Clock
from kuya_store.db.tables import metadata
from kuya_store.errors import FetcherError, InvalidInputError
from kuya_store.models import CompsResult, SearchFilters, SearchType, _Frozen

if TYPE_CHECKING:
    from kuya_store.repository import CompsRepository

__all__ = ["Alert", "run_alerts"]

_saved = metadata.tables["saved_searches"]


class Alert(_Frozen):
    """A saved search whose watched price fell below its threshold."""

    saved_search_id: int
    user_id: int
    name: str
    query: str
    search_type: SearchType
    threshold: Decimal
    observed_price: Decimal
    observed_at: datetime
    kind: Literal["market_value", "cheapest_listing"]
    item_id: str | None = None


async def run_alerts(
    engine: AsyncEngine, clock: Clock, comps: CompsRepository, refresh_budget: int = 0
) -> list[Alert]:
    """Evaluate every enabled alert once; return those that fire.

    An alert fires when the latest market value (sold) or the cheapest active listing
    is below its threshold, and never twice for the same observation. Stored data is
    used first; up to ``refresh_budget`` saved searches whose data is not fresh are
    refreshed through the fetcher (each such refresh is one API call at most).
    """
    if (
        isinstance(refresh_budget, bool)
        or not isinstance(refresh_budget, int)
        or refresh_budget < 0
    ):
        raise InvalidInputError("refresh_budget", "must be a non-negative integer")
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(_saved)
                .where(_saved.c.alert_enabled.is_(True), _saved.c.alert_threshold.is_not(None))
                .order_by(_saved.c.id)
            )
        ).all()
    budget = refresh_budget
    fired: list[Alert] = []
    updates: list[tuple[int, dict[str, Any]]] = []
    for row in rows:
        kind = SearchType(row.search_type)
        filters = SearchFilters(**(row.filters or {}))
        threshold: Decimal = row.alert_threshold
        result = await comps.peek(row.query, kind, filters)
        if (result is None or result.source == "stale") and budget > 0:
            try:
                result = await comps.search(row.query, kind, filters, user_id=row.user_id)
                if not result.cache_hit:
                    budget -= 1
            except FetcherError:
                pass  # keep what was stored, if anything
        observation = _observe(result, kind)
        now = clock()
        values: dict[str, Any] = {"last_run": now}
        if (
            observation is not None
            and observation[1] < threshold
            and observation[0] != row.last_alert_observation
        ):
            key, price, item_id, observed_at = observation
            values.update(last_alert_observation=key, last_alerted_at=now)
            fired.append(
                Alert(
                    saved_search_id=row.id,
                    user_id=row.user_id,
                    name=row.name,
                    query=row.query,
                    search_type=kind,
                    threshold=threshold,
                    observed_price=price,
                    observed_at=observed_at,
                    kind="market_value" if kind is SearchType.SOLD else "cheapest_listing",
                    item_id=item_id,
                )
            )
        updates.append((row.id, values))
    # Recorded together at the end: if the database fails first, nothing is marked as fired,
    # so the caller, who gets the error instead of the list, sees these alerts next time.
    if updates:
        async with engine.begin() as conn:
            for saved_id, values in updates:
                await conn.execute(
                    sa.update(_saved).where(_saved.c.id == saved_id).values(**values)
                )
    return fired


def _observe(
    result: CompsResult | None, kind: SearchType
) -> tuple[str, Decimal, str | None, datetime] | None:
    """What an alert watches, with a key that names this exact observation."""
    if result is None:
        return None
    if kind is SearchType.SOLD:
        snapshot = result.snapshot
        if snapshot is None or snapshot.market_value is None:
            return None
        key = f"sold|{snapshot.card_identifier}|{snapshot.snapshot_date}|{snapshot.market_value}"
        return key[:200], snapshot.market_value, None, result.fetched_at
    if not result.listings:
        return None
    cheapest = min(result.listings, key=lambda x: (x.price, x.item_id))
    key = f"active|{result.card_identifier}|{cheapest.item_id}|{cheapest.price}"
    return key[:200], cheapest.price, cheapest.item_id, result.fetched_at
