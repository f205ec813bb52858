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

A worker's own write comes back as a change too. It is told apart by its witness: the
script that writes a value also touches a key naming that one write, and Redis reports
every key a script touched in the same message. :class:`EchoLedger` holds the writes in
flight; a change of a value whose only witnesses are this worker's is its echo. An echo
still refuses every fill begun before it (a read from before the write may be older), but
not the fill of that very write, and it leaves the copy of that write in place. Any other
change, or an echo merged with one, evicts as before.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult
from kuya_store.tiers.memory import MemoryTier

__all__ = ["EchoLedger", "NearCache", "Ticket"]

# Changes are counted per bucket of cards, not per card, so the bookkeeping stays small;
# two cards sharing a bucket only cost a refused fill now and then.
_BUCKETS = 4096
# Writes in flight are few (one per connection); the rest wait for an echo or a fill and
# are safe to forget, which only costs their copy one more read from Redis.
_EXPECTED_WRITES = 4096

Heard = Literal["change", "echo", "keep"]
"""What a change of a value is: another's (``change``), or this worker's own write
(``echo``: drop the copy, unless it is that write's: ``keep``)."""


class Ticket(NamedTuple):
    """What the near-cache had heard when a read (or, with ``own_write``, a write) began."""

    epoch: int
    changes: int
    echoes: int
    own_write: bool = False


@dataclass(slots=True)
class _Write:
    value: tuple[str, str]
    fetched_at: datetime
    written: bool = False
    shared: bool = False
    heard: bool = False
    filled: bool = False
    kept: bool = False


