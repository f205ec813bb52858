"""The records the write-behind writes: a search-log row, a fetched result, and their rules.

Pure data and decisions, shared by the request path that makes the records, the write
journal that carries them and the database that writes them
(:mod:`kuya_store.persistence`, which exports them under their old names too).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from kuya_store.models import PriceSnapshot, SearchType
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult

__all__ = ["SEARCH_COLUMNS", "FetchRecord", "SearchRecord", "listing_ttl", "own_valuation"]


@dataclass(frozen=True, slots=True)
class SearchRecord:
    """One ``searches`` row: a search call, whether a tier or the fetcher answered it."""

    query: str
    card_identifier: str
    search_type: SearchType
    filters: dict[str, bool]
    params: dict[str, Any]
    created_at: datetime
    execution_time_ms: int
    cache_hit: bool
    pages_scraped: int | None = None
    items_count: int | None = None
    user_id: int | None = None
    result_key: str | None = None
    fetch_stats: dict[str, int] | None = None
    complete: bool | None = None
    trace: object | None = field(default=None, compare=False, repr=False)
    """The span of the search or fetch this row records (its write is traced under it)."""
    record_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Names this record wherever it is replayed from: the row is written once."""

    def row(self) -> dict[str, Any]:
        """The row's values by column (every field but ``trace``)."""
        return {
            "query": self.query,
            "search_type": self.search_type.value,
            "filters": self.filters,
            "pages_scraped": self.pages_scraped,
            "items_count": self.items_count,
            "created_at": self.created_at,
            "execution_time_ms": self.execution_time_ms,
            "cache_hit": self.cache_hit,
            "user_id": self.user_id,
            "card_identifier": self.card_identifier,
            "params": self.params,
            "result_key": self.result_key,
            "fetch_stats": self.fetch_stats,
            "complete": self.complete,
            "record_key": self.record_key,
        }


SEARCH_COLUMNS = tuple(f.name for f in fields(SearchRecord) if f.name != "trace")


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """A fetched result to persist: its search row, its listings and, if sold, its snapshot."""

    search: SearchRecord
    result: StoredResult
    listing_ttl: datetime
    snapshot: PriceSnapshot | None = None
    """The store's valuation of ``result.listings`` as of ``result.fetched_at``, if sold."""


def own_valuation(record: FetchRecord, start: datetime) -> PriceSnapshot | None:
    """The fetch's own valuation, if it is the day's whenever the day's sales are its listings.

    The request path values exactly ``result.listings`` as of ``fetched_at``
    (``upstream``), which is the search row's ``created_at``, for the UTC day that
    starts at ``start``; the day's valuation values each sale once, as of the day's
    newest fetch. They agree when the fetch is that newest one, its listings are the
    day's sales with the values it wrote (the caller's statement checks both) and it
    gives no ``item_id`` twice (counted twice in its own valuation, once in the day's).
    """
    snapshot = record.snapshot
    if (
        snapshot is None
        or record.result.fetched_at != record.search.created_at
        or snapshot.card_identifier != record.search.card_identifier
        or snapshot.snapshot_date != start.date()
    ):
        return None
    listings = record.result.listings
    if len({x.item_id for x in listings}) != len(listings):
        return None
    return snapshot


def listing_ttl(settings: StoreSettings, search_type: SearchType, now: datetime) -> datetime:
    """When a listing seen now is due for a refresh: active ones change, sold ones rarely."""
    after = (
        settings.active_fresh_for
        if search_type is SearchType.ACTIVE
        else settings.listing_refresh_after
    )
    return now + after
