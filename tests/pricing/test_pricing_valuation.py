"""DefaultValuator: invariants (property-based), the documented worked example, bad input."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuya_store.errors import InvalidInputError
from kuya_store.models import MAX_PRICE, Listing, PriceSnapshot
from kuya_store.pricing import DefaultValuator, Valuator, normalize_card
from kuya_store.pricing.valuation import weighted_percentile

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DAY = date(2024, 3, 1)
CARD = "2023 Topps Chrome Victor Wembanyama #1 RC"
IDENT = normalize_card(CARD)
MONEY_FIELDS = (
    "fmv_low",
    "fmv_high",
    "market_value",
    "quick_sale",
    "patient_sale",
    "min_price",
    "max_price",
    "avg_price",
)

TITLES = [
    CARD,
    CARD + " Refractor",
    CARD + " Gold Refractor /50",
    CARD + " PSA 10",
    CARD + " BGS 9.5",
    CARD + " Auto",
    CARD + " lot of 3",
    CARD + " Reprint",
    CARD + " custom art card",
    CARD + " Topps Bunt digital",
    "Pokemon Base Set Charizard 4/102 Holo PSA 9",
]


def sale(
    item_id: str,
    price: str,
    *,
    title: str = CARD,
    days: float | None = 1,
    listing_type: str | None = "buy_it_now",
    bids: int | None = None,
    sold: bool = True,
) -> Listing:
    return Listing(
        item_id=item_id,
        title=title,
        price=price,
        listing_type=listing_type,  # type: ignore[arg-type]
        bids=bids,
        sold=sold,
        sold_date=None if days is None else NOW - timedelta(days=days),
    )


# ------------------------------------------------------------------ worked example

EXAMPLE = [
    sale("s1", "42.00", days=1),
    sale("s2", "55.00", title=CARD + " Refractor", days=3, listing_type="auction", bids=12),
    sale("s3", "40.00", days=7, listing_type="auction", bids=3),
    sale("s4", "120.00", title=CARD + " PSA 10", days=10),
    sale("s5", "38.50", days=14, listing_type="auction", bids=1),
    sale("s6", "45.00", days=None),
    sale("s7", "110.00", title=CARD + " Lot of 3", days=2),
    sale("s8", "5.00", title=CARD + " Reprint", days=4),
    sale("s9", "44.00", days=28, listing_type="auction", bids=7),
    sale("a1", "60.00", days=None, sold=False),
]


def test_worked_example_of_the_documentation() -> None:
    valuator = DefaultValuator()
    assert IDENT == "2023-topps-chrome-victor-wembanyama-1-rc"
    usable = valuator.usable_sales(EXAMPLE)
    assert [listing.item_id for listing, _ in usable] == ["s1", "s2", "s3", "s4", "s5", "s6", "s9"]
    weights = {s.listing.item_id: round(s.weight, 4) for s in valuator.weigh(usable, NOW)}
    assert weights == {
        "s1": 0.7361,
        "s2": 1.0,
        "s3": 0.6289,
        "s4": 0.4714,
        "s5": 0.043,
        "s6": 0.184,
        "s9": 0.261,
    }
    sales = valuator.weigh(usable, NOW)
    assert valuator.fences([s.price for s in sales]) == (Fraction("27.5"), Fraction("63.5"))
    assert [s.listing.item_id for s in valuator.trim(sales)] == ["s1", "s2", "s3", "s5", "s6", "s9"]

    snap = valuator.value(IDENT, EXAMPLE, snapshot_date=DAY, now=NOW)
    assert snap.model_dump(mode="json") == {
        "card_identifier": IDENT,
        "snapshot_date": "2024-03-01",
        "fmv_low": "40.62",
        "fmv_high": "53.81",
        "market_value": "43.55",
        "quick_sale": "41.04",
        "patient_sale": "51.40",
        "sample_size": 7,
        "min_price": "38.50",
        "max_price": "120.00",
        "avg_price": "54.93",
        "volume_confidence": "low",
        "parallel_analysis": {
            "base": {"count": 6, "median": "43.00", "premium_pct": "0.0"},
            "refractor": {"count": 1, "median": "55.00", "premium_pct": "27.9"},
        },
        "grading_analysis": {
            "PSA 10": {
                "count": 1,
                "median": "120.00",
                "premium_pct": "179.1",
                "market_value": None,
                "quick_sale": None,
                "patient_sale": None,
                "market_premium_pct": None,
            },
            "raw": {
                "count": 6,
                "median": "43.00",
                "premium_pct": "0.0",
                "market_value": "41.67",
                "quick_sale": "40.31",
                "patient_sale": "43.40",
                "market_premium_pct": "0.0",
            },
        },
    }


def test_default_valuator_satisfies_the_protocol() -> None:
    assert isinstance(DefaultValuator(), Valuator)


# ---------------------------------------------------------------- small-data rules


def test_no_sales_gives_an_empty_snapshot() -> None:
    snap = DefaultValuator().value(IDENT, [], snapshot_date=DAY, now=NOW)
    assert snap.sample_size == 0
    assert snap.volume_confidence == "none"
    assert all(getattr(snap, field) is None for field in MONEY_FIELDS)
    assert snap.parallel_analysis is None and snap.grading_analysis is None


def test_too_few_sales_give_plain_stats_only() -> None:
    listings = [sale("a", "10.00"), sale("b", "20.01"), sale("c", "99.00", sold=False)]
    snap = DefaultValuator().value(IDENT, listings, snapshot_date=DAY, now=NOW)
    assert snap.sample_size == 2
    assert snap.volume_confidence == "insufficient"
    assert (snap.min_price, snap.max_price, snap.avg_price) == (
        Decimal("10.00"),
        Decimal("20.01"),
        Decimal("15.01"),
    )
    for field in ("fmv_low", "fmv_high", "market_value", "quick_sale", "patient_sale"):
        assert getattr(snap, field) is None


def test_min_sample_is_configurable() -> None:
    listings = [sale("a", "10.00"), sale("b", "20.00")]
    snap = DefaultValuator(min_sample=2).value(IDENT, listings, snapshot_date=DAY, now=NOW)
    assert snap.market_value == Decimal("15.00")


def test_lots_reprints_customs_and_digital_are_left_out() -> None:
    listings = [
        sale("a", "10.00"),
        sale("b", "11.00"),
        sale("c", "12.00"),
        sale("d", "500.00", title=CARD + " lot of 50"),
        sale("e", "1.00", title=CARD + " reprint"),
        sale("f", "2.00", title=CARD + " custom ACEO"),
        sale("g", "3.00", title=CARD + " NFT digital"),
    ]
    snap = DefaultValuator().value(IDENT, listings, snapshot_date=DAY, now=NOW)
    assert snap.sample_size == 3
    assert (snap.min_price, snap.max_price) == (Decimal("10.00"), Decimal("12.00"))


def test_recent_sales_pull_the_market_value() -> None:
    old = [sale(f"o{n}", "100.00", days=60 + n) for n in range(5)]
    new = [sale(f"n{n}", "50.00", days=1 + n) for n in range(3)]
    snap = DefaultValuator().value(IDENT, old + new, snapshot_date=DAY, now=NOW)
    assert snap.market_value == Decimal("50.00")
    unweighted = DefaultValuator(half_life_days=1e9).value(
        IDENT, old + new, snapshot_date=DAY, now=NOW
    )
    assert unweighted.market_value == Decimal("100.00")


def test_outliers_are_trimmed() -> None:
    listings = [sale(str(n), price) for n, price in enumerate(["20", "21", "22", "23", "24"])]
    listings.append(sale("x", "5000.00"))
    snap = DefaultValuator().value(IDENT, listings, snapshot_date=DAY, now=NOW)
    assert snap.max_price == Decimal("5000.00")
    assert snap.fmv_high is not None and snap.fmv_high <= Decimal("24.00")


def test_confidence_labels() -> None:
    valuator = DefaultValuator()
    many_recent = [sale(str(n), "10.00", days=1) for n in range(20)]
    some = [sale(str(n), "10.00", days=1) for n in range(8)]
    stale = [sale(str(n), "10.00", days=90) for n in range(30)]
    label = {
        name: valuator.value(IDENT, rows, snapshot_date=DAY, now=NOW).volume_confidence
        for name, rows in (("high", many_recent), ("medium", some), ("low", stale))
    }
    assert label == {"high": "high", "medium": "medium", "low": "low"}


def test_weighted_percentile_is_exact_to_the_cent() -> None:
    pairs = [(Decimal("10.00"), 1.0), (Decimal("10.01"), 1.0)]
    assert weighted_percentile(pairs, Fraction(1, 2)) == Decimal("10.01")  # 10.005 half-up
    assert weighted_percentile([(Decimal("0.00"), 1.0)], Fraction(1, 5)) == Decimal("0.00")


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "price", [float("nan"), float("inf"), "-0.01", "-5", "100000000.00", "NaN", "abc", True]
)
def test_listing_rejects_bad_prices(price: object) -> None:
    with pytest.raises(ValueError):
        Listing(item_id="x", title=CARD, price=price)


@pytest.mark.parametrize("title", ["", "   ", "a\x00b"])
def test_listing_rejects_bad_titles(title: str) -> None:
    with pytest.raises(ValueError):
        Listing(item_id="x", title=title, price="1.00")


def test_valuator_rejects_bad_arguments() -> None:
    valuator = DefaultValuator()
    with pytest.raises(InvalidInputError) as info:
        valuator.value("  ", [], snapshot_date=DAY, now=NOW)
    assert info.value.field == "card_identifier"
    with pytest.raises(InvalidInputError) as info:
        valuator.value(IDENT, [], snapshot_date=DAY, now=datetime(2024, 3, 1))
    assert info.value.field == "now"
    for kwargs in (
        {"half_life_days": 0.0},
        {"half_life_days": float("nan")},
        {"min_sample": 0},
        {"fence": Decimal("-1")},
        {"bid_step": -0.1},
    ):
        with pytest.raises(InvalidInputError):
            DefaultValuator(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------- properties

prices = st.integers(min_value=0, max_value=int(MAX_PRICE * 100)).map(
    lambda cents: Decimal(cents).scaleb(-2)
)
edge_prices = st.sampled_from([Decimal("0.00"), MAX_PRICE, Decimal("0.01"), Decimal("19.99")])
moments = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2040, 1, 1),
    timezones=st.just(UTC),
)


_row = st.tuples(
    st.sampled_from(TITLES),
    st.one_of(prices, edge_prices),
    st.sampled_from([None, "auction", "buy_it_now"]),
    st.booleans(),
    st.none() | moments,
    st.none() | st.integers(min_value=0, max_value=2_147_483_647),
)
# small samples (around min_sample) and large ones (up to 200 listings) both get explored
listing_rows = st.lists(_row, max_size=12) | st.lists(_row, min_size=150, max_size=200)


def build(
    rows: list[tuple[str, Decimal, str | None, bool, datetime | None, int | None]],
) -> list[Listing]:
    return [
        Listing(
            item_id=f"i{n}",
            title=title,
            price=price,
            listing_type=listing_type,  # type: ignore[arg-type]
            sold=sold,
            sold_date=sold_date,
            bids=bids,
        )
        for n, (title, price, listing_type, sold, sold_date, bids) in enumerate(rows)
    ]


def check_invariants(snap: PriceSnapshot) -> None:
    assert isinstance(snap, PriceSnapshot)
    for field in MONEY_FIELDS:
        value = getattr(snap, field)
        assert value is None or (isinstance(value, Decimal) and value.as_tuple().exponent == -2)
    if snap.sample_size == 0:
        assert snap.min_price is None
        return
    assert snap.min_price is not None and snap.max_price is not None
    assert snap.avg_price is not None
    assert snap.min_price <= snap.avg_price <= snap.max_price
    if snap.market_value is None:
        assert snap.volume_confidence in ("none", "insufficient")
        return
    assert snap.volume_confidence in ("low", "medium", "high")
    assert snap.fmv_low is not None and snap.fmv_high is not None
    assert snap.quick_sale is not None and snap.patient_sale is not None
    assert snap.quick_sale <= snap.market_value <= snap.patient_sale
    assert snap.fmv_low <= snap.market_value <= snap.fmv_high
    assert snap.fmv_low <= snap.quick_sale and snap.patient_sale <= snap.fmv_high
    for field in MONEY_FIELDS:
        assert snap.min_price <= getattr(snap, field) <= snap.max_price
    for analysis in (snap.parallel_analysis, snap.grading_analysis):
        assert analysis is not None
        assert json.loads(json.dumps(analysis, allow_nan=False)) == analysis
        assert sum(group["count"] for group in analysis.values()) == snap.sample_size
    json.loads(snap.model_dump_json())


@settings(max_examples=200, deadline=None)
@given(rows=listing_rows, now=moments, seed=st.integers())
def test_invariants_and_order_independence(
    rows: list[tuple[str, Decimal, str | None, bool, datetime | None, int | None]],
    now: datetime,
    seed: int,
) -> None:
    listings = build(rows)
    valuator = DefaultValuator()
    snap = valuator.value(IDENT, listings, snapshot_date=DAY, now=now)
    check_invariants(snap)
    assert snap.sample_size == len(valuator.usable_sales(listings))
    shuffled = list(listings)
    random.Random(seed).shuffle(shuffled)
    assert valuator.value(IDENT, shuffled, snapshot_date=DAY, now=now) == snap


@settings(max_examples=100, deadline=None)
@given(
    price_list=st.lists(st.one_of(prices, edge_prices), min_size=3, max_size=60),
    half_life=st.floats(min_value=0.01, max_value=1e6),
    fence=st.decimals(min_value=0, max_value=10, places=2),
)
def test_any_configuration_keeps_the_ordering(
    price_list: list[Decimal], half_life: float, fence: Decimal
) -> None:
    listings = [sale(f"i{n}", str(p), days=n % 40) for n, p in enumerate(price_list)]
    valuator = DefaultValuator(half_life_days=half_life, fence=fence)
    check_invariants(valuator.value(IDENT, listings, snapshot_date=DAY, now=NOW))


def test_documentation_snippet_runs_and_prints_what_it_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = Path(__file__).parents[2] / "docs" / "pricing.md"
    if not doc.exists():
        pytest.skip("documentation not shipped with this tree")
    text = doc.read_text(encoding="utf-8")
    section = text[text.index("### Runnable example") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n\n")]
    exec(compile(code, str(doc), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    assert printed == expected
