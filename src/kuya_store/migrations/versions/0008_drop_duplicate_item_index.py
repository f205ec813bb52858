"""Drop ``idx_listing_cache_item_id``: the unique key on ``item_id`` already is that index.

The plan creates ``item_id VARCHAR(50) UNIQUE`` and then ``CREATE INDEX
idx_listing_cache_item_id ON listing_cache(item_id)``. The unique constraint is enforced by
a btree index on the same column (``listing_cache_item_id_key``), which serves every lookup
the second one could; the second only doubled the index work of every listing written
(``docs/schema.md``). ``IF EXISTS``: a database adopted from the plan's DDL has it, one
that an application tidied may not.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("idx_listing_cache_item_id", table_name="listing_cache", if_exists=True)


def downgrade() -> None:
    op.create_index("idx_listing_cache_item_id", "listing_cache", ["item_id"])
