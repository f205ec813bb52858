"""Locks that outlive their fetch, invalidation as a barrier, and the per-call options."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import kuya_store as ks
from coherent import coherent, until
from kuya_store import fetching
from kuya_store.demo import FakeMarketplace
from kuya_store.testing.servers import PostgresServer
from readback import rows as _rows

CARD = "2018 Topps Update Shohei Ohtani #US1"


def _two_workers(
    redis_url: str, prefix: str, fetch: ks.Fetcher, **extra: Any
) -> list[ks.CompsStore]:
    """Two stores sharing one Redis, as two worker processes would."""
    return [
        ks.CompsStore(
            database_url="sqlite+aiosqlite://",
            mode="cache_only",
            redis_url=redis_url,
            key_prefix=prefix,
            fetchers={"sold": fetch},
            single_flight_lock_ttl=0.3,
            redis_socket_timeout=0.1,
            fetch_backoff=0.001,
            **extra,
        )
        for _ in range(2)
    ]


def _poll_every(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """A waiter for a lock's holder looks for the result only every ``seconds``."""
    monkeypatch.setattr(fetching, "_POLL_FIRST", seconds)
    monkeypatch.setattr(fetching, "_POLL_MAX", seconds)


# -- the cross-process lock ----------------------------------------------------------------


async def test_lock_outlives_a_slow_healthy_fetch(redis_base_url: str, key_prefix: str) -> None:
    market = FakeMarketplace(listings=3, latency=1.2)  # four lock TTLs
    first, second = _two_workers(redis_base_url, key_prefix, market.sold)
    async with first, second:
        one = asyncio.ensure_future(first.comps.search(CARD))
        await asyncio.sleep(0.1)
        other = await second.comps.search(CARD)
        assert other.source == "redis"  # waited for the holder instead of paying again
        await one
    assert market.call_count == 1


