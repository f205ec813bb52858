"""The pytest plugin of ``kuya_store.testing``: a test store, an app client, real servers.

Registered as ``kuya_store`` through the ``pytest11`` entry point. Every fixture is named
``kuya_*`` so it never shadows an application's own. The library itself is imported only
inside the fixtures, so loading the plugin costs nothing to a run that does not use them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from kuya_store.clock import ManualClock
    from kuya_store.demo import FakeMarketplace
    from kuya_store.store import CompsStore
    from kuya_store.testing.pg_cluster import PgBouncer, StreamingPair

__all__ = [
    "docker_answers",
    "kuya_app",
    "kuya_clock",
    "kuya_market",
    "kuya_pgbouncer",
    "kuya_postgres_base_url",
    "kuya_postgres_url",
    "kuya_redis_cluster_url",
    "kuya_redis_sentinel_url",
    "kuya_redis_url",
    "kuya_store",
    "kuya_store_factory",
    "kuya_streaming_pair",
]


@functools.cache
def docker_answers() -> bool:
    """Whether a Docker engine is reachable (about 0.1 s to say no)."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


# -- the embedded default, for an app's own tests -------------------------------------------


@pytest.fixture
def kuya_clock() -> ManualClock:
    """A manual clock: ``kuya_clock.advance(timedelta(minutes=31))`` makes results stale."""
    from kuya_store.clock import ManualClock

    return ManualClock()


@pytest.fixture
def kuya_market(kuya_clock: ManualClock) -> FakeMarketplace:
    """A fake marketplace for sold and active searches; ``call_count`` is what it was paid."""
    from kuya_store.demo import FakeMarketplace

    return FakeMarketplace(listings=12, clock=kuya_clock)


@pytest.fixture
def kuya_store_factory(
    tmp_path: Path, kuya_clock: ManualClock, kuya_market: FakeMarketplace
) -> Callable[..., CompsStore]:
    """Builds stores on the test's own SQLite file, clock and marketplace (keywords override)."""
    from kuya_store.store import CompsStore

    def build(**overrides: Any) -> CompsStore:
        options: dict[str, Any] = {
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'kuya-test.db'}",
            "clock": kuya_clock,
            "fetchers": {"sold": kuya_market.sold, "active": kuya_market.active},
        }
        return CompsStore(**{**options, **overrides})

    return build


@pytest_asyncio.fixture
async def kuya_store(kuya_store_factory: Callable[..., CompsStore]) -> AsyncIterator[CompsStore]:
    """An open store on the embedded default with its schema, closed after the test."""
    store = kuya_store_factory()
    async with store:
        await store.create_schema()
        yield store


@pytest.fixture
def kuya_app(kuya_store_factory: Callable[..., CompsStore]) -> Iterator[Callable[..., TestClient]]:
    """``kuya_app(app)``: a test client whose kuya-store lifespan opens a test store.

    The app's own lifespan code runs as in production (inside the store's); only the store
    it gets is the test's: the embedded default on ``kuya_clock`` and ``kuya_market``. Use
    the client as a context manager (``with kuya_app(app) as client:``) so the lifespan runs.
    """
    from starlette.testclient import TestClient

    from kuya_store.integrations.fastapi import TEST_FACTORY_KEY

    changed: list[Starlette] = []

    def client(app: Starlette, **overrides: Any) -> TestClient:
        setattr(app.state, TEST_FACTORY_KEY, lambda: kuya_store_factory(**overrides))
        changed.append(app)
        return TestClient(app)

    yield client
    for app in changed:
        if hasattr(app.state, TEST_FACTORY_KEY):
            delattr(app.state, TEST_FACTORY_KEY)


# -- real servers -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kuya_postgres_base_url() -> Iterator[str]:
    """A PostgreSQL server whose role may create databases (SQLAlchemy URL, asyncpg).

    ``KUYA_TEST_POSTGRES_URL`` when set, else testcontainers when a Docker engine answers,
    else a server of the harness on loopback (installed with apt when missing, as root).
    """
    if url := os.environ.get("KUYA_TEST_POSTGRES_URL"):
        yield url
    elif docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15-alpine", driver="asyncpg") as container:
            yield container.get_connection_url()
    else:
        from kuya_store.testing.pg_server import PostgresServer

        with PostgresServer() as server:
            yield server.url


@pytest.fixture(scope="session")
def kuya_redis_url() -> Iterator[str]:
    """A Redis server: ``KUYA_TEST_REDIS_URL``, else testcontainers, else the harness's."""
    if url := os.environ.get("KUYA_TEST_REDIS_URL"):
        yield url
    elif docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
    else:
        from kuya_store.testing.redis_server import RedisServer

        with RedisServer() as server:
            yield server.url


def _asyncpg_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(base_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(base_url: str, prefix: str = "kt") -> str:
    """A fresh, empty database on the server of ``base_url``; its URL."""
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(base_url, f'CREATE DATABASE "{name}"'))
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_database(base_url: str, name: str) -> None:
    """Drop a test's database, waiting out an autovacuum worker still inside it.

    A superuser's autovacuum worker, after a test's DDL, is a backend that ``FORCE`` may
    not end for a non-superuser; it ends on its own within moments.
    """
    import asyncpg
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

    for attempt in Retrying(
        retry=retry_if_exception_type(asyncpg.InsufficientPrivilegeError),
        stop=stop_after_attempt(20),
        wait=wait_fixed(0.25),
        reraise=True,
    ):
        with attempt:
            asyncio.run(_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def kuya_postgres_url(kuya_postgres_base_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy.engine import make_url

    url = create_database(kuya_postgres_base_url)
    yield url
    drop_database(kuya_postgres_base_url, make_url(url).database or "")


@pytest.fixture(scope="session")
def kuya_pgbouncer(kuya_postgres_base_url: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of ``kuya_postgres_base_url``."""
    from sqlalchemy.engine import make_url

    from kuya_store.testing.pg_cluster import PgBouncer

    url = make_url(kuya_postgres_base_url)
    user, password = url.username or "postgres", url.password or ""
    with PgBouncer(url.host or "127.0.0.1", url.port or 5432, user, password) as b:
        yield b


@pytest.fixture(scope="session")
def kuya_streaming_pair() -> Iterator[StreamingPair]:
    """A primary and a hot standby of its own (``pg_basebackup``), for replica tests."""
    from kuya_store.testing.pg_cluster import StreamingPair

    with StreamingPair() as pair:
        yield pair


@pytest.fixture(scope="session")
def kuya_redis_sentinel_url() -> Iterator[str]:
    """A ``redis+sentinel://`` URL: a master, a replica and three sentinels."""
    from kuya_store.testing.redis_ha import SentinelSet

    with SentinelSet() as sentinels:
        yield sentinels.url


@pytest.fixture(scope="session")
def kuya_redis_cluster_url() -> Iterator[str]:
    """A ``redis+cluster://`` URL: three masters with a replica each."""
    from kuya_store.testing.redis_ha import ClusterSet

    with ClusterSet() as cluster:
        yield cluster.url
