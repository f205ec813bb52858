"""``parse_title``: what a marketplace title says about the card it sells.

The parser is a set of hand-written rules over an ASCII-folded, lower-cased title; the
rules and their known limits are described in ``docs/pricing.md``. Results are cached per
title (``functools.lru_cache``) because the same titles are filtered again and again.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from kuya_store.errors import InvalidInputError
from kuya_store.pricing._text import ascii_fold, collapse_spaces

__all__ = ["GRADERS", "TitleInfo", "clear_title_cache", "grade_value", "parse_title"]

MAX_TITLE_LENGTH = 500

GRADERS: dict[str, str] = {
    "psa": "PSA",
    "bgs": "BGS",
    "beckett": "BGS",
    "sgc": "SGC",
    "cgc": "CGC",
    "csg": "CSG",
    "hga": "HGA",
    "bvg": "BVG",
    "bccg": "BCCG",
    "ksa": "KSA",
    "gma": "GMA",
    "mnt": "MNT",
    "isa": "ISA",
    "ags": "AGS",
    "tag": "TAG",
    "gai": "GAI",
    "ace": "ACE",
    "ars": "ARS",
}
"""Grading companies recognised in titles (lower-case spelling -> canonical name)."""

# Graders whose name alone (without a grade) still means "in that company's slab".
_SLAB_NAMES = frozenset({"psa", "bgs", "beckett", "sgc", "cgc", "bvg", "bccg"})

# SGC's former 100-point labels -> the 10-point grade printed beside them.
_SGC_OLD_SCALE = {
    100: "10",
    98: "10",
    96: "9",
    92: "8.5",
    88: "8",
    86: "7.5",
    84: "7",
    82: "6.5",
    80: "6",
    70: "5.5",
    60: "5",
    55: "4.5",
    50: "4",
    45: "3.5",
    40: "3",
    35: "2.5",
    30: "2",
    20: "1.5",
}


@dataclass(frozen=True, slots=True)
class TitleInfo:
    """The facts a title states about the card it sells.

    Attributes:
        graded: the card is in a grading company's slab.
        grader: canonical company name (``"PSA"``, ``"BGS"``, ...) when named.
        grade: the card's numeric grade (half grades allowed), not an autograph grade.
        autograph: the card carries an autograph (not a printed or facsimile one).
        parallel: normalised parallel name (``"silver prizm"``, ``"gold refractor"``,
            ``"holo"``, ``"1/1"``, ...); ``None`` for the base version.
        serial_number: the copy's number (``23`` in ``23/99``).
        print_run: how many copies exist (``99`` in ``/99`` or ``23/99``).
        is_lot: the listing sells more than one card.
        lot_size: how many cards, when the title says.
        is_reprint: an official or unofficial reprint / reproduction.
        is_custom: a custom, fan-made, art or proxy card.
        is_digital: a digital card or NFT, not a physical card.
        is_base: the plain base card: no parallel, numbering, autograph, memorabilia,
            insert, variation or short-print marker, and not a lot, reprint, custom or
            digital card.
        rookie: the title marks the card as a rookie card.
    """

    graded: bool = False
    grader: str | None = None
    grade: Decimal | None = None
    autograph: bool = False
    parallel: str | None = None
    serial_number: int | None = None
    print_run: int | None = None
    is_lot: bool = False
    lot_size: int | None = None
    is_reprint: bool = False
    is_custom: bool = False
    is_digital: bool = False
    is_base: bool = True
    rookie: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-safe values (the grade as a string)."""
        data = asdict(self)
        data["grade"] = None if self.grade is None else str(self.grade)
        return data


# --------------------------------------------------------------------------- helpers

_W = r"(?<![a-z0-9])"  # start of a word
_E = r"(?![a-z0-9])"  # end of a word
_NEGATION_BEFORE = re.compile(
    r"(?:\b(?:no|non|not|without|isn't|never)|w/o)[\s-]*(?:an?\s+|the\s+)?$"
)


def _negated(text: str, start: int) -> bool:
    return _NEGATION_BEFORE.search(text[max(0, start - 16) : start]) is not None


def _any_unnegated(pattern: re.Pattern[str], text: str) -> bool:
    return any(not _negated(text, m.start()) for m in pattern.finditer(text))


