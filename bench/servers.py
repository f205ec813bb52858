"""Real servers for the benchmarks: from the environment, or started on loopback."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from kuya_store.testing.servers import PostgresServer, RedisServer


@contextlib.contextmanager
def real_servers() -> Iterator[tuple[str, str]]:
    """Yield ``(postgres_url, redis_url)``: ``KUYA_BENCH_*`` variables, else local servers."""
    pg_url = os.environ.get("KUYA_BENCH_POSTGRES_URL")
    redis_url = os.environ.get("KUYA_BENCH_REDIS_URL")
    with contextlib.ExitStack() as stack:
        if not pg_url:
            pg_url = stack.enter_context(PostgresServer()).url
        if not redis_url:
            redis_url = stack.enter_context(RedisServer()).url
        yield pg_url, redis_url


async def drop_database(admin: Any, name: str) -> None:
    """Drop a scratch database on ``admin``'s server, waiting out an autovacuum worker in it.

    After a bulk load, autovacuum may be at work in the database: a superuser's backend,
    which ``FORCE`` may not end for a non-superuser, but which ends on its own within
    moments.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(asyncpg.InsufficientPrivilegeError),
        stop=stop_after_attempt(40),
        wait=wait_fixed(0.25),
        reraise=True,
    ):
        with attempt:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
