"""An offline marketplace with realistic, deterministic listings, for demos, examples and tests.

``FakeMarketplace`` answers any card query with plausible sold and active listings
(raw and graded copies, parallels, autographs, the odd lot) and counts its calls, so an
application can run, and show what the store saves, without a paid API key.
``demo_settings`` is what ``kuya-store demo`` runs on: its own SQLite file unless told.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import orjson
from pydantic import BaseModel
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from kuya_store.clock import Clock, utcnow
from kuya_store.models import CompsResult, FetchRequest, FetchResult, Listing, SearchType
from kuya_store.settings import StoreSettings

__all__ = [
    "DEMO_DATABASE_URL",
    "FakeMarketplace",
    "demo_settings",
    "with_links",
    "with_links_json",
]

DEMO_DATABASE_URL = "sqlite+aiosqlite:///./kuya-demo.db"
"""Where the demo writes when no database is named: a file of its own, never the app's."""


class _ArgumentsOnly(StoreSettings):
    """Settings from arguments alone: ``KUYA_*``, ``DATABASE_URL`` and ``REDIS_URL`` ignored."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def demo_settings(database_url: str | None = None, **overrides: Any) -> StoreSettings:
    """Settings for a demo run: demo data goes only where it is sent explicitly.

    The environment is not read at all, so a shell that points ``KUYA_DATABASE_URL`` (or
    ``KUYA_REDIS_URL``) at an application's data never gets demo rows written into it.
    """
    return _ArgumentsOnly(database_url=database_url or DEMO_DATABASE_URL, **overrides)


_VARIANTS: tuple[tuple[str, float, float], ...] = (
    # (title suffix, price multiplier, weight)
    ("", 1.0, 10),
    ("RC Rookie", 1.05, 4),
    ("PSA 10 GEM MINT", 3.2, 3),
    ("PSA 9 MINT", 1.6, 3),
    ("BGS 9.5 Gem Mint", 2.4, 2),
    ("SGC 10", 2.6, 1),
    ("Silver Prizm", 2.0, 2),
    ("Gold Refractor /50", 6.0, 1),
    ("Auto On-Card", 5.5, 1),
    ("Lot of 3", 2.7, 1),
)
_CONDITIONS = ("Ungraded", "Near Mint or Better", "Graded", "Excellent")


class FakeMarketplace:
    """A stand-in for a sold-listings API and a browse API.

    Args:
        listings: how many listings each search returns.
        latency: seconds each call takes, to show what a cache saves.
        clock: the moment listings are dated from.
    """

    def __init__(self, listings: int = 40, latency: float = 0.0, clock: Clock = utcnow) -> None:
        self.listings = listings
        self.latency = latency
        self._clock = clock
        self.calls: list[FetchRequest] = []

    @property
    def call_count(self) -> int:
        """How many upstream calls were made: each one would have cost money."""
        return len(self.calls)

    async def sold(self, request: FetchRequest) -> FetchResult:
        """The sold-listings fetcher."""
        return await self._search(request, sold=True)

    async def active(self, request: FetchRequest) -> FetchResult:
        """The active-listings fetcher."""
        return await self._search(request, sold=False)

    async def __call__(self, request: FetchRequest) -> FetchResult:
        return await self._search(request, sold=request.search_type is SearchType.SOLD)

    async def _search(self, request: FetchRequest, sold: bool) -> FetchResult:
        self.calls.append(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        seed = int.from_bytes(hashlib.sha256(request.query.lower().encode()).digest()[:8], "big")
        rng = random.Random(seed ^ (1 if sold else 2))
        base = 5 + (seed % 9500) / 100  # a card worth $5 to $100 raw
        now = self._clock().astimezone(UTC)
        pages = int(request.params.get("pages", 1) or 1) if request.params else 1
        count = min(self.listings * max(pages, 1), 500)
        suffixes = [v[0] for v in _VARIANTS]
        weights = [v[2] for v in _VARIANTS]
        factors = {v[0]: v[1] for v in _VARIANTS}
        out: list[Listing] = []
        for index in range(count):
            suffix = rng.choices(suffixes, weights)[0]
            noise = rng.lognormvariate(0, 0.18)
            price = Decimal(str(round(base * factors[suffix] * noise, 2)))
            auction = rng.random() < 0.55
            item = f"{'S' if sold else 'A'}{seed % 10**9:09d}{index:04d}"
            out.append(
                Listing(
                    item_id=item,
                    title=f"{request.query} {suffix}".strip(),
                    price=price,
                    listing_type="auction" if auction else "buy_it_now",
                    condition=rng.choice(_CONDITIONS),
                    sold=sold,
                    sold_date=_sold_date(now, rng) if sold else None,
                    bids=rng.randint(1, 35) if auction else None,
                    watchers=rng.randint(0, 60),
                    extra={
                        "link": f"https://marketplace.example/itm/{item}",
                        "thumbnail": f"https://img.marketplace.example/{item}.jpg",
                        "seller": f"seller{rng.randint(100, 999)}",
                    },
                )
            )
        return FetchResult(listings=out, pages_scraped=pages)


def _sold_date(now: datetime, rng: random.Random) -> datetime:
    return now - timedelta(days=rng.uniform(0, 45), seconds=rng.randint(0, 3600))


def with_links(result: CompsResult, link: str) -> dict[str, Any]:
    """The answer as JSON, every listing with a link: its own, else ``link`` with its id.

    Display data (``extra``) lives only for ``display_ttl`` (the marketplace terms), and
    without Redis only as long as the process: an answer read back from the database
    without it says ``display_complete: false``, and a page degrades to what ``item_id``
    alone can give. ``link`` is a pattern such as ``"https://www.ebay.com/itm/{item_id}"``.
    """
    body = result.model_dump(mode="json")
    if not result.display_complete:
        for listing in body["listings"]:
            if "link" not in listing["extra"]:
                listing["extra"]["link"] = link.format(item_id=quote(listing["item_id"], safe=""))
    return body


def with_links_json(result: CompsResult, link: str) -> bytes:
    """:func:`with_links` as JSON bytes, encoded in one pass: what a web route sends as is.

    The same document as ``json.dumps(with_links(result, link))`` (money as strings,
    moments as ISO 8601), without building the dictionaries of every listing first and
    having the framework walk them again; on a hit that walk costs more than the search.
    """
    missing = None if result.display_complete else link

    def member(value: Any) -> Any:
        if type(value) is Listing:
            fields = dict(value.__dict__)
            fields["price"] = f"{value.price:.2f}"
            if missing is not None and "link" not in value.extra:
                item = quote(value.item_id, safe="")
                fields["extra"] = {**value.extra, "link": missing.format(item_id=item)}
            return fields
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        raise TypeError(type(value).__name__)

    try:
        return orjson.dumps(result.__dict__, default=member, option=orjson.OPT_UTC_Z)
    except TypeError:  # what orjson refuses (an integer beyond 64 bits in ``extra``)
        return json.dumps(with_links(result, link), separators=(",", ":")).encode()
