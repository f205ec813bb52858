"""Prometheus exposition of ``store.metrics()`` (the ``prometheus`` extra).

```python
from kuya_store.integrations.prometheus import exposition

body, content_type = exposition(store)
```
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

__all__ = ["StoreCollector", "exposition"]


class _HasMetrics(Protocol):
    def metrics(self) -> dict[str, Any]: ...


def _counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels) if labels else None)
    family.add_metric(list(labels.values()) if labels else [], value)
    return family


def _summary(name: str, doc: str, timing: dict[str, float]) -> Metric:
    return SummaryMetricFamily(
        name,
        doc,
        count_value=int(timing.get("count", 0)),
        sum_value=timing.get("total_ms", 0.0) / 1000,
    )


class StoreCollector(Collector):
    """Collects a store's counters, timings and gauges at scrape time.

    It holds the store weakly: a registry that outlives the store never keeps it (and its
    connections and buffers) alive, and collects nothing once the store is gone.
    """

    def __init__(self, store: _HasMetrics, namespace: str = "kuya") -> None:
        self._store = weakref.ref(store)
        self._ns = namespace

    def collect(self) -> Iterator[Metric]:
        store = self._store()
        if store is None:
            return
        m = store.metrics()
        ns = self._ns
        yield _counter(f"{ns}_searches", "Searches answered.", m["searches"])
        hits = CounterMetricFamily(
            f"{ns}_tier_hits", "Searches answered by each tier.", labels=["tier"]
        )
        for tier, count in m["tier_hits"].items():
            hits.add_metric([tier], count)
        yield hits
        yield _counter(f"{ns}_misses", "Searches no stored tier could answer.", m["misses"])
        yield _counter(f"{ns}_api_calls", "Upstream fetcher calls (each attempt).", m["api_calls"])
        yield _counter(f"{ns}_api_errors", "Failed upstream fetcher calls.", m["api_errors"])
        yield _counter(
            f"{ns}_api_calls_saved",
            "Searches answered without a fetcher call.",
            m["api_calls_saved"],
        )
        yield _counter(
            f"{ns}_corrupt_entries", "Hot-tier values that failed to decode.", m["corrupt_entries"]
        )
        writes = CounterMetricFamily(
            f"{ns}_writes", "Write-behind records by outcome.", labels=["outcome"]
        )
        for outcome in (
            "written",
            "dropped",
            "rejected",
            "retries",
            "user_unknown",
            "refused_closed",
        ):
            writes.add_metric([outcome], m["writes"].get(outcome, 0))
        yield writes
        budget = m.get("budget", {})
        used = GaugeMetricFamily(
            f"{ns}_api_budget_used",
            "Upstream requests this process reserved in the current budget period.",
            labels=["search_type", "period"],
        )
        limits = GaugeMetricFamily(
            f"{ns}_api_budget_limit",
            "Upstream requests allowed per budget period.",
            labels=["search_type", "period"],
        )
        for kind in ("sold", "active"):
            for period, figures in budget.get(kind, {}).items():
                used.add_metric([kind, period], figures["used_here"])
                limits.add_metric([kind, period], figures["limit"])
        yield used
        yield limits
        refused = CounterMetricFamily(
            f"{ns}_api_budget_refused",
            "Upstream requests refused because the budget was spent.",
            labels=["search_type"],
        )
        for kind, count in budget.get("refused", {}).items():
            refused.add_metric([kind], count)
        yield refused
        yield GaugeMetricFamily(
            f"{ns}_write_buffer_pending",
            "Records waiting to be written.",
            value=m["writes"]["pending"],
        )
        yield _counter(f"{ns}_redis_errors", "Failed Redis calls.", m["redis"]["errors"])
        yield _counter(
            f"{ns}_redis_breaker_opens",
            "Times the Redis circuit breaker opened.",
            m["redis"]["breaker_opens"],
        )
        db = m["database"]
        yield _summary(f"{ns}_db_query_seconds", "Database statement durations.", db["queries"])
        yield _counter(
            f"{ns}_db_slow_queries",
            "Statements slower than the slow-query threshold.",
            db["slow_queries"],
        )
        yield _counter(f"{ns}_db_read_errors", "Database reads that failed.", db["read_errors"])
        pool = db.get("pool", {})
        for key in ("size", "checkedout", "overflow"):
            if key in pool:
                yield GaugeMetricFamily(
                    f"{ns}_db_pool_{key}", f"Connection pool {key}.", value=pool[key]
                )
        if db.get("size_bytes") is not None:
            yield GaugeMetricFamily(
                f"{ns}_database_size_bytes", "Database size.", value=db["size_bytes"]
            )
        yield _summary(f"{ns}_search_seconds", "search() durations.", m["latency"]["search"])
        yield _summary(
            f"{ns}_fetch_seconds",
            "Upstream fetch durations, retries included.",
            m["latency"]["fetch"],
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
