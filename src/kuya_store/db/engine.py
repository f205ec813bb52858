"""Engines tuned per backend: SQLite with WAL and foreign keys, PostgreSQL with a checked pool."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from kuya_store.clock import Clock
from kuya_store.errors import StorageUnavailableError
from kuya_store.settings import StoreSettings

__all__ = ["DatabaseFeature", "create_engine"]


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


def create_engine(settings: StoreSettings) -> AsyncEngine:
    """The ``AsyncEngine`` a store uses, configured from its settings."""
    url = settings.database
    if settings.is_sqlite:
        in_memory = url.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {
            "connect_args": {"timeout": settings.sqlite_busy_timeout.total_seconds()}
        }
        if in_memory:
            # One shared connection, or every checkout would see its own empty database.
            kwargs["poolclass"] = StaticPool
        engine = create_async_engine(url, echo=settings.echo_sql, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(settings, in_memory))
        return engine
    return create_async_engine(
        url,
        echo=settings.echo_sql,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout.total_seconds(),
        pool_recycle=int(settings.pool_recycle.total_seconds()),
        pool_pre_ping=True,
        connect_args={
            "prepared_statement_cache_size": settings.statement_cache_size,
            "timeout": settings.db_connect_timeout.total_seconds(),
            "command_timeout": settings.db_command_timeout.total_seconds(),
            "server_settings": {"application_name": "kuya-store"},
        },
    )


class DatabaseFeature:
    """A part of the store that works on the database (analytics, accounts, backup).

    In ``cache_only`` mode there is no database: every call raises ``StorageUnavailableError``.
    """

    _purpose = "this feature needs the database"

    def __init__(self, engine: AsyncEngine | None, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    def _require(self) -> AsyncEngine:
        if self._engine is None:
            raise StorageUnavailableError(f"{self._purpose}, which cache_only mode never uses")
        return self._engine
