"""Peak RSS of 100,000 results held in process: kuya-store's memory tier against a plain dict.

Each side runs in its own fresh subprocess and reads ``ru_maxrss`` before and after
filling. Both decode the same 100,000 JSON payloads (10 listings each, with their display
extras, as the hot tier stores them): kuya-store into validated ``StoredResult`` models in
a ``MemoryTier`` (which holds them compacted), the baseline with ``json.loads`` into a dict
keyed by the Redis key. Two more contenders show what a tier holding encoded bytes would
take (the payloads as they are, and zlib-compressed); the hit costs below say what such a
tier would pay on every hit instead.

Run as ``python -m bench.memory {kuya|dict} N`` this module is one measuring process.
"""

from __future__ import annotations

import asyncio
import copy
import json
import resource
import subprocess
import sys
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.stats import Target, line, pct, sample_interleaved

ENTRIES = 100_000
KINDS = {
    "dict": "dict of json.loads payloads (baseline)",
    "kuya": "kuya-store MemoryTier of StoredResult",
    "bytes": "dict of the JSON payloads as bytes (not used)",
    "zlib": "dict of zlib-compressed payloads (not used)",
}
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


def _rss_mb() -> float:
    """Resident memory now: the peak alone hides growth below an earlier, higher peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return _maxrss_mb()
    return pages * resource.getpagesize() / 2**20


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
    before, resident = _maxrss_mb(), _rss_mb()
    for card, raw in payloads:
        identity = ResultIdentity.of(card, ks.SearchType.SOLD, {})
        if kind == "kuya":
            await tier.set(identity, decode(raw), ttl)
        elif kind == "dict":
            plain[identity.redis_key("kuya")] = json.loads(raw)
        elif kind == "bytes":
            plain[identity.redis_key("kuya")] = raw
        else:
            plain[identity.redis_key("kuya")] = zlib.compress(raw, 1)
    after, resident_after = _maxrss_mb(), _rss_mb()
    held = len(tier) if kind == "kuya" else len(plain)
    assert held == n, held
    return {
        "kind": kind,
        "entries": held,
        "before_mb": before,
        "after_mb": after,
        "rss_before_mb": resident,
        "rss_after_mb": resident_after,
    }


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


async def _hit_costs(n: int) -> dict[str, list[float]]:
    """What one hit of a 10-listing result costs: a held model, or bytes decoded per hit."""
    import kuya_store as ks
    from kuya_store.keys import ResultIdentity
    from kuya_store.stored import decode
    from kuya_store.tiers.compact import compact
    from kuya_store.tiers.memory import MemoryTier

    card, raw = next(_payloads(await _template(), 1))
    packed = zlib.compress(raw, 1)
    identity = ResultIdentity.of(card, ks.SearchType.SOLD, {})
    tier = MemoryTier(10)
    await tier.set(identity, decode(raw), timedelta(hours=1))

    async def held() -> object:
        return await tier.get(identity)

    async def from_bytes() -> object:
        return decode(raw)

    async def from_zlib() -> object:
        return decode(zlib.decompress(packed))

    async def decoded_and_compacted() -> object:
        return compact(decode(raw))

    return await sample_interleaved(
        {
            "held": held,
            "bytes": from_bytes,
            "zlib": from_zlib,
            "compact": decoded_and_compacted,
        },
        n,
    )


def _ratio(ours: float, base: float) -> str:
    # A small smoke run may stay below an earlier peak: no growth to compare.
    return f"{ours / base:.2f}x" if base > 0 else "n/a (no peak growth)"


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    quick = scale < 1
    n = 1_000 if quick else ENTRIES  # a smoke run only checks that it runs
    print("\n## memory: the byte estimate of a result against tracemalloc")
    errors = await _estimate_errors()
    for shape, held, error in errors:
        print(f"{shape:<40} {held / 1024:9.1f} KiB held, estimate {error:+6.1%}")
    worst = max(abs(e) for _, _, e in errors)
    print(f"\n## memory: RSS holding {n:,} results of {LISTINGS} listings in process")
    reports = {kind: await asyncio.to_thread(_spawn, kind, n) for kind in KINDS}
    grown = {k: r["rss_after_mb"] - r["rss_before_mb"] for k, r in reports.items()}
    peaks = {k: r["after_mb"] - r["before_mb"] for k, r in reports.items()}
    for kind, label in KINDS.items():
        r = reports[kind]
        print(
            f"{label:<48} {grown[kind]:7.1f} MB held, {grown[kind] * 1024 / n:5.2f} KiB per entry "
            f"(peak RSS {r['before_mb']:.1f} -> {r['after_mb']:.1f} MB)"
        )
    ratio = grown["kuya"] / grown["dict"] if grown["dict"] > 0 else float("inf")
    print(
        f"ratio: kuya-store/dict = {ratio:.2f}x the memory held "
        f"({_ratio(peaks['kuya'], peaks['dict'])} by peak RSS growth)"
    )
    hits = 300 if quick else max(1000, int(10_000 * scale))
    print(f"\n## memory: one hit of a result of {LISTINGS} listings, in process ({hits} each)")
    costs = await _hit_costs(hits)
    print(line("MemoryTier.get (held compacted models)", costs["held"]))
    print(line("decode of held JSON bytes (not used)", costs["bytes"]))
    print(line("zlib + decode of held bytes (not used)", costs["zlib"]))
    print(line("decode + compact: what a fill of a tier costs", costs["compact"]))
    print(
        f"a fill's compact: {pct(costs['compact'], 50) - pct(costs['bytes'], 50):.1f} us "
        f"on top of the decode (p50)"
    )
    return [
        Target(
            "byte estimate of a held result, worst error",
            "within 20%",
            f"{worst:.1%} over {len(errors)} shapes",
            worst <= 0.2,
        ),
        Target(
            "memory tier held / decoded JSON (RSS)",
            "<= 1.00x",
            f"{ratio:.2f}x ({n:,} results)",
            ratio <= 1.0,
        ),
    ]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(measure(sys.argv[1], int(sys.argv[2])))))
