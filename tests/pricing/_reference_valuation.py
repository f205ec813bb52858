"""The valuator as it was on ``fractions.Fraction``: the oracle for the integer one.

Kept for the tests only (``test_valuation_oracle.py``) and never changed: every snapshot
of ``DefaultValuator`` must equal this one's, field by field.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

from kuya_store.errors import InvalidInputError
from kuya_store.models import Listing, PriceSnapshot
from kuya_store.pricing.confidence import Confidence, volume_confidence
from kuya_store.pricing.grades import grading_key, query_grade
from kuya_store.pricing.titles import TitleInfo, parse_title

__all__ = [
    "ReferenceValuator",
    "Sale",
    "Valuator",
    "weighted_percentile",
    "weighted_percentiles",
]

_SECONDS_PER_DAY = 86_400.0
_MIN_WEIGHT = 1e-12
_QUANTILES = tuple(Fraction(q, 100) for q in (20, 25, 50, 75, 80))


@runtime_checkable
class Valuator(Protocol):
    """Anything that turns a card's listings into the day's :class:`PriceSnapshot`."""

    def value(
        self,
        card_identifier: str,
        listings: Sequence[Listing],
        *,
        snapshot_date: date,
        now: datetime,
    ) -> PriceSnapshot:
        """The snapshot of ``card_identifier`` on ``snapshot_date``, as seen at ``now``."""
        ...


@dataclass(frozen=True, slots=True)
class Sale:
    """One usable sale: its listing, what its title says, and its weight."""

    listing: Listing
    info: TitleInfo
    weight: float

    @property
    def price(self) -> Decimal:
        """The sale price."""
        return self.listing.price


# ---------------------------------------------------------------------- exact helpers


def dispersion(prices: Sequence[Decimal]) -> Fraction | None:
    """Interquartile range over the median (``None`` when the median is 0 or no price)."""
    if not prices:
        return None
    ordered = sorted(Fraction(p) for p in prices)

    def quantile(q: Fraction) -> Fraction:
        h = (len(ordered) - 1) * q
        lo = int(h)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])

    median = quantile(Fraction(1, 2))
    if median == 0:
        return None
    return (quantile(Fraction(3, 4)) - quantile(Fraction(1, 4))) / median


def _money(value: Fraction) -> Decimal:
    """Round a non-negative exact amount half-up to the cent."""
    cents = math.floor(value * 100 + Fraction(1, 2))
    return Decimal(cents).scaleb(-2).quantize(Decimal("0.01"))


def _percent(value: Fraction) -> str:
    """Round an exact percentage half away from zero to one place, as a string."""
    tenths = math.floor(abs(value) * 10 + Fraction(1, 2))
    text = str(Decimal(tenths).scaleb(-1).quantize(Decimal("0.1")))
    return f"-{text}" if value < 0 and tenths else text


def _quantile(sorted_prices: Sequence[Decimal], p: Fraction) -> Fraction:
    """Unweighted quantile, linear between order statistics (``numpy``'s default rule)."""
    h = (len(sorted_prices) - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_prices) - 1)
    x_lo, x_hi = Fraction(sorted_prices[lo]), Fraction(sorted_prices[hi])
    return x_lo + (h - lo) * (x_hi - x_lo)


def _median(prices: Iterable[Decimal]) -> Fraction:
    return _quantile(sorted(prices), Fraction(1, 2))


def weighted_percentile(items: Sequence[tuple[Decimal, float]], q: Fraction) -> Decimal:
    """Weighted percentile of ``(price, weight)`` pairs, exact to the cent.

    Each sale sits at the centre of its share of the total weight: after sorting by
    price, sale ``i`` is placed at ``c_i = (W_before_i + w_i / 2) / W``. The ``q``
    percentile is the price of the first sale when ``q <= c_1``, of the last when
    ``q >= c_n``, and otherwise the straight line between the two neighbouring sales
    whose centres surround ``q``. With equal weights this is the familiar "Hazen"
    percentile (the median of an even sample is the mean of the middle two). The result
    always lies between two actual prices and is rounded half-up to the cent.
    """
    return weighted_percentiles(items, (q,))[0]


