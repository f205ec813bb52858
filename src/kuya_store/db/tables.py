"""The migration plan's five tables, plus the link table correctness needs and the collections
(``docs/schema.md``).

Names, columns, nullability, defaults, constraints and indexes follow the migration plan's DDL.
Constraint names follow PostgreSQL's own defaults, so the schema is the one the migration plan's
``CREATE TABLE`` statements would have produced.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kuya_store.db.types import JSONType, Money, UTCDateTime

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "BinderRow",
    "CollectionCardRow",
    "ListingRow",
    "PriceSnapshotRow",
    "SavedSearchRow",
    "SearchResultRow",
    "SearchRow",
    "UserRow",
    "metadata",
]

NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_name)s_fkey",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "ck": "%(table_name)s_%(constraint_name)s_check",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

_now = sa.func.now()


class Base(DeclarativeBase):
    """Declarative base bound to kuya-store's own ``MetaData``."""

    metadata = metadata


class UserRow(Base):
    """``users``: application accounts."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(255), nullable=False, unique=True)
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    display_name: Mapped[str | None] = mapped_column(sa.String(100))
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, server_default=_now)
    last_login: Mapped[datetime | None] = mapped_column(UTCDateTime)
    is_active: Mapped[bool | None] = mapped_column(sa.Boolean, server_default=sa.true())

    __table_args__ = (sa.Index("idx_users_email", "email"),)


class SearchRow(Base):
    """``searches``: one row per search call, cache hits included."""

    __tablename__ = "searches"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    query: Mapped[str] = mapped_column(sa.Text, nullable=False)
    search_type: Mapped[str] = mapped_column(sa.String(20), nullable=False)
    filters: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    pages_scraped: Mapped[int | None] = mapped_column(sa.Integer)
    items_count: Mapped[int | None] = mapped_column(sa.Integer)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, server_default=_now)
    execution_time_ms: Mapped[int | None] = mapped_column(sa.Integer)
    cache_hit: Mapped[bool | None] = mapped_column(sa.Boolean, server_default=sa.false())
    user_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    # Additions (docs/schema.md): which stored result this row fetched or was served from.
    card_identifier: Mapped[str | None] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    result_key: Mapped[str | None] = mapped_column(sa.String(64))
    fetch_stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    complete: Mapped[bool | None] = mapped_column(sa.Boolean)
    # Names the record a row was written from, so a replayed record is written once.
    record_key: Mapped[str | None] = mapped_column(sa.String(32))

    __table_args__ = (
        # Hash on PostgreSQL: a B-tree entry cannot hold a query of 5,000 characters.
        sa.Index("idx_searches_query", "query", postgresql_using="hash"),
        sa.Index("idx_searches_created_at", "created_at"),
        sa.Index("idx_searches_user_id", "user_id"),
        sa.Index("idx_searches_result_key", "result_key", "created_at"),
        sa.Index("idx_searches_card_identifier", "card_identifier"),
        # With created_at: a unique index of a partitioned table must hold its partition key.
        sa.Index("uq_searches_record_key", "record_key", "created_at", unique=True),
    )


class PriceSnapshotRow(Base):
    """``price_snapshots``: one row per card per day of aggregated sold prices."""

    __tablename__ = "price_snapshots"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    card_identifier: Mapped[str] = mapped_column(sa.Text, nullable=False)
    search_id: Mapped[int | None] = mapped_column(sa.ForeignKey("searches.id", ondelete="SET NULL"))
    snapshot_date: Mapped[date] = mapped_column(sa.Date, nullable=False)
    fmv_low: Mapped[Decimal | None] = mapped_column(Money)
    fmv_high: Mapped[Decimal | None] = mapped_column(Money)
    market_value: Mapped[Decimal | None] = mapped_column(Money)
    quick_sale: Mapped[Decimal | None] = mapped_column(Money)
    patient_sale: Mapped[Decimal | None] = mapped_column(Money)
    sample_size: Mapped[int | None] = mapped_column(sa.Integer)
    min_price: Mapped[Decimal | None] = mapped_column(Money)
    max_price: Mapped[Decimal | None] = mapped_column(Money)
    avg_price: Mapped[Decimal | None] = mapped_column(Money)
    volume_confidence: Mapped[str | None] = mapped_column(sa.String(20))
    parallel_analysis: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    grading_analysis: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, server_default=_now)

    __table_args__ = (
        sa.UniqueConstraint("card_identifier", "snapshot_date"),
        sa.Index("idx_price_snapshots_card", "card_identifier"),
        sa.Index("idx_price_snapshots_date", "snapshot_date"),
        sa.Index("idx_price_snapshots_search_id", "search_id"),
    )


class ListingRow(Base):
    """``listing_cache``: listing metadata (marketplace terms: no display data)."""

    __tablename__ = "listing_cache"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    item_id: Mapped[str] = mapped_column(sa.String(50), nullable=False, unique=True)
    title: Mapped[str] = mapped_column(sa.Text, nullable=False)
    price: Mapped[Decimal | None] = mapped_column(Money)
    listing_type: Mapped[str | None] = mapped_column(sa.String(20))
    condition: Mapped[str | None] = mapped_column(sa.String(50))
    sold: Mapped[bool | None] = mapped_column(sa.Boolean)
    sold_date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    bids: Mapped[int | None] = mapped_column(sa.Integer)
    watchers: Mapped[int | None] = mapped_column(sa.Integer)
    first_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, server_default=_now)
    last_updated: Mapped[datetime | None] = mapped_column(UTCDateTime, server_default=_now)
    ttl: Mapped[datetime | None] = mapped_column(UTCDateTime)
    search_id: Mapped[int | None] = mapped_column(sa.ForeignKey("searches.id", ondelete="SET NULL"))

    __table_args__ = (
        sa.Index("idx_listing_cache_ttl", "ttl"),
        sa.Index("idx_listing_cache_sold_date", "sold_date"),
        sa.Index(
            "idx_active_listings",
            "item_id",
            postgresql_where=sa.text("sold = false"),
            sqlite_where=sa.text("sold = 0"),
        ),
        sa.Index("idx_listing_cache_search_id", "search_id"),
    )


class SearchResultRow(Base):
    """``search_results``: which listings, in which order, one fetched search returned."""

    __tablename__ = "search_results"

    search_id: Mapped[int] = mapped_column(
        sa.ForeignKey("searches.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    listing_id: Mapped[int] = mapped_column(
        sa.ForeignKey("listing_cache.id", ondelete="CASCADE"), nullable=False
    )

    __table_args__ = (sa.Index("idx_search_results_listing_id", "listing_id"),)


class SavedSearchRow(Base):
    """``saved_searches``: a user's named searches with an optional price alert."""

    __tablename__ = "saved_searches"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), nullable=False)
    name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    query: Mapped[str] = mapped_column(sa.Text, nullable=False)
    filters: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    alert_enabled: Mapped[bool | None] = mapped_column(sa.Boolean, server_default=sa.false())
    alert_threshold: Mapped[Decimal | None] = mapped_column(Money)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, server_default=_now)
    last_run: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Additions (docs/schema.md): which feed the alert watches, and what it last fired on.
    search_type: Mapped[str] = mapped_column(sa.String(20), nullable=False, server_default="sold")
    last_alert_observation: Mapped[str | None] = mapped_column(sa.String(200))
    last_alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.UniqueConstraint("user_id", "name"),
        sa.Index("idx_saved_searches_user", "user_id"),
        sa.Index(
            "idx_saved_searches_alerts",
            "id",
            postgresql_where=sa.text("alert_enabled = true"),
            sqlite_where=sa.text("alert_enabled = 1"),
        ),
    )


