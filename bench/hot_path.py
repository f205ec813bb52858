"""Hot-tier and near-cache hits against a bare redis-py GET of the same payload."""

from __future__ import annotations

import json
import uuid

from redis import asyncio as aioredis

import kuya_store as ks
from bench.stats import line, pct, sample
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult

QUERY = "2023 Topps Chrome Victor Wembanyama #1"


async def run(pg_url: str, redis_url: str, scale: float) -> None:
    n = max(200, int(5000 * scale))
    market = FakeMarketplace(listings=50)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    print(f"\n## hot path ({n} hits each; a result of 50 listings)")
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=redis_url,
        key_prefix=prefix,
        near_cache_size=0,
        fetchers={"sold": market.sold},
    ) as store:
        await store.comps.search(QUERY)
        identity = ResultIdentity.of(ks.normalize_card(QUERY), ks.SearchType.SOLD, {})
        key = identity.redis_key(prefix)
        raw = aioredis.Redis.from_url(redis_url)
        payload = await raw.get(key)
        print(f"payload: {len(payload)} bytes of JSON")

        async def bare_get() -> object:
            return json.loads(await raw.get(key))

        async def bare_get_and_build() -> object:
            return StoredResult.model_validate_json(await raw.get(key))

        async def redis_hit() -> object:
            return await store.comps.search(QUERY)

        base = await sample(bare_get, n)
        built = await sample(bare_get_and_build, n)
        ours = await sample(redis_hit, n)
        await raw.aclose()
        assert store.metrics()["tier_hits"]["redis"] >= n
    print(line("redis-py GET + json.loads (baseline)", base))
    print(line("redis-py GET + pydantic model build", built))
    print(line("kuya-store search(), answered by Redis", ours))
    print(
        f"ratio: search()/bare GET+json = {pct(ours, 50) / pct(base, 50):.2f}x (p50); "
        f"search()/GET+model build = {pct(ours, 50) / pct(built, 50):.2f}x (p50)"
    )

    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=redis_url,
        key_prefix=prefix + "n",
        fetchers={"sold": market.sold},
    ) as store:
        await store.comps.search(QUERY)

        async def near_hit() -> object:
            return await store.comps.search(QUERY)

        near = await sample(near_hit, n)
    print(line("kuya-store search(), answered by the near-cache", near))
    print(
        f"near-cache hit: p50 {pct(near, 50):.1f} us, p99 {pct(near, 99):.1f} us; "
        f"{pct(base, 50) / pct(near, 50):.1f}x faster than a bare Redis GET"
    )
