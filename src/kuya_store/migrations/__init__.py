"""The schema's Alembic migrations, shipped in the package and run without an ``alembic.ini``.

Every function here works from plain synchronous code and from inside a running event
loop (a FastAPI lifespan, say): there the work runs in a helper thread with its own loop.
Async code that can ``await`` should prefer the ``*_async`` twins, which do not block.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

__all__ = [
    "ADVISORY_LOCK_KEY",
    "VERSION_TABLE",
    "current",
    "current_async",
    "downgrade",
    "downgrade_async",
    "head",
    "upgrade",
    "upgrade_async",
]

VERSION_TABLE = "kuya_store_alembic_version"
"""kuya-store's own version table, so the host application's Alembic history is untouched."""

ADVISORY_LOCK_KEY = 0x6B757961  # "kuya"
"""PostgreSQL advisory lock held while migrating, so concurrent upgrades run one at a time."""

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported where a migration runs, not with the package: it is most of what
# importing kuya_store would cost, and a worker that never migrates never needs it.

_SCRIPT_LOCATION = Path(__file__).resolve().parent
_T = TypeVar("_T")


def _config(database_url: str | None = None, connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPT_LOCATION))
    # Kept out of the ini options: configparser would choke on '%' in a password.
    config.attributes["database_url"] = database_url
    config.attributes["connection"] = connection
    return config


def _normalise(database_url: str) -> str:
    from kuya_store.settings import StoreSettings

    return StoreSettings(database_url=database_url).database_url


def _engine(database_url: str) -> AsyncEngine:
    from kuya_store.db.engine import driver_arguments

    url, connect_args = driver_arguments(database_url)
    return create_async_engine(url, poolclass=NullPool, connect_args=connect_args)


def _blocking(work: Callable[[], _T]) -> _T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return work()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kuya-migrate") as pool:
        return pool.submit(work).result()


def head() -> str:
    """The newest revision shipped with this version of kuya-store."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the newest)."""
    config = _config(_normalise(database_url))
    from alembic import command

    _blocking(lambda: command.upgrade(config, revision))


def downgrade(database_url: str, revision: str) -> None:
    """Migrate the database down to ``revision`` (``"base"`` drops every kuya-store table)."""
    config = _config(_normalise(database_url))
    from alembic import command

    _blocking(lambda: command.downgrade(config, revision))


def current(database_url: str) -> str | None:
    """The revision the database is at, or ``None`` when it has never been migrated."""
    return _blocking(lambda: asyncio.run(current_async(database_url)))


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


async def _with_connection(
    target: str | AsyncEngine, work: Callable[[AsyncConnection], object]
) -> object:
    engine = _engine(_normalise(target)) if isinstance(target, str) else target
    try:
        async with engine.begin() as connection:
            return await work(connection)  # type: ignore[misc]
    finally:
        if isinstance(target, str):
            await engine.dispose()


async def current_async(target: str | AsyncEngine) -> str | None:
    """Async twin of :func:`current`; accepts a URL or an existing ``AsyncEngine``."""

    async def work(connection: AsyncConnection) -> str | None:
        return await connection.run_sync(_current)

    result = await _with_connection(target, work)
    assert result is None or isinstance(result, str)
    return result


async def upgrade_async(target: str | AsyncEngine, revision: str = "head") -> None:
    """Async twin of :func:`upgrade`; accepts a URL or an existing ``AsyncEngine``."""

    from alembic import command

    async def work(connection: AsyncConnection) -> None:
        await connection.run_sync(lambda sync: command.upgrade(_config(connection=sync), revision))

    await _with_connection(target, work)


async def downgrade_async(target: str | AsyncEngine, revision: str) -> None:
    """Async twin of :func:`downgrade`; accepts a URL or an existing ``AsyncEngine``."""

    from alembic import command

    async def work(connection: AsyncConnection) -> None:
        await connection.run_sync(
            lambda sync: command.downgrade(_config(connection=sync), revision)
        )

    await _with_connection(target, work)
