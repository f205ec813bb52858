"""``normalize_card``: one stable identifier for one card, however the query is written.

The rules are listed in ``docs/pricing.md``; in short:

* read only the words that name the card: marketplace operators (``-auto``,
  ``-"psa 10"``, ``(a,b)``) narrow a search but name no card (see ``query.py``);
* ASCII-fold (NFKD), lower-case, drop punctuation, emojis and marketing noise;
* bind numbers that only mean something together into one token: grades (``psa_10``),
  print runs (``pr_99``), seasons (``2023_24``) and trading-card-game set numbers
  (``4_102``);
* fold true synonyms (``RC``/``rookie``/``rookie card`` -> ``rc``, ``autograph``/
  ``signed`` -> ``auto``, ``ref`` -> ``refractor``, ...);
* keep the order of the remaining words, and move the order-free markers (print run,
  ``auto``, ``rc``, grade) to a fixed place at the end;
* join with ``-``; identifiers longer than 200 characters keep a 183-character prefix and a
  16-hex-digit SHA-256 digest of the whole identifier.
"""

from __future__ import annotations

import functools
import hashlib
import re

from kuya_store.errors import InvalidInputError
from kuya_store.pricing._text import ascii_fold
from kuya_store.pricing.query import MAX_QUERY_LENGTH, SearchQuery, parse_query

__all__ = ["MAX_IDENTIFIER_LENGTH", "MAX_QUERY_LENGTH", "normalize_card"]

MAX_IDENTIFIER_LENGTH = 200
"""Longest identifier returned, in characters."""

_TCG_WORDS = re.compile(
    r"\b(?:pokemon|pikachu|charizard|tcg|mtg|magic the gathering|yu-?gi-?oh|yugioh|"
    r"one piece|lorcana|digimon|shadowless|1st edition|first edition)\b"
)
_NOISE_PHRASES = re.compile(
    r"l[@o0*]{2,}k|\bread (?:the )?description\b|\bsee (?:description|pics|photos)\b|"
    r"\bfree (?:shipping|ship)\b|\bmust see\b"
)
_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})\b")
_SEASON = re.compile(r"\b((?:19|20)\d{2})\s*[-/]\s*(\d{4}|\d{2})\b")
_ONE_OF_ONE = re.compile(r"\b(?:1\s*of\s*1|one\s*of\s*one|1-of-1)\b")
_FRACTION = re.compile(r"(?<![\w./])#?\s*(\d{1,4})/(\d{1,5})(?![\d/]|\.\d)")
_PRINT_RUN = re.compile(
    r"(?:#\s*'?\s*e?d\s*(?:to\s*)?/?\s*|#\s*/\s*|\bnumbered\s+(?:to\s+|out\s+of\s+)?/?\s*|"
    r"(?<![\d/])/\s*)(\d{1,5})\b"
)
_GRADERS = (
    "psa|bgs|beckett|sgc|cgc|csg|hga|bvg|ksa|gma|mnt|isa|ags|tag|bccg|gai"  # order irrelevant
)
_GRADE = re.compile(
    rf"\b({_GRADERS})(?:\s*/?\s*dna)?(?![a-z])[\s:#-]*"
    r"(?:(?:gem|mint|mt|nm|near|ex|vg|pristine|perfect)[\s+/-]*){0,3}"
    r"(\d{1,3}(?:\.\d)?)(?![\d/])"
)
_ORDINALS = {"1st": "first", "2nd": "second", "3rd": "third"}
_ORDINAL = re.compile(r"\b(1st|2nd|3rd)\b")
_INNER_DOT = re.compile(r"(?<=[a-z])\.(?=[a-z])")
_OTHER_DOT = re.compile(r"(?<!\d)\.|\.(?!\d)")
_NOT_KEPT = re.compile(r"[^a-z0-9._]+")
_PIECES = re.compile(r"[a-z]+|\d+(?:\.\d+)?")

# Multi-word synonyms first (longest match wins), then single words.
_PHRASES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("rookie", "card"), ("<rc>",)),
    (("rookie", "patch", "autograph"), ("patch", "<rc>", "<auto>")),
    (("x", "fractor"), ("xfractor",)),
    (("rev", "holo"), ("reverse", "holo")),
    (("first", "ed"), ("first", "edition")),
    (("first", "edt"), ("first", "edition")),
    (("yu", "gi", "oh"), ("yugioh",)),
    (("magic", "the", "gathering"), ("mtg",)),
    (("base", "set"), ("base", "set")),
)
_WORDS: dict[str, tuple[str, ...]] = {
    "rc": ("<rc>",),
    "rookie": ("<rc>",),
    "rpa": ("patch", "<rc>", "<auto>"),
    "auto": ("<auto>",),
    "autos": ("<auto>",),
    "autograph": ("<auto>",),
    "autographed": ("<auto>",),
    "signed": ("<auto>",),
    "ref": ("refractor",),
    "refr": ("refractor",),
    "refractors": ("refractor",),
    "xfractors": ("xfractor",),
    "holofoil": ("holo",),
    "holographic": ("holo",),
    "prizms": ("prizm",),
    "jsy": ("jersey",),
    "var": ("variation",),
    "beckett": ("bgs",),
    "base": (),
    "card": (),
    "cards": (),
    "invest": (),
    "investment": (),
    "look": (),
    "wow": (),
}
_GRADE_WORDS = frozenset({"gem", "mint", "mt", "nm", "pristine", "graded"})
_FLAG_ORDER = ("<auto>", "<rc>")


