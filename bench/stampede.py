"""A stampede: 500 concurrent identical misses over 4 processes sharing Redis and PostgreSQL.

Each process (a separate app instance) opens its own store and says it is ready; then
all of them get one shared wall-clock moment and fire their share of the searches at
once. This is repeated for several rounds, a new card each round, because a race shows
up in some rounds and not in others. The fetcher appends a line to a shared file per
real call and takes 0.3 s, like a paid API. The baseline, an app with no store, calls the
fetcher once per miss: 500 calls a round. It is computed, not run. A smoke run
(``--quick``) uses 2 processes and 2 rounds.

Run as ``python -m bench.stampede JSON`` this module is one worker process.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import kuya_store as ks
from bench.processes import run_together
from bench.stats import Target

PROCESSES = 4
SEARCHES = 500
LATENCY = 0.3
GAP = 3.0  # seconds between the rounds' start moments
TIMEOUT = 180.0


def query(round_: int) -> str:
    return f"2023 Topps Chrome Prospect {round_} #1"


def _append(path: str, line: str) -> None:
    with open(path, "a") as out:
        out.write(line)


async def worker(args: dict[str, Any]) -> dict[str, Any]:
    calls_file = args["calls_file"]

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        await asyncio.to_thread(_append, calls_file, f"{request.query}\n")
        await asyncio.sleep(LATENCY)
        return ks.FetchResult(
            listings=[
                ks.Listing(item_id=f"I{i}", title=f"{request.query} #{i}", price="9.99", sold=True)
                for i in range(20)
            ]
        )

    rounds = []
    async with ks.CompsStore(
        database_url=args["database_url"],
        redis_url=args["redis_url"],
        key_prefix=args["key_prefix"],
        fetchers={"sold": fetch},
    ) as store:
        await store.ping_redis()
        await store.ping_database()  # connections open now, not inside the measured burst
        print("ready", flush=True)
        start_at = float(await asyncio.to_thread(sys.stdin.readline))
        for k in range(args["rounds"]):
            late = time.time() - (start_at + k * GAP)
            if late < 0:
                await asyncio.sleep(-late)
            started = time.perf_counter()
            results = await asyncio.gather(
                *(store.comps.search(query(k)) for _ in range(args["concurrency"])),
                return_exceptions=True,
            )
            elapsed = time.perf_counter() - started
            sources = collections.Counter(
                r.source.value for r in results if not isinstance(r, BaseException)
            )
            errors = [repr(r) for r in results if isinstance(r, BaseException)]
            rounds.append(
                {"late": max(0.0, late), "elapsed": elapsed, "sources": sources, "errors": errors}
            )
        await store.flush()
        metrics = store.metrics()
    return {
        "rounds": rounds,
        "lock_waits": metrics["lock_waits"],
        "lock_wait_timeouts": metrics["lock_wait_timeouts"],
        "redis_errors": metrics["redis"]["errors"],
    }


def _stampede(
    pg_url: str, redis_url: str, rounds: int, processes: int
) -> tuple[list[int], list[dict[str, Any]]]:
    """Start the worker processes and release them together; calls per round, and reports."""
    with tempfile.TemporaryDirectory(prefix="kuya-stampede-") as scratch:
        calls_file = Path(scratch) / "calls"
        calls_file.touch()
        args = {
            "database_url": pg_url,
            "redis_url": redis_url,
            "key_prefix": f"stampede{uuid.uuid4().hex[:8]}",
            "calls_file": str(calls_file),
            "concurrency": SEARCHES // processes,
            "rounds": rounds,
        }
        reports = run_together("bench.stampede", [args] * processes, TIMEOUT)
        made = collections.Counter(calls_file.read_text().splitlines())
    return [made[query(k)] for k in range(rounds)], reports


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    # A smoke run starts half the processes: each one's imports cost seconds of CPU.
    rounds, processes = (2, 2) if scale < 1 else (10, PROCESSES)
    print(
        f"\n## stampede: {SEARCHES} concurrent identical misses over {processes} processes "
        f"(fetcher takes {LATENCY} s), {rounds} rounds"
    )
    await ks.migrations.downgrade_async(pg_url, "base")
    await ks.migrations.upgrade_async(pg_url)
    calls, reports = await asyncio.to_thread(_stampede, pg_url, redis_url, rounds, processes)
    await ks.migrations.downgrade_async(pg_url, "base")
    per_round = [[r["rounds"][k] for r in reports] for k in range(rounds)]
    errors = sum(len(w["errors"]) for round_ in per_round for w in round_)
    print(f"baseline, no store (one call per miss, computed): {SEARCHES} fetcher calls a round")
    for k, workers in enumerate(per_round):
        sources: collections.Counter[str] = collections.Counter()
        for w in workers:
            sources.update(w["sources"])
        print(
            f"  round {k + 1:>2}: {calls[k]} fetcher call(s); answers by source "
            f"{dict(sorted(sources.items()))}; slowest burst "
            f"{max(w['elapsed'] for w in workers):.2f} s; latest start "
            f"{max(w['late'] for w in workers) * 1000:.0f} ms after the shared moment"
        )
    print(
        f"processes that waited on another's lock: {sum(r['lock_waits'] for r in reports)}; "
        f"lock waits that ran out: {sum(r['lock_wait_timeouts'] for r in reports)}; "
        f"Redis calls that failed or timed out: {sum(r['redis_errors'] for r in reports)}"
    )
    worst = max(calls)
    print(
        f"kuya-store: {sum(calls)} calls for {rounds * SEARCHES:,} searches in {rounds} rounds "
        f"(worst round {worst}); errors {errors}; ratio worst round/baseline = {worst}/{SEARCHES}"
    )
    exact = sum(1 for c in calls if c == 1)
    return [
        Target(
            f"stampede ({SEARCHES} misses, {processes} processes)",
            "exactly 1 fetcher call",
            f"{exact} of {rounds} rounds made 1 call (worst {worst}); {errors} errors",
            exact == rounds and errors == 0,
        )
    ]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(worker(json.loads(sys.argv[1])))))
