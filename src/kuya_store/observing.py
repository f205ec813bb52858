"""What a search, a tier read and a database write report: one span and one measurement each.

Each ``watch_*`` opens the span of its work (:mod:`kuya_store.tracing`) and, when the
work is over, records its duration in the store's histograms and counts its outcome
(:mod:`kuya_store.metrics`), so traces, ``store.metrics()`` and the Prometheus
exposition describe the same calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from kuya_store import tracing
from kuya_store.metrics import Metrics
from kuya_store.models import CompsResult, SearchType

__all__ = [
    "SearchWatch",
    "TierWatch",
    "search_outcome",
    "watch_search",
    "watch_tier",
    "watch_write",
]


class SearchWatch:
    """Told the answer of one search, so its span and counters can say who answered."""

    __slots__ = ("result", "span")

    def __init__(self, span: tracing.Span) -> None:
        self.span = span
        self.result: CompsResult | None = None

    def answered(self, result: CompsResult) -> None:
        self.result = result
        span = self.span
        if span.is_recording():
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


@contextmanager
def watch_search(metrics: Metrics, card: str, kind: SearchType) -> Iterator[SearchWatch]:
    """The span of one ``search()``, and its duration and outcome counted when it ends."""
    started = time.perf_counter()
    cancelled = False
    attributes = {"kuya_store.card": card, "kuya_store.search_type": kind.value}
    with tracing.span("kuya_store.search", attributes) as span:
        watch = SearchWatch(span)
        try:
            yield watch
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            source, outcome = search_outcome(watch.result, cancelled)
            answered = watch.result is not None
            if answered:
                metrics.incr("searches")
            # Only answered searches go into the percentiles of ``latency.search``.
            labels = {"search_type": kind.value, "source": source}
            metrics.observe("search", elapsed, labels, summary=answered)
            metrics.incr_by("searches", {**labels, "outcome": outcome})


class TierWatch:
    """Told whether a tier answered a read."""

    __slots__ = ("hit",)

    def __init__(self) -> None:
        self.hit = False


@contextmanager
def watch_tier(metrics: Metrics | None, tier: str) -> Iterator[TierWatch]:
    """The span of one tier read, and its duration by tier and outcome (hit or miss).

    Args:
        metrics: where the duration goes; ``None`` traces the read without counting it.
    """
    started = time.perf_counter()
    watch = TierWatch()
    with tracing.span(f"kuya_store.tier.{tier}", {"kuya_store.tier": tier}) as span:
        try:
            yield watch
        finally:
            span.set_attribute("kuya_store.hit", watch.hit)
            if metrics is not None:
                metrics.observe(
                    "tier",
                    (time.perf_counter() - started) * 1000,
                    {"tier": tier, "outcome": "hit" if watch.hit else "miss"},
                    summary=False,
                )


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
