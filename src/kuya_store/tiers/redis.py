"""The Redis hot tier: JSON values under versioned keys, behind a circuit breaker.

Redis content is untrusted: a value that does not decode or validate is a miss (and is
overwritten by the next fetch). Only a value sealed by a store holding the same
``hot_tier_secret`` (or by this very process, without one) is read back without
validating it again (:func:`kuya_store.stored.unseal`).

A Redis that does not answer is a miss too; after ``breaker_failure_threshold`` failures
in a row the tier stops asking until ``breaker_reset_after`` has passed, so requests do
not each pay the timeout.

Newest data wins: each value has a stamp (its ``fetched_at``) beside it, and a write of
older data than the stamp, or than the card's last invalidation, is refused by the same
script that writes, so a late write can neither replace newer data nor bring back an
invalidated result.

Every key of a card carries the card's hash tag, so on a Cluster each script touches one
slot; each node has its own breaker there, so a node that is down costs only its cards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from kuya_store.breaker import CircuitBreaker
from kuya_store.keys import ResultIdentity, witness_key
from kuya_store.logs import get_logger
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.stored import CorruptEntryError, StoredResult, ValueSeal, encode, unseal
from kuya_store.tiers import LockRelease, TierUnavailableError
from kuya_store.tiers.redis_clients import RedisDeployment
from kuya_store.tiers.redis_scripts import Script as _Script

if TYPE_CHECKING:
    from kuya_store.tiers.coherence import InvalidationListener

__all__ = ["RedisTier"]

_T = TypeVar("_T")
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
_log = get_logger("kuya_store.redis")


def _is_failure(exc: BaseException) -> bool:
    """Whether a Redis call's exception makes it a miss: every error, cancellation aside.

    Besides the client's own errors, a client may trip over a connection that another
    task is closing (seen in redis-py's Cluster client during a failover); the tier
    fails open on that too instead of failing the search.
    """
    if isinstance(exc, _FAILURES):
        return True
    if isinstance(exc, Exception):
        _log.warning("the Redis client raised %r; treated as a failed call", exc)
        return True
    return False


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
# KEYS: value, stamp, card index, card fence, a witness naming this write, and optionally
# the fetch lock to let go of. ARGV: payload, fetched_at (ms), ttl (ms), index ttl (ms),
# and the lock's token. Refuses data older than the stored stamp (0) or the card's
# invalidation (minus the fence, so the caller learns when the card was invalidated). The
# witness is set and deleted at once: it leaves nothing, but its name reaches every
# near-cache in the same message as the value's. The lock goes whether the value is
# written or refused (as _RELEASE would let it go: only while it holds the token).
_SET_NEWEST = """
if ARGV[5] and redis.call("get", KEYS[6]) == ARGV[5] then
    redis.call("del", KEYS[6])
end
local stamp = tonumber(redis.call("get", KEYS[2]) or "-1")
local fence = tonumber(redis.call("get", KEYS[4]) or "-1")
local at = tonumber(ARGV[2])
if at <= fence then
    return -fence
end
if at < stamp then
    return 0
end
redis.call("set", KEYS[1], ARGV[1], "px", ARGV[3])
redis.call("set", KEYS[2], ARGV[2], "px", ARGV[3])
redis.call("sadd", KEYS[3], KEYS[1])
redis.call("pexpire", KEYS[3], ARGV[4])
redis.call("set", KEYS[5], "")
redis.call("del", KEYS[5])
return 1
"""
# The first half of an invalidation. KEYS: card fence, card index. ARGV: moment (ms) or
# "", fence ttl (ms). Raises the fence (never lowers it) and names the variants to drop:
# from here on no older data can be written, so none can slip in behind the drop.
_FENCE = """
if ARGV[1] ~= "" then
    local held = redis.call("get", KEYS[1])
    local newer = (tonumber(held or "-1") or -1) < tonumber(ARGV[1])
    redis.call("set", KEYS[1], newer and ARGV[1] or held, "px", ARGV[2])
end
return redis.call("smembers", KEYS[2])
"""
# The second half. KEYS: n values, their n stamps, the card index. ARGV: moment (ms) or
# "". Drops each variant fetched up to the moment (one written since is newer: it stays).
_DROP = """
local n = (#KEYS - 1) / 2
local dropped = 0
for i = 1, n do
    local stamp = tonumber(redis.call("get", KEYS[n + i]) or "-1") or -1
    if ARGV[1] == "" or stamp <= tonumber(ARGV[1]) then
        dropped = dropped + redis.call("del", KEYS[i])
        redis.call("del", KEYS[n + i])
        redis.call("srem", KEYS[#KEYS], KEYS[i])
    end
end
return dropped
"""


_ACQUIRE_SCRIPT = _Script(_ACQUIRE)
_EXTEND_SCRIPT = _Script(_EXTEND)
_FAIL_SCRIPT = _Script(_FAIL)
_RELEASE_SCRIPT = _Script(_RELEASE)
_SET_NEWEST_SCRIPT = _Script(_SET_NEWEST)
_FENCE_SCRIPT = _Script(_FENCE)
_DROP_SCRIPT = _Script(_DROP)

LockState = Literal["acquired", "held", "unavailable"]
HolderState = Literal["held", "free", "failed"]

_DECODED_ENTRIES = 512


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


OnFenced = Callable[[str, datetime], None]
"""Told the card key and moment of an invalidation that refused a write (made elsewhere)."""


class RedisTier:
    """A :class:`~kuya_store.tiers.HotTier` on Redis: one server, Sentinel or Cluster."""

    name = "redis"

    def __init__(self, settings: StoreSettings, metrics: Metrics) -> None:
        assert settings.redis_url is not None
        self._prefix = settings.key_prefix
        self._metrics = metrics
        self._settings = settings
        secret = settings.hot_tier_secret
        self._seal = (
            ValueSeal(secret.get_secret_value().encode())
            if secret is not None
            else ValueSeal.ephemeral()
        )
        # The last value read or written per key, with its exact bytes: a hot key read again
        # with identical bytes is the same validated result, so it is not decoded again.
        self._decoded: OrderedDict[str, tuple[bytes, StoredResult]] = OrderedDict()
        self._read_once: OrderedDict[str, bool] = OrderedDict()
        self._index_ttl_ms = int(max(settings.sold_ttl, settings.active_ttl).total_seconds() * 1000)
        # An invalidation must outlive every result it fences off, in every tier above the
        # database and in the write buffer; a day is ample for both.
        self._fence_ttl_ms = max(self._index_ttl_ms, 86_400_000)
        self._pool_timeout = settings.redis_pool_timeout.total_seconds()
        self.deployment = RedisDeployment(settings)
        self.client = self.deployment.client
        self.breaker = self._new_breaker()
        """The breaker of the whole deployment; a Cluster has one per node besides."""
        self._node_breakers: dict[str, CircuitBreaker] = {}
        self.on_fenced: OnFenced | None = None
        self._reading: set[asyncio.Task[None]] = set()
        self.listener: InvalidationListener | None = None
        """Set when near-caches are kept coherent: ``invalidate`` waits to hear itself."""

    def fence_heard(self, card_key: str, fence_key: str) -> None:
        """A card's fence changed somewhere: read its moment, then tell ``on_fenced``."""
        if self.on_fenced is not None:
            task = asyncio.create_task(self._read_fence(card_key, fence_key))
            self._reading.add(task)
            task.add_done_callback(self._reading.discard)

    async def _read_fence(self, card_key: str, fence_key: str) -> None:
        ok, raw = await self._call(lambda: self.client.get(fence_key), fence_key)
        if not ok or raw is None or self.on_fenced is None:
            return
        try:
            at = datetime.fromtimestamp(int(raw) / 1000, UTC)
        except (ValueError, OverflowError):
            return  # untrusted content: a fence that does not parse says nothing
        self.on_fenced(card_key, at)

    def _new_breaker(self) -> CircuitBreaker:
        metrics = self._metrics
        return CircuitBreaker(
            self._settings.breaker_failure_threshold,
            self._settings.breaker_reset_after.total_seconds(),
            on_open=lambda: metrics.incr("redis_breaker_opens"),
        )

    def _breaker_for(self, key: str) -> CircuitBreaker:
        node = self.deployment.node_of(key)
        if not node:
            return self.breaker
        breaker = self._node_breakers.get(node)
        if breaker is None:
            breaker = self._node_breakers[node] = self._new_breaker()
        return breaker

    async def _call(
        self, operation: Callable[[], Awaitable[_T]], key: str | None = None
    ) -> tuple[bool, _T | None]:
        breaker = self.breaker if key is None else self._breaker_for(key)
        slots = self.deployment.slots
        if slots is not None:
            operation = functools.partial(self._bounded, slots, operation)
        outcome, value = await breaker.guard(operation, _is_failure)
        if outcome == "skipped":
            self._metrics.incr("redis_skipped")
        elif outcome == "failed":
            self._metrics.incr("redis_errors")
        return outcome == "ok", value

    async def guarded(
        self, operation: Callable[[], Awaitable[_T]], key: str
    ) -> tuple[bool, _T | None]:
        """Run one call on ``key``'s server behind its breaker: ``(False, None)`` if it failed."""
        return await self._call(operation, key)

    async def _bounded(
        self, slots: asyncio.Semaphore, operation: Callable[[], Awaitable[_T]]
    ) -> _T:
        try:
            async with asyncio.timeout(self._pool_timeout):
                await slots.acquire()
        except TimeoutError:
            raise RedisConnectionError("no Redis connection became free in time") from None
        try:
            return await operation()
        finally:
            slots.release()

    async def get(self, identity: ResultIdentity) -> StoredResult | None:
        key = identity.redis_key(self._prefix)
        _, raw = await self._call(lambda: self.client.get(key), key)
        if raw is None:
            return None
        raw = raw.encode() if isinstance(raw, str) else raw
        known = self._decoded.get(key)
        if known is not None and known[0] == raw:
            self._decoded.move_to_end(key)
            return known[1]
        try:
            result, trusted = unseal(raw, key, self._seal)
        except CorruptEntryError:
            self._decoded.pop(key, None)
            self._metrics.incr("corrupt_entries")
            return None
        self._metrics.incr("hot_decodes_trusted" if trusted else "hot_decodes_validated")
        self._remember(key, raw, result, read=True)
        return result

    def _remember(self, key: str, raw: bytes, result: StoredResult, *, read: bool = False) -> None:
        # A read is kept from its key's second read on: a key read once in a long while (a
        # rotation over more cards than are kept) would only push a hot one out, and
        # freeing what it holds later costs about as much as building it.
        if read and key not in self._decoded and self._read_once.pop(key, None) is None:
            self._read_once[key] = True
            if len(self._read_once) > _DECODED_ENTRIES:
                self._read_once.popitem(last=False)
            return
        self._decoded[key] = (raw, result)
        self._decoded.move_to_end(key)
        if len(self._decoded) > _DECODED_ENTRIES:
            self._decoded.popitem(last=False)

    async def set(
        self,
        identity: ResultIdentity,
        result: StoredResult,
        ttl: timedelta,
        release: LockRelease | None = None,
    ) -> bool:
        """Write unless older data than Redis holds, or fenced; ``False`` when refused.

        With ``release``, the same script lets go of the fetch lock (one round trip less
        for a lock's holder); it is marked ``released`` once the script ran.
        """
        ttl_ms = int(ttl.total_seconds() * 1000)
        if ttl_ms <= 0:
            return True
        key = identity.redis_key(self._prefix)
        keys = [
            key,
            identity.redis_stamp_key(self._prefix),
            identity.redis_index_key(self._prefix),
            identity.redis_fence_key(self._prefix),
        ]
        payload = self._seal.seal(key, encode(result))
        args: list[bytes | int] = [payload, _ms(result.fetched_at), ttl_ms, self._index_ttl_ms]
        listener = self.listener
        # Every write names itself, even one this worker won't hear: merged with another
        # worker's echo in one message, it shows that worker a witness not of its own.
        if listener is not None:
            witness = listener.expect_echo(identity, key, result.fetched_at)
        else:
            witness = witness_key(self._prefix, key)
        keys.append(witness)
        if release is not None:
            keys.append(identity.redis_lock_key(self._prefix))
            args.append(release.token.encode())
        ok, written = False, None
        try:
            ok, written = await self._call(lambda: _SET_NEWEST_SCRIPT(self.client, keys, args), key)
        finally:
            if listener is not None:
                # Only a write Redis says it made may keep its copy through its echo.
                listener.settle_echo(identity, witness, written == 1)
        if not ok or written is None:
            return True  # Redis is down: nothing refused it
        if release is not None:
            release.released = True
        if written == 1:
            self._remember(key, payload, result)
            return True
        self._metrics.incr("hot_writes_refused_older")
        if int(written) < 0 and self.on_fenced is not None:
            # Invalidated by another worker: this process learns it from the refusal.
            self.on_fenced(identity.card_key, datetime.fromtimestamp(-int(written) / 1000, UTC))
        return False

    async def invalidate(self, identity: ResultIdentity, at: datetime | None = None) -> int:
        """Drop every params variant of the card; refuse data fetched up to ``at`` from now on.

        With coherent near-caches it returns once Redis has sent the invalidation to every
        worker (its own listener heard it, or ``redis_socket_timeout`` passed).
        """
        index = identity.redis_index_key(self._prefix)
        fence = identity.redis_fence_key(self._prefix)
        moment = str(_ms(at)) if at is not None else ""
        listener = self.listener
        heard = listener.expect(fence) if listener is not None and at is not None else None

        async def drop() -> int:
            members = await self._raise_fence(fence, index, moment)
            own = identity.redis_key(self._prefix)
            values = sorted({*members, own})
            for value in values:
                self._decoded.pop(value, None)
            stamps = [value.replace(":r:", ":t:", 1) for value in values]
            dropped = await _DROP_SCRIPT(self.client, [*values, *stamps, index], [moment])
            return int(dropped)

        ok, dropped = await self._call(drop, fence)
        if not ok:
            if heard is not None:
                heard.cancel()
            raise TierUnavailableError("redis")
        if heard is not None and listener is not None:
            await listener.wait(heard, self._settings.redis_socket_timeout.total_seconds())
            # Redis answers this only after it has written out everything it queued
            # before, so the invalidation has been sent to every worker when we return.
            await self._call(lambda: self.client.exists(fence), fence)
        return dropped or 0

    async def _raise_fence(self, fence: str, index: str, moment: str) -> list[str]:
        args: list[str | int] = [moment, self._fence_ttl_ms]
        if self.deployment.kind != "sentinel" or not moment:
            members = await _FENCE_SCRIPT(self.client, [fence, index], args)
        else:
            # A failover promotes a replica that may lack the newest writes: the fence
            # waits (briefly) for one replica, so a promoted one still refuses old data.
            wait_ms = max(int(self._settings.redis_socket_timeout.total_seconds() * 500), 1)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.eval(_FENCE, 2, fence, index, *args)
                pipe.execute_command("WAIT", 1, wait_ms)
                members, replicas = await pipe.execute()
            if not replicas:
                self._metrics.incr("fences_unreplicated")
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    # -- cross-process single-flight ---------------------------------------------------

    async def try_lock(self, identity: ResultIdentity, ttl: timedelta) -> tuple[LockState, str]:
        """Try to become the one process fetching this result.

        Returns ``("acquired", token)``, ``("held", "")`` when another process fetches it,
        or ``("unavailable", "")`` when Redis cannot arbitrate (then fetch without a lock).
        """
        token = secrets.token_hex(16)
        key = identity.redis_lock_key(self._prefix)
        ms = max(int(ttl.total_seconds() * 1000), 1)
        ok, acquired = await self._call(
            lambda: _ACQUIRE_SCRIPT(self.client, [key], [token, ms]), key
        )
        if not ok:
            return "unavailable", ""
        return ("acquired", token) if acquired else ("held", "")

    def expect_change(self, identity: ResultIdentity) -> asyncio.Future[None] | None:
        """A future resolved when this worker hears the result's value change in Redis.

        ``None`` when the worker does not hear changes (no coherent near-cache, or its
        listener is not connected): a process waiting for a lock's holder then only polls.
        """
        listener = self.listener
        return None if listener is None else listener.expect(identity.redis_key(self._prefix))

    async def until_changed(self, heard: asyncio.Future[None] | None, timeout: float) -> None:
        """Wait until ``heard`` resolves (a value landed) or ``timeout`` seconds pass."""
        if heard is None:
            await asyncio.sleep(timeout)
        elif not heard.done():
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation
            # that lands together with the change.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(heard)

    def forget_change(self, heard: asyncio.Future[None] | None) -> None:
        """Stop expecting the change :meth:`expect_change` asked for."""
        if heard is not None and self.listener is not None:
            self.listener.forget(heard)

    async def lock_state(self, identity: ResultIdentity) -> HolderState:
        """Whether some process holds the fetch lock, or its holder failed (``free`` if unknown)."""
        key = identity.redis_lock_key(self._prefix)
        ok, value = await self._call(lambda: self.client.get(key), key)
        if not ok or value is None:
            return "free"
        text = value.decode() if isinstance(value, bytes) else str(value)
        return "failed" if text.startswith("failed:") else "held"

    async def extend_lock(
        self, identity: ResultIdentity, token: str, ttl: timedelta
    ) -> bool | None:
        """Extend our lock: ``False`` when it is no longer ours, ``None`` if Redis is down."""
        key = identity.redis_lock_key(self._prefix)
        ms = max(int(ttl.total_seconds() * 1000), 1)
        ok, extended = await self._call(
            lambda: _EXTEND_SCRIPT(self.client, [key], [token, ms]), key
        )
        return bool(extended) if ok else None

    async def mark_failed(self, identity: ResultIdentity, token: str, ttl: timedelta) -> None:
        """Turn our lock into a failure notice for ``ttl``, for the processes waiting on it."""
        key = identity.redis_lock_key(self._prefix)
        ms = max(int(ttl.total_seconds() * 1000), 1)
        await self._call(lambda: _FAIL_SCRIPT(self.client, [key], [token, ms]), key)

    async def unlock(self, identity: ResultIdentity, token: str) -> None:
        """Release the lock if, and only if, it is still ours."""
        key = identity.redis_lock_key(self._prefix)
        await self._call(lambda: _RELEASE_SCRIPT(self.client, [key], [token]), key)

    async def ping(self) -> bool:
        try:
            return await self.deployment.ping()
        except Exception:  # whatever the client raises, the answer is "not answering"
            return False

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        for task in self._reading:
            task.cancel()
        await self.deployment.close()
