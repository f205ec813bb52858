"""Prometheus exposition of ``store.metrics()`` with ``prometheus_client`` (``prometheus`` extra).

```python
from kuya_store.integrations.prometheus import exposition

body, content_type = exposition(store)
```

The collector reads the store's own counters and histograms at scrape time and counts
nothing itself, so the exposition, ``store.metrics()`` and the dashboard agree. Names
follow the Prometheus conventions: the ``kuya_store_`` prefix, base units (seconds,
bytes), ``_total`` on counters, histograms with buckets for every latency.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["StoreCollector", "exposition"]

_SEARCH_TYPES = ("sold", "active")
_WRITE_OUTCOMES = ("written", "dropped", "rejected", "user_unknown", "refused_closed")
# (name in store.metrics()["histograms"], exposed name, labels, help)
_HISTOGRAMS = (
    (
        "search",
        "search_duration_seconds",
        ("search_type", "source"),
        "search() durations by search type and the tier that answered (none: it raised).",
    ),
    (
        "tier",
        "tier_duration_seconds",
        ("tier", "outcome"),
        "Reads of each tier (near, memory, redis, database) by whether they answered.",
    ),
    (
        "fetch",
        "fetch_duration_seconds",
        ("search_type", "outcome"),
        "Upstream fetches, every page and retry included, by outcome.",
    ),
    ("db_query", "db_query_duration_seconds", (), "Database statement durations."),
    (
        "db_write",
        "db_write_duration_seconds",
        ("kind", "outcome"),
        "Write-behind transactions: log_searches (a batch of rows), persist_fetch (a result).",
    ),
)


class _HasMetrics(Protocol):
    def metrics(self) -> dict[str, Any]: ...


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def _by_label(
    name: str,
    doc: str,
    labels: Sequence[str],
    rows: Iterable[tuple[Sequence[str], float]],
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily] = CounterMetricFamily,
) -> Metric:
    family = kind(name, doc, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


def _histogram(name: str, doc: str, labels: Sequence[str], series: list[dict[str, Any]]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for one in series:
        buckets: list[tuple[str, float]] = [(repr(float(le)), n) for le, n in one["buckets"]]
        buckets.append(("+Inf", one["count"]))
        family.add_metric(
            [str(one["labels"].get(label, "")) for label in labels],
            buckets,
            sum_value=one["sum_seconds"],
        )
    return family


def _labelled(m: dict[str, Any], name: str, labels: Sequence[str]) -> list[tuple[list[str], int]]:
    return [
        ([str(row["labels"].get(label, "")) for label in labels], row["value"])
        for row in m.get("labelled", {}).get(name, [])
    ]


def _per_search_type(m: dict[str, Any], name: str) -> list[tuple[list[str], int]]:
    """One series per search type, zero until it counts (so a rate query has a start)."""
    counted = {values[0]: value for values, value in _labelled(m, name, ("search_type",))}
    return [([kind], counted.get(kind, 0)) for kind in _SEARCH_TYPES]


def _period_kind(period: str) -> str:
    # Budget periods are named by the UTC day ("2026-12-01") or hour ("2026-12-01T13").
    return "hourly" if "T" in period else "daily"


class StoreCollector(Collector):
    """Collects a store's counters, histograms and gauges at scrape time.

    It holds the store weakly: a registry that outlives the store never keeps it (and its
    connections and buffers) alive, and collects nothing once the store is gone.
    """

    def __init__(self, store: _HasMetrics, namespace: str = "kuya_store") -> None:
        self._store = weakref.ref(store)
        self._ns = namespace

    def collect(self) -> Iterator[Metric]:
        store = self._store()
        if store is None:
            return
        m = store.metrics()
        del store  # the scrape holds only the numbers
        yield from self._searches(m)
        yield from self._upstream(m)
        yield from self._writes(m)
        yield from self._database(m)
        for source, exposed, labels, doc in _HISTOGRAMS:
            series = m.get("histograms", {}).get(source, [])
            yield _histogram(f"{self._ns}_{exposed}", doc, labels, series)

    def _searches(self, m: dict[str, Any]) -> Iterator[Metric]:
        ns = self._ns
        yield _by_label(
            f"{ns}_searches",
            "Searches by search type, the tier that answered, and outcome "
            "(hit: no upstream call; fetched: this call paid; failed; cancelled).",
            ("search_type", "source", "outcome"),
            _labelled(m, "searches", ("search_type", "source", "outcome")),
        )
        yield _by_label(
            f"{ns}_tier_hits",
            "Lookups each tier answered (stale: a stored result served because the fetch failed).",
            ("tier",),
            (([tier], count) for tier, count in m["tier_hits"].items()),
        )
        yield _counter(f"{ns}_misses", "Lookups no stored tier could answer.", m["misses"])
        yield _counter(
            f"{ns}_corrupt_entries", "Hot-tier values that failed to decode.", m["corrupt_entries"]
        )
        yield _counter(f"{ns}_redis_errors", "Failed Redis calls.", m["redis"]["errors"])
        yield _counter(
            f"{ns}_redis_breaker_opens",
            "Times the Redis circuit breaker opened.",
            m["redis"]["breaker_opens"],
        )
        near = m.get("near_cache", {})
        yield GaugeMetricFamily(
            f"{ns}_near_cache_entries", "Results in the near-cache.", value=near.get("entries", 0)
        )
        yield GaugeMetricFamily(
            f"{ns}_near_cache_bytes", "Size of the near-cache.", value=near.get("bytes", 0)
        )

    def _upstream(self, m: dict[str, Any]) -> Iterator[Metric]:
        ns = self._ns
        yield _by_label(
            f"{ns}_api_calls",
            "Paid upstream requests (each attempt; a whole-result fetch counts its pages).",
            ("search_type",),
            _per_search_type(m, "api_calls"),
        )
        yield _by_label(
            f"{ns}_api_errors",
            "Failed upstream requests.",
            ("search_type",),
            _per_search_type(m, "api_errors"),
        )
        yield _counter(f"{ns}_api_retries", "Upstream requests retried.", m["api_retries"])
        yield _counter(
            f"{ns}_api_calls_saved",
            "Searches answered by a stored tier instead of the upstream.",
            m["api_calls_saved"],
        )
        yield _counter(
            f"{ns}_single_flight_waits",
            "Searches that shared another search's fetch instead of paying for their own.",
            m["single_flight_waits"],
        )
        budget = m.get("budget", {})
        rows = [
            ([kind, _period_kind(period)], figures)
            for kind in _SEARCH_TYPES
            for period, figures in budget.get(kind, {}).items()
        ]
        yield _by_label(
            f"{ns}_api_budget_used",
            "Upstream requests this process reserved in the current budget period.",
            ("search_type", "period"),
            ((labels, figures["used_here"]) for labels, figures in rows),
            GaugeMetricFamily,
        )
        yield _by_label(
            f"{ns}_api_budget_limit",
            "Upstream requests allowed per budget period.",
            ("search_type", "period"),
            ((labels, figures["limit"]) for labels, figures in rows),
            GaugeMetricFamily,
        )
        refused = budget.get("refused", {})
        yield _by_label(
            f"{ns}_api_budget_refused",
            "Upstream requests refused because the budget was spent.",
            ("search_type",),
            (([kind], refused.get(kind, 0)) for kind in _SEARCH_TYPES),
        )
        yield _counter(
            f"{ns}_api_budget_fallbacks",
            "Budget reservations counted by a fallback because the shared counter was down.",
            budget.get("fallbacks", 0),
        )

    def _writes(self, m: dict[str, Any]) -> Iterator[Metric]:
        ns = self._ns
        writes = m["writes"]
        yield _by_label(
            f"{ns}_writes",
            "Write-behind records by outcome.",
            ("outcome",),
            (([outcome], writes.get(outcome, 0)) for outcome in _WRITE_OUTCOMES),
        )
        yield _counter(
            f"{ns}_write_retries", "Write-behind batches retried.", writes.get("retries", 0)
        )
        yield GaugeMetricFamily(
            f"{ns}_write_buffer_pending", "Records waiting to be written.", value=writes["pending"]
        )
        yield GaugeMetricFamily(
            f"{ns}_write_buffer_capacity",
            "Records the write buffer holds before it drops (write_buffer_size).",
            value=writes.get("capacity", 0),
        )
        yield from self._journal(m.get("journal", {}))

    def _journal(self, journal: dict[str, Any]) -> Iterator[Metric]:
        """The durable write path's Redis Stream: traffic, and the stream as last read."""
        if not journal.get("enabled"):
            return
        ns = self._ns
        for name, help_text in (
            ("appended", "Records put on the write journal (a Redis Stream)."),
            ("acked", "Journal entries acknowledged after their database commit."),
            ("claimed", "Journal entries taken over from a worker that stopped reading."),
            ("fallbacks", "Records kept in this process because the journal was unreachable."),
            ("corrupt", "Journal entries that did not decode (acknowledged and skipped)."),
        ):
            yield _counter(f"{ns}_journal_{name}", help_text, journal.get(name, 0))
        for name, help_text in (
            ("length", "Entries on the journal stream."),
            ("lag", "Journal entries not yet read by the workers' consumer group."),
            ("pending", "Journal entries read but not yet acknowledged."),
            ("trimmed_unacked", "Journal entries trimmed from the stream before being written."),
        ):
            value = journal.get(name)
            if value is not None:
                yield GaugeMetricFamily(f"{ns}_journal_{name}", help_text, value=value)

    def _database(self, m: dict[str, Any]) -> Iterator[Metric]:
        ns = self._ns
        db = m["database"]
        yield _counter(
            f"{ns}_db_slow_queries",
            "Statements slower than the slow-query threshold.",
            db["slow_queries"],
        )
        yield _counter(f"{ns}_db_read_errors", "Database reads that failed.", db["read_errors"])
        yield _counter(
            f"{ns}_db_breaker_opens",
            "Times the database circuit breaker opened.",
            db.get("breaker_opens", 0),
        )
        pool = db.get("pool", {})
        if "size" in pool:
            yield GaugeMetricFamily(
                f"{ns}_db_pool_size", "Connections the pool keeps open.", value=pool["size"]
            )
        states = [
            (key, pool[key]) for key in ("checkedout", "checkedin", "overflow") if key in pool
        ]
        if states:
            yield _by_label(
                f"{ns}_db_pool_connections",
                "Pool connections by state (overflow: opened beyond the pool size).",
                ("state",),
                (([key.replace("checked", "checked_")], value) for key, value in states),
                GaugeMetricFamily,
            )
        if db.get("size_bytes") is not None:
            yield GaugeMetricFamily(
                f"{ns}_database_size_bytes",
                "Database size (as of the last store.database_size()).",
                value=db["size_bytes"],
            )


# One registry per store, dropped with the store (the collector holds it weakly too).
_registries: weakref.WeakKeyDictionary[_HasMetrics, CollectorRegistry] = weakref.WeakKeyDictionary()


def exposition(store: _HasMetrics) -> tuple[bytes, str]:
    """The Prometheus text exposition of a store's metrics, and its content type."""
    registry = _registries.get(store)
    if registry is None:
        registry = _registries[store] = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(store))
    return generate_latest(registry), CONTENT_TYPE_LATEST