_TCG = re.compile(
    rf"{_W}(?:pokemon|pikachu|charizard|tcg|mtg|magic the gathering|yu-?gi-?oh|yugioh|"
    rf"one piece|lorcana|digimon|shadowless|1st edition|first edition|holo rare|"
    rf"booster|wotc){_E}"
)

# ---------------------------------------------------------------------------- grading

_GRADER_ALT = "|".join(sorted(GRADERS, key=len, reverse=True))
_GRADE = re.compile(
    rf"{_W}(?P<g>{_GRADER_ALT})(?![a-z])(?:\s*/\s*dna)?[\s:#-]*"
    r"(?:(?:graded|grading|grade|gem|mint|mt|nm|near|ex|vg|good|gd|fair|fr|poor|pristine|perfect)"
    r"[\s+/-]*){0,4}"
    r"(?P<n>\d{1,3}(?:\.\d)?)(?!\d|\.\d|/|\s+/\s+\d)"
)
_SLAB = re.compile(rf"{_W}(?P<g>psa|bgs|beckett|sgc|cgc|bvg|bccg){_E}")
_NUMBER_NEXT = re.compile(r"\s*\d")
_GRADED_NO_COMPANY = re.compile(
    rf"{_W}graded\s+(?:(?:gem|mint|mt|nm)[\s+-]*){{0,2}}(?P<n>\d{{1,2}}(?:\.5)?){_E}(?!/)"
)
_AUTO_GRADE = re.compile(
    rf"{_W}(?:auto(?:graph)?|signature)\s*(?:grade[ds]?\s*)?:?\s*\d{{1,2}}(?:\.5)?{_E}"
)
_CANDIDATE_AFTER = re.compile(
    r"^\s*(?:\?|[(\[]?\s*(?:candidate|cand|worthy|potential|ready|quality|possible|"
    r"prospect|contender|material|maybe|likely|centering)\b|"
    r"or\s+(?:better|bgs|sgc|psa|cgc)\b)"
)
_CANDIDATE_BEFORE = re.compile(
    r"(?:\b(?:potential|possible|future|could\s+be|should\s+be|would\s+be|will\s+be|"
    r"likely|easy|sure|pre|for|to|send|submit|ready\s+for|not|no|non|like|probable|solid|"
    r"gradable|a|an|maybe|possibly|any)\s*[-:]?\s*|\bpre-)$"
)
_RAW = re.compile(
    rf"(?<!wwe )(?<!night ){_W}(?:raw|ungraded|un-graded|not\s+graded|non[\s-]?graded|"
    rf"never\s+graded){_E}"
)


def grade_value(grader: str, number: str) -> Decimal | None:
    """The grade a title's number means for a grader (``"sgc", "96"`` -> 9), if valid."""
    return _grade_value(grader.lower(), number)


def _grade_value(grader: str, number: str) -> Decimal | None:
    value = Decimal(number)
    if grader == "sgc" and value > 10 and value == value.to_integral_value():
        mapped = _SGC_OLD_SCALE.get(int(value))
        return None if mapped is None else Decimal(mapped)
    if value < 1 or value > 10 or (value * 2) != (value * 2).to_integral_value():
        return None
    return Decimal(int(value)) if value == value.to_integral_value() else value


def _is_candidate(text: str, start: int, end: int) -> bool:
    return (
        _CANDIDATE_AFTER.search(text[end : end + 30]) is not None
        or _CANDIDATE_BEFORE.search(text[max(0, start - 30) : start]) is not None
    )


def _grading(text: str) -> tuple[bool, str | None, Decimal | None]:
    if _RAW.search(text):
        return False, None, None
    text = _AUTO_GRADE.sub(" ", text)
    for m in _GRADE.finditer(text):
        value = _grade_value(m["g"], m["n"])
        if value is None or _is_candidate(text, m.start(), m.end()):
            continue
        return True, GRADERS[m["g"]], value
    for m in _SLAB.finditer(text):
        if not _is_candidate(text, m.start(), m.end()) and not _NUMBER_NEXT.match(text, m.end()):
            return True, GRADERS[m["g"]], None
    for m in _GRADED_NO_COMPANY.finditer(text):
        if not _is_candidate(text, m.start(), m.end()):
            return True, None, _grade_value("", m["n"])
    return False, None, None


