"""ResultIdentity: which searches may share one stored result (pure, no servers)."""

from __future__ import annotations

import pytest

import kuya_store as ks
from kuya_store.answering import levels
from kuya_store.keys import MAX_QUERY_LENGTH, ResultIdentity, validate_query
from kuya_store.pricing import parse_query

SOLD = ks.SearchType.SOLD

# result_key values written by the store before operators were part of the identity:
# results stored under them (database rows, Redis entries) must keep answering.
PINNED = [
    (
        "2023 Topps Chrome Victor Wembanyama #1 RC",
        {"pages": 3, "sort_by": "date_desc"},
        None,
        "bc45d86f88b03caca8e0eaedc8d05b00bc04ac93afb2240c2e780d059fb2bddc",
        "e7974d38c4396a14362b018351b59429",
    ),
    (
        "Shohei Ohtani 2018 Topps Update #US1 PSA10",
        {},
        None,
        "6da4d32cd64073ae75ca18bc05b4759f401e207c54e5dddbeab09dc1cfc4b79d",
        "d899b17b713d80eb34b919bf68a1fa86",
    ),
    (
        "Jordan Gold Refractor 23/50 Auto",
        {"pages": 1},
        ks.SearchFilters(raw_only=True),
        "2a5c1b147c59f54312c00e04d131c1f49aae518e03dcd7eb239bec2acf6f432d",
        "c25557b1bafe7f2777607afabf3f87db",
    ),
]


@pytest.mark.parametrize(("query", "params", "filters", "result_key", "card_key"), PINNED)
def test_plain_queries_keep_the_keys_they_were_stored_under(
    query: str,
    params: ks.models.Params,
    filters: ks.SearchFilters | None,
    result_key: str,
    card_key: str,
) -> None:
    by_query = ResultIdentity.of_query(query, SOLD, params, filters)
    by_card = ResultIdentity.of(ks.normalize_card(query), SOLD, params, filters)
    assert by_query == by_card
    assert by_query.operators is None
    assert by_query.result_key == result_key
    assert by_query.card_key == card_key
    assert by_query.redis_key("kuya") == f"kuya:v1:r:{{{card_key}}}:sold:{result_key}"


@pytest.mark.parametrize(
    ("narrowed", "wanted"),
    [
        ("Ohtani -auto -signed", "Ohtani auto signed"),
        ("Ohtani -auto", "Ohtani"),
        ("Ohtani -psa", "Ohtani psa"),
        ('Ohtani -"psa 10"', "Ohtani PSA 10"),
        ('Ohtani "psa 10"', "Ohtani PSA 10"),
        ("Ohtani -auto", "Ohtani -signed"),
    ],
)
def test_a_narrowed_search_never_shares_a_result_with_another(narrowed: str, wanted: str) -> None:
    a = ResultIdentity.of_query(narrowed, SOLD, {"pages": 3})
    b = ResultIdentity.of_query(wanted, SOLD, {"pages": 3})
    assert a != b
    assert a.result_key != b.result_key
    assert a.redis_key("kuya") != b.redis_key("kuya")
    assert a.redis_lock_key("kuya") != b.redis_lock_key("kuya")


def test_every_variant_of_a_card_is_invalidated_together() -> None:
    variants = ["Ohtani", "Ohtani -auto", "Ohtani -auto -signed", 'Ohtani -"psa 10"', "-psa Ohtani"]
    identities = [ResultIdentity.of_query(text, SOLD, {}) for text in variants]
    assert {identity.card_identifier for identity in identities} == {"ohtani"}
    assert len({identity.card_key for identity in identities}) == 1
    assert len({identity.result_key for identity in identities}) == len(variants)
    assert identities[0].card_key != ResultIdentity.of_query("Ohtani auto", SOLD, {}).card_key


def test_equivalent_spellings_share_one_result() -> None:
    spellings = [
        'Ohtani -signed -auto -"PSA10"',
        'OHTANI  -auto -"psa 10" -signed -auto',
        '-"psa  10" Ohtani -AUTO -Signed',
    ]
    keys = {ResultIdentity.of_query(text, SOLD, {}).result_key for text in spellings}
    assert len(keys) == 1


def test_operators_count_next_to_params_and_upstream_filters() -> None:
    parsed = parse_query("Ohtani -auto")
    base = ResultIdentity.of_query(parsed, SOLD, {})
    assert base == ResultIdentity.of("ohtani", SOLD, {}, None, parsed.operators)
    others = [
        ResultIdentity.of_query(parsed, SOLD, {"pages": 2}),
        ResultIdentity.of_query(parsed, SOLD, {}, ks.SearchFilters(raw_only=True)),
        ResultIdentity.of_query(parsed, ks.SearchType.ACTIVE, {}),
        ResultIdentity.of("ohtani", SOLD, {}),
    ]
    assert len({base.result_key, *(other.result_key for other in others)}) == 5


