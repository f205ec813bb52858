"""A Flask app on kuya-store: the plan's endpoints, health checks, metrics and a dashboard.

Run it offline with realistic fake listings:

    pip install "kuya-store[flask,prometheus]"
    flask --app examples.flask_app:create_app run

Configure it through ``app.config`` or the environment: ``KUYA_DATABASE_URL``,
``KUYA_REDIS_URL``, ``KUYA_MODE``, ... Set ``SEARCHAPI_API_KEY`` to fetch real sold listings
(``examples/sold_listings_api.py``); replace ``FakeMarketplace`` with your browse API client.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, jsonify, request

import kuya_store as ks
from kuya_store.dashboard import render_dashboard
from kuya_store.demo import FakeMarketplace, with_links
from kuya_store.integrations.flask import KuyaStore
from kuya_store.integrations.prometheus import exposition

LISTING_LINK = os.environ.get("LISTING_LINK", "https://www.ebay.com/itm/{item_id}")
"""Where a listing's page is, for a listing whose display data is gone."""


def _flag(name: str) -> bool:
    return request.args.get(name, "false").lower() in ("1", "true", "yes", "on")


def _fetchers(market: FakeMarketplace) -> dict[str, Any]:
    """The real sold-listings API when ``SEARCHAPI_API_KEY`` is set, else the fake market."""
    if api_key := os.environ.get("SEARCHAPI_API_KEY"):
        from examples.sold_listings_api import SoldListingsAPI  # the app runs from the repo

        return {"sold": SoldListingsAPI(api_key), "active": market.active}
    return {"sold": market.sold, "active": market.active}


def create_app(
    config: dict[str, Any] | None = None, create_schema: bool = True, **store_kwargs: Any
) -> Flask:
    """The app; ``config`` goes to ``app.config``, keyword arguments to ``CompsStore``."""
    app = Flask(__name__)
    app.config.update(config or {})
    market = FakeMarketplace()
    store_kwargs.setdefault("fetchers", _fetchers(market))
    kuya = KuyaStore(create_schema=create_schema, **store_kwargs)
    kuya.init_app(app)

    @app.errorhandler(ks.InvalidInputError)
    def invalid(exc: ks.InvalidInputError) -> tuple[Response, int]:
        return jsonify(field=exc.field, detail=exc.reason), 422

    @app.errorhandler(ks.FetcherError)
    def upstream(exc: ks.FetcherError) -> tuple[Response, int]:
        return jsonify(detail=str(exc)), 502

    @app.errorhandler(ks.NotFoundError)
    def not_found(exc: ks.NotFoundError) -> tuple[Response, int]:
        return jsonify(detail=str(exc)), 404

    @app.errorhandler(ks.StorageUnavailableError)
    def unavailable(exc: ks.StorageUnavailableError) -> tuple[Response, int]:
        return jsonify(detail=str(exc)), 503

    def search(kind: str) -> dict[str, Any]:
        try:
            pages = int(request.args.get("pages", "1"))
        except ValueError:
            raise ks.InvalidInputError("pages", "must be an integer") from None
        params: dict[str, Any] = {"pages": pages}
        if sort_by := request.args.get("sort_by"):
            params["sort_by"] = sort_by
        result = kuya.store.comps.search(
            request.args.get("query", ""),
            kind,
            filters=ks.SearchFilters(
                raw_only=_flag("raw_only"),
                base_only=_flag("base_only"),
                exclude_auto=_flag("exclude_auto"),
            ),
            params=params,
        )
        return with_links(result, LISTING_LINK)

    @app.get("/comps")
    def comps() -> dict[str, Any]:
        """Sold listings and the card's price snapshot."""
        return search("sold")

    @app.get("/active")
    def active() -> dict[str, Any]:
        """Active listings."""
        return search("active")

    @app.get("/analytics/<path:card>/chart.svg")
    def chart(card: str) -> Response:
        """The card's SVG price chart ("no data" picture when there is no history)."""
        kuya.store.flush(timeout=2.0)
        history = kuya.store.analytics.price_history(card)
        return Response(ks.render_price_chart(history), mimetype="image/svg+xml")

    @app.get("/analytics/<path:card>")
    def analytics(card: str) -> dict[str, Any]:
        """A card's price history and trend, with the chart's address."""
        kuya.store.flush(timeout=2.0)  # include the searches just made (written behind)
        history = kuya.store.analytics.price_history(card)
        trend = kuya.store.analytics.price_trend(card, days=int(request.args.get("days", "30")))
        return {
            "card_identifier": ks.normalize_card(card),
            "history": [h.model_dump(mode="json") for h in history],
            "trend": trend.model_dump(mode="json"),
            "chart": f"/analytics/{quote(card, safe='')}/chart.svg" if history else None,
        }

    @app.get("/users/<int:user_id>/collection")
    def collection(user_id: int) -> dict[str, Any]:
        """A user's cards, what they are worth against what was paid, and the value history.

        The user id comes from the path for brevity; a real app takes it from its session.
        """
        kuya.store.flush(timeout=2.0)
        cards = kuya.store.collections.list_cards(user_id)
        summary = kuya.store.collections.summary(user_id)
        history = kuya.store.collections.value_history(user_id)
        return {
            "cards": [c.model_dump(mode="json") for c in cards],
            "summary": summary.model_dump(mode="json"),
            "history": [p.model_dump(mode="json") for p in history],
        }

    @app.get("/health/live")
    def live() -> dict[str, str]:
        """The process answers."""
        return {"status": "alive"}

    @app.get("/health/ready")
    def ready() -> tuple[dict[str, Any], int]:
        """The plan's readiness check: 503 only when nothing can answer a search."""
        health = kuya.store.health()
        body = {"status": health.status, "redis": health.redis, "database": health.database}
        return body, 503 if health.status == "unhealthy" else 200

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus exposition."""
        kuya.store.database_size()
        body, content_type = exposition(kuya.store)
        return Response(body, content_type=content_type)

    @app.get("/cards/search")
    def card_search() -> list[dict[str, Any]]:
        """Searched cards that match some words, best first, with their market value."""
        kuya.store.flush(timeout=2.0)
        limit = int(request.args.get("limit", "10"))
        found = kuya.store.cards.search(request.args.get("q", ""), limit=limit)
        return [m.model_dump(mode="json") for m in found]

    @app.get("/admin")
    def admin() -> str:
        """The admin dashboard: top searches, hit rate, API calls saved, card search, a chart."""
        kuya.store.flush(timeout=2.0)
        stats = kuya.store.analytics.search_stats()
        top = kuya.store.analytics.top_searches(limit=10)
        searched = request.args.get("q", "")
        matches = None
        if searched.strip():
            try:
                matches = kuya.store.cards.search(searched)
            except ks.InvalidInputError:
                matches = []
        return render_dashboard(
            stats, top, kuya.store.metrics(), searched=searched, matches=matches
        )

    return app
