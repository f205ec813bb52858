"""apply_filters: every combination of the three flags over one fetched set."""

from __future__ import annotations

import itertools

import pytest

from kuya_store.models import Listing, SearchFilters
from kuya_store.pricing import apply_filters, parse_title

# (title, graded, base, autograph)
TITLES = [
    ("2023 Topps Chrome Victor Wembanyama #1 RC", False, True, False),
    ("2023 Topps Chrome Victor Wembanyama #1 RC PSA 10", True, True, False),
    ("2023 Topps Chrome Victor Wembanyama #1 RC Refractor", False, False, False),
    ("2023 Topps Chrome Victor Wembanyama #1 RC Gold Refractor /50 BGS 9.5", True, False, False),
    ("2023 Topps Chrome Victor Wembanyama RC Auto", False, False, True),
    ("2023 Topps Chrome Victor Wembanyama RC Auto PSA 9", True, False, True),
    ("2023 Topps Chrome Victor Wembanyama #1 RC PSA 10 candidate?", False, True, False),
    ("2023 Topps Chrome Victor Wembanyama #1 RC Non-Auto", False, True, False),
    ("2023 Topps Chrome Victor Wembanyama #1 RC lot of 3", False, False, False),
    ("2023 Topps Chrome Victor Wembanyama #1 RC Reprint", False, False, False),
]
LISTINGS = [
    Listing(item_id=f"i{n}", title=title, price=f"{10 + n}.00", sold=True)
    for n, (title, *_rest) in enumerate(TITLES)
]
FLAGS = list(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize(("raw_only", "base_only", "exclude_auto"), FLAGS)
def test_every_filter_combination(raw_only: bool, base_only: bool, exclude_auto: bool) -> None:
    filters = SearchFilters(raw_only=raw_only, base_only=base_only, exclude_auto=exclude_auto)
    expected = [
        listing
        for listing, (_, graded, base, auto) in zip(LISTINGS, TITLES, strict=True)
        if not (raw_only and graded)
        and not (base_only and not base)
        and not (exclude_auto and auto)
    ]
    got = apply_filters(LISTINGS, filters)
    assert got == expected
    # order preserved, and the result is a new list of the same objects
    assert [LISTINGS.index(item) for item in got] == sorted(LISTINGS.index(item) for item in got)
    assert all(any(item is original for original in LISTINGS) for item in got)


def test_no_flag_keeps_everything_and_empty_input() -> None:
    assert apply_filters(LISTINGS, SearchFilters()) == LISTINGS
    assert apply_filters([], SearchFilters(raw_only=True, base_only=True, exclude_auto=True)) == []


def test_labels_of_the_fixture_match_the_parser() -> None:
    for title, graded, base, auto in TITLES:
        info = parse_title(title)
        assert (info.graded, info.is_base, info.autograph) == (graded, base, auto), title


def test_all_three_flags_leave_only_raw_base_non_autos() -> None:
    got = apply_filters(LISTINGS, SearchFilters(raw_only=True, base_only=True, exclude_auto=True))
    assert [item.item_id for item in got] == ["i0", "i6", "i7"]
