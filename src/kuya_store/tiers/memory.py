"""The in-process tier: an LRU bounded in entries and bytes, with per-entry expiry.

It serves as the near-cache in front of Redis, or as the hot tier itself without Redis.
The LRU order, the expiry and the byte bound are ``cachetools``' :class:`TLRUCache`; this
module adds the entry bound (cachetools bounds one measure only), the index of variants
per card that coherence drops by, and the rules of which write may replace which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NamedTuple

from cachetools import TLRUCache, TTLCache

from kuya_store.clock import Clock, utcnow
from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult
from kuya_store.tiers import LockRelease
from kuya_store.tiers.compact import compact
from kuya_store.tiers.sizing import approximate_size

__all__ = ["MemoryTier"]


class _Entry(NamedTuple):
    expires_at: datetime
    result: StoredResult
    size: int


def _expiry(_key: ResultIdentity, entry: _Entry, _now: datetime) -> datetime:
    return entry.expires_at


def _size(entry: _Entry) -> float:
    return entry.size


class _Entries(TLRUCache[ResultIdentity, _Entry, datetime]):
    """A TLRU cache that tells its owner which keys it let go, and why."""

    def __init__(
        self, max_bytes: float, clock: Clock, gone: Callable[[ResultIdentity, bool], None]
    ) -> None:
        super().__init__(max_bytes, _expiry, clock, _size)
        self._gone = gone

    def popitem(self) -> tuple[ResultIdentity, _Entry]:
        key, entry = super().popitem()
        self._gone(key, True)
        return key, entry

    def expire(self, time: datetime | None = None) -> list[tuple[ResultIdentity, _Entry]]:
        expired = super().expire(time)
        for key, _entry in expired:
            self._gone(key, False)
        return expired


class MemoryTier:
    """Holds at most ``max_entries`` results and about ``max_bytes``; the least recently used goes.

    Values are the frozen models themselves, so a hit costs no decoding; each is stored
    as its :func:`~kuya_store.tiers.compact.compact` copy, which shares what repeats
    between results. Sizes are the estimate of
    :func:`~kuya_store.tiers.sizing.approximate_size`; a result larger than the whole
    bound is not kept at all.
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
        bound = math.inf if max_bytes is None else max_bytes
        self._entries = _Entries(bound, clock, self._unindex)
        self._by_card: dict[str, set[ResultIdentity]] = {}
        # When each card was last invalidated; an entry outlives no result it fences off.
        self._fences: TTLCache[str, datetime] = TTLCache(
            maxsize=max(max_entries, 1024), ttl=86_400.0, timer=lambda: clock().timestamp()
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """The estimated bytes of every entry held."""
        return int(self._entries.currsize)

    async def get(self, identity: ResultIdentity) -> StoredResult | None:
        return self.held(identity)

    def held(self, identity: ResultIdentity) -> StoredResult | None:
        """:meth:`get` without a coroutine: what a near-cache read does on every hit."""
        entries = self._entries
        entries.expire(self._clock())
        try:
            # One lookup (an expired entry is missing too), not the two of ``get``.
            return entries[identity].result
        except KeyError:
            return None

    async def set(
        self,
        identity: ResultIdentity,
        result: StoredResult,
        ttl: timedelta,
        release: LockRelease | None = None,
    ) -> bool:
        """Keep ``result`` for ``ttl``; ``False`` when it is older than what is held or fenced.

        A process holds no cross-process lock on this tier: ``release`` is left as it is.
        """
        if self.max_entries <= 0 or ttl <= timedelta(0):
            return True
        held = self._entries.get(identity)
        if held is not None and held.result.fetched_at > result.fetched_at:
            return False  # newest data wins: a late write of an older fetch changes nothing
        fence = self._fences.get(identity.card_key)
        if fence is not None and result.fetched_at <= fence:
            return False  # fetched before the card was invalidated
        result = compact(result)
        try:
            self._entries[identity] = _Entry(self._clock() + ttl, result, approximate_size(result))
        except ValueError:
            # Too large to keep; the older entry it replaces must not answer either.
            self._discard(identity)
            return True
        self._by_card.setdefault(identity.card_key, set()).add(identity)
        while len(self._entries) > self.max_entries:
            self._entries.popitem()
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

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self.clear()
        self._fences.clear()

    def _discard(self, identity: ResultIdentity) -> None:
        self._entries.pop(identity, None)
        self._unindex(identity, False)

    def _unindex(self, identity: ResultIdentity, evicted: bool) -> None:
        self.evictions += evicted
        variants = self._by_card.get(identity.card_key)
        if variants is not None:
            variants.discard(identity)
            if not variants:
                del self._by_card[identity.card_key]
