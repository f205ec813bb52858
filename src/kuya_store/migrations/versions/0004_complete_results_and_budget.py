"""A fetch records whether the upstream had more; the API budget is counted in the database.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("complete", sa.Boolean()))
    op.create_table(
        "api_usage",
        sa.Column("period", sa.String(20), nullable=False),
        sa.Column("search_type", sa.String(20), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("period", "search_type", name="api_usage_pkey"),
    )


def downgrade() -> None:
    op.drop_table("api_usage")
    with op.batch_alter_table("searches") as batch:
        batch.drop_column("complete")
