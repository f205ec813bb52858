"""The migration plan's schema: searches, price_snapshots, listing_cache, users, saved_searches.

Plus the link table ``search_results`` and the ``searches`` columns that identify a stored
result (``card_identifier``, ``params``, ``result_key``); ``docs/schema.md`` says why.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_money = sa.Numeric(10, 2)
_moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("password_hash", sa.String(255)),
        sa.Column("display_name", sa.String(100)),
        sa.Column("created_at", _moment, server_default=sa.func.now()),
        sa.Column("last_login", _moment),
        sa.Column("is_active", sa.Boolean, server_default=sa.true()),
        sa.PrimaryKeyConstraint("id", name="users_pkey"),
        sa.UniqueConstraint("email", name="users_email_key"),
    )
    op.create_index("idx_users_email", "users", ["email"])

    op.create_table(
        "searches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("search_type", sa.String(20), nullable=False),
        sa.Column("filters", _json),
        sa.Column("pages_scraped", sa.Integer),
        sa.Column("items_count", sa.Integer),
        sa.Column("created_at", _moment, server_default=sa.func.now()),
        sa.Column("execution_time_ms", sa.Integer),
        sa.Column("cache_hit", sa.Boolean, server_default=sa.false()),
        sa.Column("user_id", sa.Integer),
        sa.Column("card_identifier", sa.Text),
        sa.Column("params", _json),
        sa.Column("result_key", sa.String(64)),
        sa.PrimaryKeyConstraint("id", name="searches_pkey"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="searches_user_id_fkey"),
    )
    op.create_index("idx_searches_query", "searches", ["query"])
    op.create_index("idx_searches_created_at", "searches", ["created_at"])
    op.create_index("idx_searches_user_id", "searches", ["user_id"])
    op.create_index("idx_searches_result_key", "searches", ["result_key", "created_at"])
    op.create_index("idx_searches_card_identifier", "searches", ["card_identifier"])

    op.create_table(
        "price_snapshots",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("card_identifier", sa.Text, nullable=False),
        sa.Column("search_id", sa.Integer),
        sa.Column("snapshot_date", sa.Date, nullable=False),
        sa.Column("fmv_low", _money),
        sa.Column("fmv_high", _money),
        sa.Column("market_value", _money),
        sa.Column("quick_sale", _money),
        sa.Column("patient_sale", _money),
        sa.Column("sample_size", sa.Integer),
        sa.Column("min_price", _money),
        sa.Column("max_price", _money),
        sa.Column("avg_price", _money),
        sa.Column("volume_confidence", sa.String(20)),
        sa.Column("parallel_analysis", _json),
        sa.Column("grading_analysis", _json),
        sa.Column("created_at", _moment, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="price_snapshots_pkey"),
        sa.ForeignKeyConstraint(
            ["search_id"],
            ["searches.id"],
            name="price_snapshots_search_id_fkey",
            ondelete="SET NULL",
        ),
        sa.UniqueConstraint(
            "card_identifier",
            "snapshot_date",
            name="price_snapshots_card_identifier_snapshot_date_key",
        ),
    )
    op.create_index("idx_price_snapshots_card", "price_snapshots", ["card_identifier"])
    op.create_index("idx_price_snapshots_date", "price_snapshots", ["snapshot_date"])
    op.create_index("idx_price_snapshots_search_id", "price_snapshots", ["search_id"])

    op.create_table(
        "listing_cache",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.String(50), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("price", _money),
        sa.Column("listing_type", sa.String(20)),
        sa.Column("condition", sa.String(50)),
        sa.Column("sold", sa.Boolean),
        sa.Column("sold_date", _moment),
        sa.Column("bids", sa.Integer),
        sa.Column("watchers", sa.Integer),
        sa.Column("first_seen", _moment, server_default=sa.func.now()),
        sa.Column("last_updated", _moment, server_default=sa.func.now()),
        sa.Column("ttl", _moment),
        sa.Column("search_id", sa.Integer),
        sa.PrimaryKeyConstraint("id", name="listing_cache_pkey"),
        sa.UniqueConstraint("item_id", name="listing_cache_item_id_key"),
        sa.ForeignKeyConstraint(
            ["search_id"], ["searches.id"], name="listing_cache_search_id_fkey", ondelete="SET NULL"
        ),
    )
    op.create_index("idx_listing_cache_item_id", "listing_cache", ["item_id"])
    op.create_index("idx_listing_cache_ttl", "listing_cache", ["ttl"])
    op.create_index("idx_listing_cache_sold_date", "listing_cache", ["sold_date"])
    op.create_index(
        "idx_active_listings",
        "listing_cache",
        ["item_id"],
        postgresql_where=sa.text("sold = false"),
        sqlite_where=sa.text("sold = 0"),
    )
    op.create_index("idx_listing_cache_search_id", "listing_cache", ["search_id"])

    op.create_table(
        "search_results",
        sa.Column("search_id", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("listing_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("search_id", "position", name="search_results_pkey"),
        sa.ForeignKeyConstraint(
            ["search_id"], ["searches.id"], name="search_results_search_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["listing_id"],
            ["listing_cache.id"],
            name="search_results_listing_id_fkey",
            ondelete="CASCADE",
        ),
    )
    op.create_index("idx_search_results_listing_id", "search_results", ["listing_id"])

    op.create_table(
        "saved_searches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("filters", _json),
        sa.Column("alert_enabled", sa.Boolean, server_default=sa.false()),
        sa.Column("alert_threshold", _money),
        sa.Column("created_at", _moment, server_default=sa.func.now()),
        sa.Column("last_run", _moment),
        sa.PrimaryKeyConstraint("id", name="saved_searches_pkey"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="saved_searches_user_id_fkey"),
        sa.UniqueConstraint("user_id", "name", name="saved_searches_user_id_name_key"),
    )
    op.create_index("idx_saved_searches_user", "saved_searches", ["user_id"])


def downgrade() -> None:
    for table in (
        "saved_searches",
        "search_results",
        "listing_cache",
        "price_snapshots",
        "searches",
        "users",
    ):
        op.drop_table(table)
