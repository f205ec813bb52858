"""normalize_card: one identifier per card, never one for two cards."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuya_store.errors import InvalidInputError
from kuya_store.pricing import normalize_card
from kuya_store.pricing.cards import MAX_IDENTIFIER_LENGTH, MAX_QUERY_LENGTH

SAME_CARD = [
    (
        "2023 Topps Chrome Victor Wembanyama #1 RC",
        "2023 topps chrome  victor wembanyama 1 rookie",
        "2023 TOPPS CHROME VICTOR WEMBANYAMA #1 ROOKIE CARD",
        "2023 Topps Chrome Victor Wembanyama RC #1",
        "🔥 2023 Topps Chrome Victor Wembanyama #1 RC L@@K",
        "2023 Topps Chrome Victor Wembanyama #001 RC",
    ),
    (
        "Pokémon Base Set Charizard 4/102",
        "POKEMON base set charizard 4/102",
        "pokemon base set charizard #4/102",
    ),
    (
        "2020 Prizm Justin Herbert Silver /99",
        "2020 Prizm Justin Herbert Silver #/99",
        "2020 Prizm Justin Herbert Silver 23/99",
        "2020 prizm justin herbert silver numbered to 99",
    ),
    (
        "2018 Bowman Chrome Ohtani Auto Refractor",
        "2018 Bowman Chrome Ohtani Autograph Ref",
        "2018 Bowman Chrome Ohtani Signed Refractor",
        "2018 bowman chrome ohtani autographed refractors",
    ),
    (
        "2019 Bowman Chrome Wander Franco BCP-100",
        "2019 Bowman Chrome Wander Franco BCP100",
        "2019 Bowman Chrome Wander Franco BCP 100",
    ),
    (
        "2023-24 Prizm Wembanyama RPA",
        "2023/24 Prizm Wembanyama Rookie Patch Auto",
        "2023-2024 Prizm Wembanyama RC Patch Autograph",
    ),
    ("Shaquille O'Neal 1992 Fleer", "Shaquille O’Neal 1992 Fleer", "shaquille oneal 1992 fleer"),
    ("A.J. Green 2011 Topps", "AJ Green 2011 Topps", "a.j. green 2011 topps"),
    (
        "Ken Griffey Jr. 1989 Upper Deck #1 PSA 10",
        "ken griffey jr 1989 upper deck 1 psa10",
        "Ken Griffey Jr 1989 Upper Deck #1 PSA GEM MINT 10",
        "Ken Griffey Jr 1989 Upper Deck #1 PSA 10 Gem Mt",
    ),
    ("Luka Doncic Prizm BGS 9.5", "luka doncic prizm beckett 9.5"),
    ("Topps Chrome Wemby X-Fractor", "Topps Chrome Wemby Xfractor", "topps chrome wemby x fractor"),
    ("Pokemon Lugia Reverse Holo", "Pokemon Lugia Rev Holo", "pokemon lugia reverse holofoil"),
    ("Jordan Black 1/1", "Jordan Black one of one", "Jordan Black 1 of 1"),
    (
        "Blue-Eyes White Dragon 1st Edition",
        "Blue Eyes White Dragon First Edition",
        "blue-eyes white dragon 1st ed",
    ),
]

DIFFERENT_CARDS = [
    "2023 Topps Chrome Victor Wembanyama #1 RC",
    "2022 Topps Chrome Victor Wembanyama #1 RC",
    "2023 Topps Victor Wembanyama #1 RC",
    "2023 Topps Chrome Update Victor Wembanyama #1 RC",
    "2023 Topps Chrome Victor Wembanyama #2 RC",
    "2023 Topps Chrome Victor Wembanyama #10 RC",
    "2023 Topps Chrome Chet Holmgren #1 RC",
    "2023 Topps Chrome Victor Wembanyama #1",
    "2023 Topps Chrome Victor Wembanyama #1 RC Refractor",
    "2023 Topps Chrome Victor Wembanyama #1 RC Gold Refractor",
    "2023 Topps Chrome Victor Wembanyama #1 RC Silver",
    "2023 Topps Chrome Victor Wembanyama #1 RC /99",
    "2023 Topps Chrome Victor Wembanyama #1 RC /25",
    "2023 Topps Chrome Victor Wembanyama #1 RC 1/1",
    "2023 Topps Chrome Victor Wembanyama #1 RC Auto",
    "2023 Topps Chrome Victor Wembanyama #1 RC PSA 10",
    "2023 Topps Chrome Victor Wembanyama #1 RC PSA 9",
    "2023 Topps Chrome Victor Wembanyama #1 RC BGS 9.5",
    "2023 Topps Chrome Victor Wembanyama #1 RC BGS 9",
    "2023 Topps Chrome Victor Wembanyama #1 RC SGC 10",
    "2023 Topps Chrome Victor Wembanyama #1 RC PSA 10 /99",
    "2023-24 Prizm Victor Wembanyama #136",
    "2023 Prizm Victor Wembanyama #136 #24",
    "2023 Prizm Victor Wembanyama #136 2024",
    "Pokemon Base Set Charizard 4/102",
    "Pokemon Base Set Charizard 4/102 Holo",
    "Pokemon Base Set 2 Charizard 4/130",
    "Pokemon 151 Charizard ex 199/165",
    "Pokemon 151 Charizard ex 006/165",
    "Pokemon 151 Charizard ex 183/165",
    "Pokemon Base Set Blastoise 2/102",
    "Topps Series 1 #10 PSA 9",
    "Topps Series 1 #9 PSA 10",
    "1986 Fleer Michael Jordan #57",
    "1986 Fleer Michael Jordan #57 Sticker",
    "1986 Fleer Michael Jordan #57 Reprint",
    "2018 Topps Update Ohtani #US1",
    "2018 Topps Update Ohtani #US285",
    "2020 Prizm Herbert Silver",
    "2020 Prizm Herbert Red White Blue",
    "2020 Prizm Herbert Silver 12/25/2023",
    "2023 Topps Chrome Wemby Gold Refractor /50",
    "2023 Topps Chrome Wemby Gold Refractor /5",
    "2023 Topps Chrome Wemby Orange Refractor /25",
]


@pytest.mark.parametrize("group", SAME_CARD, ids=lambda g: g[0][:40])
def test_same_card_written_differently_maps_to_one_identifier(group: tuple[str, ...]) -> None:
    identifiers = {normalize_card(text) for text in group}
    assert len(identifiers) == 1, identifiers


def test_the_issue_example() -> None:
    assert normalize_card("2023 Topps Chrome Victor Wembanyama #1 RC") == normalize_card(
        "2023 topps chrome  victor wembanyama 1 rookie"
    )


def test_different_cards_never_collide() -> None:
    identifiers = [normalize_card(text) for text in DIFFERENT_CARDS]
    for (a, ia), (b, ib) in itertools.combinations(
        zip(DIFFERENT_CARDS, identifiers, strict=True), 2
    ):
        assert ia != ib, (a, b, ia)


def test_groups_do_not_collide_with_each_other() -> None:
    firsts = {normalize_card(group[0]) for group in SAME_CARD}
    assert len(firsts) == len(SAME_CARD)


@pytest.mark.parametrize(
    "text", ["", "   ", "\n\t", "Wemby\x00RC", "x" * (MAX_QUERY_LENGTH + 1), "🔥🔥🔥", "!!! ###"]
)
def test_bad_queries_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        normalize_card(text)
    assert info.value.field == "query"


def test_non_string_is_rejected() -> None:
    with pytest.raises(InvalidInputError):
        normalize_card(123)  # type: ignore[arg-type]


def test_ascii_folding_and_examples() -> None:
    assert normalize_card("Pokémon Ñandú") == "pokemon-nandu"
    assert normalize_card("2023-24 Panini Prizm Wembanyama Silver Prizm #136 RC PSA 10") == (
        "2023_24-panini-prizm-wembanyama-silver-prizm-136-rc-psa_10"
    )
    assert normalize_card("Jordan Gold Refractor 23/50 Auto") == "jordan-gold-refractor-pr_50-auto"
    assert normalize_card("Wemby BGS 9.5 Gem Mint") == "wemby-bgs_9.5"
    assert normalize_card("2023 Topps Chrome Wemby #1 RC 12/25/2023") == (
        "2023-topps-chrome-wemby-1-12-25-2023-rc"
    )


def test_long_queries_are_bounded_and_still_distinct() -> None:
    a = normalize_card(" ".join(["word"] * 90) + " alpha")
    b = normalize_card(" ".join(["word"] * 90) + " beta")
    assert len(a) <= MAX_IDENTIFIER_LENGTH and len(b) <= MAX_IDENTIFIER_LENGTH
    assert a != b


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=500))
def test_any_text_gives_a_safe_identifier_or_a_clear_error(text: str) -> None:
    try:
        identifier = normalize_card(text)
    except InvalidInputError as exc:
        error: InvalidInputError | None = exc
    else:
        error = None
    if error is not None:
        assert error.field == "query"
        return
    assert re.fullmatch(r"[a-z0-9._-]+", identifier), identifier
    assert 0 < len(identifier) <= MAX_IDENTIFIER_LENGTH
    assert identifier.isascii()
    assert normalize_card(text) == identifier
