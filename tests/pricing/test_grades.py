"""Grade-aware valuation, confidence that means something, and the grading outlook."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kuya_store as ks
from kuya_store.models import Listing
from kuya_store.pricing import DefaultValuator, normalize_card
from kuya_store.pricing.confidence import dispersion, volume_confidence
from kuya_store.pricing.grades import query_grade

NOW = datetime(2025, 11, 27, 12, 0, tzinfo=UTC)
DAY = date(2025, 11, 27)
CARD = "2023 Topps Chrome Victor Wembanyama #1 RC"
GRADE_TITLES = {
    "raw": CARD,
    "PSA 10": f"{CARD} PSA 10",
    "PSA 9": f"{CARD} PSA 9 Mint",
    "BGS 9.5": f"{CARD} BGS 9.5",
}


def sold(item_id: str, price: str, grade: str = "raw", **kw: object) -> Listing:
    days = kw.pop("days", 2)
    return Listing(
        item_id=item_id,
        title=GRADE_TITLES[grade],
        price=price,
        sold=True,
        sold_date=None if days is None else NOW - timedelta(days=days),  # type: ignore[operator]
        **kw,  # type: ignore[arg-type]
    )


def mixed() -> list[Listing]:
    raw = [sold(f"r{i}", p) for i, p in enumerate(["40", "42", "44", "45", "41", "43"])]
    tens = [sold(f"t{i}", p, "PSA 10") for i, p in enumerate(["300", "320", "310", "290"])]
    nines = [sold(f"n{i}", p, "PSA 9") for i, p in enumerate(["90", "95", "100"])]
    return raw + tens + nines


# ------------------------------------------------------------------ grade queries


@pytest.mark.parametrize(
    ("query", "grade"),
    [
        (f"{CARD} PSA 10", "PSA 10"),
        (f"{CARD} psa10", "PSA 10"),
        (f"{CARD} BGS 9.5", "BGS 9.5"),
        (f"{CARD} Beckett 9.5", "BGS 9.5"),
        (f"{CARD} SGC 96", "SGC 9"),
        (CARD, None),
        (f"{CARD} PSA 10 BGS 9.5", None),  # two grades: no single grade to value
    ],
)
def test_the_grade_a_query_names(query: str, grade: str | None) -> None:
    assert query_grade(normalize_card(query)) == grade


def test_a_grade_query_values_only_that_grades_sales() -> None:
    valuator = DefaultValuator()
    listings = mixed()
    ten = valuator.value(normalize_card(f"{CARD} PSA 10"), listings, snapshot_date=DAY, now=NOW)
    assert ten.sample_size == 4
    assert ten.min_price == Decimal("290.00") and ten.max_price == Decimal("320.00")
    assert ten.market_value == Decimal("305.00")
    everything = valuator.value(normalize_card(CARD), listings, snapshot_date=DAY, now=NOW)
    assert everything.sample_size == 13  # the card's query values every grade, as before
    assert ten.grading_analysis == everything.grading_analysis  # every grade still shown
    nothing = valuator.value(
        normalize_card(f"{CARD} BGS 9.5"), listings, snapshot_date=DAY, now=NOW
    )
    assert nothing.sample_size == 0 and nothing.market_value is None


def test_grading_analysis_values_each_grade_and_its_premium() -> None:
    snap = DefaultValuator().value(normalize_card(CARD), mixed(), snapshot_date=DAY, now=NOW)
    analysis = snap.grading_analysis
    assert analysis is not None
    assert analysis["raw"]["market_value"] == "42.50"
    assert analysis["PSA 10"]["market_value"] == "305.00"
    assert analysis["PSA 9"]["market_value"] == "95.00"
    assert analysis["PSA 10"]["market_premium_pct"] == "617.6"  # 305 / 42.50 - 1
    assert analysis["raw"]["market_premium_pct"] == "0.0"
    for group in analysis.values():
        assert group["quick_sale"] <= group["market_value"] <= group["patient_sale"]


def test_a_thin_auction_barely_moves_the_value() -> None:
    valuator = DefaultValuator()
    steady = [sold(f"b{i}", "50.00") for i in range(3)]
    thin = [sold(f"a{i}", "20.00", listing_type="auction", bids=1) for i in range(4)]
    snap = valuator.value(normalize_card(CARD), steady + thin, snapshot_date=DAY, now=NOW)
    assert snap.market_value == Decimal("50.00")
    before = DefaultValuator(min_bids=0).value(
        normalize_card(CARD), steady + thin, snapshot_date=DAY, now=NOW
    )
    assert before.market_value == Decimal("20.00")


# ------------------------------------------------------------------------- confidence


def test_confidence_rules() -> None:
    rules = {"min_sample": 3}
    assert volume_confidence(0, dated=0, recent=0, spread=None, **rules) == "none"
    assert volume_confidence(2, dated=2, recent=2, spread=Fraction(0), **rules) == "insufficient"
    assert volume_confidence(25, dated=25, recent=12, spread=Fraction(1, 10), **rules) == "high"
    # no date at all is unknown recency: medium at best, never "low" for lack of dates
    assert volume_confidence(25, dated=0, recent=0, spread=Fraction(1, 10), **rules) == "medium"
    # dated but all old: low
    assert volume_confidence(25, dated=25, recent=0, spread=Fraction(1, 10), **rules) == "low"
    # prices all over the place: low whatever the count
    assert volume_confidence(25, dated=25, recent=25, spread=Fraction(7, 10), **rules) == "low"
    assert volume_confidence(25, dated=25, recent=25, spread=Fraction(1, 2), **rules) == "medium"
    assert volume_confidence(9, dated=9, recent=9, spread=Fraction(1, 10), **rules) == "medium"
    assert volume_confidence(5, dated=5, recent=5, spread=Fraction(1, 10), **rules) == "low"


def test_undated_sales_get_the_confidence_their_count_and_spread_allow() -> None:
    valuator = DefaultValuator()
    undated = [sold(f"u{i}", str(40 + i % 3), days=None) for i in range(12)]
    snap = valuator.value(normalize_card(CARD), undated, snapshot_date=DAY, now=NOW)
    assert snap.volume_confidence == "medium"
    stale = [sold(f"s{i}", str(40 + i % 3), days=120) for i in range(12)]
    assert (
        valuator.value(normalize_card(CARD), stale, snapshot_date=DAY, now=NOW).volume_confidence
        == "low"
    )
    scattered = [sold(f"x{i}", str(10 + 15 * i)) for i in range(25)]
    assert (
        valuator.value(
            normalize_card(CARD), scattered, snapshot_date=DAY, now=NOW
        ).volume_confidence
        == "low"
    )


def test_dispersion() -> None:
    assert dispersion([]) is None
    assert dispersion([Decimal(0)] * 3) is None
    assert dispersion([Decimal(10)] * 4) == 0
    assert dispersion([Decimal(p) for p in (8, 10, 12)]) == Fraction(2, 10)


# --------------------------------------------------------------- hypothesis invariants

grades = st.sampled_from(list(GRADE_TITLES))
rows = st.lists(
    st.tuples(
        grades,
        st.integers(min_value=1, max_value=100_000).map(lambda c: Decimal(c).scaleb(-2)),
        st.sampled_from([None, "auction", "buy_it_now"]),
        st.none() | st.integers(min_value=0, max_value=40),
        st.none() | st.floats(min_value=0, max_value=400),
    ),
    max_size=60,
)


def build(data: list[tuple[str, Decimal, str | None, int | None, float | None]]) -> list[Listing]:
    return [
        sold(f"i{n}", str(price), grade, listing_type=kind, bids=bids, days=days)
        for n, (grade, price, kind, bids, days) in enumerate(data)
    ]


@settings(max_examples=150, deadline=None)
@given(data=rows, asked=grades, seed=st.integers())
def test_grade_aware_snapshot_invariants(
    data: list[tuple[str, Decimal, str | None, int | None, float | None]], asked: str, seed: int
) -> None:
    listings = build(data)
    valuator = DefaultValuator()
    query = CARD if asked == "raw" else f"{CARD} {asked}"
    snap = valuator.value(normalize_card(query), listings, snapshot_date=DAY, now=NOW)
    usable = valuator.usable_sales(listings)
    if asked != "raw":
        assert snap.sample_size == sum(1 for x in listings if x.title == GRADE_TITLES[asked])
    if snap.market_value is None:
        assert snap.sample_size < valuator.min_sample
        return
    analysis = snap.grading_analysis
    assert analysis is not None
    assert sum(group["count"] for group in analysis.values()) == len(usable)
    for key, group in analysis.items():
        prices = [x.price for x in listings if x.title == GRADE_TITLES[key]]
        assert group["count"] == len(prices)
        if group["market_value"] is None:
            assert group["count"] < valuator.min_sample
            assert group["market_premium_pct"] is None
            continue
        quick, market, patient = (
            Decimal(group[name]) for name in ("quick_sale", "market_value", "patient_sale")
        )
        assert min(prices) <= quick <= market <= patient <= max(prices)
    if asked != "raw":
        # the grade's own value is the same robust method over the same sales
        assert analysis[asked]["market_value"] == str(snap.market_value)
        assert analysis[asked]["quick_sale"] == str(snap.quick_sale)
        assert analysis[asked]["patient_sale"] == str(snap.patient_sale)
    shuffled = list(listings)
    random.Random(seed).shuffle(shuffled)
    assert valuator.value(normalize_card(query), shuffled, snapshot_date=DAY, now=NOW) == snap


# ------------------------------------------------------------------- grading outlook


def test_the_grading_outlook_worked_example() -> None:
    analysis = {
        "raw": {"count": 14, "median": "41.00", "market_value": "40.00"},
        "PSA 10": {"count": 12, "median": "165.00", "market_value": "160.00"},
        "PSA 9": {"count": 9, "median": "70.00", "market_value": "70.00"},
    }
    outlook = ks.grading_outlook(
        analysis, odds={"PSA 10": 0.25, "PSA 9": 0.5, "PSA 8": 0.25}, grading_cost="25.00"
    )
    assert outlook.raw_value == Decimal("40.00")
    assert outlook.expected_value == Decimal("85.00")  # .25*160 + .5*70 + .25*40
    assert outlook.expected_gain == Decimal("20.00")  # 85 - 25 - 40
    assert outlook.worth_grading
    assert outlook.break_even_grade == "PSA 9"  # 70 >= 65, the cheapest grade that pays
    assert outlook.chance_of_profit == Decimal("0.7500")
    by_grade = {o.grade: o for o in outlook.outcomes}
    assert by_grade["PSA 8"].assumed and by_grade["PSA 8"].value == Decimal("40.00")
    assert by_grade["PSA 8"].gain == Decimal("-25.00")
    assert by_grade["PSA 10"].sales == 12 and by_grade["PSA 10"].gain == Decimal("95.00")
    assert [o.grade for o in outlook.outcomes] == ["PSA 10", "PSA 9", "PSA 8"]
    dearer = ks.grading_outlook(
        analysis, odds={"PSA 10": 0.25, "PSA 9": 0.5, "PSA 8": 0.25}, grading_cost="50"
    )
    assert dearer.expected_gain == Decimal("-5.00") and not dearer.worth_grading
    assert dearer.break_even_grade == "PSA 10"


def test_the_outlook_reads_a_snapshot_and_falls_back_to_medians() -> None:
    snap = DefaultValuator().value(normalize_card(CARD), mixed(), snapshot_date=DAY, now=NOW)
    outlook = ks.grading_outlook(snap, odds={"PSA 10": 0.5, "PSA 9": 0.5}, grading_cost=20)
    assert outlook.card_identifier == snap.card_identifier
    assert outlook.raw_value == Decimal("42.50")
    assert outlook.expected_value == Decimal("200.00")  # (305 + 95) / 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"odds": {}, "grading_cost": 20}, "odds"),
        ({"odds": {"PSA 10": 0.5}, "grading_cost": 20}, "odds"),
        ({"odds": {"PSA 10": 1.5, "PSA 9": -0.5}, "grading_cost": 20}, "odds"),
        ({"odds": {"PSA 10": 1.0}, "grading_cost": -1}, "grading_cost"),
        ({"odds": {"PSA 10": 1.0}, "grading_cost": "abc"}, "grading_cost"),
    ],
)
def test_the_outlook_refuses_bad_input(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ks.InvalidInputError) as info:
        ks.grading_outlook({"raw": {"count": 3, "median": "10.00"}}, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_the_outlook_needs_a_raw_value() -> None:
    with pytest.raises(ks.InvalidInputError) as info:
        ks.grading_outlook({"PSA 10": {"count": 3}}, odds={"PSA 10": 1}, grading_cost=20)
    assert info.value.field == "raw_value"
    given_raw = ks.grading_outlook(
        {"PSA 10": {"count": 3, "median": "100"}},
        odds={"PSA 10": 1},
        grading_cost=20,
        raw_value="30",
    )
    assert given_raw.expected_gain == Decimal("50.00")


def test_the_documented_outlook_example_prints_what_it_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pathlib import Path

    doc = Path(__file__).parents[2] / "docs" / "pricing.md"
    text = doc.read_text(encoding="utf-8")
    section = text[text.index("### Grading outlook example") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n\n")]
    exec(compile(code, str(doc), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    assert printed == expected
