"""Cancelled searches: they stop at once, never cost another call, never wedge a breaker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import kuya_store as ks
from kuya_store.breaker import CircuitBreaker
from kuya_store.demo import FakeMarketplace
from kuya_store.testing.servers import PostgresServer, RedisServer

QUERY = "1986 Fleer Michael Jordan #57"


class SlowMarket(FakeMarketplace):
    """A marketplace whose every call takes ``delay`` seconds."""

    def __init__(self, delay: float, **kwargs: Any) -> None:
        super().__init__(listings=6, **kwargs)
        self.delay = delay

    async def sold(self, request: ks.FetchRequest) -> ks.FetchResult:
        self.calls.append(request)
        await asyncio.sleep(self.delay)
        self.calls.pop()
        return await super().sold(request)


async def _rows(url: str, sql: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(sa.text(sql))).scalar_one())
    finally:
        await engine.dispose()


# -- the breaker, without servers -----------------------------------------------------------


async def test_cancelled_probe_hands_the_probe_back() -> None:
    now = [0.0]
    breaker = CircuitBreaker(1, 5.0, monotonic=lambda: now[0])
    breaker.failure()
    now[0] = 6.0
    assert breaker.state == "half_open"

    async def hangs() -> None:
        await asyncio.sleep(10)

    probe = asyncio.ensure_future(breaker.guard(hangs, (OSError,)))
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    # The next call may probe again, and its success closes the breaker.

    async def works() -> str:
        return "ok"

    assert await breaker.guard(works, (OSError,)) == ("ok", "ok")
    assert breaker.state == "closed"


def test_probe_that_never_reports_back_expires() -> None:
    now = [0.0]
    breaker = CircuitBreaker(1, 5.0, monotonic=lambda: now[0])
    breaker.failure()
    now[0] = 5.0
    assert breaker.allow()  # a probe that is then lost without a word
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()  # after another reset period a new probe goes through


async def test_guard_counts_failures_and_skips_when_open() -> None:
    breaker = CircuitBreaker(2, 60.0)

    async def boom() -> None:
        raise ConnectionError("down")

    assert await breaker.guard(boom, (OSError,)) == ("failed", None)
    assert await breaker.guard(boom, (OSError,)) == ("failed", None)
    assert breaker.state == "open"
    assert await breaker.guard(boom, (OSError,)) == ("skipped", None)

    async def bug() -> None:
        raise KeyError("not a server failure")

    closed = CircuitBreaker(2, 60.0)
    with pytest.raises(KeyError):
        await closed.guard(bug, (OSError,))
    assert closed.state == "closed"


# -- searches on real servers ---------------------------------------------------------------


async def test_timeout_around_search_stops_promptly_and_costs_one_call(
    migrated_url: str, redis_base_url: str, key_prefix: str
) -> None:
    market = SlowMarket(delay=2.0)
    async with ks.CompsStore(
        database_url=migrated_url,
        redis_url=redis_base_url,
        key_prefix=key_prefix,
        fetchers={"sold": market.sold},
        fetch_backoff=0.01,
    ) as store:
        timeouts: list[asyncio.Timeout] = []

        async def timed() -> None:
            async with asyncio.timeout(None) as timeout:
                timeouts.append(timeout)
                await store.comps.search(QUERY)

        search = asyncio.ensure_future(timed())
        for _ in range(500):  # the paid call is under way when the caller gives up
            if market.calls:
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        timeouts[0].reschedule(asyncio.get_running_loop().time())
        with pytest.raises(TimeoutError):
            await search
        assert time.monotonic() - started < 1.5  # well before the 2 s fetch lands
        # The one paid call goes on and is kept: the next search is answered from it.
        for _ in range(200):
            if store.comps._fetching.in_flight == 0:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        again = await store.comps.search(QUERY)
        assert again.source in {"memory", "redis"}
        assert store.metrics()["api_calls"] == 1
        assert store.metrics()["api_retries"] == 0
        await store.flush()
    # The paid fetch was persisted although its search was cancelled.
    assert await _rows(migrated_url, "SELECT count(*) FROM searches WHERE cache_hit = false") == 1


async def test_a_cancellation_the_driver_swallows_is_raised_again() -> None:
    # Python 3.11's asyncio.wait_for returns the result when a cancellation arrives as the
    # awaited call completes; redis-py sends every command through it.
    breaker = CircuitBreaker(2, 60.0)

    async def loses_the_cancellation() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the caller gives up while the command is on the wire
        with contextlib.suppress(asyncio.CancelledError):  # the driver returns the reply
            await asyncio.sleep(0)
        return "reply"

    with pytest.raises(asyncio.CancelledError):
        await breaker.guard(loses_the_cancellation, (OSError,))
    assert breaker.state == "closed"

    async def already_cancelled() -> str:  # cleanup code that runs after a cancellation
        return "reply"

    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(0)
    assert await breaker.guard(already_cancelled, (OSError,)) == ("ok", "reply")
    task.uncancel()


async def test_a_timeout_anywhere_on_the_redis_path_is_a_timeout(
    sqlite_url: str, redis_base_url: str, key_prefix: str
) -> None:
    # Sweep the moment of the timeout over the path a miss takes: connecting to Redis, the
    # lookups, the lock, the flight. Each one must raise, and none may go on to pay.
    from kuya_store import migrations

    await migrations.upgrade_async(sqlite_url)
    for step in range(48):
        market = SlowMarket(delay=2.0)
        async with ks.CompsStore(
            database_url=sqlite_url,
            redis_url=redis_base_url,
            key_prefix=f"{key_prefix}{step}",
            fetchers={"sold": market.sold},
        ) as store:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.00025 * step):
                    await store.comps.search(QUERY)


async def test_cancelled_owner_does_not_cancel_the_others(migrated_url: str) -> None:
    market = SlowMarket(delay=0.3)
    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": market.sold}, fetch_backoff=0.01
    ) as store:
        owner = asyncio.ensure_future(store.comps.search(QUERY))
        for _ in range(400):  # the owner's flight is under way before the others come
            if market.calls:
                break
            await asyncio.sleep(0.01)
        others = [asyncio.ensure_future(store.comps.search(QUERY)) for _ in range(5)]
        await asyncio.sleep(0.05)
        owner.cancel()
        results = await asyncio.gather(*others)  # no CancelledError leaks into them
        # They shared the flight (or, on a slow machine, read what it stored).
        assert {r.source for r in results} <= {"api", "memory", "database"}
        assert all(r.cache_hit for r in results)
        assert owner.cancelled()
        assert store.metrics()["api_calls"] == 1


async def test_a_cancelled_search_is_never_retried(migrated_url: str) -> None:
    calls = 0
    asked = asyncio.Event()

    async def fails_slowly(request: ks.FetchRequest) -> ks.FetchResult:
        nonlocal calls
        calls += 1
        asked.set()
        await asyncio.sleep(0.2)
        raise ConnectionError("reset by peer")  # transient: would be retried

    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": fails_slowly}, fetch_backoff=0.01
    ) as store:
        search = asyncio.ensure_future(store.comps.search(QUERY))
        await asked.wait()  # the paid call is under way: now the client goes away
        search.cancel()
        with pytest.raises(asyncio.CancelledError):
            await search
        await asyncio.sleep(0.5)  # the abandoned flight's attempt ends and is not repeated
        assert calls == 1
        assert store.metrics()["api_retries"] == 0


async def test_redis_breaker_recovers_after_cancelled_probe(
    key_prefix: str, sqlite_url: str
) -> None:
    from redis import asyncio as aioredis

    await ks.migrations.upgrade_async(sqlite_url)
    market = FakeMarketplace(listings=3)
    with RedisServer() as redis:
        async with ks.CompsStore(
            database_url=sqlite_url,
            redis_url=redis.url,
            key_prefix=key_prefix,
            near_cache_size=0,
            breaker_reset_after=0.2,
            breaker_failure_threshold=1,
            redis_socket_timeout=1.0,
            fetchers={"sold": market.sold},
        ) as store:
            hot = store._hot  # type: ignore[attr-defined]
            redis.kill()
            await store.comps.search(f"{QUERY} a")  # the failure opens the breaker
            assert hot.breaker.state == "open"
            redis.start()
            await asyncio.sleep(0.25)
            assert hot.breaker.state == "half_open"
            # Redis stalls; the half-open probe waiting on it is cancelled by a timeout.
            admin = aioredis.Redis.from_url(redis.url)
            await admin.execute_command("CLIENT", "PAUSE", "500", "ALL")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await store.comps.search(f"{QUERY} b")
            await asyncio.sleep(0.5)
            await admin.aclose()
            # Redis is used again: the next result lands there and answers.
            await store.comps.search(f"{QUERY} c")
            assert hot.breaker.state == "closed"
            assert (await store.comps.search(f"{QUERY} c")).source == "redis"


async def test_database_breaker_recovers_after_cancelled_probe() -> None:
    import asyncpg

    market = FakeMarketplace(listings=3)
    with PostgresServer() as server:
        url = server.url
        await ks.migrations.upgrade_async(url)
        async with ks.CompsStore(
            database_url=url,
            fetchers={"sold": market.sold},
            breaker_failure_threshold=1,
            breaker_reset_after=0.2,
            db_retry_attempts=1,
            db_connect_timeout=1,
            write_flush_interval=0.01,
        ) as store:
            server.stop()
            await store.comps.search(f"{QUERY} a")  # the failed read opens the breaker
            metrics = store.metrics()["database"]
            assert metrics["breaker_opens"] == 1
            server.start()
            await asyncio.sleep(0.25)
            assert await store.flush(timeout=20)
            # The database stalls: another session holds the search log locked.
            dsn = url.replace("postgresql+asyncpg", "postgresql")
            admin = await asyncpg.connect(dsn)
            locking = admin.transaction()
            await locking.start()
            await admin.execute("LOCK TABLE searches IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await store.comps.search(f"{QUERY} b")  # the probe, cancelled
            await locking.rollback()
            await admin.close()
            skipped = store.metrics()["database"]["reads_skipped"]
            await store.comps.search(f"{QUERY} c")
            assert store.comps._db.breaker.state == "closed"  # type: ignore[attr-defined]
            assert store.metrics()["database"]["reads_skipped"] == skipped