class ApiUsageRow(Base):
    """Upstream requests spent per budget period and search type (the API budget's count)."""

    __tablename__ = "api_usage"

    period: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    search_type: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    used: Mapped[int] = mapped_column(sa.Integer, nullable=False)


class BinderRow(Base):
    """``binders``: a user's named groups of collected cards (an addition, ``docs/schema.md``)."""

    __tablename__ = "binders"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, server_default=_now)

    __table_args__ = (sa.UniqueConstraint("user_id", "name"),)


class CollectionCardRow(Base):
    """``collection_cards``: one card a user owns, what was paid, and its latest value."""

    __tablename__ = "collection_cards"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    binder_id: Mapped[int] = mapped_column(
        sa.ForeignKey("binders.id", ondelete="CASCADE"), nullable=False
    )
    query: Mapped[str] = mapped_column(sa.Text, nullable=False)
    grade: Mapped[str | None] = mapped_column(sa.String(20))
    card_identifier: Mapped[str] = mapped_column(sa.String(200), nullable=False)
    purchase_price: Mapped[Decimal | None] = mapped_column(Money)
    purchase_date: Mapped[date | None] = mapped_column(sa.Date)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime, server_default=_now)
    last_value: Mapped[Decimal | None] = mapped_column(Money)
    last_valued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.Index("idx_collection_cards_user", "user_id"),
        sa.Index("idx_collection_cards_binder", "binder_id"),
        sa.Index("idx_collection_cards_valued", "last_valued_at"),
        sa.Index("idx_collection_cards_card", "card_identifier"),
    )
