"""API-cost replay: how many paid upstream calls a realistic workload makes.

A deterministic workload (seeded): Zipf-distributed searches over a few thousand cards,
mostly sold and some active, with a skewed mix of the 8 filter combinations, spread over
simulated days by an injected clock, with two process restarts. Counted:

(a) no cache: one call per request;
(b) the Redis-only cache of the migration plan's current state, simulated in pure Python
    on the same clock: key = search type + query + filters + pages, TTL 30 min (sold) and
    5 min (active), everything lost at each restart;
(c) kuya-store ``read_through``: a real ``CompsStore`` on a SQLite file with the in-process
    hot tier, the same clock, and a fetcher that counts its calls. A restart closes the
    store (after a flush) and opens a new one on the same database file.

Requests run one after another, each at its own moment, so no call is saved by two
requests sharing a clock tick.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import kuya_store as ks
from bench.stats import Target
from kuya_store.demo import FakeMarketplace

SEED = 20260101
CARDS = 3000
ZIPF_S = 1.1
SOLD_SHARE = 0.7
DAYS = 5
TARGET = 1 / 5
# (raw_only, base_only, exclude_auto) -> weight: most searches use no filter at all.
FILTER_WEIGHTS = {
    (False, False, False): 50,
    (True, False, False): 20,
    (False, False, True): 10,
    (False, True, False): 8,
    (True, False, True): 5,
    (True, True, False): 3,
    (False, True, True): 2,
    (True, True, True): 2,
}
COMBOS = list(FILTER_WEIGHTS)
BACKLOG = 1000  # buffered writes at which the replay lets the writer catch up
TTL = {ks.SearchType.SOLD: 1800.0, ks.SearchType.ACTIVE: 300.0}


@dataclass(frozen=True, slots=True)
class Request:
    at: float  # seconds since the replay began
    card: int
    kind: ks.SearchType
    combo: int  # index into COMBOS


def query(card: int) -> str:
    """How users type card ``card``: one spelling per card (the baseline's best case)."""
    return f"{2015 + card % 10} Topps Chrome Prospect {card} #{1 + card % 300}"


def workload(n: int, seed: int = SEED) -> list[Request]:
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1 / k**ZIPF_S for k in range(1, CARDS + 1)))
    combo_cum = list(itertools.accumulate(FILTER_WEIGHTS.values()))
    rate = n / (DAYS * 86400)  # Poisson arrivals over the simulated days
    at, out = 0.0, []
    for _ in range(n):
        at += rng.expovariate(rate)
        card = rng.choices(range(CARDS), cum_weights=cum)[0]
        kind = ks.SearchType.SOLD if rng.random() < SOLD_SHARE else ks.SearchType.ACTIVE
        combo = rng.choices(range(len(COMBOS)), cum_weights=combo_cum)[0]
        out.append(Request(at, card, kind, combo))
    return out


