"""Real servers for the suite: PostgreSQL and Redis, never mocks.

Where the URLs come from, in order: ``KUYA_TEST_POSTGRES_URL`` / ``KUYA_TEST_REDIS_URL``;
testcontainers when a Docker engine answers (probed once, fails fast without one); else
servers started here on loopback by ``tests/servers.py``. A server that cannot be had is
an error, never a silent skip.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

import logscan
from servers import PostgresServer, RedisServer


@functools.cache
def docker_answers() -> bool:
    """Whether a Docker engine is reachable (about 0.1 s to say no)."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_base_url() -> Iterator[str]:
    """A SQLAlchemy URL of a PostgreSQL database whose role may create databases."""
    if url := os.environ.get("KUYA_TEST_POSTGRES_URL"):
        logscan.remember(make_url(url).password)
        yield url
    elif docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15-alpine", driver="asyncpg") as container:
            url = container.get_connection_url()
            logscan.remember(make_url(url).password)
            yield url
    else:
        with PostgresServer() as server:
            logscan.remember(server.password)
            yield server.url


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    """A Redis URL."""
    if url := os.environ.get("KUYA_TEST_REDIS_URL"):
        logscan.remember(urlsplit(url).password)
        yield url
    elif docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
    else:
        with RedisServer() as server:
            yield server.url


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(base_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _drop_database(base_url: str, name: str) -> None:
    import asyncpg

    for attempt in range(20):
        try:
            asyncio.run(_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except asyncpg.InsufficientPrivilegeError:
            # An autovacuum worker (a superuser's process) is still in the database after
            # a test's DDL: FORCE may not end it, but it ends on its own within moments.
            if attempt == 19:
                raise
            time.sleep(0.25)


@pytest.fixture
def postgres_url(postgres_base_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"kt_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(postgres_base_url, f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_base_url).set(database=name).render_as_string(hide_password=False)
    _drop_database(postgres_base_url, name)


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
def pgbouncer(postgres_base_url: str) -> Iterator[Any]:
    """PgBouncer in transaction pooling mode in front of the suite's PostgreSQL."""
    from pg_cluster import PgBouncer

    url = make_url(postgres_base_url)
    with PgBouncer(url.host or "127.0.0.1", url.port or 5432, url.username, url.password) as b:
        yield b


@pytest.fixture
def pgbouncer_url(postgres_url: str, pgbouncer: Any) -> str:
    """A fresh, empty database reached through PgBouncer (SQLAlchemy URL, no pooler flag)."""
    url: str = pgbouncer.url_for(make_url(postgres_url).database)
    return url


@pytest.fixture(scope="session")
def streaming_pair() -> Iterator[Any]:
    """A primary and a hot standby of its own (``pg_basebackup``), for replica tests."""
    from pg_cluster import StreamingPair

    with StreamingPair() as pair:
        yield pair


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
def redis_sentinel_url() -> Iterator[str]:
    """A ``redis+sentinel://`` URL: a master, a replica and three sentinels (shared: no kills)."""
    from redis_ha import SentinelSet

    with SentinelSet() as sentinels:
        yield sentinels.url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A ``redis+cluster://`` URL: three masters with a replica each (shared: no kills)."""
    from redis_ha import ClusterSet

    with ClusterSet() as cluster:
        yield cluster.url
