"""The search log keeps what a fetcher reported beside its listings, and takes long queries.

On PostgreSQL the plan's B-tree index on ``searches.query`` cannot hold a query past about
2.7 KB (a B-tree entry must fit a third of a page), while real apps send queries of up to
5,000 characters (filters written as minus-terms). A hash index of the same name serves
the same equality lookups at any length.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("fetch_stats", _json))
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("idx_searches_query", table_name="searches")
        op.create_index("idx_searches_query", "searches", ["query"], postgresql_using="hash")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("idx_searches_query", table_name="searches")
        op.create_index("idx_searches_query", "searches", ["query"])
    with op.batch_alter_table("searches") as batch:
        batch.drop_column("fetch_stats")
