"""parse_query: the card a search names, apart from the operators that narrow it."""

from __future__ import annotations

import doctest
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuya_store.errors import InvalidInputError
from kuya_store.pricing import (
    MAX_QUERY_LENGTH,
    SearchQuery,
    cards,
    normalize_card,
    parse_query,
    query,
)
from kuya_store.pricing.cards import MAX_IDENTIFIER_LENGTH

PRICING_DOC = Path(__file__).resolve().parents[2] / "docs" / "pricing.md"

BASE = "2024 Topps Chrome Shohei Ohtani #1"

# Exclusion groups shaped like the ones a price app's checkboxes append to the search box:
# bare words, quoted phrases, hyphenated words, punctuation inside quotes, one grade in
# two spellings, the same word in two groups and in two cases. Their order here is the
# order the checkboxes are read in.
LOTS = [
    "-lot", '-"lot of"', '-"team lot"', '-"card lot"', '-"mixed lot"', "-bulk", "-bundle",
    *[f'-"({n})"' for n in range(2, 13)],
    *[f'-"{n} cards"' for n in range(2, 11)],
    *[f'-"{n} card"' for n in range(2, 6)],
    *[f'-"{n}x"' for n in (2, 3, 4, 5, 10)],
    '-"ct."', "-multi", "-multiples", "-dupes", '-"set of"', '-"group of"',
]  # fmt: skip
_GRADERS = ["psa", "bgs", "sgc", "cgc", "csg", "hga", "gma", "ksa"]
_GRADES = ["10", "9.5", "9", "8.5", "8", "7"]
GRADED = [
    *[f"-{grader}" for grader in _GRADERS],
    *[f'-"{g} {n}"' for g in _GRADERS for n in _GRADES],
    *[f'-"{g.upper()}{n}"' for g in _GRADERS for n in _GRADES],
    *[f'-"{g} graded"' for g in _GRADERS],
    "-beckett", '-"black label"', "-tag", "-isa", "-mnt", "-slab", "-slabbed", "-graded",
    '-"gem mint"', '-"Gem Mint 10"', '-"gem-mint"', '-"Gem+"', '-"NM-MT"', '-"pop 1"',
    '-"pop report"', '-"one touch"', "-encased", "-authenticated", "-subgrades",
    '-"sub grades"', '-"red label"', '-"true gem"', '-"pristine 10"',
]  # fmt: skip
AUTOGRAPHS = [
    "-auto", "-autos", "-autograph", "-autographed", "-signed", "-signature", "-ink",
    '-"on card"', '-"on-card"', '-"sticker auto"', "-rpa", '-"cut signature"',
]  # fmt: skip
_COLOURS = "aqua black blue bronze copper gold green lime orange pink purple red teal white"
PARALLELS = [
    *[f"-{colour}" for colour in _COLOURS.split()],
    "-checker", "-cracked", "-etch", "-foil", "-gilded", "-helix", "-holo", "-hyper", "-ice",
    "-lava", "-mojo", "-optic", "-prism", "-prizm", "-refractor", "-refractors", "-sepia",
    "-shimmer", "-silver", "-speckle", "-superfractor", "-variation", "-variations", "-wave",
    "-x-fractor", "-xfractor", "-SP", "-sp", "-SSP", '-"short print"', '-"Short Print"',
    '-"super short print"', '-"negative refractor"', '-"buy-back"', "-buyback", "-lot",
]  # fmt: skip
# A second box for one product line repeats much of the first.
CHROME_ONLY = [
    *[f'-"{colour} refractor"' for colour in ("blue", "gold", "green", "orange", "red")],
    "-refractor", "-xfractor", "-x-fractor", "-mojo", "-speckle", "-wave", "-blue", "-gold",
    "-green", "-orange", "-red", "-black", "-nucleus",
]  # fmt: skip
NOT_ISSUED = [
    "-reprint", "-rp", "-replica", "-reproduction", "-custom", '-"art card"', "-aceo",
    "-novelty", "-proxy", '-"fan art"', "-digital", "-nft", '-"topps bunt"', "-facsimile",
]  # fmt: skip
ALL_GROUPS = [LOTS, GRADED, AUTOGRAPHS, PARALLELS, CHROME_ONLY, NOT_ISSUED]


def ui_query(base: str, *groups: list[str]) -> str:
    """The query a price app's UI sends: the typed text, then every checked group's terms."""
    terms = [term for group in groups for term in group]
    return f"{base} {' '.join(terms)}" if terms else base