# ------------------------------------------------------------------------- autograph

_AUTOGRAPH = re.compile(
    rf"{_W}(?:autos?|autograph(?:s|ed)?|signed|signatures?|rpa|bcpa|cpa|on[\s-]?card){_E}"
)
_NOT_AN_AUTOGRAPH = re.compile(
    r"(?:facsimile|pre[\s-]?printed|printed|stamped|fake|replica)[\s-]*(?:\w+\s+)?$"
)


def _autograph(text: str) -> bool:
    for m in _AUTOGRAPH.finditer(text):
        if m[0].startswith("on") and not re.match(r"\s*auto", text[m.end() :]):
            continue
        before = text[max(0, m.start() - 24) : m.start()]
        if _negated(text, m.start()) or _NOT_AN_AUTOGRAPH.search(before):
            continue
        return True
    return False


# --------------------------------------------------------------------------- rookie

_NOT_ROOKIE_PHRASES = re.compile(
    rf"{_W}(?:rookies?\s*(?:&|and|n)\s*stars|(?:all[\s-]?star\s+)?rookie\s+cup|"
    rf"rookie\s+of\s+the\s+year|rookie\s+debut|all[\s-]?star\s+rookie|"
    rf"pre[\s-]?(?:rookie|rc)|(?:non|not|no)[\s-]+(?:an?\s+)?(?:rookie|rc))s?{_E}"
)
_ROOKIE = re.compile(rf"{_W}(?:rc|xrc|rr|rookies?|rpa|rated\s+rookie|young\s+guns){_E}")


def _rookie(text: str) -> bool:
    return _ROOKIE.search(_NOT_ROOKIE_PHRASES.sub(" ", text)) is not None


# ------------------------------------------------------------------------ numbering

_DATE = re.compile(r"\b\d{1,2}/\d{1,2}/(?:\d{4}|\d{2})\b")
_SEASON = re.compile(r"\b((?:19|20)\d{2})\s*[-/]\s*(\d{4}|\d{2})\b")
_ONE_OF_ONE = re.compile(rf"{_W}(?:#?1\s*of\s*1|one\s+of\s+one|1-of-1){_E}")
_FRACTION = re.compile(r"(?<![\w./])#?(\d{1,4})/\s?(\d{1,5})(?![\d/]|\.\d)")
_PRINT_RUN = re.compile(
    r"(?:#\s*'?\s*e?d\s*(?:to\s*)?/?\s*|#\s*/\s*|\bnumbered\s+(?:to\s+|out\s+of\s+)?/?\s*|"
    r"\bserial\s+(?:numbered\s+)?(?:to\s+)?/?\s*|(?<![\d/])/\s*)(\d{1,5})\b"
)
_CONDITION_SCORE = re.compile(r"^\s*(?:condition|cond|quality|centering)")
# "24/25" is a season when it opens the title or names a product's year; "Gold 24/25" is not.
_SHORT_SEASON = re.compile(r"(?<![\w/#.])(\d{2})\s*/\s*(\d{2})(?![\w/])")
_PRODUCT_AFTER = re.compile(
    r"\s*(?:topps|panini|upper\s+deck|ud|bowman|donruss|prizm|select|optic|mosaic|hoops|"
    r"fleer|score|leaf|o-?pee-?chee|opc|merlin|finest|chrome|match\s+attax|futera|skybox|"
    r"stadium\s+club|immaculate|national\s+treasures|flawless|contenders|obsidian|revolution|"
    r"chronicles|absolute|certified|spectra|sp|spx|season|nba|nhl|uefa|ucl|premier\s+league)\b"
)
# Words that only sports cards carry: with them, "001/119" is a serial, not a set number.
_SPORTS = re.compile(
    rf"{_W}(?:topps|panini|bowman|upper\s+deck|donruss|prizm|optic|select|mosaic|leaf|fleer|"
    rf"score|hoops|contenders|refractors?|rc|rookie|auto|autograph|patch|nba|nfl|mlb|nhl){_E}"
)
# A set number glued to letters ("88a/147", "TG05/TG30") is never a print run.
_SET_NUMBER_BEFORE = re.compile(r"\d[a-z]+$")