_GRADERS = ["psa", "bgs", "sgc", "cgc", "csg", "hga", "gma", "ksa", "tag", "isa"]
_GRADES = ["10", "9.5", "9", "8.5", "8", "7", "6", "5"]
_COLOURS = "red blue green gold orange purple pink aqua black white yellow magenta sepia teal"
# What a price app's "ungraded only", "no lots" and "base only" boxes append to the text.
_CHECKBOXES = [
    [f"-{g}" for g in _GRADERS]
    + [f'-"{g} {n}"' for g in _GRADERS for n in _GRADES]
    + [f'-"{g.upper()}{n}"' for g in _GRADERS for n in _GRADES]
    + [f'-"{g} graded"' for g in _GRADERS],
    ["-lot", "-bulk", "-bundle", *(f'-"({n})"' for n in range(2, 21))]
    + [f'-"{n} cards"' for n in range(2, 21)]
    + [f'-"{n} card"' for n in range(2, 21)],
    ["-refractor", "-x-fractor", "-prizm", "-silver", "-SP", "-sp", "-lot"]
    + [f"-{colour}" for colour in _COLOURS.split()],
]


def test_the_identity_of_a_search_box_query_with_every_checkbox_ticked() -> None:
    base = "2024 Topps Chrome Shohei Ohtani #1"
    text = " ".join([base, *(term for box in _CHECKBOXES for term in box)])
    assert 2_400 <= len(text) <= 2_800
    identity = ResultIdentity.of_query(validate_query(text), SOLD, {"pages": 1})
    assert identity.card_identifier == ks.normalize_card(base)
    assert identity.card_key == ResultIdentity.of_query(base, SOLD, {}).card_key
    assert len(identity.result_key) == 64
    assert identity.result_key != ResultIdentity.of_query(base, SOLD, {"pages": 1}).result_key
    reordered = " ".join([base, *(term for box in reversed(_CHECKBOXES) for term in box)])
    assert ResultIdentity.of_query(reordered, SOLD, {"pages": 1}) == identity
    fewer = " ".join([base, *(term for box in _CHECKBOXES[1:] for term in box)])
    assert ResultIdentity.of_query(fewer, SOLD, {"pages": 1}) != identity


def test_queries_up_to_five_thousand_characters_are_accepted() -> None:
    assert MAX_QUERY_LENGTH == 5_000
    longest = ("Ohtani " + "-x " * 2_000)[:MAX_QUERY_LENGTH]
    assert validate_query(longest) == longest.strip()
    with pytest.raises(ks.InvalidInputError) as info:
        validate_query("x" * (MAX_QUERY_LENGTH + 1))
    assert info.value.field == "query"


def test_levels_keep_params_of_equal_value_but_another_type_apart() -> None:
    # 1, 1.0 and True are equal and hash alike: a memo keyed on values alone would hand
    # one of them the stored result of another (the store memoises a search's levels).
    wanted = ks.SearchFilters()
    keys = {
        levels("ohtani", ks.SearchType.SOLD, wanted, {"pages": v}, filter_upstream=False)[
            -1
        ].identity.result_key
        for v in (1, 1.0, True, "1")
    }
    assert len(keys) == 4


def test_levels_are_a_fresh_list_each_time() -> None:
    wanted = ks.SearchFilters(raw_only=True)
    first = levels("ohtani -auto", ks.SearchType.SOLD, wanted, {}, filter_upstream=False)
    names = [level.name for level in first]
    first.clear()
    again = levels("ohtani -auto", ks.SearchType.SOLD, wanted, {}, filter_upstream=False)
    assert [level.name for level in again] == names == ["base", "exact", "narrowed"]


def test_an_identity_s_keys_are_worked_out_once_and_match_a_fresh_identity() -> None:
    one = ResultIdentity.of("ohtani", ks.SearchType.ACTIVE, {"pages": 2}, ks.SearchFilters())
    two = ResultIdentity.of("ohtani", ks.SearchType.ACTIVE, {"pages": 2}, ks.SearchFilters())
    assert one == two and hash(one) == hash(two)
    assert (one.result_key, one.card_key) == (two.result_key, two.card_key)
    assert len(one.result_key) == 64 and len(one.card_key) == 32
    assert "result_key" not in repr(one)