def test_the_card_of_a_narrowed_search_is_the_card_itself() -> None:
    for text in ["Ohtani -auto", "Ohtani -auto -signed", 'Ohtani -"psa 10"', "Ohtani -(a,b)"]:
        assert normalize_card(text) == normalize_card("Ohtani") == "ohtani"


def test_exclusions_are_not_words_of_the_card() -> None:
    narrowed = parse_query("Ohtani -auto -signed")
    wanted = parse_query("Ohtani auto signed")
    assert narrowed.excluded == ("auto", "signed")
    assert narrowed.card_text == "Ohtani"
    assert wanted.excluded == () and wanted.operators is None
    assert normalize_card(wanted) == "ohtani-auto"
    assert narrowed.operators != wanted.operators


@pytest.mark.parametrize(
    ("narrowed", "wanted"),
    [
        ("Ohtani -auto -signed", "Ohtani auto signed"),
        ("Ohtani -psa", "Ohtani psa"),
        ('Ohtani -"psa 10"', "Ohtani PSA 10"),
        ('Ohtani -"psa 10"', 'Ohtani "psa 10"'),
        ('Ohtani "psa 10"', "Ohtani PSA 10"),
        ("Ohtani (auto,signed)", "Ohtani auto signed"),
        ("Ohtani (auto,signed)", "Ohtani auto"),
        ("Ohtani -(auto,signed)", "Ohtani auto signed"),
        ("Ohtan*", "Ohtan"),
        ("Ohtani -auto", "Ohtani"),
    ],
)
def test_queries_the_marketplace_answers_differently_stay_apart(narrowed: str, wanted: str) -> None:
    a, b = parse_query(narrowed), parse_query(wanted)
    assert (normalize_card(a), a.operators) != (normalize_card(b), b.operators)


@pytest.mark.parametrize(
    "variants",
    [
        ("Ohtani -auto -signed", "Ohtani -signed -auto", "OHTANI  -Signed   -AUTO -auto"),
        ("Ohtani -auto -signed", "-auto Ohtani -signed", "-signed -auto Ohtani"),
        (
            'Ohtani -"psa 10"',
            'Ohtani -"PSA10"',
            'Ohtani -"  psa   10 "',
            'Ohtani -"psa 10" -"psa10"',
        ),
        ('"Shohei Ohtani" "2024"', '"2024" "shohei ohtani"', '"2024"  "SHOHEI  OHTANI" "2024"'),
        ("Ohtani (auto,signed)", "Ohtani (signed, auto)", "Ohtani (AUTO,signed,auto)"),
        ("Ohtani -(red,blue)", "Ohtani -blue -red", "Ohtani -red -(blue,red)"),
        ('Ohtani "psa 10"', "Ohtani \u201cPSA 10\u201d"),
        ("Ohtani #1 -auto", "ohtani 1 -auto"),
    ],
)
def test_what_the_marketplace_cannot_tell_apart_folds(variants: tuple[str, ...]) -> None:
    parsed = [parse_query(text) for text in variants]
    identities = {(normalize_card(q), q.operators) for q in parsed}
    assert len(identities) == 1, identities


def test_exclusions_stay_literal_not_synonyms() -> None:
    # normalize_card folds "auto" and "signed" into one token; the marketplace does not.
    assert normalize_card("Ohtani auto") == normalize_card("Ohtani signed")
    assert parse_query("Ohtani -auto").operators != parse_query("Ohtani -signed").operators
    assert parse_query("Ohtani -rc").excluded == ("rc",)
    assert parse_query("Ohtani -rookie").excluded == ("rookie",)
    assert parse_query("Ohtani -beckett").excluded == ("beckett",)


def test_a_quoted_exclusion_is_not_a_bare_one() -> None:
    assert parse_query('Ohtani -"auto"').excluded == ('"auto"',)
    assert parse_query("Ohtani -auto").excluded == ("auto",)
    # Grading spellings fold inside either kind, never across kinds.
    assert parse_query("Ohtani -psa10").excluded == ("psa 10",)
    assert parse_query('Ohtani -"psa10"').excluded == ('"psa 10"',)


def test_minus_only_excludes_at_the_start_of_a_word() -> None:
    for text in [
        "2023-24 Prizm Wembanyama",
        "Wemby X-Fractor",
        "Wemby - RC",
        "Wemby RC -",
        "Wemby-RC",
        "Jordan 1986-87 Fleer",
    ]:
        parsed = parse_query(text)
        assert parsed.operators is None, text
        assert parsed.card_text == text
    assert parse_query("Wemby -x-fractor").excluded == ("x-fractor",)


