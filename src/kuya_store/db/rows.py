"""Models of rows whose values the column types (or PostgreSQL's driver) already typed.

A listing read back was validated when it was written, and the columns give each value
its model form (exact money of two places, aware UTC moments): building the model
again through pydantic's validation is what a read of many rows spends its time on.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from itertools import repeat
from operator import itemgetter
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from kuya_store.built_models import SET_DICT, SET_EXTRA, SET_FIELDS_SET, SET_PRIVATE
from kuya_store.db.engine import decode_json
from kuya_store.models import Listing

__all__ = [
    "LISTING_FIELDS",
    "decimal_texts",
    "decode_json_texts",
    "listings_from_rows",
    "models_from_rows",
]

_M = TypeVar("_M", bound=BaseModel)

LISTING_FIELDS = (
    "item_id",
    "title",
    "price",
    "listing_type",
    "condition",
    "sold",
    "sold_date",
    "bids",
    "watchers",
)
"""The stored fields of a listing, in the order the reads select them."""

_set = object.__setattr__
_FIELDS_SET = frozenset(LISTING_FIELDS)
# The model may grow a validator or a private attribute: then it is built the slow way.
_PLAIN = not (Listing.__pydantic_post_init__ or Listing.__private_attributes__)


def listings_from_rows(rows: Iterable[Sequence[Any]]) -> list[Listing]:
    """Listings of rows holding :data:`LISTING_FIELDS` in order, ``sold`` never null.

    Each listing is what ``Listing(...)`` of the same values gives (the same fields set,
    no display data), without validating again what the database typed.
    """
    if not _PLAIN:  # pragma: no cover - the model has neither today
        return [Listing(**dict(zip(LISTING_FIELDS, row, strict=True))) for row in rows]
    out = []
    # One set for every listing: pydantic only reads it (a frozen model's fields never
    # change, and ``model_copy`` copies it).
    fields_set = set(_FIELDS_SET)
    for item_id, title, price, listing_type, condition, sold, sold_date, bids, watchers in rows:
        listing = Listing.__new__(Listing)
        _set(
            listing,
            "__dict__",
            {
                "item_id": item_id,
                "title": title,
                "price": price,
                "listing_type": listing_type,
                "condition": condition,
                "sold": sold,
                "sold_date": sold_date,
                "bids": bids,
                "watchers": watchers,
                "extra": {},
            },
        )
        _set(listing, "__pydantic_fields_set__", fields_set)
        _set(listing, "__pydantic_extra__", None)
        _set(listing, "__pydantic_private__", None)
        out.append(listing)
    return out


def decode_json_texts(texts: Iterable[str | None]) -> list[Any]:
    """Each JSON text decoded (``None`` stays ``None``), as :func:`decode_json` would.

    All in one orjson call, of one array of the texts: several times cheaper per value
    than a driver codec calling a Python function for each, and cheaper than one call
    per text. Only when that fails (a value orjson refuses, an integer beyond 64 bits;
    a text that is not one JSON value) is each text decoded alone.
    """
    texts = texts if isinstance(texts, list) else list(texts)
    try:
        values = orjson.loads(f"[{','.join(['null' if t is None else t for t in texts])}]")
    except orjson.JSONDecodeError:
        values = None
    if isinstance(values, list) and len(values) == len(texts):
        return values
    return [None if text is None else decode_json(text) for text in texts]


def models_from_rows(
    model: type[_M],
    fields: tuple[str, ...],
    rows: Iterable[Sequence[Any]],
    json_fields: tuple[str, ...] = (),
    same: Mapping[str, Any] | None = None,
    decimal_fields: tuple[str, ...] = (),
) -> list[_M]:
    """Models of rows whose columns are ``fields`` in order, without validating them again.

    The column types already typed every value (``Decimal`` from ``Money``, ``date``,
    decoded JSON), so each model gets exactly what ``model_construct`` would give it, set
    the way ``model_construct`` sets it, without its per-field loop: this is what a
    history of hundreds of rows spends its time on otherwise. Each step runs over all
    rows at once (``map``), each model's fields in one dict display.

    Args:
        json_fields: fields whose column holds JSON text still to decode.
        same: fields with one value for every row, which the rows leave out (a history's
            card, say): the rows hold the other ``fields``, in order.
        decimal_fields: fields whose column holds a number as text, for ``Decimal``.
    """
    same = same or {}
    rows = rows if isinstance(rows, list) else list(rows)
    width = len(fields) - len(same)
    if rows and len(rows[0]) != width:
        raise ValueError(f"rows of {len(rows[0])} columns for {width} fields")
    columns = [name for name in fields if name not in same]
    decoders = {
        **dict.fromkeys(json_fields, decode_json_texts),
        **dict.fromkeys(decimal_fields, decimal_texts),
    }
    # Column by column: one call of each decoder for all rows.
    decoded = [
        decode(list(map(itemgetter(columns.index(name)), rows)))
        for name, decode in decoders.items()
    ]
    count = len(rows)
    values = [repeat(same[name], count) for name in same]
    maker = _dict_maker(fields, tuple(same), tuple(decoders))
    dicts = list(map(maker, rows, *values, *decoded))
    if model.__pydantic_post_init__ or model.__private_attributes__:  # more than fields to set
        return [model.model_construct(**fields_of) for fields_of in dicts]
    items = list(map(object.__new__, repeat(model, count)))
    deque(map(_SET_DICT, items, dicts), 0)
    # One set for every row: pydantic only reads it (a frozen model's fields never change,
    # and ``model_copy`` copies it).
    deque(map(_SET_FIELDS_SET, items, repeat(set(fields), count)), 0)
    deque(map(_SET_EXTRA, items, repeat(None, count)), 0)
    deque(map(_SET_PRIVATE, items, repeat(None, count)), 0)
    return items


def decimal_texts(texts: list[str | None]) -> list[Decimal | None]:
    """Each number's text as a ``Decimal`` (``None`` stays ``None``).

    PostgreSQL's text of a ``NUMERIC`` holds its digits and scale exactly, so this is the
    ``Decimal`` the driver's binary codec gives (every sign, scale and ``NaN`` alike),
    at a third of its cost: the codec formats the digits with ``snprintf`` first.
    """
    return [None if text is None else Decimal(text) for text in texts]


@functools.cache
def _dict_maker(
    fields: tuple[str, ...], same: tuple[str, ...], decoded: tuple[str, ...]
) -> Callable[..., dict[str, Any]]:
    """``(row, *same values, *decoded columns) -> {field: value}`` in ``fields`` order.

    A dict display: built at its final size in one step, where ``dict(zip(...))`` grows
    it twice and steps through the row's iterator (a fifth fewer instructions, measured
    in ``bench/report/history.md``). Only field names (identifiers, checked) go into
    its source.
    """
    if not all(name.isidentifier() for name in fields):
        raise ValueError(f"not field names: {fields}")
    columns = [name for name in fields if name not in same]
    source = {
        name: f"_s{same.index(name)}"
        if name in same
        else f"_d{decoded.index(name)}"
        if name in decoded
        else f"row[{columns.index(name)}]"
        for name in fields
    }
    params = [
        "row",
        *(f"_s{i}" for i in range(len(same))),
        *(f"_d{i}" for i in range(len(decoded))),
    ]
    display = ", ".join(f"{name!r}: {value}" for name, value in source.items())
    maker: Callable[..., dict[str, Any]] = eval(f"lambda {', '.join(params)}: {{{display}}}")
    return maker


_SET_DICT, _SET_FIELDS_SET, _SET_EXTRA, _SET_PRIVATE = (
    SET_DICT,
    SET_FIELDS_SET,
    SET_EXTRA,
    SET_PRIVATE,
)