def _without_dates_and_seasons(text: str) -> str:
    text = _DATE.sub(" ", text)

    def season(m: re.Match[str]) -> str:
        start, end = int(m[1]), int(m[2])
        if (len(m[2]) == 2 and end == (start + 1) % 100) or end == start + 1:
            return " "
        return m[0]

    text = _SEASON.sub(season, text)

    def short_season(m: re.Match[str]) -> str:
        start, end = int(m[1]), int(m[2])
        opens = not text[: m.start()].strip()
        if end == (start + 1) % 100 and (opens or _PRODUCT_AFTER.match(text, m.end())):
            return " "
        return m[0]

    return _SHORT_SEASON.sub(short_season, text)


def _numbering(text: str, *, tcg: bool) -> tuple[int | None, int | None]:
    text = _without_dates_and_seasons(text)
    serialized = re.search(rf"{_W}serial(?:ized|ised)?{_E}", text) is not None
    sports = not tcg and _SPORTS.search(text) is not None
    if _ONE_OF_ONE.search(text):
        return 1, 1
    for m in _FRACTION.finditer(text):
        left, right = m[1], m[2]
        serial, run = int(left), int(right)
        if serial == 0 or serial > run:
            continue
        zero_padded = len(left) > 1 and left.startswith("0")
        if not serialized and (tcg or (zero_padded and not sports)):
            continue
        if _CONDITION_SCORE.search(text[m.end() :]):
            continue
        return serial, run
    for m in _PRINT_RUN.finditer(text):
        before = text[: m.start()]
        if m[0].startswith("/") and (
            re.search(r"(?:^|[^a-z])[wc]\s*$", before) or _SET_NUMBER_BEFORE.search(before)
        ):
            continue
        run = int(m[1])
        if run == 0 or (tcg and m[0].startswith("/")):
            continue
        return None, run
    return None, None


# ------------------------------------------------------------------------------ lots

_LOT_COUNTS = (
    re.compile(r"\blot\s+of\s+(\d{1,4})\b"),
    re.compile(r"\blot\s*[(\[]\s*(\d{1,4})\s*[)\]]"),
    re.compile(r"\b(\d{1,4})\s*-?\s*(?:card|cards|ct|count|pc|pcs|piece)\s+(?:lot|bundle|set)\b"),
    re.compile(r"^\s*[(\[]\s*(\d{1,4})\s*[)\]]"),
    re.compile(r"[(\[]\s*(\d{1,4})\s*[)\]]\s*(?:cards?|lot)\b"),
    re.compile(r"\b(\d{1,4})\s*(?:cards|ct|pcs)\b"),
    re.compile(r"\bset\s+of\s+(\d{1,4})\b"),
    re.compile(r"(?<![\w/.#])x\s?(\d{1,3})\b(?!\s*/|\.\d)"),
    re.compile(r"(?<![\w./#])(\d{1,3})\s?x(?![\w-])"),
)
_LOT_WORDS = re.compile(
    rf"(?<!\ba ){_W}(?:lot|lots|bundle|bulk|team\s+set|complete\s+set|master\s+set|"
    rf"pair\s+of|mixed\s+lot){_E}"
)
_PAIR = re.compile(rf"{_W}pair\s+of{_E}")


def _lot(text: str) -> tuple[bool, int | None]:
    size: int | None = None
    for pattern in _LOT_COUNTS:
        m = pattern.search(text)
        if m:
            size = int(m[1])
            break
    if size is None and _PAIR.search(text):
        size = 2
    worded = _any_unnegated(_LOT_WORDS, text)
    if size is not None and size < 2:
        return worded, None
    return (worded or size is not None), size


# ------------------------------------------------------------ reprint, custom, digital

