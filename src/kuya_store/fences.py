"""Invalidation fences: nothing fetched before a card was invalidated answers again.

``invalidate()`` (here, or another worker's, heard through the hot tier) puts a fence
at the moment it ran; a copy fetched at or before that moment may not answer, fill a
tier or be stored as a result, whichever tier or buffer it comes from. A fence is kept
for ``max_stale``, by the store's clock. Pure in-memory code, tested without servers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cachetools import TTLCache

from kuya_store.keys import ResultIdentity

if TYPE_CHECKING:
    from kuya_store.persistence import FetchRecord

__all__ = ["Fences"]


class Fences:
    """When each card was last invalidated, by card key.

    Args:
        keep_for: how long a fence is kept (``max_stale``).
        timer: seconds on the store's clock, so fences expire by the store's time.
    """

    __slots__ = ("_at", "any")

    def __init__(self, keep_for: timedelta, timer: Callable[[], float]) -> None:
        self._at: TTLCache[str, datetime] = TTLCache(
            maxsize=100_000, ttl=keep_for.total_seconds(), timer=timer
        )
        self.any = False
        """Whether any card was ever fenced: until then nothing is looked up."""

    def fenced(self, identity: ResultIdentity, fetched_at: datetime) -> bool:
        """Whether data fetched at ``fetched_at`` predates an invalidation of its card."""
        if not self.any:
            return False  # nothing invalidated yet: the common case, without a clock read
        fence = self._at.get(identity.card_key)
        return fence is not None and fetched_at <= fence

    def record_fenced(self, record: FetchRecord) -> bool:
        """Whether a fetch read back from the journal predates its card's invalidation."""
        search = record.search
        identity = ResultIdentity(search.card_identifier, search.search_type, "")
        return self.fenced(identity, record.result.fetched_at)

    def put(self, card_key: str, at: datetime) -> None:
        """This worker invalidated the card at ``at``."""
        self._at[card_key] = at
        self.any = True

    def learn(self, card_key: str, at: datetime) -> bool:
        """Another worker invalidated the card at ``at``; ``True`` when that moves its fence.

        Fences only move forward: a late or repeated message never reopens a card.
        """
        held = self._at.get(card_key)
        if held is not None and at <= held:
            return False
        self.put(card_key, at)
        return True
