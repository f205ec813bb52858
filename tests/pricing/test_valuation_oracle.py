"""The integer valuator gives exactly the previous ``Fraction`` valuator's snapshots.

Random samples aim at the places where exact arithmetic is easy to get wrong: half a cent
after interpolation, duplicates, a quantile that falls exactly on a sale's position, tiny
and huge prices, weights ten orders of magnitude apart, grades and parallels, dated and
undated sales, odd and even counts, and amounts with more than two places (a listing
built without validation).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import _reference_valuation as reference
from bench.valuation import GRADES, _fetched, _query, market
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kuya_store.models import MAX_PRICE, Listing, PriceSnapshot
from kuya_store.pricing import DefaultValuator, normalize_card
from kuya_store.pricing.confidence import dispersion
from kuya_store.pricing.sold import SOLD_FIELDS, SoldRow
from kuya_store.pricing.valuation import _usable_title, weighted_percentiles

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DAY = date(2024, 3, 1)
CARD = "2023 Topps Chrome Victor Wembanyama #1 RC"
IDENTIFIERS = [
    normalize_card(CARD),
    normalize_card(CARD + " PSA 10"),
    normalize_card(CARD + " BGS 9.5"),
]
TITLES = [
    CARD,
    CARD,
    CARD + " Refractor",
    CARD + " Gold Refractor /50",
    CARD + " /99",
    CARD + " PSA 10",
    CARD + " PSA 9",
    CARD + " BGS 9.5",
    CARD + " graded",
    CARD + " Auto",
    CARD + " lot of 3",
    CARD + " Reprint",
]
MAX_CENTS = int(MAX_PRICE * 100)

cents = st.one_of(
    st.integers(min_value=0, max_value=10),  # tiny, and 0 (a median of 0)
    st.integers(min_value=100, max_value=20_000),
    st.integers(min_value=MAX_CENTS - 1_000, max_value=MAX_CENTS),  # huge
    st.integers(min_value=0, max_value=MAX_CENTS),
)
price_of = st.sampled_from(["cents", "whole", "tenths"])


def _price(amount: int, form: str) -> Decimal:
    # the same amounts written as "19.90", "19.9" or "20": the results must not depend on it
    if form == "whole":
        return Decimal(amount // 100)
    if form == "tenths":
        return Decimal(amount // 10).scaleb(-1)
    return Decimal(amount).scaleb(-2)


ages = st.none() | st.floats(min_value=-3, max_value=400, allow_nan=False) | st.sampled_from([0.0])
rows = st.tuples(
    st.sampled_from(TITLES),
    cents,
    price_of,
    st.sampled_from([None, "auction", "buy_it_now"]),
    st.none() | st.integers(min_value=0, max_value=15),
    ages,
    st.booleans() | st.just(True),
)


@st.composite
def samples(draw: st.DrawFn) -> list[Listing]:
    """Listings; some samples reuse a few prices and one age so that ties and equal weights
    (quantiles exactly on a sale's position) are common."""
    chosen = draw(st.lists(rows, max_size=draw(st.sampled_from([6, 25, 80]))))
    if draw(st.booleans()) and chosen:
        pool = draw(st.lists(cents, min_size=1, max_size=3))
        age = draw(ages)
        chosen = [
            (title, pool[n % len(pool)], form, kind, bids, age, sold)
            for n, (title, _, form, kind, bids, _, sold) in enumerate(chosen)
        ]
    return [
        Listing(
            item_id=f"i{n}",
            title=title,
            price=_price(amount, form),
            listing_type=kind,
            bids=bids,
            sold=sold,
            sold_date=None if age is None else NOW - timedelta(days=age),
        )
        for n, (title, amount, form, kind, bids, age, sold) in enumerate(chosen)
    ]


configurations = st.builds(
    dict,
    min_sample=st.sampled_from([1, 2, 3, 5]),
    fence=st.sampled_from([Decimal("0"), Decimal("0.5"), Decimal("1.5"), Decimal("1.33"), 3]),
    half_life_days=st.sampled_from([14.0, 0.5, 1e6]),
    min_bids=st.sampled_from([0, 3]),
)


def assert_same(new: PriceSnapshot, old: PriceSnapshot) -> None:
    """Every field equal, and the same text (places, key order) once serialised."""
    assert new.model_dump() == old.model_dump()
    assert json.dumps(new.model_dump(mode="json")) == json.dumps(old.model_dump(mode="json"))


@settings(max_examples=400, deadline=None)
@given(listings=samples(), identifier=st.sampled_from(IDENTIFIERS), config=configurations)
def test_snapshots_equal_the_fraction_valuators(
    listings: list[Listing], identifier: str, config: dict[str, object]
) -> None:
    new = DefaultValuator(**config).value(identifier, listings, snapshot_date=DAY, now=NOW)  # type: ignore[arg-type]
    old = reference.ReferenceValuator(**config).value(  # type: ignore[arg-type]
        identifier, listings, snapshot_date=DAY, now=NOW
    )
    assert_same(new, old)


@settings(max_examples=100, deadline=None)
@given(
    amounts=st.lists(st.decimals(min_value=0, max_value=1000, places=4), min_size=1, max_size=30),
    seed_weights=st.lists(st.sampled_from([1.0, 0.5, 1 / 3, 0.1, 1e-12]), min_size=30),
)
@example(amounts=[Decimal("10.005"), Decimal("10.0051")], seed_weights=[1.0] * 30)
def test_amounts_with_more_places_than_cents_are_exact_too(
    amounts: list[Decimal], seed_weights: list[float]
) -> None:
    # model_construct skips validation, so the valuator may meet any finite Decimal
    listings = [
        Listing.model_construct(
            item_id=f"i{n}", title=CARD, price=amount, sold=True, sold_date=None, extra={}
        )
        for n, amount in enumerate(amounts)
    ]
    new = DefaultValuator(min_sample=1).value(IDENTIFIERS[0], listings, snapshot_date=DAY, now=NOW)
    old = reference.ReferenceValuator(min_sample=1).value(
        IDENTIFIERS[0], listings, snapshot_date=DAY, now=NOW
    )
    assert_same(new, old)
    pairs = list(zip(amounts, seed_weights, strict=False))
    assert dispersion(amounts) == reference.dispersion(amounts)
    qs = [Fraction(q, 100) for q in (0, 1, 20, 25, 50, 75, 80, 99, 100)]
    assert weighted_percentiles(pairs, qs) == reference.weighted_percentiles(pairs, qs)


quantiles = st.sampled_from([Fraction(1, 2), Fraction(1, 4), Fraction(1, 5), Fraction(3, 4)]) | (
    st.fractions(min_value=0, max_value=1, max_denominator=1000)
)


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(
            cents.map(lambda c: Decimal(c).scaleb(-2)),
            st.sampled_from([1.0, 0.25, 1 / 3, 1e-12, 0.7361]) | st.floats(1e-12, 1.5),
        ),
        min_size=1,
        max_size=40,
    ),
    qs=st.lists(quantiles, min_size=1, max_size=6),
)
def test_weighted_percentiles_equal_the_fraction_ones(
    pairs: list[tuple[Decimal, float]], qs: list[Fraction]
) -> None:
    assert weighted_percentiles(pairs, qs) == reference.weighted_percentiles(pairs, qs)
    assert [str(p) for p in weighted_percentiles(pairs, qs)] == [
        str(p) for p in reference.weighted_percentiles(pairs, qs)
    ]


