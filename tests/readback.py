"""Reading a test database back directly, bypassing the store (importable by every test)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from kuya_store.db.engine import driver_arguments


async def rows(url: str, sql: str) -> list[dict[str, Any]]:
    """Every row ``sql`` returns, as dicts, on a connection of its own (PgBouncer too)."""
    target, connect_args = driver_arguments(url)
    engine = create_async_engine(target, connect_args=connect_args)
    try:
        async with engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(sa.text(sql))]
    finally:
        await engine.dispose()
