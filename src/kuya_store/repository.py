"""``CompsRepository``: the tiered read path and what it writes back.

Order of tiers: in-process near-cache -> hot tier (Redis, or in-process memory) ->
database, when its newest fetch is fresh -> the fetcher. A hit fills every tier above
it; every call, hits included, adds one row to the search log, written behind.

A result's snapshot values exactly the listings it is answered with: the upstream
fetch's own valuation when no filter hides any, else a valuation of the filtered
listings (memoised per result and filter combination).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from cachetools import LRUCache, TTLCache

from kuya_store.clock import Clock
from kuya_store.db.engine import outage_as_unavailable
from kuya_store.errors import (
    FetcherError,
    InvalidInputError,
    NotFoundError,
    StoreClosedError,
)
from kuya_store.fetching import FetchCoordinator, Fetcher
from kuya_store.freshness import is_fresh, remaining
from kuya_store.keys import (
    ResultIdentity,
    is_encodable,
    validate_filters,
    validate_params,
    validate_query,
    validate_search_type,
    validate_user_id,
)
from kuya_store.metrics import Metrics
from kuya_store.models import (
    CompsResult,
    FetchRequest,
    Invalidation,
    Listing,
    Params,
    PriceSnapshot,
    SearchFilters,
    SearchType,
    Source,
)
from kuya_store.persistence import Database, FetchRecord, SearchRecord, listing_ttl
from kuya_store.pricing import Valuator, apply_filters
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers import HotTier, TierUnavailableError
from kuya_store.tiers.database import DatabaseTier, value_result
from kuya_store.tiers.near import NearCache, Ticket
from kuya_store.writer import WriteBehind

__all__ = ["CompsRepository", "Fetcher"]

_log = logging.getLogger("kuya_store.repository")
_NO_FILTERS = SearchFilters()


class _Asked(NamedTuple):
    text: str
    kind: SearchType
    wanted: SearchFilters
    options: Params
    card: str
    identity: ResultIdentity


class CompsRepository:
    """The tiered read/write path for card searches (``store.comps``)."""

    def __init__(
        self,
        *,
        settings: StoreSettings,
        clock: Clock,
        metrics: Metrics,
        hot: HotTier,
        near: NearCache | None,
        database: Database | None,
        writer: WriteBehind | None,
        fetchers: Mapping[SearchType, Fetcher],
        valuator: Valuator,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._hot = hot
        self._near = near
        self._database = database
        self._writer = writer
        self._fetchers = dict(fetchers)
        self._valuator = valuator
        self._reads_database = settings.mode == "read_through" and database is not None
        self._fetching = FetchCoordinator(
            settings=settings,
            clock=clock,
            metrics=metrics,
            hot=hot,
            fill=self._fill,
            valuator=valuator,
        )
        self._db = (
            DatabaseTier(database, settings, metrics, valuator) if database is not None else None
        )
        # When each card was last invalidated here: nothing fetched before it may answer,
        # fill a tier or be stored as a result, whichever tier or buffer it comes from.
        self._fences: TTLCache[str, datetime] = TTLCache(
            maxsize=100_000, ttl=settings.max_stale.total_seconds(), timer=self._timer
        )
        self._valued: LRUCache[tuple[str, datetime, SearchFilters], PriceSnapshot] = LRUCache(
            maxsize=4096
        )
        # The cards of fetches queued lately, by card key: what another worker's
        # invalidation (known by its card key) must detach from the write buffer.
        self._queued_cards: LRUCache[str, tuple[str, SearchType]] = LRUCache(maxsize=4096)
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    def _timer(self) -> float:
        return self._clock().timestamp()

    def _ask(self, query: object, search_type: object, filters: object, params: object) -> _Asked:
        """Validate what a search asks for, and name the stored result that answers it."""
        text = validate_query(query)
        kind = validate_search_type(search_type)
        wanted = validate_filters(filters)
        options = validate_params(params)
        upstream = wanted if self._settings.filter_upstream else None
        # The card a query names, plus its operators: "Ohtani -auto" is the card "ohtani",
        # but never shares a stored result with "Ohtani" or "Ohtani auto".
        identity = ResultIdentity.of_query(text, kind, options, upstream)
        return _Asked(text, kind, wanted, options, identity.card_identifier, identity)

    def register_fetcher(self, search_type: SearchType | str, fetcher: Fetcher) -> None:
        """Set the fetcher that answers misses of one search type."""
        self._fetchers[validate_search_type(search_type)] = fetcher

    async def search(
        self,
        query: str,
        search_type: SearchType | str = SearchType.SOLD,
        filters: SearchFilters | Mapping[str, bool] | None = None,
        params: Params | None = None,
        fetcher: Fetcher | None = None,
        *,
        user_id: int | None = None,
        refresh: bool = False,
        record: bool = True,
    ) -> CompsResult:
        """Answer a search from the first tier that holds a fresh result.

        Args:
            query: the card as the user typed it; case, spacing and abbreviations fold.
            search_type: ``"sold"`` or ``"active"``.
            filters: applied to listing titles, so one fetch serves every combination.
            params: upstream options handed to the fetcher; part of the result's identity.
            fetcher: overrides the registered fetcher for this call.
            user_id: recorded on the search-log row.
            refresh: fetch upstream even when a fresh result is stored (still one call
                for every concurrent search of the same result).
            record: ``False`` answers without adding a search-log row; a result fetched
                upstream is still kept, since it was paid for.

        Raises:
            InvalidInputError: bad input, or a fetcher that returned invalid data.
            FetcherError: the fetcher failed and no stored result may stand in.
            StoreClosedError: the store was closed.
        """
        if self._closed:
            raise StoreClosedError("the store is closed")
        started = time.perf_counter()
        asked = self._ask(query, search_type, filters, params)
        user = validate_user_id(user_id)
        if not isinstance(refresh, bool):
            raise InvalidInputError("refresh", "must be a boolean")
        if not isinstance(record, bool):
            raise InvalidInputError("record", "must be a boolean")
        self._active += 1
        self._idle.clear()
        try:
            return await self._search(asked, fetcher, user, refresh, record, started)
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _search(
        self,
        asked: _Asked,
        fetcher: Fetcher | None,
        user: int | None,
        refresh: bool,
        record: bool,
        started: float,
    ) -> CompsResult:
        text, kind, wanted, options, card, identity = asked
        now = self._clock()
        stored, source = (None, None) if refresh else await self._lookup(identity, now)
        paid = False
        if stored is None:
            chosen = fetcher or self._fetchers.get(kind)
            if chosen is None:
                raise FetcherError(f"no fetcher registered for {kind.value!r} searches")
            request = FetchRequest(
                query=text,
                search_type=kind,
                filters=wanted if self._settings.filter_upstream else SearchFilters(),
                params=options,
            )

            def on_fetched(result: StoredResult) -> None:
                self._persist(asked, user, result, started)

            try:
                stored, source, paid = await self._fetching.fetch(
                    identity,
                    request,
                    chosen,
                    on_fetched=on_fetched,
                    newer_than=now if refresh else None,
                )
            except FetcherError:
                stored = await self._stale(identity, now)
                if stored is None:
                    raise
                source = Source.STALE

        listings = self._filtered(stored, wanted)
        snapshot = self._snapshot(identity, stored, wanted, listings)
        elapsed = (time.perf_counter() - started) * 1000
        self._metrics.incr("searches")
        self._metrics.observe("search", elapsed)
        if not paid:
            if source is not Source.STALE:
                self._metrics.incr("api_calls_saved")
            if record and self._writer is not None:
                self._submit(
                    SearchRecord(
                        query=text,
                        card_identifier=card,
                        search_type=kind,
                        filters=wanted.as_dict(),
                        params=options,
                        created_at=now,
                        execution_time_ms=int(elapsed),
                        cache_hit=True,
                        pages_scraped=stored.pages_scraped,
                        items_count=len(listings),
                        user_id=user,
                    )
                )
        assert source is not None
        return CompsResult(
            query=text,
            card_identifier=card,
            search_type=kind,
            filters=wanted,
            params=options,
            listings=listings,
            source=source,
            fetched_at=stored.fetched_at,
            cache_hit=not paid,
            snapshot=snapshot,
            pages_scraped=stored.pages_scraped,
            execution_time_ms=int(elapsed),
        )

    def _filtered(self, stored: StoredResult, wanted: SearchFilters) -> list[Listing]:
        if self._settings.filter_upstream:
            return stored.listings
        return apply_filters(stored.listings, wanted)

    def _snapshot(
        self,
        identity: ResultIdentity,
        stored: StoredResult,
        wanted: SearchFilters,
        listings: list[Listing],
    ) -> PriceSnapshot | None:
        """The valuation of exactly ``listings`` (what this answer shows)."""
        if identity.search_type is not SearchType.SOLD:
            return None
        if stored.snapshot is not None and len(listings) == len(stored.listings):
            return stored.snapshot  # nothing hidden: the fetch's own valuation
        key = (identity.result_key, stored.fetched_at, wanted)
        snapshot = self._valued.get(key)
        if snapshot is None:
            snapshot = value_result(self._valuator, stored, listings).snapshot
            assert snapshot is not None
            self._valued[key] = snapshot
        return snapshot

    def _fenced(self, identity: ResultIdentity, fetched_at: datetime) -> bool:
        """Whether data fetched at ``fetched_at`` predates an invalidation of its card."""
        fence = self._fences.get(identity.card_key)
        return fence is not None and fetched_at <= fence

    def _usable(
        self, identity: ResultIdentity, hit: StoredResult, now: datetime, window: timedelta
    ) -> bool:
        return is_fresh(hit.fetched_at, now, window) and not self._fenced(identity, hit.fetched_at)

    async def _lookup(
        self, identity: ResultIdentity, now: datetime, count: bool = True
    ) -> tuple[StoredResult | None, Source | None]:
        incr = self._metrics.incr if count else (lambda name, amount=1: None)
        ttl = self._settings.hot_ttl(identity.search_type)
        if self._near is not None:
            hit = await self._near.get(identity)
            if hit is not None and self._usable(identity, hit, now, ttl):
                incr("hit_memory")
                return hit, Source.MEMORY
        # Taken before the read: a change heard meanwhile keeps what it read out of the near-cache.
        ticket = self._near.ticket(identity) if self._near is not None else None
        hit = await self._hot.get(identity)
        if hit is not None and self._usable(identity, hit, now, ttl):
            incr(f"hit_{self._hot.name}")
            await self._fill_near(identity, hit, now, ticket)
            return hit, Source(self._hot.name)
        if self._reads_database:
            window = self._settings.fresh_for(identity.search_type)
            assert self._db is not None
            hit = await self._db.newest(identity, since=now - window)
            if hit is not None and self._usable(identity, hit, now, window):
                await self._fill(identity, hit, now)
                # Filling the hot tier may reveal another worker's invalidation of it.
                if not self._fenced(identity, hit.fetched_at):
                    incr("hit_database")
                    return hit, Source.DATABASE
        incr("misses")
        return None, None

    async def _stale(self, identity: ResultIdentity, now: datetime) -> StoredResult | None:
        """When the fetcher failed: the newest stored result up to ``max_stale`` old."""
        if not self._reads_database:
            return None
        assert self._db is not None
        stale = await self._db.newest(identity, since=now - self._settings.max_stale)
        if stale is None or self._fenced(identity, stale.fetched_at):
            return None
        self._metrics.incr("hit_stale")
        return stale

    async def _fill_near(
        self, identity: ResultIdentity, result: StoredResult, now: datetime, ticket: Ticket | None
    ) -> None:
        if self._near is not None and not self._fenced(identity, result.fetched_at):
            # The near-cache caps this at near_cache_ttl unless it is kept coherent.
            ttl = remaining(result.fetched_at, now, self._settings.hot_ttl(identity.search_type))
            await self._near.set(identity, result, ttl, ticket)

    async def _fill(self, identity: ResultIdentity, result: StoredResult, now: datetime) -> None:
        if self._fenced(identity, result.fetched_at):
            return
        ttl = remaining(result.fetched_at, now, self._settings.hot_ttl(identity.search_type))
        ticket = self._near.ticket(identity) if self._near is not None else None
        if await self._hot.set(identity, result, ttl):  # refused: newer data or an invalidation
            await self._fill_near(identity, result, now, ticket)

    def learn_fence(self, card_key: str, at: datetime) -> None:
        """Another worker invalidated this card at ``at``: refuse what was fetched before."""
        held = self._fences.get(card_key)
        if held is None or at > held:
            self._fences[card_key] = at
            card = self._queued_cards.get(card_key)
            if card is not None and self._writer is not None:
                # Fetches of it still in this worker's buffer are kept as history only.
                self._writer.detach(*card)

    def _submit(self, record: SearchRecord | FetchRecord) -> None:
        assert self._writer is not None
        if not self._writer.submit(record) and self._closed:
            raise StoreClosedError("the store closed before this search could be recorded")

    def _persist(
        self, asked: _Asked, user: int | None, stored: StoredResult, started: float
    ) -> None:
        """Queue a paid fetch with its search-log row (run by the flight that fetched it)."""
        if self._writer is None:
            return
        text, kind, wanted, options, card, identity = asked
        fenced = self._fenced(identity, stored.fetched_at)
        self._queued_cards[identity.card_key] = (card, kind)
        record = SearchRecord(
            query=text,
            card_identifier=card,
            search_type=kind,
            filters=wanted.as_dict(),
            params=options,
            created_at=stored.fetched_at,
            execution_time_ms=int((time.perf_counter() - started) * 1000),
            cache_hit=False,
            pages_scraped=stored.pages_scraped,
            items_count=len(self._filtered(stored, wanted)),
            user_id=user,
            result_key=None if fenced else identity.result_key,
            fetch_stats=stored.stats.as_dict() if stored.stats is not None else None,
        )
        self._submit(
            FetchRecord(
                search=record,
                result=stored.without_extra(),
                listing_ttl=listing_ttl(self._settings, kind, stored.fetched_at),
                snapshot=stored.snapshot,
            )
        )

    async def peek(
        self,
        query: str,
        search_type: SearchType | str = SearchType.SOLD,
        filters: SearchFilters | Mapping[str, bool] | None = None,
        params: Params | None = None,
    ) -> CompsResult | None:
        """The newest stored answer, without calling the fetcher or logging a search.

        Fresh results come back as from :meth:`search`; an older stored one (up to
        ``max_stale``) comes back with ``source="stale"``; ``None`` when nothing is stored.
        """
        _, kind, wanted, options, card, identity = asked = self._ask(
            query, search_type, filters, params
        )
        now = self._clock()
        stored, source = await self._lookup(identity, now, count=False)
        if stored is None and self._reads_database:
            assert self._db is not None
            stored = await self._db.newest(identity, since=now - self._settings.max_stale)
            if stored is not None and self._fenced(identity, stored.fetched_at):
                stored = None
            source = Source.STALE
        if stored is None or source is None:
            return None
        listings = self._filtered(stored, wanted)
        return CompsResult(
            query=asked.text,
            card_identifier=card,
            search_type=kind,
            filters=wanted,
            params=options,
            listings=listings,
            source=source,
            fetched_at=stored.fetched_at,
            cache_hit=True,
            snapshot=self._snapshot(identity, stored, wanted, listings),
            pages_scraped=stored.pages_scraped,
        )

    async def invalidate(self, query: str, search_type: SearchType | str) -> Invalidation:
        """Forget every stored result of this card and search type, in every tier.

        The database keeps its rows (history is never lost) but they no longer answer.
        Nothing fetched before this call (a fetch in flight, a buffered write) can bring
        the result back afterwards. The returned :class:`Invalidation` says whether every
        tier was reached; one that was not is logged.
        """
        text = validate_query(query)
        kind = validate_search_type(search_type)
        identity = ResultIdentity.of_query(text, kind, {})  # every variant shares its card_key
        at = self._clock()
        self._fences[identity.card_key] = at
        if self._near is not None:
            await self._near.invalidate(identity, at)
        hot_ok = True
        try:
            await self._hot.invalidate(identity, at)
        except TierUnavailableError:
            hot_ok = False
        database_ok: bool | None = None
        if self._db is not None:
            if self._writer is not None:
                # Fetches still waiting in the buffer are kept as history, not as results.
                self._writer.detach(identity.card_identifier, kind)
            database_ok = await self._db.detach(identity, before=at)
        report = Invalidation(hot_tier=hot_ok, database=database_ok)
        if not report.complete:
            self._metrics.incr("invalidations_incomplete")
            _log.warning(
                "invalidate(%r, %r) did not reach every tier: hot tier %s, database %s",
                identity.card_identifier,
                kind.value,
                "ok" if hot_ok else "unreachable",
                "ok" if database_ok else "unreachable",
            )
        return report

    async def close(self, timeout: float) -> None:
        """Refuse new searches, let those under way finish (up to ``timeout`` s)."""
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            _log.warning("closing with %d searches still running", self._active)
        cancelled = await self._fetching.close(max(deadline - time.monotonic(), 0.0))
        if cancelled:
            self._metrics.incr("fetches_cancelled_on_close", cancelled)
            _log.warning("closing: %d upstream fetches were cancelled", cancelled)

    async def get_listing(self, item_id: str) -> Listing:
        """The stored metadata of one listing; ``NotFoundError`` if it was never seen."""
        if not isinstance(item_id, str) or not 1 <= len(item_id) <= 50 or "\x00" in item_id:
            raise InvalidInputError("item_id", "must be a string of 1 to 50 characters")
        if not is_encodable(item_id):
            raise InvalidInputError("item_id", "must be valid Unicode text")
        listing = None
        if self._database is not None:
            with outage_as_unavailable("stored listings are read from the database"):
                listing = await self._database.get_listing(item_id)
        if listing is None:
            raise NotFoundError(f"no stored listing with item_id {item_id!r}")
        return listing

    async def listings_due_for_refresh(self, limit: int = 100) -> list[Listing]:
        """Stored listings whose ``listing_cache.ttl`` has passed, the most overdue first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidInputError("limit", "must be an integer from 1 to 10000")
        if self._database is None:
            return []
        with outage_as_unavailable("stored listings are read from the database"):
            return await self._database.listings_due_for_refresh(self._clock(), limit)

    def describe(self) -> dict[str, Any]:
        """Which tiers this repository reads, for diagnostics."""
        return {
            "near_cache": self._near is not None,
            "hot_tier": self._hot.name,
            "reads_database": self._reads_database,
            "writes_database": self._writer is not None,
            "fetchers": sorted(kind.value for kind in self._fetchers),
        }