def restarts(n: int) -> set[int]:
    """Two restarts, before the request at one third and at two thirds of the replay."""
    return {n // 3, 2 * n // 3}


def simulate(
    requests: list[Request],
    *,
    filters_in_key: bool,
    lost_on_restart: bool,
    sold_fresh: float = TTL[ks.SearchType.SOLD],
    active_fresh: float = TTL[ks.SearchType.ACTIVE],
) -> int:
    """Upstream calls of a cache with these rules, in pure Python on the replay's clock."""
    fresh = {ks.SearchType.SOLD: sold_fresh, ks.SearchType.ACTIVE: active_fresh}
    stops = restarts(len(requests)) if lost_on_restart else set()
    expires: dict[tuple[object, ...], float] = {}
    calls = 0
    for i, r in enumerate(requests):
        if i in stops:
            expires.clear()
        # The plan's key: search type + every query parameter (the query, 3 filters, pages).
        key = (r.kind.value, query(r.card), COMBOS[r.combo] if filters_in_key else None, 3)
        if expires.get(key, -1.0) <= r.at:
            calls += 1
            expires[key] = r.at + fresh[r.kind]
    return calls


def redis_only(requests: list[Request]) -> int:
    """The plan's Redis-only cache: filters in the key, 30/5 min TTLs, lost on restart."""
    return simulate(requests, filters_in_key=True, lost_on_restart=True)


async def through_store(requests: list[Request], database_url: str) -> tuple[int, dict[str, int]]:
    """Replay through real stores (one per process lifetime); the fetcher calls and tier hits."""
    await ks.migrations.upgrade_async(database_url)
    clock = ks.ManualClock()
    start = clock.now
    market = FakeMarketplace(listings=10, clock=clock)
    stops = sorted(restarts(len(requests)))
    bounds = [0, *stops, len(requests)]
    hits: dict[str, int] = {}
    lost = {"dropped": 0, "rejected": 0}
    for lo, hi in itertools.pairwise(bounds):
        async with ks.CompsStore(
            database_url=database_url,
            mode="read_through",
            clock=clock,
            fetchers={"sold": market.sold, "active": market.active},
            write_flush_interval=0.01,
        ) as store:
            for i, r in enumerate(requests[lo:hi]):
                clock.now = start + timedelta(seconds=r.at)
                raw_only, base_only, exclude_auto = COMBOS[r.combo]
                await store.comps.search(
                    query(r.card),
                    r.kind,
                    filters=ks.SearchFilters(
                        raw_only=raw_only, base_only=base_only, exclude_auto=exclude_auto
                    ),
                )
                # Simulated seconds pass between requests, in which the write-behind task
                # drains its buffer; replayed back to back, it is given that time here.
                await asyncio.sleep(0)
                if i % 100 == 99 and store.metrics()["writes"]["pending"] >= BACKLOG:
                    assert await store.flush(timeout=120)
            assert await store.flush(timeout=120)
            metrics = store.metrics()
        for tier, count in metrics["tier_hits"].items():
            hits[tier] = hits.get(tier, 0) + count
        lost["dropped"] += metrics["writes"]["dropped"]
        lost["rejected"] += metrics["writes"]["rejected"]
    assert not any(lost.values()), f"writes lost: {lost}"
    return market.call_count, hits


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    n = max(10_000, int(100_000 * scale))
    requests = workload(n)
    print(
        f"\n## API-cost replay: {n:,} searches over {DAYS} days, {CARDS:,} cards (Zipf "
        f"s={ZIPF_S}), {SOLD_SHARE:.0%} sold, 8 filter combinations, 2 restarts (seed {SEED})"
    )
    distinct = len({r.card for r in requests})
    print(f"cards searched at least once: {distinct:,}")
    baseline = redis_only(requests)
    with tempfile.TemporaryDirectory(prefix="kuya-replay-") as scratch:
        url = f"sqlite+aiosqlite:///{Path(scratch) / 'replay.db'}"
        started = time.perf_counter()
        ours, hits = await through_store(requests, url)
        elapsed = time.perf_counter() - started
    print(f"{'(a) no cache: one call per request':<52} {n:9,} calls")
    print(f"{'(b) Redis-only (filters in key, lost on restart)':<52} {baseline:9,} calls")
    print(f"{'(c) kuya-store read_through (SQLite + memory tier)':<52} {ours:9,} calls")
    print(f"    answered by tier: {hits}; replay took {elapsed:.0f} s ({n / elapsed:,.0f}/s)")
    ratio = ours / baseline
    print(
        f"ratio: kuya-store/Redis-only = {ratio:.3f} (1/{baseline / ours:.2f}); "
        f"kuya-store/no cache = {ours / n:.3f}; Redis-only/no cache = {baseline / n:.3f}"
    )
    print("where the difference comes from (models of the rules on the same workload):")
    models = {
        "store rules (filters folded, kept across restarts)": simulate(
            requests, filters_in_key=False, lost_on_restart=False
        ),
        "Redis-only with filters folded (lost on restart)": simulate(
            requests, filters_in_key=False, lost_on_restart=True
        ),
        "Redis-only kept across restarts (filters in key)": simulate(
            requests, filters_in_key=True, lost_on_restart=False
        ),
    }
    for sold_h, active_m in ((2, 15), (6, 30), (24, 60)):
        label = f"store rules, sold fresh {sold_h} h, active {active_m} min"
        models[label] = simulate(
            requests,
            filters_in_key=False,
            lost_on_restart=False,
            sold_fresh=sold_h * 3600,
            active_fresh=active_m * 60,
        )
    for label, calls in models.items():
        print(f"    {label:<56} {calls:7,} calls = {calls / baseline:.3f} of Redis-only")
    return [
        Target(
            "replay: upstream calls vs Redis-only",
            f"<= {TARGET:.2f}x",
            f"{ratio:.3f}x ({ours:,} vs {baseline:,})",
            ratio <= TARGET,
        )
    ]
