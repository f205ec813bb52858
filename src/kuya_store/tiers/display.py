"""Display data by listing, so an answer read back from the database is dressed again.

The database keeps listing metadata only (the marketplace terms): a listing's display
data (``Listing.extra``: link, thumbnail, seller, shipping) lives in the hot tiers with
its result, and here, by ``item_id``, for ``display_ttl`` from when it was fetched. An
answer read from the database (after a restart, or once its hot-tier entry expired) gets
its display data back from here while it lives.

- With Redis, one key per listing, tagged by card like every other key of the card, so
  on a Cluster the listings of one result share a slot: a fetch writes them in one
  script call and a database answer reads them with one ``MGET``. They outlive a restart.
- Without Redis, in process memory, bounded in bytes: gone when the process ends.

Each entry carries the moment it must be forgotten, read against the store's clock, so
the TTL holds whatever the server's own expiry does. Redis content is untrusted: an entry
that does not decode is a miss. A store that cannot be reached is a miss too: the answer
is served all the same, with ``display_complete`` false.

What a result knows (``StoredResult.display_complete`` and ``display_until``) and what
may be kept or shown are decided by the plain functions below, tested without servers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson
from cachetools import LRUCache

from kuya_store.clock import Clock
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import MAX_EXTRA_BYTES, Listing
from kuya_store.stored import StoredResult
from kuya_store.tiers.redis_scripts import Script
from kuya_store.tiers.sizing import display_size

if TYPE_CHECKING:
    from kuya_store.tiers.redis import RedisTier

__all__ = [
    "DisplayData",
    "DisplayStore",
    "MemoryDisplay",
    "RedisDisplay",
    "answer_complete",
    "carried_over",
    "display_store",
    "display_ttl_left",
    "dressed",
    "outlived",
    "to_keep",
]

Extra = dict[str, Any]


class DisplayData(NamedTuple):
    """One listing's display data, and until when it may be shown."""

    extra: Extra
    until: datetime


# -- decisions (pure) ------------------------------------------------------------------


def to_keep(result: StoredResult) -> dict[str, Extra]:
    """The display data of a fetched result worth keeping, by ``item_id``.

    A listing fetched without display data is kept as such (an empty object), so a later
    database answer knows it lacks nothing; when the result does not know that of every
    listing (it carries some read back without theirs), only what is there is kept.
    """
    if result.display_until is None:
        return {}
    everything = result.display_complete
    return {x.item_id: x.extra for x in result.listings if everything or x.extra}


def dressed(result: StoredResult, found: Mapping[str, DisplayData]) -> StoredResult:
    """``result`` (read from the database) with the display data found for its listings."""
    listings: list[Listing] = []
    complete = True
    until: datetime | None = None
    for listing in result.listings:
        data = found.get(listing.item_id)
        if data is None:
            complete = False
            listings.append(listing)
            continue
        until = data.until if until is None else min(until, data.until)
        listings.append(listing.model_copy(update={"extra": data.extra}) if data.extra else listing)
    return result.model_copy(
        update={"listings": listings, "display_complete": complete, "display_until": until}
    )


def carried_over(
    listings: Sequence[Listing], stale: StoredResult | None, own_until: datetime
) -> tuple[bool, datetime]:
    """A fresh fetch's ``display_complete`` and ``display_until``.

    A sold result refreshed on top of a stored one carries the stored listings over as
    they were: with their gaps, and with display data that may be shown no longer than
    the stored result's.
    """
    if stale is None or not stale.listings:
        return True, own_until
    stored = {id(x) for x in stale.listings}
    if not any(id(x) in stored for x in listings):
        return True, own_until
    until = own_until if stale.display_until is None else min(own_until, stale.display_until)
    return stale.display_complete, until


def outlived(result: StoredResult, now: datetime) -> bool:
    """Whether ``result`` shows display data past the moment it had to be forgotten."""
    until = result.display_until
    return until is not None and now >= until and any(x.extra for x in result.listings)


def answer_complete(result: StoredResult, shown: Iterable[Listing]) -> bool:
    """Whether every listing an answer shows carries its display data."""
    return result.display_complete or all(x.extra for x in shown)


def display_ttl_left(result: StoredResult, now: datetime) -> timedelta | None:
    """How long a hot tier may keep ``result`` for its display data; ``None``: no bound."""
    if result.display_until is None or not any(x.extra for x in result.listings):
        return None
    return result.display_until - now


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def encode_entry(extra: Extra, until: datetime) -> bytes:
    """An entry as Redis keeps it: the display data and when to forget it (epoch ms)."""
    return orjson.dumps({"u": _ms(until), "x": extra})


def _head(until: datetime) -> bytes:
    """What :func:`encode_entry` writes before the display data itself."""
    return b'{"u":%d,"x":' % _ms(until)


def _packed(extras: Iterable[Extra]) -> bytes:
    """Display data of many listings in one argument, one JSON object a line.

    Compact JSON has no line break of its own (one inside a string is written ``\\n``),
    so a line break can only end an entry.
    """
    return b"\n".join(map(orjson.dumps, extras))


_KEEP_ALL = Script(
    r"""
local ttl, head, packed = ARGV[1], ARGV[2], ARGV[3]
local at = 1
for _, key in ipairs(KEYS) do
  local stop = string.find(packed, '\n', at, true) or (#packed + 1)
  redis.call('SET', key, head .. string.sub(packed, at, stop - 1) .. '}', 'PX', ttl)
  at = stop + 1
end
return #KEYS
"""
)
"""Sets every display entry of a fetch, each as :func:`encode_entry` writes it. Arguments:
the time to live, the head every entry starts with (the moment to forget them), and the
display data of every listing packed in one (:func:`_packed`), in the order of the keys:
the values add no argument per listing for the client to encode."""


