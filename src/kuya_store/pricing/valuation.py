"""Valuation: turn a card's sold listings into one :class:`PriceSnapshot` row.

The formulas of :class:`DefaultValuator` are described, with a worked example, in
``docs/pricing.md``. All money arithmetic is exact: the ``Decimal`` prices and the
floating-point weights are turned into integers (:mod:`kuya_store.pricing._exact`) and
every result is rounded half-up to the cent once, at the end; only the weights themselves
are computed in floating point.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol, TypeVar, runtime_checkable

from kuya_store.errors import InvalidInputError
from kuya_store.models import Listing, PriceSnapshot
from kuya_store.pricing._exact import (
    cents_to_money,
    integer_weights,
    iqr_over_median,
    money,
    percent,
    quartile4,
    units,
    weighted_cents,
)
from kuya_store.pricing.confidence import Confidence, volume_confidence
from kuya_store.pricing.grades import grading_key, query_grade
from kuya_store.pricing.sold import SoldFields
from kuya_store.pricing.titles import TitleInfo, parse_title

__all__ = [
    "DefaultValuator",
    "Sale",
    "Valuator",
    "weighted_percentile",
    "weighted_percentiles",
]

_SECONDS_PER_DAY = 86_400.0
_MIN_WEIGHT = 1e-12
_QUANTILES = tuple((q, 100) for q in (20, 25, 50, 75, 80))


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


# ---------------------------------------------------------------------- percentiles

_S = TypeVar("_S", bound=SoldFields)
_Usable = tuple[SoldFields, tuple[TitleInfo, str, str]]
"""A usable sale: its listing, and its title facts with its grade and parallel groups."""
_Priced = tuple[int, int, SoldFields, TitleInfo, float | None, str, str]
"""A sale in integers: price units (over the valuation's ``scale``), integer weight; then
its listing, title, seconds before ``now`` (``None``: no sale date), grade and parallel
groups.

Lists of them are kept sorted by price, then weight: every subset then is too, and each
quantile, fence and percentile reads them without sorting again."""
_BY_PRICE = operator.itemgetter(0, 1)


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
    prices, scale = units(p for p, _ in items)
    pairs = sorted(zip(prices, integer_weights([w for _, w in items]), strict=True))
    ratios = [Fraction(q).as_integer_ratio() for q in qs]
    cents = weighted_cents([u for u, _ in pairs], [w for _, w in pairs], scale, ratios)
    return [cents_to_money(c) for c in cents]


def _analysis(groups: dict[str, list[int]], reference: str, scale: int) -> dict[str, Any]:
    medians = {key: quartile4(prices, 2) for key, prices in groups.items()}  # sorted
    ref = medians.get(reference)
    out: dict[str, Any] = {}
    for key in sorted(groups):
        premium = None if ref is None or ref == 0 else percent(100 * (medians[key] - ref), ref)
        out[key] = {
            "count": len(groups[key]),
            "median": str(money(medians[key], 4 * scale)),
            "premium_pct": premium,
        }
    return out


def _priced(
    usable: Sequence[_Usable], weights: Sequence[float], seconds: Sequence[float | None]
) -> tuple[list[_Priced], int]:
    prices, scale = units(listing.price for listing, _ in usable)
    ints = integer_weights(weights)
    priced = [
        (u, w, listing, info, s, grade, parallel)
        for u, w, (listing, (info, grade, parallel)), s in zip(
            prices, ints, usable, seconds, strict=True
        )
    ]
    priced.sort(key=_BY_PRICE)
    return priced, scale


def _of_sales(sales: Sequence[Sale]) -> tuple[list[_Priced], int]:
    usable = [(s.listing, (s.info, grading_key(s.info), parallel_key(s.info))) for s in sales]
    return _priced(usable, [s.weight for s in sales], [None] * len(sales))


TITLE_CACHE_SIZE = 32_768
"""Titles whose usable facts are remembered: more than a card's day holds, so the day's
valuation, run again on every sold fetch of the card over the same titles, parses each
title once (a cache smaller than the titles read in turn would miss every one). About
0.4 KB a title."""


@functools.lru_cache(maxsize=TITLE_CACHE_SIZE)
def _usable_title(title: str) -> tuple[TitleInfo, str, str] | None:
    """A title's facts with its grade and parallel groups; ``None`` for a lot, reprint,
    custom or digital card. Cached per title (:data:`TITLE_CACHE_SIZE`)."""
    info = parse_title(title)
    if info.is_lot or info.is_reprint or info.is_custom or info.is_digital:
        return None
    return info, grading_key(info), parallel_key(info)


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


def parallel_key(info: TitleInfo) -> str:
    """The ``parallel_analysis`` group of a sale: parallel name, ``"/N"`` or ``"base"``."""
    if info.parallel:
        return info.parallel
    if info.print_run is not None:
        return f"/{info.print_run}"
    return "base"


@dataclass(frozen=True, slots=True)
class DefaultValuator:
    """The default valuation: recency- and competition-weighted percentiles of trimmed sales.

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
        return [(listing, facts[0]) for listing, facts in self._usable(listings)]

    def _usable(self, listings: Sequence[_S]) -> list[tuple[_S, tuple[TitleInfo, str, str]]]:
        return [
            (listing, facts)
            for listing in listings
            if listing.sold and (facts := _usable_title(listing.title)) is not None
        ]

    def competition(self, listing: SoldFields) -> float:
        """Auction factor: ``(bids / min_bids) ** 2`` below ``min_bids`` bids, else
        ``1 + bid_step * min(bids, bid_cap)``; buy-it-now and unknown bids give 1.

        A function of ``listing_type`` and ``bids`` only: a valuation asks once per pair.
        """
        if listing.listing_type == "auction" and listing.bids:
            if listing.bids < self.min_bids:
                return (listing.bids / self.min_bids) ** 2
            return 1.0 + self.bid_step * min(listing.bids, self.bid_cap)
        return 1.0

    def weigh(self, usable: Sequence[tuple[Listing, TitleInfo]], now: datetime) -> list[Sale]:
        """Weight each usable sale by recency and competition (the largest weight is 1)."""
        weights, _ = self._weights([listing for listing, _ in usable], now)
        return [Sale(listing, info, w) for (listing, info), w in zip(usable, weights, strict=True)]

    def _weights(
        self, listings: Sequence[SoldFields], now: datetime
    ) -> tuple[list[float], list[float | None]]:
        """The weights, and each sale's seconds before ``now`` (``None``: no sale date)."""
        _check_now(now)
        seconds = [
            None if (sold := listing.sold_date) is None else (now - sold).total_seconds()
            for listing in listings
        ]
        day = _SECONDS_PER_DAY
        ages = [None if s is None else max(0.0, s / day) for s in seconds]
        dated = [age for age in ages if age is not None]
        newest = min(dated) if dated else 0.0
        half_life = self.half_life_days
        undated_age = newest + self.undated_half_lives * half_life
        # the factor depends on the type and the bid count only: one log per pair
        pairs = [(listing.listing_type, listing.bids) for listing in listings]
        one_each = dict(zip(pairs, listings, strict=True))
        factors = {pair: math.log2(self.competition(x)) for pair, x in one_each.items()}
        logs = [
            -((undated_age if age is None else age) - newest) / half_life + factors[pair]
            for pair, age in zip(pairs, ages, strict=True)
        ]
        top = max(logs, default=0.0)
        return [max(_MIN_WEIGHT, 2.0 ** (log - top)) for log in logs], seconds

    def fences(self, prices: Sequence[Decimal]) -> tuple[Fraction, Fraction]:
        """Tukey fences ``(Q1 - fence * IQR, Q3 + fence * IQR)`` of the prices."""
        amounts, scale = units(prices)
        low, high, factor = self._fences(sorted(amounts))
        return Fraction(low, factor * scale), Fraction(high, factor * scale)

    def _fences(self, ordered: Sequence[int]) -> tuple[int, int, int]:
        """The fences of sorted price units, each times ``factor``, and ``factor``."""
        num, den = Decimal(self.fence).as_integer_ratio()
        q1, q3 = quartile4(ordered, 1), quartile4(ordered, 3)  # both times 4
        return den * q1 - num * (q3 - q1), den * q3 + num * (q3 - q1), 4 * den

    def trim(self, sales: Sequence[Sale]) -> list[Sale]:
        """Sales inside the fences; all of them if trimming would leave too few."""
        priced, _ = _of_sales(sales)
        kept = {id(p[2]) for p in self._trim(priced)}
        return [s for s in sales if id(s.listing) in kept]

    def _trim(self, priced: Sequence[_Priced]) -> list[_Priced]:
        if not priced:
            return []
        low, high, factor = self._fences([p[0] for p in priced])
        kept = [p for p in priced if low <= factor * p[0] <= high]
        return kept if len(kept) >= self.min_sample else list(priced)

    def confidence(
        self, sales: Sequence[Sale], now: datetime, kept: Sequence[Sale] | None = None
    ) -> Confidence:
        """``"none"``, ``"insufficient"``, ``"low"``, ``"medium"`` or ``"high"``: the weakest
        of sale count, recency of the dated sales and dispersion of the ``kept`` ones."""
        chosen = self.trim(sales) if kept is None else kept
        seconds = [
            None if s.listing.sold_date is None else (now - s.listing.sold_date).total_seconds()
            for s in sales
        ]
        return self._confidence(seconds, sorted(units(s.price for s in chosen)[0]))

    def _confidence(self, seconds: Sequence[float | None], kept: list[int]) -> Confidence:
        """From the sales' seconds before ``now`` and the kept sales' sorted price units."""
        window = self.recent_days * _SECONDS_PER_DAY
        dated = [s for s in seconds if s is not None]
        return volume_confidence(
            len(seconds),
            min_sample=self.min_sample,
            dated=len(dated),
            recent=sum(1 for s in dated if s <= window),
            spread=iqr_over_median(kept),
        )

    def percentiles(
        self, kept: Sequence[Sale]
    ) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
        """``fmv_low, quick_sale, market_value, patient_sale, fmv_high`` of trimmed sales."""
        low, quick, market, patient, high = self._percentiles(*_of_sales(kept))
        return (
            cents_to_money(low),
            cents_to_money(quick),
            cents_to_money(market),
            cents_to_money(patient),
            cents_to_money(high),
        )

    def _percentiles(self, kept: Sequence[_Priced], scale: int) -> tuple[int, int, int, int, int]:
        prices, weights = [p[0] for p in kept], [p[1] for p in kept]
        p20, p25, p50, p75, p80 = weighted_cents(prices, weights, scale, _QUANTILES)
        quick, patient = min(p25, p50), max(p75, p50)
        return min(p20, quick), quick, p50, patient, max(p80, patient)

    def grading_analysis(self, sales: Sequence[Sale]) -> dict[str, Any]:
        """Per grade: ``count``, plain ``median`` and ``premium_pct`` over raw, and the
        robust ``market_value``, ``quick_sale``, ``patient_sale`` (``None`` below
        ``min_sample`` sales) with ``market_premium_pct`` over raw's market value."""
        return self._grading_analysis(*_of_sales(sales))

    def _grading_analysis(self, priced: Sequence[_Priced], scale: int) -> dict[str, Any]:
        groups: dict[str, list[_Priced]] = {}
        for p in priced:
            groups.setdefault(p[5], []).append(p)
        out = _analysis({key: [p[0] for p in group] for key, group in groups.items()}, "raw", scale)
        markets: dict[str, int] = {}
        for key, group in groups.items():
            entry = out[key]
            entry.update(market_value=None, quick_sale=None, patient_sale=None)
            if len(group) >= self.min_sample:
                _, quick, market, patient, _ = self._percentiles(self._trim(group), scale)
                markets[key] = market
                entry.update(
                    market_value=str(cents_to_money(market)),
                    quick_sale=str(cents_to_money(quick)),
                    patient_sale=str(cents_to_money(patient)),
                )
        raw = markets.get("raw")
        for key, entry in out.items():
            value = markets.get(key)
            entry["market_premium_pct"] = (
                None
                if raw is None or value is None or raw == 0
                else percent(100 * (value - raw), raw)
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
        return self.value_sold(card_identifier, listings, snapshot_date=snapshot_date, now=now)

    def value_sold(
        self,
        card_identifier: str,
        sold: Sequence[SoldFields],
        *,
        snapshot_date: date,
        now: datetime,
    ) -> PriceSnapshot:
        """:meth:`value` of anything with a sale's :class:`~kuya_store.pricing.sold.SoldFields`
        (listings, or :class:`~kuya_store.pricing.sold.SoldRow` of stored sales)."""
        card_identifier = _check_identifier(card_identifier)
        _check_now(now)
        if not isinstance(snapshot_date, date):
            raise InvalidInputError("snapshot_date", "must be a date")
        usable = self._usable(sold)
        weights, seconds = self._weights([u[0] for u in usable], now)
        everything, scale = _priced(usable, weights, seconds)
        grade = query_grade(card_identifier)
        sales = everything if grade is None else [p for p in everything if p[5] == grade]
        base: dict[str, Any] = {
            "card_identifier": card_identifier,
            "snapshot_date": snapshot_date,
            "sample_size": len(sales),
        }
        if sales:
            base["min_price"] = sales[0][2].price  # sorted by price
            base["max_price"] = sales[-1][2].price
            base["avg_price"] = money(sum(p[0] for p in sales), len(sales) * scale)
        if len(sales) < self.min_sample:
            confidence = self._confidence([p[4] for p in sales], [p[0] for p in sales])
            return PriceSnapshot(**base, volume_confidence=confidence)

        kept = self._trim(sales)
        low, quick, market, patient, high = self._percentiles(kept, scale)
        by_parallel: dict[str, list[int]] = {}
        for p in sales:
            by_parallel.setdefault(p[6], []).append(p[0])
        return PriceSnapshot(
            **base,
            volume_confidence=self._confidence([p[4] for p in sales], [p[0] for p in kept]),
            fmv_low=cents_to_money(low),
            fmv_high=cents_to_money(high),
            market_value=cents_to_money(market),
            quick_sale=cents_to_money(quick),
            patient_sale=cents_to_money(patient),
            parallel_analysis=_analysis(by_parallel, "base", scale),
            grading_analysis=self._grading_analysis(everything, scale),
        )
