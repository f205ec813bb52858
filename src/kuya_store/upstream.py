"""One upstream fetch: its pages, its retries, its budget, and what it is worth.

A paged fetcher is asked page by page (:mod:`kuya_store.paging` decides when to stop); a
stale sold result is extended with what sold since instead of being bought again. Every
request takes its place in the API budget first and is retried only when a retry can
help (:mod:`kuya_store.retries`) and someone still waits. The result is valued and given
its freshness window here, so it is complete before any tier sees it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ValidationError
from tenacity import RetryCallState

from kuya_store import tracing
from kuya_store.budget import ApiBudget
from kuya_store.clock import Clock
from kuya_store.errors import BudgetExhaustedError, FetcherError, InvalidInputError
from kuya_store.freshness import FreshnessPolicy
from kuya_store.keys import ResultIdentity
from kuya_store.logs import redact_secrets
from kuya_store.metrics import Metrics
from kuya_store.models import (
    FetchRequest,
    FetchResult,
    FetchStats,
    Listing,
    SearchType,
    is_fetch_checked_listing,
    is_validated_listing,
)
from kuya_store.paging import PagedFetcher, after_page, merge_sales, pages_wanted
from kuya_store.pricing import Valuator
from kuya_store.retries import is_transient_fetch_error, retrying
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers.display import carried_over

__all__ = ["Fetcher", "Upstream", "validate_fetch_result"]


class Fetcher(Protocol):
    """The call to a paid marketplace API that answers one search, as the app writes it.

    ``async def fetcher(request: FetchRequest) -> FetchResult``; a plain function is
    accepted too and runs in a worker thread, so a blocking client never stalls the loop.
    """

    def __call__(self, request: FetchRequest, /) -> Awaitable[FetchResult] | FetchResult: ...


_Bought = tuple[list[Listing], int, bool | None, FetchStats | None]
"""Listings, pages asked, whether the upstream had more, and the fetcher's counts."""


@dataclass(frozen=True, slots=True)
class _Ask:
    identity: ResultIdentity
    request: FetchRequest
    fetcher: Fetcher | PagedFetcher
    stale: StoredResult | None
    keep_going: Callable[[], bool]


def _as_data(value: object) -> object:
    """A model's fields as plain data, so one built with ``model_construct`` is validated too."""
    if isinstance(value, BaseModel):
        return {name: _as_data(item) for name, item in value.__dict__.items()}
    if isinstance(value, list | tuple):
        return [_as_data(item) for item in value]
    return value


def _listings_as_data(listings: object) -> object:
    """The listings to validate: each one validation built, as it is; any other, as data."""
    if not isinstance(listings, list | tuple):
        return _as_data(listings)
    return [x if is_validated_listing(x) else _as_data(x) for x in listings]


def _result_as_data(result: BaseModel) -> dict[str, object]:
    return {
        name: _listings_as_data(item) if name == "listings" else _as_data(item)
        for name, item in result.__dict__.items()
    }


def _checked_result(result: FetchResult) -> FetchResult | None:
    """``result`` validated again, when each of its listings passed a fetch result's checks.

    Such a listing is what validating it again gives (the very object), so only the
    result's other fields are validated; ``None`` when any listing is not one.
    """
    listings = result.listings
    if type(listings) is not list or not all(map(is_fetch_checked_listing, listings)):
        return None
    rest = {name: _as_data(item) for name, item in result.__dict__.items() if name != "listings"}
    head = FetchResult.model_validate({**rest, "listings": []})
    return head.model_copy(update={"listings": list(listings)})


def validate_fetch_result(value: object) -> FetchResult:
    """Validate what a fetcher returned; bad data is ``InvalidInputError`` naming the field.

    Whatever form it takes (a ``FetchResult``, a list of listings or of dicts, an object
    with ``listings``; models built with ``model_construct`` too), it goes through the
    same validation, so a float price is rounded to the cent however it arrives. A
    listing that validation built and nothing changed since
    (:func:`~kuya_store.models.is_validated_listing`) is not validated again: it gives
    the very listing a second validation would; a ``FetchResult`` whose every listing
    its own validation checked (a fetcher's ``FetchResult.model_validate_json``, say)
    has only its other fields validated again.
    """
    try:
        if isinstance(value, list | tuple):
            result = FetchResult.model_validate({"listings": _listings_as_data(value)})
        elif isinstance(value, FetchResult):
            checked = _checked_result(value) if type(value) is FetchResult else None
            if checked is None:
                checked = FetchResult.model_validate(_result_as_data(value))
            result = checked
        else:
            # An object with ``listings`` (a dataclass, another model): read its attributes.
            loose = FetchResult.model_validate(value, from_attributes=True)
            result = FetchResult.model_validate(_result_as_data(loose))
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


def _record_attempt(span: tracing.Span, error: BaseException, attempt: int) -> None:
    """A failed attempt as an event on its request's span (the request may still succeed)."""
    if span.is_recording():
        span.record_exception(error, attributes={"kuya_store.attempt": attempt})


def _summed(stats: list[FetchStats]) -> FetchStats | None:
    """Each page's counts added up, field by field (a field no page reported stays unset)."""
    if not stats:
        return None
    totals: dict[str, int] = {}
    for one in stats:
        for name, value in one.as_dict().items():
            totals[name] = totals.get(name, 0) + value
    return FetchStats(**totals)


