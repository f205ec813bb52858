"""Saved searches know their search type and the last observation they alerted on.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("saved_searches") as batch:
        batch.add_column(
            sa.Column("search_type", sa.String(20), nullable=False, server_default="sold")
        )
        batch.add_column(sa.Column("last_alert_observation", sa.String(200)))
        batch.add_column(sa.Column("last_alerted_at", sa.DateTime(timezone=True)))
    op.create_index(
        "idx_saved_searches_alerts",
        "saved_searches",
        ["id"],
        postgresql_where=sa.text("alert_enabled = true"),
        sqlite_where=sa.text("alert_enabled = 1"),
    )


def downgrade() -> None:
    op.drop_index("idx_saved_searches_alerts", table_name="saved_searches")
    with op.batch_alter_table("saved_searches") as batch:
        batch.drop_column("last_alerted_at")
        batch.drop_column("last_alert_observation")
        batch.drop_column("search_type")
