"""The hot tier on Redis Sentinel and Redis Cluster: a hot hit against a single Redis, and
how long the hot tier is gone when a master is SIGKILLed.

A Sentinel set (a master, a replica, three sentinels) and a 3-master Cluster (a replica
each) are started on loopback for the run (``tests/redis_ha.py``). Hot hits run with the
near-cache off, so each one goes to Redis, interleaved with the single Redis's. The
failover figure is from the SIGKILL until a write and a read through the hot tier both
reach Redis again, with the default ``breaker_reset_after`` (5 s) and with 1 s; it is
measured in full runs only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import kuya_store as ks
from bench.stats import Target, line, pct, sample_interleaved
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult
from kuya_store.testing.redis_ha import ClusterSet, SentinelSet
from kuya_store.tiers.redis import RedisTier

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
TARGET = 1.2


def _store(url: str, prefix: str, market: FakeMarketplace, **more: Any) -> ks.CompsStore:
    return ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=url,
        key_prefix=prefix,
        near_cache_size=0,
        fetchers={"sold": market.sold},
        **more,
    )


async def _hot_hits(urls: dict[str, str], n: int) -> dict[str, list[float]]:
    market = FakeMarketplace(listings=50)
    prefix = f"benchha{uuid.uuid4().hex[:8]}"
    async with contextlib.AsyncExitStack() as stack:
        stores = {
            name: await stack.enter_async_context(_store(url, prefix, market))
            for name, url in urls.items()
        }
        for store in stores.values():
            await store.comps.search(QUERY)

        def hit(store: ks.CompsStore) -> Any:
            return lambda: store.comps.search(QUERY, record=False)

        return await sample_interleaved({k: hit(s) for k, s in stores.items()}, n)


async def _answers(hot: RedisTier, identity: ResultIdentity) -> bool:
    """A write and a read of ``identity`` through the hot tier both reach Redis."""
    result = StoredResult(
        query="probe",
        card_identifier="probe",
        search_type=ks.SearchType.SOLD,
        params={},
        listings=[ks.Listing(item_id="1", title="probe", price=Decimal("1.00"), sold=True)],
        fetched_at=datetime.now(UTC),
    )
    await hot.set(identity, result, timedelta(minutes=1))
    read = await hot.get(identity)
    return read is not None and read.fetched_at == result.fetched_at  # this write, not an older


async def _failover(kind: str, reset_after: float) -> float:
    """Seconds from a master's SIGKILL until the hot tier writes and reads again."""
    deployment = SentinelSet() if kind == "sentinel" else ClusterSet(replicas=1)
    with deployment as servers:
        market = FakeMarketplace(listings=10)
        prefix = f"benchfo{uuid.uuid4().hex[:8]}"
        breaker = timedelta(seconds=reset_after)
        async with _store(servers.url, prefix, market, breaker_reset_after=breaker) as store:
            hot = store._hot
            assert isinstance(hot, RedisTier)
            # One card, so on a Cluster the probe asks the very node that is killed.
            probe = ResultIdentity.of("probe", ks.SearchType.SOLD, {})
            assert await _answers(hot, probe)
            if isinstance(servers, SentinelSet):
                kill = servers.kill_master
            else:
                kill = servers.master_of(probe.redis_key(prefix)).kill
            await asyncio.to_thread(kill)
            killed = time.monotonic()
            while not await _answers(hot, probe):
                if time.monotonic() - killed > 120:
                    return float("inf")
                await asyncio.sleep(0.02)
            return time.monotonic() - killed


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    n = 200 if scale < 1 else max(500, int(5000 * scale))
    print(f"\n## hot hit through Sentinel and Cluster ({n} hits each; 50 listings; no near-cache)")
    with SentinelSet() as sentinels, ClusterSet(replicas=1) as cluster:
        urls = {"single": redis_url, "sentinel": sentinels.url, "cluster": cluster.url}
        samples = await _hot_hits(urls, n)
    for name, values in samples.items():
        print(line(f"search() answered by Redis, {name}", values))
    base = pct(samples["single"], 50)
    ratios = {name: pct(values, 50) / base for name, values in samples.items()}
    print(
        f"p50 against a single Redis: Sentinel {ratios['sentinel']:.2f}x, "
        f"Cluster {ratios['cluster']:.2f}x"
    )
    targets = [
        Target(
            f"hot hit through {name}, p50",
            f"<= {TARGET}x single Redis",
            f"{ratios[name]:.2f}x ({pct(samples[name], 50):.0f} us vs {base:.0f} us)",
            ratios[name] <= TARGET,
        )
        for name in ("sentinel", "cluster")
    ]
    if scale < 1:
        print("failover times: measured in full runs only")
        return targets
    print("\n## failover: SIGKILL of a master until the hot tier answers again")
    for kind in ("sentinel", "cluster"):
        for reset_after in (5.0, 1.0):
            seconds = await _failover(kind, reset_after)
            print(f"{kind:<9} breaker_reset_after {reset_after:g} s: {seconds:.2f} s")
    return targets
