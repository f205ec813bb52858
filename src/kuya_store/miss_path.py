"""A miss: no tier holds a fresh result that answers, so the search asks upstream.

It fetches the broadest level not known to be cut off (:func:`~kuya_store.answering.
start_level`) and goes one level narrower when what came back cannot answer. The flight
that pays for a result queues it with its search-log row. When the fetcher fails, the
newest stored result up to ``max_stale`` old stands in (``source="stale"``); when the
budget is spent, a stored result of any age does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kuya_store.answering import Level, start_level
from kuya_store.asking import Asked
from kuya_store.errors import BudgetExhaustedError, FetcherError
from kuya_store.fetching import FetchCoordinator, Fetcher
from kuya_store.logs import answered_by
from kuya_store.lookup import TierLookup
from kuya_store.metrics import Metrics
from kuya_store.models import FetchRequest, Source
from kuya_store.paging import PagedFetcher
from kuya_store.recording import SearchLog
from kuya_store.stored import StoredResult

__all__ = ["MissPath"]


class MissPath:
    """Answers a search upstream, level by level, with stored results as its fallback."""

    def __init__(
        self,
        *,
        fetching: FetchCoordinator,
        tiers: TierLookup,
        metrics: Metrics,
        search_log: SearchLog,
    ) -> None:
        self._fetching = fetching
        self._tiers = tiers
        self._metrics = metrics
        self._search_log = search_log

    async def answer(
        self,
        asked: Asked,
        chain: Sequence[Level],
        known: list[StoredResult | None],
        fetcher: Fetcher,
        user: int | None,
        started: float,
        now: datetime,
        refresh: bool,
    ) -> tuple[Level, StoredResult, Source, bool]:
        """Fetch the broadest level not known to be cut off, narrower if it cannot answer.

        Args:
            known: what each level holds, of any age (``None``: nothing stored).
            started: ``time.perf_counter()`` when the search began.

        Returns:
            The level that answers, its result, where that came from, and whether this
            search made the upstream request.

        Raises:
            BudgetExhaustedError: the budget is spent and nothing is stored.
            FetcherError: the fetcher failed and no stored result may stand in.
        """
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
                self._search_log.persist(asked, level, user, result, started)

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
                fallback = await self._tiers.stale(level.identity, now, any_age=True) or stale
                if fallback is None:
                    raise
                return level, fallback, Source.STALE, False
            except FetcherError:
                fallback = await self._tiers.stale(level.identity, now)
                if fallback is None:
                    raise
                return level, fallback, Source.STALE, False
            if level.answers(stored) or index == len(chain) - 1:
                return level, stored, source, paid
            self._metrics.incr("narrowed_fetches")
        raise AssertionError("the last level always answers")  # pragma: no cover
