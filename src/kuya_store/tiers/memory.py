"""The in-process tier: an LRU bounded in entries and bytes, with per-entry expiry.

It serves as the near-cache in front of Redis, or as the hot tier itself without Redis.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta
from typing import NamedTuple

from cachetools import TTLCache

from kuya_store.clock import Clock, utcnow
from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult
from kuya_store.tiers.sizing import approximate_size

__all__ = ["MemoryTier"]


class _Entry(NamedTuple):
    expires_at: datetime
    result: StoredResult
    size: int


class MemoryTier:
    """Holds at most ``max_entries`` results and about ``max_bytes``; the least recently used goes.

    Values are the frozen models themselves, so a hit costs no decoding. Sizes are the
    estimate of :func:`~kuya_store.tiers.sizing.approximate_size`; a result larger than
    the whole bound is not kept at all.
    """

    def __init__(
        self,
        max_entries: int,
        clock: Clock = utcnow,
        name: str = "memory",
        max_bytes: int | None = None,
    ) -> None:
        self.name = name
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.evictions = 0
        self._clock = clock
        self._entries: OrderedDict[ResultIdentity, _Entry] = OrderedDict()
        self._by_card: dict[str, set[ResultIdentity]] = {}
        self._bytes = 0
        # When each card was last invalidated; an entry outlives no result it fences off.
        self._fences: TTLCache[str, datetime] = TTLCache(
            maxsize=max(max_entries, 1024), ttl=86_400.0, timer=lambda: clock().timestamp()
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The estimated bytes of every entry held."""
        return self._bytes

    async def get(self, identity: ResultIdentity) -> StoredResult | None:
        entry = self._entries.get(identity)
        if entry is None:
            return None
        if self._clock() >= entry.expires_at:
            self._discard(identity)
            return None
        self._entries.move_to_end(identity)
        return entry.result

    async def set(self, identity: ResultIdentity, result: StoredResult, ttl: timedelta) -> bool:
        """Keep ``result`` for ``ttl``; ``False`` when it is older than what is held or fenced."""
        if self.max_entries <= 0 or ttl <= timedelta(0):
            return True
        held = self._entries.get(identity)
        if held is not None and held.result.fetched_at > result.fetched_at:
            return False  # newest data wins: a late write of an older fetch changes nothing
        fence = self._fences.get(identity.card_key)
        if fence is not None and result.fetched_at <= fence:
            return False  # fetched before the card was invalidated
        size = approximate_size(result)
        if self.max_bytes is not None and size > self.max_bytes:
            # Too large to keep; the older entry it replaces must not answer either.
            self._discard(identity)
            return True
        if held is not None:
            self._bytes -= held.size
        self._entries[identity] = _Entry(self._clock() + ttl, result, size)
        self._entries.move_to_end(identity)
        self._bytes += size
        self._by_card.setdefault(identity.card_key, set()).add(identity)
        while len(self._entries) > self.max_entries or (
            self.max_bytes is not None and self._bytes > self.max_bytes
        ):
            self._discard(next(iter(self._entries)))
            self.evictions += 1
        return True

    async def invalidate(self, identity: ResultIdentity, at: datetime | None = None) -> int:
        if at is not None:
            self.fence(identity.card_key, at)
        return self.drop_card(identity.card_key)

    def fence(self, card_key: str, at: datetime) -> None:
        """Refuse this card's data fetched up to ``at`` from now on."""
        held = self._fences.get(card_key)
        if held is None or at > held:
            self._fences[card_key] = at

    def drop_card(self, card_key: str, result_key: str | None = None) -> int:
        """Drop every variant of a card (or the one named by ``result_key``); returns how many."""
        variants = self._by_card.get(card_key)
        if not variants:
            return 0
        doomed = [v for v in variants if result_key is None or v.result_key == result_key]
        for variant in doomed:
            self._discard(variant)
        return len(doomed)

    def clear(self) -> None:
        """Drop every entry (fences stay: they are about data, not about this copy of it)."""
        self._entries.clear()
        self._by_card.clear()
        self._bytes = 0

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self.clear()
        self._fences.clear()

    def _discard(self, identity: ResultIdentity) -> None:
        entry = self._entries.pop(identity, None)
        if entry is not None:
            self._bytes -= entry.size
        variants = self._by_card.get(identity.card_key)
        if variants is not None:
            variants.discard(identity)
            if not variants:
                del self._by_card[identity.card_key]
