"""Hot tiers: where fetched results live for their TTL, above the database.

Each tier implements :class:`HotTier`; every implementation passes the same test suite.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult

__all__ = ["HotTier"]


class HotTier(Protocol):
    """A TTL-bound store of :class:`StoredResult`, keyed by :class:`ResultIdentity`.

    Implementations never raise on a lost connection: a failure is a miss.
    """

    name: str

    async def get(self, identity: ResultIdentity) -> StoredResult | None: ...

    async def set(self, identity: ResultIdentity, result: StoredResult, ttl: timedelta) -> None: ...

    async def invalidate(self, identity: ResultIdentity) -> int:
        """Drop every params variant of this card and search type; returns how many."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
