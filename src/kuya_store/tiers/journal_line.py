"""The appender's own connection to Redis: one script run sent and read back, nothing more.

Every search that answers waits for its record's append, so the append's own CPU is paid
on each of them. Through the client, one call costs as much again as the round trip: the
client's lock, its per-call bookkeeping, and a task per write made to bound it by the
socket timeout. On a connection of its own, taken from no pool, the append is the
command written and its reply read, bounded by one deadline (``redis_socket_timeout``),
retried as the client would retry it. Only a single server's pool has such a connection
to make: a Sentinel's follows its master through the pool, a Cluster has no one node.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kuya_store.tiers.redis_scripts import Script

__all__ = ["AppendLine"]


class AppendLine:
    """A connection of the appender's own, made like the pool's, run call by call."""

    def __init__(self, pool: ConnectionPool) -> None:
        options = dict(pool.connection_kwargs)
        timeout = options.get("socket_timeout")
        self._timeout: float | None = float(timeout) if timeout else None
        # The deadline is this line's, over the write and the read together: left to the
        # connection, each write would run in a task of its own to be bounded.
        options["socket_timeout"] = None
        self._connection: Any = pool.connection_class(**options)
        # One call at a time: a reply is read by the call that sent its command.
        self._turn = asyncio.Lock()

    @classmethod
    def of(cls, client: Any) -> AppendLine | None:
        """A line beside ``client``'s pool; ``None`` where there is no one server to reach."""
        pool = getattr(client, "connection_pool", None)
        if not isinstance(pool, ConnectionPool) or isinstance(pool, SentinelConnectionPool):
            return None
        return cls(pool)

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` by its digest, in full should the server lack it.

        Raises:
            redis.exceptions.RedisError: as the client would, once its retries are spent.
        """
        async with self._turn:
            try:
                return await self._call("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await self._call("EVAL", script.text, len(keys), *keys, *args)

    async def _call(self, *command: Any) -> Any:
        connection = self._connection
        packed = connection.pack_command(*command)

        async def once() -> Any:
            try:
                async with asyncio.timeout(self._timeout):
                    await connection.send_packed_command(packed)
                    return await connection.read_response()
            except TimeoutError:
                # Cut mid-call, the connection has dropped itself: the next call reconnects.
                raise RedisTimeoutError("Timeout on the journal's connection") from None

        return await connection.retry.call_with_retry(once, lambda _: connection.disconnect())

    async def close(self) -> None:
        """Drop the connection (it belongs to no pool)."""
        with contextlib.suppress(Exception):
            await self._connection.disconnect()
