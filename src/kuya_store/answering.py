"""Which stored result may answer a search, and which to ask upstream for (pure code).

A search that narrows its card (title filters, or minus-terms in the query) can be
answered from a broader result only when that result is complete: filtering a result the
page limit cut off returns fewer listings than the upstream would. So a search has up to
three *levels*, broadest first:

1. ``base``: the card's plain query (no operators); answers minus-terms and filters
   locally, only when complete;
2. ``exact``: the query as typed; answers filters locally unless it is known to be cut off;
3. ``narrowed``: the query with its filters sent upstream; answers as it is.

The first level holding a fresh result that can answer does; otherwise the store fetches
the broadest level not known to be cut off, and goes one level narrower if what came
back cannot answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kuya_store.keys import ResultIdentity, parsed_query
from kuya_store.models import Listing, Params, SearchFilters, SearchType
from kuya_store.pricing import SearchQuery, apply_filters, exclude_terms
from kuya_store.stored import StoredResult

__all__ = ["Level", "levels", "start_level"]

_NO_FILTERS = SearchFilters()


@dataclass(frozen=True, slots=True)
class Level:
    """One stored result a search may be answered from, and how."""

    name: str
    identity: ResultIdentity
    query: str
    """What the fetcher is asked for at this level."""
    upstream_filters: SearchFilters
    """Filters the fetcher applies (sent in ``FetchRequest.filters``)."""
    local_filters: SearchFilters
    excluded: tuple[str, ...] = ()
    """Minus-terms applied here to titles (the upstream did not see them)."""
    _filters_here: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Asked on every hit: compared once here rather than model to model each time.
        object.__setattr__(self, "_filters_here", self.local_filters != _NO_FILTERS)

    def answers(self, stored: StoredResult) -> bool:
        """Whether ``stored`` answers the search at this level."""
        if self.name == "base":
            return stored.complete is True
        if self.name == "exact" and self._filters_here:
            return stored.complete is not False
        return True

    def listings(self, stored: StoredResult) -> list[Listing]:
        """The listings of ``stored`` this search shows (its own list, when nothing is hidden).

        Read, never changed: the answer built from it has a copy of its own.
        """
        shown = exclude_terms(stored.listings, self.excluded) if self.excluded else stored.listings
        return apply_filters(shown, self.local_filters) if self._filters_here else shown


def _local(parsed: SearchQuery) -> bool:
    # Only exclusions can be replayed on titles exactly as the marketplace applies them.
    return bool(parsed.excluded) and not (parsed.phrases or parsed.any_of or parsed.wildcards)


def levels(
    text: str,
    kind: SearchType,
    filters: SearchFilters,
    params: Params,
    *,
    filter_upstream: bool,
) -> list[Level]:
    """The levels of a search, broadest first; the last one always answers."""
    parsed = parsed_query(text)
    upstream = filters if filter_upstream else _NO_FILTERS
    local = _NO_FILTERS if filter_upstream else filters
    exact_identity = ResultIdentity.of_query(
        parsed, kind, params, upstream if filter_upstream else None
    )
    out: list[Level] = []
    if _local(parsed) and parsed.card_text.strip():
        base = parsed_query(parsed.card_text)
        out.append(
            Level(
                "base",
                ResultIdentity.of_query(base, kind, params, upstream if filter_upstream else None),
                parsed.card_text,
                upstream,
                local,
                parsed.excluded,
            )
        )
    out.append(Level("exact", exact_identity, text, upstream, local))
    if local != _NO_FILTERS:
        out.append(
            Level(
                "narrowed",
                ResultIdentity.of_query(parsed, kind, params, filters),
                text,
                filters,
                _NO_FILTERS,
            )
        )
    return out


def start_level(
    chain: Sequence[Level], known: Sequence[StoredResult | None], *, paged: bool
) -> int:
    """Which level to fetch first, from what is stored (of any age) at each level.

    A level known to be cut off is skipped; the base level is fetched only when it is
    known to be complete, or nothing is known and the fetcher is paged (a whole-result
    fetcher rarely says whether it had more).
    """
    for index, level in enumerate(chain[:-1]):
        stored = known[index]
        if level.name == "base":
            if (stored is not None and stored.complete is True) or (stored is None and paged):
                return index
            continue
        if stored is None or level.answers(stored):
            return index
    return len(chain) - 1
