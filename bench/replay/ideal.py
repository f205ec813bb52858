"""What it would take: one refresh per card that brings every stored result of it up to date.

A refresh of the plain query that stops at the first page reaching a sale it already holds
has seen every sale since the last one; those new sales are complete even when the stored
results are not, so every filter, minus-term and page count of the card can take its new
sales from them, exactly. A card then costs one page per refresh however many variants of
it are searched; a variant seen for the first time still costs its own fetch (unless the
plain result holding it is complete). Active listings could do the same if the fetcher
reported when each one ends (eBay's browse API does), so that ended ones are dropped
without asking. This is a model of rules the library does not have, to show what the
targets need; it is scored by the same judge.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import kuya_store as ks
from bench.replay.baselines import MINUTE, Run, estimated_rate, pages_asked, sold_window
from bench.replay.baselines import Rules as Rules
from bench.replay.market import DAY, PAGE_SIZE
from bench.replay.quality import Judge, Truth
from bench.replay.workload import Search, Workload


@dataclass(frozen=True, slots=True)
class PerCard:
    """The freshness of a card's refreshes (sold: by sale rate; active: fixed)."""

    new_sales: float = 0.25
    sold_for: float = 10 * MINUTE
    sold_max: float = DAY
    active_for: float = 5 * MINUTE


@dataclass(slots=True)
class _Card:
    refreshed_at: float
    answers_for: float


def _plain(search: Search, pages: int) -> Search:
    return Search(search.at, search.card, search.kind, 0, False, pages)


def _new_since(truth: Truth, search: Search, since: float) -> int:
    """Listings of the card (any title) that appeared between ``since`` and now."""
    book = truth.market.book(search.card)
    moments = book.sale_at if search.kind is ks.SearchType.SOLD else book.open_at
    return bisect.bisect_right(moments, search.at) - bisect.bisect_right(moments, since)


def simulate_per_card(
    rules: PerCard,
    work: Workload,
    truth: Truth,
    judge: Judge | None = None,
    kinds: tuple[ks.SearchType, ...] = (ks.SearchType.SOLD,),
) -> Run:
    """Replay the searches of ``kinds`` with one refresh per card; kept across restarts."""
    market = truth.market
    seen: dict[tuple[object, ...], float] = {}  # (kind, card, terms, pages) -> first fetch
    cards: dict[tuple[object, ...], _Card] = {}
    requests = fetches = sold_requests = 0
    stopping = Rules(early_stop=True)
    for index, search in enumerate(work.searches):
        if search.kind not in kinds:
            continue
        sold = search.kind is ks.SearchType.SOLD
        card = cards.get((search.kind, search.card))
        if card is None or search.at - card.refreshed_at >= card.answers_for:
            new = 0 if card is None else _new_since(truth, search, card.refreshed_at)
            asked = min(3, new // PAGE_SIZE + 1)
            requests += asked
            sold_requests += asked if sold else 0
            fetches += 1
            window = truth.window(_plain(search, 3))
            if sold:
                oldest = market.sold_at(window.ids[-1]) if window.ids else None
                rate = estimated_rate(search.at, window, oldest)
                policy = Rules(
                    new_sales=rules.new_sales, sold_for=rules.sold_for, sold_max=rules.sold_max
                )
                answers_for = sold_window(policy, rate)
            else:
                answers_for = rules.active_for
            card = cards[search.kind, search.card] = _Card(search.at, answers_for)
        key = (search.kind, search.card, search.terms, search.pages)
        if key not in seen:
            # The refresh holds the plain query's first page: when that held every listing,
            # any variant is filtered from it; else the variant is fetched (the plain one
            # needs only its pages beyond the first).
            if not truth.window(_plain(search, 1)).complete:
                own = truth.window(search)
                extra = pages_asked(stopping, own, search.pages, None) - (search.combo == 0)
                requests += extra
                sold_requests += extra if sold else 0
                fetches += extra > 0
            seen[key] = search.at
        moment = max(seen[key], card.refreshed_at)
        if judge is not None:
            window = truth.window(search, at=moment)
            judge.answer(
                index, search, set(window.ids), moment, lambda w=window: truth.market_value(w)
            )
    return Run(requests=requests, fetches=fetches, sold=sold_requests)
