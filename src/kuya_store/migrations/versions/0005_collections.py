"""Collections: a user's binders of cards, with purchase prices and the latest value.

Two tables the migration plan does not have (``docs/schema.md``, *Additions*): ``binders``
and ``collection_cards``. Both belong to a user and go with them (``ON DELETE CASCADE``);
a card goes with its binder.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_money = sa.Numeric(10, 2)
_moment = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "binders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", _moment, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name="binders_pkey"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="binders_user_id_fkey", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("user_id", "name", name="binders_user_id_name_key"),
    )
    op.create_table(
        "collection_cards",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("binder_id", sa.Integer, nullable=False),
        sa.Column("query", sa.Text, nullable=False),
        sa.Column("grade", sa.String(20)),
        sa.Column("card_identifier", sa.String(200), nullable=False),
        sa.Column("purchase_price", _money),
        sa.Column("purchase_date", sa.Date),
        sa.Column("created_at", _moment, server_default=sa.func.now()),
        sa.Column("last_value", _money),
        sa.Column("last_valued_at", _moment),
        sa.PrimaryKeyConstraint("id", name="collection_cards_pkey"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="collection_cards_user_id_fkey", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["binder_id"],
            ["binders.id"],
            name="collection_cards_binder_id_fkey",
            ondelete="CASCADE",
        ),
    )
    op.create_index("idx_collection_cards_user", "collection_cards", ["user_id"])
    op.create_index("idx_collection_cards_binder", "collection_cards", ["binder_id"])
    op.create_index("idx_collection_cards_valued", "collection_cards", ["last_valued_at"])
    op.create_index("idx_collection_cards_card", "collection_cards", ["card_identifier"])


def downgrade() -> None:
    op.drop_table("collection_cards")
    op.drop_table("binders")
