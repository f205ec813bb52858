"""What a database failure means: an outage (:func:`is_outage`) or a lost connection.

The one place that decides what a database outage looks like and turns it into
``StorageUnavailableError`` (:func:`outage_as_unavailable`), for every part of the store
that reads or writes the database on a caller's behalf; and which errors say the
connection itself is gone, so that another connection may answer (:func:`is_disconnect`).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sqlite3
from collections.abc import Iterator

from sqlalchemy import exc as sa_exc

from kuya_store.errors import KuyaStoreError, StorageUnavailableError

__all__ = ["is_disconnect", "is_outage", "outage_as_unavailable"]


# SQLite result codes that say the file cannot be used now, not that the statement is wrong
# ("no such table", a constraint) - extended codes such as SQLITE_IOERR_READ share a prefix.
_SQLITE_OUTAGES = (
    "SQLITE_CANTOPEN",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_FULL",
    "SQLITE_PERM",
    "SQLITE_NOTADB",
    "SQLITE_CORRUPT",
)
# PostgreSQL SQLSTATE classes: 08 connection exception, 53 insufficient resources (too many
# connections, disk full), 57P operator intervention (shutdown, cannot connect now).
_POSTGRES_OUTAGES = ("08", "53", "57P")
_NETWORK_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL}
)


def _says_outage(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror | socket.herror):
        return True
    if isinstance(error, OSError):
        # Only network failures: a backup file that cannot be written is the caller's problem.
        return error.errno in _NETWORK_ERRNOS
    if isinstance(error, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True  # no pooled connection came free within pool_timeout
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, sqlite3.Error):
        return str(getattr(error, "sqlite_errorname", "")).startswith(_SQLITE_OUTAGES)
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_POSTGRES_OUTAGES)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it wraps, each once, up to one of the store's own errors.

    The drivers wrap one another (SQLAlchemy around asyncpg or sqlite3); the store's own
    errors already say what they mean, so nothing under one is looked at.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KuyaStoreError):
            return
        seen.add(id(current))
        yield current
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__


def is_outage(error: BaseException) -> bool:
    """Whether an error says the database cannot answer now, rather than that a request is wrong.

    The drivers wrap one another (SQLAlchemy around asyncpg or sqlite3), so the chain of
    causes is looked at. The store's own errors already say what they mean.
    """
    return any(map(_says_outage, _causes(error)))


@contextlib.contextmanager
def outage_as_unavailable(purpose: str) -> Iterator[None]:
    """Raise a database outage inside the block as ``StorageUnavailableError``.

    Args:
        purpose: what needed the database, for the message (e.g. "analytics read the database").
    """
    try:
        yield
    except Exception as exc:
        if not is_outage(exc):
            raise
        # The driver's message may name hosts or paths: the cause keeps it for the logs.
        raise StorageUnavailableError(
            f"{purpose}, and it does not answer ({type(exc).__name__})"
        ) from exc


# SQLSTATEs of a session the server ended: class 08 (connection exception), administrator
# or crash shutdown, idle session timeout.
_SESSION_ENDED = ("08", "57P01", "57P02", "57P05")
_DRIVER_STATE_ERRORS = frozenset({"InterfaceError", "InternalClientError"})


def _says_disconnect(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | sa_exc.DisconnectionError):
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_SESSION_ENDED)
    # asyncpg refusing a connection on its own side: closed, or still taking in the
    # server's farewell ("another operation is in progress"), without a server's answer.
    return any(
        cls.__module__.startswith("asyncpg.") and cls.__name__ in _DRIVER_STATE_ERRORS
        for cls in type(error).__mro__
    )


def is_disconnect(error: BaseException) -> bool:
    """Whether an error says the connection it ran on is lost, so another one may answer.

    Not a timeout, nor an error the server answered a statement with: those would fail on
    any connection. Narrower than :func:`is_outage` there, wider in the driver's own
    refusals of a connection that is going.
    """
    return any(map(_says_disconnect, _causes(error)))
