"""The FastAPI example app (``examples/fastapi_app.py``) with a fetcher that calls an HTTP API.

The store is configured by environment as any deployment is (``KUYA_DATABASE_URL``,
``KUYA_REDIS_URL``, ``KUYA_KEY_PREFIX``, ``KUYA_MODE``); ``BENCH_UPSTREAM_URL`` names the
marketplace API (``bench/fake_upstream.py``). Run with
``uvicorn --factory bench.kuya_app:create``; the schema is migrated before the workers start.
"""

from __future__ import annotations

import os

import httpx
from examples.fastapi_app import create_app
from fastapi import FastAPI

import kuya_store as ks


class UpstreamFetcher:
    """Asks the marketplace API over HTTP: one call per fetch, whatever the search type."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, request: ks.FetchRequest) -> ks.FetchResult:
        if self._client is None:  # made in the worker's own event loop
            self._client = httpx.AsyncClient(
                base_url=self._base_url,
                timeout=30.0,
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
            )
        params = {
            "q": request.query,
            "type": request.search_type.value,
            "pages": int(request.params.get("pages", 1) or 1),
        }
        response = await self._client.get("/search", params=params)
        response.raise_for_status()
        # The body is a FetchResult's JSON: validated in one go, and not again by the store.
        return ks.FetchResult.model_validate_json(response.content)


def create() -> FastAPI:
    """The example app, its fetchers calling ``BENCH_UPSTREAM_URL``."""
    upstream = UpstreamFetcher(os.environ["BENCH_UPSTREAM_URL"])
    return create_app(create_schema=False, fetchers={"sold": upstream, "active": upstream})
