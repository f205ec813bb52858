"""Real servers for the suite: PostgreSQL and Redis, never mocks.

Where the URLs come from, in order: ``KUYA_TEST_POSTGRES_URL`` / ``KUYA_TEST_REDIS_URL``;
testcontainers when a Docker engine answers (probed once, fails fast without one); else
servers started on loopback by the harness users of ``kuya_store.testing`` get too
(``kuya_store/testing/servers.py``). A server that cannot be had is an error, never a
silent skip.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

import logscan
from kuya_store.testing.servers import PostgresServer

# The plugin users get from the entry point; loaded here (the entry point is turned off in
# pyproject.toml) so that coverage is already measuring when the library is imported.
pytest_plugins = ("kuya_store.testing.plugin",)


@pytest.fixture(scope="session")
def postgres_base_url(kuya_postgres_base_url: str) -> str:
    """A SQLAlchemy URL of a PostgreSQL database whose role may create databases."""
    logscan.remember(make_url(kuya_postgres_base_url).password)
    return kuya_postgres_base_url


@pytest.fixture(scope="session")
def redis_base_url(kuya_redis_url: str) -> str:
    """A Redis URL."""
    logscan.remember(urlsplit(kuya_redis_url).password)
    return kuya_redis_url


@pytest.fixture
def postgres_url(postgres_base_url: str, kuya_postgres_url: str) -> str:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    return kuya_postgres_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file for one test."""
    return f"sqlite+aiosqlite:///{tmp_path / 'kuya.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database: every persistent-tier test runs on both backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    """A fresh database migrated to head."""
    from kuya_store import migrations

    await migrations.upgrade_async(database_url)
    return database_url


@pytest.fixture
def redis_url(redis_base_url: str) -> str:
    return redis_base_url


@pytest.fixture
def key_prefix() -> str:
    """A key namespace of one test's own, so tests sharing a Redis never see each other."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_client(redis_base_url: str) -> AsyncIterator[Any]:
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(redis_base_url)
    yield client
    await client.aclose()


# --------------------------------------------------------------------------- scale-out servers
# A streaming replica, PgBouncer and pg_partman (tests/pg_cluster.py), started on first use.


@pytest.fixture(scope="session")
def pgbouncer(kuya_pgbouncer: Any) -> Any:
    """PgBouncer in transaction pooling mode in front of the suite's PostgreSQL."""
    return kuya_pgbouncer


@pytest.fixture
def pgbouncer_url(postgres_url: str, pgbouncer: Any) -> str:
    """A fresh, empty database reached through PgBouncer (SQLAlchemy URL, no pooler flag)."""
    url: str = pgbouncer.url_for(make_url(postgres_url).database)
    return url


@pytest.fixture(scope="session")
def streaming_pair(kuya_streaming_pair: Any) -> Any:
    """A primary and a hot standby of its own (``pg_basebackup``), for replica tests."""
    return kuya_streaming_pair


@pytest.fixture
def replicated_db(streaming_pair: Any) -> Iterator[tuple[str, str]]:
    """A fresh database on the streaming pair: ``(primary URL, replica URL)``."""
    name = f"kr_{uuid.uuid4().hex[:12]}"
    urls: tuple[str, str] = streaming_pair.create_database(name)
    streaming_pair.replica.resume_replay()
    yield urls
    streaming_pair.replica.resume_replay()
    if not streaming_pair.replica.is_running():
        streaming_pair.replica.start()
    streaming_pair.primary.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the log scan (tests/logscan.py) -------------------------------------------------------

_SECRET_NAMES = ("SECRET", "PASSWORD", "API_KEY", "TOKEN")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every module constant named like a secret is scanned for in the logs."""
    # The harness's own password, even in a run that never starts its server.
    logscan.remember(inspect.signature(PostgresServer).parameters["password"].default)
    modules = {getattr(item, "module", None) for item in session.items}
    for module in modules - {None}:
        for name, value in vars(module).items():
            if name.isupper() and name.endswith(_SECRET_NAMES):
                logscan.remember(value)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[logscan.SecretScanner]:
    """Fails the session if any record of any test held a password or an API key."""
    scanner = logscan.SecretScanner()
    root, library = logging.getLogger(), logging.getLogger("kuya_store")
    level = library.level
    library.setLevel(logging.DEBUG)
    root.addHandler(scanner)
    try:
        yield scanner
    finally:
        root.removeHandler(scanner)
        library.setLevel(level)
    assert not scanner.leaks, "secrets in the logs:\n" + "\n".join(scanner.leaks[:20])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A module's PgBouncer variant runs once, with the memory hot tier (not again with Redis)."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        twice = params.get("database_url") == "pgbouncer" and params.get("hot_tier") == "redis"
        (drop if twice else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# -- highly available Redis (tests/redis_ha.py): started only when a test asks ------------


@pytest.fixture(scope="session")
def redis_sentinel_url(kuya_redis_sentinel_url: str) -> str:
    """A ``redis+sentinel://`` URL: a master, a replica and three sentinels (shared: no kills)."""
    return kuya_redis_sentinel_url


@pytest.fixture(scope="session")
def redis_cluster_url(kuya_redis_cluster_url: str) -> str:
    """A ``redis+cluster://`` URL: three masters with a replica each (shared: no kills)."""
    return kuya_redis_cluster_url
