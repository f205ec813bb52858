"""Calling the paid API as rarely as possible, and never waiting on it forever.

- In-process single-flight: concurrent identical misses share one call and its outcome.
- Cross-process single-flight (with Redis): a lock with a random token and an expiry;
  the others wait for the holder's result to appear in Redis, and take over if the
  holder dies (its lock expires) or the wait runs out.
- The call runs in a task of its own (a *flight*), shielded from the searches that wait
  on it: a search that is cancelled returns at once, the others get the flight's outcome,
  and a paid result is kept even when nobody waits for it any more.
- The paid requests themselves (pages, retries, budget) are made by
  :class:`~kuya_store.upstream.Upstream`, retried only while some search still waits.
  The cross-process lock is extended while its holder fetches, and a holder whose fetch
  failed tells its waiters, so a failure that retrying cannot fix is paid once across
  processes too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from kuya_store import tracing
from kuya_store.budget import ApiBudget
from kuya_store.clock import Clock
from kuya_store.errors import (
    FetcherError,
    InvalidInputError,
    StoreClosedError,
)
from kuya_store.freshness import FreshnessPolicy, fresh_until
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import FetchRequest, Source
from kuya_store.pricing import Valuator
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers import HotTier, LockRelease
from kuya_store.upstream import Fetcher, Upstream, validate_fetch_result

__all__ = ["FetchCoordinator", "Fetcher", "validate_fetch_result"]

Fill = Callable[[ResultIdentity, StoredResult, datetime, LockRelease | None], Awaitable[None]]
"""Fills the hot tiers with a paid result; the lock, if given, goes with the hot tier's write."""
Outcome = tuple[StoredResult, Source, bool]
"""The result, the tier it came from, and whether this call made the upstream request."""
OnFetched = Callable[[StoredResult], None]
"""Called inside the flight once a paid result is in the hot tiers (to persist it)."""

_POLL_FIRST, _POLL_MAX = 0.01, 0.2
"""Seconds between looks for another process's result: the first, and at most."""
_LANDINGS_KEPT = 1024
"""Identities whose flight landed lately, kept to tell a search that raced one (see below)."""


@runtime_checkable
class _Locking(Protocol):
    async def try_lock(self, identity: ResultIdentity, ttl: timedelta) -> tuple[str, str]: ...

    async def lock_state(self, identity: ResultIdentity) -> str: ...

    async def unlock(self, identity: ResultIdentity, token: str) -> None: ...

    async def extend_lock(
        self, identity: ResultIdentity, token: str, ttl: timedelta
    ) -> bool | None: ...

    async def mark_failed(self, identity: ResultIdentity, token: str, ttl: timedelta) -> None: ...

    def expect_change(self, identity: ResultIdentity) -> asyncio.Future[None] | None: ...

    async def until_changed(self, heard: asyncio.Future[None] | None, timeout: float) -> None: ...

    def forget_change(self, heard: asyncio.Future[None] | None) -> None: ...


