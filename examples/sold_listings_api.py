"""A sold-listings fetcher for a SearchAPI-style eBay search, as the example apps use it.

The search API answers with ``organic_results``: a title, a price (text such as
``"$1,190.00"`` or an object with ``extracted``), a buying format, bids, and the sale
date as the text the marketplace shows (``"Sold  Nov 24, 2025"``). ``listing_from_result``
turns one result into a ``ks.Listing`` with ``ks.parse_sold_date``, so the valuator sees
real sale dates; ``SoldListingsAPI`` is the fetcher (one API call per page).

    fetchers = {"sold": SoldListingsAPI(api_key), "active": ...}

The apps use it when ``SEARCHAPI_API_KEY`` is set and the offline fake marketplace otherwise.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import kuya_store as ks

ENDPOINT = "https://www.searchapi.io/api/v1/search"
_DATE_FIELDS = ("sold_date", "date_sold", "date", "sold")
_ITEM_IN_LINK = re.compile(r"/itm/(?:[^/]+/)?(\d{6,20})")


def _price(raw: Any) -> Decimal | None:
    if isinstance(raw, dict):
        raw = raw.get("extracted", raw.get("raw"))
    if isinstance(raw, int | float):
        raw = str(raw)
    if not isinstance(raw, str) or " to " in raw:  # a price range is no sale price
        return None
    text = raw.replace("$", "").replace(",", "").strip()
    try:
        price = Decimal(text).quantize(Decimal("0.01"))
    except InvalidOperation:
        return None
    return price if price.is_finite() and price > 0 else None


def _item_id(raw: dict[str, Any]) -> str | None:
    for key in ("item_id", "product_id", "id"):
        if raw.get(key):
            return str(raw[key])[:50]
    found = _ITEM_IN_LINK.search(str(raw.get("link", "")))
    return found[1] if found else None


def _listing_type(raw: dict[str, Any]) -> str | None:
    text = str(raw.get("buying_format") or raw.get("listing_type") or "").lower()
    if "auction" in text or raw.get("bids"):
        return "auction"
    if "buy it now" in text or "best offer" in text:
        return "buy_it_now"
    return None


def listing_from_result(raw: dict[str, Any], *, now: datetime) -> ks.Listing | None:
    """One search result as a sold ``ks.Listing``; ``None`` when it has no title or price."""
    title, price, item_id = raw.get("title"), _price(raw.get("price")), _item_id(raw)
    if not isinstance(title, str) or not title.strip() or price is None or item_id is None:
        return None
    text = next((raw[key] for key in _DATE_FIELDS if isinstance(raw.get(key), str)), None)
    bids = raw.get("bids")
    return ks.Listing(
        item_id=item_id,
        title=title.strip()[:500],
        price=price,
        listing_type=_listing_type(raw),
        condition=str(raw["condition"])[:50] if raw.get("condition") else None,
        sold=True,
        sold_date=ks.parse_sold_date(text, now=now),
        bids=bids if isinstance(bids, int) and bids >= 0 else None,
        extra={"link": raw["link"]} if isinstance(raw.get("link"), str) else {},
    )


def listings_from_page(results: list[dict[str, Any]], *, now: datetime) -> list[ks.Listing]:
    """Every usable result of one page, each ``item_id`` once."""
    seen: set[str] = set()
    out: list[ks.Listing] = []
    for raw in results:
        listing = listing_from_result(raw, now=now)
        if listing is not None and listing.item_id not in seen:
            seen.add(listing.item_id)
            out.append(listing)
    return out


class SoldListingsAPI:
    """A sync fetcher (the store runs it in a worker thread): one HTTP call per page."""

    def __init__(self, api_key: str, *, endpoint: str = ENDPOINT, timeout: float = 30.0) -> None:
        self._api_key, self._endpoint, self._timeout = api_key, endpoint, timeout

    def __call__(self, request: ks.FetchRequest) -> ks.FetchResult:
        pages = int(request.params.get("pages", 1) or 1)
        now = datetime.now(UTC)
        results: list[dict[str, Any]] = []
        scraped = 0
        for page in range(1, pages + 1):
            query = {
                "engine": "ebay_search",
                "q": request.query,
                "filters": "sold_listings",
                "page": page,
                "api_key": self._api_key,
            }
            if request.params.get("sort_by"):
                query["sort_by"] = str(request.params["sort_by"])
            url = f"{self._endpoint}?{urllib.parse.urlencode(query)}"
            with urllib.request.urlopen(url, timeout=self._timeout) as response:
                found = json.load(response).get("organic_results") or []
            scraped += 1
            results.extend(found)
            if not found:
                break
        return ks.FetchResult(listings=listings_from_page(results, now=now), pages_scraped=scraped)
