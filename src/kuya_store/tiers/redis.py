"""The Redis hot tier: JSON values under versioned keys, behind a circuit breaker.

Redis content is untrusted: a value that does not decode or validate is a miss (and is
overwritten by the next fetch). A Redis that does not answer is a miss too; after
``breaker_failure_threshold`` failures in a row the tier stops asking until
``breaker_reset_after`` has passed, so requests do not each pay the timeout.

Newest data wins: each value has a stamp (its ``fetched_at``) beside it, and a write of
older data than the stamp, or than the card's last invalidation, is refused by the same
script that writes, so a late write can neither replace newer data nor bring back an
invalidated result.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from kuya_store.breaker import CircuitBreaker
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.stored import CorruptEntryError, StoredResult, decode, encode
from kuya_store.tiers import TierUnavailableError

__all__ = ["RedisTier"]

_T = TypeVar("_T")
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)

# Delete the lock only if it still holds our token: a holder whose lock expired must not
# release the next holder's lock.
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""
# Take a free lock, or one a failed holder left behind (its waiters have had their notice).
_ACQUIRE = """
local held = redis.call("get", KEYS[1])
if held and string.sub(held, 1, 7) ~= "failed:" then
    return 0
end
redis.call("set", KEYS[1], ARGV[1], "px", ARGV[2])
return 1
"""
_EXTEND = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("pexpire", KEYS[1], ARGV[2])
end
return 0
"""
_FAIL = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    redis.call("set", KEYS[1], "failed:" .. ARGV[1], "px", ARGV[2])
    return 1
end
return 0
"""
# KEYS: value, stamp, card index, card fence. ARGV: payload, fetched_at (ms), ttl (ms),
# index ttl (ms). Refuses data older than the stored stamp or the card's invalidation.
_SET_NEWEST = """
local stamp = tonumber(redis.call("get", KEYS[2]) or "-1")
local fence = tonumber(redis.call("get", KEYS[4]) or "-1")
local at = tonumber(ARGV[2])
if at < stamp or at <= fence then
    return 0