class EchoLedger:
    """This worker's value writes whose change it has not heard, or whose copy it keeps.

    Pure bookkeeping: :meth:`expect` before the write, :meth:`heard` for each change of a
    value, :meth:`settle` with the write's outcome, :meth:`fill_of`/:meth:`filled` around
    the near-cache fill that follows a written one. Writes are told apart by name, and
    their fills by the data's ``fetched_at``.
    """

    def __init__(self, limit: int = _EXPECTED_WRITES) -> None:
        self._limit = limit
        self._token = secrets.token_hex(8)
        self._count = 0
        self._writes: dict[str, _Write] = {}
        self._by_value: dict[tuple[str, str], set[str]] = {}

    def __len__(self) -> int:
        return len(self._writes)

    def expect(self, card_key: str, result_key: str, fetched_at: datetime) -> str | None:
        """Name a write about to be sent (its witness); ``None`` when too many are pending."""
        value = (card_key, result_key)
        # Earlier writes of this value only waiting for their fill: refusing it is safe.
        for name in [n for n in self._by_value.get(value, ()) if self._waits_for_fill(n)]:
            self._forget(name)
        if len(self._writes) >= self._limit:
            for name in [n for n, w in self._writes.items() if w.written]:
                self._forget(name)
            if len(self._writes) >= self._limit:
                return None
        self._count += 1
        name = f"{self._token}{self._count:x}"
        write = self._writes[name] = _Write(value, fetched_at)
        names = self._by_value.setdefault(value, set())
        for other in names:
            # Of two writes in flight, which one Redis kept is not known here: neither
            # may keep its copy through an echo.
            write.shared = self._writes[other].shared = True
        names.add(name)
        return name

    def heard(self, card_key: str, result_key: str, witnesses: list[str]) -> Heard:
        """A value changed, by the writes named in ``witnesses`` (and maybe by others)."""
        value = (card_key, result_key)
        mine = [self._writes.get(n) for n in witnesses]
        if not witnesses or any(w is None or w.heard or w.value != value for w in mine):
            # Not a write of ours, or ours merged with another's: a change like any other.
            for name in witnesses:
                if name in self._writes:
                    self._forget(name)
            return "change"
        verdict: Heard = "keep" if len(mine) == 1 and mine[0] and mine[0].kept else "echo"
        for name in witnesses:
            self._writes[name].heard = True
            self._tidy(name)
        return verdict

    def settle(self, name: str, written: bool) -> bool:
        """The write came back; ``True`` if its echo was let through and must now be applied.

        ``written`` only when Redis answered that it wrote it; after any other outcome
        (refused, failed, cancelled) no echo of it is let through.
        """
        write = self._writes.get(name)
        if write is None:
            return False
        if written:
            write.written = True
            return False
        self._forget(name)
        return write.heard

    def fill_of(self, card_key: str, result_key: str, fetched_at: datetime) -> tuple[str, bool]:
        """The written write whose data a fill carries (``""`` if none), and if it was alone.

        Only a write that was the one in flight of its value may keep its copy through
        echoes.
        """
        for name in self._by_value.get((card_key, result_key), ()):
            write = self._writes[name]
            if write.written and not write.filled and write.fetched_at == fetched_at:
                return name, not write.shared
        return "", False

    def filled(self, name: str, kept: bool) -> None:
        """The near-cache took the write's value (``kept``), or refused it."""
        write = self._writes.get(name)
        if write is not None:
            write.filled, write.kept = True, kept
            self._tidy(name)

    def clear(self) -> None:
        self._writes.clear()
        self._by_value.clear()

    def _waits_for_fill(self, name: str) -> bool:
        write = self._writes[name]
        return write.written and write.heard

    def _tidy(self, name: str) -> None:
        write = self._writes[name]
        if write.heard and write.filled:
            self._forget(name)

    def _forget(self, name: str) -> None:
        write = self._writes.pop(name)
        names = self._by_value[write.value]
        names.discard(name)
        if not names:
            del self._by_value[write.value]


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
        self.echoes = EchoLedger()
        self._epoch = 0
        self._changes = [0] * _BUCKETS
        self._echoes = [0] * _BUCKETS

    def __len__(self) -> int:
        return len(self.memory)

    @staticmethod
    def _bucket(card_key: str) -> int:
        return hash(card_key) % _BUCKETS

    def ticket(self, identity: ResultIdentity, own_write: bool = False) -> Ticket:
        """Take before reading (or, ``own_write``, writing) the hot tier; hand to :meth:`set`."""
        bucket = self._bucket(identity.card_key)
        return Ticket(self._epoch, self._changes[bucket], self._echoes[bucket], own_write)

    async def get(self, identity: ResultIdentity) -> StoredResult | None:
        return self.memory.held(identity)

    def held(self, identity: ResultIdentity) -> StoredResult | None:
        """The copy kept of ``identity``, if any (in process: no coroutine to await)."""
        return self.memory.held(identity)

    async def set(
        self,
        identity: ResultIdentity,
        result: StoredResult,
        ttl: timedelta,
        ticket: Ticket | None = None,
    ) -> bool:
        """Keep ``result`` for the ``ttl`` it has left in the hot tier (capped unless coherent).

        Refused (``False``) when a change of this card, or a flush, was heard since
        ``ticket`` was taken: what was read may already be out of date. The fill of this
        worker's own write is refused by others' changes only, not by its own echoes.
        """
        own, alone = "", False
        if ticket is not None and ticket.own_write:
            own, alone = self.echoes.fill_of(
                identity.card_key, identity.result_key, result.fetched_at
            )
        if ticket is not None and not self._current(identity, ticket, alone):
            self.refused_fills += 1
            if own:
                self.echoes.filled(own, kept=False)
            return False
        if not self.coherent:
            ttl = min(ttl, self.short_ttl)
        stored = await self.memory.set(identity, result, ttl)
        if own:
            self.echoes.filled(own, kept=alone and stored and ttl > timedelta(0))
        return stored

    def _current(self, identity: ResultIdentity, ticket: Ticket, own: bool) -> bool:
        now = self.ticket(identity)
        if ticket.epoch != now.epoch:
            return False
        if own:
            return ticket.changes - ticket.echoes == now.changes - now.echoes
        return ticket.changes == now.changes

    async def invalidate(self, identity: ResultIdentity, at: datetime | None = None) -> int:
        self._changes[self._bucket(identity.card_key)] += 1
        return await self.memory.invalidate(identity, at)

    # -- what the listener hears -------------------------------------------------------

    def changed(self, card_key: str, result_key: str | None = None) -> None:
        """A card's value (or, without ``result_key``, every variant) changed somewhere."""
        self._changes[self._bucket(card_key)] += 1
        self.memory.drop_card(card_key, result_key)

    def value_changed(self, card_key: str, result_key: str, witnesses: list[str]) -> Heard:
        """A value changed by the writes named in ``witnesses``: evict unless it is our echo."""
        heard = self.echoes.heard(card_key, result_key, witnesses)
        bucket = self._bucket(card_key)
        self._changes[bucket] += 1
        if heard != "change":
            self._echoes[bucket] += 1
        if heard != "keep":
            self.memory.drop_card(card_key, result_key)
        return heard

    def settled(self, name: str, card_key: str, result_key: str, written: bool) -> None:
        """This worker's write came back: an echo let through for a write not made is applied."""
        if self.echoes.settle(name, written):
            self.changed(card_key, result_key)

    def flush(self) -> None:
        """Forget everything: the hot tier was flushed, or changes may have gone unheard."""
        self._epoch += 1
        self.flushes += 1
        self.memory.clear()
        self.echoes.clear()

    def heard_everything(self, coherent: bool) -> None:
        """The listener connected (``True``) or lost a connection (``False``)."""
        self.flush()
        self.coherent = coherent

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self.coherent = False
        await self.memory.close()