_REPRINT = re.compile(
    rf"{_W}(?:reprints?|re-print|reprinted|rp|replica|reproduction|repro|re-?issue){_E}"
)
_CUSTOM = re.compile(
    rf"{_W}(?:custom|customs|art\s+card|aceo|novelty|proxy|proxies|fan\s+art|fan[\s-]made|"
    rf"handmade|hand\s+made|unofficial|altered\s+art|orica){_E}"
    r"(?!\s+(?:case|slab|holder|display|label|frame|stand|toploader|sleeve|magnetic))"
)
_DIGITAL = re.compile(
    rf"{_W}(?:digital|nft|topps\s+bunt|bunt\s+digital|topps\s+kick|topps\s+huddle|sorare|"
    rf"veve|e-?card|topps\s+skate|disney\s+collect|top\s+shot){_E}"
)

# ------------------------------------------------------------- inserts and variations

_INSERT = re.compile(
    rf"{_W}(?:ssp|short\s+print|super\s+short\s+print|variations?|var|variant|image\s+var|"
    rf"photo\s+var|case\s+hit|inserts?|patch|relic|jersey|jsy|memorabilia|mem|game[\s-]used|"
    rf"game[\s-]worn|swatch|logoman|booklet|die[\s-]?cut|sketch|acetate|downtown|kaboom|"
    rf"color\s+blast|stained\s+glass|manga|genesis|rainmakers|net\s+marvels|my\s+house|"
    rf"instant\s+impact|emergent|alt(?:ernate)?\s+art|full\s+art|secret\s+rare|"
    rf"special\s+illustration\s+rare|illustration\s+rare|sir|hyper\s+rare|rainbow\s+rare|"
    rf"gold\s+star|shining|trainer\s+gallery|borderless|showcase|extended\s+art|"
    rf"golden\s+mirror|ultimate\s+rare|quarter\s+century|sticker|canvas|retro|blank\s+back|"
    rf"galarian\s+gallery|shiny\s+vault){_E}"
)
_SP = re.compile(rf"{_W}sp{_E}")
_SP_AS_SET_BEFORE = re.compile(r"(?:\b(?:19|20)\d{2}|\bupper\s+deck|\bud)\s*$")
_SP_AS_SET_AFTER = re.compile(
    r"^\s*(?:authentic|game\s+used|legendary|signature|top\s+prospects|championship|"
    r"chirography|prospects|rookie\s+edition)"
)


def _insert(text: str) -> bool:
    if _any_unnegated(_INSERT, text):
        return True
    for m in _SP.finditer(text):
        if _SP_AS_SET_BEFORE.search(text[: m.start()]) or _SP_AS_SET_AFTER.search(text[m.end() :]):
            continue
        return True
    return False


# ------------------------------------------------------------------------- parallels

_NOT_PARALLEL_PHRASES = re.compile(
    rf"{_W}(?:red\s+sox|white\s+sox|blue\s+jays|golden\s+state|green\s+bay|red\s+wings|"
    rf"blue\s+jackets|black\s*hawks|silver\s+knights|red\s+bulls|blue\s+devils|"
    rf"orange\s+crush|black\s+lotus|blue-?\s?eyes|red-?\s?eyes|white\s+dragon|"
    rf"black\s+dragon|silver\s+tempest|black\s+star|gold\s+star|ruby\s+(?:&|and)\s+sapphire|"
    rf"gold\s+label|black\s+label|gold\s+standard|black\s+gold|black\s+diamond|"
    rf"silver\s+slugger|gold\s+glove|red\s+hot|blue\s+chip|red\s+zone|silver\s+pack|"
    rf"panini\s+black|jalen\s+green|draymond\s+green|a\.?\s?j\.?\s+green|danny\s+green|"
    rf"vida\s+blue|sonny\s+gray|jon\s+gray|evan\s+white|tyler\s+white|red\s+grange|"
    rf"black\s+panther|silver\s+surfer|green\s+lantern|green\s+goblin|white\s+border|"
    rf"black\s+border\s+(?:mtg|magic)|pink\s+panther|orange\s+bowl|rose\s+bowl|"
    rf"gold\s+rush|blue\s+moon|chrome\s+black|(?:gold\s+)?hyper\s+rare|prism\s+star){_E}"
)

