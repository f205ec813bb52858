"""A sale as the valuation reads it: the fields of a sold listing that set its price and weight.

A :class:`~kuya_store.models.Listing` has them, and so does a :class:`SoldRow` made from
a database row of just these columns: the day's valuation reads thousands of stored
sales, and a tuple of six values is what it needs of each, not a model of nine.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import NamedTuple, Protocol

__all__ = ["SOLD_FIELDS", "SoldFields", "SoldRow"]


class SoldFields(Protocol):
    """What the valuation reads of a sale."""

    @property
    def title(self) -> str: ...

    @property
    def price(self) -> Decimal: ...

    @property
    def listing_type(self) -> str | None: ...

    @property
    def sold(self) -> bool: ...

    @property
    def sold_date(self) -> datetime | None: ...

    @property
    def bids(self) -> int | None: ...


class SoldRow(NamedTuple):
    """A stored sale's :class:`SoldFields`, as a row of :data:`SOLD_FIELDS` gives them."""

    title: str
    price: Decimal
    listing_type: str | None
    sold: bool
    sold_date: datetime | None
    bids: int | None


SOLD_FIELDS: tuple[str, ...] = SoldRow._fields
"""The listing columns the valuation reads, in :class:`SoldRow`'s order."""
