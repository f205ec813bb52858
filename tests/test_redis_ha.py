"""The hot tier on Redis Sentinel and Redis Cluster: one slot per card, and failovers survived.

Real servers on loopback (tests/redis_ha.py). The killing tests start sets of their own,
so the shared ones stay whole for the other tests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

import kuya_store as ks
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.testing.redis_ha import ClusterSet, SentinelSet
from kuya_store.testing.redis_ha import key_slot as harness_slot
from kuya_store.tiers.redis import RedisTier
from records import result_of as _result

SOLD = ks.SearchType.SOLD
_KINDS = {
    "redis": "redis_base_url",
    "sentinel": "redis_sentinel_url",
    "cluster": "redis_cluster_url",
}


def _key(query: str, prefix: str) -> str:
    return ResultIdentity.of_query(query, SOLD, {}).redis_key(prefix)


def test_a_result_its_lock_stamp_and_card_keys_share_one_slot() -> None:
    queries = ["Ohtani", "Ohtani -auto", 'Ohtani -"psa 10"', "2023 Topps Chrome Wembanyama #1"]
    for query in queries:
        for params in ({}, {"pages": 3}, {"sort_by": "date_desc", "pages": 1}):
            identity = ResultIdentity.of_query(query, SOLD, params)
            keys = [
                identity.redis_key("kuya"),
                identity.redis_lock_key("kuya"),
                identity.redis_stamp_key("kuya"),
                identity.redis_index_key("kuya"),
                identity.redis_fence_key("kuya"),
            ]
            assert len({key_slot(k.encode()) for k in keys}) == 1, keys
    # Every variant of a card (what invalidate drops in one script) shares it too.
    variants = [ResultIdentity.of_query(q, SOLD, {"pages": p}) for q in queries[:3] for p in (1, 2)]
    assert len({key_slot(v.redis_key("kuya").encode()) for v in variants}) == 1
    one = variants[0].redis_key("kuya")
    assert harness_slot(one) == key_slot(one.encode())
    # Different cards spread over the slots.
    cards = [ResultIdentity.of_query(f"card {i}", SOLD, {}) for i in range(50)]
    assert len({key_slot(c.redis_key("kuya").encode()) for c in cards}) > 40


@pytest.fixture(params=list(_KINDS))
async def redis_tier(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[RedisTier]:
    url = request.getfixturevalue(_KINDS[request.param])
    tier = RedisTier(StoreSettings(redis_url=url, key_prefix=key_prefix), Metrics())
    yield tier
    await tier.close()


async def test_every_script_runs_whole_on_each_deployment(redis_tier: RedisTier) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    fenced_at: list[tuple[str, datetime]] = []
    redis_tier.on_fenced = lambda card_key, at: fenced_at.append((card_key, at))
    variants = [ResultIdentity.of("wemby", SOLD, {"pages": p}) for p in range(1, 6)]
    for identity in variants:
        assert await redis_tier.set(identity, _result("wemby", now), timedelta(minutes=5))
    # Newest data wins, in the script that writes.
    older = _result("wemby", now - timedelta(seconds=5), "1.00")
    assert await redis_tier.set(variants[0], older, timedelta(minutes=5)) is False
    # Locks.
    state, token = await redis_tier.try_lock(variants[0], timedelta(seconds=5))
    assert state == "acquired"
    assert (await redis_tier.try_lock(variants[0], timedelta(seconds=5)))[0] == "held"
    assert await redis_tier.extend_lock(variants[0], token, timedelta(seconds=5)) is True
    await redis_tier.unlock(variants[0], token)
    assert await redis_tier.lock_state(variants[0]) == "free"
    # Invalidation drops every variant in one slot and fences older data off.
    assert await redis_tier.invalidate(variants[0], now + timedelta(seconds=1)) == 5
    assert all([await redis_tier.get(v) is None for v in variants])
    assert await redis_tier.set(variants[2], _result("wemby", now), timedelta(minutes=5)) is False
    assert fenced_at == [(variants[2].card_key, now + timedelta(seconds=1))]
    later = _result("wemby", now + timedelta(seconds=2))
    assert await redis_tier.set(variants[2], later, timedelta(minutes=5)) is True
    assert await redis_tier.get(variants[2]) == later
    assert redis_tier.breaker.state == "closed" and await redis_tier.ping()


async def _load(
    store: ks.CompsStore, queries: list[str], stop: asyncio.Event, seen: dict[str, Any]
) -> None:
    """Searches back to back until told to stop; every failure is recorded."""
    rng = random.Random()
    while not stop.is_set():
        try:
            result = await store.comps.search(rng.choice(queries), record=False)
            seen["sources"][result.source.value] += 1
        except Exception as exc:
            seen["failures"].append(repr(exc))
        await asyncio.sleep(0)


async def _hot_tier_answers(hot: RedisTier, at: datetime) -> bool:
    """A write and a read of a fresh key through the hot tier both reach Redis."""
    identity = ResultIdentity.of(f"probe-{time.monotonic_ns()}", SOLD, {})
    await hot.set(identity, _result("probe", at), timedelta(minutes=1))
    return await hot.get(identity) is not None


async def _kill_mid_load(
    store: ks.CompsStore, kill: Any, queries: list[str], recovered: Any
) -> tuple[float, dict[str, Any]]:
    """Run a load, kill a server in the middle, and time until the hot tier answers again."""
    seen: dict[str, Any] = {"sources": collections.Counter(), "failures": []}
    stop = asyncio.Event()
    workers = [asyncio.create_task(_load(store, queries, stop, seen)) for _ in range(8)]
    await asyncio.sleep(0.5)
    before = sum(seen["sources"].values())
    await asyncio.to_thread(kill)
    killed_at = time.monotonic()
    while not await recovered():
        assert time.monotonic() - killed_at < 60, "the hot tier never answered again"
        await asyncio.sleep(0.05)
    recovery = time.monotonic() - killed_at
    await asyncio.sleep(0.5)  # keep the load on a little after recovery
    stop.set()
    await asyncio.gather(*workers)
    seen["before_kill"] = before
    return recovery, seen


@contextlib.asynccontextmanager
async def _store_on(
    url: str, key_prefix: str, tmp_path: Path, **more: Any
) -> AsyncIterator[tuple[ks.CompsStore, RedisTier]]:
    """A store over ``url`` sending every search to Redis (no near-cache); its Redis tier."""
    market = FakeMarketplace(listings=10)
    async with ks.CompsStore(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'kuya.db'}",
        redis_url=url,
        key_prefix=key_prefix,
        near_cache_size=0,
        fetchers={"sold": market.sold},
        **more,
    ) as store:
        await store.create_schema()
        hot = store._hot
        assert isinstance(hot, RedisTier)
        yield store, hot


async def test_sentinel_failover_mid_load_fails_no_search(key_prefix: str, tmp_path: Path) -> None:
    with SentinelSet() as sentinels:
        async with _store_on(
            sentinels.url, key_prefix, tmp_path, breaker_reset_after=timedelta(seconds=1)
        ) as (store, hot):
            queries = [f"2023 Topps Chrome Prospect {i} #1" for i in range(30)]
            fenced = ResultIdentity.of_query(queries[0], SOLD, {})
            invalidated_at = datetime.now(UTC)
            await store.comps.invalidate(queries[0], "sold")
            old_master = sentinels.current_master()

            recovery, seen = await _kill_mid_load(
                store,
                sentinels.kill_master,
                queries,
                lambda: _hot_tier_answers(hot, datetime.now(UTC)),
            )
            print(f"\nSentinel: hot tier answered again {recovery:.2f} s after SIGKILL")
            assert seen["failures"] == []
            assert seen["before_kill"] > 0 and seen["sources"]["redis"] > 0
            assert sentinels.current_master() is not old_master
            assert recovery < 30
            # The locks follow the master; so does the fence written before the crash.
            identity = ResultIdentity.of_query(queries[1], SOLD, {"probe": 1})
            state, token = await hot.try_lock(identity, timedelta(seconds=5))
            assert state == "acquired"
            await hot.unlock(identity, token)
            old = _result(fenced.card_identifier, invalidated_at - timedelta(seconds=1))
            assert await hot.set(fenced, old, timedelta(minutes=5)) is False
            assert (await store.comps.search(queries[2])).source in ("redis", "database", "api")


async def test_cluster_master_killed_with_a_replica_fails_over(
    key_prefix: str, tmp_path: Path
) -> None:
    with ClusterSet(replicas=1) as cluster:
        async with _store_on(
            cluster.url, key_prefix, tmp_path, breaker_reset_after=timedelta(seconds=1)
        ) as (store, hot):
            queries = [f"2023 Topps Chrome Prospect {i} #1" for i in range(30)]
            watched = ResultIdentity.of_query(queries[0], SOLD, {})
            key = watched.redis_key(key_prefix)
            victim = cluster.master_of(key)

            async def watched_card_served() -> bool:
                await store.comps.search(queries[0], record=False)  # fills Redis if it can
                return await hot.get(watched) is not None

            recovery, seen = await _kill_mid_load(store, victim.kill, queries, watched_card_served)
            print(f"\nCluster: the killed master's slots answered again {recovery:.2f} s later")
            assert seen["failures"] == []
            assert cluster.wait_until_serving(key) is not victim
            assert recovery < 30


async def test_cluster_master_killed_without_replica_skips_only_its_cards(
    key_prefix: str, tmp_path: Path
) -> None:
    with ClusterSet(replicas=0) as cluster:
        async with _store_on(cluster.url, key_prefix, tmp_path) as (store, hot):
            queries = [f"2023 Topps Chrome Prospect {i} #1" for i in range(30)]
            for query in queries:
                await store.comps.search(query, record=False)
            owner = {
                q: cluster.master_of(ResultIdentity.of_query(q, SOLD, {}).redis_key(key_prefix))
                for q in queries
            }
            victim = owner[queries[0]]
            lost = [q for q in queries if owner[q] is victim]
            kept = [q for q in queries if owner[q] is not victim]
            assert lost and kept
            victim.kill()
            for _ in range(3):
                for query in queries:
                    result = await store.comps.search(query, record=False)  # never fails
                    if query in kept:
                        assert result.source == "redis"
                    else:
                        assert result.source in ("database", "api")
            metrics = store.metrics()
            # One node's breaker opened; the others kept serving their cards.
            assert metrics["redis"]["breaker_opens"] == 1
            assert metrics["redis"]["skipped"] > 0
            assert hot.breaker.state == "closed"
