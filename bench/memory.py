"""Peak RSS of 100,000 results held in process: kuya-store's memory tier against a plain dict.

Each side runs in its own fresh subprocess and reads ``ru_maxrss`` before and after
filling. Both decode the same 100,000 JSON payloads (10 listings each, with their display
extras, as the hot tier stores them): kuya-store into validated ``StoredResult`` models in
a ``MemoryTier``, the baseline with ``json.loads`` into a dict keyed by the Redis key.

Run as ``python -m bench.memory {kuya|dict} N`` this module is one measuring process.
"""

from __future__ import annotations

import asyncio
import copy
import json
import resource
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.stats import Target

ENTRIES = 100_000
LISTINGS = 10
TIMEOUT = 600.0
ROOT = Path(__file__).resolve().parent.parent


async def _template() -> dict[str, Any]:
    """One realistic stored result as JSON data: a FakeMarketplace fetch of 10 listings."""
    import kuya_store as ks
    from kuya_store.demo import FakeMarketplace
    from kuya_store.stored import StoredResult

    market = FakeMarketplace(listings=LISTINGS)
    request = ks.FetchRequest(query="prospect-0", search_type=ks.SearchType.SOLD)
    fetched = await market.sold(request)
    result = StoredResult(
        query="prospect-0",
        card_identifier="prospect-0",
        search_type=ks.SearchType.SOLD,
        params={},
        listings=fetched.listings,
        fetched_at=market._clock(),
    )
    data: dict[str, Any] = result.model_dump(mode="json")
    return data


def _payloads(template: dict[str, Any], n: int) -> Iterator[tuple[str, bytes]]:
    """``n`` distinct payloads (cards, item ids, titles, prices), one at a time."""
    for i in range(n):
        data = copy.deepcopy(template)
        card = f"prospect-{i}"
        data["query"] = data["card_identifier"] = card
        for j, listing in enumerate(data["listings"]):
            listing["item_id"] = f"S{i:08d}{j:03d}"
            listing["title"] = listing["title"].replace("prospect-0", card)
            listing["price"] = f"{(i * 7 + j * 13) % 9000 / 100 + 5:.2f}"
            listing["extra"]["link"] = f"https://marketplace.example/itm/S{i:08d}{j:03d}"
            listing["extra"]["thumbnail"] = f"https://img.marketplace.example/S{i:08d}{j:03d}.jpg"
        yield card, json.dumps(data).encode()


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def measure(kind: str, n: int) -> dict[str, Any]:
    import kuya_store as ks
    from kuya_store.keys import ResultIdentity
    from kuya_store.stored import decode
    from kuya_store.tiers.memory import MemoryTier

    tier = MemoryTier(n)
    plain: dict[str, Any] = {}
    ttl = timedelta(hours=1)
    template = await _template()
    payloads = _payloads(template, n)
    for card, raw in _payloads(template, 2):  # warm every code path before the first reading
        identity = ResultIdentity.of(card, ks.SearchType.SOLD, {})
        await MemoryTier(1).set(identity, decode(raw), ttl)
        json.loads(raw)
    before = _maxrss_mb()
    for card, raw in payloads:
        identity = ResultIdentity.of(card, ks.SearchType.SOLD, {})
        if kind == "kuya":
            await tier.set(identity, decode(raw), ttl)
        else:
            plain[identity.redis_key("kuya")] = json.loads(raw)
    after = _maxrss_mb()
    held = len(tier) if kind == "kuya" else len(plain)
    assert held == n, held
    return {"kind": kind, "entries": held, "before_mb": before, "after_mb": after}


def _spawn(kind: str, n: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", kind, str(n)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


async def _estimate_errors() -> list[tuple[str, int, float]]:
    """The byte estimate of the in-process tiers against ``tracemalloc``, per result shape.

    What is measured is what a tier holds: a decoded result, compacted.
    """
    import gc
    import tracemalloc

    import kuya_store as ks
    from kuya_store.demo import FakeMarketplace
    from kuya_store.pricing import DefaultValuator
    from kuya_store.stored import StoredResult, decode, encode
    from kuya_store.tiers.compact import compact
    from kuya_store.tiers.sizing import approximate_size

    rows = []
    for listings in (1, 10, 50, 120, 500):
        market = FakeMarketplace(listings=listings)
        request = ks.FetchRequest(query="2023 Topps Chrome Wembanyama #1", search_type="sold")
        fetched = await market.sold(request)
        now = market._clock()
        snapshot = DefaultValuator().value(
            "card", fetched.listings, snapshot_date=now.date(), now=now
        )
        for extra in (True, False):
            result = StoredResult(
                query=request.query,
                card_identifier="2023 topps chrome wembanyama 1",
                search_type=ks.SearchType.SOLD,
                params={"pages": 3},
                listings=fetched.listings
                if extra
                else [x.metadata_only() for x in fetched.listings],
                fetched_at=now,
                snapshot=snapshot,
            )
            raw = encode(result)
            compact(decode(raw))  # the shared field-name sets exist before the reading
            gc.collect()
            tracemalloc.start()
            copies = [compact(decode(raw)) for _ in range(5)]
            held = tracemalloc.get_traced_memory()[0] / len(copies)
            tracemalloc.stop()
            shape = f"{listings} listings, {'with' if extra else 'no'} display data"
            rows.append((shape, int(held), approximate_size(result) / held - 1))
    return rows


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    n = max(10_000, int(ENTRIES * scale))
    print("\n## memory: the byte estimate of a result against tracemalloc")
    errors = await _estimate_errors()
    for shape, held, error in errors:
        print(f"{shape:<40} {held / 1024:9.1f} KiB held, estimate {error:+6.1%}")
    worst = max(abs(e) for _, _, e in errors)
    print(f"\n## memory: peak RSS holding {n:,} results of {LISTINGS} listings in process")
    reports = {kind: await asyncio.to_thread(_spawn, kind, n) for kind in ("dict", "kuya")}
    grown = {k: r["after_mb"] - r["before_mb"] for k, r in reports.items()}
    for kind, label in (
        ("dict", "dict of json.loads payloads (baseline)"),
        ("kuya", "kuya-store MemoryTier of StoredResult"),
    ):
        r = reports[kind]
        print(
            f"{label:<52} {grown[kind]:8.1f} MB held "
            f"(peak RSS {r['before_mb']:.1f} -> {r['after_mb']:.1f} MB; "
            f"{grown[kind] * 1024 / n:.2f} KiB per entry)"
        )
    print(f"ratio: kuya-store/dict = {grown['kuya'] / grown['dict']:.2f}x the memory")
    return [
        Target(
            "byte estimate of a held result, worst error",
            "within 20%",
            f"{worst:.1%} over {len(errors)} shapes",
            worst <= 0.2,
        )
    ]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(sys.argv[1], int(sys.argv[2])))))
