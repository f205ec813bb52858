"""``CompsRepository``: the tiered read path and what it writes back.

Order of tiers: in-process near-cache -> hot tier (Redis, or in-process memory) ->
database, when its newest fetch is fresh -> the fetcher. A hit fills every tier above
it; every call, hits included, adds one row to the search log, written behind.

This class only orders the steps of a search; each step has its own module:

- :mod:`~kuya_store.asking`: the arguments validated, and the levels that may answer;
- :mod:`~kuya_store.lookup`: the tier order for one level, and the fills above a hit;
- :mod:`~kuya_store.miss_path`: the upstream answer, with stored results as fallback;
- :mod:`~kuya_store.answer_snapshots`: the valuation of exactly what an answer shows;
- :mod:`~kuya_store.recording`: the search-log rows and paid fetches written behind;
- :mod:`~kuya_store.fences` and :mod:`~kuya_store.freshness`: when a copy may answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kuya_store import tracing
from kuya_store.answer_snapshots import AnswerSnapshots
from kuya_store.answering import Level
from kuya_store.asking import Asked, AskedSearches
from kuya_store.budget import ApiBudget
from kuya_store.built_models import tier_answer
from kuya_store.clock import Clock
from kuya_store.db.engine import outage_as_unavailable
from kuya_store.errors import (
    FetcherError,
    InvalidInputError,
    NotFoundError,
    StoreClosedError,
)
from kuya_store.fences import Fences
from kuya_store.fetching import FetchCoordinator, Fetcher
from kuya_store.freshness import FreshnessPolicy, fresh_until
from kuya_store.keys import (
    ResultIdentity,
    is_encodable,
    validate_query,
    validate_search_type,
    validate_user_id,
)
from kuya_store.logs import answered_by, fields_of, get_logger, searching
from kuya_store.lookup import TierLookup
from kuya_store.metrics import Metrics
from kuya_store.miss_path import MissPath
from kuya_store.models import (
    CompsResult,
    Invalidation,
    Listing,
    Params,
    PriceSnapshot,
    SearchFilters,
    SearchType,
    Source,
)
from kuya_store.observing import watch_search
from kuya_store.persistence import Database
from kuya_store.pricing import Valuator
from kuya_store.recording import SearchLog, hit_record
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers import HotTier, TierUnavailableError
from kuya_store.tiers.database import DatabaseTier
from kuya_store.tiers.display import DisplayStore, answer_complete
from kuya_store.tiers.near import NearCache
from kuya_store.writer import WriteBehind

__all__ = ["CompsRepository", "Fetcher"]

_log = get_logger("kuya_store.repository")


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
        policy: FreshnessPolicy,
        budget: ApiBudget,
        display: DisplayStore,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._hot = hot
        self._near = near
        self._database = database
        self._writer = writer
        self._fetchers = dict(fetchers)
        self.budget = budget
        self._reads_database = settings.mode == "read_through" and database is not None
        self._db = (
            DatabaseTier(database, settings, metrics, valuator, policy, display)
            if database is not None
            else None
        )
        self._fences = Fences(settings.max_stale, self._timer)
        self._tiers = TierLookup(
            settings=settings,
            metrics=metrics,
            hot=hot,
            near=near,
            database=self._db,
            reads_database=self._reads_database,
            fences=self._fences,
            display=display,
        )
        self._fetching = FetchCoordinator(
            settings=settings,
            clock=clock,
            metrics=metrics,
            hot=hot,
            fill=self._tiers.fill_fetched,
            valuator=valuator,
            policy=policy,
            budget=budget,
        )
        self._asks = AskedSearches(filter_upstream=settings.filter_upstream)
        self._snapshots = AnswerSnapshots(valuator)
        self._search_log = SearchLog(writer, self._fences, settings, lambda: self._closed)
        self._misses = MissPath(
            fetching=self._fetching, tiers=self._tiers, metrics=metrics, search_log=self._search_log
        )
        if writer is not None:
            writer.fenced = self._fences.record_fenced
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    def _timer(self) -> float:
        return self._clock().timestamp()

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
        asked = self._asks.of(query, search_type, filters, params)
        user = validate_user_id(user_id)
        if not isinstance(refresh, bool):
            raise InvalidInputError("refresh", "must be a boolean")
        if not isinstance(record, bool):
            raise InvalidInputError("record", "must be a boolean")
        self._active += 1
        self._idle.clear()
        try:
            with (
                # str() of a StrEnum is its value, without the enum's property lookups.
                searching(asked.card, str(asked.kind)),
                watch_search(self._metrics, asked.card, asked.kind) as watch,
            ):
                result = await self._search(
                    asked, fetcher, user, refresh, record, started, watch.traced
                )
                if self._writer is not None:
                    # What this search logged or fetched is on the journal before it returns.
                    await self._writer.durable()
                watch.answered(result)
                return result
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _search(
        self,
        asked: Asked,
        fetcher: Fetcher | None,
        user: int | None,
        refresh: bool,
        record: bool,
        started: float,
        traced: bool,
    ) -> CompsResult:
        kind, chain = asked.kind, asked.chain
        now = self._clock()
        found = await self._tiers.first_answer(chain, now, refresh, traced)
        level, stored, source, known = found
        paid = False
        if stored is None:
            chosen = fetcher or self._fetchers.get(kind)
            if chosen is None:
                raise FetcherError(f"no fetcher registered for {kind.value!r} searches")
            level, stored, source, paid = await self._misses.answer(
                asked, chain, known, chosen, user, started, now, refresh
            )
        assert level is not None
        assert source is not None
        answered_by(str(source))
        listings = level.listings(stored)
        snapshot = self._snapshots.of(level, stored, listings)
        elapsed = (time.perf_counter() - started) * 1000
        if not paid:
            if source is not Source.STALE:
                self._metrics.incr("api_calls_saved")
            if record and self._writer is not None:
                row = hit_record(
                    asked, stored, len(listings), now, int(elapsed), user, tracing.current()
                )
                self._search_log.submit(row)
        return self._answer(asked, stored, source, listings, snapshot, not paid, int(elapsed))

    def _answer(
        self,
        asked: Asked,
        stored: StoredResult,
        source: Source,
        listings: list[Listing],
        snapshot: PriceSnapshot | None,
        cache_hit: bool,
        elapsed_ms: int | None = None,
    ) -> CompsResult:
        """The answer ``stored`` gives: exactly the ``listings`` it shows, and their value."""
        return tier_answer(
            query=asked.text,
            card_identifier=asked.card,
            search_type=asked.kind,
            filters=asked.wanted,
            params=asked.options,
            listings=listings,
            source=source,
            fetched_at=stored.fetched_at,
            cache_hit=cache_hit,
            snapshot=snapshot,
            pages_scraped=stored.pages_scraped,
            complete=stored.complete is True,
            fresh_until=fresh_until(stored, self._settings.fresh_for(stored.search_type)),
            display_complete=answer_complete(stored, listings),
            execution_time_ms=elapsed_ms,
        )

    async def _fill(self, identity: ResultIdentity, result: StoredResult, now: datetime) -> None:
        """Fill the hot tiers with ``result`` as a database hit does (nothing once fenced)."""
        await self._tiers.fill(identity, result, now)

    def learn_fence(self, card_key: str, at: datetime) -> None:
        """Another worker invalidated this card at ``at``: refuse what was fetched before."""
        if self._fences.learn(card_key, at):
            self._search_log.detach_queued(card_key)

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
        asked = self._asks.of(query, search_type, filters, params)
        now = self._clock()
        answer: tuple[Level, StoredResult, Source] | None = None
        for level in asked.chain:
            hit, source, stale = await self._tiers.lookup(level.identity, now, count=False)
            if hit is not None and source is not None and level.answers(hit):
                answer = (level, hit, source)
                break
            if answer is None and stale is not None and level.answers(stale):
                answer = (level, stale, Source.STALE)
        if answer is None:
            return None
        level, stored, source = answer
        listings = level.listings(stored)
        snapshot = self._snapshots.of(level, stored, listings)
        return self._answer(asked, stored, source, listings, snapshot, True)

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
        self._fences.put(identity.card_key, at)
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
                extra=fields_of(identity.card_identifier, kind.value),
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
