"""A FastAPI app on kuya-store: the plan's endpoints, health checks, metrics and a dashboard.

Run it offline with realistic fake listings:

    pip install "kuya-store[fastapi,prometheus]" uvicorn
    uvicorn examples.fastapi_app:app

Configure it like any store: ``KUYA_DATABASE_URL``, ``KUYA_REDIS_URL``, ``KUYA_MODE``, ...
Set ``SEARCHAPI_API_KEY`` to fetch real sold listings (``examples/sold_listings_api.py``);
replace ``FakeMarketplace`` with your browse API client for active listings.
"""

from __future__ import annotations

import os
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

import kuya_store as ks
from kuya_store.dashboard import render_dashboard
from kuya_store.demo import FakeMarketplace, with_links_json
from kuya_store.integrations.fastapi import StoreDep, lifespan
from kuya_store.integrations.prometheus import exposition

LISTING_LINK = os.environ.get("LISTING_LINK", "https://www.ebay.com/itm/{item_id}")
"""Where a listing's page is, for a listing whose display data is gone."""


class SearchQuery(BaseModel):
    """The query string of ``/comps`` and ``/active``."""

    query: Annotated[str, Field(max_length=500)]
    raw_only: bool = False
    base_only: bool = False
    exclude_auto: bool = False
    pages: Annotated[int, Field(ge=1, le=10)] = 1
    sort_by: str | None = None


def _fetchers(market: FakeMarketplace) -> dict[str, Any]:
    """The real sold-listings API when ``SEARCHAPI_API_KEY`` is set, else the fake market."""
    if api_key := os.environ.get("SEARCHAPI_API_KEY"):
        from examples.sold_listings_api import SoldListingsAPI  # the app runs from the repo

        return {"sold": SoldListingsAPI(api_key), "active": market.active}
    return {"sold": market.sold, "active": market.active}


def create_app(create_schema: bool = True, **store_kwargs: Any) -> FastAPI:
    """The app; keyword arguments go to ``CompsStore`` (URLs, mode, fetchers, clock...)."""
    market = FakeMarketplace()
    store_kwargs.setdefault("fetchers", _fetchers(market))
    app = FastAPI(
        title="Kuya Comps", lifespan=lifespan(create_schema=create_schema, **store_kwargs)
    )

    @app.exception_handler(ks.InvalidInputError)
    async def invalid(request: Request, exc: ks.InvalidInputError) -> JSONResponse:
        return JSONResponse({"field": exc.field, "detail": exc.reason}, status_code=422)

    @app.exception_handler(ks.FetcherError)
    async def upstream(request: Request, exc: ks.FetcherError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=502)

    @app.exception_handler(ks.NotFoundError)
    async def not_found(request: Request, exc: ks.NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ks.StorageUnavailableError)
    async def unavailable(request: Request, exc: ks.StorageUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    async def _search(store: ks.CompsStore, kind: str, asked: SearchQuery) -> Response:
        params: dict[str, Any] = {"pages": asked.pages}
        if asked.sort_by:
            params["sort_by"] = asked.sort_by
        filters = ks.SearchFilters(
            raw_only=asked.raw_only, base_only=asked.base_only, exclude_auto=asked.exclude_auto
        )
        result = await store.comps.search(asked.query, kind, filters=filters, params=params)
        # The answer's JSON in one pass, sent as it is: no dict of it for FastAPI to walk.
        return Response(with_links_json(result, LISTING_LINK), media_type="application/json")

    @app.get("/comps", response_model=ks.CompsResult)
    async def comps(store: StoreDep, asked: Annotated[SearchQuery, Query()]) -> Response:
        """Sold listings and the card's price snapshot."""
        return await _search(store, "sold", asked)

    @app.get("/active", response_model=ks.CompsResult)
    async def active(store: StoreDep, asked: Annotated[SearchQuery, Query()]) -> Response:
        """Active listings."""
        return await _search(store, "active", asked)

    @app.get("/analytics/{card}")
    async def analytics(card: str, store: StoreDep, days: int = 30) -> dict[str, Any]:
        """A card's price history and trend, with the chart's address."""
        await store.flush(timeout=2.0)  # include the searches just made (written behind)
        history = await store.analytics.price_history(card)
        trend = await store.analytics.price_trend(card, days=days)
        return {
            "card_identifier": ks.normalize_card(card),
            "history": [h.model_dump(mode="json") for h in history],
            "trend": trend.model_dump(mode="json"),
            "chart": f"/analytics/{quote(card, safe='')}/chart.svg" if history else None,
        }

    @app.get("/analytics/{card}/chart.svg")
    async def chart(card: str, store: StoreDep) -> Response:
        """The card's SVG price chart ("no data" picture when there is no history)."""
        await store.flush(timeout=2.0)
        history = await store.analytics.price_history(card)
        return Response(ks.render_price_chart(history), media_type="image/svg+xml")

    @app.get("/users/{user_id}/collection")
    async def collection(user_id: int, store: StoreDep) -> dict[str, Any]:
        """A user's cards, what they are worth against what was paid, and the value history.

        The user id comes from the path for brevity; a real app takes it from its session.
        """
        await store.flush(timeout=2.0)
        cards = await store.collections.list_cards(user_id)
        summary = await store.collections.summary(user_id)
        history = await store.collections.value_history(user_id)
        return {
            "cards": [c.model_dump(mode="json") for c in cards],
            "summary": summary.model_dump(mode="json"),
            "history": [p.model_dump(mode="json") for p in history],
        }

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        """The process answers."""
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready(store: StoreDep) -> JSONResponse:
        """The plan's readiness check: 503 only when nothing can answer a search."""
        health = await store.health()
        body = {"status": health.status, "redis": health.redis, "database": health.database}
        return JSONResponse(body, status_code=503 if health.status == "unhealthy" else 200)

    @app.get("/metrics")
    async def metrics(store: StoreDep) -> Response:
        """Prometheus exposition."""
        await store.database_size()
        body, content_type = exposition(store)
        return Response(body, media_type=content_type)

    @app.get("/cards/search")
    async def card_search(store: StoreDep, q: str, limit: int = 10) -> list[dict[str, Any]]:
        """Searched cards that match some words, best first, with their market value."""
        await store.flush(timeout=2.0)
        return [m.model_dump(mode="json") for m in await store.cards.search(q, limit=limit)]

    @app.get("/admin", response_class=HTMLResponse)
    async def admin(store: StoreDep, q: str = "") -> str:
        """The admin dashboard: top searches, hit rate, API calls saved, card search, a chart."""
        await store.flush(timeout=2.0)
        stats = await store.analytics.search_stats()
        top = await store.analytics.top_searches(limit=10)
        matches = None
        if q.strip():
            try:
                matches = await store.cards.search(q)
            except ks.InvalidInputError:
                matches = []
        return render_dashboard(stats, top, store.metrics(), searched=q, matches=matches)

    return app


app = create_app()
