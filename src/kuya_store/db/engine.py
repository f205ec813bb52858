"""Engines tuned per backend: SQLite with WAL and foreign keys, PostgreSQL with a checked pool.

The pool's liveness check is in :mod:`kuya_store.db.checks`, what a failure means in
:mod:`kuya_store.db.errors` (both re-exported here); this module builds the engines, reaches
the driver's own connection for reads that skip SQLAlchemy's row processing, and holds
:class:`DatabaseFeature`, the base of every part of the store that works on the database.
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from kuya_store.clock import Clock
from kuya_store.db.checks import (
    TRANSACTION_POOLER,
    checkout_check,
    mark_pooler,
    must_check,
    ping,
    retire_lost_statements,
    unchecked_read,
)
from kuya_store.db.driver_reads import DRIVER_READS, PooledDriver, driver_reads, on_pooled_driver
from kuya_store.db.errors import is_disconnect, is_outage, outage_as_unavailable
from kuya_store.errors import StorageUnavailableError
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
    if conn.dialect.name != "postgresql" or conn.info.get(TRANSACTION_POOLER):
        # Through PgBouncer a statement's parse and execute must share a transaction, or
        # the pooler may send them to two servers.
        return conn
    return await conn.execution_options(isolation_level="AUTOCOMMIT")


async def driver_connection(conn: AsyncConnection) -> Any | None:
    """The asyncpg connection under ``conn`` when a read may use it directly, else ``None``.

    Only outside a transaction on PostgreSQL (after :func:`single_statement`): the
    driver's rows skip SQLAlchemy's result layer, the largest part of a read of many rows.
    """
    if conn.dialect.name != "postgresql" or conn.info.get(TRANSACTION_POOLER):
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
    if conn.dialect.name != "postgresql" or conn.info.get(TRANSACTION_POOLER):
        return None
    sync = conn.sync_connection
    if sync is None or sync.in_transaction() or sync.invalidated:
        return None
    return sync.connection.driver_connection


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
        # The primary, not behind PgBouncer: a read may take the driver's pooled
        # connection itself (``driver_reads``).
        execution_options={DRIVER_READS: not (url or pooler_args)},
    )
    # Replica reads share their primary's pool with lag probes that must not be handed a
    # dead connection: with replicas, or on a replica, every checkout is checked.
    window = 0.0 if url or settings.replica_urls else settings.pool_check_window.total_seconds()
    event.listen(engine.sync_engine, "checkout", checkout_check(window) if window else ping)
    event.listen(engine.sync_engine, "handle_error", retire_lost_statements)
    if pooler_args:
        event.listen(engine.sync_engine, "connect", mark_pooler)
    return engine


class DatabaseFeature:
    """A part of the store that works on the database (analytics, accounts, backup).

    In ``cache_only`` mode there is no database, and when the database does not answer, every
    call raises ``StorageUnavailableError``: open connections with :meth:`_connect` and
    :meth:`_begin`, never on the engine itself. ``reader``, given where read replicas are
    configured, picks the connection of each read; without it reads run on the primary.
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
            if self._reader is not None:  # the store's reader takes the check window itself
                return await self._reader(work)
            return await unchecked_read(on_primary, work)

    async def _driver_read(
        self,
        on_driver: Callable[[PooledDriver], Awaitable[_T]],
        work: Callable[[AsyncConnection], Awaitable[_T]],
    ) -> _T:
        """Run a read of one statement on the driver's pooled connection where it may.

        ``on_driver`` gets the primary's pooled asyncpg connection itself when no read
        replica is configured, on PostgreSQL not behind PgBouncer (``db/driver_reads.py``),
        with the same check window and retry as :meth:`_read`; elsewhere ``work`` runs
        through :meth:`_read`.
        """
        engine = self._require()
        if self._reader is not None or not driver_reads(engine):
            return await self._read(work)
        with outage_as_unavailable(self._purpose):
            return await unchecked_read(functools.partial(on_pooled_driver, engine), on_driver)
