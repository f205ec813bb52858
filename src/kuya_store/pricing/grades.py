"""Grades: which grade a sale or a query names, and whether grading a raw card pays.

``grading_key`` groups sales for ``grading_analysis``; ``query_grade`` reads the grade a
card identifier names (``...-psa_10``), so that a query for one grade values only that
grade's sales; ``grading_outlook`` turns a snapshot's per-grade values, a grade
distribution and a grading cost into the expected value of grading (``docs/pricing.md``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

from pydantic import Field

from kuya_store.errors import InvalidInputError
from kuya_store.models import PriceSnapshot, _Frozen
from kuya_store.pricing.titles import GRADERS, TitleInfo, grade_value

__all__ = ["GradeOutcome", "GradingOutlook", "grading_key", "grading_outlook", "query_grade"]

_GRADE_TOKEN = re.compile(rf"^({'|'.join(GRADERS)})_(\d{{1,3}}(?:\.\d)?)$")
_ODDS_TOLERANCE = Fraction(1, 1000)


def grading_key(info: TitleInfo) -> str:
    """The ``grading_analysis`` group of a sale: ``"PSA 10"``, ``"BGS 9.5"``, ``"raw"``..."""
    if not info.graded:
        return "raw"
    grade = None if info.grade is None else str(info.grade)
    if info.grader and grade:
        return f"{info.grader} {grade}"
    if info.grader:
        return info.grader
    return f"graded {grade}" if grade else "graded"


def query_grade(card_identifier: str) -> str | None:
    """The grade a card identifier names (``"PSA 10"`` for ``...-psa_10``), if exactly one."""
    found = set()
    for token in card_identifier.split("-"):
        m = _GRADE_TOKEN.match(token)
        if m:
            value = grade_value(m[1], m[2])
            if value is not None:
                found.add(f"{GRADERS[m[1]]} {value}")
    return found.pop() if len(found) == 1 else None


# ------------------------------------------------------------------------- outlook


class GradeOutcome(_Frozen):
    """One grade the card may come back with, what it is worth and what it would gain."""

    grade: str
    probability: Decimal
    value: Decimal
    """The grade's market value (its median when too few sales for one)."""
    gain: Decimal
    """``value - grading_cost - raw_value``: the gain over keeping the card raw."""
    sales: int
    """Sales of this grade behind ``value`` (0 when assumed)."""
    assumed: bool
    """No sale of this grade: valued as the raw card (a low grade rarely sells for more)."""


class GradingOutlook(_Frozen):
    """Whether grading a raw card is expected to pay, from the store's own sales."""

    card_identifier: str | None
    raw_value: Decimal
    grading_cost: Decimal
    expected_value: Decimal
    """Sum over the outcomes of probability times value."""
    expected_gain: Decimal
    """``expected_value - grading_cost - raw_value``."""
    worth_grading: bool
    """The expected gain is positive."""
    chance_of_profit: Decimal
    """Probability of a grade worth more than ``raw_value + grading_cost``."""
    break_even_grade: str | None
    """The least valuable outcome still worth at least ``raw_value + grading_cost``."""
    outcomes: list[GradeOutcome] = Field(default_factory=list)


def _money(value: Fraction) -> Decimal:
    cents = math.floor(abs(value) * 100 + Fraction(1, 2))
    amount = Decimal(cents).scaleb(-2).quantize(Decimal("0.01"))
    return -amount if value < 0 and cents else amount


def _fraction(value: Any, field: str) -> Fraction:
    try:
        out = Fraction(str(value)) if isinstance(value, float) else Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise InvalidInputError(field, "must be a number") from None
    return out


def _group_value(group: Mapping[str, Any]) -> Fraction | None:
    text = group.get("market_value") or group.get("median")
    return None if text is None else Fraction(Decimal(str(text)))


def grading_outlook(
    source: PriceSnapshot | Mapping[str, Any],
    *,
    odds: Mapping[str, float | Decimal | Fraction],
    grading_cost: Decimal | float | str,
    raw_value: Decimal | float | str | None = None,
) -> GradingOutlook:
    """The expected value of grading a raw card.

    Args:
        source: a snapshot (its ``grading_analysis``) or a ``grading_analysis`` mapping.
        odds: the chance of each grade (``{"PSA 10": 0.3, "PSA 9": 0.5, "PSA 8": 0.2}``),
            summing to 1.
        grading_cost: what grading costs (fee, shipping, insurance).
        raw_value: the raw card's value; by default the ``"raw"`` group's market value.

    Raises:
        InvalidInputError: odds that are negative, empty or do not sum to 1, a negative
            cost, or no raw value to compare with.
    """
    card = source.card_identifier if isinstance(source, PriceSnapshot) else None
    analysis = source.grading_analysis if isinstance(source, PriceSnapshot) else source
    analysis = analysis or {}
    cost = _fraction(grading_cost, "grading_cost")
    if cost < 0:
        raise InvalidInputError("grading_cost", "must not be negative")
    if not odds:
        raise InvalidInputError("odds", "must name at least one grade")
    chances = {str(grade): _fraction(p, "odds") for grade, p in odds.items()}
    if any(p < 0 for p in chances.values()):
        raise InvalidInputError("odds", "must not be negative")
    if abs(sum(chances.values(), Fraction(0)) - 1) > _ODDS_TOLERANCE:
        raise InvalidInputError("odds", "must sum to 1")
    raw_group = analysis.get("raw")
    raw = (
        _fraction(Decimal(str(raw_value)), "raw_value")
        if raw_value is not None
        else (_group_value(raw_group) if isinstance(raw_group, Mapping) else None)
    )
    if raw is None:
        raise InvalidInputError("raw_value", "no raw sales to compare with: pass raw_value")
    threshold = raw + cost
    outcomes: list[tuple[Fraction, GradeOutcome]] = []
    expected = Fraction(0)
    for grade, p in chances.items():
        group = analysis.get(grade)
        value = _group_value(group) if isinstance(group, Mapping) else None
        sales = int(group.get("count", 0)) if isinstance(group, Mapping) and value else 0
        assumed = value is None
        value = raw if value is None else value
        expected += p * value
        outcome = GradeOutcome(
            grade=grade,
            probability=Decimal(p.numerator) / Decimal(p.denominator),
            value=_money(value),
            gain=_money(value - threshold),
            sales=sales,
            assumed=assumed,
        )
        outcomes.append((value, outcome))
    outcomes.sort(key=lambda pair: (-pair[0], pair[1].grade))
    paying = [(v, o) for v, o in outcomes if v >= threshold]
    gain = expected - threshold
    return GradingOutlook(
        card_identifier=card,
        raw_value=_money(raw),
        grading_cost=_money(cost),
        expected_value=_money(expected),
        expected_gain=_money(gain),
        worth_grading=gain > 0,
        chance_of_profit=_probability(
            sum((chances[o.grade] for v, o in outcomes if v > threshold), Fraction(0))
        ),
        break_even_grade=paying[-1][1].grade if paying else None,
        outcomes=[o for _, o in outcomes],
    )


def _probability(p: Fraction) -> Decimal:
    return (Decimal(p.numerator) / Decimal(p.denominator)).quantize(Decimal("0.0001"))
