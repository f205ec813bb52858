"""The marketplace's query syntax: which words name the card, which narrow the search.

A search such as ``2018 Topps Ohtani -auto -"psa 10"`` names one card (``2018 Topps
Ohtani``) and asks the marketplace to leave some listings out. The card is what snapshots
and analytics group by; the operators are part of which stored result may answer, because
the marketplace answers differently with and without them. ``docs/pricing.md`` lists the
rules; in short:

* ``-word``, ``-"a phrase"`` and ``-(a,b)`` exclude; ``"a phrase"`` asks for those words
  together; ``(a,b)`` asks for any of them; ``*`` inside a word is a wildcard;
* operators are folded only where the marketplace cannot tell the difference: case,
  spacing, grading spellings (``PSA10`` = ``psa 10``), their order, repeats;
* they are never folded as synonyms: the marketplace matches ``-auto`` and ``-signed``
  literally, so they are two different exclusions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from kuya_store.errors import InvalidInputError

__all__ = ["MAX_QUERY_LENGTH", "SearchQuery", "parse_query"]

MAX_QUERY_LENGTH = 5_000
"""Longest query text accepted, in characters (room for a full set of UI exclusions)."""

# Phones turn typed quotes into curly ones: whoever typed them meant a phrase.
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"'})
_SPACES = re.compile(r"\s+")
_GRADE_SPELLING = re.compile(
    r"\b(psa|bgs|beckett|sgc|cgc|csg|hga|bvg|ksa|gma|isa|ags|tag|mnt|bccg|gai)\s*"
    r"(\d{1,2}(?:\.\d)?)\b"
)


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A search split into the words that name the card and the operators that narrow it.

    Every operator field is canonical (folded, sorted, without repeats), so two queries the
    marketplace answers alike compare equal field by field. Quoted exclusions and
    alternatives keep their quotes (``'"psa 10"'``) to stay apart from bare ones.

    Attributes:
        text: the query as asked: what the fetcher sends upstream.
        card_text: the words naming the card, operators removed; ``normalize_card`` reads it.
        excluded: the excluded words and phrases.
        phrases: the quoted phrases the listings must contain.
        any_of: groups of alternatives, at least one of each must match.
        wildcards: words holding a ``*``.
    """

    text: str
    card_text: str
    excluded: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()
    any_of: tuple[tuple[str, ...], ...] = ()
    wildcards: tuple[str, ...] = ()

    @property
    def has_operators(self) -> bool:
        """Whether the marketplace reads anything in this query beyond plain words."""
        return bool(self.excluded or self.phrases or self.any_of or self.wildcards)

    @property
    def operators(self) -> str | None:
        """The operators as one canonical text, part of a result's identity; ``None`` if none.

        ``None`` for a plain query keeps the identity of plain queries what it always was.
        """
        if not self.has_operators:
            return None
        parts = {
            "any_of": [list(group) for group in self.any_of],
            "excluded": list(self.excluded),
            "phrases": list(self.phrases),
            "wildcards": list(self.wildcards),
        }
        present = {name: value for name, value in parts.items() if value}
        return json.dumps(present, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _fail(reason: str) -> InvalidInputError:
    return InvalidInputError("query", reason)


def _validate(text: object) -> str:
    """``text`` unchanged if it is a query the store accepts, else ``InvalidInputError``."""
    if not isinstance(text, str):
        raise _fail("must be a string")
    if "\x00" in text:
        raise _fail("must not contain NUL characters")
    if len(text) > MAX_QUERY_LENGTH:
        raise _fail(f"must be at most {MAX_QUERY_LENGTH} characters")
    if not text.strip():
        raise _fail("must not be empty")
    return text


def _canonical(term: str) -> str:
    """One operand as the marketplace matches it: case, spacing and grading spelling folded."""
    folded = _SPACES.sub(" ", term.lower()).strip()
    return _GRADE_SPELLING.sub(r"\1 \2", folded)


class _Scan:
    """One left-to-right pass over a query, sorting each token into card words or operators."""

    def __init__(self, text: str) -> None:
        self.text = text.translate(_QUOTES)
        self.at = 0
        self.card: list[str | None] = []  # None marks the place of a quoted phrase
        self.phrases: list[str] = []
        self.excluded: set[str] = set()
        self.any_of: set[tuple[str, ...]] = set()
        self.wildcards: set[str] = set()

    def run(self) -> None:
        text = self.text
        while self.at < len(text):
            if text[self.at].isspace():
                self.at += 1
                continue
            negated = text[self.at] == "-" and self._operand_follows(self.at + 1)
            if negated:
                self.at += 1
            if text[self.at] == '"':
                self._phrase(negated)
            elif text[self.at] == "(" and (group := self._group()) is not None:
                self._alternatives(group, negated)
            else:
                self._word(negated)

    def _operand_follows(self, at: int) -> bool:
        return at < len(self.text) and not self.text[at].isspace()

    def _phrase(self, negated: bool) -> None:
        # An unclosed quote runs to the end: reading it as a phrase can only cost a miss.
        end = self.text.find('"', self.at + 1)
        end = len(self.text) if end < 0 else end
        phrase = _canonical(self.text[self.at + 1 : end])
        self.at = end + 1
        if not phrase:
            return
        if negated:
            self.excluded.add(f'"{phrase}"')
        else:
            self.phrases.append(phrase)
            self.card.append(None)

    def _group(self) -> tuple[str, ...] | None:
        end = self.text.find(")", self.at + 1)
        inside = self.text[self.at + 1 : end] if end > 0 else ""
        if "," not in inside:
            return None  # "(2)" is plain text to the marketplace
        self.at = end + 1
        return tuple(sorted({t for t in (_canonical(a) for a in inside.split(",")) if t}))

    def _alternatives(self, group: tuple[str, ...], negated: bool) -> None:
        if negated:
            self.excluded.update(group)  # leaving out any of them is leaving out each
        elif group:
            self.any_of.add(group)

    def _word(self, negated: bool) -> None:
        start = self.at
        while (
            self.at < len(self.text)
            and not self.text[self.at].isspace()
            and (self.text[self.at] != '"' or self.at == start)
        ):
            self.at += 1
        word = self.text[start : self.at]
        if negated:
            self.excluded.add(_canonical(word))
            return
        if "*" in word:
            self.wildcards.add(_canonical(word))
        self.card.append(word)

    def card_text(self) -> str:
        # Phrases keep their places, but among themselves they go in sorted order: the
        # marketplace ignores the order of quoted phrases, so the card must ignore it too.
        ordered = iter(sorted(self.phrases))
        return " ".join(next(ordered) if word is None else word for word in self.card)


def parse_query(text: str) -> SearchQuery:
    """Split a marketplace search into the card it names and the operators that narrow it.

    ``card_text`` is ``text`` itself when the query has no operator, so plain queries name
    the same card as they always did::

        >>> q = parse_query('Ohtani -auto -signed -"PSA 10"')
        >>> q.card_text, q.excluded
        ('Ohtani', ('"psa 10"', 'auto', 'signed'))

    Raises:
        InvalidInputError: ``field="query"`` for a non-string, empty or whitespace-only
            text, a NUL character, or more than ``MAX_QUERY_LENGTH`` characters.
    """
    _validate(text)
    scan = _Scan(text)
    scan.run()
    parsed = SearchQuery(
        text=text,
        card_text=text,
        excluded=tuple(sorted(scan.excluded)),
        phrases=tuple(sorted(set(scan.phrases))),
        any_of=tuple(sorted(scan.any_of)),
        wildcards=tuple(sorted(scan.wildcards)),
    )
    if not parsed.has_operators:
        return parsed
    return SearchQuery(
        text=text,
        card_text=scan.card_text(),
        excluded=parsed.excluded,
        phrases=parsed.phrases,
        any_of=parsed.any_of,
        wildcards=parsed.wildcards,
    )