def weighted_percentiles(
    items: Sequence[tuple[Decimal, float]], qs: Sequence[Fraction]
) -> list[Decimal]:
    """:func:`weighted_percentile` at each of ``qs``, sorting and weighing only once."""
    if not items:
        raise ValueError("no prices")
    ordered = sorted(items)
    weights = [Fraction(w) for _, w in ordered]
    total = sum(weights, Fraction(0))
    centres: list[Fraction] = []
    before = Fraction(0)
    for w in weights:
        centres.append((before + w / 2) / total)
        before += w
    prices = [Fraction(p) for p, _ in ordered]
    return [_percentile_at(prices, centres, q) for q in qs]


def _percentile_at(prices: list[Fraction], centres: list[Fraction], q: Fraction) -> Decimal:
    if q <= centres[0]:
        return _money(prices[0])
    if q >= centres[-1]:
        return _money(prices[-1])
    i = bisect.bisect_right(centres, q) - 1  # centres[i] <= q < centres[i + 1]
    span = centres[i + 1] - centres[i]
    frac = Fraction(0) if span == 0 else (q - centres[i]) / span
    return _money(prices[i] + frac * (prices[i + 1] - prices[i]))


# -------------------------------------------------------------------------- valuator


def _check_now(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInputError("now", "must be a timezone-aware datetime")
    return now


def _check_identifier(card_identifier: str) -> str:
    if not isinstance(card_identifier, str) or not card_identifier.strip():
        raise InvalidInputError("card_identifier", "must not be empty")
    if "\x00" in card_identifier:
        raise InvalidInputError("card_identifier", "must not contain NUL characters")
    return card_identifier.strip()


def _analysis(groups: dict[str, list[Decimal]], reference: str) -> dict[str, Any]:
    medians = {key: _median(prices) for key, prices in groups.items()}
    ref = medians.get(reference)
    out: dict[str, Any] = {}
    for key in sorted(groups):
        premium = None if ref is None or ref == 0 else _percent((medians[key] / ref - 1) * 100)
        out[key] = {
            "count": len(groups[key]),
            "median": str(_money(medians[key])),
            "premium_pct": premium,
        }
    return out


def parallel_key(info: TitleInfo) -> str:
    """The ``parallel_analysis`` group of a sale: parallel name, ``"/N"`` or ``"base"``."""
    if info.parallel:
        return info.parallel
    if info.print_run is not None:
        return f"/{info.print_run}"
    return "base"


@dataclass(frozen=True, slots=True)
class ReferenceValuator:
    """The previous default valuation: recency- and competition-weighted percentiles of trimmed sales.

    Args:
        half_life_days: a sale this many days older than the newest sale weighs half as
            much (exponential decay on ``sold_date``).
        min_sample: fewer usable sales than this give no valuation (``"insufficient"``).
        fence: Tukey fence multiplier: sales outside
            ``[Q1 - fence * IQR, Q3 + fence * IQR]`` are trimmed.
        undated_half_lives: a sale without ``sold_date`` is weighted as if it were this
            many half-lives older than the newest dated sale.
        bid_step: extra weight per bid of an auction (``1 + bid_step * bids``) ...
        bid_cap: ... counting at most this many bids; buy-it-now sales weigh 1.
        min_bids: an auction with fewer bids than this (and at least one) found too few
            buyers to set a price: it weighs ``(bids / min_bids) ** 2``; 0 turns this off.
        recent_days: the window, before ``now``, in which sales count as recent for
            ``volume_confidence``.
    """

    half_life_days: float = 14.0
    min_sample: int = 3
    fence: Decimal = Decimal("1.5")
    undated_half_lives: float = 2.0
    bid_step: float = 0.05
    bid_cap: int = 10
    recent_days: int = 30
    min_bids: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.half_life_days) and self.half_life_days > 0):
            raise InvalidInputError("half_life_days", "must be a positive finite number")
        if isinstance(self.min_sample, bool) or self.min_sample < 1:
            raise InvalidInputError("min_sample", "must be at least 1")
        if not (Decimal(self.fence).is_finite() and self.fence >= 0):
            raise InvalidInputError("fence", "must be a non-negative finite number")
        if not (math.isfinite(self.undated_half_lives) and self.undated_half_lives >= 0):
            raise InvalidInputError("undated_half_lives", "must be a non-negative number")
        if not (math.isfinite(self.bid_step) and self.bid_step >= 0):
            raise InvalidInputError("bid_step", "must be a non-negative number")
        if self.bid_cap < 0:
            raise InvalidInputError("bid_cap", "must not be negative")
        if self.recent_days < 0:
            raise InvalidInputError("recent_days", "must not be negative")
        if isinstance(self.min_bids, bool) or self.min_bids < 0:
            raise InvalidInputError("min_bids", "must not be negative")

    # -- steps, public so that callers and the documentation can show each one --

    def usable_sales(self, listings: Sequence[Listing]) -> list[tuple[Listing, TitleInfo]]:
        """Sold listings that are single, genuine, physical cards (lots, reprints,
        customs and digital cards are left out)."""
        usable: list[tuple[Listing, TitleInfo]] = []
        for listing in listings:
            if not listing.sold:
                continue
            info = parse_title(listing.title)
            if info.is_lot or info.is_reprint or info.is_custom or info.is_digital:
                continue
            usable.append((listing, info))
        return usable

    def competition(self, listing: Listing) -> float:
        """Auction factor: ``(bids / min_bids) ** 2`` below ``min_bids`` bids, else
        ``1 + bid_step * min(bids, bid_cap)``; buy-it-now and unknown bids give 1."""
        if listing.listing_type == "auction" and listing.bids:
            if listing.bids < self.min_bids:
                return (listing.bids / self.min_bids) ** 2
            return 1.0 + self.bid_step * min(listing.bids, self.bid_cap)
        return 1.0

    def weigh(self, usable: Sequence[tuple[Listing, TitleInfo]], now: datetime) -> list[Sale]:
        """Weight each usable sale by recency and competition (the largest weight is 1)."""
        _check_now(now)
        ages: list[float | None] = []
        for listing, _ in usable:
            if listing.sold_date is None:
                ages.append(None)
            else:
                seconds = (now - listing.sold_date).total_seconds()
                ages.append(max(0.0, seconds / _SECONDS_PER_DAY))
        dated = [age for age in ages if age is not None]
        newest = min(dated) if dated else 0.0
        undated_age = newest + self.undated_half_lives * self.half_life_days
        logs: list[float] = []
        for (listing, _), age in zip(usable, ages, strict=True):
            effective = undated_age if age is None else age
            logs.append(
                -(effective - newest) / self.half_life_days + math.log2(self.competition(listing))
            )
        top = max(logs, default=0.0)
        return [
            Sale(listing, info, max(_MIN_WEIGHT, 2.0 ** (log - top)))
            for (listing, info), log in zip(usable, logs, strict=True)
        ]

    def fences(self, prices: Sequence[Decimal]) -> tuple[Fraction, Fraction]:
        """Tukey fences ``(Q1 - fence * IQR, Q3 + fence * IQR)`` of the prices."""
        ordered = sorted(prices)
        q1 = _quantile(ordered, Fraction(1, 4))
        q3 = _quantile(ordered, Fraction(3, 4))
        k = Fraction(self.fence)
        return q1 - k * (q3 - q1), q3 + k * (q3 - q1)

    def trim(self, sales: Sequence[Sale]) -> list[Sale]:
        """Sales inside the fences; all of them if trimming would leave too few."""
        if not sales:
            return []
        low, high = self.fences([s.price for s in sales])
        kept = [s for s in sales if low <= Fraction(s.price) <= high]
        return kept if len(kept) >= self.min_sample else list(sales)

    def confidence(
        self, sales: Sequence[Sale], now: datetime, kept: Sequence[Sale] | None = None
    ) -> Confidence:
        """``"none"``, ``"insufficient"``, ``"low"``, ``"medium"`` or ``"high"``: the weakest
        of sale count, recency of the dated sales and dispersion of the ``kept`` ones."""
        window = self.recent_days * _SECONDS_PER_DAY
        dated = [s.listing.sold_date for s in sales if s.listing.sold_date is not None]
        recent = sum(1 for moment in dated if (now - moment).total_seconds() <= window)
        chosen = self.trim(sales) if kept is None else kept
        return volume_confidence(
            len(sales),
            min_sample=self.min_sample,
            dated=len(dated),
            recent=recent,
            spread=dispersion([s.price for s in chosen]),
        )

    def percentiles(
        self, kept: Sequence[Sale]
    ) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
        """``fmv_low, quick_sale, market_value, patient_sale, fmv_high`` of trimmed sales."""
        pairs = [(s.price, s.weight) for s in kept]
        p20, p25, p50, p75, p80 = weighted_percentiles(pairs, _QUANTILES)
        quick, patient = min(p25, p50), max(p75, p50)
        return min(p20, quick), quick, p50, patient, max(p80, patient)

    def grading_analysis(self, sales: Sequence[Sale]) -> dict[str, Any]:
        """Per grade: ``count``, plain ``median`` and ``premium_pct`` over raw, and the
        robust ``market_value``, ``quick_sale``, ``patient_sale`` (``None`` below
        ``min_sample`` sales) with ``market_premium_pct`` over raw's market value."""
        groups: dict[str, list[Sale]] = {}
        for s in sales:
            groups.setdefault(grading_key(s.info), []).append(s)
        out = _analysis({key: [s.price for s in group] for key, group in groups.items()}, "raw")
        markets: dict[str, Decimal] = {}
        for key, group in groups.items():
            entry = out[key]
            entry.update(market_value=None, quick_sale=None, patient_sale=None)
            if len(group) >= self.min_sample:
                _, quick, market, patient, _ = self.percentiles(self.trim(group))
                markets[key] = market
                entry.update(
                    market_value=str(market), quick_sale=str(quick), patient_sale=str(patient)
                )
        raw = markets.get("raw")
        for key, entry in out.items():
            value = markets.get(key)
            entry["market_premium_pct"] = (
                None
                if raw is None or value is None or raw == 0
                else _percent((Fraction(value) / Fraction(raw) - 1) * 100)
            )
        return out

    def value(
        self,
        card_identifier: str,
        listings: Sequence[Listing],
        *,
        snapshot_date: date,
        now: datetime,
    ) -> PriceSnapshot:
        """The snapshot of ``card_identifier`` on ``snapshot_date``, as seen at ``now``.

        Only sold listings count (``Listing.sold`` is true); unsold ones are ignored.
        ``sample_size``, ``min_price``, ``max_price`` and ``avg_price`` describe every
        usable sale (before trimming); the valuation fields come from the trimmed,
        weighted sample and are ``None`` when there are fewer than ``min_sample`` sales.

        Raises:
            InvalidInputError: empty ``card_identifier`` or a naive ``now``.
        """
        card_identifier = _check_identifier(card_identifier)
        _check_now(now)
        if not isinstance(snapshot_date, date):
            raise InvalidInputError("snapshot_date", "must be a date")
        everything = self.weigh(self.usable_sales(listings), now)
        grade = query_grade(card_identifier)
        sales = (
            everything if grade is None else [s for s in everything if grading_key(s.info) == grade]
        )
        prices = [s.price for s in sales]
        base: dict[str, Any] = {
            "card_identifier": card_identifier,
            "snapshot_date": snapshot_date,
            "sample_size": len(sales),
        }
        if prices:
            base["min_price"] = min(prices)
            base["max_price"] = max(prices)
            base["avg_price"] = _money(
                sum((Fraction(p) for p in prices), Fraction(0)) / len(prices)
            )
        if len(sales) < self.min_sample:
            return PriceSnapshot(**base, volume_confidence=self.confidence(sales, now, sales))

        kept = self.trim(sales)
        low, quick, market, patient, high = self.percentiles(kept)
        by_parallel: dict[str, list[Decimal]] = {}
        for s in sales:
            by_parallel.setdefault(parallel_key(s.info), []).append(s.price)
        return PriceSnapshot(
            **base,
            volume_confidence=self.confidence(sales, now, kept),
            fmv_low=low,
            fmv_high=high,
            market_value=market,
            quick_sale=quick,
            patient_sale=patient,
            parallel_analysis=_analysis(by_parallel, "base"),
            grading_analysis=self.grading_analysis(everything),
        )
