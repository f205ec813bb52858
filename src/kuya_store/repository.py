"""``CompsRepository``: the tiered read path and what it writes back.

Order of tiers: in-process near-cache -> hot tier (Redis, or in-process memory) ->
database, when its newest fetch is fresh -> the fetcher. A hit fills every tier above
it; every call, hits included, adds one row to the search log, written behind.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from kuya_store.breaker import CircuitBreaker
from kuya_store.clock import Clock
from kuya_store.db.engine import outage_as_unavailable
from kuya_store.errors import FetcherError, InvalidInputError, NotFoundError
from kuya_store.fetching import FetchCoordinator, Fetcher
from kuya_store.freshness import is_fresh, remaining
from kuya_store.keys import (
    ResultIdentity,
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
    Listing,
    Params,
    SearchFilters,
    SearchType,
    Source,
)
from kuya_store.persistence import Database, FetchRecord, SearchRecord, listing_ttl
from kuya_store.pricing import Valuator, apply_filters, normalize_card
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers import HotTier
from kuya_store.tiers.memory import MemoryTier
from kuya_store.writer import WriteBehind, is_transient

__all__ = ["CompsRepository", "Fetcher"]


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
        near: MemoryTier | None,
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
        self._reads_database = settings.mode == "read_through" and database is not None
        self._fetching = FetchCoordinator(
            settings=settings,
            clock=clock,
            metrics=metrics,
            hot=hot,
            fill=self._fill,
            valuator=valuator,
        )
        # A database that does not answer costs one failure per request until this opens.
        self._db_breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_reset_after.total_seconds(),
            on_open=lambda: metrics.incr("db_breaker_opens"),
        )

    def _ask(self, query: object, search_type: object, filters: object, params: object) -> _Asked:
        """Validate what a search asks for, and name the stored result that answers it."""
        text = validate_query(query)
        kind = validate_search_type(search_type)
        wanted = validate_filters(filters)
        options = validate_params(params)
        card = normalize_card(text)
        upstream = wanted if self._settings.filter_upstream else None
        return _Asked(
            text, kind, wanted, options, card, ResultIdentity.of(card, kind, options, upstream)
        )

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
    ) -> CompsResult:
        """Answer a search from the first tier that holds a fresh result.

        Args:
            query: the card as the user typed it; case, spacing and abbreviations fold.
            search_type: ``"sold"`` or ``"active"``.
            filters: applied to listing titles, so one fetch serves every combination.
            params: upstream options handed to the fetcher; part of the result's identity.
            fetcher: overrides the registered fetcher for this call.
            user_id: recorded on the search-log row.

        Raises:
            InvalidInputError: bad input, or a fetcher that returned invalid data.
            FetcherError: the fetcher failed and no stored result may stand in.
        """
        started = time.perf_counter()
        text, kind, wanted, options, card, identity = self._ask(query, search_type, filters, params)
        user = validate_user_id(user_id)
        upstream = self._settings.filter_upstream
        now = self._clock()

        stored, source = await self._lookup(identity, now)
        owner = False
        if stored is None:
            chosen = fetcher or self._fetchers.get(kind)
            if chosen is None:
                raise FetcherError(f"no fetcher registered for {kind.value!r} searches")
            request = FetchRequest(
                query=text,
                search_type=kind,
                filters=wanted if upstream else SearchFilters(),
                params=options,
            )
            try:
                stored, source, owner = await self._fetching.fetch(identity, request, chosen)
            except FetcherError:
                stored = await self._stale(identity, now)
                if stored is None:
                    raise
                source = Source.STALE

        listings = stored.listings if upstream else apply_filters(stored.listings, wanted)
        elapsed = (time.perf_counter() - started) * 1000
        self._metrics.incr("searches")
        self._metrics.observe("search", elapsed)
        record = SearchRecord(
            query=text,
            card_identifier=card,
            search_type=kind,
            filters=wanted.as_dict(),
            params=options,
            created_at=stored.fetched_at if owner else now,
            execution_time_ms=int(elapsed),
            cache_hit=not owner,
            pages_scraped=stored.pages_scraped,
            items_count=len(listings),
            user_id=user,
            result_key=identity.result_key if owner else None,
        )
        if owner:
            self._persist(record, stored)
        else:
            self._metrics.incr("api_calls_saved")
            if self._writer is not None:
                self._writer.submit(record)
        return CompsResult(
            query=text,
            card_identifier=card,
            search_type=kind,
            filters=wanted,
            params=options,
            listings=listings,
            source=source,
            fetched_at=stored.fetched_at,
            cache_hit=not owner,
            snapshot=stored.snapshot,
            pages_scraped=stored.pages_scraped,
            execution_time_ms=int(elapsed),
        )

    async def _lookup(
        self, identity: ResultIdentity, now: datetime, count: bool = True
    ) -> tuple[StoredResult | None, Source | None]:
        incr = self._metrics.incr if count else (lambda name, amount=1: None)
        ttl = self._settings.hot_ttl(identity.search_type)
        if self._near is not None:
            hit = await self._near.get(identity)
            if hit is not None and is_fresh(hit.fetched_at, now, ttl):
                incr("hit_memory")
                return hit, Source.MEMORY
        hit = await self._hot.get(identity)
        if hit is not None and is_fresh(hit.fetched_at, now, ttl):
            incr(f"hit_{self._hot.name}")
            await self._fill_near(identity, hit, now)
            return hit, Source(self._hot.name)
        if self._reads_database:
            window = self._settings.fresh_for(identity.search_type)
            hit = await self._read_database(identity, since=now - window)
            if hit is not None and is_fresh(hit.fetched_at, now, window):
                incr("hit_database")
                await self._fill(identity, hit, now)
                return hit, Source.DATABASE
        incr("misses")
        return None, None

    async def _read_database(
        self, identity: ResultIdentity, since: datetime
    ) -> StoredResult | None:
        """The newest stored fetch since ``since``; ``None`` when the database cannot say."""
        assert self._database is not None
        if not self._db_breaker.allow():
            self._metrics.incr("db_read_skipped")
            return None
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.db_retry_attempts),
            wait=wait_random_exponential(multiplier=0.02, max=0.2),
            retry=retry_if_exception(is_transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    result = await self._database.newest_result(identity, since)
        except Exception:
            self._db_breaker.failure()
            self._metrics.incr("db_read_errors")
            return None
        self._db_breaker.success()
        return result

    async def _stale(self, identity: ResultIdentity, now: datetime) -> StoredResult | None:
        """When the fetcher failed: the newest stored result up to ``max_stale`` old."""
        if not self._reads_database:
            return None
        stale = await self._read_database(identity, since=now - self._settings.max_stale)
        if stale is not None:
            self._metrics.incr("hit_stale")
        return stale

    async def _fill_near(
        self, identity: ResultIdentity, result: StoredResult, now: datetime
    ) -> None:
        if self._near is not None:
            ttl = remaining(result.fetched_at, now, self._settings.hot_ttl(identity.search_type))
            await self._near.set(identity, result, min(ttl, self._settings.near_cache_ttl))

    async def _fill(self, identity: ResultIdentity, result: StoredResult, now: datetime) -> None:
        ttl = remaining(result.fetched_at, now, self._settings.hot_ttl(identity.search_type))
        await self._hot.set(identity, result, ttl)
        await self._fill_near(identity, result, now)

    def _persist(self, record: SearchRecord, stored: StoredResult) -> None:
        if self._writer is None:
            return
        self._writer.submit(
            FetchRecord(
                search=record,
                result=stored.without_extra(),
                listing_ttl=listing_ttl(self._settings, record.search_type, stored.fetched_at),
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
        text, kind, wanted, options, card, identity = self._ask(query, search_type, filters, params)
        upstream = self._settings.filter_upstream
        now = self._clock()
        stored, source = await self._lookup(identity, now, count=False)
        if stored is None and self._reads_database:
            stored = await self._read_database(identity, since=now - self._settings.max_stale)
            source = Source.STALE
        if stored is None or source is None:
            return None
        return CompsResult(
            query=text,
            card_identifier=card,
            search_type=kind,
            filters=wanted,
            params=options,
            listings=stored.listings if upstream else apply_filters(stored.listings, wanted),
            source=source,
            fetched_at=stored.fetched_at,
            cache_hit=True,
            snapshot=stored.snapshot,
            pages_scraped=stored.pages_scraped,
        )

    async def invalidate(self, query: str, search_type: SearchType | str) -> None:
        """Forget every stored result of this card and search type, in every tier.

        The database keeps its rows (history is never lost) but they no longer answer.
        """
        text = validate_query(query)
        kind = validate_search_type(search_type)
        identity = ResultIdentity.of(normalize_card(text), kind, {})
        if self._near is not None:
            await self._near.invalidate(identity)
        await self._hot.invalidate(identity)
        if self._database is not None:
            if self._writer is not None:
                # A fetch still waiting in the buffer would bring the result back.
                await self._writer.flush(self._settings.db_command_timeout.total_seconds())
            await self._database.detach_results(identity)

    async def get_listing(self, item_id: str) -> Listing:
        """The stored metadata of one listing; ``NotFoundError`` if it was never seen."""
        if not isinstance(item_id, str) or not 1 <= len(item_id) <= 50 or "\x00" in item_id:
            raise InvalidInputError("item_id", "must be a string of 1 to 50 characters")
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
        }
