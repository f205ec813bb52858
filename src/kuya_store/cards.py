"""``store.cards.search(text)``: the searched cards that best match some words, typos forgiven.

Every card anybody searched is a candidate, with how often it was searched and its latest
market value. The text is normalised like a search (``"rookie"`` reads ``rc``), then:

- PostgreSQL: full-text search (``tsvector`` with a GIN index) on the words of each card
  identifier, any word matching (prefixes too), plus ``pg_trgm``'s word similarity (a GIN
  trigram index) so that ``"wembanyma"`` still finds ``wembanyama``. The cards come from the
  ``card_directory`` view ``maintain()`` refreshes, and those searched since its last
  refresh from the log itself, so a card is findable from its first search. Without the
  ``pg_trgm`` extension (no privilege to create it) the search is full-text only.
- SQLite: an FTS5 table with the trigram tokenizer, kept by triggers on ``searches``; a
  card matches when it shares a trigram with the text, and is ranked here.

Both rank by :func:`score`: the share of the text's trigrams the card has, then the words it
matches whole, then how often it was searched.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kuya_store.analytics_views import card_key, consistent, watermark
from kuya_store.db.engine import DatabaseFeature
from kuya_store.db.tables import metadata
from kuya_store.errors import InvalidInputError, KuyaStoreError
from kuya_store.models import _Frozen
from kuya_store.pricing import normalize_card

__all__ = ["CardMatch", "Cards", "score", "trigrams"]

_searches = metadata.tables["searches"]
_snapshots = metadata.tables["price_snapshots"]
_WORD = re.compile(r"[a-z0-9_]+")
_TERM = re.compile(r"[a-z0-9]+")
_WORD_SIMILARITY = 0.4
_MAX_TEXT = 200
_CANDIDATES = 200


class CardMatch(_Frozen):
    """A card that matches a card search, with what is known of it."""

    card_identifier: str
    query: str
    """What a user typed for it (the greatest of its queries, as ``top_searches`` shows)."""
    score: float
    """How well it matches, from 0 to about 2: higher is better."""
    searches: int
    market_value: Decimal | None
    """The market value of its newest price snapshot; ``None`` if it has none."""
    valued_on: date | None


def _words(text: str) -> list[str]:
    return _WORD.findall(text.replace("-", " "))


def trigrams(text: str) -> set[str]:
    """The trigrams of each word, padded as pg_trgm pads them (two spaces before, one after)."""
    grams: set[str] = set()
    for word in _words(text):
        padded = f"  {word} "
        grams.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return grams


def score(text: str, card: str) -> float:
    """How well ``card`` matches the normalised ``text``: trigram share plus whole words."""
    wanted = trigrams(text)
    if not wanted:
        return 0.0
    have = trigrams(card)
    words = set(_words(card))
    asked = _words(text)
    shared = len(wanted & have) / len(wanted)
    whole = sum(1 for w in asked if w in words) / len(asked)
    return round(shared + whole, 6)


def _normalised(text: object) -> str:
    if not isinstance(text, str):
        raise InvalidInputError("text", "must be a string")
    if len(text) > _MAX_TEXT:
        raise InvalidInputError("text", f"must be at most {_MAX_TEXT} characters")
    try:
        normal = normalize_card(text)
    except InvalidInputError:
        raise InvalidInputError("text", "names no card (no letters or digits)") from None
    if not _words(normal):
        raise InvalidInputError("text", "names no card (no letters or digits)")
    return normal


def _or_query(text: str) -> str:
    """A ``to_tsquery`` text: any word of ``text``, each also as a prefix."""
    return " | ".join(f"{term}:*" for term in dict.fromkeys(_TERM.findall(text)))


class Cards(DatabaseFeature):
    """Full-text search over the cards in the search log (``store.cards``)."""

    _purpose = "card search reads the database"
    _trigram: bool | None = None
    _ready = False

    async def search(self, text: str, limit: int = 10) -> list[CardMatch]:
        """The cards that best match ``text``, best first.

        Args:
            text: words of a card as a user would type them; typos are forgiven.
            limit: at most this many cards (1 to 100).
        """
        normal = _normalised(text)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise InvalidInputError("limit", "must be an integer from 1 to 100")

        async def read(conn: AsyncConnection) -> list[CardMatch]:
            await consistent(conn)
            await self._check_schema(conn)
            if conn.dialect.name == "postgresql":
                found = await self._postgres(conn, normal)
            else:
                found = await self._sqlite(conn, normal)
            ranked = sorted(found, key=lambda row: (-score(normal, row[0]), -int(row[1]), row[0]))[
                :limit
            ]
            values = await _latest_values(conn, [row[0] for row in ranked])
            return [
                CardMatch(
                    card_identifier=card,
                    query=query,
                    score=score(normal, card),
                    searches=int(searches),
                    market_value=values.get(card, (None, None))[0],
                    valued_on=values.get(card, (None, None))[1],
                )
                for card, searches, query in ranked
            ]

        return await self._read(read)

    async def _check_schema(self, conn: AsyncConnection) -> None:
        if self._ready:
            return
        needed = "card_directory" if conn.dialect.name == "postgresql" else "card_names_fts"
        if conn.dialect.name == "postgresql":
            found = await conn.scalar(sa.text(f"SELECT to_regclass('{needed}') IS NOT NULL"))
        else:
            found = await conn.scalar(
                sa.text(f"SELECT count(*) FROM sqlite_master WHERE name = '{needed}'")
            )
        if not found:
            raise KuyaStoreError(
                "card search needs the schema of revision 0006: run 'kuya-store db upgrade'"
            )
        self._ready = True

    async def _postgres(self, conn: AsyncConnection, normal: str) -> list[Any]:
        if self._trigram is None:
            self._trigram = bool(
                await conn.scalar(
                    sa.text("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'")
                )
            )
        spaced = " ".join(_words(normal))
        matches = "document @@ to_tsquery('simple', :terms)"
        closeness = "ts_rank(to_tsvector('simple', words), to_tsquery('simple', :terms))"
        if self._trigram:
            matches += " OR words %> :spaced"
            closeness = "word_similarity(:spaced, words)"
            # A nickname shares fewer trigrams than a typo: "wemby" is half of "wembanyama".
            await conn.execute(
                sa.text("SELECT set_config('pg_trgm.word_similarity_threshold', :t, true)"),
                {"t": str(_WORD_SIMILARITY)},
            )
        # The directory holds the log below the watermark; the rest is read live.
        mark = await watermark(conn)
        sql = f"""
        WITH live AS (
            SELECT card, searches, query, words, to_tsvector('simple', words) AS document
            FROM (
                SELECT coalesce(card_identifier, lower(query)) AS card, count(*) AS searches,
                       max(query) AS query,
                       replace(coalesce(card_identifier, lower(query)), '-', ' ') AS words
                FROM searches
                WHERE created_at >= :mark
                GROUP BY 1
            ) AS counted
        ), found AS (
            SELECT card, searches, query, words FROM card_directory WHERE {matches}
            UNION ALL
            SELECT card, searches, query, words FROM live WHERE {matches}
        )
        SELECT card, sum(searches), max(query) FROM found GROUP BY card, words
        ORDER BY max({closeness}) DESC, sum(searches) DESC, card LIMIT :candidates
        """
        rows = await conn.execute(
            sa.text(sql),
            {
                "terms": _or_query(normal),
                "spaced": spaced,
                "candidates": _CANDIDATES,
                "mark": mark or datetime.min.replace(tzinfo=UTC),
            },
        )
        return list(rows)

    async def _sqlite(self, conn: AsyncConnection, normal: str) -> list[Any]:
        grams = sorted(g for g in trigrams(normal) if g.strip() and len(g.strip()) == 3)
        if not grams:  # words of one or two letters: no trigram to look up
            pattern = f"%{_words(normal)[0]}%"
            where = "card LIKE :pattern"
            params: dict[str, Any] = {"pattern": pattern}
        else:
            where = "card_names_fts MATCH :match"
            params = {"match": " OR ".join(f'"{g}"' for g in grams)}
        rows = await conn.execute(
            sa.text(
                f"SELECT card FROM card_names_fts WHERE {where} ORDER BY rank LIMIT :candidates"
            ),
            {**params, "candidates": _CANDIDATES},
        )
        cards = [r[0] for r in rows]
        if not cards:
            return []
        key = card_key()
        counted = await conn.execute(
            sa.select(key, sa.func.count(), sa.func.max(_searches.c.query))
            .where(key.in_(cards))
            .group_by(key)
        )
        return list(counted)


async def _latest_values(
    conn: AsyncConnection, cards: list[str]
) -> dict[str, tuple[Decimal | None, date | None]]:
    """Each card's newest snapshot: its market value and day."""
    if not cards:
        return {}
    newest = (
        sa.select(
            _snapshots.c.card_identifier,
            sa.func.max(_snapshots.c.snapshot_date).label("day"),
        )
        .where(_snapshots.c.card_identifier.in_(cards))
        .group_by(_snapshots.c.card_identifier)
        .subquery()
    )
    rows = await conn.execute(
        sa.select(_snapshots.c.card_identifier, _snapshots.c.market_value, newest.c.day).join(
            newest,
            sa.and_(
                _snapshots.c.card_identifier == newest.c.card_identifier,
                _snapshots.c.snapshot_date == newest.c.day,
            ),
        )
    )
    return {r[0]: (r[1], r[2]) for r in rows}