def test_parentheses_group_alternatives_only_with_a_comma() -> None:
    assert parse_query("Lot (5) Wemby").operators is None
    assert parse_query("Wemby (2023)").operators is None
    grouped = parse_query("Wemby (gold, orange ,red) refractor")
    assert grouped.any_of == (("gold", "orange", "red"),)
    assert grouped.card_text == "Wemby refractor"
    assert parse_query("Wemby (gold,red").operators is None  # never closed: plain text
    assert parse_query('Wemby -"(2)" -"(3)"').excluded == ('"(2)"', '"(3)"')


def test_quoted_phrases_name_the_card_and_keep_their_places() -> None:
    quoted = parse_query('"Shohei Ohtani" 2018 Topps Update')
    assert quoted.phrases == ("shohei ohtani",)
    assert normalize_card(quoted) == normalize_card("Shohei Ohtani 2018 Topps Update")
    swapped = [parse_query('"b c" x "a"'), parse_query('"a" x "b c"')]
    assert {q.card_text for q in swapped} == {"a x b c"}


def test_an_unclosed_quote_runs_to_the_end() -> None:
    parsed = parse_query('Ohtani "psa 10')
    assert parsed.phrases == ("psa 10",)
    assert normalize_card(parsed) == "ohtani-psa_10"
    assert parse_query('Ohtani ""').operators is None


def test_wildcards_are_operators_and_their_stem_names_the_card() -> None:
    parsed = parse_query("Wemb* Prizm")
    assert parsed.wildcards == ("wemb*",)
    assert normalize_card(parsed) == "wemb-prizm"


def test_plain_queries_keep_their_text_and_identifier() -> None:
    known = {
        "2023 Topps Chrome Victor Wembanyama #1 RC": "2023-topps-chrome-victor-wembanyama-1-rc",
        "Shohei Ohtani 2018 Topps Update #US1 PSA10": "shohei-ohtani-2018-topps-update-us-1-psa_10",
        "Jordan Gold Refractor 23/50 Auto": "jordan-gold-refractor-pr_50-auto",
        "Pokemon Base Set Charizard 4/102": "pokemon-base-set-charizard-4_102",
    }
    for text, identifier in known.items():
        parsed = parse_query(text)
        assert parsed == SearchQuery(text=text, card_text=text)
        assert parsed.operators is None
        assert normalize_card(parsed) == normalize_card(text) == identifier


def test_a_search_box_query_with_every_checkbox_ticked() -> None:
    text = ui_query(BASE, *ALL_GROUPS)
    assert 2_500 <= len(text) <= 2_700
    parsed = parse_query(text)
    assert parsed.card_text == BASE
    assert normalize_card(parsed) == normalize_card(BASE) == "2024-topps-chrome-shohei-ohtani-1"
    assert not parsed.phrases and not parsed.any_of and not parsed.wildcards
    # Repeats (-lot, -blue, -gold in two groups; -SP and -sp; -"psa10" and -"psa 10") fold.
    assert "lot" in parsed.excluded and "sp" in parsed.excluded and "SP" not in parsed.excluded
    assert '"psa 10"' in parsed.excluded and '"psa10"' not in parsed.excluded
    assert '"(2)"' in parsed.excluded and "x-fractor" in parsed.excluded
    assert len(parsed.excluded) == len(set(parsed.excluded)) < sum(map(len, ALL_GROUPS))
    assert len(normalize_card(parsed)) <= MAX_IDENTIFIER_LENGTH


def test_checkbox_order_does_not_matter_but_each_checkbox_does() -> None:
    groups = ALL_GROUPS
    every = parse_query(ui_query(BASE, *groups)).operators
    assert parse_query(ui_query(BASE, *reversed(groups))).operators == every
    shuffled = [term for group in groups for term in group]
    random.Random(7).shuffle(shuffled)
    assert parse_query(f"{BASE} {' '.join(shuffled)}").operators == every
    seen = {every}
    for left_out in range(len(groups)):
        fewer = parse_query(ui_query(BASE, *(g for i, g in enumerate(groups) if i != left_out)))
        assert fewer.operators not in seen
        seen.add(fewer.operators)
    assert parse_query(BASE).operators is None


def test_the_longest_accepted_query() -> None:
    terms = " ".join(f"-term{i:04d}" for i in range(600))
    text = f"{BASE} {terms}"[:MAX_QUERY_LENGTH]
    assert len(text) == MAX_QUERY_LENGTH == 5_000
    assert normalize_card(parse_query(text)) == normalize_card(BASE)
    plain = ("wemby " * 1_000)[:MAX_QUERY_LENGTH]
    assert len(normalize_card(plain)) <= MAX_IDENTIFIER_LENGTH
    with pytest.raises(InvalidInputError) as info:
        parse_query(text + "x")
    assert info.value.field == "query"


