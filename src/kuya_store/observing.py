"""What a search, a tier read and a database write report: one span and one measurement each.

Each ``watch_*`` opens the span of its work (:mod:`kuya_store.tracing`) and, when the
work is over, records its duration in the store's histograms and counts its outcome
(:mod:`kuya_store.metrics`), so traces, ``store.metrics()`` and the Prometheus
exposition describe the same calls.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType

from kuya_store import tracing
from kuya_store.metrics import Labels, Metrics, labels_of
from kuya_store.models import CompsResult, SearchType, Source

__all__ = [
    "SearchWatch",
    "TierWatch",
    "search_outcome",
    "watch_search",
    "watch_tier",
    "watch_write",
]


class SearchWatch:
    """The span of one ``search()``; its duration and outcome are counted when it ends.

    Told the answer by :meth:`answered`, so the span and the counters say who answered.
    """

    __slots__ = ("_kind", "_metrics", "_scope", "_started", "result", "span", "traced")

    def __init__(self, metrics: Metrics, card: str, kind: SearchType) -> None:
        self._metrics = metrics
        self._kind = kind
        self.traced = tracing.recording()
        """Whether a tracer provider was set up when the search began (its reads trace too).

        Asked once per search: looking the provider up costs more than a near-cache read.
        """
        self._scope = (
            tracing.span(
                "kuya_store.search",
                {"kuya_store.card": card, "kuya_store.search_type": kind.value},
            )
            if self.traced
            else None
        )
        self.span: tracing.Span = tracing.NO_SPAN
        self.result: CompsResult | None = None
        self._started = 0.0

    def __enter__(self) -> SearchWatch:
        if self._scope is not None:
            self.span = self._scope.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        elapsed = (time.perf_counter() - self._started) * 1000
        result = self.result
        if result is None:
            timed, counted = _search_labels(
                self._kind, None, isinstance(exc, asyncio.CancelledError)
            )
        else:
            timed, counted = _search_labels(self._kind, result.source, result.cache_hit)
        answered = result is not None
        # Only answered searches go into the percentiles of ``latency.search``.
        self._metrics.observe_at(
            "search",
            elapsed,
            timed,
            summary=answered,
            count="searches" if answered else None,
            count_at=counted,
        )
        if self._scope is not None:
            return self._scope.__exit__(exc_type, exc, tb)
        return None

    def answered(self, result: CompsResult) -> None:
        self.result = result
        span = self.span
        if self.traced and span.is_recording():
            span.set_attribute("kuya_store.source", result.source.value)
            span.set_attribute("kuya_store.cache_hit", result.cache_hit)
            # Pages this call asked the upstream for: none when it was answered from a tier.
            span.set_attribute(
                "kuya_store.upstream_pages", 0 if result.cache_hit else result.pages_scraped or 0
            )
            span.set_attribute("kuya_store.pages_scraped", result.pages_scraped or 0)
            span.set_attribute("kuya_store.listings", len(result.listings))


def search_outcome(result: CompsResult | None, cancelled: bool) -> tuple[str, str]:
    """The ``source`` and ``outcome`` labels of a search that ended with ``result``."""
    if result is None:
        return "none", "cancelled" if cancelled else "failed"
    return result.source.value, "hit" if result.cache_hit else "fetched"


@functools.cache
def _search_labels(
    kind: SearchType, source: Source | None, flag: bool
) -> tuple[Labels, tuple[str, Labels]]:
    """The keys a search's duration and outcome are counted under (few combinations).

    Args:
        source: who answered; ``None`` when nothing did.
        flag: the answer's ``cache_hit``; with no answer, whether the search was cancelled.
    """
    if source is None:
        label, outcome = search_outcome(None, flag)
    else:
        label, outcome = source.value, "hit" if flag else "fetched"
    labels = {"search_type": kind.value, "source": label}
    return labels_of(labels), ("searches", labels_of({**labels, "outcome": outcome}))


@functools.cache
def _tier_labels(tier: str, hit: bool) -> Labels:
    return labels_of({"tier": tier, "outcome": "hit" if hit else "miss"})


def watch_search(metrics: Metrics, card: str, kind: SearchType) -> SearchWatch:
    """The span of one ``search()``, and its duration and outcome counted when it ends."""
    return SearchWatch(metrics, card, kind)


class TierWatch:
    """The span of one tier read; its duration by tier and outcome is counted when it ends.

    Told by setting :attr:`hit` whether the tier answered.
    """

    __slots__ = ("_metrics", "_on_hit", "_scope", "_span", "_started", "_tier", "hit")

    def __init__(
        self, metrics: Metrics | None, tier: str, traced: bool = True, on_hit: str | None = None
    ) -> None:
        self._metrics = metrics
        self._tier = tier
        self._on_hit = on_hit
        self._scope = (
            tracing.span(f"kuya_store.tier.{tier}", {"kuya_store.tier": tier}) if traced else None
        )
        self._span: tracing.Span = tracing.NO_SPAN
        self._started = 0.0
        self.hit = False

    def __enter__(self) -> TierWatch:
        if self._scope is not None:
            self._span = self._scope.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._metrics is not None:
            self._metrics.observe_at(
                "tier",
                (time.perf_counter() - self._started) * 1000,
                _tier_labels(self._tier, self.hit),
                summary=False,
                count=self._on_hit if self.hit else None,
            )
        if self._scope is None:
            return None
        self._span.set_attribute("kuya_store.hit", self.hit)
        return self._scope.__exit__(exc_type, exc, tb)


def watch_tier(
    metrics: Metrics | None, tier: str, traced: bool = True, on_hit: str | None = None
) -> TierWatch:
    """The span of one tier read, and its duration by tier and outcome (hit or miss).

    Args:
        metrics: where the duration goes; ``None`` traces the read without counting it.
        traced: ``False`` within a search that no tracer provider records (see
            :attr:`SearchWatch.traced`): its reads make no span of their own either.
        on_hit: the counter a hit also counts one in (with the duration, at once).
    """
    return TierWatch(metrics, tier, traced, on_hit)


@contextmanager
def watch_write(
    metrics: Metrics,
    kind: str,
    rows: int,
    *,
    parent: tracing.TraceParent | None = None,
    links: Sequence[tracing.TraceParent | None] = (),
) -> Iterator[None]:
    """The span of one database write (``persist_fetch``, ``log_searches``) and its duration.

    Args:
        parent: the span the write belongs to (the fetch whose result it stores).
        links: the searches whose rows it writes, when it writes several.
    """
    started = time.perf_counter()
    ok = False
    with tracing.span(
        f"kuya_store.db.{kind}", {"kuya_store.rows": rows}, parent=parent, links=links, root=True
    ):
        try:
            yield
            ok = True
        finally:
            metrics.observe(
                "db_write",
                (time.perf_counter() - started) * 1000,
                {"kind": kind, "outcome": "ok" if ok else "error"},
                summary=False,
            )