end
redis.call("set", KEYS[1], ARGV[1], "px", ARGV[3])
redis.call("set", KEYS[2], ARGV[2], "px", ARGV[3])
redis.call("sadd", KEYS[3], KEYS[1])
redis.call("pexpire", KEYS[3], ARGV[4])
return 1
"""

LockState = Literal["acquired", "held", "unavailable"]
HolderState = Literal["held", "free", "failed"]

_DECODED_ENTRIES = 512


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class RedisTier:
    """A :class:`~kuya_store.tiers.HotTier` on Redis."""

    name = "redis"

    def __init__(self, settings: StoreSettings, metrics: Metrics) -> None:
        assert settings.redis_url is not None
        self._prefix = settings.key_prefix
        self._metrics = metrics
        # The last value read or written per key, with its exact bytes: a hot key read again
        # with identical bytes is the same validated result, so it is not decoded again.
        self._decoded: OrderedDict[str, tuple[bytes, StoredResult]] = OrderedDict()
        self._index_ttl_ms = int(max(settings.sold_ttl, settings.active_ttl).total_seconds() * 1000)
        # An invalidation must outlive every result it fences off, in every tier above the
        # database and in the write buffer; a day is ample for both.
        self._fence_ttl_ms = max(self._index_ttl_ms, 86_400_000)
        # A burst larger than the pool waits for a free connection instead of failing,
        # which would look like a Redis outage and open the breaker.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_pool_timeout.total_seconds(),
            socket_timeout=settings.redis_socket_timeout.total_seconds(),
            socket_connect_timeout=settings.redis_connect_timeout.total_seconds(),
            retry_on_timeout=False,
        )
        self.client: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._extend = self.client.register_script(_EXTEND)
        self._fail = self.client.register_script(_FAIL)
        self._release = self.client.register_script(_RELEASE)
        self._set_newest = self.client.register_script(_SET_NEWEST)
        self.breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_reset_after.total_seconds(),
            on_open=lambda: metrics.incr("redis_breaker_opens"),
        )

    async def _call(self, operation: Callable[[], Awaitable[_T]]) -> tuple[bool, _T | None]:
        outcome, value = await self.breaker.guard(operation, _FAILURES)
        if outcome == "skipped":
            self._metrics.incr("redis_skipped")
        elif outcome == "failed":
            self._metrics.incr("redis_errors")
        return outcome == "ok", value

    async def get(self, identity: ResultIdentity) -> StoredResult | None:
        key = identity.redis_key(self._prefix)
        _, raw = await self._call(lambda: self.client.get(key))
        if raw is None:
            return None
        raw = raw.encode() if isinstance(raw, str) else raw
        known = self._decoded.get(key)
        if known is not None and known[0] == raw:
            self._decoded.move_to_end(key)
            return known[1]
        try:
            result = decode(raw)
        except CorruptEntryError:
            self._decoded.pop(key, None)
            self._metrics.incr("corrupt_entries")
            return None
        self._remember(key, raw, result)
        return result

    def _remember(self, key: str, raw: bytes, result: StoredResult) -> None:
        self._decoded[key] = (raw, result)
        self._decoded.move_to_end(key)
        if len(self._decoded) > _DECODED_ENTRIES:
            self._decoded.popitem(last=False)

    async def set(self, identity: ResultIdentity, result: StoredResult, ttl: timedelta) -> None:
        ttl_ms = int(ttl.total_seconds() * 1000)
        if ttl_ms <= 0:
            return
        key = identity.redis_key(self._prefix)
        keys = [
            key,
            identity.redis_stamp_key(self._prefix),
            identity.redis_index_key(self._prefix),
            identity.redis_fence_key(self._prefix),
        ]
        payload = encode(result)
        args: list[bytes | int] = [payload, _ms(result.fetched_at), ttl_ms, self._index_ttl_ms]
        ok, written = await self._call(lambda: self._set_newest(keys=keys, args=args))
        if ok and written:
            self._remember(key, payload, result)
        elif ok:
            self._metrics.incr("hot_writes_refused_older")

    async def invalidate(self, identity: ResultIdentity, at: datetime | None = None) -> int:
        """Drop every params variant of the card; refuse data fetched up to ``at`` from now on."""
        index = identity.redis_index_key(self._prefix)
        fence = identity.redis_fence_key(self._prefix)
        moment = _ms(at) if at is not None else None

        async def drop() -> int:
            members = [
                m.decode() if isinstance(m, bytes) else m for m in await self.client.smembers(index)
            ]
            for member in members:
                self._decoded.pop(member, None)
            own = identity.redis_key(self._prefix)
            self._decoded.pop(own, None)
            keys = {*members, own}
            stamps = [k.replace(":r:", ":t:", 1) for k in keys]
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(*keys, *stamps, index)
                if moment is not None:
                    pipe.set(fence, moment, px=self._fence_ttl_ms)
                await pipe.execute()
            return len(members)

        ok, dropped = await self._call(drop)
        if not ok:
            raise TierUnavailableError("redis")
        return dropped or 0

    # -- cross-process single-flight ---------------------------------------------------

    async def try_lock(self, identity: ResultIdentity, ttl: timedelta) -> tuple[LockState, str]:
        """Try to become the one process fetching this result.

        Returns ``("acquired", token)``, ``("held", "")`` when another process fetches it,
        or ``("unavailable", "")`` when Redis cannot arbitrate (then fetch without a lock).
        """
        token = secrets.token_hex(16)
        keys = [identity.redis_lock_key(self._prefix)]
        ms = max(int(ttl.total_seconds() * 1000), 1)
        ok, acquired = await self._call(lambda: self._acquire(keys=keys, args=[token, ms]))
        if not ok:
            return "unavailable", ""
        return ("acquired", token) if acquired else ("held", "")

    async def lock_state(self, identity: ResultIdentity) -> HolderState:
        """Whether some process holds the fetch lock, or its holder failed (``free`` if unknown)."""
        ok, value = await self._call(lambda: self.client.get(identity.redis_lock_key(self._prefix)))
        if not ok or value is None:
            return "free"
        text = value.decode() if isinstance(value, bytes) else str(value)
        return "failed" if text.startswith("failed:") else "held"

    async def extend_lock(
        self, identity: ResultIdentity, token: str, ttl: timedelta
    ) -> bool | None:
        """Extend our lock: ``False`` when it is no longer ours, ``None`` if Redis is down."""
        keys = [identity.redis_lock_key(self._prefix)]
        ms = max(int(ttl.total_seconds() * 1000), 1)
        ok, extended = await self._call(lambda: self._extend(keys=keys, args=[token, ms]))
        return bool(extended) if ok else None

    async def mark_failed(self, identity: ResultIdentity, token: str, ttl: timedelta) -> None:
        """Turn our lock into a failure notice for ``ttl``, for the processes waiting on it."""
        keys = [identity.redis_lock_key(self._prefix)]
        ms = max(int(ttl.total_seconds() * 1000), 1)
        await self._call(lambda: self._fail(keys=keys, args=[token, ms]))

    async def unlock(self, identity: ResultIdentity, token: str) -> None:
        """Release the lock if, and only if, it is still ours."""
        keys = [identity.redis_lock_key(self._prefix)]
        await self._call(lambda: self._release(keys=keys, args=[token]))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except _FAILURES:
            return False

    async def close(self) -> None:
        await self.client.aclose()
