"""The API budget across 4 processes: a budget of B requests a day, counted exactly.

Four processes (separate app instances) share one budget, first through Redis, then
through the database alone (no Redis configured: the ``api_usage`` upsert counts). Each
fires searches for cards of its own, all misses, concurrently, with a paged fetcher
(two pages a search) that appends a line to a shared file per real request. The file is
the count that matters: what the marketplace would bill. The baseline, an app without a
budget, makes every request asked for; it is computed, not run. A smoke run (``--quick``)
uses 2 processes.

Run as ``python -m bench.budget JSON`` this module is one worker process.
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
PAGES = 2
LATENCY = 0.02
TIMEOUT = 300.0


def _append(path: str, line: str) -> None:
    with open(path, "a") as out:
        out.write(line)


async def worker(args: dict[str, Any]) -> dict[str, Any]:
    calls_file = args["calls_file"]

    async def page(request: ks.FetchRequest) -> ks.FetchResult:
        await asyncio.to_thread(_append, calls_file, f"{request.query}|{request.page}\n")
        await asyncio.sleep(LATENCY)
        listings = [
            ks.Listing(
                item_id=f"{request.query}-{request.page}-{i}",
                title=f"{request.query} #{i}",
                price="9.99",
                sold=True,
            )
            for i in range(60)
        ]
        return ks.FetchResult(listings=listings, has_more=True)

    outcomes: collections.Counter[str] = collections.Counter()
    async with ks.CompsStore(
        database_url=args["database_url"],
        redis_url=args["redis_url"],
        key_prefix=args["key_prefix"],
        fetchers={"sold": ks.paged(page, page_size=60)},
        api_budget=args["budget"],
    ) as store:
        await store.ping_database()
        print("ready", flush=True)
        start_at = float(await asyncio.to_thread(sys.stdin.readline))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        gate = asyncio.Semaphore(args["concurrency"])

        async def one(k: int) -> None:
            async with gate:
                try:
                    result = await store.comps.search(
                        f"2024 Bowman Chrome {args['name']} card {k}",
                        params={"pages": PAGES},
                    )
                    outcomes[result.source.value] += 1
                except ks.BudgetExhaustedError:
                    outcomes["budget_exhausted"] += 1
                except Exception as error:  # reported, never hidden
                    outcomes[f"error:{type(error).__name__}"] += 1

        await asyncio.gather(*(one(k) for k in range(args["searches"])))
        await store.flush()
        budget = store.metrics()["budget"]
    return {"outcomes": dict(outcomes), "budget": budget}


def _run(args: dict[str, Any], processes: int) -> tuple[int, list[dict[str, Any]]]:
    """Start the workers, release them together; requests really made, and their reports."""
    with tempfile.TemporaryDirectory(prefix="kuya-budget-") as scratch:
        calls_file = Path(scratch) / "calls"
        calls_file.touch()
        payloads = [
            {**args, "calls_file": str(calls_file), "name": f"w{n}"} for n in range(processes)
        ]
        reports = run_together("bench.budget", payloads, TIMEOUT)
        made = len(calls_file.read_text().splitlines())
    return made, reports


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    # A smoke run starts half the processes: each one's imports cost seconds of CPU.
    processes, searches, budget = (2, 30, 50) if scale < 1 else (PROCESSES, 150, 500)
    asked = processes * searches * PAGES
    print(
        f"\n## API budget: {processes} processes, {searches} distinct misses each "
        f"({PAGES} pages a search, concurrency 16 per process), budget {budget} requests a day"
    )
    print(f"baseline, no budget (computed): {asked:,} requests")
    targets = []
    for counter, redis in (("Redis", redis_url), ("database (no Redis)", None)):
        await ks.migrations.downgrade_async(pg_url, "base")
        await ks.migrations.upgrade_async(pg_url)
        args = {
            "database_url": pg_url,
            "redis_url": redis,
            "key_prefix": f"budget{uuid.uuid4().hex[:8]}",
            "budget": budget,
            "searches": searches,
            "concurrency": 16,
        }
        made, reports = await asyncio.to_thread(_run, args, processes)
        outcomes: collections.Counter[str] = collections.Counter()
        for report in reports:
            outcomes.update(report["outcomes"])
        fallbacks = sum(int(r["budget"].get("fallbacks", 0)) for r in reports)
        print(
            f"  counted in {counter}: {made} requests made (budget {budget}); answers "
            f"{dict(sorted(outcomes.items()))}; reservations that fell back to a lower "
            f"counter: {fallbacks}"
        )
        errors = sum(n for k, n in outcomes.items() if k.startswith("error:"))
        targets.append(
            Target(
                f"budget of {budget} a day, {processes} processes, counted in {counter}",
                "never exceeded (count exactly)",
                f"{made} requests made; {errors} errors",
                made <= budget and errors == 0,
            )
        )
    await ks.migrations.downgrade_async(pg_url, "base")
    return targets


if __name__ == "__main__":
    print(json.dumps(asyncio.run(worker(json.loads(sys.argv[1])))))