def _fail(reason: str) -> InvalidInputError:
    return InvalidInputError("query", reason)


def _bind_numbers(s: str, *, tcg: bool) -> str:
    """Turn the number groups that carry meaning together into single ``_`` tokens."""
    s = _DATE.sub(lambda m: f" {m[1]} {m[2]} {m[3]} ", s)

    def season(m: re.Match[str]) -> str:
        start, end = int(m[1]), int(m[2])
        if (len(m[2]) == 2 and end == (start + 1) % 100) or end == start + 1:
            return f" {start}_{(start + 1) % 100:02d} "
        return m[0]

    s = _SEASON.sub(season, s)
    s = _ONE_OF_ONE.sub(" pr_1 ", s)

    def fraction(m: re.Match[str]) -> str:
        left, right = m[1], m[2]
        serial, run = int(left), int(right)
        if tcg or serial == 0 or serial > run or (len(left) > 1 and left.startswith("0")):
            return f" {serial}_{run} "
        return f" pr_{run} "

    s = _FRACTION.sub(fraction, s)

    def print_run(m: re.Match[str]) -> str:
        before = s[max(0, m.start() - 2) : m.start()]
        if m[0].startswith("/") and re.search(r"(?:^|[^a-z])[wc]$", before):
            return m[0].replace("/", " ")
        return f" pr_{int(m[1])} "

    s = _PRINT_RUN.sub(print_run, s)

    def grade(m: re.Match[str]) -> str:
        grader = "bgs" if m[1] == "beckett" else m[1]
        return f" {grader}_{m[2]} "

    return _GRADE.sub(grade, s)


def _tokens(s: str) -> list[str]:
    out: list[str] = []
    for raw in s.split():
        if "_" in raw:
            out.append(raw)
            continue
        for piece in _PIECES.findall(raw):
            if piece.isdigit():
                piece = str(int(piece))
            elif piece[0].isdigit():
                whole, _, frac = piece.partition(".")
                piece = f"{int(whole)}.{frac}"
            out.append(piece)
    return out


def _fold(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for phrase, replacement in _PHRASES:
            if tuple(tokens[i : i + len(phrase)]) == phrase:
                out.extend(replacement)
                i += len(phrase)
                break
        else:
            out.extend(_WORDS.get(tokens[i], (tokens[i],)))
            i += 1
    return out


def _assemble(tokens: list[str]) -> list[str]:
    runs: list[str] = []
    flags: set[str] = set()
    grades: list[str] = []
    words: list[str] = []
    for token in tokens:
        if token.startswith("pr_"):
            if token not in runs:
                runs.append(token)
        elif token in _FLAG_ORDER:
            flags.add(token)
        elif "_" in token and re.fullmatch(r"[a-z]+_[\d.]+", token):
            if token not in grades:
                grades.append(token)
        elif not words or words[-1] != token:
            words.append(token)
    if grades:
        words = [w for w in words if w not in _GRADE_WORDS]
    tail = [flag.strip("<>") for flag in _FLAG_ORDER if flag in flags]
    return words + runs + tail + grades


def normalize_card(text: str | SearchQuery) -> str:
    """Return the stable identifier of the card that ``text`` names.

    The same card written differently maps to one identifier::

        >>> normalize_card("2023 Topps Chrome Victor Wembanyama #1 RC")
        '2023-topps-chrome-victor-wembanyama-1-rc'
        >>> normalize_card("2023 topps chrome  victor wembanyama 1 rookie")
        '2023-topps-chrome-victor-wembanyama-1-rc'

    Operators narrow the search but name no card: ``"Ohtani -auto"`` is the card
    ``ohtani``. A query already parsed by ``parse_query`` is accepted as it is.

    Raises:
        InvalidInputError: ``field="query"`` when ``text`` is empty, whitespace only, holds
            a NUL character, is longer than ``MAX_QUERY_LENGTH`` characters or has nothing
            searchable outside its operators.
    """
    query = text if isinstance(text, SearchQuery) else parse_query(text)
    card = query.card_text
    if not card.strip():
        raise _fail("names no card outside its exclusions and OR groups")
    if len(card) <= _REMEMBERED_LENGTH:
        return _remembered(card)
    return _normalize(card)


def _normalize(text: str) -> str:
    s = ascii_fold(text).lower().replace("_", " ")
    tcg = _TCG_WORDS.search(s) is not None
    s = _NOISE_PHRASES.sub(" ", s)
    s = _ORDINAL.sub(lambda m: f" {_ORDINALS[m[1]]} ", s)
    s = s.replace("'", "").replace("&", " and ")
    s = _bind_numbers(s, tcg=tcg)
    s = _INNER_DOT.sub("", s)
    s = _OTHER_DOT.sub(" ", s)
    s = _NOT_KEPT.sub(" ", s)
    words = _assemble(_fold(_tokens(s)))
    if not words:
        raise _fail("has no letters or digits to identify a card")
    identifier = "-".join(words)
    if len(identifier) > MAX_IDENTIFIER_LENGTH:
        digest = hashlib.sha256(identifier.encode("ascii")).hexdigest()[:16]
        identifier = f"{identifier[: MAX_IDENTIFIER_LENGTH - 17].rstrip('-')}-{digest}"
    return identifier


# Every search normalises its query and the same cards recur, so identifiers are memoised;
# only card texts of ordinary length, which keeps the memo to a few megabytes.
_REMEMBERED_LENGTH = 500
_remembered = functools.lru_cache(maxsize=16_384)(_normalize)
