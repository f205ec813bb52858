"""The Redis hot tier: JSON values under versioned keys, behind a circuit breaker.

Redis content is untrusted: a value that does not decode or validate is a miss (and is
overwritten by the next fetch). A Redis that does not answer is a miss too; after
``breaker_failure_threshold`` failures in a row the tier stops asking until
``breaker_reset_after`` has passed, so requests do not each pay the timeout.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Literal, TypeVar

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from kuya_store.breaker import CircuitBreaker
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.stored import CorruptEntryError, StoredResult, decode, encode

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

LockState = Literal["acquired", "held", "unavailable"]

_DECODED_ENTRIES = 512


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
        self.breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_reset_after.total_seconds(),
            on_open=lambda: metrics.incr("redis_breaker_opens"),
        )

    async def _call(self, operation: Callable[[], Awaitable[_T]]) -> tuple[bool, _T | None]:
        if not self.breaker.allow():
            self._metrics.incr("redis_skipped")
            return False, None
        try:
            value = await operation()
        except _FAILURES:
            self.breaker.failure()
            self._metrics.incr("redis_errors")
            return False, None
        self.breaker.success()
        return True, value

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
        index = identity.redis_index_key(self._prefix)
        payload = encode(result)

        async def write() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(key, payload, px=ttl_ms)
                pipe.sadd(index, key)
                pipe.pexpire(index, self._index_ttl_ms)
                await pipe.execute()

        ok, _ = await self._call(write)
        if ok:
            self._remember(key, payload, result)

    async def invalidate(self, identity: ResultIdentity) -> int:
        index = identity.redis_index_key(self._prefix)

        async def drop() -> int:
            members = await self.client.smembers(index)
            for member in members:
                self._decoded.pop(member.decode() if isinstance(member, bytes) else member, None)
            self._decoded.pop(identity.redis_key(self._prefix), None)
            keys = [*members, index, identity.redis_key(self._prefix)]
            await self.client.delete(*keys)
            return len(members)

        _, dropped = await self._call(drop)
        return dropped or 0

    # -- cross-process single-flight ---------------------------------------------------

    async def try_lock(self, identity: ResultIdentity, ttl: timedelta) -> tuple[LockState, str]:
        """Try to become the one process fetching this result.

        Returns ``("acquired", token)``, ``("held", "")`` when another process fetches it,
        or ``("unavailable", "")`` when Redis cannot arbitrate (then fetch without a lock).
        """
        token = secrets.token_hex(16)
        key = identity.redis_lock_key(self._prefix)
        ms = max(int(ttl.total_seconds() * 1000), 1)
        ok, acquired = await self._call(lambda: self.client.set(key, token, nx=True, px=ms))
        if not ok:
            return "unavailable", ""
        return ("acquired", token) if acquired else ("held", "")

    async def is_locked(self, identity: ResultIdentity) -> bool:
        """Whether some process holds the fetch lock of this result (``False`` if unknown)."""
        _, exists = await self._call(
            lambda: self.client.exists(identity.redis_lock_key(self._prefix))
        )
        return bool(exists)

    async def unlock(self, identity: ResultIdentity, token: str) -> None:
        """Release the lock if, and only if, it is still ours."""
        key = identity.redis_lock_key(self._prefix)
        await self._call(lambda: self.client.eval(_RELEASE, 1, key, token))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except _FAILURES:
            return False

    async def close(self) -> None:
        await self.client.aclose()
