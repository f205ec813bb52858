"""Injectable time, so freshness and TTL rules are tested without sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = ["Clock", "ManualClock", "utcnow"]

Clock = Callable[[], datetime]
"""A callable returning the current tz-aware UTC moment."""


def utcnow() -> datetime:
    """The current moment, tz-aware UTC."""
    return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to; for tests, demos and replays."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds) and return the new moment."""
        self.now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        return self.now
