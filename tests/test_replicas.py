"""Read replicas: reads go to a streaming replica within the lag bound, else to the primary.

The pure choice is tested alone; the rest on a real primary and hot standby started with
``pg_basebackup`` (tests/pg_cluster.py): paused replay (lag), a stopped replica.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import kuya_store as ks
from kuya_store.db.replicas import Candidate, choose_replica, probe_due, within_bound
from kuya_store.demo import FakeMarketplace

QUERY = "2023 Topps Chrome Victor Wembanyama #1"


# -- the choice, without servers -------------------------------------------------------


def test_a_replica_answers_only_while_surely_within_the_bound() -> None:
    fresh = Candidate(allowed=True, lag=0.5, measured_at=100.0)
    assert within_bound(fresh, now=100.0, max_lag=1.0)
    # Measured 0.5 s behind, 0.6 s ago: it may have stopped replaying since, so 1.1 s.
    assert not within_bound(fresh, now=100.6, max_lag=1.0)
    assert not within_bound(Candidate(True, None, None), now=100.0, max_lag=60)


def test_choice_takes_turns_and_skips_open_breakers_and_laggards() -> None:
    ok = Candidate(True, 0.0, 10.0)
    broken = Candidate(False, 0.0, 10.0)
    behind = Candidate(True, 9.0, 10.0)
    candidates = [ok, broken, behind, ok]
    picks = {choose_replica(candidates, 10.0, 5.0, turn) for turn in range(10)}
    assert picks == {0, 3}
    assert choose_replica([broken, behind], 10.0, 5.0, 0) is None
    assert choose_replica([], 10.0, 5.0, 0) is None


def test_lag_is_measured_again_after_a_quarter_of_the_bound() -> None:
    assert probe_due(Candidate(True, None, None), 0.0, 4.0)
    assert not probe_due(Candidate(True, 0.0, 10.0), 10.9, 4.0)
    assert probe_due(Candidate(True, 0.0, 10.0), 11.0, 4.0)


def test_replica_urls_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KUYA_REPLICA_URLS", "postgresql://u:secret1@r1/db, postgresql://u:secret2@r2:5433/db"
    )
    settings = ks.StoreSettings(database_url="postgresql://u:pw@primary/db")
    assert settings.replica_urls == [
        "postgresql+asyncpg://u:secret1@r1/db",
        "postgresql+asyncpg://u:secret2@r2:5433/db",
    ]
    assert "secret" not in repr(settings)
    with pytest.raises(ks.InvalidInputError, match="replica_urls"):
        ks.StoreSettings(database_url="sqlite+aiosqlite:///x.db")  # env replicas, SQLite primary


# -- on a real streaming replica --------------------------------------------------------


async def _searched(url: str, count: int, prefix: str) -> None:
    """``count`` searches logged through a store that knows no replica (the primary)."""
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(database_url=url, fetchers={"sold": market.sold}) as store:
        for i in range(count):
            await store.comps.search(f"{prefix} card {i}")
        assert await store.flush()


def _replica_reads(store: ks.CompsStore) -> int:
    return sum(r["reads"] for r in store.metrics()["database"]["replicas"])


@pytest.fixture
async def pair(replicated_db: tuple[str, str], streaming_pair: Any) -> tuple[str, str, Any]:
    primary, replica = replicated_db
    await ks.migrations.upgrade_async(primary)
    await _searched(primary, 2, "old")
    streaming_pair.replica.wait_caught_up()
    return primary, replica, streaming_pair.replica


async def test_reads_go_to_the_replica_until_it_lags_too_far(pair: tuple[str, str, Any]) -> None:
    primary, replica, standby = pair
    standby.pause_replay()
    await _searched(primary, 3, "new")  # on the primary only: the replica stopped replaying
    async with ks.CompsStore(
        database_url=primary, replica_urls=[replica], max_replica_lag=30
    ) as patient:
        stats = await patient.analytics.search_stats()
        assert stats.total == 2  # the replica answered, with what it had replayed
        assert _replica_reads(patient) == 1
    async with ks.CompsStore(
        database_url=primary, replica_urls=[replica], max_replica_lag=0.3
    ) as strict:
        await asyncio.sleep(0.5)  # the paused replica is now further behind than 0.3 s
        stats = await strict.analytics.search_stats()
        assert stats.total == 5  # the primary answered
        assert _replica_reads(strict) == 0
        assert strict.metrics()["database"]["replica_skipped"] >= 1
        standby.resume_replay()
        standby.wait_caught_up()
        # Caught up: measured again, the replica answers again.
        deadline = time.monotonic() + 10
        while _replica_reads(strict) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            assert (await strict.analytics.search_stats()).total == 5
        assert _replica_reads(strict) >= 1


async def test_a_replica_miss_is_confirmed_on_the_primary_before_paying(
    pair: tuple[str, str, Any],
) -> None:
    primary, replica, standby = pair
    standby.pause_replay()
    market = FakeMarketplace(listings=4)
    async with ks.CompsStore(database_url=primary, fetchers={"sold": market.sold}) as writer:
        await writer.comps.search(QUERY)
        assert await writer.flush()
    assert market.call_count == 1
    async with ks.CompsStore(
        database_url=primary,
        replica_urls=[replica],
        max_replica_lag=60,
        fetchers={"sold": market.sold},
    ) as reader:
        result = await reader.comps.search(QUERY)  # a new process: empty hot tier
        assert result.source == "database"
        assert market.call_count == 1  # the replica did not have it; the primary did
        database = reader.metrics()["database"]
        assert database["replica_confirmed_on_primary"] == 1
        assert _replica_reads(reader) >= 1


async def test_a_stopped_replica_is_skipped_and_the_primary_answers(
    pair: tuple[str, str, Any],
) -> None:
    primary, replica, standby = pair
    async with ks.CompsStore(
        database_url=primary,
        replica_urls=[replica],
        max_replica_lag=0.2,
        breaker_failure_threshold=2,
        breaker_reset_after=0.5,
    ) as store:
        assert (await store.analytics.search_stats()).total == 2
        deadline = time.monotonic() + 10
        while _replica_reads(store) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # a loaded machine may replay past the bound at first
            assert (await store.analytics.search_stats()).total == 2
        assert _replica_reads(store) >= 1
        standby.stop()
        started = time.monotonic()
        for _ in range(6):
            await asyncio.sleep(0.06)  # past a quarter of the bound: measured again
            assert (await store.analytics.search_stats()).total == 2
            assert await store.analytics.top_searches() != []
        assert time.monotonic() - started < 10
        (state,) = store.metrics()["database"]["replicas"]
        assert state["breaker"] == "open" and state["errors"] >= 2
        standby.start()
        deadline = time.monotonic() + 10
        before = _replica_reads(store)
        while _replica_reads(store) == before and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            await store.analytics.search_stats()
        assert _replica_reads(store) > before  # back in turn once its breaker let a probe in


async def test_writes_and_accounts_stay_on_the_primary(pair: tuple[str, str, Any]) -> None:
    primary, replica, standby = pair
    standby.pause_replay()
    async with ks.CompsStore(
        database_url=primary, replica_urls=[replica], max_replica_lag=60
    ) as store:
        user = await store.accounts.create_user("a@example.com", "correct horse battery")
        saved = await store.accounts.save_search(user.id, "wemby", QUERY)
        # Read your own writes: the paused replica has neither the user nor the search.
        assert [s.id for s in await store.accounts.list_saved_searches(user.id)] == [saved.id]
        await store.comps.search(QUERY, fetcher=FakeMarketplace(listings=2).sold)
        assert await store.flush()


async def test_a_price_history_is_read_on_the_replica_as_on_the_primary(
    pair: tuple[str, str, Any],
) -> None:
    # Without replicas a history reads on the driver's pooled connection; with one, the
    # replica answers it, with the same snapshots.
    primary, replica, _standby = pair
    async with ks.CompsStore(database_url=primary) as alone:
        history = await alone.analytics.price_history("old card 0")
        trend = await alone.analytics.price_trend("old card 0")
    assert history
    async with ks.CompsStore(
        database_url=primary, replica_urls=[replica], max_replica_lag=60
    ) as store:
        got = await store.analytics.price_history("old card 0")
        assert got == history and repr(got) == repr(history)
        assert _replica_reads(store) == 1
        assert await store.analytics.price_trend("old card 0") == trend
        assert _replica_reads(store) == 2
