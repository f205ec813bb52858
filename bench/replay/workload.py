"""The replay's searches: Zipf over cards, the application's mix of filters and pages.

A search with a filter comes either as the plan's ``SearchFilters`` on the plain query, or
as the application's UI sends it: the checkboxes written into the query as minus-terms.
Arrivals are Poisson over the simulated days; the process restarts once a day.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import kuya_store as ks
from bench.replay.market import DAY, SEED
from bench.replay.titles import Terms, query, terms_of, ui_query

ZIPF_S = 1.1
SOLD_SHARE = 0.7
TERMS_SHARE = 0.5  # of the searches with a filter: sent as minus-terms, the rest as filters
# (raw_only, base_only, exclude_auto) -> weight: most searches use no filter at all.
FILTER_WEIGHTS = {
    (False, False, False): 50,
    (True, False, False): 20,
    (False, False, True): 10,
    (False, True, False): 8,
    (True, False, True): 5,
    (True, True, False): 3,
    (False, True, True): 2,
    (True, True, True): 2,
}
COMBOS = [ks.SearchFilters(raw_only=r, base_only=b, exclude_auto=a) for r, b, a in FILTER_WEIGHTS]
PAGES_WEIGHTS = {1: 60, 2: 25, 3: 15}
NO_FILTERS = ks.SearchFilters()


@dataclass(frozen=True, slots=True)
class Search:
    """One search of the replay, at its own moment."""

    at: float  # seconds since the replay began
    card: int
    kind: ks.SearchType
    combo: int  # index into COMBOS
    as_terms: bool  # the filter comes written into the query as minus-terms
    pages: int

    @property
    def text(self) -> str:
        """The query as sent to the store."""
        return ui_query(self.card, COMBOS[self.combo]) if self.as_terms else query(self.card)

    @property
    def filters(self) -> ks.SearchFilters:
        """The filters handed to the store beside the query."""
        return NO_FILTERS if self.as_terms else COMBOS[self.combo]

    @property
    def terms(self) -> Terms:
        """What the marketplace leaves out for this search, however it was asked."""
        return terms_of(COMBOS[self.combo])


@dataclass(frozen=True, slots=True)
class Workload:
    """The searches and the moments of the restarts between them."""

    searches: list[Search]
    restarts: list[float]
    cards: int
    days: float

    @property
    def distinct_cards(self) -> int:
        """How many cards were searched at least once."""
        return len({s.card for s in self.searches})


def workload(n: int, *, cards: int, days: float, seed: int = SEED) -> Workload:
    """``n`` searches over ``days`` days; a restart at a random moment of each day but the last."""
    rng = random.Random(f"{seed}:searches")
    card_cum = list(itertools.accumulate(1 / k**ZIPF_S for k in range(1, cards + 1)))
    combo_cum = list(itertools.accumulate(FILTER_WEIGHTS.values()))
    pages_cum = list(itertools.accumulate(PAGES_WEIGHTS.values()))
    rate = n / (days * DAY)
    at, out = 0.0, []
    for _ in range(n):
        at += rng.expovariate(rate)
        combo = rng.choices(range(len(COMBOS)), cum_weights=combo_cum)[0]
        out.append(
            Search(
                at=min(at, days * DAY - 1),
                card=rng.choices(range(cards), cum_weights=card_cum)[0],
                kind=ks.SearchType.SOLD if rng.random() < SOLD_SHARE else ks.SearchType.ACTIVE,
                combo=combo,
                as_terms=combo != 0 and rng.random() < TERMS_SHARE,
                pages=rng.choices(list(PAGES_WEIGHTS), cum_weights=pages_cum)[0],
            )
        )
    restarts = [(day + rng.uniform(0.2, 0.8)) * DAY for day in range(int(days) - 1)]
    return Workload(searches=out, restarts=restarts, cards=cards, days=days)