_FINISHES: tuple[tuple[str, str], ...] = (
    (r"super\s*-?\s*fractors?", "superfractor"),
    (r"x\s*-?\s*fractors?|xfr", "x-fractor"),
    (r"logofractors?", "logofractor"),
    (r"refractors?|ref|refr", "refractor"),
    (r"prism\s+refractors?", "prism refractor"),
    (r"reverse\s+holo(?:foil)?|rev\s+holo|reverse\s+foil", "reverse holo"),
    (r"silver\s+holo|holo\s+silver", "holo"),
    (r"cosmos\s+holo", "cosmos holo"),
    (r"holo(?:foil|graphic)?", "holo"),
    (r"etched\s+foil|foil\s+etched", "etched foil"),
    (r"foil", "foil"),
    (r"printing\s+plates?|plates?", "printing plate"),
    (r"ghost\s+rare", "ghost rare"),
    (r"starlight\s+rare", "starlight rare"),
    (r"prisms?", "prism"),
    (r"prizms?", "prizm"),
)
_FINISH_PRIORITY = [name for _, name in _FINISHES]

_COLOURS: tuple[tuple[str, str], ...] = (
    (r"red\s*,?\s*white\s*(?:and|&|n|/)?\s*blue|rwb", "red white blue"),
    (r"black\s*(?:and|&|/)\s*white", "black white"),
    (r"neon\s+green", "neon green"),
    (r"neon\s+orange", "neon orange"),
    (r"neon\s+pink", "neon pink"),
    (r"lime\s+green", "lime green"),
    (r"sky\s+blue", "sky blue"),
    (r"light\s+blue", "light blue"),
    (r"dark\s+blue", "dark blue"),
    (r"royal\s+blue", "royal blue"),
    (r"rose\s+gold", "rose gold"),
    (r"tie[\s-]?dye", "tie-dye"),
    (r"vintage\s+stock", "vintage stock"),
    (
        r"silver|gold|red|blue|green|orange|purple|pink|black|white|yellow|aqua|teal|bronze|"
        r"emerald|ruby|cyan|magenta|rainbow|copper|gray|grey|maroon|navy|sepia|"
        r"lavender|neon",
        "",
    ),
)
_STRONG_PATTERNS = (
    r"lava\s+lamp|dragon\s+scale|color\s+match|reptilian|foilboard|metallix|kaleidoscope|"
    r"peacock|sunburst|starburst|honeycomb|fractal|"
    r"wave|mojo|shimmer|hyper|disco|cracked\s+ice|camo|tiger\s+stripes?|tiger|zebra|"
    r"snake\s?skin|lava|atomic|speckle|sparkle|pulsar|velocity|raywave|checkerboard|laser|"
    r"lazer|reactive|fast\s+break|nebula|mini[\s-]?diamond|scope|shock|vinyl|exclusives|negative"
)
_WEAK_PATTERNS = (
    r"diamond|cosmic|galaxy|stars|fireworks|flash|ice|choice|mosaic|geometric|pandora|"
    r"lunar\s+glow|surge|clear|sonic|lotus"
)
_VOCAB = re.compile(
    rf"{_W}(?:(?P<F>{'|'.join(f'(?:{p})' for p, _ in _FINISHES)})|"
    rf"(?P<C>{'|'.join(f'(?:{p})' for p, _ in _COLOURS)})|"
    rf"(?P<P>{_STRONG_PATTERNS})|(?P<Q>{_WEAK_PATTERNS})){_E}"
)
_GAP = re.compile(r"^(?:[\s&+-]*|\s+and\s+)$")
_NUMBERED_AFTER = re.compile(
    r"^\s*(?:parallel\s*)?(?:#\s*'?\s*e?d\b|#?\s*\d*\s*/\s*\d|numbered\b|serial\b|"
    r"1\s*of\s*1\b|one\s+of\s+one\b|parallel\b)"
)
_NOT_BEFORE = re.compile(r"(?:\b(?:non|not|no)[\s-]*|\bnon-)$")


def _canonical(kind: str, word: str) -> str:
    table = _FINISHES if kind == "F" else _COLOURS
    for pattern, name in table:
        if re.fullmatch(pattern, word):
            if name:
                return name
            break
    word = re.sub(r"[\s-]+", " ", word)
    return {"grey": "gray", "tiger stripes": "tiger stripe", "snake skin": "snakeskin"}.get(
        word, word.replace("mini diamond", "mini-diamond")
    )


