"""A paid marketplace API over HTTP, for the load benchmark: slow, deterministic, counted.

``GET /search?q=..&type=sold|active&pages=N`` answers after ``BENCH_UPSTREAM_LATENCY``
seconds (0.3 by default, what a sold-listings API takes) with the listings of
:class:`kuya_store.demo.FakeMarketplace` as JSON. ``GET /calls`` says how many searches
were asked since the last ``POST /reset``: the calls a contender would have paid for. Run
it in one process (``uvicorn --factory bench.fake_upstream:create``) so the count is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter

from fastapi import FastAPI
from fastapi.responses import Response

import kuya_store as ks
from kuya_store.demo import FakeMarketplace

_KEPT_BODIES = 20_000


def create() -> FastAPI:
    """The upstream app; its latency comes from ``BENCH_UPSTREAM_LATENCY`` (seconds)."""
    latency = float(os.environ.get("BENCH_UPSTREAM_LATENCY", "0.3"))
    market = FakeMarketplace()
    calls: Counter[str] = Counter()
    # The same search gets the same listings: building them once keeps this process's
    # CPU, which the contenders share, out of the comparison.
    bodies: dict[tuple[str, str, int], bytes] = {}
    app = FastAPI()

    @app.get("/search")
    async def search(q: str, type: str = "sold", pages: int = 1) -> Response:
        kind = ks.SearchType(type)
        calls[kind.value] += 1
        started = asyncio.get_running_loop().time()
        key = (q, kind.value, pages)
        body = bodies.get(key)
        if body is None:
            asked = ks.FetchRequest(query=q, search_type=kind, params={"pages": pages})
            found = await market(asked)
            market.calls.clear()
            listings = [listing.model_dump(mode="json") for listing in found.listings]
            answer = {"listings": listings, "pages_scraped": found.pages_scraped}
            body = json.dumps(answer).encode()
            if len(bodies) >= _KEPT_BODIES:
                bodies.clear()
            bodies[key] = body
        await asyncio.sleep(max(0.0, latency - (asyncio.get_running_loop().time() - started)))
        return Response(body, media_type="application/json")

    @app.get("/calls")
    async def counted() -> dict[str, int]:
        return {"calls": sum(calls.values()), **calls}

    @app.post("/reset")
    async def reset() -> dict[str, int]:
        calls.clear()
        return {"calls": 0}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    return app
