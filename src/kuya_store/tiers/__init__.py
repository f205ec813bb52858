"""Hot tiers: where fetched results live for their TTL, above the database.

Each tier implements :class:`HotTier`; every implementation passes the same test suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult

__all__ = ["HotTier", "LockRelease", "TierUnavailableError"]


@dataclass(eq=False)
class LockRelease:
    """A cross-process fetch lock its holder lets go of with the write of its result.

    The tier marks it ``released`` once the write (written or refused) has let go of it
    too; otherwise the holder releases it itself.
    """

    token: str
    released: bool = False


class TierUnavailableError(Exception):
    """A tier could not carry out an operation that must not be skipped (``invalidate``)."""

    def __init__(self, tier: str) -> None:
        self.tier = tier
        super().__init__(f"the {tier} tier did not answer")


class HotTier(Protocol):
    """A TTL-bound store of :class:`StoredResult`, keyed by :class:`ResultIdentity`.

    Implementations never raise on a lost connection: a failure is a miss; only
    ``invalidate`` raises :class:`TierUnavailableError`, since a forgotten invalidation
    would serve what the caller asked to forget. ``set`` never replaces a value with one
    fetched earlier: it returns ``False`` when it refused the value as older than what
    the tier holds or than the card's invalidation (and ``True`` otherwise, also when
    the tier could not be reached).
    """

    name: str

    async def get(self, identity: ResultIdentity) -> StoredResult | None: ...

    async def set(
        self,
        identity: ResultIdentity,
        result: StoredResult,
        ttl: timedelta,
        release: LockRelease | None = None,
    ) -> bool:
        """Keep ``result`` for ``ttl``, letting go of ``release``'s lock in the same step."""
        ...

    async def invalidate(self, identity: ResultIdentity, at: datetime | None = None) -> int:
        """Drop every params variant of this card and search type; returns how many.

        With ``at``, data fetched at or before that moment is refused from then on.
        """
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