async def test_a_waiting_process_looks_as_soon_as_the_holders_value_lands(
    redis_base_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Looks 60 s apart: only hearing the holder's value land can end the wait sooner.
    _poll_every(monkeypatch, 60.0)
    market = FakeMarketplace(listings=3, latency=0.5)
    first, second = _two_workers(redis_base_url, key_prefix, market.sold)
    async with first, second:
        await until(lambda: coherent(first) and coherent(second))
        one = asyncio.ensure_future(first.comps.search(CARD))
        await until(lambda: market.call_count > 0)  # the first holds the lock and fetches
        other = await asyncio.wait_for(second.comps.search(CARD), timeout=20)
        assert other.source == "redis"
        assert (await one).source == "api"
        assert second.metrics()["lock_waits"] == 1
    assert market.call_count == 1


async def test_a_process_that_hears_nothing_still_finds_the_holders_value(
    redis_base_url: str, key_prefix: str
) -> None:
    market = FakeMarketplace(listings=3, latency=0.3)
    first, second = _two_workers(
        redis_base_url, key_prefix, market.sold, near_cache_coherence=False
    )
    async with first, second:
        one = asyncio.ensure_future(first.comps.search(CARD))
        await until(lambda: market.call_count > 0)
        other = await second.comps.search(CARD)
        assert other.source == "redis"
        await one
        assert second.metrics()["lock_waits"] == 1
    assert market.call_count == 1


async def test_a_waiter_whose_listener_drops_mid_wait_still_finds_the_holders_value(
    redis_base_url: str, key_prefix: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Looks 3 s apart: the first wait outlasts the holder's fetch unless the drop ends it.
    _poll_every(monkeypatch, 3.0)
    market = FakeMarketplace(listings=3, latency=1.0)
    first, second = _two_workers(redis_base_url, key_prefix, market.sold)
    async with first, second:
        await until(lambda: coherent(first) and coherent(second))
        listener = second._listener
        assert listener is not None
        one = asyncio.ensure_future(first.comps.search(CARD))
        await until(lambda: market.call_count > 0)  # the first holds the lock and fetches
        other = asyncio.ensure_future(second.comps.search(CARD))
        await until(lambda: bool(listener._waiters))  # the second waits to hear the value
        expecting = [w for waiting in listener._waiters.values() for w in waiting]
        tracking_id = listener._connections[0].client_id
        await redis_client.execute_command("CLIENT", "KILL", "ID", str(tracking_id))
        # The drop releases the waiter while the holder is still fetching: it looks at once,
        # then polls, so it neither waits out its whole wait nor pays again.
        await until(lambda: all(w.done() and not w.cancelled() for w in expecting))
        assert not one.done()
        found = await asyncio.wait_for(other, timeout=10)
        assert found.source == "redis"
        assert (await one).source == "api"
        assert second.metrics()["coherence"]["drops"] >= 1
        assert second.metrics()["lock_waits"] == 1
        assert not listener._waiters  # nothing left expecting a change
    assert market.call_count == 1


async def test_holder_failure_is_paid_once_across_processes(
    redis_base_url: str, key_prefix: str
) -> None:
    calls = 0

    async def no_key(request: ks.FetchRequest) -> ks.FetchResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)
        raise ks.PermanentFetchError("missing API key", status=401)

    first, second = _two_workers(redis_base_url, key_prefix, no_key)
    async with first, second:
        one = asyncio.ensure_future(first.comps.search(CARD))
        for _ in range(500):  # the first holds the lock and is calling
            if calls:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(ks.FetcherError, match="another process"):
            await second.comps.search(CARD)
        with pytest.raises(ks.FetcherError):
            await one
        assert calls == 1
        # The notice is for the waiters only: a later search asks again (errors are not cached).
        await asyncio.sleep(0.05)
        with pytest.raises(ks.FetcherError):
            await second.comps.search(CARD)
        assert calls == 2


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"single_flight_wait": 5}, "single_flight_wait"),
        ({"single_flight_lock_ttl": 0.5}, "single_flight_lock_ttl"),
    ],
)
def test_fetch_timing_settings_are_checked_together(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ks.InvalidInputError) as caught:
        ks.StoreSettings(**settings)
    assert caught.value.field == field
    # The same values are fine once the others agree with them.
    ks.StoreSettings(fetch_timeout=1, fetch_attempts=2, single_flight_wait=6)
    ks.StoreSettings(single_flight_lock_ttl=0.5, redis_socket_timeout=0.1)


# -- invalidate() is a barrier -------------------------------------------------------------


async def test_invalidate_during_a_fetch_keeps_its_old_data_out(migrated_url: str) -> None:
    market = FakeMarketplace(listings=4, latency=0.3)
    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold}) as store:
        flight = asyncio.ensure_future(store.comps.search(CARD))
        for _ in range(500):  # the fetch has begun
            if market.call_count:
                break
            await asyncio.sleep(0.01)
        report = await store.comps.invalidate(CARD, "sold")
        assert report.complete
        await flight  # the fetch that began before the invalidation lands now
        again = await store.comps.search(CARD)
        assert again.source == "api"  # it could not write its data back
        assert market.call_count == 2
        await store.flush()
    keys = await _rows(
        migrated_url, "SELECT result_key FROM searches WHERE cache_hit = false ORDER BY id"
    )
    assert keys[0]["result_key"] is None and keys[1]["result_key"] is not None


async def test_invalidate_with_the_database_down_reports_and_is_not_undone() -> None:
    market = FakeMarketplace(listings=4)
    with PostgresServer() as server:
        await ks.migrations.upgrade_async(server.url)
        options: dict[str, Any] = {
            "database_url": server.url,
            "fetchers": {"sold": market.sold},
            "db_connect_timeout": 1,
            "db_command_timeout": 2,
            "db_retry_attempts": 1,
            "write_flush_interval": 0.01,
        }
        async with ks.CompsStore(**options) as store:
            server.stop()
            await store.comps.search(CARD)  # fetched: its record waits in the buffer
            loop = asyncio.get_running_loop()
            started = loop.time()
            report = await store.comps.invalidate(CARD, "sold")
            assert loop.time() - started < 5
            assert (report.hot_tier, report.database, report.complete) == (True, False, False)
            server.start()
            assert await store.flush(timeout=30)
        # A new process: the buffered fetch landed as history, not as an answer.
        async with ks.CompsStore(**options) as store:
            assert (await store.comps.search(CARD)).source == "api"


