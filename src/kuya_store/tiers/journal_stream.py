"""The journal's stream and consumer group in Redis: keys, connections, lifetime, breaker.

Every key carries the hash tag ``{journal}``, so on a Cluster each script runs on one node.
The group is made again, reading from the start, whenever Redis lost the stream (a restart
without persistence, or a first start); each lifetime of the stream is a new generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from kuya_store.breaker import CircuitBreaker
from kuya_store.keys import KEY_VERSION
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.tiers.journal_entries import RecordSeal
from kuya_store.tiers.journal_line import AppendLine
from kuya_store.tiers.redis_scripts import Script

__all__ = ["JournalStream", "JournalUnavailableError", "consumer_name", "stream_id"]

GROUP = "writers"
"""The deployment's consumer group: one consumer per store process."""

# KEYS: stream, epoch. ARGV: group, a new epoch. The epoch names this stream's lifetime:
# missing, the stream was lost (a Redis restart without persistence, or a first start),
# so the group is made again, reading from the start, under a new epoch.
_ENSURE = """
local epoch = redis.call("get", KEYS[2])
if epoch then
    return epoch
end
redis.pcall("xgroup", "CREATE", KEYS[1], ARGV[1], "0", "MKSTREAM")
redis.call("set", KEYS[2], ARGV[2])
return ARGV[2]
"""
_ENSURE_SCRIPT = Script(_ENSURE)


class JournalUnavailableError(Exception):
    """Redis did not take the call (down, or its breaker open): the caller falls back."""


def stream_id(raw: str | None) -> tuple[int, int]:
    """An entry id as a comparable pair; ``(0, 0)`` for none."""
    if not raw:
        return (0, 0)
    ms, _, seq = raw.partition("-")
    return (int(ms), int(seq or 0))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, Any]:
    """A flat ``[name, value, ...]`` reply (or a dict) as a dict with text names."""
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    items = list(raw or [])
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def consumer_name() -> str:
    """Unique per process, readable in ``XINFO CONSUMERS``: host, pid and a random part."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class JournalStream:
    """The deployment's stream and its group, as this process's appender and reader share them."""

    def __init__(self, client: Any, settings: StoreSettings, metrics: Metrics) -> None:
        self._client = client
        # A Cluster pipeline refuses scripts: there each run is a call of its own, on the
        # one node the hash tag names.
        self._pipelined = not isinstance(client, RedisCluster)
        # The appender and the reader each make one call at a time, all the time: each
        # keeps a connection of its own rather than take one from the pool per call (about
        # a third of a call's CPU). A Cluster client has no such connection to keep.
        self._appender = client.client() if self._pipelined else client
        self._reader = client.client() if self._pipelined else client
        # Where there is one server to reach, a single run skips the client's machinery.
        self._line = AppendLine.of(client) if self._pipelined else None
        self._appending: asyncio.Future[None] | None = None
        """Resolved once the append under way is back (its records held): the reader waits on it."""
        self._append_wait = 3 * settings.redis_socket_timeout.total_seconds()
        self._metrics = metrics
        base = f"{settings.key_prefix}:v{KEY_VERSION}:journal:{{journal}}"
        self.stream = base
        self._sequence = f"{base}:seq"
        self._delivered = f"{base}:delivered"
        self._trimmed = f"{base}:trimmed"
        self._epoch_key = f"{base}:epoch"
        self._seal = RecordSeal.of(settings, base)
        self._epoch: str | None = None
        self.consumer = consumer_name()
        self._cursor = "0-0"
        self._group_ready = False
        self.generation = 0
        """Bumped when the group had to be made again: what was appended before is gone."""
        self.breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_reset_after.total_seconds(),
            on_open=lambda: metrics.incr("journal_breaker_opens"),
        )

    async def _guarded(self, call: Any) -> Any:
        if not self.breaker.allow():
            raise JournalUnavailableError("the journal's breaker is open")
        try:
            value = await call()
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except Exception as exc:
            if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                self.breaker.success()  # Redis answered: it lost the group (a restart)
                self._group_ready = False
                raise JournalUnavailableError("the consumer group is gone") from exc
            self.breaker.failure()
            self._metrics.incr("journal_errors")
            raise JournalUnavailableError(f"{type(exc).__name__}: {exc}"[:200]) from exc
        self.breaker.success()
        return value

    async def ensure_group(self) -> None:
        """Make the stream and its group if missing (a first start, or a Redis restart)."""
        if not self._group_ready:
            await self._check_epoch()

    async def _check_epoch(self) -> None:
        keys = [self.stream, self._epoch_key]
        args = [GROUP, uuid.uuid4().hex]
        raw = await self._guarded(lambda: _ENSURE_SCRIPT(self._client, keys, args))
        epoch = _text(raw)
        if epoch != self._epoch:
            # Another lifetime of the stream: what was appended to the last one is gone.
            self.generation += 1
            self._epoch = epoch
            self._cursor = "0-0"
        self._group_ready = True

    async def close(self) -> None:
        """Give the appender's and the reader's connections back to the pool."""
        if self._line is not None:
            await self._line.close()
        for client in (self._appender, self._reader):
            if client is not self._client:
                with contextlib.suppress(Exception):
                    await client.aclose()
