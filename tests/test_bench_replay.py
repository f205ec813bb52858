"""The replay's simulated marketplace keeps the invariants its ground truth rests on.

No server is involved: the market is pure Python, drawn from a seed.
"""

from __future__ import annotations

import math

import pytest
from bench.replay.baselines import NO_CACHE, REDIS_ONLY, TODAY, simulate
from bench.replay.market import DAY, PAGE_SIZE, Market
from bench.replay.quality import Judge, Truth
from bench.replay.titles import (
    EXTRAS,
    VARIANTS,
    excluded,
    query,
    read_query,
    terms_of,
    title,
    ui_query,
    words,
)
from bench.replay.workload import COMBOS, workload

import kuya_store as ks
from kuya_store.pricing import keep_listing

SOLD = ks.SearchType.SOLD
ACTIVE = ks.SearchType.ACTIVE
PLAIN = ks.SearchFilters()
RAW = ks.SearchFilters(raw_only=True)


def _market(**kwargs: object) -> Market:
    return Market(cards=30, days=2, **kwargs)  # type: ignore[arg-type]


def _all_pages(market: Market, kind: ks.SearchType, text: str) -> list[list[ks.Listing]]:
    pages, more, number = [], True, 0
    while more:
        number += 1
        listings, more = market.ask(kind, text, PLAIN, number)
        pages.append(listings)
    return pages


def test_sold_pages_hold_60_newest_first_and_each_costs_one_request() -> None:
    market = _market()
    market.clock.advance(DAY)
    pages = _all_pages(market, SOLD, query(0))

    assert len(pages) > 3, "the top card must span several pages"
    assert market.requests == len(pages)
    assert all(len(page) == PAGE_SIZE for page in pages[:-1])
    assert 0 < len(pages[-1]) <= PAGE_SIZE
    dates = [listing.sold_date for page in pages for listing in page]
    assert all(d is not None for d in dates)
    assert dates == sorted(dates, reverse=True)  # type: ignore[type-var]
    assert max(dates) <= market.clock.now  # type: ignore[type-var,operator]
    ids = [listing.item_id for page in pages for listing in page]
    assert len(ids) == len(set(ids))


def test_a_sale_never_changes_and_never_disappears() -> None:
    market = _market()
    before = [x for page in _all_pages(market, SOLD, query(1)) for x in page]
    market.clock.advance(DAY)
    after = {x.item_id: x for page in _all_pages(market, SOLD, query(1)) for x in page}

    assert len(after) > len(before), "a day of a popular card brings new sales"
    assert all(after[x.item_id] == x for x in before)
    # Drawn from the seed alone: another market (a restarted process) holds the same sales.
    again = _market()
    again.clock.now = market.clock.now
    assert [x for page in _all_pages(again, SOLD, query(1)) for x in page] == list(after.values())


def test_the_whole_result_fetcher_pays_every_page_it_asks() -> None:
    market = _market()
    result = market.whole(ks.FetchRequest(query=query(29), search_type=SOLD, params={"pages": 3}))

    assert market.requests == 3 and market.fetches == 1
    assert result.pages_scraped == 3
    assert len(result.listings) < PAGE_SIZE, "a rare card's sales fit on one page"


def test_minus_terms_leave_out_every_title_holding_an_excluded_word() -> None:
    market = _market()
    plain = [x for page in _all_pages(market, SOLD, query(0)) for x in page]
    raw = [x for page in _all_pages(market, SOLD, ui_query(0, RAW)) for x in page]
    graded = {"psa", "bgs", "sgc", "graded"}

    assert any(graded & set(words(x.title)) for x in plain), "the test needs slabs to exclude"
    assert raw and not any(graded & set(words(x.title)) for x in raw)
    assert {x.item_id for x in raw} < {x.item_id for x in plain}
    # Upstream filters are the same minus-terms, appended by the backend.
    filtered, _ = market.ask(SOLD, query(0), RAW, 1)
    assert filtered == raw[:PAGE_SIZE]


def test_exclusion_matches_words_and_phrases_as_the_marketplace_does() -> None:
    assert excluded("2020 Topps PSA 10 Gem Mint", frozenset({("gem", "mint")}))
    assert not excluded("2020 Topps Gem Refractor Mint", frozenset({("gem", "mint")}))
    assert not excluded("2020 Topps Autograph", frozenset({("auto",)}))  # words, not prefixes
    assert excluded("2020 Topps X-Fractor", frozenset({("x", "fractor")}))
    card, terms = read_query('2020 Topps -psa -"Gem  Mint" -')
    assert card == "2020 topps"
    assert terms == {("psa",), ("gem", "mint")}


@pytest.mark.parametrize("filters", COMBOS, ids=lambda f: repr(f.as_dict()))
def test_filters_mean_the_same_upstream_and_on_titles(filters: ks.SearchFilters) -> None:
    terms = terms_of(filters)
    for variant in range(len(VARIANTS)):
        for extra in range(len(EXTRAS)):
            text = title(7, variant, extra)
            listing = ks.Listing(item_id="1", title=text, price="1.00", sold=True)
            assert keep_listing(listing, filters) is not excluded(text, terms), text


def test_variants_are_what_their_titles_say() -> None:
    for i, variant in enumerate(VARIANTS):
        info = ks.parse_title(title(3, i, 1))
        assert (info.graded, info.is_base, info.autograph) == (
            variant.graded,
            variant.base,
            variant.auto,
        ), variant.words


def test_no_card_word_is_ever_an_excluded_word() -> None:
    # The market memoises a title's verdict per variant, which needs exactly this.
    excluded_words = {w for f in COMBOS for term in terms_of(f) for w in term}
    for card in range(5_000):
        assert not excluded_words & set(words(query(card)))


def test_sale_counts_are_plausible_for_poisson_processes() -> None:
    market = Market(cards=400, days=30)
    span = 30 * DAY
    z = []
    for card in range(400):
        expected = market.rates[card] * 30
        seen = sum(1 for t in market.book(card).sale_at if 0 <= t < span)
        z.append((seen - expected) / math.sqrt(expected))

    mean = sum(z) / len(z)
    variance = sum((x - mean) ** 2 for x in z) / (len(z) - 1)
    assert abs(mean) < 0.25
    assert 0.7 < variance < 1.4
    assert market.rates[0] > 10 * sorted(market.rates)[200], "popular cards sell more"


def test_active_listings_open_and_end() -> None:
    market = _market()
    first = market.active(0, frozenset(), 3, 0.0).ids
    later = market.active(0, frozenset(), 3, 5 * DAY).ids

    assert first and later
    assert set(first) - set(later), "listings end"
    assert set(later) - set(first), "new ones appear"


def test_the_judge_finds_no_cache_perfect_and_redis_only_only_late() -> None:
    work = workload(300, cards=30, days=2)
    truth = Truth(_market())
    sample = frozenset(range(0, 300, 7))
    scores = {}
    for name, rules in (("none", NO_CACHE), ("redis", REDIS_ONLY), ("today", TODAY)):
        judge = Judge(truth, sample)
        simulate(rules, work, truth, judge)
        scores[name] = judge.quality.line()

    assert scores["none"]["missing_mean"] == 0 and scores["none"]["error_p95"] == 0
    assert scores["redis"]["cut_mean"] == 0  # every key fetched upstream with its filters
    assert scores["today"]["cut_mean"] > 0  # filters applied to results the pages cut off
