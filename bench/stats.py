"""Latency sampling helpers."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable


async def sample(work: Callable[[], Awaitable[object]], n: int, warmup: int = 50) -> list[float]:
    """Run ``work`` ``n`` times after a warm-up; return each duration in microseconds."""
    for _ in range(warmup):
        await work()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await work()
        out.append((time.perf_counter() - started) * 1e6)
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<52} p50 {pct(values, 50):9.1f} us   p99 {pct(values, 99):9.1f} us   "
        f"mean {statistics.fmean(values):9.1f} us"
    )
