"""``store.collections``: a user's binders of cards, valued daily, with gain over cost.

A collected card is a search (``query``) and a grade (``None`` for a raw card). It is valued
by what a search of it would show: a graded card by a grade query (``... PSA 10``), a raw
card with ``raw_only``, and in both cases by its grade's ``market_value`` in the snapshot's
``grading_analysis``. ``revalue`` refreshes the stalest cards first and spends API calls
only within its budget; ``value_history`` rebuilds the collection's value per day from
``price_snapshots``. Every call is scoped to its user, like saved searches: another user's
binder or card is ``NotFoundError``. See ``docs/collections.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from kuya_store.clock import Clock
from kuya_store.collection_values import (
    Binder,
    CollectedCard,
    CollectionSummary,
    CollectionValue,
    RevalueReport,
    _grade,
    _Holding,
    card_value,
    collection_history,
)
from kuya_store.db.engine import DatabaseFeature
from kuya_store.db.tables import metadata
from kuya_store.errors import FetcherError, InvalidInputError, NotFoundError
from kuya_store.keys import validate_query
from kuya_store.models import PriceSnapshot, SearchFilters, SearchType, to_money
from kuya_store.persistence import snapshot_from_row
from kuya_store.pricing import normalize_card

if TYPE_CHECKING:
    from kuya_store.repository import CompsRepository

__all__ = [
    "Binder",
    "CollectedCard",
    "CollectionSummary",
    "CollectionValue",
    "Collections",
    "RevalueReport",
    "card_value",
    "collection_history",
]

_binders = metadata.tables["binders"]
_cards = metadata.tables["collection_cards"]
_users = metadata.tables["users"]
_snapshots = metadata.tables["price_snapshots"]
_CENT = Decimal("0.01")


# ------------------------------------------------------------------------ validation


def _id(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(field, "must be a positive integer")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 100:
        raise InvalidInputError("name", "must be 1 to 100 characters")
    if "\x00" in value:
        raise InvalidInputError("name", "must not contain NUL characters")
    return value.strip()


def _price(value: object) -> Decimal | None:
    if value is None:
        return None
    try:
        return to_money(value)
    except ValueError as exc:
        raise InvalidInputError("purchase_price", str(exc)) from None


def _day(value: object) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime) or not isinstance(value, date):
        raise InvalidInputError("purchase_date", "must be a date")
    return value


def _binder(row: Any) -> Binder:
    return Binder(id=row.id, user_id=row.user_id, name=row.name, created_at=row.created_at)


def _card(row: Any) -> CollectedCard:
    gain = None
    if row.last_value is not None and row.purchase_price is not None:
        gain = row.last_value - row.purchase_price
    return CollectedCard(
        id=row.id,
        user_id=row.user_id,
        binder_id=row.binder_id,
        query=row.query,
        grade=row.grade,
        card_identifier=row.card_identifier,
        purchase_price=row.purchase_price,
        purchase_date=row.purchase_date,
        created_at=row.created_at,
        last_value=row.last_value,
        last_valued_at=row.last_valued_at,
        gain=gain,
    )


# --------------------------------------------------------------------------- feature


class Collections(DatabaseFeature):
    """Binders, collected cards, daily revaluation and value history."""

    _purpose = "collections live in the database"

    def __init__(
        self,
        engine: AsyncEngine | None,
        clock: Clock,
        comps: CompsRepository,
        api_calls: Callable[[], int],
    ) -> None:
        super().__init__(engine, clock)
        self._comps = comps
        self._api_calls = api_calls

    # -- binders ------------------------------------------------------------------------

    async def create_binder(self, user_id: int, name: str) -> Binder:
        """A new binder; a user's binder names are unique."""
        uid, label = _id(user_id, "user_id"), _name(name)
        try:
            async with self._begin() as conn:
                await self._own_user(conn, uid)
                row = (
                    await conn.execute(
                        sa.insert(_binders)
                        .values(user_id=uid, name=label, created_at=self._clock())
                        .returning(_binders)
                    )
                ).one()
        except IntegrityError:
            raise InvalidInputError("name", "is already used by another binder") from None
        return _binder(row)

    async def list_binders(self, user_id: int) -> list[Binder]:
        """A user's binders, oldest first."""
        uid = _id(user_id, "user_id")
        async with self._connect() as conn:
            rows = await conn.execute(
                sa.select(_binders).where(_binders.c.user_id == uid).order_by(_binders.c.id)
            )
            return [_binder(r) for r in rows]

    async def rename_binder(self, user_id: int, binder_id: int, name: str) -> Binder:
        """Rename one of the user's binders."""
        uid, bid, label = _id(user_id, "user_id"), _id(binder_id, "binder_id"), _name(name)
        try:
            async with self._begin() as conn:
                row = (
                    await conn.execute(
                        sa.update(_binders)
                        .where(_binders.c.id == bid, _binders.c.user_id == uid)
                        .values(name=label)
                        .returning(_binders)
                    )
                ).first()
        except IntegrityError:
            raise InvalidInputError("name", "is already used by another binder") from None
        if row is None:
            raise NotFoundError(f"no binder {bid} for user {uid}")
        return _binder(row)

    async def delete_binder(self, user_id: int, binder_id: int) -> None:
        """Delete one of the user's binders and the cards in it."""
        uid, bid = _id(user_id, "user_id"), _id(binder_id, "binder_id")
        async with self._begin() as conn:
            # The cards first: SQLite enforces the cascade only with foreign keys turned on.
            owned = sa.select(_binders.c.id).where(_binders.c.id == bid, _binders.c.user_id == uid)
            await conn.execute(sa.delete(_cards).where(_cards.c.binder_id.in_(owned)))
            result = await conn.execute(
                sa.delete(_binders).where(_binders.c.id == bid, _binders.c.user_id == uid)
            )
        if not result.rowcount:
            raise NotFoundError(f"no binder {bid} for user {uid}")

    # -- cards --------------------------------------------------------------------------

    async def add_card(
        self,
        user_id: int,
        binder_id: int,
        query: str,
        *,
        grade: str | None = None,
        purchase_price: Decimal | float | str | None = None,
        purchase_date: date | None = None,
    ) -> CollectedCard:
        """Put a card in one of the user's binders.

        Args:
            query: the search that finds the card's sales (``"2023 Topps Chrome Wemby #1"``).
            grade: ``"PSA 10"``, ``"BGS 9.5"``, ...; ``None`` or ``"raw"`` for a raw card
                (a grade the query itself names counts).
        """
        uid, bid = _id(user_id, "user_id"), _id(binder_id, "binder_id")
        text = validate_query(query)
        card_grade, valued = _grade(grade, text)
        values = {
            "user_id": uid,
            "binder_id": bid,
            "query": text,
            "grade": card_grade,
            "card_identifier": normalize_card(valued),
            "purchase_price": _price(purchase_price),
            "purchase_date": _day(purchase_date),
            "created_at": self._clock(),
        }
        async with self._begin() as conn:
            owner = await conn.scalar(sa.select(_binders.c.user_id).where(_binders.c.id == bid))
            if owner != uid:
                raise NotFoundError(f"no binder {bid} for user {uid}")
            row = (await conn.execute(sa.insert(_cards).values(**values).returning(_cards))).one()
        return _card(row)

    async def list_cards(self, user_id: int, binder_id: int | None = None) -> list[CollectedCard]:
        """The user's cards (of one binder, if given), oldest first."""
        uid = _id(user_id, "user_id")
        stmt = sa.select(_cards).where(_cards.c.user_id == uid)
        if binder_id is not None:
            stmt = stmt.where(_cards.c.binder_id == _id(binder_id, "binder_id"))
        async with self._connect() as conn:
            return [_card(r) for r in await conn.execute(stmt.order_by(_cards.c.id))]

    async def get_card(self, user_id: int, card_id: int) -> CollectedCard:
        """One of the user's cards."""
        uid, cid = _id(user_id, "user_id"), _id(card_id, "card_id")
        async with self._connect() as conn:
            row = (
                await conn.execute(
                    sa.select(_cards).where(_cards.c.id == cid, _cards.c.user_id == uid)
                )
            ).first()
        if row is None:
            raise NotFoundError(f"no card {cid} for user {uid}")
        return _card(row)

    async def remove_card(self, user_id: int, card_id: int) -> None:
        """Take one of the user's cards out of the collection."""
        uid, cid = _id(user_id, "user_id"), _id(card_id, "card_id")
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(_cards).where(_cards.c.id == cid, _cards.c.user_id == uid)
            )
        if not result.rowcount:
            raise NotFoundError(f"no card {cid} for user {uid}")

    # -- valuation ----------------------------------------------------------------------

    async def revalue(self, budget: int = 0, *, user_id: int | None = None) -> RevalueReport:
        """Revalue every card (or one user's), stalest first, within ``budget`` API calls.

        A card's staleness is when the data behind its value was fetched
        (``last_valued_at``; never valued comes first). Cards that share a search are
        valued by one. While fewer than ``budget`` API calls
        have been counted, the next stalest card is searched (answered by any fresh tier
        for free, else fetched); after that, cards are valued from their newest stored
        snapshot without a search. API calls are counted from the store's metrics while
        the searches run, so calls made meanwhile by other requests count against the
        budget too: it can only be under-spent, never exceeded (with one fetcher call per
        search; a paged fetcher's pages are calls of their own).
        """
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise InvalidInputError("budget", "must be a non-negative integer")
        stmt = sa.select(_cards).order_by(
            _cards.c.last_valued_at.is_not(None), _cards.c.last_valued_at, _cards.c.id
        )
        if user_id is not None:
            stmt = stmt.where(_cards.c.user_id == _id(user_id, "user_id"))
        async with self._connect() as conn:
            rows = list(await conn.execute(stmt))
        groups: dict[tuple[str, str | None], list[Any]] = {}
        for row in rows:  # stalest first: a group is as stale as its stalest card
            groups.setdefault((row.card_identifier, row.grade), []).append(row)
        spent = searches = from_stored = valued = 0
        for (identifier, grade), members in groups.items():
            found: tuple[PriceSnapshot, datetime] | None = None
            if spent < budget:
                found, calls = await self._search(members[0])
                spent, searches = spent + calls, searches + 1
            if found is None:
                found = await self._stored(identifier)
                from_stored += len(members) if found is not None else 0
            value = None if found is None else card_value(found[0], grade)
            if found is not None and value is not None:
                valued += len(members)
                await self._stamp([r.id for r in members], value, found[1])
        return RevalueReport(
            budget=budget,
            cards=len(rows),
            valued=valued,
            searches=searches,
            api_calls=spent,
            from_stored=from_stored,
        )

    async def _search(self, row: Any) -> tuple[tuple[PriceSnapshot, datetime] | None, int]:
        """The card's search (as its owner would see it): its snapshot and when its data was
        fetched, and the API calls it caused."""
        _, query = _grade(row.grade, row.query)
        before = self._api_calls()
        try:
            result = await self._comps.search(
                query,
                SearchType.SOLD,
                filters=SearchFilters(raw_only=row.grade is None),
                record=False,
            )
            found = None if result.snapshot is None else (result.snapshot, result.fetched_at)
        except FetcherError:
            found = None  # valued from what is stored, like any card past the budget
        return found, max(0, self._api_calls() - before)

    async def _stored(self, identifier: str) -> tuple[PriceSnapshot, datetime] | None:
        """The card's newest stored snapshot and when it was written."""
        async with self._connect() as conn:
            row = (
                await conn.execute(
                    sa.select(_snapshots)
                    .where(_snapshots.c.card_identifier == identifier)
                    .order_by(_snapshots.c.snapshot_date.desc())
                    .limit(1)
                )
            ).first()
        if row is None:
            return None
        written = row.created_at or datetime.combine(row.snapshot_date, time(), tzinfo=UTC)
        return snapshot_from_row(row), written

    async def _stamp(self, ids: list[int], value: Decimal, moment: datetime) -> None:
        """Record a value and when the data behind it was fetched (its staleness)."""
        async with self._begin() as conn:
            await conn.execute(
                sa.update(_cards)
                .where(_cards.c.id.in_(ids))
                .values(last_value=value, last_valued_at=moment)
            )

    async def value_history(
        self, user_id: int, start: date | None = None, end: date | None = None
    ) -> list[CollectionValue]:
        """The collection's value per day, from the stored daily snapshots of its cards.

        A card counts from its purchase date (else the day it was added), at its newest
        value on or before each day; days on which none of the cards has a value yet are
        left out.
        """
        uid = _id(user_id, "user_id")
        cards = await self.list_cards(uid)
        holdings = [
            _Holding(
                identifier=c.card_identifier,
                grade=c.grade,
                since=c.purchase_date or (c.created_at.date() if c.created_at else date.min),
                cost=c.purchase_price,
            )
            for c in cards
        ]
        if not holdings:
            return []
        stmt = sa.select(_snapshots).where(
            _snapshots.c.card_identifier.in_(sorted({h.identifier for h in holdings}))
        )
        if end is not None:
            stmt = stmt.where(_snapshots.c.snapshot_date <= end)
        async with self._connect() as conn:
            snapshots = [snapshot_from_row(r) for r in await conn.execute(stmt)]
        history = collection_history(holdings, snapshots)
        return [point for point in history if start is None or point.day >= start]

    async def summary(self, user_id: int) -> CollectionSummary:
        """The collection's latest value, cost basis and gain."""
        uid = _id(user_id, "user_id")
        cards = await self.list_cards(uid)
        valued = [c for c in cards if c.last_value is not None]
        costed = [c for c in valued if c.purchase_price is not None]
        cost = sum((c.purchase_price for c in costed if c.purchase_price), Decimal(0))
        gain = sum((c.gain for c in costed if c.gain is not None), Decimal(0))
        return CollectionSummary(
            user_id=uid,
            cards=len(cards),
            valued=len(valued),
            value=sum((c.last_value for c in valued if c.last_value), Decimal(0)).quantize(_CENT),
            cost_basis=cost.quantize(_CENT),
            gain=gain.quantize(_CENT),
            gain_pct=(gain / cost * 100).quantize(_CENT, rounding=ROUND_HALF_UP) if cost else None,
        )

    async def _own_user(self, conn: Any, uid: int) -> None:
        if await conn.scalar(sa.select(_users.c.id).where(_users.c.id == uid)) is None:
            raise NotFoundError(f"no user {uid}")
