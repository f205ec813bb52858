"""Pay for each sale once: paged fetchers, incremental refresh, answers from complete results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import kuya_store as ks
from kuya_store.answering import levels, start_level
from kuya_store.freshness import SaleRateFreshness, sale_rate
from kuya_store.paging import after_page, merge_sales, pages_wanted
from kuya_store.stored import StoredResult

CARD = "2023 Topps Chrome Victor Wembanyama #1"
PAGE = 60


class PagedMarket:
    """A sold-listings API: immutable sales, newest first, pages of 60, one request each."""

    def __init__(self, clock: ks.ManualClock, sales: int = 100) -> None:
        self.clock = clock
        self.requests: list[ks.FetchRequest] = []
        self.sales: list[ks.Listing] = []
        for _ in range(sales):
            self.sell()

    def sell(self, title: str | None = None) -> None:
        n = len(self.sales)
        grade = "PSA 10" if n % 4 == 0 else "Raw"
        self.sales.insert(
            0,
            ks.Listing(
                item_id=f"S{n:05d}",
                title=title or f"{CARD} {grade}",
                price=Decimal(100 + n % 17),
                sold=True,
                sold_date=self.clock() - timedelta(hours=1) * (0 if title else 1),
            ),
        )

    def matching(self, request: ks.FetchRequest) -> list[ks.Listing]:
        out = self.sales
        if "-psa" in request.query.split():
            out = [x for x in out if "psa" not in x.title.lower().split()]
        if request.filters.raw_only:
            out = [x for x in out if "PSA" not in x.title]
        return out

    async def page(self, request: ks.FetchRequest) -> ks.FetchResult:
        assert request.page is not None
        self.requests.append(request)
        found = self.matching(request)
        start = (request.page - 1) * PAGE
        chunk = found[start : start + PAGE]
        return ks.FetchResult(listings=chunk, has_more=start + PAGE < len(found))


@pytest.fixture
def clock() -> ks.ManualClock:
    return ks.ManualClock(datetime(2026, 6, 1, 12, tzinfo=UTC))


def _store(url: str, market: PagedMarket, **extra: Any) -> ks.CompsStore:
    options: dict[str, Any] = {
        "database_url": url,
        "fetchers": {"sold": ks.paged(market.page, page_size=PAGE)},
        "clock": market.clock,
        "write_flush_interval": 0.01,
        "freshness_policy": "fixed",
    }
    options.update(extra)
    return ks.CompsStore(**options)


# -- pure decisions ------------------------------------------------------------------------


def test_pages_wanted_reads_params() -> None:
    assert pages_wanted({"pages": 3}, 1) == 3
    assert pages_wanted({}, 2) == 2
    assert pages_wanted({"pages": True}, 1) == 1
    assert pages_wanted({"pages": "3"}, 1) == 1


def test_after_page_stops_and_says_whether_complete() -> None:
    sale = ks.Listing(item_id="a", title="t", price=1, sold=True)
    full = ks.FetchResult(listings=[sale] * 2, has_more=True)
    assert after_page(full, 1, 3, 2).stop is False
    assert after_page(full, 3, 3, 2) == after_page(full, 3, 3, 2)
    assert after_page(full, 3, 3, 2).complete is False  # the page limit cut it off
    last = ks.FetchResult(listings=[sale], has_more=False)
    assert after_page(last, 1, 3, 2).complete is True
    short = ks.FetchResult(listings=[sale])  # has_more unknown, but a short page
    assert after_page(short, 1, 3, 2).complete is True
    unknown = ks.FetchResult(listings=[sale])
    assert after_page(unknown, 1, 1, None).complete is None
    known = after_page(full, 1, 3, 2, frozenset({"a"}))
    assert known.stop and known.reached_known


def test_merge_sales_dedups_newest_first_and_bounds() -> None:
    def sale(i: str) -> ks.Listing:
        return ks.Listing(item_id=i, title="t", price=1, sold=True)

    merged, cut = merge_sales([sale("n1"), sale("o1")], [sale("o1"), sale("o2")], 10)
    assert [x.item_id for x in merged] == ["n1", "o1", "o2"] and not cut
    merged, cut = merge_sales([sale("n1")], [sale("o1"), sale("o2")], 2)
    assert [x.item_id for x in merged] == ["n1", "o1"] and cut


def test_sale_rate_freshness_on_a_manual_clock(clock: ks.ManualClock) -> None:
    policy = SaleRateFreshness(expected_new_sales=0.5)
    now = clock()

    def sales(every: timedelta, n: int) -> list[ks.Listing]:
        return [
            ks.Listing(item_id=str(i), title="t", price=1, sold=True, sold_date=now - every * i)
            for i in range(1, n + 1)
        ]

    busy = sales(timedelta(minutes=5), 40)  # sells every five minutes
    quiet = sales(timedelta(days=3), 10)  # twice a week
    assert policy.fresh_for(ks.SearchType.SOLD, busy, now) == timedelta(minutes=10)
    hourly = sales(timedelta(minutes=40), 30)  # 31 sales over 20 hours: 1.55 an hour
    between = policy.fresh_for(ks.SearchType.SOLD, hourly, now)
    assert timedelta(minutes=19) < between < timedelta(minutes=20)  # 0.5 / 1.55 h
    assert policy.fresh_for(ks.SearchType.SOLD, quiet, now) == timedelta(hours=24)
    weekly = sales(timedelta(hours=12), 10)  # 11 sales over 5 days: 0.09 an hour
    window = policy.fresh_for(ks.SearchType.SOLD, weekly, now)
    assert timedelta(hours=5) < window < timedelta(hours=6)
    assert policy.fresh_for(ks.SearchType.SOLD, [], now) == timedelta(hours=24)
    undated = [ks.Listing(item_id="x", title="t", price=1, sold=True)]
    assert sale_rate(undated, now) is None
    assert policy.fresh_for(ks.SearchType.SOLD, undated, now) == timedelta(minutes=30)
    assert policy.fresh_for(ks.SearchType.ACTIVE, quiet, now) == timedelta(minutes=5)


def test_levels_of_a_search() -> None:
    plain = levels(CARD, ks.SearchType.SOLD, ks.SearchFilters(), {}, filter_upstream=False)
    assert [x.name for x in plain] == ["exact"]
    raw = levels(
        CARD, ks.SearchType.SOLD, ks.SearchFilters(raw_only=True), {}, filter_upstream=False
    )
    assert [x.name for x in raw] == ["exact", "narrowed"]
    minus = levels(
        f"{CARD} -psa -bgs", ks.SearchType.SOLD, ks.SearchFilters(), {}, filter_upstream=False
    )
    assert [x.name for x in minus] == ["base", "exact"]
    assert minus[0].query == CARD and minus[0].excluded == ("bgs", "psa")
    assert minus[0].identity.result_key == plain[0].identity.result_key
    phrase = levels(
        f'{CARD} "refractor"', ks.SearchType.SOLD, ks.SearchFilters(), {}, filter_upstream=False
    )
    assert [x.name for x in phrase] == ["exact"]  # a phrase cannot be replayed on titles


def _stored(complete: bool | None) -> StoredResult:
    return StoredResult(
        query=CARD,
        card_identifier="c",
        search_type=ks.SearchType.SOLD,
        params={},
        listings=[],
        fetched_at=datetime(2026, 1, 1, tzinfo=UTC),
        complete=complete,
    )


def test_start_level_skips_what_is_known_to_be_cut_off() -> None:
    chain = levels(
        f"{CARD} -psa",
        ks.SearchType.SOLD,
        ks.SearchFilters(raw_only=True),
        {},
        filter_upstream=False,
    )
    assert [x.name for x in chain] == ["base", "exact", "narrowed"]
    assert start_level(chain, [None, None, None], paged=True) == 0
    assert start_level(chain, [None, None, None], paged=False) == 1
    assert start_level(chain, [_stored(True), None, None], paged=True) == 0
    assert start_level(chain, [_stored(False), None, None], paged=True) == 1
    assert start_level(chain, [_stored(False), _stored(False), None], paged=True) == 2
    assert start_level(chain, [_stored(None), _stored(None), None], paged=False) == 1


# -- on real databases ---------------------------------------------------------------------


async def test_pages_are_asked_one_request_each_and_stop_early(
    migrated_url: str, clock: ks.ManualClock
) -> None:
    market = PagedMarket(clock, sales=100)
    async with _store(migrated_url, market) as store:
        result = await store.comps.search(CARD, params={"pages": 3})
        assert [r.page for r in market.requests] == [1, 2]  # page 2 said there is no more
        assert len(result.listings) == 100 and result.complete
        assert result.pages_scraped == 2
        assert store.metrics()["api_calls"] == 2
        cut = await store.comps.search(CARD, params={"pages": 1})
        assert len(cut.listings) == 60 and not cut.complete
        assert store.metrics()["api_calls"] == 3
        await store.flush()
        stats = await store.analytics.search_stats()
        assert stats.api_calls == 3


async def test_refresh_with_nothing_new_costs_one_request(
    migrated_url: str, clock: ks.ManualClock
) -> None:
    market = PagedMarket(clock, sales=150)
    async with _store(migrated_url, market) as store:
        first = await store.comps.search(CARD, params={"pages": 3})
        assert len(market.requests) == 3 and first.complete
        assert await store.flush()
        clock.advance(timedelta(hours=1))  # stale
        market.requests.clear()
        again = await store.comps.search(CARD, params={"pages": 3})
        assert [r.page for r in market.requests] == [1]
        assert again.source == "api"
        assert [x.item_id for x in again.listings] == [x.item_id for x in first.listings]
        assert again.pages_scraped == 1 and again.complete
        assert await store.flush()
        # Two new sales: still one request, merged in front, each sale once.
        clock.advance(timedelta(hours=1))
        market.sell(f"{CARD} Raw new one")
        market.sell(f"{CARD} Raw new two")
        market.requests.clear()
        merged = await store.comps.search(CARD, params={"pages": 3})
        assert [r.page for r in market.requests] == [1]
        assert [x.item_id for x in merged.listings[:2]] == [
            market.sales[0].item_id,
            market.sales[1].item_id,
        ]
        assert len({x.item_id for x in merged.listings}) == len(merged.listings) == 152
        assert store.metrics()["api_calls"] == 5
        assert await store.flush()
    # After a restart the stored result is refreshed from the database, not re-bought.
    clock.advance(timedelta(hours=1))
    market.requests.clear()
    async with _store(migrated_url, market) as store:
        await store.comps.search(CARD, params={"pages": 3})
        assert [r.page for r in market.requests] == [1]


async def test_incremental_refresh_is_bounded_by_the_pages_asked(
    migrated_url: str, clock: ks.ManualClock
) -> None:
    market = PagedMarket(clock, sales=200)
    async with _store(migrated_url, market) as store:
        first = await store.comps.search(CARD, params={"pages": 1})
        assert len(first.listings) == 60 and not first.complete
        assert await store.flush()
        clock.advance(timedelta(hours=1))
        for _ in range(5):
            market.sell(f"{CARD} Raw fresh sale")
        again = await store.comps.search(CARD, params={"pages": 1})
        assert len(again.listings) == 60  # what one page holds, the newest first
        assert again.listings[0].item_id == market.sales[0].item_id
        assert not again.complete


async def test_filters_answer_locally_only_from_a_complete_result(
    migrated_url: str, clock: ks.ManualClock
) -> None:
    market = PagedMarket(clock, sales=100)
    async with _store(migrated_url, market) as store:
        # Complete at 2 pages: every filter combination is answered from it.
        await store.comps.search(CARD, params={"pages": 2})
        raw = await store.comps.search(CARD, filters={"raw_only": True}, params={"pages": 2})
        assert raw.cache_hit and len(raw.listings) == 75
        assert len(market.requests) == 2
        # Cut off at one page: a filter goes upstream, which returns more raw sales.
        await store.comps.search(CARD, params={"pages": 1})
        market.requests.clear()
        raw1 = await store.comps.search(CARD, filters={"raw_only": True}, params={"pages": 1})
        assert [r.filters.raw_only for r in market.requests] == [True]
        assert len(raw1.listings) == 60  # local filtering of the cut page would give 45
        assert all("PSA" not in x.title for x in raw1.listings)


async def test_minus_terms_answered_from_the_plain_complete_result(
    migrated_url: str, clock: ks.ManualClock
) -> None:
    market = PagedMarket(clock, sales=100)
    async with _store(migrated_url, market) as store:
        await store.comps.search(CARD, params={"pages": 2})
        market.requests.clear()
        minus = await store.comps.search(f"{CARD} -psa", params={"pages": 2})
        assert market.requests == []  # answered from the complete plain result
        assert len(minus.listings) == 75
        assert all("psa" not in x.title.lower().split() for x in minus.listings)
        assert minus.snapshot is not None and minus.snapshot.sample_size == 75
        # A truncated plain result sends the minus-terms upstream as typed.
        await store.comps.search(CARD, params={"pages": 1})
        market.requests.clear()
        cut = await store.comps.search(f"{CARD} -psa", params={"pages": 1})
        assert [r.query for r in market.requests] == [f"{CARD} -psa"]
        assert len(cut.listings) == 60


async def test_old_whole_result_fetchers_keep_their_behaviour(migrated_url: str) -> None:
    from kuya_store.demo import FakeMarketplace

    market = FakeMarketplace(listings=12)
    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold}) as store:
        await store.comps.search(CARD)
        raw = await store.comps.search(CARD, filters={"raw_only": True})
        assert raw.cache_hit and market.call_count == 1  # filters folded, as before
        assert market.calls[0].page is None
        assert not raw.complete  # the fetcher does not say
