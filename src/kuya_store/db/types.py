"""Column types that behave the same on PostgreSQL and SQLite.

- :class:`UTCDateTime`: ``TIMESTAMP WITH TIME ZONE``; rejects naive datetimes and returns
  tz-aware UTC on both backends (SQLite keeps UTC text).
- :class:`Money`: ``NUMERIC(10, 2)``; exact ``Decimal`` in and out on both backends. SQLite
  has no decimal type, so the value is kept there as an integer number of cents in the
  ``NUMERIC`` column (integers are exact, ordered and summable in SQLite).
- :data:`JSONType`: ``JSONB`` on PostgreSQL, ``JSON`` elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from kuya_store.models import to_money

__all__ = ["JSONType", "Money", "UTCDateTime"]

JSONType: TypeEngine[Any] = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp, always UTC when read back."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime rejected: pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class _CentsNumeric(sa.Numeric[Decimal]):
    """``NUMERIC(10, 2)`` DDL whose values pass through untouched (integer cents on SQLite)."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


_CENTS = Decimal(100)
_CENT = Decimal("0.01")


class Money(TypeDecorator[Decimal]):
    """An exact amount with two places, ``NUMERIC(10, 2)``."""

    impl = sa.Numeric(10, 2, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_CentsNumeric(10, 2))
        return dialect.type_descriptor(sa.Numeric(10, 2, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = to_money(value)
        if dialect.name == "sqlite":
            return int(amount * _CENTS)
        return amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            if isinstance(value, int):
                return (Decimal(value) / _CENTS).quantize(_CENT)
            # A value written by another tool as text or real: read it exactly as written.
            return to_money(value if isinstance(value, str) else repr(value))
        if type(value) is Decimal:  # what the driver gives for NUMERIC: no copy needed
            return value.quantize(_CENT)
        return Decimal(value).quantize(_CENT)

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal
