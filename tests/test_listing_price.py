"""A listing's price is checked in pydantic's core, and accepts and refuses as it always did."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

import kuya_store as ks
from kuya_store.models import MAX_PRICE, to_money


def _rounded_before(value: object) -> object:
    """The rounding of a price as it was: over-precise amounts within range only."""
    kind = type(value)
    if kind is float:
        over = True
    elif kind is str:
        _, dot, places = value.partition(".")  # type: ignore[attr-defined]
        over = bool(dot) and len(places.strip()) > 2
    elif kind is Decimal:
        exponent = value.as_tuple().exponent  # type: ignore[attr-defined]
        over = isinstance(exponent, int) and exponent < -2
    else:
        return value
    if not over:
        return value
    try:
        return to_money(value)
    except ValueError:
        return value


class _Before(BaseModel):
    """The price field as it was: its constraints after the rounding, so checked in Python."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    price: Annotated[
        Decimal,
        BeforeValidator(_rounded_before),
        Field(ge=0, le=MAX_PRICE, max_digits=10, decimal_places=2, allow_inf_nan=False),
    ]


def _outcome(model: type[BaseModel], price: object) -> Any:
    try:
        got = model.model_validate({"item_id": "1", "title": "t", "price": price}).price  # type: ignore[attr-defined]
    except ValidationError as exc:
        return [(e["type"], e["msg"], e["loc"]) for e in exc.errors()]
    except ArithmeticError as exc:  # the old rounding let InvalidOperation escape
        return exc
    return ("accepted", got, str(got))


_amounts = st.one_of(
    st.decimals(),
    st.decimals(places=4),
    st.decimals(min_value=-1, max_value=10**9, places=3),
    st.floats(),
    st.floats(min_value=-1, max_value=2e8),
    st.integers(),
    st.text(max_size=20),
    st.from_regex(r"\s*[-+]?[0-9]{0,12}(\.[0-9]{0,5})?([eE][+-]?[0-9]{1,3})?\s*", fullmatch=True),
    st.booleans(),
    st.none(),
)


@settings(max_examples=400, deadline=None)
@given(_amounts)
def test_price_accepts_and_refuses_as_before(price: object) -> None:
    before, now = _outcome(_Before, price), _outcome(ks.Listing, price)
    if isinstance(before, ArithmeticError):
        assert now[0][0] in {"less_than_equal", "greater_than_equal", "decimal_max_places"}
        return  # too many digits to round: refused plainly now, not an arithmetic error
    if isinstance(before, list) and isinstance(now, list):
        # Both refuse. The core names the bound as a number; an amount written with an
        # exponent and more than two places is named by its places first.
        assert [t for t, _, _ in now] == ["decimal_max_places"] or [
            (t, m.replace("Decimal('99999999.99')", "99999999.99"), loc) for t, m, loc in before
        ] == now
        return
    assert before == now


@pytest.mark.parametrize(
    ("price", "reason"),
    [
        ("99999999.995", "less than or equal to 99999999.99"),
        (123456789012, "less than or equal to 99999999.99"),
        ("-1.234", "greater than or equal to 0"),
        ("1" * 30 + ".123", "no more than 2 decimal places"),  # too long to round
        (Decimal("-" + "3" * 33 + ".4368"), "no more than 2 decimal places"),
        (float("nan"), "finite number"),
        ("abc.123", "valid decimal"),
    ],
)
def test_impossible_prices_are_named(price: object, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        ks.Listing(item_id="1", title="t", price=price)


def test_price_constraints_are_checked_by_the_core() -> None:
    """The rounding wraps a decimal schema that holds every constraint itself."""

    def price_field(schema: Any) -> Any:
        if isinstance(schema, dict):
            if schema.get("type") == "model-fields":
                return schema["fields"]["price"]
            found = (price_field(v) for v in schema.values())
        elif isinstance(schema, list):
            found = (price_field(v) for v in schema)
        else:
            return None
        return next((f for f in found if f is not None), None)

    inner = price_field(ks.Listing.__pydantic_core_schema__)["schema"]
    assert inner["type"] == "function-before"
    assert inner["schema"]["type"] == "decimal"
    assert {"ge", "le", "decimal_places"} <= inner["schema"].keys()
