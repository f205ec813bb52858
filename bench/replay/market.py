"""A simulated marketplace whose every answer is known: the replay's ground truth.

Each card sells as a Poisson process at its own rate, drawn so that the cards people search
for most are also the ones that sell most. A sale never changes once made: its id, title,
price and moment are drawn once, from a seed, for the card's whole timeline (a history
before the replay and the replay's days), and the market at moment ``t`` shows the prefix
of that timeline up to ``t``. Sold searches list the matching sales newest first, in pages
of 60; active searches list the listings open at ``t`` (new ones appear, old ones end).
Every page asked is one paid request. Upstream filters are minus-terms: the application's
backend turns them into the UI's exclusions (``titles.py``) before it calls the API.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property

import kuya_store as ks
from bench.replay.titles import (
    EXTRAS,
    VARIANTS,
    Terms,
    excluded,
    query,
    read_query,
    terms_of,
    title,
    words,
)

PAGE_SIZE = 60
DAY = 86_400.0
SEED = 20260101
HISTORY_DAYS = 90.0  # how far back sold listings reach when the replay begins
RATE_TOP = 30.0  # sales a day of the most searched card (before its noise)
RATE_MEDIAN = 0.4  # ... and of the card in the middle: most cards sell a few times a week
RATE_NOISE = 0.5  # log-normal spread around that trend: popularity and sales correlate, loosely
ACTIVE_DAYS = (2.0, 10.0)  # how long an active listing stays open
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)  # the replay's moment 0

_SOLD_IDS = 10**11
_ACTIVE_IDS = 2 * 10**11
_PER_CARD = 10**6
_VARIANT_CUM = list(itertools.accumulate(v.weight for v in VARIANTS))


def poisson_times(rng: random.Random, rate: float, start: float, end: float) -> list[float]:
    """Moments (seconds) of a Poisson process of ``rate`` events per second on [start, end)."""
    out: list[float] = []
    at = start
    while rate > 0:
        at += rng.expovariate(rate)
        if at >= end:
            break
        out.append(at)
    return out


class _Book:
    """One card's timeline: every sale and every active listing, drawn once from the seed."""

    def __init__(self, card: int, rate: float, seed: int, start: float, end: float) -> None:
        rng = random.Random(f"{seed}:book:{card}")
        base = rng.lognormvariate(math.log(12.0), 1.0)
        self.values = [base * v.value * rng.lognormvariate(0.0, 0.15) for v in VARIANTS]
        self.sale_at = poisson_times(rng, rate / DAY, start, end)
        self.sale_kind = [self._draw(rng) for _ in self.sale_at]
        self.sale_price = [self._price(rng, k[0], 0.25) for k in self.sale_kind]
        self.sale_bids = [
            max(1, round(rng.expovariate(1 / 6))) if rng.random() < 0.55 else None
            for _ in self.sale_at
        ]
        lo, hi = ACTIVE_DAYS
        self.open_at = poisson_times(rng, (0.8 * rate + 0.2) / DAY, -hi * DAY, end)
        self.open_kind = [self._draw(rng) for _ in self.open_at]
        self.open_until = [at + rng.uniform(lo, hi) * DAY for at in self.open_at]
        self.open_price = [self._price(rng, k[0], 0.3) * Decimal("1.15") for k in self.open_kind]
        self.sold_matching: dict[Terms, list[int]] = {}
        self.open_matching: dict[Terms, list[int]] = {}

    @staticmethod
    def _draw(rng: random.Random) -> tuple[int, int]:
        variant = rng.choices(range(len(VARIANTS)), cum_weights=_VARIANT_CUM)[0]
        return variant, rng.randrange(len(EXTRAS))

    def _price(self, rng: random.Random, variant: int, spread: float) -> Decimal:
        price = max(0.99, self.values[variant] * rng.lognormvariate(0.0, spread))
        return Decimal(f"{price:.2f}")


@dataclass(frozen=True, slots=True)
class Window:
    """The ground truth of one search at one moment: what a fresh full fetch returns."""

    ids: tuple[int, ...]  # newest first
    key: tuple[object, ...]  # identifies the listings exactly (for memoising valuations)
    complete: bool  # the upstream holds nothing beyond these


