"""A search answered by Redis, against a bare redis-py GET and against cashews on the same Redis.

kuya-store's near-cache is off here (``near_cache_size=0``), so every hit goes to Redis.
Two shapes of workload:

* one key hit again and again (the figure the target is about). The Redis tier keeps the
  last decoded values keyed by their raw bytes, so these hits skip the pydantic decode;
* a rotation over 1,000 cards, more than that memo holds, so every hit decodes.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable

from cashews import Cache
from redis import asyncio as aioredis

import kuya_store as ks
from bench.stats import Target, line, pct, sample_interleaved
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
ROTATION = 1000
TARGET = 1.5


def _rotation(n: int) -> list[str]:
    return [f"prospect-{i}" for i in range(n)]


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    n = max(500, int(5000 * scale))
    market = FakeMarketplace(listings=50)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    print(f"\n## hot hit: search() answered by Redis ({n} hits each; a result of 50 listings)")
    raw = aioredis.Redis.from_url(redis_url)
    cashews = Cache()
    cashews.setup(redis_url)
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=redis_url,
        key_prefix=prefix,
        near_cache_size=0,
        fetchers={"sold": market.sold},
    ) as store:
        await store.comps.search(QUERY)
        key = ResultIdentity.of(ks.normalize_card(QUERY), ks.SearchType.SOLD, {}).redis_key(prefix)
        payload = await raw.get(key)
        data = json.loads(payload)
        print(f"payload: {len(payload)} bytes of JSON, {len(data['listings'])} listings")

        @cashews(ttl="30m", prefix=f"{prefix}c")
        async def cashews_listings(query: str) -> dict[str, object]:
            return data

        await cashews_listings(QUERY)

        async def bare_get() -> object:
            return json.loads(await raw.get(key))

        async def bare_get_and_build() -> object:
            return StoredResult.model_validate_json(await raw.get(key))

        async def redis_hit() -> object:
            return await store.comps.search(QUERY)

        async def cashews_hit() -> object:
            return await cashews_listings(QUERY)

        hits_before = store.metrics()["tier_hits"]["redis"]
        same = await sample_interleaved(
            {
                "bare": bare_get,
                "built": bare_get_and_build,
                "ours": redis_hit,
                "cashews": cashews_hit,
            },
            n,
        )
        assert store.metrics()["tier_hits"]["redis"] - hits_before >= n

        # Every card of the rotation in Redis, then hits cycling through all of them.
        cards = _rotation(ROTATION)
        for card in cards:
            await store.comps.search(card)
        keys = [
            ResultIdentity.of(ks.normalize_card(c), ks.SearchType.SOLD, {}).redis_key(prefix)
            for c in cards
        ]
        next_key: Callable[[], str] = itertools.cycle(keys).__next__
        next_card: Callable[[], str] = itertools.cycle(cards).__next__

        async def bare_rotating() -> object:
            return json.loads(await raw.get(next_key()))

        async def ours_rotating() -> object:
            return await store.comps.search(next_card())

        rotating = await sample_interleaved({"bare": bare_rotating, "ours": ours_rotating}, n)
        await cashews.clear()
    await cashews.close()
    await raw.aclose()

    base, built, ours, peer = same["bare"], same["built"], same["ours"], same["cashews"]
    print(line("redis-py GET + json.loads (baseline)", base))
    print(line("redis-py GET + pydantic model build", built))
    print(line("cashews @cache hit (pickle, its default)", peer))
    print(line("kuya-store search(), answered by Redis", ours))
    ratio = pct(ours, 50) / pct(base, 50)
    print(
        f"ratio (p50): search()/GET+json.loads = {ratio:.2f}x; "
        f"search()/GET+model build = {pct(ours, 50) / pct(built, 50):.2f}x; "
        f"search()/cashews = {pct(ours, 50) / pct(peer, 50):.2f}x; "
        f"cashews/GET+json.loads = {pct(peer, 50) / pct(base, 50):.2f}x"
    )
    print(f"rotation over {ROTATION} cards (a decode on every hit):")
    print(line("  redis-py GET + json.loads (baseline)", rotating["bare"]))
    print(line("  kuya-store search(), answered by Redis", rotating["ours"]))
    rotating_ratio = pct(rotating["ours"], 50) / pct(rotating["bare"], 50)
    print(f"ratio (p50): search()/GET+json.loads = {rotating_ratio:.2f}x")
    return [
        Target(
            "hot hit (Redis), p50 vs GET+json.loads",
            f"<= {TARGET}x",
            f"{ratio:.2f}x ({pct(ours, 50):.0f} vs {pct(base, 50):.0f} us)",
            ratio <= TARGET,
        )
    ]
