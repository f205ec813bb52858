"""Calling the paid API as rarely as possible, and never waiting on it forever.

- In-process single-flight: concurrent identical misses share one call and its outcome.
- Cross-process single-flight (with Redis): a lock with a random token and an expiry;
  the others wait for the holder's result to appear in Redis, and take over if the
  holder dies (its lock expires) or the wait runs out.
- Each attempt is cut off by ``fetch_timeout``; failures are retried with jittered
  exponential backoff (tenacity) up to ``fetch_attempts`` times. Invalid data is not
  retried: it is the fetcher's bug, reported as ``InvalidInputError``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from kuya_store.clock import Clock
from kuya_store.errors import FetcherError, InvalidInputError
from kuya_store.freshness import is_fresh
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import FetchRequest, FetchResult, SearchType, Source
from kuya_store.pricing import Valuator
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers import HotTier

__all__ = ["FetchCoordinator", "Fetcher", "validate_fetch_result"]

Fetcher = Callable[[FetchRequest], Awaitable[FetchResult] | FetchResult]
"""``async def fetcher(request) -> FetchResult``; a plain function runs in a worker thread."""

Fill = Callable[[ResultIdentity, StoredResult, datetime], Awaitable[None]]
Outcome = tuple[StoredResult, Source, bool]
"""The result, the tier it came from, and whether this call made the upstream request."""


@runtime_checkable
class _Locking(Protocol):
    async def try_lock(self, identity: ResultIdentity, ttl: timedelta) -> tuple[str, str]: ...

    async def is_locked(self, identity: ResultIdentity) -> bool: ...

    async def unlock(self, identity: ResultIdentity, token: str) -> None: ...


def validate_fetch_result(value: object) -> FetchResult:
    """Validate what a fetcher returned; bad data is ``InvalidInputError`` naming the field."""
    try:
        if isinstance(value, FetchResult):
            result = value
        elif isinstance(value, list | tuple):
            result = FetchResult.model_validate({"listings": list(value)})
        else:
            result = FetchResult.model_validate(value, from_attributes=True)
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


async def _invoke(fetcher: Fetcher, request: FetchRequest) -> object:
    call = getattr(fetcher, "__call__", None)  # noqa: B004 - async callable objects too
    if inspect.iscoroutinefunction(fetcher) or inspect.iscoroutinefunction(call):
        return await fetcher(request)  # type: ignore[misc]
    outcome = await asyncio.to_thread(fetcher, request)
    return await outcome if inspect.isawaitable(outcome) else outcome


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
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._hot = hot
        self._fill = fill
        self._valuator = valuator
        self._inflight: dict[ResultIdentity, asyncio.Future[tuple[StoredResult, Source]]] = {}

    async def fetch(
        self, identity: ResultIdentity, request: FetchRequest, fetcher: Fetcher
    ) -> Outcome:
        pending = self._inflight.get(identity)
        if pending is not None:
            self._metrics.incr("single_flight_waits")
            stored, source = await asyncio.shield(pending)
            return stored, source, False
        future: asyncio.Future[tuple[StoredResult, Source]] = (
            asyncio.get_running_loop().create_future()
        )
        self._inflight[identity] = future
        try:
            stored, source, owner = await self._across_processes(identity, request, fetcher)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a lone caller leaves no warning behind
            raise
        else:
            future.set_result((stored, source))
            return stored, source, owner
        finally:
            del self._inflight[identity]

    async def _across_processes(
        self, identity: ResultIdentity, request: FetchRequest, fetcher: Fetcher
    ) -> Outcome:
        hot = self._hot
        # A search whose lookup began before another task's fetch filled the hot tier
        # arrives here after that fetch is over: look once more before paying for a call.
        ready = await self._ready(identity)
        if ready is not None:
            self._metrics.incr("single_flight_waits")
            return ready, Source(hot.name), False
        if not isinstance(hot, _Locking):
            return await self._upstream(identity, request, fetcher), Source.API, True
        lock_ttl = self._settings.single_flight_lock_ttl
        deadline = time.monotonic() + self._settings.single_flight_wait.total_seconds()
        waited = False
        while True:
            state, token = await hot.try_lock(identity, lock_ttl)
            if state == "acquired":
                try:
                    # Another process may have fetched it between our last look and the lock.
                    ready = await self._ready(identity)
                    if ready is not None:
                        return ready, Source.REDIS, False
                    return await self._upstream(identity, request, fetcher), Source.API, True
                finally:
                    await hot.unlock(identity, token)
            if state == "unavailable":
                break
            if not waited:
                self._metrics.incr("lock_waits")
                waited = True
            ready = await self._wait_for_holder(identity, hot, deadline)
            if ready is not None:
                return ready, Source.REDIS, False
            if time.monotonic() >= deadline:
                self._metrics.incr("lock_wait_timeouts")
                break
        return await self._upstream(identity, request, fetcher), Source.API, True

    async def _ready(self, identity: ResultIdentity) -> StoredResult | None:
        hit = await self._hot.get(identity)
        ttl = self._settings.hot_ttl(identity.search_type)
        if hit is not None and is_fresh(hit.fetched_at, self._clock(), ttl):
            return hit
        return None

    async def _wait_for_holder(
        self, identity: ResultIdentity, hot: _Locking, deadline: float
    ) -> StoredResult | None:
        """Poll for the holder's result until it appears, the lock goes, or time is up."""
        delay = 0.01
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
            ready = await self._ready(identity)
            if ready is not None:
                return ready
            if not await hot.is_locked(identity):
                return None  # the holder failed or died: try to take over
        return None

    async def _upstream(
        self, identity: ResultIdentity, request: FetchRequest, fetcher: Fetcher
    ) -> StoredResult:
        settings = self._settings
        timeout = settings.fetch_timeout.total_seconds()
        backoff = settings.fetch_backoff.total_seconds()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(settings.fetch_attempts),
            wait=wait_random_exponential(multiplier=backoff, max=backoff * 16),
            retry=retry_if_not_exception_type(InvalidInputError),
            reraise=False,
        )
        started = time.perf_counter()
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._metrics.incr("api_retries")
                    self._metrics.incr("api_calls")
                    try:
                        async with asyncio.timeout(timeout):
                            raw = await _invoke(fetcher, request)
                    except Exception:
                        self._metrics.incr("api_errors")
                        raise
                    fetched = validate_fetch_result(raw)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            kind = identity.search_type.value
            if isinstance(cause, TimeoutError):
                message = f"fetcher for {kind!r} timed out after {timeout:g}s"
            else:
                message = f"fetcher for {kind!r} failed: {type(cause).__name__}: {cause}"
            raise FetcherError(f"{message} ({settings.fetch_attempts} attempt(s))") from cause
        finally:
            self._metrics.observe("fetch", (time.perf_counter() - started) * 1000)
        now = self._clock()
        snapshot = None
        if identity.search_type is SearchType.SOLD:
            snapshot = self._valuator.value(
                identity.card_identifier, fetched.listings, snapshot_date=now.date(), now=now
            )
        stored = StoredResult(
            query=request.query,
            card_identifier=identity.card_identifier,
            search_type=identity.search_type,
            params=request.params,
            listings=fetched.listings,
            fetched_at=now,
            pages_scraped=fetched.pages_scraped,
            snapshot=snapshot,
        )
        await self._fill(identity, stored, now)
        return stored