def decode_entry(raw: bytes | str) -> DisplayData | None:
    """An entry read from Redis, or ``None`` when it is not one (untrusted content)."""
    if len(raw) > MAX_EXTRA_BYTES + 64:
        return None
    try:
        value = json.loads(raw)
        moment, extra = value["u"], value["x"]
        if not isinstance(moment, int) or isinstance(moment, bool) or not isinstance(extra, dict):
            return None
        return DisplayData(extra, datetime.fromtimestamp(moment / 1000, UTC))
    except (ValueError, TypeError, KeyError, OverflowError, OSError):
        return None


# -- stores ----------------------------------------------------------------------------


class DisplayStore(Protocol):
    """Where display data waits by listing; every call fails open."""

    async def keep(self, identity: ResultIdentity, result: StoredResult) -> None:
        """Keep the display data of a result just fetched (see :func:`to_keep`)."""
        ...

    async def dress(self, identity: ResultIdentity, result: StoredResult) -> StoredResult:
        """``result`` read from the database, with what is kept for its listings."""
        ...

    async def close(self) -> None: ...


class _Counting:
    def __init__(self, clock: Clock, metrics: Metrics) -> None:
        self._clock = clock
        self._metrics = metrics

    def _dressed(self, result: StoredResult, found: Mapping[str, DisplayData]) -> StoredResult:
        out = dressed(result, found)
        self._metrics.incr("display_found", sum(x.item_id in found for x in result.listings))
        self._metrics.incr("display_missing", sum(x.item_id not in found for x in result.listings))
        return out


class MemoryDisplay(_Counting):
    """Display data in this process, bounded to about ``max_bytes``; gone with the process."""

    def __init__(self, max_bytes: int, clock: Clock, metrics: Metrics) -> None:
        super().__init__(clock, metrics)
        self._entries: LRUCache[tuple[str, str], DisplayData] = LRUCache(
            maxsize=max(max_bytes, 1), getsizeof=lambda data: display_size(data.extra)
        )

    def __len__(self) -> int:
        return len(self._entries)

    async def keep(self, identity: ResultIdentity, result: StoredResult) -> None:
        kept = to_keep(result)
        until = result.display_until
        if until is None or until <= self._clock():
            return
        for item_id, extra in kept.items():
            try:
                self._entries[(identity.card_key, item_id)] = DisplayData(extra, until)
            except ValueError:  # larger than the whole bound: not kept
                continue
        self._metrics.incr("display_kept", len(kept))

    async def dress(self, identity: ResultIdentity, result: StoredResult) -> StoredResult:
        now = self._clock()
        found: dict[str, DisplayData] = {}
        for listing in result.listings:
            data = self._entries.get((identity.card_key, listing.item_id))
            if data is not None and now < data.until:
                found[listing.item_id] = data
        return self._dressed(result, found)

    async def close(self) -> None:
        self._entries.clear()


class RedisDisplay(_Counting):
    """Display data in Redis, behind the hot tier's breakers; outlives a restart."""

    def __init__(self, redis: RedisTier, prefix: str, clock: Clock, metrics: Metrics) -> None:
        super().__init__(clock, metrics)
        self._redis = redis
        self._prefix = prefix

    async def keep(self, identity: ResultIdentity, result: StoredResult) -> None:
        kept = to_keep(result)
        until = result.display_until
        if not kept or until is None:
            return
        ttl_ms = int((until - self._clock()).total_seconds() * 1000)
        if ttl_ms <= 0:
            return
        client = self._redis.client
        # Every key of the card is this and an item id (``redis_display_key``).
        keys = list(map(identity.redis_display_key(self._prefix, "").__add__, kept))
        args = [ttl_ms, _head(until), _packed(kept.values())]
        # One script call, not a pipeline of a SET per listing: the keys share the card's
        # hash tag (one slot, also on a Cluster), and the client packs one command.
        ok, _ = await self._redis.guarded(lambda: _KEEP_ALL(client, keys, args), keys[0])
        if ok:
            self._metrics.incr("display_kept", len(kept))

    async def dress(self, identity: ResultIdentity, result: StoredResult) -> StoredResult:
        item_ids = list(dict.fromkeys(x.item_id for x in result.listings))
        if not item_ids:
            return self._dressed(result, {})
        keys = [identity.redis_display_key(self._prefix, item_id) for item_id in item_ids]
        client = self._redis.client
        # One slot (the card's hash tag), so one MGET even on a Cluster.
        ok, raws = await self._redis.guarded(lambda: client.mget(keys), keys[0])
        if not ok or raws is None:
            self._metrics.incr("display_unreachable")
            return self._dressed(result, {})
        now = self._clock()
        found: dict[str, DisplayData] = {}
        for item_id, raw in zip(item_ids, raws, strict=True):
            if raw is None:
                continue
            data = decode_entry(raw)
            if data is None:
                self._metrics.incr("display_corrupt")
            elif now < data.until:
                found[item_id] = data
        return self._dressed(result, found)

    async def close(self) -> None:
        return None  # the hot tier owns the connection


def display_store(
    redis: RedisTier | None, prefix: str, memory_bytes: int, clock: Clock, metrics: Metrics
) -> DisplayStore:
    """Redis when the hot tier is Redis; else this process's memory."""
    if redis is not None:
        return RedisDisplay(redis, prefix, clock, metrics)
    return MemoryDisplay(memory_bytes, clock, metrics)