class Upstream:
    """Makes the paid requests of one fetch."""

    def __init__(
        self,
        *,
        settings: StoreSettings,
        clock: Clock,
        metrics: Metrics,
        valuator: Valuator,
        policy: FreshnessPolicy,
        budget: ApiBudget,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._valuator = valuator
        self._policy = policy
        self._budget = budget

    def _count_retry(self, state: RetryCallState) -> None:
        self._metrics.incr("api_retries")

    async def fetch(
        self,
        identity: ResultIdentity,
        request: FetchRequest,
        fetcher: Fetcher | PagedFetcher,
        *,
        stale: StoredResult | None = None,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> StoredResult:
        """Buy one result: its pages (or the whole of it), valued and dated, not yet stored.

        Args:
            stale: the newest stored result that is no longer fresh; a paged sold fetch
                asks only for what sold since.
            keep_going: asked before each retry; ``False`` once nobody waits any more.
        """
        ask = _Ask(identity, request, fetcher, stale, keep_going)
        started = time.perf_counter()
        asked_at = self._clock()  # the data is as of the request, however long it took
        outcome = "error"
        try:
            if isinstance(fetcher, PagedFetcher):
                got = await self._pages(ask, fetcher)
            else:
                got = await self._whole(ask)
            outcome = "ok"
        finally:
            labels = {"search_type": identity.search_type.value, "outcome": outcome}
            self._metrics.observe("fetch", (time.perf_counter() - started) * 1000, labels)
        listings, pages, complete, stats = got
        snapshot = None
        if identity.search_type is SearchType.SOLD:
            snapshot = self._valuator.value(
                identity.card_identifier, listings, snapshot_date=asked_at.date(), now=asked_at
            )
        window = self._policy.fresh_for(identity.search_type, listings, asked_at)
        display_complete, display_until = carried_over(
            listings, stale, asked_at + self._settings.display_ttl
        )
        return StoredResult(
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
            display_complete=display_complete,
            display_until=display_until,
        )

    async def _whole(self, ask: _Ask) -> _Bought:
        identity = ask.identity
        expected = pages_wanted(ask.request.params, self._settings.default_pages)
        fetched = await self._request(ask, ask.request, ask.fetcher, expected)
        extra = fetched.pages_scraped - expected
        if extra > 0 and not await self._budget.reserve(identity.search_type, extra):
            self._metrics.incr("budget_overruns", extra)  # already spent by the fetcher
        complete = None if fetched.has_more is None else not fetched.has_more
        return fetched.listings, fetched.pages_scraped, complete, fetched.stats

    async def _pages(self, ask: _Ask, fetcher: PagedFetcher) -> _Bought:
        """Ask pages 1..N, stopping early; a stored sold result is refreshed, not re-bought."""
        identity, request, stale = ask.identity, ask.request, ask.stale
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
                    ask, request.model_copy(update={"page": number}), fetcher, 1
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
        self, ask: _Ask, request: FetchRequest, fetcher: Fetcher | PagedFetcher, cost: int
    ) -> FetchResult:
        """One upstream request (a page, or a whole result costing ``cost`` pages), retried."""
        attributes = {
            "kuya_store.search_type": ask.identity.search_type.value,
            "kuya_store.page": request.page or 0,
            "kuya_store.cost": cost,
        }
        with tracing.span("kuya_store.upstream.request", attributes) as span:
            return await self._attempts(ask, request, fetcher, cost, span)

    async def _attempts(
        self,
        ask: _Ask,
        request: FetchRequest,
        fetcher: Fetcher | PagedFetcher,
        cost: int,
        span: tracing.Span,
    ) -> FetchResult:
        identity = ask.identity
        kind = identity.search_type.value
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
                keep_going=ask.keep_going,
                before_sleep=self._count_retry,
            ):
                with attempt:
                    attempts += 1
                    span.set_attribute("kuya_store.attempts", attempts)
                    # Every attempt is a paid request: it takes its place in the budget first.
                    if not await self._budget.reserve(identity.search_type, cost):
                        raise BudgetExhaustedError(
                            f"the API budget of {identity.search_type.value!r} searches is spent"
                        )
                    self._metrics.incr("api_calls", cost)
                    self._metrics.incr_by("api_calls", {"search_type": kind}, cost)
                    try:
                        async with asyncio.timeout(timeout):
                            raw = await _invoke(fetcher, request)
                    except ValidationError as exc:
                        # The fetcher built a model from bad data itself: its bug, not the
                        # upstream's, so it is reported like any invalid output.
                        self._metrics.incr("api_errors")
                        self._metrics.incr_by("api_errors", {"search_type": kind})
                        raise InvalidInputError.from_validation_error(exc, "fetcher") from None
                    except Exception as exc:
                        self._metrics.incr("api_errors")
                        self._metrics.incr_by("api_errors", {"search_type": kind})
                        _record_attempt(span, exc, attempts)
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
            # The cause may name the request (a URL with the API key): apps log this text.
            detail = redact_secrets(str(cause))
            message = f"fetcher for {kind!r} failed: {type(cause).__name__}: {detail}"
        return f"{message} ({attempts} attempt{'s' if attempts != 1 else ''})"