@pytest.mark.parametrize("text", ["-auto", "-auto -signed", '-"psa 10"', "(a,b)", "-(a,b) -c"])
def test_a_query_with_no_card_outside_its_operators_is_rejected(text: str) -> None:
    assert parse_query(text).has_operators
    with pytest.raises(InvalidInputError) as info:
        normalize_card(text)
    assert info.value.field == "query"


@pytest.mark.parametrize("text", ["", "   ", "Wemby\x00 -auto", 42, None])
def test_bad_text_is_rejected(text: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_query(text)  # type: ignore[arg-type]
    assert info.value.field == "query"


def test_the_examples_in_the_docs_hold() -> None:
    blocks = re.findall(r"```python\n(>>> .*?)```", PRICING_DOC.read_text(), re.DOTALL)
    assert any("parse_query" in block for block in blocks)
    runner = doctest.DocTestRunner()
    parser = doctest.DocTestParser()
    for index, block in enumerate(blocks):
        names = {"normalize_card": normalize_card, "parse_query": parse_query}
        runner.run(parser.get_doctest(block, names, f"pricing.md#{index}", None, 0))
    assert runner.summarize(verbose=False).failed == 0
    for module in (query, cards):
        assert doctest.testmod(module).failed == 0


# ---------------------------------------------------------------------------- properties

_WORD = st.from_regex(r"[A-Za-z][a-z0-9]{1,7}", fullmatch=True)
_PHRASE = st.lists(_WORD, min_size=1, max_size=3).map(" ".join)
_EXCLUSION = st.one_of(_WORD.map(lambda w: f"-{w}"), _PHRASE.map(lambda p: f'-"{p}"'))


def _identity(text: str) -> tuple[str, str | None]:
    parsed = parse_query(text)
    return normalize_card(parsed), parsed.operators


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_WORD, min_size=1, max_size=5),
    st.lists(_EXCLUSION, min_size=1, max_size=12),
    st.randoms(use_true_random=False),
)
def test_moving_or_reordering_exclusions_never_changes_identity(
    card: list[str], exclusions: list[str], rng: random.Random
) -> None:
    first = " ".join([*card, *exclusions])
    moved = list(exclusions)
    rng.shuffle(moved)
    tokens = list(card)
    for term in moved:  # scatter them between the card's words, keeping the card's order
        tokens.insert(rng.randint(0, len(tokens)), term)
    assert _identity(" ".join(tokens)) == _identity(first)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_PHRASE, min_size=2, max_size=5),
    st.lists(_WORD, max_size=3),
    st.randoms(use_true_random=False),
)
def test_reordering_quoted_phrases_never_changes_identity(
    phrases: list[str], words: list[str], rng: random.Random
) -> None:
    quoted = [f'"{p}"' for p in phrases]
    shuffled = list(quoted)
    rng.shuffle(shuffled)
    assert _identity(" ".join([*quoted, *words])) == _identity(" ".join([*shuffled, *words]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_WORD, min_size=2, max_size=8, unique_by=str.lower),
    st.data(),
)
def test_adding_or_removing_a_minus_sign_always_changes_identity(
    words: list[str], data: st.DataObject
) -> None:
    signs = data.draw(st.lists(st.booleans(), min_size=len(words), max_size=len(words)))
    signs[0] = False  # keep one word of the card
    flip = data.draw(st.integers(min_value=1, max_value=len(words) - 1))
    before = [f"-{w}" if minus else w for w, minus in zip(words, signs, strict=True)]
    after = list(before)
    after[flip] = words[flip] if signs[flip] else f"-{words[flip]}"
    assert _identity(" ".join(before)) != _identity(" ".join(after))


_OPERATOR_TEXT = st.text(
    alphabet=st.sampled_from([*'ab1 -"(),*#\t/.', "\u201c", "\u201d", "é", "\x00"]),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(_OPERATOR_TEXT)
def test_any_text_parses_or_fails_on_the_query_field(text: str) -> None:
    error: InvalidInputError | None = None
    try:
        parsed = parse_query(text)
        identifier = normalize_card(parsed)
    except InvalidInputError as exc:
        error = exc
    if error is not None:
        assert error.field == "query"
        return
    assert parsed.text == text
    if not parsed.has_operators:
        assert parsed.card_text == text
    assert 0 < len(identifier) <= MAX_IDENTIFIER_LENGTH
    assert parse_query(text) == parsed
