"""The near-cache: an in-process copy of hot-tier values, coherent when Redis says so.

While the invalidation listener (:mod:`kuya_store.tiers.coherence`) is connected, every
change of a hot-tier value anywhere drops this worker's copy, so an entry may live as
long as the hot-tier value itself. While it is not connected, entries live at most
``near_cache_ttl`` (the old rule), and the whole near-cache is emptied each time the
connection drops or comes back, since what changed meanwhile is unknown.

A fill races with a change it has not heard of yet: a worker reads a value from Redis,
another worker replaces it, and the change is heard before the read's answer is used. So
a fill carries a :class:`Ticket` taken before the read; one that a change has overtaken
is refused. All of this is plain bookkeeping, tested without servers.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult
from kuya_store.tiers.memory import MemoryTier

__all__ = ["NearCache", "Ticket"]

# Changes are counted per bucket of cards, not per card, so the bookkeeping stays small;
# two cards sharing a bucket only cost a refused fill now and then.
_BUCKETS = 4096


class Ticket(NamedTuple):
    """What the near-cache had heard when a read began."""

    epoch: int
    changes: int


class NearCache:
    """A :class:`MemoryTier` whose entries other workers' changes can drop."""

    name = "memory"

    def __init__(self, memory: MemoryTier, short_ttl: timedelta) -> None:
        self.memory = memory
        self.short_ttl = short_ttl
        self.coherent = False
        """True while every change anywhere is heard (the listener is connected)."""
        self.flushes = 0
        self.refused_fills = 0
        self._epoch = 0
        self._changes = [0] * _BUCKETS

    def __len__(self) -> int:
        return len(self.memory)

    @staticmethod
    def _bucket(card_key: str) -> int:
        return hash(card_key) % _BUCKETS

    def ticket(self, identity: ResultIdentity) -> Ticket:
        """Take before reading the hot tier; hand to :meth:`set` with what was read."""
        return Ticket(self._epoch, self._changes[self._bucket(identity.card_key)])

    async def get(self, identity: ResultIdentity) -> StoredResult | None:
        return await self.memory.get(identity)

    async def set(
        self,
        identity: ResultIdentity,
        result: StoredResult,
        ttl: timedelta,
        ticket: Ticket | None = None,
    ) -> bool:
        """Keep ``result`` for the ``ttl`` it has left in the hot tier (capped unless coherent).

        Refused (``False``) when a change of this card, or a flush, was heard since
        ``ticket`` was taken: what was read may already be out of date.
        """
        if ticket is not None and ticket != self.ticket(identity):
            self.refused_fills += 1
            return False
        if not self.coherent:
            ttl = min(ttl, self.short_ttl)
        return await self.memory.set(identity, result, ttl)

    async def invalidate(self, identity: ResultIdentity, at: datetime | None = None) -> int:
        self._changes[self._bucket(identity.card_key)] += 1
        return await self.memory.invalidate(identity, at)

    # -- what the listener hears -------------------------------------------------------

    def changed(self, card_key: str, result_key: str | None = None) -> None:
        """A card's value (or, without ``result_key``, every variant) changed somewhere."""
        self._changes[self._bucket(card_key)] += 1
        self.memory.drop_card(card_key, result_key)

    def flush(self) -> None:
        """Forget everything: the hot tier was flushed, or changes may have gone unheard."""
        self._epoch += 1
        self.flushes += 1
        self.memory.clear()

    def heard_everything(self, coherent: bool) -> None:
        """The listener connected (``True``) or lost a connection (``False``)."""
        self.flush()
        self.coherent = coherent

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self.coherent = False
        await self.memory.close()
