"""kuya-store on the replay: a real ``CompsStore`` on a SQLite file, the in-process hot tier,
a manual clock driven by the replay, and the market as its fetchers.

The market is registered as a paged fetcher (``ks.paged``, 60 listings a page) when the
library has them, else as a whole-result fetcher that asks every page at once, as the
application's scraper does. A restart flushes and closes the store and opens a new one on
the same database file: the hot tier starts empty, the database keeps everything.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import kuya_store as ks
from bench.replay.baselines import Run
from bench.replay.market import EPOCH, PAGE_SIZE, Market
from bench.replay.quality import Judge
from bench.replay.workload import Workload

BACKLOG = 1000  # buffered writes at which the replay lets the writer catch up


def paged() -> bool:
    """Whether the library registers paged fetchers (else: whole-result fetchers)."""
    return hasattr(ks, "paged")


def settings_exist(names: list[str]) -> bool:
    """Whether every one of these settings is known to the library."""
    return all(name in ks.StoreSettings.model_fields for name in names)


@dataclass(frozen=True, slots=True)
class StoreRun:
    """What the store spent and how it answered."""

    run: Run
    tiers: dict[str, int]
    elapsed: float
    complete_answers: int  # answers the store marked complete (0 where it cannot say)


def _fetchers(market: Market) -> dict[ks.SearchType, Any]:
    # Coroutines, so that the market is only ever touched from the replay's own thread.
    async def page(request: ks.FetchRequest) -> ks.FetchResult:
        return market.page(request)

    async def whole(request: ks.FetchRequest) -> ks.FetchResult:
        return market.whole(request)

    if paged():
        fetcher = ks.paged(page, page_size=PAGE_SIZE)
        return {ks.SearchType.SOLD: fetcher, ks.SearchType.ACTIVE: fetcher}
    return {ks.SearchType.SOLD: whole, ks.SearchType.ACTIVE: whole}


async def replay(
    work: Workload,
    market: Market,
    judge: Judge,
    database_url: str,
    settings: dict[str, Any] | None = None,
) -> StoreRun:
    """Replay ``work`` through real stores, one per process lifetime; score every answer."""
    await ks.migrations.upgrade_async(database_url)
    clock = market.clock
    market.requests = market.fetches = market.sold_requests = 0
    searches = work.searches
    bounds = [0]
    for moment in work.restarts:
        bounds.append(next((i for i, s in enumerate(searches) if s.at >= moment), len(searches)))
    bounds.append(len(searches))
    tiers: dict[str, int] = {}
    lost = {"dropped": 0, "rejected": 0}
    complete = 0
    started = time.perf_counter()
    for lo, hi in itertools.pairwise(bounds):
        async with ks.CompsStore(
            database_url=database_url,
            mode="read_through",
            clock=clock,
            fetchers=_fetchers(market),
            write_flush_interval=0.01,
            **(settings or {}),
        ) as store:
            for index in range(lo, hi):
                search = searches[index]
                clock.now = EPOCH + timedelta(seconds=search.at)
                result = await store.comps.search(
                    search.text, search.kind, filters=search.filters, params={"pages": search.pages}
                )
                complete += bool(getattr(result, "complete", False))
                snapshot = result.snapshot
                judge.answer(
                    index,
                    search,
                    {int(listing.item_id) for listing in result.listings},
                    (result.fetched_at - EPOCH).total_seconds(),
                    lambda s=snapshot: None if s is None else s.market_value,
                )
                # Simulated minutes pass between searches, in which the write-behind task
                # persists what was fetched; replayed back to back, it is given that time
                # here, or a later search would miss a result the database should hold.
                behind = not result.cache_hit or (
                    index % 100 == 99 and store.metrics()["writes"]["pending"] >= BACKLOG
                )
                if behind:
                    assert await store.flush(timeout=120)
            assert await store.flush(timeout=120)
            metrics = store.metrics()
        for tier, count in metrics["tier_hits"].items():
            tiers[tier] = tiers.get(tier, 0) + count
        lost["dropped"] += metrics["writes"]["dropped"]
        lost["rejected"] += metrics["writes"]["rejected"]
    assert not any(lost.values()), f"writes lost: {lost}"
    elapsed = time.perf_counter() - started
    spent = Run(market.requests, market.fetches, market.sold_requests)
    return StoreRun(spent, tiers, elapsed, complete)
