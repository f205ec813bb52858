"""In-process counters, timings and histograms behind ``store.metrics()``.

A timing keeps a bounded sample for the percentiles of ``store.metrics()`` and, beside it,
the cumulative bucket counts of a Prometheus histogram, so the dashboard, the dict and the
exposition read the same observations. Labelled counters and histograms (a search by its
source, a tier read by its outcome) are kept here too: the Prometheus integration only
reads them, it never counts on its own.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUCKETS_SECONDS", "Histogram", "Labels", "Metrics", "Timing", "labels_of"]

_RESERVOIR = 2048

BUCKETS_SECONDS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds of every latency histogram: from a near-cache hit to a slow paged fetch."""
_BUCKETS_MS = tuple(round(bound * 1000, 6) for bound in BUCKETS_SECONDS)

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Histogram:
    """Observations counted per bucket (not cumulative here), with their count and sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS_MS) + 1))
    count: int = 0
    total_ms: float = 0.0

    def observe(self, ms: float) -> None:
        # A value equal to a bound belongs to that bucket ("le"), hence bisect_left.
        self.counts[bisect.bisect_left(_BUCKETS_MS, ms)] += 1
        self.count += 1
        self.total_ms += ms

    def as_dict(self) -> dict[str, Any]:
        """Cumulative counts per upper bound in seconds (the last bound is ``+Inf``: ``count``)."""
        cumulative, running = [], 0
        for bound, n in zip(BUCKETS_SECONDS, self.counts, strict=False):
            running += n
            cumulative.append([bound, running])
        return {
            "buckets": cumulative,
            "count": self.count,
            "sum_seconds": round(self.total_ms / 1000, 6),
        }


@dataclass(slots=True)
class Timing:
    """Count, total and max of a duration, plus a uniform bounded sample for percentiles."""

    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    _sample: list[float] = field(default_factory=list)
    _skip: int = 0
    """Observations to pass over before the next one replaces a kept one."""
    _weight: float = 1.0

    def observe(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms
        sample = self._sample
        if len(sample) < _RESERVOIR:
            sample.append(ms)
            if len(sample) == _RESERVOIR:
                self._replaced()
        elif self._skip:
            self._skip -= 1
        else:
            sample[random.randrange(_RESERVOIR)] = ms
            self._replaced()

    def _replaced(self) -> None:
        # Reservoir sampling by skips (Li's Algorithm L): every observation has the same
        # chance to be kept, as with a draw per observation, for a draw per replacement.
        self._weight *= math.exp(math.log(1.0 - random.random()) / _RESERVOIR)
        weight = self._weight
        self._skip = (
            math.floor(math.log(1.0 - random.random()) / math.log1p(-weight)) if weight < 1.0 else 0
        )

    def percentile(self, p: float) -> float:
        if not self._sample:
            return 0.0
        ordered = sorted(self._sample)
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]

    def as_dict(self) -> dict[str, float]:
        return {
            "count": self.count,
            "total_ms": round(self.total_ms, 3),
            "avg_ms": round(self.total_ms / self.count, 3) if self.count else 0.0,
            "p50_ms": round(self.percentile(50), 3),
            "p95_ms": round(self.percentile(95), 3),
            "p99_ms": round(self.percentile(99), 3),
            "max_ms": round(self.max_ms, 3),
        }


def labels_of(labels: dict[str, str]) -> Labels:
    """The key of one combination of label values, for the ``*_at`` methods of :class:`Metrics`.

    A caller that counts the same combinations again and again keeps their keys.
    """
    return tuple(sorted(labels.items()))


class Metrics:
    """Thread-safe counters and timings; cheap enough for the hot path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._timings: dict[str, Timing] = {}
        self._labelled: dict[str, Counter[Labels]] = {}
        self._histograms: dict[str, dict[Labels, Histogram]] = {}

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def incr_by(self, name: str, labels: dict[str, str], amount: int = 1) -> None:
        """Count under ``name`` for one combination of label values (a source, an outcome)."""
        self.incr_at(name, labels_of(labels), amount)

    def incr_at(self, name: str, key: Labels, amount: int = 1) -> None:
        """:meth:`incr_by` for a key from :func:`labels_of`."""
        with self._lock:
            self._count_at(name, key, amount)

    def _count_at(self, name: str, key: Labels, amount: int) -> None:
        family = self._labelled.get(name)
        if family is None:
            family = self._labelled[name] = Counter()
        family[key] += amount

    def observe(
        self, name: str, ms: float, labels: dict[str, str] | None = None, *, summary: bool = True
    ) -> None:
        """Record a duration in the histogram of ``name`` (one per combination of labels).

        Args:
            summary: also count it in the timing of ``name`` that ``store.metrics()``
                reports with percentiles.
        """
        self.observe_at(name, ms, labels_of(labels) if labels else (), summary=summary)

    def observe_at(
        self,
        name: str,
        ms: float,
        key: Labels,
        *,
        summary: bool = True,
        count: str | None = None,
        count_at: tuple[str, Labels] | None = None,
    ) -> None:
        """:meth:`observe` for a key from :func:`labels_of`.

        Args:
            count: also :meth:`incr` this counter, under the same lock.
            count_at: also :meth:`incr_at` this counter and key.
        """
        with self._lock:
            if count is not None:
                self._counters[count] += 1
            if count_at is not None:
                self._count_at(*count_at, 1)
            if summary:
                timing = self._timings.get(name)
                if timing is None:
                    timing = self._timings[name] = Timing()
                timing.observe(ms)
            family = self._histograms.get(name)
            if family is None:
                family = self._histograms[name] = {}
            histogram = family.get(key)
            if histogram is None:
                histogram = family[key] = Histogram()
            histogram.observe(ms)

    def count(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def snapshot(self) -> dict[str, Any]:
        """A plain copy: counters, timings, labelled counters and histograms.

        ``{"counters": {...}, "timings": {name: {...}}, "labelled": {name: [{"labels": {...},
        "value": n}]}, "histograms": {name: [{"labels": {...}, "buckets": [[le, n], ...],
        "count": n, "sum_seconds": s}]}}``
        """
        with self._lock:
            return {
                "counters": dict(sorted(self._counters.items())),
                "timings": {k: t.as_dict() for k, t in sorted(self._timings.items())},
                "labelled": {
                    name: [
                        {"labels": dict(key), "value": value}
                        for key, value in sorted(family.items())
                    ]
                    for name, family in sorted(self._labelled.items())
                },
                "histograms": {
                    name: [
                        {"labels": dict(key), **histogram.as_dict()}
                        for key, histogram in sorted(family.items())
                    ]
                    for name, family in sorted(self._histograms.items())
                },
            }
