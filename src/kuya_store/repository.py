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
import time
from collections.abc import Hashable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from cachetools import LRUCache, TTLCache

from kuya_store import tracing
from kuya_store.answering import Level, levels, start_level
from kuya_store.budget import ApiBudget
from kuya_store.clock import Clock
from kuya_store.db.engine import outage_as_unavailable
from kuya_store.errors import (
    BudgetExhaustedError,
    FetcherError,
    InvalidInputError,
    NotFoundError,
    StoreClosedError,
)
from kuya_store.fetching import FetchCoordinator, Fetcher
from kuya_store.freshness import FreshnessPolicy, fresh_until
from kuya_store.keys import (
    ResultIdentity,
    is_encodable,
    validate_filters,
    validate_params,
    validate_query,
    validate_search_type,
    validate_user_id,
)
from kuya_store.logs import answered_by, fields_of, get_logger, searching
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
    checked_result,
)
from kuya_store.observing import watch_search, watch_tier
from kuya_store.paging import PagedFetcher
from kuya_store.persistence import Database, FetchRecord, SearchRecord, listing_ttl
from kuya_store.pricing import Valuator
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers import HotTier, TierUnavailableError
from kuya_store.tiers.database import DatabaseTier, value_result
from kuya_store.tiers.display import (
    DisplayStore,
    answer_complete,
    display_ttl_left,
    outlived,
)
from kuya_store.tiers.near import NearCache, Ticket
from kuya_store.writer import WriteBehind

__all__ = ["CompsRepository", "Fetcher"]

_log = get_logger("kuya_store.repository")
_NO_FILTERS = SearchFilters()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Asked(NamedTuple):
    text: str
    kind: SearchType
    wanted: SearchFilters
    options: Params
    card: str
    identity: ResultIdentity
    chain: Sequence[Level]


_SCALARS = (str, int, float, bool, type(None))


