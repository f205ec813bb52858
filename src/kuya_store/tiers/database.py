"""The database as the read path sees it: one breaker, transient retries, own valuations.

A database that does not answer costs one failure per request until the breaker opens;
then the tier is skipped for ``breaker_reset_after`` and the hot tier or the fetcher
answers. A stored result is valued from its own listings: the day's ``price_snapshots``
row values the whole card, not one result, and dressed with the display data kept for
its listings (:mod:`kuya_store.tiers.display`): the rows hold none.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from kuya_store.breaker import CircuitBreaker
from kuya_store.freshness import FreshnessPolicy
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import Listing, SearchType
from kuya_store.persistence import Database
from kuya_store.pricing import Valuator
from kuya_store.retries import retrying
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers.display import DisplayStore
from kuya_store.writer import is_transient

__all__ = ["DatabaseTier", "value_result"]


def value_result(
    valuator: Valuator, stored: StoredResult, listings: list[Listing] | None = None
) -> StoredResult:
    """``stored`` with the valuation of ``listings`` (default: its own), as of its fetch."""
    moment = stored.fetched_at
    snapshot = valuator.value(
        stored.card_identifier,
        stored.listings if listings is None else listings,
        snapshot_date=moment.date(),
        now=moment,
    )
    return stored.model_copy(update={"snapshot": snapshot})


class DatabaseTier:
    """Reads stored results, and detaches them on ``invalidate``, behind a circuit breaker."""

    def __init__(
        self,
        database: Database,
        settings: StoreSettings,
        metrics: Metrics,
        valuator: Valuator,
        policy: FreshnessPolicy,
        display: DisplayStore,
    ) -> None:
        self._database = database
        self._display = display
        self._policy = policy
        self._settings = settings
        self._metrics = metrics
        self._valuator = valuator
        self.breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_reset_after.total_seconds(),
            on_open=lambda: metrics.incr("db_breaker_opens"),
        )

    async def newest(self, identity: ResultIdentity, since: datetime) -> StoredResult | None:
        """The newest stored fetch since ``since``; ``None`` when the database cannot say."""
        database = self._database

        async def read() -> StoredResult | None:
            async for attempt in retrying(
                self._settings.db_retry_attempts,
                backoff=0.02,
                max_backoff=0.2,
                transient=is_transient,
            ):
                with attempt:
                    return await database.newest_result(identity, since)
            return None  # pragma: no cover - the loop returns or raises

        outcome, result = await self.breaker.guard(read, lambda exc: True)
        if outcome == "skipped":
            self._metrics.incr("db_read_skipped")
            return None
        if outcome == "failed":
            self._metrics.incr("db_read_errors")
            return None
        if result is None:
            return None
        if identity.search_type is SearchType.SOLD:
            result = value_result(self._valuator, result)
        # Rows keep listings, not windows: the policy gives this result's freshness again.
        window = self._policy.fresh_for(result.search_type, result.listings, result.fetched_at)
        result = result.model_copy(update={"fresh_until": result.fetched_at + window})
        return await self._display.dress(identity, result)

    async def detach(self, identity: ResultIdentity, before: datetime) -> bool:
        """Stop the card's results fetched up to ``before`` from answering; ``False`` if down."""
        database = self._database
        outcome, _ = await self.breaker.guard(
            lambda: asyncio.wait_for(
                database.detach_results(identity, before=before),
                self._settings.db_command_timeout.total_seconds(),
            ),
            lambda exc: True,
        )
        return outcome == "ok"
