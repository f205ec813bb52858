"""Calling the paid API as rarely as possible, and never waiting on it forever.

- In-process single-flight: concurrent identical misses share one call and its outcome.
- Cross-process single-flight (with Redis): a lock with a random token and an expiry;
  the others wait for the holder's result to appear in Redis, and take over if the
  holder dies (its lock expires) or the wait runs out.
- The call runs in a task of its own (a *flight*), shielded from the searches that wait
  on it: a search that is cancelled returns at once, the others get the flight's outcome,
  and a paid result is kept even when nobody waits for it any more.
- Each attempt is cut off by ``fetch_timeout``; only failures a retry can fix are retried
  (:mod:`kuya_store.retries`), and only while some search still waits. The cross-process
  lock is extended while its holder fetches, and a holder whose fetch failed tells its
  waiters, so a failure that retrying cannot fix is paid once across processes too.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError
from tenacity import RetryCallState

from kuya_store.budget import ApiBudget
from kuya_store.clock import Clock
from kuya_store.errors import (
    BudgetExhaustedError,
    FetcherError,
    InvalidInputError,
    StoreClosedError,
)
from kuya_store.freshness import FreshnessPolicy, fresh_until
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import FetchRequest, FetchResult, FetchStats, Listing, SearchType, Source
from kuya_store.paging import PagedFetcher, after_page, merge_sales, pages_wanted
from kuya_store.pricing import Valuator
from kuya_store.retries import is_transient_fetch_error, retrying
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers import HotTier

__all__ = ["FetchCoordinator", "Fetcher", "validate_fetch_result"]

Fetcher = Callable[[FetchRequest], Awaitable[FetchResult] | FetchResult]
"""``async def fetcher(request) -> FetchResult``; a plain function runs in a worker thread."""

Fill = Callable[[ResultIdentity, StoredResult, datetime], Awaitable[None]]
Outcome = tuple[StoredResult, Source, bool]
"""The result, the tier it came from, and whether this call made the upstream request."""
OnFetched = Callable[[StoredResult], None]
"""Called inside the flight once a paid result is in the hot tiers (to persist it)."""


@runtime_checkable
class _Locking(Protocol):
    async def try_lock(self, identity: ResultIdentity, ttl: timedelta) -> tuple[str, str]: ...

    async def lock_state(self, identity: ResultIdentity) -> str: ...

    async def unlock(self, identity: ResultIdentity, token: str) -> None: ...

    async def extend_lock(
        self, identity: ResultIdentity, token: str, ttl: timedelta
    ) -> bool | None: ...

    async def mark_failed(self, identity: ResultIdentity, token: str, ttl: timedelta) -> None: ...


def _as_data(value: object) -> object:
    """A model's fields as plain data, so one built with ``model_construct`` is validated too."""
    if isinstance(value, BaseModel):
        return {name: _as_data(item) for name, item in value.__dict__.items()}
    if isinstance(value, list | tuple):
        return [_as_data(item) for item in value]
    return value


def validate_fetch_result(value: object) -> FetchResult:
    """Validate what a fetcher returned; bad data is ``InvalidInputError`` naming the field.

    Whatever form it takes (a ``FetchResult``, a list of listings or of dicts, an object
    with ``listings``; models built with ``model_construct`` too), it goes through the
    same validation, so a float price is rounded to the cent however it arrives.
    """
    try:
        if isinstance(value, list | tuple):
            result = FetchResult.model_validate({"listings": _as_data(value)})
        elif isinstance(value, FetchResult):
            result = FetchResult.model_validate(_as_data(value))
        else:
            # An object with ``listings`` (a dataclass, another model): read its attributes.
            loose = FetchResult.model_validate(value, from_attributes=True)
            result = FetchResult.model_validate(_as_data(loose))
    except ValidationError as exc:
        raise InvalidInputError.from_validation_error(exc, "fetcher") from None
    seen: set[str] = set()
    for index, listing in enumerate(result.listings):
        if listing.item_id in seen:
            raise InvalidInputError(
                f"fetcher.listings[{index}].item_id", f"duplicate item_id {listing.item_id!r}"
            )
        seen.add(listing.item_id)
    return result


async def _invoke(fetcher: Fetcher | PagedFetcher, request: FetchRequest) -> object:
    if isinstance(fetcher, PagedFetcher):
        fetcher = fetcher.fetcher
    call = getattr(fetcher, "__call__", None)  # noqa: B004 - async callable objects too
    if inspect.iscoroutinefunction(fetcher) or inspect.iscoroutinefunction(call):
        return await fetcher(request)  # type: ignore[misc]
    outcome = await asyncio.to_thread(fetcher, request)
    return await outcome if inspect.isawaitable(outcome) else outcome


