"""A search answered by the in-process near-cache in front of Redis."""

from __future__ import annotations

import json
import uuid

from redis import asyncio as aioredis

import kuya_store as ks
from bench.stats import Target, line, pct, sample_interleaved
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
TARGET = 0.05
"""A near hit at p50 costs at most this share of a bare Redis GET + json.loads (20x faster)."""


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    n = max(1000, int(20000 * scale))
    market = FakeMarketplace(listings=50)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    print(f"\n## near-cache hit ({n} hits; a result of 50 listings)")
    raw = aioredis.Redis.from_url(redis_url)
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=redis_url,
        key_prefix=prefix,
        fetchers={"sold": market.sold},
    ) as store:
        await store.comps.search(QUERY)
        key = ResultIdentity.of(ks.normalize_card(QUERY), ks.SearchType.SOLD, {}).redis_key(prefix)

        async def bare_get() -> object:
            return json.loads(await raw.get(key))

        async def near_hit() -> object:
            return await store.comps.search(QUERY)

        hits_before = store.metrics()["tier_hits"]["memory"]
        samples = await sample_interleaved({"bare": bare_get, "near": near_hit}, n)
        # The near-cache keeps an entry 5 s, so now and then a hit refills it from Redis.
        assert store.metrics()["tier_hits"]["memory"] - hits_before >= 0.99 * n
    await raw.aclose()
    base, near = samples["bare"], samples["near"]
    print(line("redis-py GET + json.loads (baseline)", base))
    print(line("kuya-store search(), answered by the near-cache", near))
    print(
        f"near-cache hit: p50 {pct(near, 50):.1f} us, p99 {pct(near, 99):.1f} us; "
        f"{pct(base, 50) / pct(near, 50):.1f}x faster than a bare Redis GET + json.loads (p50)"
    )
    ratio = pct(near, 50) / pct(base, 50)
    return [
        Target(
            "near-cache hit, p50 vs GET+json.loads",
            f"<= {TARGET}x",
            f"{ratio:.3f}x ({pct(near, 50):.1f} vs {pct(base, 50):.1f} us; "
            f"p99 {pct(near, 99):.1f} us)",
            ratio <= TARGET,
        )
    ]
