"""Exact money arithmetic on integers, for the valuation and its confidence.

A price ``p`` is held as the integer ``p * scale`` (``scale`` is 100 when every price is
whole cents) and a float weight, a binary fraction, as an integer over a common power of
two. Every quantity the valuation compares or rounds is then a ratio of two integers, so
the results are the exact rational ones, rounded half-up to the cent once, at the end,
without normalising a ``Fraction`` at each step.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from decimal import Decimal
from fractions import Fraction
from itertools import accumulate

__all__ = [
    "cents_to_money",
    "integer_weights",
    "iqr_over_median",
    "money",
    "percent",
    "quartile4",
    "units",
    "weighted_cents",
]

_CENT = Decimal("0.01")
_TENTH = Decimal("0.1")
_EXACT = 10**27  # fewer digits than the default Decimal context's 28
_FLOAT_SHIFT = 2.0**100
_FLOAT_LOW = 2.0**-47  # a float at least this large times 2 ** 100 is an integer
_FLOAT_HIGH = 2.0**900  # ... and at most this large stays finite


def units(prices: Iterable[Decimal]) -> tuple[list[int], int]:
    """The prices as integers over one ``scale``: ``prices[i] == units[i] / scale`` exactly."""
    ratios = [p.as_integer_ratio() for p in prices]
    scale = 100
    for _, den in ratios:
        if scale % den:  # more than two places: only a listing built without validation
            scale = math.lcm(scale, den)
    return [num * (scale // den) for num, den in ratios], scale


def round_cents(num: int, den: int) -> int:
    """``num / den`` (``den > 0``) in cents, rounded half-up."""
    return (200 * num + den) // (2 * den)


def cents_to_money(cents: int) -> Decimal:
    """A whole number of cents as a 2-place ``Decimal``."""
    if -_EXACT < cents < _EXACT:  # within the context's precision: scaleb is exact
        return Decimal(cents).scaleb(-2)
    return Decimal(cents).scaleb(-2).quantize(_CENT)  # raises as the context says


def money(num: int, den: int) -> Decimal:
    """``num / den`` (``den > 0``) rounded half-up to the cent."""
    return cents_to_money(round_cents(num, den))


def percent(num: int, den: int) -> str:
    """The percentage ``num / den`` (``den != 0``) rounded half away from zero to one place."""
    a, b = abs(num), abs(den)
    tenths = (20 * a + b) // (2 * b)
    if tenths < _EXACT:
        text = f"{tenths // 10}.{tenths % 10}"  # what str() of that Decimal shows
    else:
        text = str(Decimal(tenths).scaleb(-1).quantize(_TENTH))
    negative = num != 0 and (num < 0) != (den < 0)
    return f"-{text}" if negative and tenths else text


def quartile4(ordered: Sequence[int], quarter: int) -> int:
    """Four times the unweighted ``quarter / 4`` quantile of sorted integers.

    Linear between order statistics (``numpy``'s default rule); the position
    ``(n - 1) * quarter / 4`` is a whole number of quarters, so four times the quantile is
    an integer.
    """
    lo, rest = divmod((len(ordered) - 1) * quarter, 4)
    hi = min(lo + 1, len(ordered) - 1)
    return 4 * ordered[lo] + rest * (ordered[hi] - ordered[lo])


def iqr_over_median(ordered: Sequence[int]) -> Fraction | None:
    """Interquartile range over the median of sorted integers (``None``: empty or median 0)."""
    if not ordered:
        return None
    median = quartile4(ordered, 2)
    if median == 0:
        return None
    return Fraction(quartile4(ordered, 3) - quartile4(ordered, 1), median)


def integer_weights(weights: Sequence[float]) -> list[int]:
    """The weights as integers over one common denominator, exactly in proportion.

    A float is a binary fraction: within ``[2 ** -47, 2 ** 900]`` each one times
    ``2 ** 100`` is exactly an integer (one multiplication); anything else (another number
    type, a tiny or huge float) goes through its exact ratio.
    """
    if (
        weights
        and min(weights) >= _FLOAT_LOW
        and max(weights) <= _FLOAT_HIGH
        and all(type(w) is float for w in weights)
    ):
        return [int(w * _FLOAT_SHIFT) for w in weights]
    ratios = [w.as_integer_ratio() for w in weights]
    common = math.lcm(*{den for _, den in ratios})
    return [num * (common // den) for num, den in ratios]


def weighted_cents(
    prices: Sequence[int], weights: Sequence[int], scale: int, qs: Sequence[tuple[int, int]]
) -> list[int]:
    """Weighted percentiles, in cents, at each ``num / den`` of ``qs``.

    ``prices`` and ``weights`` are integers (:func:`units`, :func:`integer_weights`),
    sorted by price, then weight. Sale ``i`` sits at ``c_i = (W_before_i + w_i / 2) / W``,
    kept here as the integer ``2 * W * c_i`` over the common ``2 * W``.
    """
    if not prices:
        raise ValueError("no prices")
    befores = accumulate(weights, initial=0)  # one longer than weights: zip stops first
    centres = [2 * before + w for before, w in zip(befores, weights, strict=False)]
    total = 2 * sum(weights)
    if total == 0:
        raise ZeroDivisionError("the weights sum to zero")
    if total < 0:  # the same positions, over a positive denominator
        centres = [-c for c in centres]
        total = -total
    return [_cents_at(prices, centres, total, q_num * total, q_den, scale) for q_num, q_den in qs]


def _cents_at(
    prices: Sequence[int], centres: list[int], total: int, target: int, q_den: int, scale: int
) -> int:
    # q <= c_i  <=>  q_num * total <= q_den * centres[i]  (target = q_num * total)
    if target <= q_den * centres[0]:
        return round_cents(prices[0], scale)
    if target >= q_den * centres[-1]:
        return round_cents(prices[-1], scale)
    # centres are integers, so "q < c" and "floor(q * total) < centres[i]" agree
    i = bisect.bisect_right(centres, target // q_den) - 1
    num = target - q_den * centres[i]
    den = q_den * (centres[i + 1] - centres[i])
    if den == 0:
        return round_cents(prices[i], scale)
    return round_cents(prices[i] * den + num * (prices[i + 1] - prices[i]), den * scale)
