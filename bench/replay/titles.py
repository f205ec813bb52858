"""What the marketplace's titles and queries say: the replay's vocabulary.

Titles carry realistic variants (raw copies, PSA/BGS/SGC slabs, refractors and numbered
parallels, autographs, the odd lot), so the store's title filters and the marketplace's
minus-terms both mean something, and the same thing: a test checks that every title
passes a filter exactly when it holds none of the minus-terms the UI writes for it.
The marketplace reads minus-terms as eBay does: a listing is left out when an excluded
word (or quoted phrase) appears anywhere in its title, word for word, case aside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import kuya_store as ks

Terms = frozenset[tuple[str, ...]]
"""Excluded words and phrases, each as its words: ``("gem", "mint")`` for ``-"gem mint"``."""


@dataclass(frozen=True, slots=True)
class Variant:
    """One kind of copy of a card: what its titles say, what it is worth, how often it sells."""

    words: str
    value: float  # price multiplier over the card's raw base copy
    weight: float
    graded: bool = False
    base: bool = True
    auto: bool = False


VARIANTS = (
    Variant("", 1.0, 34),
    Variant("Refractor", 2.2, 9, base=False),
    Variant("Blue Refractor /150", 4.0, 4, base=False),
    Variant("Gold Refractor /50", 10.0, 2, base=False),
    Variant("Orange Refractor /25", 16.0, 1, base=False),
    Variant("PSA 9", 1.8, 9, graded=True),
    Variant("PSA 10 Gem Mint", 4.5, 9, graded=True),
    Variant("BGS 9.5", 3.5, 3, graded=True),
    Variant("SGC 10", 2.8, 2, graded=True),
    Variant("Refractor PSA 10", 9.0, 2, graded=True, base=False),
    Variant("Auto", 12.0, 4, base=False, auto=True),
    Variant("Autograph PSA 10", 40.0, 1, graded=True, base=False, auto=True),
    Variant("Gold Refractor Auto /50", 60.0, 0.5, base=False, auto=True),
    Variant("Lot of 3", 2.6, 1, base=False),
)
EXTRAS = ("", "RC", "Rookie", "MLB", "Invest")  # words sellers add that change nothing

# What the application's UI writes into the query for each checkbox (and what its backend
# appends for the same filter): grading companies and slab words for "raw only", parallel,
# colour, lot and autograph words for "base only", autograph words for "no autographs".
RAW_TERMS = ("psa", "bgs", "sgc", "cgc", "csg", "hga", "beckett", "graded", "slab", '"gem mint"')
BASE_TERMS = (
    "refractor",
    "parallel",
    "prizm",
    "gold",
    "blue",
    "orange",
    "silver",
    "sp",
    "ssp",
    "variation",
    "lot",
    "auto",
    "autograph",
)
AUTO_TERMS = ("auto", "autograph", "signed")

_WORD = re.compile(r"[a-z0-9]+")
_TERM = re.compile(r'(-?)"([^"]*)"?|(\S+)')


def words(text: str) -> tuple[str, ...]:
    """The words the marketplace matches: lower-case letters and digits, punctuation aside."""
    return tuple(_WORD.findall(text.lower()))


def query(card: int) -> str:
    """How users type card ``card`` (one spelling per card)."""
    return f"{2015 + card % 10} Topps Chrome Prospect {card + 1} #{1 + card % 300}"


def filter_terms(filters: ks.SearchFilters) -> list[str]:
    """The minus-terms, in the UI's order, that ask the marketplace for ``filters``."""
    chosen = (
        (RAW_TERMS if filters.raw_only else ())
        + (BASE_TERMS if filters.base_only else ())
        + (AUTO_TERMS if filters.exclude_auto else ())
    )
    return list(dict.fromkeys(chosen))


def ui_query(card: int, filters: ks.SearchFilters) -> str:
    """The query the application's UI sends for these checkboxes: minus-terms written in."""
    return " ".join([query(card), *(f"-{term}" for term in filter_terms(filters))])


def read_query(text: str) -> tuple[str, Terms]:
    """Split a query into the card's words (as one string) and the excluded terms."""
    card: list[str] = []
    excluded: set[tuple[str, ...]] = set()
    for m in _TERM.finditer(text):
        negated, phrase, bare = m[1], m[2], m[3]
        if phrase is not None:
            if negated and words(phrase):
                excluded.add(words(phrase))
            else:
                card.extend(words(phrase))
        elif bare.startswith("-") and len(bare) > 1:
            if words(bare[1:]):
                excluded.add(words(bare[1:]))
        else:
            card.extend(words(bare))
    return " ".join(card), frozenset(excluded)


def terms_of(filters: ks.SearchFilters) -> Terms:
    """``filters`` as excluded terms (what the backend appends upstream)."""
    return frozenset(words(term.strip('"')) for term in filter_terms(filters))


def excluded(title: str, terms: Terms) -> bool:
    """Whether the marketplace leaves a listing with ``title`` out for ``terms``."""
    have = words(title)
    present = set(have)
    for term in terms:
        if len(term) == 1:
            if term[0] in present:
                return True
        elif any(have[i : i + len(term)] == term for i in range(len(have) - len(term) + 1)):
            return True
    return False


def title(card: int, variant: int, extra: int) -> str:
    """The title of a copy of ``card``: the card, what the seller adds, then the variant."""
    return " ".join(part for part in (query(card), EXTRAS[extra], VARIANTS[variant].words) if part)
