"""The durable write path's cost on a hot hit: group commit against a round trip per record.

Every search with Redis and a database puts its search-log row on the write journal (a
Redis Stream) before it returns. Three stores on the same PostgreSQL and Redis, sampled
in alternating rounds, the near-cache off so every hit is answered by Redis:

* ``durable_writes=False``: no journal, the floor;
* batching off: the journal with one round trip per record (``journal_batch=1``);
* group commit (the default): what is queued while a batch is in flight goes as the next.

Each at 1 caller (one search at a time) and 32 concurrent callers (bursts of 32 searches
of the same card), as p50 per search and journal round trips per search. The store reads
its own entries back as the records it holds (``journal.held``), decoding none.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import kuya_store as ks
from bench.stats import Target, pct
from kuya_store.demo import FakeMarketplace

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
BURST = 32
ROUNDS = 5
# Round trips per search at 32 concurrent callers: group commit shares them.
TARGET_SHARED = 0.25
_CONTENDERS = ("no journal", "batching off", "group commit")


def _store(name: str, pg_url: str, redis_url: str, market: FakeMarketplace) -> ks.CompsStore:
    return ks.CompsStore(
        database_url=pg_url,
        redis_url=redis_url,
        key_prefix=f"bench{uuid.uuid4().hex[:8]}",
        near_cache_size=0,  # every hit is answered by Redis, as in the hot-hit benchmark
        durable_writes=name != "no journal",
        fetchers={"sold": market.sold},
    )


def _round_trips(store: ks.CompsStore) -> int | None:
    value = store.metrics()["journal"].get("round_trips")
    return int(value) if value is not None else None


async def _timed(store: ks.CompsStore) -> float:
    started = time.perf_counter()
    await store.comps.search(QUERY)
    return (time.perf_counter() - started) * 1e6


class _Tally:
    """Per-search durations (microseconds) and the round trips they cost, for one contender."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.searches = 0
        self.round_trips: int | None = 0

    async def measure(self, store: ks.CompsStore, work: Callable[[], Awaitable[list[float]]]):
        before = _round_trips(store)
        self.durations += await work()
        after = _round_trips(store)
        self.searches = len(self.durations)
        if before is None or after is None or self.round_trips is None:
            self.round_trips = None
        else:
            self.round_trips += after - before

    def per_search(self) -> str:
        if self.round_trips is None:
            return "n/a"
        return f"{self.round_trips / max(self.searches, 1):.3f}"


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    lone = max(150, int(1500 * scale))
    bursts = max(8, int(80 * scale))
    await ks.migrations.upgrade_async(pg_url)
    market = FakeMarketplace(listings=50)
    print(
        f"\n## the write journal on a hot hit (read_through on PostgreSQL + Redis, "
        f"{lone} lone searches and {bursts} bursts of {BURST} per contender)"
    )
    stores = {name: _store(name, pg_url, redis_url, market) for name in _CONTENDERS}
    tallies: dict[str, dict[int, _Tally]] = {n: {1: _Tally(), BURST: _Tally()} for n in stores}
    try:
        for store in stores.values():
            await store.start()
            await store.comps.search(QUERY)  # the one fetch: every later search is a hot hit
            await store.flush()
        writer: Any = stores["batching off"]._writer
        writer._journal_batch = 1  # a round trip per record: the comparison, not a setting

        for store in stores.values():  # warm-up, not counted
            for _ in range(20):
                await store.comps.search(QUERY)
            await asyncio.gather(*(store.comps.search(QUERY) for _ in range(BURST)))

        for _ in range(ROUNDS):
            for name, store in stores.items():

                async def alone(store: ks.CompsStore = store) -> list[float]:
                    return [await _timed(store) for _ in range(lone // ROUNDS)]

                async def together(store: ks.CompsStore = store) -> list[float]:
                    out: list[float] = []
                    for _ in range(max(bursts // ROUNDS, 1)):
                        out += await asyncio.gather(*(_timed(store) for _ in range(BURST)))
                    return out

                await tallies[name][1].measure(store, alone)
                await tallies[name][BURST].measure(store, together)
        for store in stores.values():
            assert await store.flush(timeout=60)
        journal = stores["group commit"].metrics()["journal"]
    finally:
        for store in stores.values():
            await store.close()

    print("| callers | contender | p50 per search | p99 per search | round trips per search |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for callers in (1, BURST):
        for name in stores:
            tally = tallies[name][callers]
            print(
                f"| {callers} | {name} | {pct(tally.durations, 50) / 1000:.2f} ms "
                f"| {pct(tally.durations, 99) / 1000:.2f} ms | {tally.per_search()} |"
            )
    shared = tallies["group commit"][BURST]
    off = tallies["batching off"][BURST]
    ratio = pct(shared.durations, 50) / pct(off.durations, 50)
    print(
        f"at {BURST} callers, p50 group commit / batching off = {ratio:.2f}x; "
        f"journal fallbacks {journal['fallbacks']}, slow {journal['slow']}; "
        f"entries read back from memory {journal['held']}, decoded {journal['decoded']}"
    )
    per_search = (
        shared.round_trips / max(shared.searches, 1) if shared.round_trips is not None else None
    )
    return [
        Target(
            f"journal round trips per search, {BURST} concurrent hot hits",
            f"<= {TARGET_SHARED}",
            shared.per_search(),
            per_search is not None and per_search <= TARGET_SHARED,
        )
    ]
