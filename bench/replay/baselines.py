"""Caches modelled in pure Python on the replay's clock: no cache, the plan's Redis-only
cache, and the rules of kuya-store one at a time (to show what each one saves and costs).

A model answers from the ground truth as it stood when its stored result was fetched, so
its answers are scored by the same judge as the real store's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import kuya_store as ks
from bench.replay.market import DAY, PAGE_SIZE, Window
from bench.replay.quality import Judge, Truth
from bench.replay.workload import PAGES_WEIGHTS, Search, Workload

Fold = Literal["never", "complete", "always"]
MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class Rules:
    """What a cache does; every field is one rule that can be switched on alone.

    Attributes:
        fold_filters: ``SearchFilters`` answered from the plain query's result: never
            (filters are part of the key), only when that result is complete, or always.
        fold_terms: the same for minus-terms written into the query.
        persist: stored results survive a restart.
        early_stop: a fetch stops at the page that says nothing more follows.
        incremental: a stale sold result asks pages from 1 until one reaches a known sale.
        sold_for: how long a sold result answers (seconds), when ``new_sales`` is None.
        new_sales: a sold result answers while ``new_sales`` new sales are expected, at the
            sale rate its listings show, within [``sold_for``, ``sold_max``].
        share_forms: filters and the minus-terms that ask the marketplace the same thing
            share one stored result (the key holds what is excluded, not how it was typed).
        fold_pages: a stored result of more pages, or a complete one, answers a search for
            fewer pages with its newest listings.
    """

    fold_filters: Fold = "never"
    fold_terms: Fold = "never"
    persist: bool = False
    early_stop: bool = False
    incremental: bool = False
    sold_for: float = 30 * MINUTE
    active_for: float = 5 * MINUTE
    new_sales: float | None = None
    sold_max: float = DAY
    share_forms: bool = False
    fold_pages: bool = False


REDIS_ONLY = Rules()
NO_CACHE = Rules(sold_for=0.0, active_for=0.0)
TODAY = Rules(fold_filters="always", persist=True)  # kuya-store before paged fetchers


@dataclass(frozen=True, slots=True)
class Run:
    """What a cache (modelled or real) spent: pages asked, and upstream searches started."""

    requests: int
    fetches: int
    sold: int  # requests for sold listings (the rest: active)


def combined(*runs: Run) -> Run:
    """What several models of disjoint searches spent together."""
    return Run(
        requests=sum(r.requests for r in runs),
        fetches=sum(r.fetches for r in runs),
        sold=sum(r.sold for r in runs),
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    fetched_at: float
    window: Window
    answers_for: float

    def fresh(self, at: float) -> bool:
        return at - self.fetched_at < self.answers_for


def estimated_rate(at: float, window: Window, oldest_sold_at: float | None) -> float:
    """Sales a day that a stored result shows: its sales over the time they span."""
    if oldest_sold_at is None:
        return 0.0
    return len(window.ids) / (max(at - oldest_sold_at, DAY) / DAY)


def sold_window(rules: Rules, rate: float) -> float:
    """How long a sold result with this estimated sale rate answers, in seconds."""
    if rules.new_sales is None:
        return rules.sold_for
    wanted = math.inf if rate <= 0 else rules.new_sales / rate * DAY
    return min(max(wanted, rules.sold_for), max(rules.sold_max, rules.sold_for))


def pages_asked(rules: Rules, window: Window, pages: int, new: int | None) -> int:
    """Pages a fetch asks: all of them, or fewer when a page says nothing follows, or up
    to the first page that reaches a sale already stored (after ``new`` new ones)."""
    asked = pages
    if rules.early_stop and window.complete:
        asked = min(asked, max(1, math.ceil(len(window.ids) / PAGE_SIZE)))
    if new is not None:
        asked = min(asked, new // PAGE_SIZE + 1)
    return asked


class _Cache:
    """The stored results of a model, keyed ``(kind, card, what is excluded, pages)``."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.stored: dict[tuple[object, ...], _Entry] = {}

    def find(self, base: tuple[object, ...], pages: int, at: float) -> _Entry | None:
        """A fresh stored result that answers ``base`` for ``pages`` pages, if any."""
        entry = self.stored.get((*base, pages))
        if entry is not None and entry.fresh(at):
            return entry
        if self.rules.fold_pages:
            for other in PAGES_WEIGHTS:
                entry = self.stored.get((*base, other))
                if entry and entry.fresh(at) and (other >= pages or entry.window.complete):
                    return entry
        return None


def simulate(
    rules: Rules,
    work: Workload,
    truth: Truth,
    judge: Judge | None = None,
    kinds: tuple[ks.SearchType, ...] = tuple(ks.SearchType),
) -> Run:
    """Replay the searches of ``kinds`` in ``work`` through a cache following ``rules``;
    score its answers with ``judge``."""
    market = truth.market
    cache = _Cache(rules)
    restarts = list(work.restarts)
    requests = fetches = sold_requests = 0
    for index, search in enumerate(work.searches):
        if search.kind not in kinds:
            continue
        while restarts and restarts[0] <= search.at:
            restarts.pop(0)
            if not rules.persist:
                cache.stored.clear()
        plain = (search.kind, search.card, ())
        fold = rules.fold_terms if search.as_terms else rules.fold_filters
        own = (search.terms,) if rules.share_forms else (search.text, search.filters)
        base, asked, local = (search.kind, search.card, own), search, False
        if not search.combo or fold == "always":
            base, asked, local = plain, _plain(search), bool(search.combo)
        entry = None
        if search.combo and fold == "complete":
            entry = cache.find(plain, search.pages, search.at)
            if entry is not None and not entry.window.complete:
                entry = None
            local = entry is not None
        entry = entry or cache.find(base, search.pages, search.at)
        if entry is None:
            key = (*base, search.pages)
            previous = cache.stored.get(key)
            now = truth.window(asked)
            new = None
            sold = search.kind is ks.SearchType.SOLD
            if rules.incremental and sold and previous and previous.window.ids:
                known = set(previous.window.ids)
                new = next((k for k, i in enumerate(now.ids) if i in known), len(now.ids))
            asked_pages = pages_asked(rules, now, search.pages, new)
            requests += asked_pages
            sold_requests += asked_pages if sold else 0
            fetches += 1
            if sold:
                oldest = market.sold_at(now.ids[-1]) if now.ids else None
                answers_for = sold_window(rules, estimated_rate(search.at, now, oldest))
            else:
                answers_for = rules.active_for
            entry = cache.stored[key] = _Entry(search.at, now, answers_for)
        if judge is not None:
            _score(judge, index, search, entry, local=local)
    return Run(requests=requests, fetches=fetches, sold=sold_requests)


def _plain(search: Search) -> Search:
    return Search(search.at, search.card, search.kind, 0, False, search.pages)


def _score(judge: Judge, index: int, search: Search, entry: _Entry, *, local: bool) -> None:
    """Score an answer: the stored listings (those that pass the search's terms, when
    filtered here), the newest of them that the search's pages hold."""
    window, market, limit = entry.window, judge.truth.market, search.pages * PAGE_SIZE
    if not local and len(window.ids) <= limit:
        value = judge.truth.market_value
        judge.answer(index, search, set(window.ids), entry.fetched_at, lambda: value(window))
        return
    ids = window.ids
    if local:
        ids = tuple(i for i in ids if market.keeps(i, search.terms))
    ids = ids[:limit]
    key = ("answer", window.key, search.terms if local else None, search.pages)
    judge.answer(index, search, set(ids), entry.fetched_at, lambda: judge.truth.value(key, ids))
