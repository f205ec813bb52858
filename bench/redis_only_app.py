"""The route kuya-store replaces: a FastAPI app with only Redis in front of the paid API.

It does what the migration plan's app does today: the JSON of the whole response is kept
in Redis under an md5 of every request parameter (filters included), for 30 minutes
(sold) or 5 minutes (active); a miss calls the upstream, filters the titles and stores the
answer; Redis down is a miss. No search log, no single flight, nothing kept past the TTL.

Configured by environment: ``BENCH_REDIS_URL``, ``BENCH_UPSTREAM_URL`` and
``BENCH_KEY_PREFIX``; run with ``uvicorn --factory bench.redis_only_app:create``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any

import httpx
import redis.asyncio as redis
from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

TTL_SECONDS = {"sold": 30 * 60, "active": 5 * 60}
_GRADED = ("psa", "bgs", "sgc", "csg", "hga", "graded", "grade", "gem", "mint")
_PARALLEL = ("refractor", "prizm", "parallel", "gold", "silver", "wave", "numbered", "/")
_AUTOGRAPH = ("auto", "autograph", "signed", "signature")


class SearchQuery(BaseModel):
    """The same query string as the kuya-store example's ``/comps`` and ``/active``."""

    query: Annotated[str, Field(max_length=500)]
    raw_only: bool = False
    base_only: bool = False
    exclude_auto: bool = False
    pages: Annotated[int, Field(ge=1, le=10)] = 1
    sort_by: str | None = None


def cache_key(prefix: str, kind: str, asked: SearchQuery) -> str:
    """The md5 of every parameter: each filter combination is a key (and a fetch) of its own."""
    params = {**asked.model_dump(), "sort_by": asked.sort_by or "best_match"}
    digest = hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return f"{prefix}:{kind}:{digest}"


def keep(title: str, asked: SearchQuery) -> bool:
    """Whether a listing passes the asked filters, judged from its title as the app does."""
    text = title.lower()
    if asked.raw_only and any(term in text for term in _GRADED):
        return False
    if asked.base_only and any(term in text for term in _PARALLEL):
        return False
    return not (asked.exclude_auto and any(term in text for term in _AUTOGRAPH))


def answer(kind: str, asked: SearchQuery, fetched: dict[str, Any]) -> dict[str, Any]:
    """The response body: the kept listings and their price range."""
    items = [item for item in fetched["listings"] if keep(item["title"], asked)]
    prices = [float(item["price"]) for item in items]
    return {
        "query": asked.query,
        "search_type": kind,
        "pages_scraped": fetched["pages_scraped"],
        "items": items,
        "min_price": min(prices) if prices else None,
        "max_price": max(prices) if prices else None,
        "avg_price": sum(prices) / len(prices) if prices else None,
    }


def create() -> FastAPI:
    """The app, on the Redis and upstream the environment names."""
    prefix = os.environ.get("BENCH_KEY_PREFIX", "kuya_comps")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = redis.from_url(
            os.environ["BENCH_REDIS_URL"],
            decode_responses=True,
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        app.state.upstream = httpx.AsyncClient(
            base_url=os.environ["BENCH_UPSTREAM_URL"],
            timeout=30.0,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        )
        try:
            yield
        finally:
            await app.state.upstream.aclose()
            await app.state.redis.aclose()

    app = FastAPI(title="Redis-only comps", lifespan=lifespan)

    async def _search(request: Request, kind: str, asked: SearchQuery) -> dict[str, Any]:
        cache: redis.Redis = request.app.state.redis
        key = cache_key(prefix, kind, asked)
        try:
            cached = await cache.get(key)
        except redis.RedisError:
            cached = None
        if cached is not None:
            found: dict[str, Any] = json.loads(cached)
            return found
        params: dict[str, Any] = {"q": asked.query, "type": kind, "pages": asked.pages}
        try:
            response = await request.app.state.upstream.get("/search", params=params)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise HTTPException(502, f"upstream failed: {exc!r}") from exc
        body = answer(kind, asked, response.json())
        with suppress(redis.RedisError):
            await cache.setex(key, TTL_SECONDS[kind], json.dumps(body))
        return body

    @app.get("/comps")
    async def comps(request: Request, asked: Annotated[SearchQuery, Query()]) -> dict[str, Any]:
        """Sold listings."""
        return await _search(request, "sold", asked)

    @app.get("/active")
    async def active(request: Request, asked: Annotated[SearchQuery, Query()]) -> dict[str, Any]:
        """Active listings."""
        return await _search(request, "active", asked)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    return app
