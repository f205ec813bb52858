"""Processes for the multi-process tests: run as ``python tests/workers.py SCENARIO JSON``.

Each scenario opens its own store (a separate process, as a second app instance would),
waits for a shared start moment so the processes overlap, and prints a JSON report.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import Any

import kuya_store as ks


def _wait_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


def _append(path: str, line: str) -> None:
    with open(path, "a") as out:
        out.write(line)


async def stampede(args: dict[str, Any]) -> dict[str, Any]:
    """Many concurrent identical misses; the fetcher appends a line per real call."""
    calls_file = args["calls_file"]

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        await asyncio.to_thread(_append, calls_file, f"{os.getpid()}\n")
        await asyncio.sleep(args.get("latency", 0.5))
        return ks.FetchResult(
            listings=[
                ks.Listing(item_id=f"I{i}", title=f"{request.query} #{i}", price="9.99", sold=True)
                for i in range(20)
            ]
        )

    async with ks.CompsStore(
        database_url=args["database_url"],
        redis_url=args["redis_url"],
        key_prefix=args["key_prefix"],
        fetchers={"sold": fetch},
        # A loaded test machine answers slower than the 250 ms default; a Redis call that
        # times out fails open (a fetch of its own), which is not what this measures.
        redis_socket_timeout=2.0,
    ) as store:
        _wait_until(args["start_at"])
        results = await asyncio.gather(
            *(store.comps.search(args["query"]) for _ in range(args["concurrency"])),
            return_exceptions=True,
        )
        await store.flush()
        metrics = store.metrics()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    sources = [r.source.value for r in results if not isinstance(r, BaseException)]
    return {"errors": errors, "sources": sources, "lock_waits": metrics["lock_waits"]}


async def overlapping_writer(args: dict[str, Any]) -> dict[str, Any]:
    """Fetch after fetch of one card, each persisting overlapping listings and the day's snapshot."""
    rng = random.Random(args["seed"])
    shared = [f"SHARED{i:03d}" for i in range(60)]

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        ids = rng.sample(shared, 40) + [
            f"OWN{args['seed']}-{request.params['round']}-{i}" for i in range(5)
        ]
        rng.shuffle(ids)
        return ks.FetchResult(
            listings=[
                ks.Listing(
                    item_id=item,
                    title=f"2020 Prizm Justin Herbert #325 {item}",
                    price=f"{rng.uniform(10, 90):.2f}",
                    sold=True,
                )
                for item in ids
            ]
        )

    async with ks.CompsStore(
        database_url=args["database_url"], fetchers={"sold": fetch}, write_batch_size=50
    ) as store:
        _wait_until(args["start_at"])
        for round_ in range(args["rounds"]):
            await store.comps.search(
                "2020 Prizm Justin Herbert #325", params={"round": round_, "worker": args["seed"]}
            )
        flushed = await store.flush(timeout=60)
        metrics = store.metrics()
    return {"flushed": flushed, "writes": metrics["writes"]}


async def answer_then_hang(args: dict[str, Any]) -> dict[str, Any]:
    """Answer searches (fetches and hits), say so on stdout, then wait to be SIGKILLed.

    ``store`` holds extra settings: a long ``write_flush_interval`` keeps what it read from
    the journal unwritten, as a worker killed mid-batch would.
    """

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        await asyncio.to_thread(_append, args["calls_file"], f"{request.query}\n")
        return ks.FetchResult(
            listings=[
                ks.Listing(
                    item_id=f"{request.query}-{i}".replace(" ", "_")[:50],
                    title=f"{request.query} #{i}",
                    price=f"{10 + i}.25",
                    sold=True,
                )
                for i in range(args["listings"])
            ]
        )

    store = ks.CompsStore(
        database_url=args["database_url"],
        redis_url=args.get("redis_url"),
        key_prefix=args["key_prefix"],
        fetchers={"sold": fetch},
        near_cache_size=0,
        **args.get("store", {}),
    )
    await store.start()
    answered = 0
    fetched = 0
    for query in args["queries"]:
        result = await store.comps.search(query)
        answered += 1
        fetched += not result.cache_hit
    if args.get("flush"):
        await store.flush()
    if args.get("hold"):
        # Reported once this worker's buffer holds every record it put on the journal, so
        # a kill leaves them pending with it (read, unwritten), for the others to claim.
        for _ in range(500):
            if store._writer is not None and store._writer.pending >= answered:
                break
            await asyncio.sleep(0.02)
    metrics = store.metrics()
    report = {"answered": answered, "fetched": fetched, "journal": metrics["journal"]}
    print(json.dumps(report), flush=True)
    await asyncio.sleep(3600)  # the test kills the process long before
    return report


SCENARIOS = {
    "stampede": stampede,
    "overlapping_writer": overlapping_writer,
    "answer_then_hang": answer_then_hang,
}


if __name__ == "__main__":
    name, raw = sys.argv[1], sys.argv[2]
    report = asyncio.run(SCENARIOS[name](json.loads(raw)))
    print(json.dumps(report))
