"""Latency sampling helpers, and the targets every benchmark reports against."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


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


async def sample_interleaved(
    works: dict[str, Callable[[], Awaitable[object]]], n: int, warmup: int = 50, rounds: int = 5
) -> dict[str, list[float]]:
    """Sample several contenders in alternating rounds, so drift (CPU frequency, a noisy
    neighbour, a growing heap) hits every contender alike; durations in microseconds."""
    out: dict[str, list[float]] = {name: [] for name in works}
    for work in works.values():
        for _ in range(warmup):
            await work()
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for name, work in works.items():
            out[name].extend(await sample(work, per_round, warmup=0))
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<52} p50 {pct(values, 50):9.1f} us   p99 {pct(values, 99):9.1f} us   "
        f"mean {statistics.fmean(values):9.1f} us"
    )


def ms_line(name: str, values_ms: list[float]) -> str:
    return (
        f"{name:<52} p50 {pct(values_ms, 50):9.2f} ms   p99 {pct(values_ms, 99):9.2f} ms   "
        f"mean {statistics.fmean(values_ms):9.2f} ms"
    )


@dataclass(frozen=True)
class Target:
    """One target: what was asked, what was measured, whether it was met."""

    name: str
    wanted: str
    measured: str
    met: bool


def targets_table(targets: list[Target]) -> str:
    rows = [("target", "wanted", "measured", "met"), ("---", "---", "---", "---")]
    rows += [(t.name, t.wanted, t.measured, "yes" if t.met else "NO") for t in targets]
    return "\n".join(f"| {' | '.join(row)} |" for row in rows)