@settings(max_examples=100, deadline=None)
@given(listings=samples(), fence=st.sampled_from([Decimal("1.5"), Decimal("0.25"), 2.5]))
def test_each_public_step_equals_the_fraction_valuators(
    listings: list[Listing], fence: Decimal
) -> None:
    new, old = DefaultValuator(fence=fence), reference.ReferenceValuator(fence=fence)
    sales = new.weigh(new.usable_sales(listings), NOW)
    old_sales = [reference.Sale(s.listing, s.info, s.weight) for s in sales]
    prices = [s.price for s in sales]
    assert dispersion(prices) == reference.dispersion(prices)
    assert new.confidence(sales, NOW) == old.confidence(old_sales, NOW)
    if not sales:
        return
    assert new.fences(prices) == old.fences(prices)
    assert [s.listing for s in new.trim(sales)] == [s.listing for s in old.trim(old_sales)]
    assert new.percentiles(sales) == old.percentiles(old_sales)
    assert new.grading_analysis(sales) == old.grading_analysis(old_sales)


def test_the_synthetic_market_is_valued_exactly_as_before() -> None:
    new, old = DefaultValuator(), reference.ReferenceValuator()
    for card in market(40):
        for grade in GRADES:
            identifier = normalize_card(_query(card, grade))
            listings = _fetched(card, grade)
            assert_same(
                new.value(identifier, listings, snapshot_date=DAY, now=NOW),
                old.value(identifier, listings, snapshot_date=DAY, now=NOW),
            )


@settings(max_examples=200, deadline=None)
@given(listings=samples(), identifier=st.sampled_from(IDENTIFIERS), config=configurations)
def test_stored_rows_of_the_sales_are_valued_as_their_listings(
    listings: list[Listing], identifier: str, config: dict[str, object]
) -> None:
    """What the day's valuation reads from the database: rows of the priced fields only."""
    rows = [SoldRow._make(getattr(x, name) for name in SOLD_FIELDS) for x in listings]
    valuator = DefaultValuator(**config)  # type: ignore[arg-type]
    new = valuator.value_sold(identifier, rows, snapshot_date=DAY, now=NOW)
    old = reference.ReferenceValuator(**config).value(  # type: ignore[arg-type]
        identifier, listings, snapshot_date=DAY, now=NOW
    )
    assert_same(new, old)


def test_a_day_of_more_titles_than_the_old_cache_held_parses_each_title_once() -> None:
    """The day's valuation reads its titles in the same order on every fetch of the card:
    a title cache smaller than the day would miss every one of them, every time."""
    titles = [f"{CARD} {TITLES[n % len(TITLES)][len(CARD) :]} seller {n}" for n in range(10_000)]
    rows = [
        SoldRow(title, Decimal(10 + n % 40), "auction", True, NOW - timedelta(hours=n), n % 5)
        for n, title in enumerate(titles)
    ]
    valuator = DefaultValuator()
    first = valuator.value_sold(IDENTIFIERS[0], rows, snapshot_date=DAY, now=NOW)
    misses = _usable_title.cache_info().misses
    assert valuator.value_sold(IDENTIFIERS[0], rows, snapshot_date=DAY, now=NOW) == first
    assert _usable_title.cache_info().misses == misses
