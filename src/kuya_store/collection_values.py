"""A collection's records and what it is worth, decided without I/O.

The models ``store.collections`` answers with, the grade a collected card is valued under,
its value in a snapshot, and the collection's value per day (``collection_history``), as
plain functions over values: tested without a database (see ``kuya_store.collections``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from kuya_store.errors import InvalidInputError
from kuya_store.models import PriceSnapshot, _Frozen
from kuya_store.pricing import normalize_card
from kuya_store.pricing.grades import query_grade

__all__ = [
    "Binder",
    "CollectedCard",
    "CollectionSummary",
    "CollectionValue",
    "RevalueReport",
    "card_value",
    "collection_history",
]

_CENT = Decimal("0.01")
_RAW_WORDS = frozenset({"raw", "ungraded"})


class Binder(_Frozen):
    """A user's named group of cards."""

    id: int
    user_id: int
    name: str
    created_at: datetime | None


class CollectedCard(_Frozen):
    """A card a user owns: what to search, its grade, what was paid, what it is worth."""

    id: int
    user_id: int
    binder_id: int
    query: str
    grade: str | None
    """``"PSA 10"``, ``"BGS 9.5"``, ...; ``None`` for a raw card."""
    card_identifier: str
    """The identifier its value is read under (the grade query's, for a graded card)."""
    purchase_price: Decimal | None
    purchase_date: date | None
    created_at: datetime | None
    last_value: Decimal | None
    last_valued_at: datetime | None
    """When the data behind ``last_value`` was fetched: how stale the value is."""
    gain: Decimal | None
    """``last_value - purchase_price`` when both are known."""


class RevalueReport(_Frozen):
    """What one ``revalue`` run did, and how much of the API budget it spent."""

    budget: int
    cards: int
    """Cards looked at."""
    valued: int
    """Cards that got a value."""
    searches: int
    """Searches made (each answered by a tier or the fetcher)."""
    api_calls: int
    """API calls counted while those searches ran, including any that other requests made
    meanwhile; the searches' own calls never exceed ``budget``."""
    from_stored: int
    """Cards valued from the newest stored snapshot, without a search."""


class CollectionValue(_Frozen):
    """The collection on one day: the sum of each held card's newest value."""

    day: date
    value: Decimal
    cost_basis: Decimal
    """Purchase prices of the valued cards that have one."""
    gain: Decimal
    """Value minus cost basis, over the cards that have both."""
    cards: int
    """Cards held that day (bought, or added, on or before it)."""
    valued: int


class CollectionSummary(_Frozen):
    """The collection now: its latest values against what was paid."""

    user_id: int
    cards: int
    valued: int
    value: Decimal
    cost_basis: Decimal
    gain: Decimal
    gain_pct: Decimal | None


def _grade(grade: str | None, query: str) -> tuple[str | None, str]:
    """The card's grade and the query its value is searched with."""
    named = query_grade(normalize_card(query))
    if grade is not None and (not isinstance(grade, str) or "\x00" in grade or len(grade) > 20):
        raise InvalidInputError("grade", "must be a grade such as 'PSA 10'")
    if grade is None or grade.strip().lower() in _RAW_WORDS:
        if grade is not None and named is not None:
            raise InvalidInputError("grade", f"the query names {named}; a raw card's must not")
        return named, query
    canonical = query_grade(normalize_card(f"card {grade}"))
    if canonical is None:
        raise InvalidInputError("grade", "must be a grade such as 'PSA 10' or 'BGS 9.5'")
    if named is not None and named != canonical:
        raise InvalidInputError("grade", f"differs from the grade the query names ({named})")
    return canonical, query if named else f"{query} {canonical}"


def card_value(snapshot: PriceSnapshot | None, grade: str | None) -> Decimal | None:
    """A card's value in a snapshot: its grade's market value (median when too few sales)."""
    if snapshot is None:
        return None
    group = (snapshot.grading_analysis or {}).get(grade or "raw")
    if isinstance(group, Mapping):
        text = group.get("market_value") or group.get("median")
        if text is not None:
            return Decimal(str(text)).quantize(_CENT)
    if grade is not None and query_grade(snapshot.card_identifier) == grade:
        return snapshot.market_value  # a grade query's own value (rows older than the groups)
    return None


@dataclass(frozen=True, slots=True)
class _Holding:
    identifier: str
    grade: str | None
    since: date
    cost: Decimal | None


def collection_history(
    holdings: Sequence[_Holding], snapshots: Iterable[PriceSnapshot]
) -> list[CollectionValue]:
    """Per snapshot day: each held card's newest value so far, summed (pure)."""
    by_day: dict[date, list[PriceSnapshot]] = {}
    for snap in snapshots:
        by_day.setdefault(snap.snapshot_date, []).append(snap)
    latest: dict[tuple[str, str | None], Decimal] = {}
    out: list[CollectionValue] = []
    for day in sorted(by_day):
        for snap in by_day[day]:
            for grade in {h.grade for h in holdings if h.identifier == snap.card_identifier}:
                value = card_value(snap, grade)
                if value is not None:
                    latest[(snap.card_identifier, grade)] = value
        held = [h for h in holdings if h.since <= day]
        valued = [
            (h, latest[(h.identifier, h.grade)]) for h in held if (h.identifier, h.grade) in latest
        ]
        if not valued:
            continue
        value = sum((v for _, v in valued), Decimal(0))
        costed = [(h.cost, v) for h, v in valued if h.cost is not None]
        cost = sum((c for c, _ in costed), Decimal(0))
        out.append(
            CollectionValue(
                day=day,
                value=value.quantize(_CENT),
                cost_basis=cost.quantize(_CENT),
                gain=(sum((v for _, v in costed), Decimal(0)) - cost).quantize(_CENT),
                cards=len(held),
                valued=len(valued),
            )
        )
    return out
