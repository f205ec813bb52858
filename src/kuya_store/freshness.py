"""When a stored result may answer: the freshness rules in one place (pure code).

The policy that sets a result's window is chosen by the ``freshness_policy`` setting:
``"sale_rate"`` (the default) answers a card that rarely sells for longer, ``"fixed"``
keeps the plan's windows; an object with ``fresh_for`` can be passed to the store instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from kuya_store.models import Listing, SearchType
from kuya_store.settings import StoreSettings

if TYPE_CHECKING:
    from kuya_store.stored import StoredResult

__all__ = [
    "FixedFreshness",
    "FreshnessPolicy",
    "SaleRateFreshness",
    "age",
    "copy_ttl",
    "fresh_until",
    "is_fresh",
    "policy_for",
    "remaining",
    "sale_rate",
]


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


# -- how long a stored result answers --------------------------------------------------------


class FreshnessPolicy(Protocol):
    """Decides how long a fetched result answers, from what it holds (pure, no I/O)."""

    def fresh_for(
        self, search_type: SearchType, listings: Sequence[Listing], fetched_at: datetime
    ) -> timedelta: ...


@dataclass(frozen=True, slots=True)
class FixedFreshness:
    """Every result answers for its search type's window (the plan's 30 / 5 minutes)."""

    sold: timedelta = timedelta(minutes=30)
    active: timedelta = timedelta(minutes=5)

    def fresh_for(
        self, search_type: SearchType, listings: Sequence[Listing], fetched_at: datetime
    ) -> timedelta:
        return self.sold if search_type is SearchType.SOLD else self.active


def sale_rate(listings: Sequence[Listing], fetched_at: datetime) -> float | None:
    """Sales per hour that a sold result shows, or ``None`` when its sales are undated.

    Counts the dated sales over the time from the oldest of them to the fetch, plus one
    sale (so a card with few sales does not look quieter than it may be).
    """
    dates = [x.sold_date for x in listings if x.sold and x.sold_date is not None]
    if not dates:
        return None if listings else 0.0
    span = (fetched_at - min(dates)).total_seconds() / 3600
    return (len(dates) + 1) / max(span, 1 / 60)


@dataclass(frozen=True, slots=True)
class SaleRateFreshness:
    """A sold result answers until it would be missing ``expected_new_sales`` sales.

    Its window is ``expected_new_sales / sale rate``, between ``sold_min`` (a card that
    keeps selling is asked again after 10 minutes) and ``sold_max`` (a card that never
    sells is asked again after a day). Sales without dates keep ``sold_undated`` (the
    plan's 30 minutes), and active listings (prices and endings change) ``active``.

    The floor sits below the plan's 30 minutes on purpose: a cache keyed by every
    parameter answers most searches with a fresh fetch, so a busy card kept 30 minutes
    would miss more sales per answer than that cache does. Quiet cards pay for it: most
    cards sell a few times a week, and their windows grow to ``sold_max``.
    """

    sold_min: timedelta = timedelta(minutes=10)
    sold_max: timedelta = timedelta(hours=24)
    active: timedelta = timedelta(minutes=5)
    expected_new_sales: float = 0.25
    sold_undated: timedelta = timedelta(minutes=30)

    def fresh_for(
        self, search_type: SearchType, listings: Sequence[Listing], fetched_at: datetime
    ) -> timedelta:
        if search_type is not SearchType.SOLD:
            return self.active
        rate = sale_rate(listings, fetched_at)
        if rate is None:
            return self.sold_undated
        if rate <= 0:
            return self.sold_max
        window = timedelta(hours=self.expected_new_sales / rate)
        return min(max(window, self.sold_min), self.sold_max)


def policy_for(settings: StoreSettings) -> FreshnessPolicy:
    """The policy the ``freshness_policy`` setting names, with the settings' windows."""
    if settings.freshness_policy == "fixed":
        return FixedFreshness(sold=settings.sold_fresh_for, active=settings.active_fresh_for)
    return SaleRateFreshness(
        sold_min=settings.sold_min_fresh_for,
        sold_max=settings.sold_max_fresh_for,
        active=settings.active_fresh_for,
        expected_new_sales=settings.expected_new_sales,
        sold_undated=settings.sold_fresh_for,
    )


def fresh_until(stored: StoredResult, fallback: timedelta) -> datetime:
    """Until when a stored result answers: its policy's verdict, else ``fallback`` after it."""
    if stored.fresh_until is not None:
        return stored.fresh_until
    return stored.fetched_at + fallback


def copy_ttl(fresh_left: timedelta, shown_left: timedelta | None, tier_ttl: timedelta) -> timedelta:
    """How long a tier keeps a copy from now: its own TTL, never past the result's freshness.

    Nor past its display data's ``display_ttl`` (``shown_left``; ``None`` when unbound):
    a copy never outlives either rule by being copied upwards.
    """
    left = fresh_left if shown_left is None else min(fresh_left, shown_left)
    return max(min(left, tier_ttl), timedelta(0))
