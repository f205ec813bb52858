"""The tier order of a stored result: near-cache -> hot tier -> database.

The first tier holding a copy that may answer (fresh, not fenced by an invalidation,
not showing display data past its ``display_ttl``) answers, and fills every tier above
it, for no longer than the copy stays fresh. A paid result fills the hot tiers the same
way. A search reads its levels (:mod:`kuya_store.answering`) broadest first. Each read is
one span and one measurement (:func:`~kuya_store.observing.watch_tier`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from kuya_store.answering import Level
from kuya_store.fences import Fences
from kuya_store.freshness import copy_ttl, fresh_until
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import Source
from kuya_store.observing import watch_tier
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.tiers import HotTier, LockRelease
from kuya_store.tiers.database import DatabaseTier
from kuya_store.tiers.display import DisplayStore, display_ttl_left, outlived
from kuya_store.tiers.near import NearCache, Ticket

__all__ = ["TierLookup"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TierLookup:
    """Reads one stored result through the tiers in order, and fills the tiers above a hit.

    Args:
        database: the database tier, read only when ``reads_database`` (``read_through``).
    """

    def __init__(
        self,
        *,
        settings: StoreSettings,
        metrics: Metrics,
        hot: HotTier,
        near: NearCache | None,
        database: DatabaseTier | None,
        reads_database: bool,
        fences: Fences,
        display: DisplayStore,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._hot = hot
        self._near = near
        self._db = database
        self._reads_database = reads_database
        self._fences = fences
        self._display = display
        self._hot_hits = f"hit_{hot.name}"

    def _usable(self, identity: ResultIdentity, hit: StoredResult, now: datetime) -> bool:
        return (
            now < fresh_until(hit, self._settings.fresh_for(hit.search_type))
            and not self._fences.fenced(identity, hit.fetched_at)
            and not outlived(hit, now)
        )

    async def lookup(
        self, identity: ResultIdentity, now: datetime, count: bool = True, traced: bool = True
    ) -> tuple[StoredResult | None, Source | None, StoredResult | None]:
        """A fresh result from the first tier that has one; else the newest stored, if any.

        Args:
            count: ``False`` for a peek, which is not a tier read to report.
            traced: ``False`` when the search was begun with no tracer provider to record.
        """
        hit = self.near_hit(identity, now, count, traced)
        if hit is not None:
            return hit, Source.MEMORY, None
        return await self._below_near(identity, now, count, traced)

    def near_hit(
        self, identity: ResultIdentity, now: datetime, count: bool = True, traced: bool = True
    ) -> StoredResult | None:
        """The near-cache's copy if it may answer: the first read of :meth:`lookup`.

        A plain call, since the near-cache is in process: a hit awaits nothing.
        """
        if self._near is None:
            return None
        with watch_tier(self._metrics if count else None, "near", traced, "hit_memory") as tier:
            hit = self._near.held(identity)
            tier.hit = hit is not None and self._usable(identity, hit, now)
        return hit if tier.hit else None

    async def _below_near(
        self, identity: ResultIdentity, now: datetime, count: bool, traced: bool
    ) -> tuple[StoredResult | None, Source | None, StoredResult | None]:
        """:meth:`lookup` past the near-cache: the hot tier, then the database."""
        watched = self._metrics if count else None
        # Taken before the read: a change heard meanwhile keeps what it read out of the near-cache.
        ticket = self._near.ticket(identity) if self._near is not None else None
        with watch_tier(watched, self._hot.name, traced, self._hot_hits) as tier:
            hit = await self._hot.get(identity)
            tier.hit = hit is not None and self._usable(identity, hit, now)
        if hit is not None and tier.hit:
            await self._fill_near(identity, hit, now, ticket)
            return hit, Source(self._hot.name), None
        stale = None
        if self._reads_database:
            assert self._db is not None
            with watch_tier(watched, "database", traced) as tier:
                stored = await self._db.newest(identity, since=now - self._settings.max_stale)
                if stored is not None and self._fences.fenced(identity, stored.fetched_at):
                    stored = None
                tier.hit = stored is not None and self._usable(identity, stored, now)
            if stored is not None and tier.hit:
                await self.fill(identity, stored, now)
                # Filling the hot tier may reveal another worker's invalidation of it.
                if not self._fences.fenced(identity, stored.fetched_at):
                    if count:
                        self._metrics.incr("hit_database")
                    return stored, Source.DATABASE, None
                stored = None
            stale = stored
        if count:
            self._metrics.incr("misses")
        return None, None, stale

    async def first_answer(
        self, chain: Sequence[Level], now: datetime, refresh: bool, traced: bool
    ) -> tuple[Level | None, StoredResult | None, Source | None, list[StoredResult | None]]:
        """The first level with a fresh result that answers; else what each level holds.

        Args:
            refresh: no stored result answers, but each level's is still read (to know it).
        """
        known: list[StoredResult | None] = []
        for level in chain:
            source: Source | None = Source.MEMORY
            stale: StoredResult | None = None
            hit = self.near_hit(level.identity, now, traced=traced)
            if hit is None:
                hit, source, stale = await self._below_near(level.identity, now, True, traced)
            if hit is not None and not refresh and level.answers(hit):
                return level, hit, source, known
            known.append(hit or stale)
        return None, None, None, known

    async def stale(
        self, identity: ResultIdentity, now: datetime, any_age: bool = False
    ) -> StoredResult | None:
        """When the fetcher failed: the newest stored result up to ``max_stale`` old.

        With ``any_age`` (the budget is spent) a result of any age serves.
        """
        if not self._reads_database:
            return None
        assert self._db is not None
        since = _EPOCH if any_age else now - self._settings.max_stale
        with watch_tier(self._metrics, "database") as tier:
            stale = await self._db.newest(identity, since=since)
            tier.hit = stale is not None and not self._fences.fenced(identity, stale.fetched_at)
        if stale is None or not tier.hit:
            return None
        self._metrics.incr("hit_stale")
        return stale

    def _hot_ttl(self, result: StoredResult, now: datetime) -> timedelta:
        search_type = result.search_type
        return copy_ttl(
            fresh_until(result, self._settings.fresh_for(search_type)) - now,
            display_ttl_left(result, now),
            self._settings.hot_ttl(search_type),
        )

    async def _fill_near(
        self, identity: ResultIdentity, result: StoredResult, now: datetime, ticket: Ticket | None
    ) -> None:
        if self._near is not None and not self._fences.fenced(identity, result.fetched_at):
            # The near-cache caps this at near_cache_ttl unless it is kept coherent.
            ttl = self._hot_ttl(result, now)
            await self._near.set(identity, result, ttl, ticket)

    async def fill(
        self,
        identity: ResultIdentity,
        result: StoredResult,
        now: datetime,
        release: LockRelease | None = None,
    ) -> None:
        """Copy ``result`` into the hot tier, then the near-cache (unless it is fenced).

        Args:
            release: the fetch lock the hot tier's write lets go of too, when it can.
        """
        if self._fences.fenced(identity, result.fetched_at):
            return
        # Its own echo then leaves this write's copy in the near-cache; others' changes do not.
        ticket = self._near.ticket(identity, own_write=True) if self._near is not None else None
        if await self._hot.set(identity, result, self._hot_ttl(result, now), release):
            # Written, not refused for newer data or an invalidation: the near-cache too.
            await self._fill_near(identity, result, now, ticket)

    async def fill_fetched(
        self,
        identity: ResultIdentity,
        result: StoredResult,
        now: datetime,
        release: LockRelease | None = None,
    ) -> None:
        """A paid result fills the hot tiers, and its display data is kept by listing."""
        await asyncio.gather(
            self._display.keep(identity, result), self.fill(identity, result, now, release)
        )
