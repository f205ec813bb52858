"""What a search writes behind: its search-log row, and a paid fetch with its row.

Every call of ``search()``, hits included, adds one search-log row; a fetch paid upstream
is queued once, by the flight that made it, with the row of the search that asked for
it. The records are built by plain functions over values (:func:`hit_record`,
:func:`fetch_record`); :class:`SearchLog` hands them to the write-behind
(:class:`~kuya_store.writer.WriteBehind`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from cachetools import LRUCache

from kuya_store import tracing
from kuya_store.answering import Level
from kuya_store.asking import Asked
from kuya_store.errors import StoreClosedError
from kuya_store.fences import Fences
from kuya_store.models import SearchType
from kuya_store.persistence import FetchRecord, SearchRecord, listing_ttl
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.writer import WriteBehind

__all__ = ["SearchLog", "fetch_record", "hit_record"]


def hit_record(
    asked: Asked,
    stored: StoredResult,
    shown: int,
    now: datetime,
    elapsed_ms: int,
    user: int | None,
    trace: tracing.TraceParent | None,
) -> SearchRecord:
    """The search-log row of a search answered from a stored result (no upstream call).

    Args:
        shown: how many listings the answer showed.
        trace: the search's span, so its database write is a child of it.
    """
    return SearchRecord(
        query=asked.text,
        card_identifier=asked.card,
        search_type=asked.kind,
        filters=asked.wanted.as_dict(),
        params=asked.options,
        created_at=now,
        execution_time_ms=elapsed_ms,
        cache_hit=True,
        pages_scraped=stored.pages_scraped,
        items_count=shown,
        user_id=user,
        trace=trace,
    )


def fetch_record(
    asked: Asked,
    level: Level,
    user: int | None,
    stored: StoredResult,
    elapsed_ms: int,
    *,
    fenced: bool,
    settings: StoreSettings,
    trace: tracing.TraceParent | None,
) -> FetchRecord:
    """A paid fetch at ``level``, with the search-log row of the search that asked for it.

    Args:
        fenced: the card was invalidated since the fetch began: the fetch is kept as
            history, its row points at no result.
        trace: the fetch's span, so its database write is a child of it.
    """
    kind = asked.kind
    record = SearchRecord(
        query=asked.text,
        card_identifier=asked.card,
        search_type=kind,
        filters=asked.wanted.as_dict(),
        params=asked.options,
        created_at=stored.fetched_at,
        execution_time_ms=elapsed_ms,
        cache_hit=False,
        pages_scraped=stored.pages_scraped,
        items_count=len(level.listings(stored)),
        user_id=user,
        result_key=None if fenced else level.identity.result_key,
        fetch_stats=stored.stats.as_dict() if stored.stats is not None else None,
        complete=stored.complete,
        trace=trace,
    )
    return FetchRecord(
        search=record,
        result=stored.without_extra(),
        listing_ttl=listing_ttl(settings, kind, stored.fetched_at),
        snapshot=stored.snapshot,
    )


class SearchLog:
    """Hands a search's records to the write-behind, and knows which cards it queued.

    Args:
        closed: whether the store is closed (a record refused then is an error).
    """

    def __init__(
        self,
        writer: WriteBehind | None,
        fences: Fences,
        settings: StoreSettings,
        closed: Callable[[], bool],
    ) -> None:
        self._writer = writer
        self._fences = fences
        self._settings = settings
        self._closed = closed
        # The cards of fetches queued lately, by card key: what another worker's
        # invalidation (known by its card key) must detach from the write buffer.
        self._queued_cards: LRUCache[str, tuple[str, SearchType]] = LRUCache(maxsize=4096)

    def submit(self, record: SearchRecord | FetchRecord) -> None:
        """Queue one record (the store must have a writer)."""
        assert self._writer is not None
        if not self._writer.submit(record) and self._closed():
            raise StoreClosedError("the store closed before this search could be recorded")

    def persist(
        self, asked: Asked, level: Level, user: int | None, stored: StoredResult, started: float
    ) -> None:
        """Queue a paid fetch with its search-log row (run by the flight that fetched it)."""
        if self._writer is None:
            return
        identity = level.identity
        fenced = self._fences.fenced(identity, stored.fetched_at)
        self._queued_cards[identity.card_key] = (asked.card, asked.kind)
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        trace = tracing.current()  # the fetch: its database write is a child of it
        self.submit(
            fetch_record(
                asked,
                level,
                user,
                stored,
                elapsed_ms,
                fenced=fenced,
                settings=self._settings,
                trace=trace,
            )
        )

    def detach_queued(self, card_key: str) -> None:
        """Another worker invalidated this card: its fetches still buffered here are history."""
        card = self._queued_cards.get(card_key)
        if card is not None and self._writer is not None:
            self._writer.detach(*card)
