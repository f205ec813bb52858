"""In-process counters and timings behind ``store.metrics()``."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Metrics", "Timing"]

_RESERVOIR = 2048


@dataclass(slots=True)
class Timing:
    """Count, total and max of a duration, plus a uniform bounded sample for percentiles."""

    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    _sample: list[float] = field(default_factory=list)

    def observe(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        self.max_ms = max(self.max_ms, ms)
        if len(self._sample) < _RESERVOIR:
            self._sample.append(ms)
        else:
            # Reservoir sampling: every observation has the same chance to be kept.
            slot = random.randrange(self.count)
            if slot < _RESERVOIR:
                self._sample[slot] = ms

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


class Metrics:
    """Thread-safe counters and timings; cheap enough for the hot path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()
        self._timings: dict[str, Timing] = {}

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def observe(self, name: str, ms: float) -> None:
        with self._lock:
            timing = self._timings.get(name)
            if timing is None:
                timing = self._timings[name] = Timing()
            timing.observe(ms)

    def count(self, name: str) -> int:
        with self._lock:
            return self._counters[name]

    def snapshot(self) -> dict[str, Any]:
        """A plain copy: ``{"counters": {...}, "timings": {name: {...}}}``."""
        with self._lock:
            return {
                "counters": dict(sorted(self._counters.items())),
                "timings": {k: t.as_dict() for k, t in sorted(self._timings.items())},
            }
