"""A search-log row names the record it was written from, so a replayed record is written once.

``searches.record_key`` (nullable: rows written before have none) with a unique index on
``(record_key, created_at)``: a record taken again from the write journal after a worker
died, or retried after a commit whose answer was lost, meets the index and is skipped.
The index holds ``created_at`` because on PostgreSQL ``searches`` is partitioned by it and
a unique index of a partitioned table must hold the partition key (``docs/schema.md``);
SQLite has the same index, so one statement serves both.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # On PostgreSQL both statements reach every partition, and partitions made later
    # inherit the index.
    op.add_column("searches", sa.Column("record_key", sa.String(32)))
    op.create_index("uq_searches_record_key", "searches", ["record_key", "created_at"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_searches_record_key", table_name="searches")
    with op.batch_alter_table("searches") as batch:
        batch.drop_column("record_key")
