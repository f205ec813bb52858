"""``volume_confidence``: how far a snapshot's market value can be trusted.

Three things decide it, each scored on its own and the weakest one wins: how many usable
sales there are, how recent the dated ones are (an unknown date is *unknown*, never
"old"), and how tightly the prices that survive trimming agree. The thresholds are the
module constants below and are listed in ``docs/pricing.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from kuya_store.pricing._exact import iqr_over_median, units

__all__ = ["Confidence", "dispersion", "volume_confidence"]

Confidence = Literal["none", "insufficient", "low", "medium", "high"]
_LEVELS: tuple[Confidence, ...] = ("low", "medium", "high")

HIGH_SALES = 20
MEDIUM_SALES = 8
HIGH_RECENT = 10
MEDIUM_RECENT = 3
HIGH_DISPERSION = Fraction(30, 100)
MEDIUM_DISPERSION = Fraction(60, 100)


def dispersion(prices: Sequence[Decimal]) -> Fraction | None:
    """Interquartile range over the median (``None`` when the median is 0 or no price)."""
    return iqr_over_median(sorted(units(prices)[0]))


def _by_count(n: int) -> int:
    return 2 if n >= HIGH_SALES else 1 if n >= MEDIUM_SALES else 0


def _by_recency(dated: int, recent: int) -> int:
    if dated == 0:
        return 1  # no date at all: recency is unknown, which caps at "medium"
    return 2 if recent >= HIGH_RECENT else 1 if recent >= MEDIUM_RECENT else 0


def _by_dispersion(spread: Fraction | None) -> int:
    if spread is None:
        return 0
    return 2 if spread <= HIGH_DISPERSION else 1 if spread <= MEDIUM_DISPERSION else 0


def volume_confidence(
    n: int, *, min_sample: int, dated: int, recent: int, spread: Fraction | None
) -> Confidence:
    """The confidence label of a snapshot.

    Args:
        n: usable sales.
        min_sample: fewer sales than this give ``"insufficient"`` (none: ``"none"``).
        dated: usable sales that have a sale date.
        recent: dated sales within the recent window.
        spread: :func:`dispersion` of the prices kept after trimming.
    """
    if n == 0:
        return "none"
    if n < min_sample:
        return "insufficient"
    return _LEVELS[min(_by_count(n), _by_recency(dated, recent), _by_dispersion(spread))]
