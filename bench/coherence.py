"""Coherent near-caches across 4 worker processes: hit rate under a Zipf load, and how fast
an invalidation reaches every worker.

* Hit rate: 4 processes (a gunicorn host's usual 4 workers) each search at a steady rate,
  cards drawn from a Zipf law, with an occasional ``refresh=True`` (a change every worker
  must hear of). The same requests (same seeds) run three times: near-cache coherent
  through Redis ``CLIENT TRACKING``; the old rule, entries kept ``near_cache_ttl`` = 5 s;
  and no near-cache at all. Each run warms up for as long as it is then measured (the
  steady state of a long-running service; the cold first fetches are not counted). A
  quick run shortens the run (1 s) and the TTL alike (0.5 s), over 2 processes.
* Propagation: 4 listening processes hold a copy of each card; the benchmark process
  invalidates the cards one after another and each worker notes when it dropped its copy
  (``CLOCK_MONOTONIC`` is one clock for every process on a host).

Run as ``python -m bench.coherence`` this module is one worker process, fed phases on stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kuya_store as ks
from bench.stats import Target, ms_line, pct
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity

PROCESSES = 4
CARDS = 2000
ZIPF = 1.0
RATE = 50.0  # searches per second per worker
QUIET_RATE = 10.0  # a quieter app, in the simulated long window
REFRESH_SHARE = 0.002
TIMEOUT = 300.0
ROOT = Path(__file__).resolve().parent.parent
HIT_RATE_TARGET = 2.0
PROPAGATION_TARGET_MS = 10.0


def _card(i: int) -> str:
    return f"2023 Topps Chrome Prospect {i} #1"


async def _ready(store: ks.CompsStore, coherent: bool) -> None:
    for _ in range(400):
        near = store._near
        if not coherent or (near is not None and near.coherent):
            return
        await asyncio.sleep(0.025)
    raise RuntimeError("the invalidation listener never connected")


async def _load(args: dict[str, Any]) -> dict[str, Any]:
    variant = args["variant"]
    market = FakeMarketplace(listings=20)
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=args["redis_url"],
        key_prefix=args["key_prefix"],
        near_cache_size=0 if variant == "none" else 10_000,
        near_cache_ttl=args["near_cache_ttl"],
        near_cache_coherence=variant == "coherent",
        fetchers={"sold": market.sold},
    ) as store:
        await _ready(store, variant == "coherent")
        rng = random.Random(args["seed"])
        weights = list(itertools.accumulate(1 / (k + 1) ** ZIPF for k in range(CARDS)))
        print("ready", flush=True)
        start_at = float(await asyncio.to_thread(sys.stdin.readline))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        n = int(RATE * args["duration"])
        # The first half warms every tier up; only the second half is counted.
        picks = rng.choices(range(CARDS), cum_weights=weights, k=2 * n)
        refreshes = [rng.random() < REFRESH_SHARE for _ in range(2 * n)]
        began = time.monotonic()
        warm: dict[str, Any] = {}
        for i, (card, refresh) in enumerate(zip(picks, refreshes, strict=True)):
            if i == n:
                warm = store.metrics()
            await store.comps.search(_card(card), refresh=refresh, record=False)
            delay = began + (i + 1) / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        metrics = store.metrics()
    hits = {k: v - warm["tier_hits"][k] for k, v in metrics["tier_hits"].items()}
    return {"searches": metrics["searches"] - warm["searches"], "hits": hits}


async def _listen(args: dict[str, Any]) -> dict[str, Any]:
    heard: dict[str, int] = {}
    market = FakeMarketplace(listings=5)
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=args["redis_url"],
        key_prefix=args["key_prefix"],
        fetchers={"sold": market.sold},
    ) as store:
        await _ready(store, True)
        near = store._near
        assert near is not None
        original = near.changed

        def changed(card_key: str, result_key: str | None = None) -> None:
            if result_key is None:  # a fence: an invalidation
                heard.setdefault(card_key, time.monotonic_ns())
            original(card_key, result_key)

        near.changed = changed  # type: ignore[method-assign]
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # until the invalidations are over
    return {"heard": heard}


class _Workers:
    """Worker processes started once and handed one phase after another (imports are slow)."""

    def __init__(self, count: int) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.coherence"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for _ in range(count)
        ]
        self._watchdog = threading.Timer(TIMEOUT * 4, self.stop)
        self._watchdog.start()
        self._expect("up")

    def _expect(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != word:
                self.stop()
                raise RuntimeError(f"coherence worker failed:\n{proc.communicate()[1][-2000:]}")

    def _say(self, lines: list[str]) -> None:
        for proc, line in zip(self.procs, lines, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()

    def _reports(self) -> list[dict[str, Any]]:
        reports = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                self.stop()
                raise RuntimeError(f"coherence worker failed:\n{proc.communicate()[1][-2000:]}")
            reports.append(json.loads(line))
        return reports

    def phase(
        self, payloads: list[dict[str, Any]], then: str | None = None
    ) -> list[dict[str, Any]]:
        """Start a phase everywhere, release it (``then``) once all are ready, collect."""
        self._say([json.dumps(p) for p in payloads])
        self._expect("ready")
        self._say([then if then is not None else str(time.time() + 0.5)] * len(self.procs))
        return self._reports()

    def stop(self) -> None:
        self._watchdog.cancel()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _hit_rates(workers: _Workers, redis_url: str, duration: float, ttl: float) -> dict[str, float]:
    rates = {}
    for variant in ("coherent", "ttl", "none"):
        prefix = f"coh{uuid.uuid4().hex[:8]}"
        payloads = [
            {
                "role": "load",
                "variant": variant,
                "redis_url": redis_url,
                "key_prefix": prefix,
                "seed": k,
                "duration": duration,
                "near_cache_ttl": ttl,
            }
            for k in range(len(workers.procs))
        ]
        reports = workers.phase(payloads)
        searches = sum(r["searches"] for r in reports)
        near = sum(r["hits"]["memory"] for r in reports)
        redis = sum(r["hits"]["redis"] for r in reports)
        rates[variant] = near / searches
        print(
            f"{variant:<9} {searches:>6} searches: near-cache hits {near / searches:6.1%}, "
            f"Redis hits {redis / searches:6.1%}, misses {1 - (near + redis) / searches:6.1%}"
        )
    return rates


async def _long_window(redis_url: str, minutes: float, rate: float) -> dict[str, float]:
    """The same load over a long window, on a simulated clock: 4 stores in this process.

    The near-cache's expiry and the results' freshness follow the store's clock, so a
    ``ks.ManualClock`` advanced by each request's share of the rate plays ``minutes`` of
    traffic in seconds; changes still travel through Redis. Hit rates only (timing here
    is not the workers' own).
    """
    rates = {}
    n = int(rate * minutes * 60)
    for variant in ("coherent", "ttl"):
        clock = ks.ManualClock(datetime.now(UTC))
        market = FakeMarketplace(listings=5, clock=clock)  # hit rates do not depend on size
        prefix = f"cohl{uuid.uuid4().hex[:8]}"
        async with contextlib.AsyncExitStack() as stack:
            stores = [
                await stack.enter_async_context(
                    ks.CompsStore(
                        database_url="sqlite+aiosqlite://",
                        mode="cache_only",
                        redis_url=redis_url,
                        key_prefix=prefix,
                        near_cache_coherence=variant == "coherent",
                        clock=clock,
                        fetchers={"sold": market.sold},
                    )
                )
                for _ in range(PROCESSES)
            ]
            for store in stores:
                await _ready(store, variant == "coherent")
            weights = list(itertools.accumulate(1 / (k + 1) ** ZIPF for k in range(CARDS)))
            loads = []
            for k in range(PROCESSES):
                rng = random.Random(k)
                picks = rng.choices(range(CARDS), cum_weights=weights, k=2 * n)
                loads.append([(c, rng.random() < REFRESH_SHARE) for c in picks])
            counted = {"searches": 0, "near": 0}
            for i in range(2 * n):
                for store, load in zip(stores, loads, strict=True):
                    clock.advance(1 / (rate * PROCESSES))
                    card, refresh = load[i]
                    result = await store.comps.search(_card(card), refresh=refresh, record=False)
                    if i >= n:  # the first half warms up
                        counted["searches"] += 1
                        counted["near"] += result.source == "memory"
        rates[variant] = counted["near"] / counted["searches"]
        print(
            f"{variant:<9} {counted['searches']:>6} searches: near-cache hits {rates[variant]:6.1%}"
        )
    return rates


def _propagation(workers: _Workers, redis_url: str, count: int) -> list[float]:
    prefix = f"cohp{uuid.uuid4().hex[:8]}"
    sent: dict[str, int] = {}

    async def invalidate_all() -> None:
        market = FakeMarketplace(listings=5)
        async with ks.CompsStore(
            database_url="sqlite+aiosqlite://",
            mode="cache_only",
            redis_url=redis_url,
            key_prefix=prefix,
            near_cache_size=0,
            fetchers={"sold": market.sold},
        ) as store:
            for i in range(count):
                card = ResultIdentity.of_query(_card(i), ks.SearchType.SOLD, {}).card_key
                sent[card] = time.monotonic_ns()
                await store.comps.invalidate(_card(i), "sold")
                await asyncio.sleep(0.01)

    payload = {"role": "listen", "redis_url": redis_url, "key_prefix": prefix}
    workers._say([json.dumps(payload)] * len(workers.procs))
    workers._expect("ready")
    asyncio.run(invalidate_all())
    workers._say(["stop"] * len(workers.procs))
    reports = workers._reports()
    delays = [
        (report["heard"][card] - at) / 1e6
        for report in reports
        for card, at in sent.items()
        if card in report["heard"]
    ]
    missing = len(workers.procs) * count - len(delays)
    if missing:
        print(f"  {missing} invalidations were not heard by a listener")
    return delays


def _measure(
    redis_url: str, processes: int, duration: float, ttl: float, count: int
) -> tuple[Any, Any]:
    workers = _Workers(processes)
    try:
        rates = _hit_rates(workers, redis_url, duration, ttl)
        ratio = rates["coherent"] / rates["ttl"] if rates["ttl"] else float("inf")
        print(f"near-cache hit rate, coherent / {ttl:g} s TTL: {ratio:.2f}x")
        print(
            f"\n## invalidation propagation: {count} invalidations, heard by {processes} processes"
        )
        delays = _propagation(workers, redis_url, count)
        print(ms_line("invalidate() called -> the copy dropped in a worker", delays or [0.0]))
        return rates, delays
    finally:
        workers.stop()


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    quick = scale < 1
    # A smoke run starts half the processes: each one's imports cost seconds of CPU.
    processes = 2 if quick else PROCESSES
    duration, ttl = (1.0, 0.5) if quick else (30.0, 5.0)
    print(
        f"\n## coherent near-caches: {processes} processes x {RATE:.0f} searches/s for "
        f"{duration:.0f} s after as long a warm-up, Zipf s={ZIPF} over {CARDS:,} cards, "
        f"{REFRESH_SHARE:.1%} refreshes; the TTL rule keeps entries {ttl:g} s"
    )
    count = 10 if quick else 500
    rates, delays = await asyncio.to_thread(_measure, redis_url, processes, duration, ttl, count)
    ratio = rates["coherent"] / rates["ttl"] if rates["ttl"] else float("inf")
    minutes = 0.02 if quick else 5.0
    print(
        f"\n## the same load over {minutes:g} minutes after as long a warm-up, on a simulated "
        f"clock ({PROCESSES} stores in one process; the TTL rule keeps entries 5 s)"
    )
    steady: dict[float, float] = {}
    for rate in (RATE, QUIET_RATE):
        rates_at = await _long_window(redis_url, minutes, rate)
        steady[rate] = rates_at["coherent"] / rates_at["ttl"] if rates_at["ttl"] else float("inf")
        print(
            f"near-cache hit rate at {rate:g}/s per worker, coherent / 5 s TTL: {steady[rate]:.2f}x"
        )
    p99 = pct(delays, 99) if delays else float("inf")
    return [
        Target(
            f"near-cache hit rate, {processes} workers, coherent vs {ttl:g} s TTL",
            f">= {HIT_RATE_TARGET:.0f}x",
            f"{ratio:.2f}x ({rates['coherent']:.1%} vs {rates['ttl']:.1%}, "
            f"none {rates['none']:.1%})",
            ratio >= HIT_RATE_TARGET,
        ),
        *(
            Target(
                f"the same over {minutes:g} simulated minutes, {rate:g}/s per worker",
                f">= {HIT_RATE_TARGET:.0f}x",
                f"{ratio_at:.2f}x",
                ratio_at >= HIT_RATE_TARGET,
            )
            for rate, ratio_at in steady.items()
        ),
        Target(
            "invalidation reaches every worker, p99",
            f"<= {PROPAGATION_TARGET_MS:.0f} ms",
            f"{p99:.2f} ms (p50 {pct(delays, 50) if delays else 0:.2f} ms)",
            p99 <= PROPAGATION_TARGET_MS and len(delays) == processes * count,
        ),
    ]


async def _serve() -> None:
    """One worker process: runs each phase it is sent (a JSON line), reports each."""
    print("up", flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        payload = json.loads(line)
        role = _load if payload["role"] == "load" else _listen
        print(json.dumps(await role(payload)), flush=True)


if __name__ == "__main__":
    asyncio.run(_serve())
