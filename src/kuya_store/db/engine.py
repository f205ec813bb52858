"""Engines tuned per backend: SQLite with WAL and foreign keys, PostgreSQL with a checked pool.

A pooled PostgreSQL connection answers a check before it is handed out, except to a read
(:func:`unchecked_read`) when a read finished with it within ``pool_check_window``: the
read then runs once more, on a checked connection, if the server had closed that one.

Also the one place that decides what a database outage looks like (:func:`is_outage`) and
turns it into ``StorageUnavailableError`` (:func:`outage_as_unavailable`), for every part of
the store that reads or writes the database on a caller's behalf.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import await_only

from kuya_store.clock import Clock
from kuya_store.errors import KuyaStoreError, StorageUnavailableError
from kuya_store.settings import StoreSettings, pgbouncer_requested

__all__ = [
    "DatabaseFeature",
    "Reader",
    "create_engine",
    "decode_json",
    "driver_arguments",
    "driver_connection",
    "idle_driver_connection",
    "is_disconnect",
    "is_outage",
    "must_check",
    "outage_as_unavailable",
    "single_statement",
    "unchecked_read",
]

_T = TypeVar("_T")


class Reader(Protocol):
    """Runs a read on a connection of its choosing (a replica within the lag bound)."""

    def __call__(self, work: Callable[[AsyncConnection], Awaitable[_T]], /) -> Awaitable[_T]: ...


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


def is_outage(error: BaseException) -> bool:
    """Whether an error says the database cannot answer now, rather than that a request is wrong.

    The drivers wrap one another (SQLAlchemy around asyncpg or sqlite3), so the chain of
    causes is looked at. The store's own errors already say what they mean.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KuyaStoreError):
            return False
        seen.add(id(current))
        if _says_outage(current):
            return True
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


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
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KuyaStoreError):
            return False
        seen.add(id(current))
        if _says_disconnect(current):
            return True
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def _sqlite_pragmas(settings: StoreSettings, in_memory: bool) -> Any:
    busy_ms = int(settings.sqlite_busy_timeout.total_seconds() * 1000)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return on_connect


def _statement_name() -> str:
    # asyncpg numbers its statements per process: two clients sharing a PgBouncer server
    # connection would reuse each other's names.
    return f"__asyncpg_{uuid.uuid4().hex}__"


def driver_arguments(url: str | URL, pgbouncer: bool = False) -> tuple[URL, dict[str, Any]]:
    """The URL to hand SQLAlchemy and the driver's connect arguments it needs.

    PgBouncer in transaction mode hands each transaction any server connection, so a
    statement prepared in one may be missing (or already there) in the next: in PgBouncer
    mode (the setting, or ``?pgbouncer=true`` on the URL, which is removed here) no
    statement is cached and every prepared statement has a name of its own.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    pgbouncer = pgbouncer or pgbouncer_requested(parsed)
    parsed = parsed.difference_update_query(["pgbouncer"])
    if not pgbouncer or not parsed.drivername.startswith("postgresql"):
        return parsed, {}
    return parsed, {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _statement_name,
    }


def decode_json(text: str | bytes) -> Any:
    """A JSON column's value: orjson, several times faster than ``json``, where it can.

    orjson refuses integers beyond 64 bits, which a JSONB number may hold; those values
    decode with ``json`` instead, as they did before.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


async def single_statement(conn: AsyncConnection) -> AsyncConnection:
    """``conn`` set up for a read that needs no transaction around it.

    One statement, or statements that each stand alone: at PostgreSQL's READ COMMITTED
    each statement sees its own snapshot inside a transaction too. It then runs in
    autocommit: no ``BEGIN`` before it and no ``ROLLBACK`` when the connection goes back
    to the pool, two round trips saved. Set before the first statement; the pool restores
    the isolation level on return.
    """
    if conn.dialect.name != "postgresql" or conn.info.get(_TRANSACTION_POOLER):
        # Through PgBouncer a statement's parse and execute must share a transaction, or
        # the pooler may send them to two servers.
        return conn
    return await conn.execution_options(isolation_level="AUTOCOMMIT")


async def driver_connection(conn: AsyncConnection) -> Any | None:
    """The asyncpg connection under ``conn`` when a read may use it directly, else ``None``.

    Only outside a transaction on PostgreSQL (after :func:`single_statement`): the
    driver's rows skip SQLAlchemy's result layer, the largest part of a read of many rows.
    """
    if conn.dialect.name != "postgresql" or conn.info.get(_TRANSACTION_POOLER):
        return None
    if conn.sync_connection is None or (
        conn.sync_connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT"
    ):
        return None
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def idle_driver_connection(conn: AsyncConnection) -> Any | None:
    """The asyncpg connection under ``conn`` before any statement ran on it, else ``None``.

    Like :func:`driver_connection` without its two steps through SQLAlchemy (autocommit
    set, then reset on return): a connection that ran nothing has no transaction open
    (SQLAlchemy begins one with its first statement), so one statement sent straight to
    the driver runs on its own, and the pool's rollback on return has nothing to do.
    """
    if conn.dialect.name != "postgresql" or conn.info.get(_TRANSACTION_POOLER):
        return None
    sync = conn.sync_connection
    if sync is None or sync.in_transaction() or sync.invalidated:
        return None
    return sync.connection.driver_connection


