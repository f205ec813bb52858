"""Title filters: every filter combination is served from one upstream fetch."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from kuya_store.models import Listing, SearchFilters
from kuya_store.pricing.titles import parse_title

__all__ = ["apply_filters", "exclude_terms", "keep_listing"]


def keep_listing(listing: Listing, filters: SearchFilters) -> bool:
    """Whether ``listing`` passes ``filters`` (each flag narrows; no flag keeps everything).

    * ``raw_only`` drops graded (slabbed) cards;
    * ``base_only`` keeps only base cards (:attr:`TitleInfo.is_base`);
    * ``exclude_auto`` drops autographed cards.
    """
    if not (filters.raw_only or filters.base_only or filters.exclude_auto):
        return True
    info = parse_title(listing.title)
    if filters.raw_only and info.graded:
        return False
    if filters.base_only and not info.is_base:
        return False
    return not (filters.exclude_auto and info.autograph)


def apply_filters(listings: Sequence[Listing], filters: SearchFilters) -> list[Listing]:
    """The listings that pass ``filters``, in their original order."""
    if not (filters.raw_only or filters.base_only or filters.exclude_auto):
        return list(listings)
    return [listing for listing in listings if keep_listing(listing, filters)]


@functools.lru_cache(maxsize=4096)
def _exclusion(term: str) -> re.Pattern[str]:
    words = term.strip('"').split()
    return re.compile(r"(?<![a-z0-9])" + r"\s+".join(map(re.escape, words)) + r"(?![a-z0-9])")


def exclude_terms(listings: Sequence[Listing], excluded: Sequence[str]) -> list[Listing]:
    """The listings whose titles hold none of the excluded words or phrases.

    What a marketplace does with a query's minus-terms (``-psa``, ``-"psa 10"``): a term
    matches a whole word (or words, in order) anywhere in the title, in any case. The terms
    come folded as :func:`~kuya_store.pricing.parse_query` gives them.
    """
    if not excluded:
        return list(listings)
    patterns = [_exclusion(term) for term in excluded]
    return [
        listing
        for listing in listings
        if not any(p.search(listing.title.lower()) for p in patterns)
    ]
