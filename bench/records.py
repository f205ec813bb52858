"""The fetched result both write benchmarks persist: one ``FetchRecord`` of given listings."""

from __future__ import annotations

from datetime import datetime, timedelta

import kuya_store as ks
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.stored import StoredResult


def fetch_record(number: int, listings: list[ks.Listing], at: datetime) -> FetchRecord:
    """Fetch number ``number`` of one sold card, made at ``at``."""
    search = SearchRecord(
        query="wemby",
        card_identifier="wemby",
        search_type=ks.SearchType.SOLD,
        filters={},
        params={"fetch": number},
        created_at=at,
        execution_time_ms=1,
        cache_hit=False,
        items_count=len(listings),
        result_key=f"{number:064d}",
    )
    result = StoredResult(
        query="wemby",
        card_identifier="wemby",
        search_type=ks.SearchType.SOLD,
        params={"fetch": number},
        listings=listings,
        fetched_at=at,
    )
    return FetchRecord(search=search, result=result, listing_ttl=at + timedelta(days=1))
