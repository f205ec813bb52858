"""Reads on the driver's own pooled connection, with nothing of SQLAlchemy's around it but the pool.

A read of one statement whose rows come straight from asyncpg needs of SQLAlchemy only
its pool: the checkout (with the pool's liveness check, skipped within the check window
as for every read) and the return. An ``AsyncConnection`` adds a ``Connection`` with its
transaction bookkeeping, and closes in a task of its own: about half of the CPU a read
spends around its statement. Only where the driver may run a statement on its own: the
primary of a store without read replicas (replica selection stays with the reader),
PostgreSQL, not behind PgBouncer (where parse and execute must share a transaction).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool
from sqlalchemy.util import greenlet_spawn

__all__ = ["DRIVER_READS", "PooledDriver", "driver_reads", "on_pooled_driver"]

_T = TypeVar("_T")

DRIVER_READS = "kuya_store.driver_reads"
"""An engine execution option: reads may take the driver's pooled connection directly."""


def driver_reads(engine: AsyncEngine) -> bool:
    """Whether reads on ``engine`` may run on :func:`on_pooled_driver`."""
    return bool(engine.sync_engine.get_execution_options().get(DRIVER_READS))


class PooledDriver:
    """A pooled connection handed out for one read: its driver, and what the pool knows."""

    __slots__ = ("_pooled", "driver")

    def __init__(self, pooled: PoolProxiedConnection) -> None:
        self._pooled = pooled
        self.driver: Any = pooled.driver_connection
        """The asyncpg connection."""

    @property
    def info(self) -> dict[Any, Any]:
        """The pooled connection's ``info``, as an ``AsyncConnection`` on it shows it."""
        return self._pooled.info

    @property
    def invalidated(self) -> bool:
        return not self._pooled.is_valid

    async def invalidate(self) -> None:
        """Close the connection and keep it out of the pool (closing it is I/O)."""
        await greenlet_spawn(self._pooled.invalidate)


async def on_pooled_driver(
    engine: AsyncEngine, work: Callable[[PooledDriver], Awaitable[_T]]
) -> _T:
    """Run ``work`` on a connection of ``engine``'s pool, given back when it is done."""
    pool = engine.sync_engine.pool
    pooled = await greenlet_spawn(pool.connect)  # the checkout listeners may do I/O
    try:
        return await work(PooledDriver(pooled))
    finally:
        if isinstance(pool, QueuePool) and pool.overflow() <= 0:
            # Back into a pool with room for it, with no transaction to roll back: no
            # I/O, so nothing a cancellation could cut short.
            await greenlet_spawn(pooled.close)
        else:
            # The pool may close it instead (I/O): finished even if the read is cancelled.
            await _to_completion(greenlet_spawn(pooled.close))


async def _to_completion(step: Awaitable[None]) -> None:
    """Await ``step`` in a task of its own to its end; a cancellation meanwhile is raised after."""
    task = asyncio.ensure_future(step)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                raise
            cancelled = exc
        else:
            break
    if cancelled is not None:
        raise cancelled