# -- per-call options ----------------------------------------------------------------------


async def test_refresh_fetches_although_fresh_and_record_false_logs_nothing(
    migrated_url: str,
) -> None:
    market = FakeMarketplace(listings=4)
    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold}) as store:
        await store.comps.search(CARD)
        refreshed = await store.comps.search(CARD, refresh=True)
        assert (refreshed.source, refreshed.cache_hit, market.call_count) == ("api", False, 2)
        quiet = await store.comps.search(CARD, record=False)
        assert quiet.source == "memory"
        with pytest.raises(ks.InvalidInputError, match="refresh"):
            await store.comps.search(CARD, refresh="yes")  # type: ignore[arg-type]
        await store.flush()
    rows = await _rows(migrated_url, "SELECT cache_hit FROM searches ORDER BY id")
    assert [r["cache_hit"] for r in rows] == [False, False]  # the quiet hit left no row


async def test_fetch_stats_reach_the_search_log(migrated_url: str) -> None:
    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        return ks.FetchResult(
            listings=[ks.Listing(item_id="1", title="Ohtani RC", price="50", sold=True)],
            stats=ks.FetchStats(items_scraped=61, duplicates_removed=4, zero_price_removed=2),
        )

    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": fetch}) as store:
        await store.comps.search(CARD)
        await store.flush()
    rows = await _rows(migrated_url, "SELECT fetch_stats FROM searches")
    stats = rows[0]["fetch_stats"]
    stats = stats if isinstance(stats, dict) else __import__("json").loads(stats)
    assert stats == {"items_scraped": 61, "duplicates_removed": 4, "zero_price_removed": 2}


async def test_stale_answer_is_not_a_call_saved(migrated_url: str) -> None:
    clock = ks.ManualClock()
    market = FakeMarketplace(listings=4, clock=clock)
    async with ks.CompsStore(
        database_url=migrated_url,
        fetchers={"sold": market.sold},
        clock=clock,
        freshness_policy="fixed",
    ) as store:
        await store.comps.search(CARD)
        await store.flush()
    clock.advance(timedelta(hours=3))

    async def down(request: ks.FetchRequest) -> ks.FetchResult:
        raise ks.TransientFetchError("upstream 503", status=503)

    async with ks.CompsStore(
        database_url=migrated_url,
        fetchers={"sold": down},
        clock=clock,
        fetch_backoff=0.001,
        freshness_policy="fixed",
    ) as store:
        stale = await store.comps.search(CARD)
        assert (stale.source, stale.cache_hit) == ("stale", True)
        metrics = store.metrics()
        assert metrics["api_calls"] == 3
        assert metrics["api_calls_saved"] == 0
        assert metrics["tier_hits"]["stale"] == 1


async def test_closed_store_refuses_searches(migrated_url: str) -> None:
    market = FakeMarketplace(listings=2)
    store = ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold})
    await store.start()
    await store.close()
    with pytest.raises(ks.StoreClosedError):
        await store.comps.search(CARD)
    assert market.call_count == 0


async def test_search_under_way_at_close_is_kept(migrated_url: str) -> None:
    market = FakeMarketplace(listings=3, latency=0.3)
    store = ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold})
    await store.start()
    running = asyncio.ensure_future(store.comps.search(CARD))
    await asyncio.sleep(0.05)
    await store.close()
    assert (await running).source == "api"
    rows = await _rows(migrated_url, "SELECT count(*) AS n FROM searches")
    assert rows[0]["n"] == 1  # its paid fetch was written before the store let go
