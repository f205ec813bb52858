"""A search answered by Redis, against a bare redis-py GET and against cashews on the same Redis.

kuya-store's near-cache is off here (``near_cache_size=0``), so every hit goes to Redis.
Two shapes of workload:

* one key hit again and again. The Redis tier keeps the last decoded values keyed by
  their raw bytes, so these hits skip the decode;
* a cold hit: a rotation over 1,000 cards written by another store, more than that memo
  holds, so every hit decodes a value this process has not seen. Read by a store holding
  the writer's ``hot_tier_secret`` (sealed values: no validation) and by one holding
  another secret (full validation, what every cold hit cost before the seal); then where
  the time of a trusted cold hit goes, step by step.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import orjson
from cashews import Cache
from redis import asyncio as aioredis

import kuya_store as ks
from bench.stats import Target, line, pct, sample_interleaved
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult, ValueSeal, decode, unseal

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
ROTATION = 1000
# A smoke run's rotation: still more cards than the tier's memo of decoded values (512)
# holds, so hits cycling over them keep missing it, as over ROTATION.
QUICK_ROTATION = 600
TARGET = 1.5
COLD_TARGET = 1.3
SECRET = "bench-hot-tier-secret-4b1f0c9e27d5a8"
OTHER_SECRET = "bench-another-secret-d03a6e51c9f7b2"


def _rotation(n: int) -> list[str]:
    return [f"prospect-{i}" for i in range(n)]


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    n = max(500, int(5000 * scale))
    rotation = QUICK_ROTATION if scale < 1 else ROTATION
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
        hot_tier_secret=SECRET,
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

        # Every card of the rotation in Redis, written by this store; read by two others.
        cards = _rotation(rotation)
        for card in cards:
            await store.comps.search(card)
        keys = [
            ResultIdentity.of(ks.normalize_card(c), ks.SearchType.SOLD, {}).redis_key(prefix)
            for c in cards
        ]
        async with (
            _reader(redis_url, prefix, SECRET) as trusting,
            _reader(redis_url, prefix, OTHER_SECRET) as validating,
        ):
            rotating = await sample_interleaved(
                {
                    "bare": _cycling_get_and_parse(raw, keys),
                    "validated": _cycling_search(validating, cards),
                    "trusted": _cycling_search(trusting, cards),
                },
                n,
            )
            counted = trusting.metrics()["redis"], validating.metrics()["redis"]
            assert counted[0]["trusted_decodes"] >= n, counted
            assert counted[0]["validated_decodes"] == 0, counted
            assert counted[1]["validated_decodes"] >= n, counted
            assert counted[1]["trusted_decodes"] == 0, counted
            steps = await _steps(raw, keys, n)
            cpu = await _cpu_per_hit(
                {
                    "GET": _cycling(raw.get, keys),
                    "GET + json.loads": _cycling_get_and_parse(raw, keys),
                    "search(), memo hit": lambda: store.comps.search(QUERY),
                    "search(), trusted": _cycling_search(trusting, cards),
                    "search(), validated": _cycling_search(validating, cards),
                },
                n,
            )
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
    print(f"cold hit: rotation over {rotation} cards another store wrote (a decode on every hit):")
    print(line("  redis-py GET + json.loads (baseline)", rotating["bare"]))
    print(line("  search(), full validation (another secret)", rotating["validated"]))
    print(line("  search(), sealed: trusted fast path", rotating["trusted"]))
    cold = pct(rotating["trusted"], 50) / pct(rotating["bare"], 50)
    before = pct(rotating["validated"], 50) / pct(rotating["bare"], 50)
    print(f"ratio (p50): search()/GET+json.loads = {cold:.2f}x trusted, {before:.2f}x validated")
    # Where the time of a trusted cold hit goes. Each step alone (wall p50, same payloads),
    # then this process's CPU per hit in place, which a loaded machine's waits do not swell.
    step = {name: pct(values, 50) for name, values in steps.items()}
    print("a cold hit's steps, each timed alone (p50, the rotation's payloads):")
    for name, value in (
        ("GET round trip (redis-py, rotating keys)", step["GET"]),
        ("json.loads (what the baseline adds to its GET)", step["json.loads"]),
        ("seal check: HMAC-SHA256 over key + payload", step["seal check"]),
        ("orjson.loads", step["orjson.loads"]),
        (
            "building the models (unseal - check - orjson)",
            step["unseal"] - step["seal check"] - step["orjson.loads"],
        ),
        ("unseal: all of the above but the GET", step["unseal"]),
        ("full validation (decode)", step["decode"]),
    ):
        print(f"  {name:<50} {value:9.1f} us")
    print("CPU time of this process per hit (median of batches, in place):")
    for name, value in cpu.items():
        print(f"  {name:<50} {value:9.1f} us")
    print(
        f"  so: json.loads {cpu['GET + json.loads'] - cpu['GET']:.1f} us; search() around the "
        f"tier {cpu['search(), memo hit'] - cpu['GET']:.1f} us; unseal in place "
        f"{cpu['search(), trusted'] - cpu['search(), memo hit']:.1f} us; validation in place "
        f"{cpu['search(), validated'] - cpu['search(), memo hit']:.1f} us; CPU ratio trusted/"
        f"GET+json.loads {cpu['search(), trusted'] / cpu['GET + json.loads']:.2f}x"
    )
    return [
        Target(
            "hot hit (Redis), p50 vs GET+json.loads",
            f"<= {TARGET}x",
            f"{ratio:.2f}x ({pct(ours, 50):.0f} vs {pct(base, 50):.0f} us)",
            ratio <= TARGET,
        ),
        Target(
            "cold hit (Redis, sealed), p50 vs GET+json.loads",
            f"<= {COLD_TARGET}x",
            f"{cold:.2f}x ({pct(rotating['trusted'], 50):.0f} vs "
            f"{pct(rotating['bare'], 50):.0f} us; {before:.2f}x validated)",
            cold <= COLD_TARGET,
        ),
    ]


def _reader(redis_url: str, prefix: str, secret: str) -> ks.CompsStore:
    return ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=redis_url,
        key_prefix=prefix,
        near_cache_size=0,
        fetchers={"sold": FakeMarketplace(listings=50).sold},
        hot_tier_secret=secret,
    )


def _cycling(
    call: Callable[[str], Awaitable[object]], keys: list[str]
) -> Callable[[], Awaitable[object]]:
    next_key: Callable[[], str] = itertools.cycle(keys).__next__
    return lambda: call(next_key())


async def _cpu_per_hit(
    works: dict[str, Callable[[], Awaitable[object]]], n: int, rounds: int = 5
) -> dict[str, float]:
    """This process's CPU time per call (us), median of alternating batches."""
    batches: dict[str, list[float]] = {name: [] for name in works}
    per_batch = max(1, n // rounds)
    for _ in range(rounds):
        for name, work in works.items():
            started = time.process_time()
            for _ in range(per_batch):
                await work()
            batches[name].append((time.process_time() - started) * 1e6 / per_batch)
    return {name: pct(values, 50) for name, values in batches.items()}


def _cycling_get_and_parse(raw: aioredis.Redis, keys: list[str]) -> Callable[[], Awaitable[object]]:
    next_key: Callable[[], str] = itertools.cycle(keys).__next__

    async def get() -> object:
        return json.loads(await raw.get(next_key()))

    return get


def _cycling_search(store: ks.CompsStore, cards: list[str]) -> Callable[[], Awaitable[object]]:
    next_card: Callable[[], str] = itertools.cycle(cards).__next__

    async def search() -> object:
        result = await store.comps.search(next_card())
        assert result.source == "redis"
        return result

    return search


async def _steps(raw: aioredis.Redis, keys: list[str], n: int) -> dict[str, list[float]]:
    """Each step of a trusted cold hit timed alone, over the rotation's own payloads (us)."""
    next_key: Callable[[], str] = itertools.cycle(keys).__next__

    async def get() -> object:
        return await raw.get(next_key())

    steps = {"GET": (await sample_interleaved({"get": get}, n))["get"]}
    payloads = [await raw.get(key) for key in keys]
    seal = ValueSeal(SECRET.encode())
    work: dict[str, Callable[[bytes, str], object]] = {
        "json.loads": lambda b, k: json.loads(b),
        "seal check": lambda b, k: seal.sealed(k, b),
        "orjson.loads": lambda b, k: orjson.loads(b),
        "unseal": lambda b, k: unseal(b, k, seal),
        "decode": lambda b, k: decode(b),
    }
    for name, step in work.items():
        out = []
        for index in range(n):
            payload, key = payloads[index % len(keys)], keys[index % len(keys)]
            started = time.perf_counter()
            step(payload, key)
            out.append((time.perf_counter() - started) * 1e6)
        steps[name] = out
    return steps