class Market:
    """The marketplace: ground truth for the replay, and paged or whole fetchers for a store.

    Args:
        cards: how many cards exist; card 0 is the most searched.
        days: the replay's length; sales are drawn up to its end.
        clock: the replay's clock, read by the fetchers to know what the market shows.
    """

    def __init__(
        self,
        *,
        cards: int,
        days: float,
        seed: int = SEED,
        clock: ks.ManualClock | None = None,
        history_days: float = HISTORY_DAYS,
    ) -> None:
        self.cards = cards
        self.seed = seed
        self.clock = clock or ks.ManualClock(EPOCH)
        self._start = -history_days * DAY
        self._end = days * DAY
        self._books: dict[int, _Book] = {}
        self._cards = {" ".join(words(query(c))): c for c in range(cards)}
        self._listings: dict[int, ks.Listing] = {}
        self._keeps: dict[tuple[tuple[int, int], Terms], bool] = {}
        self.requests = 0  # pages asked upstream (each one paid)
        self.sold_requests = 0  # ... of them for sold listings
        self.fetches = 0  # searches started upstream (a whole fetch, or a paged one's page 1)

    # ------------------------------------------------------------------ the timeline

    @cached_property
    def rates(self) -> list[float]:
        """Each card's sale rate, in sales a day: a power law of its search rank, with noise."""
        rng = random.Random(f"{self.seed}:rates")
        slope = math.log(RATE_TOP / RATE_MEDIAN) / math.log(self.cards / 2 + 1)
        return [
            RATE_TOP * (card + 1) ** -slope * rng.lognormvariate(0.0, RATE_NOISE)
            for card in range(self.cards)
        ]

    def book(self, card: int) -> _Book:
        """The card's timeline, drawn on first use (the same whatever the order of use)."""
        book = self._books.get(card)
        if book is None:
            book = _Book(card, self.rates[card], self.seed, self._start, self._end)
            self._books[card] = book
        return book

    def at(self) -> float:
        """The clock's moment, in seconds since the replay began."""
        return (self.clock.now - EPOCH).total_seconds()

    def card_of(self, text: str) -> tuple[int | None, Terms]:
        """Which card a query names (``None``: none the market knows), and its exclusions."""
        card_text, terms = read_query(text)
        return self._cards.get(card_text), terms

    def _matching(self, card: int, terms: Terms, sold: bool) -> list[int]:
        book = self.book(card)
        cache = book.sold_matching if sold else book.open_matching
        found = cache.get(terms)
        if found is None:
            kinds = book.sale_kind if sold else book.open_kind
            keep = {k: not excluded(title(card, *k), terms) for k in set(kinds)}
            found = cache[terms] = [j for j, k in enumerate(kinds) if keep[k]]
        return found

    # ---------------------------------------------------------------- ground truth

    def sold(self, card: int, terms: Terms, pages: int, at: float) -> Window:
        """The sales a full fetch of ``pages`` pages at ``at`` returns, newest first."""
        book = self.book(card)
        matching = self._matching(card, terms, sold=True)
        seen = bisect.bisect_left(matching, bisect.bisect_right(book.sale_at, at))
        lo = max(0, seen - pages * PAGE_SIZE)
        first = _SOLD_IDS + card * _PER_CARD
        return Window(
            ids=tuple(first + j for j in reversed(matching[lo:seen])),
            key=(card, terms, pages, seen),
            complete=lo == 0,
        )

    def active(self, card: int, terms: Terms, pages: int, at: float) -> Window:
        """The listings open at ``at`` that a full fetch of ``pages`` pages returns."""
        book = self.book(card)
        matching = self._matching(card, terms, sold=False)
        opened = bisect.bisect_left(matching, bisect.bisect_right(book.open_at, at))
        oldest = at - ACTIVE_DAYS[1] * DAY
        first, limit, ids = _ACTIVE_IDS + card * _PER_CARD, pages * PAGE_SIZE, []
        for j in reversed(matching[:opened]):
            if book.open_at[j] < oldest:
                break
            if book.open_until[j] > at:
                ids.append(first + j)
        return Window(
            ids=tuple(ids[:limit]), key=(card, terms, pages, at), complete=len(ids) <= limit
        )

    def keeps(self, item_id: int, terms: Terms) -> bool:
        """Whether the listing with this id passes ``terms`` (a filter applied locally)."""
        sold = item_id < _ACTIVE_IDS
        card, j = divmod(item_id - (_SOLD_IDS if sold else _ACTIVE_IDS), _PER_CARD)
        book = self.book(card)
        kind = (book.sale_kind if sold else book.open_kind)[j]
        # The card's own words are never excluded, so the verdict is the same for every card.
        verdict = self._keeps.get((kind, terms))
        if verdict is None:
            verdict = self._keeps[kind, terms] = not excluded(title(card, *kind), terms)
        return verdict

    def sold_at(self, item_id: int) -> float:
        """When a sale was made (seconds since the replay began)."""
        card, j = divmod(item_id - _SOLD_IDS, _PER_CARD)
        return self.book(card).sale_at[j]

    def listing(self, item_id: int) -> ks.Listing:
        """The listing with this id (built once: a sale never changes)."""
        found = self._listings.get(item_id)
        if found is not None:
            return found
        sold = item_id < _ACTIVE_IDS
        card, j = divmod(item_id - (_SOLD_IDS if sold else _ACTIVE_IDS), _PER_CARD)
        book = self.book(card)
        variant, extra = (book.sale_kind if sold else book.open_kind)[j]
        bids = book.sale_bids[j] if sold else None
        found = ks.Listing(
            item_id=str(item_id),
            title=title(card, variant, extra),
            price=book.sale_price[j] if sold else book.open_price[j],
            listing_type="auction" if bids else "buy_it_now",
            condition="Graded" if VARIANTS[variant].graded else "Ungraded",
            sold=sold,
            sold_date=EPOCH + timedelta(seconds=book.sale_at[j]) if sold else None,
            bids=bids,
        )
        self._listings[item_id] = found
        return found

    # --------------------------------------------------------------- the paid API

    def _window(
        self, kind: ks.SearchType, text: str, filters: ks.SearchFilters, pages: int
    ) -> Window:
        card, terms = self.card_of(text)
        if card is None:
            return Window(ids=(), key=(), complete=True)
        terms |= terms_of(filters)
        truth = self.sold if kind is ks.SearchType.SOLD else self.active
        return truth(card, terms, pages, self.at())

    def ask(
        self, kind: ks.SearchType, text: str, filters: ks.SearchFilters, page: int
    ) -> tuple[list[ks.Listing], bool]:
        """One page (1-based) of a search, newest first, and whether more follow: one request."""
        self.requests += 1
        self.sold_requests += kind is ks.SearchType.SOLD
        self.fetches += page == 1
        window = self._window(kind, text, filters, page)
        ids = window.ids[(page - 1) * PAGE_SIZE :]
        return [self.listing(i) for i in ids], not window.complete

    def page(self, request: ks.FetchRequest) -> ks.FetchResult:
        """The paged fetcher: the page ``request.page`` asks for."""
        listings, more = self.ask(
            request.search_type, request.query, request.filters, getattr(request, "page", 1) or 1
        )
        return ks.FetchResult.model_validate(
            {"listings": listings, "pages_scraped": 1, "has_more": more}
        )

    def whole(self, request: ks.FetchRequest) -> ks.FetchResult:
        """The whole-result fetcher: every page of a search at once, as the application's
        scraper asks them (all ``params["pages"]`` together, each one a request, whether or
        not the first was already the last)."""
        pages = int(request.params.get("pages") or 1)
        self.requests += pages
        self.sold_requests += pages if request.search_type is ks.SearchType.SOLD else 0
        self.fetches += 1
        window = self._window(request.search_type, request.query, request.filters, pages)
        return ks.FetchResult(listings=[self.listing(i) for i in window.ids], pages_scraped=pages)