@dataclass(eq=False)
class _Flight:
    """One upstream fetch in progress: what it asks, and how many searches wait for it."""

    identity: ResultIdentity
    request: FetchRequest
    fetcher: Fetcher
    newer_than: datetime | None = None
    """With ``refresh=True``: a stored result fetched before this does not count as ready."""
    stale: StoredResult | None = None
    """The newest stored result that is no longer fresh (a paged refresh extends it)."""
    task: asyncio.Task[Outcome] | None = None
    waiters: int = 0
    span: tracing.Span | None = None
    """Started by the search that started the flight: the flight's work is traced under it."""
    flown: bool = False


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
        self._upstream_fetch = Upstream(
            settings=settings,
            clock=clock,
            metrics=metrics,
            valuator=valuator,
            policy=policy,
            budget=budget,
        )
        self._inflight: dict[ResultIdentity, _Flight] = {}
        self._landings: dict[ResultIdentity, None] = {}  # insertion order: oldest first

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
            flight = _Flight(identity, request, fetcher, newer_than, stale)
            flight.span = tracing.start(
                "kuya_store.fetch",
                {
                    "kuya_store.card": identity.card_identifier,
                    "kuya_store.search_type": identity.search_type.value,
                    "kuya_store.refresh": newer_than is not None,
                },
            )
            flight.task = asyncio.create_task(
                self._fly(flight, on_fetched),
                name=f"kuya-fetch-{identity.search_type.value}",
            )
            self._inflight[identity] = flight
            flight.task.add_done_callback(lambda task: self._landed(identity, flight, task))
        else:
            self._metrics.incr("single_flight_waits")
        assert flight.task is not None
        flight.waiters += 1
        try:
            stored, source, paid = await self._wait(flight, joined)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if flight.task.cancelled() and (current is None or not current.cancelling()):
                # The flight was stopped (the store is closing), not this search.
                raise StoreClosedError("the store closed while this search was fetching") from None
            raise
        finally:
            flight.waiters -= 1
        return stored, source, paid and not joined

    @staticmethod
    async def _wait(flight: _Flight, joined: bool) -> Outcome:
        """The flight's outcome; a search that joined one under way links to its span."""
        assert flight.task is not None
        if not joined or flight.span is None:
            return await asyncio.shield(flight.task)
        with tracing.span("kuya_store.fetch.join", links=[tracing.link_of(flight.span)]):
            return await asyncio.shield(flight.task)

    def _landed(
        self, identity: ResultIdentity, flight: _Flight, task: asyncio.Task[Outcome]
    ) -> None:
        if self._inflight.get(identity) is flight:
            del self._inflight[identity]
        self._landings.pop(identity, None)
        self._landings[identity] = None
        if len(self._landings) > _LANDINGS_KEPT:
            del self._landings[next(iter(self._landings))]
        if not flight.flown and flight.span is not None:
            flight.span.end()  # cancelled before it ran: its span still ends
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

    async def _fly(self, flight: _Flight, on_fetched: OnFetched) -> Outcome:
        assert flight.span is not None
        flight.flown = True
        with tracing.use(flight.span) as span:
            stored, source, paid = await self._across_processes(flight)
            span.set_attribute("kuya_store.source", source.value)
            span.set_attribute("kuya_store.paid", paid)
            if paid:
                # Persisted by the flight itself: a paid result is kept even if every search
                # that asked for it was cancelled meanwhile.
                on_fetched(stored)
            return stored, source, paid

    async def _across_processes(self, flight: _Flight) -> Outcome:
        identity, newer_than = flight.identity, flight.newer_than
        hot = self._hot
        # A search whose lookup began before another task's fetch filled the hot tier
        # arrives here after that fetch is over: look once more before paying for a call.
        # Behind the cross-process lock, the holder looks anyway (``_holding``): a search
        # that takes the lock looks first only when a flight of this result landed lately.
        looked = not isinstance(hot, _Locking) or identity in self._landings
        if looked and (ready := await self._raced(identity, newer_than)) is not None:
            return ready, Source(hot.name), False
        if not isinstance(hot, _Locking):
            return await self._upstream(flight), Source.API, True
        lock_ttl = self._settings.single_flight_lock_ttl
        deadline = time.monotonic() + self._settings.flight_wait.total_seconds()
        waited = False
        while True:
            state, token = await hot.try_lock(identity, lock_ttl)
            if state == "acquired":
                return await self._holding(flight, token)
            if not looked:  # not the holder: the look skipped above, before waiting or going on
                looked = True
                if (ready := await self._raced(identity, newer_than)) is not None:
                    return ready, Source(hot.name), False
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
        return await self._upstream(flight), Source.API, True

    async def _holding(self, flight: _Flight, token: str) -> Outcome:
        """Fetch while holding the cross-process lock, extending it until the fetch is over."""
        identity = flight.identity
        hot = self._hot
        assert isinstance(hot, _Locking)
        ttl = self._settings.single_flight_lock_ttl
        keeper = asyncio.create_task(self._keep_lock(hot, identity, token, ttl))
        release = LockRelease(token)
        failed = False
        try:
            # Another process may have fetched it between our last look and the lock.
            ready = await self._ready(identity, flight.newer_than)
            if ready is not None:
                return ready, Source.REDIS, False
            try:
                stored = await self._upstream(flight, release)
            except (FetcherError, InvalidInputError):
                failed = True
                raise
            return stored, Source.API, True
        finally:
            keeper.cancel()
            if failed:
                # Waiting processes give up instead of paying for the same failure again.
                await hot.mark_failed(identity, token, self._settings.fetch_failure_notice)
            elif not release.released:  # the result's write let go of it already, mostly
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

    async def _raced(
        self, identity: ResultIdentity, newer_than: datetime | None
    ) -> StoredResult | None:
        """A result another call put in the hot tier since this search looked, if any."""
        ready = await self._ready(identity, newer_than)
        if ready is not None:
            self._metrics.incr("single_flight_waits")
        return ready

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
        """Wait for the holder's result until it appears, the lock goes, or time is up.

        A worker that hears changes in Redis (coherent near-caches) looks as soon as the
        result's value changes; the poll, backing off from 10 to 200 ms, finds a holder that
        failed or died, and the value in a worker that hears nothing.
        """
        delay = _POLL_FIRST
        heard = hot.expect_change(identity)
        try:
            while time.monotonic() < deadline:
                await hot.until_changed(heard, delay)
                delay = min(delay * 2, _POLL_MAX)
                # Asked before the look: a value that lands after it ends the next wait.
                hot.forget_change(heard)
                heard = hot.expect_change(identity)
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
        finally:
            hot.forget_change(heard)

    async def _upstream(self, flight: _Flight, release: LockRelease | None = None) -> StoredResult:
        stored = await self._upstream_fetch.fetch(
            flight.identity,
            flight.request,
            flight.fetcher,
            stale=flight.stale,
            keep_going=lambda: flight.waiters > 0,
        )
        await self._fill(flight.identity, stored, self._clock(), release)
        return stored