def _asked_key(
    query: object, search_type: object, filters: object, params: object
) -> Hashable | None:
    """A memo key for a search's arguments, or ``None`` when they are not plain values.

    Types are part of the key: ``1``, ``1.0`` and ``True`` are equal but not the same params.
    """
    if type(query) is not str or type(search_type) not in (str, SearchType):
        return None
    if filters is not None and type(filters) is not SearchFilters:
        return None
    options: tuple[tuple[object, type, object], ...] = ()
    if params is not None:
        if type(params) is not dict or not all(type(v) in _SCALARS for v in params.values()):
            return None
        options = tuple((k, type(v), v) for k, v in params.items())
    return (query, type(search_type), search_type, filters, options)


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
        self._display = display
        self._clock = clock
        self._metrics = metrics
        self._hot = hot
        self._near = near
        self._database = database
        self._writer = writer
        self._fetchers = dict(fetchers)
        self._valuator = valuator
        self._policy = policy
        self.budget = budget
        self._reads_database = settings.mode == "read_through" and database is not None
        self._fetching = FetchCoordinator(
            settings=settings,
            clock=clock,
            metrics=metrics,
            hot=hot,
            fill=self._fill_fetched,
            valuator=valuator,
            policy=policy,
            budget=budget,
        )
        self._db = (
            DatabaseTier(database, settings, metrics, valuator, policy, display)
            if database is not None
            else None
        )
        # When each card was last invalidated here: nothing fetched before it may answer,
        # fill a tier or be stored as a result, whichever tier or buffer it comes from.
        self._fences: TTLCache[str, datetime] = TTLCache(
            maxsize=100_000, ttl=settings.max_stale.total_seconds(), timer=self._timer
        )
        self._any_fence = False
        self._asked: LRUCache[Hashable, _Asked] = LRUCache(maxsize=4096)
        self._valued: LRUCache[
            tuple[str, datetime, SearchFilters, tuple[str, ...]], PriceSnapshot
        ] = LRUCache(maxsize=4096)
        # The cards of fetches queued lately, by card key: what another worker's
        # invalidation (known by its card key) must detach from the write buffer.
        self._queued_cards: LRUCache[str, tuple[str, SearchType]] = LRUCache(maxsize=4096)
        if writer is not None:
            writer.fenced = self._record_fenced
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    def _timer(self) -> float:
        return self._clock().timestamp()

    def _ask(self, query: object, search_type: object, filters: object, params: object) -> _Asked:
        """Validate what a search asks for, and name the stored result that answers it.

        Memoised for the plain values a web route passes, since the same searches recur.
        """
        key = _asked_key(query, search_type, filters, params)
        asked = self._asked.get(key) if key is not None else None
        if asked is None:
            asked = self._validate(query, search_type, filters, params)
            if key is not None:
                self._asked[key] = asked
        return asked

    def _validate(
        self, query: object, search_type: object, filters: object, params: object
    ) -> _Asked:
        text = validate_query(query)
        kind = validate_search_type(search_type)
        wanted = validate_filters(filters)
        options = validate_params(params)
        # The card a query names, plus its operators: "Ohtani -auto" is the card "ohtani",
        # but never shares a stored result with "Ohtani" or "Ohtani auto".
        chain = levels(text, kind, wanted, options, filter_upstream=self._settings.filter_upstream)
        identity = next(level.identity for level in chain if level.name == "exact")
        return _Asked(text, kind, wanted, options, identity.card_identifier, identity, tuple(chain))

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
            with (
                searching(asked.card, asked.kind.value),
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
        asked: _Asked,
        fetcher: Fetcher | None,
        user: int | None,
        refresh: bool,
        record: bool,
        started: float,
        traced: bool,
    ) -> CompsResult:
        text, kind, wanted, options, card, _, chain = asked
        now = self._clock()
        found = await self._answer_stored(chain, now, refresh, traced)
        level, stored, source, known = found
        paid = False
        if stored is None:
            chosen = fetcher or self._fetchers.get(kind)
            if chosen is None:
                raise FetcherError(f"no fetcher registered for {kind.value!r} searches")
            level, stored, source, paid = await self._answer_upstream(
                asked, chain, known, chosen, user, started, now, refresh
            )
        assert level is not None
        assert source is not None
        answered_by(source.value)
        listings = level.listings(stored)
        snapshot = self._snapshot(level, stored, listings)
        elapsed = (time.perf_counter() - started) * 1000
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
                        trace=tracing.current(),
                    )
                )
        return checked_result(
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
            complete=stored.complete is True,
            fresh_until=self._fresh_until(stored),
            display_complete=answer_complete(stored, listings),
        )

    async def _answer_stored(
        self, chain: Sequence[Level], now: datetime, refresh: bool, traced: bool
    ) -> tuple[Level | None, StoredResult | None, Source | None, list[StoredResult | None]]:
        """The first level with a fresh result that answers; else what each level holds."""
        known: list[StoredResult | None] = []
        for level in chain:
            hit, source, stale = await self._lookup(level.identity, now, traced=traced)
            if hit is not None and not refresh and level.answers(hit):
                return level, hit, source, known
            known.append(hit or stale)
        return None, None, None, known

    async def _answer_upstream(
        self,
        asked: _Asked,
        chain: Sequence[Level],
        known: list[StoredResult | None],
        fetcher: Fetcher,
        user: int | None,
        started: float,
        now: datetime,
        refresh: bool,
    ) -> tuple[Level, StoredResult, Source, bool]:
        """Fetch the broadest level not known to be cut off, narrower if it cannot answer."""
        kind = asked.kind
        first = start_level(chain, known, paged=isinstance(fetcher, PagedFetcher))
        for index in range(first, len(chain)):
            level = chain[index]
            stale = known[index]
            request = FetchRequest(
                query=level.query,
                search_type=kind,
                filters=level.upstream_filters,
                params=asked.options,
            )

            answered_by(Source.API.value)  # what the flight logs is about the fetcher

            def on_fetched(result: StoredResult, level: Level = level) -> None:
                self._persist(asked, level, user, result, started)

            try:
                stored, source, paid = await self._fetching.fetch(
                    level.identity,
                    request,
                    fetcher,
                    on_fetched=on_fetched,
                    newer_than=now if refresh else None,
                    stale=stale,
                )
            except BudgetExhaustedError:
                fallback = await self._stale(level.identity, now, any_age=True) or stale
                if fallback is None:
                    raise
                return level, fallback, Source.STALE, False
            except FetcherError:
                fallback = await self._stale(level.identity, now)
                if fallback is None:
                    raise
                return level, fallback, Source.STALE, False
            if level.answers(stored) or index == len(chain) - 1:
                return level, stored, source, paid
            self._metrics.incr("narrowed_fetches")
        raise AssertionError("the last level always answers")  # pragma: no cover

    def _snapshot(
        self, level: Level, stored: StoredResult, listings: list[Listing]
    ) -> PriceSnapshot | None:
        """The valuation of exactly ``listings`` (what this answer shows)."""
        if level.identity.search_type is not SearchType.SOLD:
            return None
        if stored.snapshot is not None and len(listings) == len(stored.listings):
            return stored.snapshot  # nothing hidden: the fetch's own valuation
        key = (level.identity.result_key, stored.fetched_at, level.local_filters, level.excluded)
        snapshot = self._valued.get(key)
        if snapshot is None:
            snapshot = value_result(self._valuator, stored, listings).snapshot
            assert snapshot is not None
            self._valued[key] = snapshot
        return snapshot

    def _fresh_until(self, stored: StoredResult) -> datetime:
        return fresh_until(stored, self._settings.fresh_for(stored.search_type))

    def _fenced(self, identity: ResultIdentity, fetched_at: datetime) -> bool:
        """Whether data fetched at ``fetched_at`` predates an invalidation of its card."""
        if not self._any_fence:
            return False  # nothing invalidated yet: the common case, without a clock read
        fence = self._fences.get(identity.card_key)
        return fence is not None and fetched_at <= fence

    def _usable(self, identity: ResultIdentity, hit: StoredResult, now: datetime) -> bool:
        return (
            now < self._fresh_until(hit)
            and not self._fenced(identity, hit.fetched_at)
            and not outlived(hit, now)
        )

    async def _lookup(
        self, identity: ResultIdentity, now: datetime, count: bool = True, traced: bool = True
    ) -> tuple[StoredResult | None, Source | None, StoredResult | None]:
        """A fresh result from the first tier that has one; else the newest stored, if any.

        Args:
            traced: ``False`` when the search was begun with no tracer provider to record.
        """
        incr = self._metrics.incr if count else (lambda name, amount=1: None)
        watched = self._metrics if count else None  # a peek is not a tier read to report
        if self._near is not None:
            with watch_tier(watched, "near", traced) as tier:
                hit = await self._near.get(identity)
                tier.hit = hit is not None and self._usable(identity, hit, now)
            if hit is not None and tier.hit:
                incr("hit_memory")
                return hit, Source.MEMORY, None
        # Taken before the read: a change heard meanwhile keeps what it read out of the near-cache.
        ticket = self._near.ticket(identity) if self._near is not None else None
        with watch_tier(watched, self._hot.name, traced) as tier:
            hit = await self._hot.get(identity)
            tier.hit = hit is not None and self._usable(identity, hit, now)
        if hit is not None and tier.hit:
            incr(f"hit_{self._hot.name}")
            await self._fill_near(identity, hit, now, ticket)
            return hit, Source(self._hot.name), None
        stale = None
        if self._reads_database:
            assert self._db is not None
            with watch_tier(watched, "database", traced) as tier:
                stored = await self._db.newest(identity, since=now - self._settings.max_stale)
                if stored is not None and self._fenced(identity, stored.fetched_at):
                    stored = None
                tier.hit = stored is not None and self._usable(identity, stored, now)
            if stored is not None and tier.hit:
                await self._fill(identity, stored, now)
                # Filling the hot tier may reveal another worker's invalidation of it.
                if not self._fenced(identity, stored.fetched_at):
                    incr("hit_database")
                    return stored, Source.DATABASE, None
                stored = None
            stale = stored
        incr("misses")
        return None, None, stale

    async def _stale(
        self, identity: ResultIdentity, now: datetime, any_age: bool = False
    ) -> StoredResult | None:
        """When the fetcher failed: the newest stored result up to ``max_stale`` old.

        With ``any_age`` (the budget is spent) a result of any age serves.
        """
        if not self._reads_database:
            return None
        assert self._db is not None
        since = _EPOCH if any_age else now - self._settings.max_stale
        with watch_tier(self._metrics, "database") as tier:
            stale = await self._db.newest(identity, since=since)
            tier.hit = stale is not None and not self._fenced(identity, stale.fetched_at)
        if stale is None or not tier.hit:
            return None
        self._metrics.incr("hit_stale")
        return stale

    async def _fill_near(
        self, identity: ResultIdentity, result: StoredResult, now: datetime, ticket: Ticket | None
    ) -> None:
        if self._near is not None and not self._fenced(identity, result.fetched_at):
            # The near-cache caps this at near_cache_ttl unless it is kept coherent.
            ttl = self._hot_ttl(result, now)
            await self._near.set(identity, result, ttl, ticket)

    def _hot_ttl(self, result: StoredResult, now: datetime) -> timedelta:
        """A hot tier keeps a result for its TTL from now, never past its freshness.

        Nor past its display data's ``display_ttl``: a copy never outlives the rule.
        """
        left = self._fresh_until(result) - now
        shown = display_ttl_left(result, now)
        if shown is not None:
            left = min(left, shown)
        return max(min(left, self._settings.hot_ttl(result.search_type)), timedelta(0))

    async def _fill(self, identity: ResultIdentity, result: StoredResult, now: datetime) -> None:
        if self._fenced(identity, result.fetched_at):
            return
        # Its own echo then leaves this write's copy in the near-cache; others' changes do not.
        ticket = self._near.ticket(identity, own_write=True) if self._near is not None else None
        if await self._hot.set(identity, result, self._hot_ttl(result, now)):
            # Written, not refused for newer data or an invalidation: the near-cache too.
            await self._fill_near(identity, result, now, ticket)

    async def _fill_fetched(
        self, identity: ResultIdentity, result: StoredResult, now: datetime
    ) -> None:
        """A paid result fills the hot tiers, and its display data is kept by listing."""
        await asyncio.gather(
            self._display.keep(identity, result), self._fill(identity, result, now)
        )

    def _record_fenced(self, record: FetchRecord) -> bool:
        """Whether a fetch read back from the journal predates its card's invalidation."""
        search = record.search
        identity = ResultIdentity(search.card_identifier, search.search_type, "")
        return self._fenced(identity, record.result.fetched_at)

    def learn_fence(self, card_key: str, at: datetime) -> None:
        """Another worker invalidated this card at ``at``: refuse what was fetched before."""
        held = self._fences.get(card_key)
        if held is None or at > held:
            self._fences[card_key] = at
            self._any_fence = True
            card = self._queued_cards.get(card_key)
            if card is not None and self._writer is not None:
                # Fetches of it still in this worker's buffer are kept as history only.
                self._writer.detach(*card)

    def _submit(self, record: SearchRecord | FetchRecord) -> None:
        assert self._writer is not None
        if not self._writer.submit(record) and self._closed:
            raise StoreClosedError("the store closed before this search could be recorded")

    def _persist(
        self, asked: _Asked, level: Level, user: int | None, stored: StoredResult, started: float
    ) -> None:
        """Queue a paid fetch with its search-log row (run by the flight that fetched it)."""
        if self._writer is None:
            return
        text, kind, wanted, options, card, _, _ = asked
        identity = level.identity
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
            items_count=len(level.listings(stored)),
            user_id=user,
            result_key=None if fenced else identity.result_key,
            fetch_stats=stored.stats.as_dict() if stored.stats is not None else None,
            complete=stored.complete,
            trace=tracing.current(),  # the fetch: its database write is a child of it
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
        text, kind, wanted, options, card, _, chain = self._ask(query, search_type, filters, params)
        now = self._clock()
        answer: tuple[Level, StoredResult, Source] | None = None
        for level in chain:
            hit, source, stale = await self._lookup(level.identity, now, count=False)
            if hit is not None and source is not None and level.answers(hit):
                answer = (level, hit, source)
                break
            if answer is None and stale is not None and level.answers(stale):
                answer = (level, stale, Source.STALE)
        if answer is None:
            return None
        level, stored, source = answer
        listings = level.listings(stored)
        return checked_result(
            query=text,
            card_identifier=card,
            search_type=kind,
            filters=wanted,
            params=options,
            listings=listings,
            source=source,
            fetched_at=stored.fetched_at,
            cache_hit=True,
            snapshot=self._snapshot(level, stored, listings),
            pages_scraped=stored.pages_scraped,
            complete=stored.complete is True,
            fresh_until=self._fresh_until(stored),
            display_complete=answer_complete(stored, listings),
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
        self._any_fence = True
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
