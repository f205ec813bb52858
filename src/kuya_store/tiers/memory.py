"""The in-process tier: a bounded LRU with per-entry expiry (near-cache, or the hot tier itself)."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta

from cachetools import TTLCache

from kuya_store.clock import Clock, utcnow
from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult

__all__ = ["MemoryTier"]


class MemoryTier:
    """Holds at most ``max_entries`` results; the least recently used goes first.

    Values are the frozen models themselves, so a hit costs no decoding.
    """

    def __init__(self, max_entries: int, clock: Clock = utcnow, name: str = "memory") -> None:
        self.name = name
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[ResultIdentity, tuple[datetime, StoredResult]] = OrderedDict()
        self._by_card: dict[str, set[ResultIdentity]] = {}
        # When each card was last invalidated; an entry outlives no result it fences off.
        self._fences: TTLCache[str, datetime] = TTLCache(
            maxsize=max(max_entries, 1024), ttl=86_400.0, timer=lambda: clock().timestamp()
        )

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, identity: ResultIdentity) -> StoredResult | None:
        entry = self._entries.get(identity)
        if entry is None:
            return None
        expires_at, result = entry
        if self._clock() >= expires_at:
            self._discard(identity)
            return None
        self._entries.move_to_end(identity)
        return result

    async def set(self, identity: ResultIdentity, result: StoredResult, ttl: timedelta) -> None:
        if self.max_entries <= 0 or ttl <= timedelta(0):
            return
        held = self._entries.get(identity)
        if held is not None and held[1].fetched_at > result.fetched_at:
            return  # newest data wins: a late write of an older fetch changes nothing
        fence = self._fences.get(identity.card_key)
        if fence is not None and result.fetched_at <= fence:
            return  # fetched before the card was invalidated
        self._entries[identity] = (self._clock() + ttl, result)
        self._entries.move_to_end(identity)
        self._by_card.setdefault(identity.card_key, set()).add(identity)
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            self._discard(oldest)

    async def invalidate(self, identity: ResultIdentity, at: datetime | None = None) -> int:
        if at is not None:
            self._fences[identity.card_key] = at
        variants = self._by_card.pop(identity.card_key, set())
        for variant in variants:
            self._entries.pop(variant, None)
        return len(variants)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()
        self._by_card.clear()
        self._fences.clear()

    def _discard(self, identity: ResultIdentity) -> None:
        self._entries.pop(identity, None)
        variants = self._by_card.get(identity.card_key)
        if variants is not None:
            variants.discard(identity)
            if not variants:
                del self._by_card[identity.card_key]
