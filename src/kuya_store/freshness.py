"""When a stored result may answer: the freshness rules in one place (pure code)."""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["age", "is_fresh", "remaining"]


def age(fetched_at: datetime, now: datetime) -> timedelta:
    """How long ago the data was fetched upstream (never negative)."""
    return max(now - fetched_at, timedelta(0))


def is_fresh(fetched_at: datetime, now: datetime, window: timedelta) -> bool:
    """True while data fetched at ``fetched_at`` is younger than ``window``."""
    return age(fetched_at, now) < window


def remaining(fetched_at: datetime, now: datetime, window: timedelta) -> timedelta:
    """How much longer the data stays fresh; zero when it no longer is.

    A tier filled from an older source gets only what is left, so a result never
    outlives its freshness window by being copied upwards.
    """
    return max(window - age(fetched_at, now), timedelta(0))
