"""The read path's decisions, as plain code without servers.

- How long a tier keeps a copy: its TTL, never past the result's freshness nor its
  display data's ``display_ttl``, never negative.
- Invalidation fences: a copy fetched at or before a card's fence never answers; fences
  only move forward when heard from another worker, and expire after ``max_stale``.
- What a search asks for is validated once per plain-valued arguments, types kept apart.
- The records written behind: a hit's row, and a paid fetch whose card was invalidated
  meanwhile points at no result.
- An answer's snapshot values exactly what it shows, each filtered valuation once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import kuya_store as ks
from kuya_store.answer_snapshots import AnswerSnapshots
from kuya_store.answering import levels
from kuya_store.asking import AskedSearches, ask, asked_key
from kuya_store.fences import Fences
from kuya_store.freshness import copy_ttl
from kuya_store.keys import ResultIdentity
from kuya_store.models import Listing, PriceSnapshot, SearchFilters, SearchType
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.pricing import DefaultValuator
from kuya_store.recording import fetch_record, hit_record
from kuya_store.stored import StoredResult

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SOLD = SearchType.SOLD
MIN = timedelta(minutes=1)


def _listing(item_id: str, title: str, price: str = "10.00") -> Listing:
    return Listing(
        item_id=item_id, title=title, price=Decimal(price), sold=True, sold_date=NOW - MIN
    )


def _result(card: str = "ohtani", at: datetime = NOW, **fields: Any) -> StoredResult:
    values: dict[str, Any] = {
        "query": card,
        "card_identifier": card,
        "search_type": SOLD,
        "params": {},
        "listings": [_listing("1", f"{card} base"), _listing("2", f"{card} auto", "30.00")],
        "fetched_at": at,
        **fields,
    }
    return StoredResult(**values)


# -- how long a copy is kept -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fresh_left", "shown_left", "tier_ttl", "kept"),
    [
        (30 * MIN, None, 10 * MIN, 10 * MIN),  # the tier's own TTL
        (3 * MIN, None, 10 * MIN, 3 * MIN),  # never past freshness
        (30 * MIN, 2 * MIN, 10 * MIN, 2 * MIN),  # never past the display data's rule
        (1 * MIN, 2 * MIN, 10 * MIN, 1 * MIN),
        (-5 * MIN, None, 10 * MIN, timedelta(0)),  # already stale: not kept at all
        (30 * MIN, -1 * MIN, 10 * MIN, timedelta(0)),  # display data already expired
        (30 * MIN, 2 * MIN, timedelta(0), timedelta(0)),
    ],
)
def test_a_copy_is_kept_for_the_shortest_of_its_bounds_and_never_negative(
    fresh_left: timedelta, shown_left: timedelta | None, tier_ttl: timedelta, kept: timedelta
) -> None:
    assert copy_ttl(fresh_left, shown_left, tier_ttl) == kept


# -- invalidation fences ---------------------------------------------------------------------


class _Timer:
    def __init__(self) -> None:
        self.now = NOW.timestamp()

    def __call__(self) -> float:
        return self.now


def _fences(timer: _Timer | None = None) -> Fences:
    return Fences(timedelta(days=7), timer or _Timer())


def test_nothing_is_fenced_until_a_card_is_invalidated() -> None:
    fences = _fences()
    identity = ResultIdentity.of("ohtani", SOLD, {})
    assert not fences.any and not fences.fenced(identity, NOW - timedelta(days=365))


def test_a_fence_refuses_what_was_fetched_at_or_before_it_and_only_for_its_card() -> None:
    fences = _fences()
    identity = ResultIdentity.of("ohtani", SOLD, {})
    fences.put(identity.card_key, NOW)
    assert fences.any
    assert fences.fenced(identity, NOW) and fences.fenced(identity, NOW - MIN)
    assert not fences.fenced(identity, NOW + timedelta(microseconds=1))
    # Every variant of the card (params, filters) shares the fence; other cards do not.
    assert fences.fenced(ResultIdentity.of("ohtani", SOLD, {"pages": 3}), NOW - MIN)
    assert not fences.fenced(ResultIdentity.of("ohtani", SearchType.ACTIVE, {}), NOW - MIN)
    assert not fences.fenced(ResultIdentity.of("judge", SOLD, {}), NOW - MIN)


def test_a_fence_heard_from_another_worker_only_moves_forward() -> None:
    fences = _fences()
    identity = ResultIdentity.of("ohtani", SOLD, {})
    assert fences.learn(identity.card_key, NOW)
    assert not fences.learn(identity.card_key, NOW)  # a repeated message
    assert not fences.learn(identity.card_key, NOW - MIN)  # a late one never reopens it
    assert fences.fenced(identity, NOW)
    assert fences.learn(identity.card_key, NOW + MIN)
    assert fences.fenced(identity, NOW + MIN)


def test_a_fence_expires_after_max_stale_by_the_store_clock() -> None:
    timer = _Timer()
    fences = _fences(timer)
    identity = ResultIdentity.of("ohtani", SOLD, {})
    fences.put(identity.card_key, NOW)
    timer.now += timedelta(days=7).total_seconds() - 1
    assert fences.fenced(identity, NOW)
    timer.now += 2
    assert not fences.fenced(identity, NOW)
    assert fences.learn(identity.card_key, NOW - MIN)  # nothing held any more


def test_a_journal_record_is_fenced_by_its_card_and_fetch_moment() -> None:
    fences = _fences()
    stored = _result(at=NOW - MIN)
    asked = ask("ohtani", "sold", None, None, filter_upstream=False)
    (level,) = asked.chain
    record = fetch_record(
        asked, level, None, stored, 5, fenced=False, settings=ks.StoreSettings(), trace=None
    )
    assert not fences.record_fenced(record)
    fences.put(level.identity.card_key, NOW - timedelta(seconds=61))
    assert not fences.record_fenced(record)  # fetched after the invalidation
    fences.put(level.identity.card_key, NOW - MIN)
    assert fences.record_fenced(record)


# -- what a search asks for ------------------------------------------------------------------


def test_the_memo_key_keeps_equal_values_of_other_types_apart() -> None:
    keys = {asked_key("ohtani", "sold", None, {"pages": v}) for v in (1, 1.0, True, "1")}
    assert len(keys) == 4
    assert asked_key("ohtani", "sold", None, None) != asked_key("ohtani", SOLD, None, None)
    assert asked_key("ohtani", "sold", None, None) == asked_key("ohtani", "sold", None, {})


@pytest.mark.parametrize(
    ("query", "search_type", "filters", "params"),
    [
        (b"ohtani", "sold", None, None),  # not a str
        ("ohtani", 1, None, None),
        ("ohtani", "sold", {"raw_only": True}, None),  # a mapping, not SearchFilters
        ("ohtani", "sold", None, {"pages": [1]}),  # not a scalar
        ("ohtani", "sold", None, [("pages", 1)]),
    ],
)
def test_arguments_that_are_not_plain_values_are_not_remembered(
    query: object, search_type: object, filters: object, params: object
) -> None:
    assert asked_key(query, search_type, filters, params) is None


def test_a_remembered_search_is_the_same_validated_search_and_bad_input_still_fails() -> None:
    searches = AskedSearches(filter_upstream=False)
    first = searches.of("Ohtani -auto", "sold", SearchFilters(raw_only=True), {"pages": 2})
    assert searches.of("Ohtani -auto", "sold", SearchFilters(raw_only=True), {"pages": 2}) is first
    assert first.card == "ohtani" and first.kind is SOLD and first.options == {"pages": 2}
    expected = levels(
        "Ohtani -auto", SOLD, SearchFilters(raw_only=True), {"pages": 2}, filter_upstream=False
    )
    assert list(first.chain) == expected
    assert first.identity == next(x.identity for x in expected if x.name == "exact")
    # The card "ohtani", but never the stored result of "Ohtani".
    assert first.identity != searches.of("Ohtani", "sold", None, None).identity
    for _ in range(2):
        with pytest.raises(ks.InvalidInputError, match="query"):
            searches.of("ohtani\x00", "sold", None, None)
        with pytest.raises(ks.InvalidInputError, match="params"):
            searches.of("ohtani", "sold", None, {"pages": [1]})


# -- what is written behind ------------------------------------------------------------------


def test_a_hit_row_records_the_answer_not_the_fetch() -> None:
    asked = ask("Ohtani", "sold", SearchFilters(raw_only=True), {"pages": 2}, filter_upstream=False)
    stored = _result(at=NOW - 5 * MIN, pages_scraped=3)
    row = hit_record(asked, stored, 1, NOW, 7, 42, None)
    assert isinstance(row, SearchRecord)
    assert (row.query, row.card_identifier, row.search_type) == ("Ohtani", "ohtani", SOLD)
    assert row.filters == {"raw_only": True, "base_only": False, "exclude_auto": False}
    assert row.params == {"pages": 2} and row.user_id == 42
    assert row.created_at == NOW and row.execution_time_ms == 7 and row.cache_hit
    assert (row.pages_scraped, row.items_count, row.result_key) == (3, 1, None)


def test_a_paid_fetch_points_its_row_at_its_result_unless_fenced_meanwhile() -> None:
    settings = ks.StoreSettings()
    asked = ask("Ohtani -auto", "sold", None, None, filter_upstream=False)
    level = asked.chain[0]  # the card's whole result, "-auto" applied to its titles here
    assert level.name == "base"
    stored = _result(at=NOW - MIN, complete=True)
    kept = fetch_record(asked, level, 9, stored, 12, fenced=False, settings=settings, trace=None)
    assert isinstance(kept, FetchRecord)
    search = kept.search
    assert not search.cache_hit and search.created_at == NOW - MIN
    assert search.result_key == level.identity.result_key and search.complete is True
    assert search.items_count == len(level.listings(stored)) == 1  # "-auto" hides one
    assert search.execution_time_ms == 12 and search.user_id == 9
    assert kept.listing_ttl == NOW - MIN + settings.listing_refresh_after
    assert kept.result.listings == [x.metadata_only() for x in stored.listings]
    fenced = fetch_record(asked, level, 9, stored, 12, fenced=True, settings=settings, trace=None)
    assert fenced.search.result_key is None  # kept as history, answers nothing


# -- the snapshot of an answer ---------------------------------------------------------------


class _CountingValuator:
    def __init__(self) -> None:
        self.calls = 0
        self._inner = DefaultValuator()

    def value(self, card_identifier: str, listings: Any, **kwargs: Any) -> PriceSnapshot:
        self.calls += 1
        return self._inner.value(card_identifier, listings, **kwargs)


def test_an_answer_values_exactly_what_it_shows_once_per_filter_combination() -> None:
    valuator = _CountingValuator()
    snapshots = AnswerSnapshots(valuator)
    own = DefaultValuator().value("ohtani", _result().listings, snapshot_date=NOW.date(), now=NOW)
    stored = _result(snapshot=own)
    (whole,) = ask("ohtani", "sold", None, None, filter_upstream=False).chain
    assert snapshots.of(whole, stored, whole.listings(stored)) is own  # nothing hidden
    narrowed = ask("ohtani -auto", "sold", None, None, filter_upstream=False).chain[0]
    shown = narrowed.listings(stored)
    assert [x.item_id for x in shown] == ["1"]
    first = snapshots.of(narrowed, stored, shown)
    assert first is not None and first != own and valuator.calls == 1
    assert snapshots.of(narrowed, stored, shown) is first and valuator.calls == 1
    newer = _result(at=NOW + MIN, snapshot=own)  # another fetch: valued anew
    assert snapshots.of(narrowed, newer, narrowed.listings(newer)) is not first
    assert valuator.calls == 2
    active = _result(search_type=SearchType.ACTIVE)
    (level,) = ask("ohtani", "active", None, None, filter_upstream=False).chain
    assert snapshots.of(level, active, level.listings(active)) is None