_TRANSACTION_POOLER = "kuya_store.transaction_pooler"
"""Marks, in a pooled connection's ``info``, a connection through PgBouncer."""


def _mark_pooler(dbapi_connection: Any, record: Any) -> None:
    record.info[_TRANSACTION_POOLER] = True


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


def _checkout_check(window: float) -> Callable[[Any, Any, Any], None]:
    """The pool's checkout listener: :func:`_ping`, skipped where :func:`must_check` says."""

    def check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        info = record.info
        # Taken, not read: whoever holds it now may leave it broken (a cancelled statement).
        read_at = info.pop(_READ_AT, None)
        read_ago = None if read_at is None else time.monotonic() - read_at
        if dbapi_connection.driver_connection.is_closed() or must_check(
            read_ago, window, _may_skip_check.get()
        ):
            info.pop(_UNCHECKED, None)
            _ping(dbapi_connection, record, proxy)
        else:
            info[_UNCHECKED] = True

    return check


def _ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
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


def _retire_lost_statements(context: Any) -> None:
    """A connection whose prepared statements the server does not know is replaced.

    It happens behind a PgBouncer in transaction mode that the store was not told of: the
    connection's cached statements live on another server connection, and every retry
    on it would fail alike. Treated as a disconnect, the pool hands out fresh ones.
    """
    if getattr(context.original_exception, "sqlstate", None) == _LOST_STATEMENT:
        context.is_disconnect = True


def create_engine(settings: StoreSettings, url: str | None = None) -> AsyncEngine:
    """The ``AsyncEngine`` a store uses, configured from its settings.

    Args:
        url: another server with the same settings (a replica); default: the primary.
    """
    target, pooler_args = driver_arguments(url or settings.database_url, settings.pgbouncer)
    if settings.is_sqlite:
        in_memory = target.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {
            "connect_args": {"timeout": settings.sqlite_busy_timeout.total_seconds()}
        }
        if in_memory:
            # One shared connection, or every checkout would see its own empty database.
            kwargs["poolclass"] = StaticPool
        engine = create_async_engine(target, echo=settings.echo_sql, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(settings, in_memory))
        return engine
    engine = create_async_engine(
        target,
        echo=settings.echo_sql,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout.total_seconds(),
        pool_recycle=int(settings.pool_recycle.total_seconds()),
        json_deserializer=decode_json,
        connect_args={
            # Both per-connection caches of prepared statements: SQLAlchemy's and asyncpg's.
            "prepared_statement_cache_size": settings.statement_cache_size,
            "statement_cache_size": settings.statement_cache_size,
            "timeout": settings.db_connect_timeout.total_seconds(),
            "command_timeout": settings.db_command_timeout.total_seconds(),
            "server_settings": {"application_name": "kuya-store"},
            **pooler_args,
        },
    )
    # Replica reads share their primary's pool with lag probes that must not be handed a
    # dead connection: with replicas, or on a replica, every checkout is checked.
    window = 0.0 if url or settings.replica_urls else settings.pool_check_window.total_seconds()
    event.listen(engine.sync_engine, "checkout", _checkout_check(window) if window else _ping)
    event.listen(engine.sync_engine, "handle_error", _retire_lost_statements)
    if pooler_args:
        event.listen(engine.sync_engine, "connect", _mark_pooler)
    return engine


async def unchecked_read(
    run: Callable[[Callable[[AsyncConnection], Awaitable[_T]]], Awaitable[_T]],
    work: Callable[[AsyncConnection], Awaitable[_T]],
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
        run: e.g. ``engine.connect()`` around ``work``, or a replica-aware reader.
    """
    unchecked = False

    async def tracked(conn: AsyncConnection) -> _T:
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


class DatabaseFeature:
    """A part of the store that works on the database (analytics, accounts, backup).

    In ``cache_only`` mode there is no database, and when the database does not answer, every
    call raises ``StorageUnavailableError``: open connections with :meth:`_connect` and
    :meth:`_begin`, never on the engine itself.
    """

    _purpose = "this feature needs the database"

    def __init__(
        self, engine: AsyncEngine | None, clock: Clock, reader: Reader | None = None
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._reader = reader

    def _require(self) -> AsyncEngine:
        if self._engine is None:
            raise StorageUnavailableError(f"{self._purpose}, which cache_only mode never uses")
        return self._engine

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection; an outage while it is open raises ``StorageUnavailableError``."""
        engine = self._require()
        with outage_as_unavailable(self._purpose):
            async with engine.connect() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction committed at the end, like ``engine.begin()``."""
        engine = self._require()
        with outage_as_unavailable(self._purpose):
            async with engine.begin() as conn:
                yield conn

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run a read that a replica within the lag bound may answer (else the primary)."""
        engine = self._require()

        async def on_primary(work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
            async with engine.connect() as conn:
                return await work(conn)

        with outage_as_unavailable(self._purpose):
            return await unchecked_read(self._reader or on_primary, work)
