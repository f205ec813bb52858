"""Models of rows whose values the column types (or PostgreSQL's driver) already typed.

A listing read back was validated when it was written, and the columns give each value
its model form (exact money of two places, aware UTC moments): building the model
again through pydantic's validation is what a read of many rows spends its time on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kuya_store.models import Listing

__all__ = ["LISTING_FIELDS", "listings_from_rows"]

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
