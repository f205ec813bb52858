"""The pool's liveness check: which pooled PostgreSQL connections answer ``SELECT 1`` first.

Every connection is checked as it is handed out, except to a read (:func:`unchecked_read`)
when a read finished with it within ``pool_check_window``: the read then runs once more,
on a checked connection, if the server had closed that one. A connection whose prepared
statements the server lost (an undeclared PgBouncer) is replaced like a dead one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.util import await_only

from kuya_store.db.errors import is_disconnect

__all__ = [
    "TRANSACTION_POOLER",
    "PooledConnection",
    "checkout_check",
    "mark_pooler",
    "must_check",
    "ping",
    "retire_lost_statements",
    "unchecked_read",
]

_T = TypeVar("_T")


class PooledConnection(Protocol):
    """What a read's retry needs of its connection: an ``AsyncConnection``, or the driver's."""

    @property
    def info(self) -> dict[Any, Any]: ...

    @property
    def invalidated(self) -> bool: ...

    async def invalidate(self) -> None: ...


_C = TypeVar("_C", bound=PooledConnection)

TRANSACTION_POOLER = "kuya_store.transaction_pooler"
"""Marks, in a pooled connection's ``info``, a connection through PgBouncer."""


def mark_pooler(dbapi_connection: Any, record: Any) -> None:
    record.info[TRANSACTION_POOLER] = True


_READ_AT = "kuya_store.read_at"
"""In a pooled connection's ``info``: when (monotonic seconds) a read last finished on it."""
_UNCHECKED = "kuya_store.unchecked"
"""In a pooled connection's ``info``: it was handed out without its check this time."""
_may_skip_check: ContextVar[bool] = ContextVar("kuya_store.may_skip_check", default=False)
"""Set by :func:`unchecked_read` around a read that runs again if its connection was dead."""


def must_check(read_ago: float | None, window: float, may_skip: bool) -> bool:
    """Whether a pooled connection must answer ``SELECT 1`` before it is handed out.

    Only a read that will run again on a dead connection (``may_skip``) takes one unchecked,
    and only one that a read finished with less than ``window`` seconds ago (``read_ago``;
    ``None``: something else used it last, or nothing did).
    """
    return not (may_skip and read_ago is not None and 0 <= read_ago < window)


def checkout_check(window: float) -> Callable[[Any, Any, Any], None]:
    """The pool's checkout listener: :func:`ping`, skipped where :func:`must_check` says."""

    def check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        info = record.info
        # Taken, not read: whoever holds it now may leave it broken (a cancelled statement).
        read_at = info.pop(_READ_AT, None)
        read_ago = None if read_at is None else time.monotonic() - read_at
        if dbapi_connection.driver_connection.is_closed() or must_check(
            read_ago, window, _may_skip_check.get()
        ):
            info.pop(_UNCHECKED, None)
            ping(dbapi_connection, record, proxy)
        else:
            info[_UNCHECKED] = True

    return check


def ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Check a pooled connection as it is handed out; a dead one is replaced, not used.

    The same guarantee as SQLAlchemy's ``pool_pre_ping`` in one round trip instead of
    three: its asyncpg ping wraps a prepared ``;`` in ``BEGIN`` and ``ROLLBACK`` so that
    PgBouncer accepts it, while ``SELECT 1`` sent as a simple query needs neither. A
    connection whose server already hung up is known without asking. A failed check
    retires every connection pooled before it, as after a server restart.
    """
    driver = dbapi_connection.driver_connection
    if driver.is_closed():
        raise sa_exc.InvalidatePoolError("the server closed this pooled connection")
    try:
        await_only(driver.execute("SELECT 1"))
    except Exception as exc:  # whatever broke it, a fresh connection is the remedy
        raise sa_exc.InvalidatePoolError(f"a pooled connection failed its check: {exc}") from exc


_LOST_STATEMENT = "26000"
"""SQLSTATE of "prepared statement ... does not exist"."""


def retire_lost_statements(context: Any) -> None:
    """A connection whose prepared statements the server does not know is replaced.

    It happens behind a PgBouncer in transaction mode that the store was not told of: the
    connection's cached statements live on another server connection, and every retry
    on it would fail alike. Treated as a disconnect, the pool hands out fresh ones.
    """
    if getattr(context.original_exception, "sqlstate", None) == _LOST_STATEMENT:
        context.is_disconnect = True


async def unchecked_read(
    run: Callable[[Callable[[_C], Awaitable[_T]]], Awaitable[_T]],
    work: Callable[[_C], Awaitable[_T]],
) -> _T:
    """Run a read that may take a recently read connection unchecked, again if it was dead.

    ``run`` opens a connection and calls what it is given (``work``, wrapped): a read
    changes nothing, so running it twice is safe, and only a read may skip the check. A
    connection handed out unchecked that turns out lost is never the caller's problem:
    the read runs once more, on a checked connection. Every other failure, and a lost
    connection that was checked, is raised as before; cancellation is never retried.

    One more attempt at once, not ``retries.retrying``: the read's new connection is
    checked, so there is nothing to wait for, and a tenacity loop around every read
    would cost more than the round trip saved.

    Args:
        run: e.g. ``engine.connect()`` around ``work``, a replica-aware reader, or
            ``driver_reads.on_pooled_driver``.
    """
    unchecked = False

    async def tracked(conn: _C) -> _T:
        nonlocal unchecked
        info = conn.info
        unchecked = info.get(_UNCHECKED, False)
        try:
            result = await work(conn)
        except Exception as exc:
            if unchecked and is_disconnect(exc) and not conn.invalidated:
                # Not back to the pool: the driver's own rows bypass SQLAlchemy's
                # invalidation on a disconnect.
                with contextlib.suppress(Exception):
                    await conn.invalidate()
            raise
        info[_READ_AT] = time.monotonic()
        return result

    token = _may_skip_check.set(True)
    try:
        return await run(tracked)
    except Exception as exc:
        if not (unchecked and is_disconnect(exc)):
            raise
    finally:
        _may_skip_check.reset(token)
    token = _may_skip_check.set(False)
    try:
        return await run(tracked)
    finally:
        _may_skip_check.reset(token)
