"""Models of rows whose values the column types (or PostgreSQL's driver) already typed.

A listing read back was validated when it was written, and the columns give each value
its model form (exact money of two places, aware UTC moments): building the model
again through pydantic's validation is what a read of many rows spends its time on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import itemgetter, setitem
from typing import Any, TypeVar, cast

import orjson
from pydantic import BaseModel

from kuya_store.db.engine import decode_json
from kuya_store.models import Listing

__all__ = ["LISTING_FIELDS", "decode_json_texts", "listings_from_rows", "models_from_rows"]

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

    In one pass that calls orjson directly, several times cheaper per value than a
    driver codec that calls a Python function for each; only when a value holds what
    orjson refuses (an integer beyond 64 bits) is the pass made again value by value.
    """
    texts = texts if isinstance(texts, list) else list(texts)
    loads = orjson.loads
    try:
        return [None if text is None else loads(text) for text in texts]
    except orjson.JSONDecodeError:
        return [None if text is None else decode_json(text) for text in texts]


def models_from_rows(
    model: type[_M],
    fields: tuple[str, ...],
    rows: Iterable[Sequence[Any]],
    json_fields: tuple[str, ...] = (),
) -> list[_M]:
    """Models of rows whose columns are ``fields`` in order, without validating them again.

    The column types already typed every value (``Decimal`` from ``Money``, ``date``,
    decoded JSON), so each model gets exactly what ``model_construct`` would give it, set
    the way ``model_construct`` sets it, without its per-field loop: this is what a
    history of hundreds of rows spends its time on otherwise. Each step runs over all
    rows at once (``map`` of builtins), with no Python code per row.

    Args:
        json_fields: fields whose column holds JSON text still to decode.
    """
    if model.__pydantic_post_init__ or model.__private_attributes__:  # more than fields to set
        dicts = [dict(zip(fields, row, strict=True)) for row in rows]
        _decode_in_place(dicts, json_fields)
        return [model.model_construct(**values) for values in dicts]
    dicts = list(map(dict, map(zip, repeat(fields), rows)))
    if dicts and len(dicts[0]) != len(fields):
        raise ValueError(f"rows of {len(dicts[0])} columns for {len(fields)} fields")
    _decode_in_place(dicts, json_fields)
    count = len(dicts)
    items = list(map(object.__new__, repeat(model, count)))
    deque(map(_SET_DICT, items, dicts), 0)
    # One set for every row: pydantic only reads it (a frozen model's fields never change,
    # and ``model_copy`` copies it).
    deque(map(_SET_FIELDS_SET, items, repeat(set(fields), count)), 0)
    deque(map(_SET_EXTRA, items, repeat(None, count)), 0)
    deque(map(_SET_PRIVATE, items, repeat(None, count)), 0)
    return items


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    """How ``model_construct`` sets one of a model's slots, without looking the name up."""
    slot: Any = vars(BaseModel).get(name)
    if hasattr(slot, "__set__"):
        return cast("Callable[[Any, Any], None]", slot.__set__)
    return lambda item, value: _set(item, name, value)  # pragma: no cover - other layouts


_SET_DICT = _slot_setter("__dict__")
_SET_FIELDS_SET = _slot_setter("__pydantic_fields_set__")
_SET_EXTRA = _slot_setter("__pydantic_extra__")
_SET_PRIVATE = _slot_setter("__pydantic_private__")


def _decode_in_place(dicts: list[dict[str, Any]], json_fields: tuple[str, ...]) -> None:
    for name in json_fields:
        values = decode_json_texts(list(map(itemgetter(name), dicts)))
        deque(map(setitem, dicts, repeat(name), values), 0)
