"""The price snapshot of an answer: it values exactly the listings the answer shows.

The upstream fetch's own valuation serves when no filter hides any of its listings;
else the shown listings are valued as of the fetch, memoised per result and filter
combination (the same filtered searches recur, and a valuation costs more than a hit).
"""

from __future__ import annotations

from datetime import datetime

from cachetools import LRUCache

from kuya_store.answering import Level
from kuya_store.models import Listing, PriceSnapshot, SearchFilters, SearchType
from kuya_store.pricing import Valuator
from kuya_store.stored import StoredResult
from kuya_store.tiers.database import value_result

__all__ = ["AnswerSnapshots"]


class AnswerSnapshots:
    """Values what an answer shows, memoising the valuations of filtered answers."""

    def __init__(self, valuator: Valuator, size: int = 4096) -> None:
        self._valuator = valuator
        self._valued: LRUCache[
            tuple[str, datetime, SearchFilters, tuple[str, ...]], PriceSnapshot
        ] = LRUCache(maxsize=size)

    def of(
        self, level: Level, stored: StoredResult, listings: list[Listing]
    ) -> PriceSnapshot | None:
        """The valuation of exactly ``listings`` (what this answer shows)."""
        if level.identity.search_type is not SearchType.SOLD:
            return None
        if stored.snapshot is not None and len(listings) == len(stored.listings):
            return stored.snapshot  # nothing hidden: the fetch's own valuation
        key = (level.identity.result_key, stored.fetched_at, level.local_filters, level.excluded)
        snapshot = self._valued.get(key)
        if snapshot is None:
            snapshot = value_result(self._valuator, stored, listings).snapshot
            assert snapshot is not None
            self._valued[key] = snapshot
        return snapshot
