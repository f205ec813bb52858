"""Real servers for the benchmarks: from the environment, or started on loopback."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

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
