"""Write records as a store makes them: a complete fetch (search, result, snapshot), a hit."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import kuya_store as ks
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.stored import StoredResult


def fetch_record(
    query: str,
    now: datetime,
    listings: list[ks.Listing],
    market_value: str,
    *,
    params: dict[str, Any],
    **search: Any,
) -> FetchRecord:
    """A user-less sold fetch of ``listings`` at ``now``, fresh for a day.

    Args:
        search: the rest of its search row (filters, execution_time_ms, result_key, ...);
            ``created_at`` defaults to ``now``.
    """
    card = ks.normalize_card(query)
    snapshot = ks.PriceSnapshot(
        card_identifier=card,
        snapshot_date=now.date(),
        market_value=market_value,
        sample_size=len(listings),
    )
    row = SearchRecord(
        query=query,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        params=params,
        created_at=search.pop("created_at", now),
        cache_hit=False,
        pages_scraped=1,
        items_count=len(listings),
        complete=True,
        **search,
    )
    result = StoredResult(
        query=query,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        params=params,
        listings=listings,
        fetched_at=now,
        snapshot=snapshot,
    )
    return FetchRecord(row, result, now + timedelta(days=1), snapshot)


def hit_of(search: SearchRecord, at: datetime) -> SearchRecord:
    """A later cache hit of the same search, under a record key of its own."""
    return dataclasses.replace(search, cache_hit=True, created_at=at, record_key=uuid.uuid4().hex)


def result_of(card: str, at: datetime, price: str = "10.00") -> StoredResult:
    """A sold result of one listing for ``card`` (its own query, no params) fetched ``at``."""
    return StoredResult(
        query=card,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        params={},
        listings=[ks.Listing(item_id="1", title=card, price=Decimal(price), sold=True)],
        fetched_at=at,
    )