def _parallel(
    text: str, *, tcg: bool, lot: bool, serial: int | None, run: int | None
) -> str | None:
    text = _NOT_PARALLEL_PHRASES.sub(lambda m: " " * len(m[0]), text)
    matches = [
        m
        for m in _VOCAB.finditer(text)
        if not _NOT_BEFORE.search(text[max(0, m.start() - 5) : m.start()])
    ]
    phrases: list[list[re.Match[str]]] = []
    for m in matches:
        if phrases and _GAP.match(text[phrases[-1][-1].end() : m.start()]):
            phrases[-1].append(m)
        else:
            phrases.append([m])
    has_prizm = re.search(rf"{_W}prizms?{_E}", text) is not None
    for phrase in phrases:
        kinds = [m.lastgroup or "" for m in phrase]
        colours = [_canonical("C", m[0]) for m in phrase if m.lastgroup == "C"]
        patterns = [_canonical("P", m[0]) for m in phrase if m.lastgroup in ("P", "Q")]
        finishes = [_canonical("F", m[0]) for m in phrase if m.lastgroup == "F"]
        finish = min(finishes, key=_FINISH_PRIORITY.index) if finishes else None
        if finish == "prizm" and not colours and not patterns:
            continue
        numbered_after = _NUMBERED_AFTER.match(text[phrase[-1].end() :]) is not None
        strong = finish is not None or "P" in kinds
        if not strong and not colours:
            continue
        if not strong and not numbered_after and (tcg or lot):
            continue
        if lot and not colours:
            continue
        if finish is None and has_prizm:
            finish = "prizm"
        if finish == "superfractor":
            return "superfractor"
        words = colours + patterns + ([finish] if finish else [])
        return " ".join(dict.fromkeys(words))
    if serial == 1 and run == 1:
        return "1/1"
    return None


# ----------------------------------------------------------------------------- parse


def _prepare(title: str) -> str:
    return collapse_spaces(ascii_fold(title).lower())


@functools.lru_cache(maxsize=8192)
def _parse(title: str) -> TitleInfo:
    text = _prepare(title)
    tcg = _TCG.search(text) is not None
    graded, grader, grade = _grading(text)
    autograph = _autograph(text)
    serial, run = _numbering(text, tcg=tcg)
    is_lot, lot_size = _lot(text)
    reprint = _any_unnegated(_REPRINT, text)
    autograph = autograph and not reprint  # a reprinted autograph is printed, not signed
    custom = _any_unnegated(_CUSTOM, text)
    digital = _any_unnegated(_DIGITAL, text)
    parallel = _parallel(text, tcg=tcg, lot=is_lot, serial=serial, run=run)
    insert = _insert(text)
    is_base = not (
        parallel
        or serial is not None
        or run is not None
        or is_lot
        or reprint
        or custom
        or digital
        or autograph
        or insert
    )
    return TitleInfo(
        graded=graded,
        grader=grader,
        grade=grade,
        autograph=autograph,
        parallel=parallel,
        serial_number=serial,
        print_run=run,
        is_lot=is_lot,
        lot_size=lot_size,
        is_reprint=reprint,
        is_custom=custom,
        is_digital=digital,
        is_base=is_base,
        rookie=_rookie(text),
    )


def parse_title(title: str) -> TitleInfo:
    """Parse a marketplace title into a :class:`TitleInfo`.

    Results are cached per exact title (bounded LRU cache of 8192 titles).

    Raises:
        InvalidInputError: ``field="title"`` when the title is empty, whitespace only,
            holds a NUL character or is longer than 500 characters.
    """
    if not isinstance(title, str):
        raise InvalidInputError("title", "must be a string")
    if "\x00" in title:
        raise InvalidInputError("title", "must not contain NUL characters")
    if len(title) > MAX_TITLE_LENGTH:
        raise InvalidInputError("title", f"must be at most {MAX_TITLE_LENGTH} characters")
    if not title.strip():
        raise InvalidInputError("title", "must not be empty")
    return _parse(title)


def clear_title_cache() -> None:
    """Forget every cached :func:`parse_title` result."""
    _parse.cache_clear()