def _summed(stats: list[FetchStats]) -> FetchStats | None:
    """Each page's counts added up, field by field (a field no page reported stays unset)."""
    if not stats:
        return None
    totals: dict[str, int] = {}
    for one in stats:
        for name, value in one.as_dict().items():
            totals[name] = totals.get(name, 0) + value
    return FetchStats(**totals)


@dataclass(eq=False)
class _Flight:
    """One upstream fetch in progress, and how many searches still wait for it."""

    task: asyncio.Task[Outcome] | None = None
    waiters: int = 0


class FetchCoordinator:
    """Turns a miss into exactly one upstream call per result, across tasks and processes."""

    def __init__(
        self,
        *,
        settings: StoreSettings,
        clock: Clock,
        metrics: Metrics,
        hot: HotTier,
        fill: Fill,
        valuator: Valuator,
        policy: FreshnessPolicy,
        budget: ApiBudget,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._hot = hot
        self._fill = fill
        self._valuator = valuator
        self._policy = policy
        self._budget = budget
        self._inflight: dict[ResultIdentity, _Flight] = {}

    @property
    def in_flight(self) -> int:
        """Upstream fetches still running."""
        return len(self._inflight)

    async def fetch(
        self,
        identity: ResultIdentity,
        request: FetchRequest,
        fetcher: Fetcher,
        *,
        on_fetched: OnFetched,
        newer_than: datetime | None = None,
        stale: StoredResult | None = None,
    ) -> Outcome:
        """The result of one shared flight for ``identity``; starts it if none runs.

        Args:
            on_fetched: run by the flight when it made the paid call (this search's record).
            newer_than: with ``refresh=True``: a stored result fetched before this moment
                does not count as ready.
            stale: the newest stored result that is no longer fresh: a paged sold fetch
                refreshes it instead of buying every page again.
        """
        flight = self._inflight.get(identity)
        joined = flight is not None
        if flight is None:
            flight = _Flight()
            flight.task = asyncio.create_task(
                self._fly(identity, request, fetcher, flight, on_fetched, newer_than, stale),
                name=f"kuya-fetch-{identity.search_type.value}",
            )
            self._inflight[identity] = flight
            flight.task.add_done_callback(lambda task: self._landed(identity, flight, task))
        else:
            self._metrics.incr("single_flight_waits")
        assert flight.task is not None
        flight.waiters += 1
        try:
            stored, source, paid = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if flight.task.cancelled() and (current is None or not current.cancelling()):
                # The flight was stopped (the store is closing), not this search.
                raise StoreClosedError("the store closed while this search was fetching") from None
            raise
        finally:
            flight.waiters -= 1
        return stored, source, paid and not joined

    def _landed(
        self, identity: ResultIdentity, flight: _Flight, task: asyncio.Task[Outcome]
    ) -> None:
        if self._inflight.get(identity) is flight:
            del self._inflight[identity]
        if not task.cancelled():
            task.exception()  # retrieved, so a flight nobody waited for leaves no warning

    async def close(self, timeout: float) -> int:
        """Let running flights land (their results are paid for); cancel what is left.

        Returns how many flights had to be cancelled.
        """
        tasks = [f.task for f in self._inflight.values() if f.task is not None]
        if not tasks:
            return 0
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        return len(pending)

    async def _fly(
        self,
        identity: ResultIdentity,
        request: FetchRequest,
        fetcher: Fetcher,
        flight: _Flight,
        on_fetched: OnFetched,
        newer_than: datetime | None,
        stale: StoredResult | None,
    ) -> Outcome:
        stored, source, paid = await self._across_processes(
            identity, request, fetcher, flight, newer_than, stale
        )
        if paid:
            # Persisted by the flight itself: a paid result is kept even if every search
            # that asked for it was cancelled meanwhile.
            on_fetched(stored)
        return stored, source, paid

    async def _across_processes(
        self,
        identity: ResultIdentity,
        request: FetchRequest,
        fetcher: Fetcher,
        flight: _Flight,
        newer_than: datetime | None,
        stale: StoredResult | None,
    ) -> Outcome:
        hot = self._hot
        # A search whose lookup began before another task's fetch filled the hot tier
        # arrives here after that fetch is over: look once more before paying for a call.
        ready = await self._ready(identity, newer_than)
        if ready is not None:
            self._metrics.incr("single_flight_waits")
            return ready, Source(hot.name), False
        if not isinstance(hot, _Locking):
            upstream = await self._upstream(identity, request, fetcher, flight, stale)
            return upstream, Source.API, True
        lock_ttl = self._settings.single_flight_lock_ttl
        deadline = time.monotonic() + self._settings.flight_wait.total_seconds()
        waited = False
        while True:
            state, token = await hot.try_lock(identity, lock_ttl)
            if state == "acquired":
                return await self._holding(
                    identity, request, fetcher, flight, newer_than, token, stale
                )
            if state == "unavailable":
                break
            if not waited:
                self._metrics.incr("lock_waits")
                waited = True
            ready = await self._wait_for_holder(identity, hot, deadline, newer_than)
            if ready is not None:
                return ready, Source.REDIS, False
            if time.monotonic() >= deadline:
                self._metrics.incr("lock_wait_timeouts")
                break
        return await self._upstream(identity, request, fetcher, flight, stale), Source.API, True

    async def _holding(
        self,
        identity: ResultIdentity,
        request: FetchRequest,
        fetcher: Fetcher,
        flight: _Flight,
        newer_than: datetime | None,
        token: str,
        stale: StoredResult | None,
    ) -> Outcome:
        """Fetch while holding the cross-process lock, extending it until the fetch is over."""
        hot = self._hot
        assert isinstance(hot, _Locking)
        ttl = self._settings.single_flight_lock_ttl
        keeper = asyncio.create_task(self._keep_lock(hot, identity, token, ttl))
        failed = False
        try:
            # Another process may have fetched it between our last look and the lock.
            ready = await self._ready(identity, newer_than)
            if ready is not None:
                return ready, Source.REDIS, False
            try:
                stored = await self._upstream(identity, request, fetcher, flight, stale)
            except (FetcherError, InvalidInputError):
                failed = True
                raise
            return stored, Source.API, True
        finally:
            keeper.cancel()
            if failed:
                # Waiting processes give up instead of paying for the same failure again.
                await hot.mark_failed(identity, token, self._settings.fetch_failure_notice)
            else:
                await hot.unlock(identity, token)

    async def _keep_lock(
        self, hot: _Locking, identity: ResultIdentity, token: str, ttl: timedelta
    ) -> None:
        """Extend the lock every third of its TTL, so a slow but healthy fetch keeps it."""
        while True:
            await asyncio.sleep(ttl.total_seconds() / 3)
            if await hot.extend_lock(identity, token, ttl) is False:
                self._metrics.incr("lock_lost")
                return

    async def _ready(
        self, identity: ResultIdentity, newer_than: datetime | None = None
    ) -> StoredResult | None:
        hit = await self._hot.get(identity)
        ttl = self._settings.hot_ttl(identity.search_type)
        if hit is None or self._clock() >= fresh_until(hit, ttl):
            return None
        if newer_than is not None and hit.fetched_at < newer_than:
            return None
        return hit

    async def _wait_for_holder(
        self,
        identity: ResultIdentity,
        hot: _Locking,
        deadline: float,
        newer_than: datetime | None,
    ) -> StoredResult | None:
        """Poll for the holder's result until it appears, the lock goes, or time is up."""
        delay = 0.01
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            ready = await self._ready(identity, newer_than)
            if ready is not None:
                return ready
            state = await hot.lock_state(identity)
            if state == "failed":
                self._metrics.incr("lock_holder_failures")
                raise FetcherError(
                    f"the {identity.search_type.value!r} fetch by another process failed"
                )
            if state == "free":
                return None  # the holder died: try to take over
        return None

    def _count_retry(self, state: RetryCallState) -> None:
        self._metrics.incr("api_retries")

    async def _upstream(
        self,
        identity: ResultIdentity,
        request: FetchRequest,
        fetcher: Fetcher,
        flight: _Flight,
        stale: StoredResult | None = None,
    ) -> StoredResult:
        started = time.perf_counter()
        asked_at = self._clock()  # the data is as of the request, however long it took
        try:
            if isinstance(fetcher, PagedFetcher):
                got = await self._pages(identity, request, fetcher, flight, stale)
            else:
                got = await self._whole(identity, request, fetcher, flight)
        finally:
            self._metrics.observe("fetch", (time.perf_counter() - started) * 1000)
        listings, pages, complete, stats = got
        snapshot = None
        if identity.search_type is SearchType.SOLD:
            snapshot = self._valuator.value(
                identity.card_identifier, listings, snapshot_date=asked_at.date(), now=asked_at
            )
        window = self._policy.fresh_for(identity.search_type, listings, asked_at)
        stored = StoredResult(
            query=request.query,
            card_identifier=identity.card_identifier,
            search_type=identity.search_type,
            params=request.params,
            listings=listings,
            fetched_at=asked_at,
            pages_scraped=pages,
            snapshot=snapshot,
            stats=stats,
            complete=complete,
            fresh_until=asked_at + window,
        )
        await self._fill(identity, stored, self._clock())
        return stored

    async def _whole(
        self, identity: ResultIdentity, request: FetchRequest, fetcher: Fetcher, flight: _Flight
    ) -> tuple[list[Listing], int, bool | None, FetchStats | None]:
        expected = pages_wanted(request.params, self._settings.default_pages)
        fetched = await self._request(identity, request, fetcher, flight, expected)
        extra = fetched.pages_scraped - expected
        if extra > 0 and not await self._budget.reserve(identity.search_type, extra):
            self._metrics.incr("budget_overruns", extra)  # already spent by the fetcher
        complete = None if fetched.has_more is None else not fetched.has_more
        return fetched.listings, fetched.pages_scraped, complete, fetched.stats

    async def _pages(
        self,
        identity: ResultIdentity,
        request: FetchRequest,
        fetcher: PagedFetcher,
        flight: _Flight,
        stale: StoredResult | None,
    ) -> tuple[list[Listing], int, bool | None, FetchStats | None]:
        """Ask pages 1..N, stopping early; a stored sold result is refreshed, not re-bought."""
        wanted = pages_wanted(request.params, self._settings.default_pages)
        known: frozenset[str] = frozenset()
        if stale is not None and identity.search_type is SearchType.SOLD and stale.listings:
            known = frozenset(x.item_id for x in stale.listings)
        page_size = fetcher.page_size
        collected: list[Listing] = []
        stats: list[FetchStats] = []
        complete: bool | None = None
        reached_known = False
        asked = 0
        for number in range(1, wanted + 1):
            try:
                page = await self._request(
                    identity, request.model_copy(update={"page": number}), fetcher, flight, 1
                )
            except FetcherError:
                if asked == 0:
                    raise
                complete = False  # what was bought is kept; the rest waits for a later fetch
                self._metrics.incr("fetches_cut_short")
                break
            asked += 1
            if page.stats is not None:
                stats.append(page.stats)
            if page_size is None and page.has_more is True and page.listings:
                page_size = len(page.listings)
            collected.extend(page.listings)
            verdict = after_page(page, number, wanted, page_size, known)
            if verdict.stop:
                complete, reached_known = verdict.complete, verdict.reached_known
                break
        if reached_known:
            assert stale is not None
            self._metrics.incr("incremental_refreshes")
            limit = wanted * page_size if page_size is not None else None
            listings, cut = merge_sales(collected, stale.listings, limit)
            complete = False if cut else stale.complete
        else:
            listings, _ = merge_sales(collected, (), None)
        return listings, asked, complete, _summed(stats)

    async def _request(
        self,
        identity: ResultIdentity,
        request: FetchRequest,
        fetcher: Fetcher | PagedFetcher,
        flight: _Flight,
        cost: int,
    ) -> FetchResult:
        """One upstream request (a page, or a whole result costing ``cost`` pages), retried."""
        settings = self._settings
        timeout = settings.fetch_timeout.total_seconds()
        backoff = settings.fetch_backoff.total_seconds()
        attempts = 0
        try:
            async for attempt in retrying(
                settings.fetch_attempts,
                backoff=backoff,
                max_backoff=backoff * 16,
                transient=is_transient_fetch_error,
                keep_going=lambda: flight.waiters > 0,
                before_sleep=self._count_retry,
            ):
                with attempt:
                    attempts += 1
                    # Every attempt is a paid request: it takes its place in the budget first.
                    if not await self._budget.reserve(identity.search_type, cost):
                        raise BudgetExhaustedError(
                            f"the API budget of {identity.search_type.value!r} searches is spent"
                        )
                    self._metrics.incr("api_calls", cost)
                    try:
                        async with asyncio.timeout(timeout):
                            raw = await _invoke(fetcher, request)
                    except ValidationError as exc:
                        # The fetcher built a model from bad data itself: its bug, not the
                        # upstream's, so it is reported like any invalid output.
                        self._metrics.incr("api_errors")
                        raise InvalidInputError.from_validation_error(exc, "fetcher") from None
                    except Exception:
                        self._metrics.incr("api_errors")
                        raise
                    return validate_fetch_result(raw)
        except (InvalidInputError, BudgetExhaustedError):
            raise  # the fetcher's own bug, or no budget left: neither is the upstream failing
        except Exception as exc:
            raise FetcherError(self._failure(identity, exc, attempts, timeout)) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _failure(
        identity: ResultIdentity, cause: BaseException, attempts: int, timeout: float
    ) -> str:
        kind = identity.search_type.value
        if isinstance(cause, TimeoutError):
            message = f"fetcher for {kind!r} timed out after {timeout:g}s"
        else:
            message = f"fetcher for {kind!r} failed: {type(cause).__name__}: {cause}"
        return f"{message} ({attempts} attempt{'s' if attempts != 1 else ''})"
