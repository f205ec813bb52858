"""Held results are compacted: equal to what was stored, sharing only what cannot change."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pydantic
import pytest

import kuya_store as ks
from kuya_store.keys import ResultIdentity
from kuya_store.models import FetchStats, PriceSnapshot
from kuya_store.stored import StoredResult, decode, encode
from kuya_store.tiers import compact as compacting
from kuya_store.tiers.compact import compact
from kuya_store.tiers.memory import MemoryTier
from kuya_store.tiers.near import NearCache

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
TTL = timedelta(minutes=5)


def _listing(card: str, i: int, **fields: Any) -> ks.Listing:
    given: dict[str, Any] = {
        "item_id": f"{card}-{i}",
        "title": f"2023 Topps Chrome {card} #{i}",
        "price": Decimal("10.50") + i,
        "listing_type": "auction",
        "condition": "Used",
        "sold": True,
        "sold_date": NOW - timedelta(days=i),
        "bids": 3,
        "watchers": 0,
        "extra": {"link": f"https://m.example/{card}/{i}", "seller": "seller42", "n": [1, 2]},
    }
    given.update(fields)
    return ks.Listing(**{k: v for k, v in given.items() if v is not ...})


def _result(card: str, listings: list[ks.Listing] | None = None) -> StoredResult:
    return StoredResult(
        query=card,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        params={"pages": 2, "sort_by": "date_desc"},
        listings=listings if listings is not None else [_listing(card, i) for i in range(4)],
        fetched_at=NOW,
        pages_scraped=2,
        snapshot=PriceSnapshot(
            card_identifier=card,
            snapshot_date=NOW.date(),
            market_value=Decimal("12.00"),
            parallel_analysis={"base": {"count": 4, "median": "12.00"}},
        ),
        stats=FetchStats(items_scraped=5, duplicates_removed=1),
        complete=True,
        fresh_until=NOW + TTL,
    )


def _mixed(card: str) -> StoredResult:
    """Listings given different fields: defaults left unset, ``None`` given, no display data."""
    return _result(
        card,
        [
            _listing(card, 0),
            _listing(card, 1, condition=..., bids=..., watchers=..., extra=...),
            _listing(card, 2, listing_type=None, sold_date=None, extra={}),
            ks.Listing(item_id=f"{card}-3", title="lot of 3", price=Decimal("7.5")),
        ],
    )


def _types(model: pydantic.BaseModel) -> dict[str, type]:
    return {name: type(value) for name, value in model.__dict__.items()}


@pytest.mark.parametrize("decoded", [False, True], ids=["built", "decoded"])
def test_a_compacted_result_is_equal_in_every_way(decoded: bool) -> None:
    original = _mixed("wemby")
    if decoded:
        original = decode(encode(original))
    held = compact(original)
    assert held == original and held is not original
    assert held.model_dump() == original.model_dump()
    assert held.model_dump(exclude_unset=True) == original.model_dump(exclude_unset=True)
    assert held.model_dump_json() == original.model_dump_json()
    assert decode(encode(held)) == original
    assert type(held) is StoredResult and _types(held) == _types(original)
    assert held.model_fields_set == original.model_fields_set
    for mine, theirs in zip(held.listings, original.listings, strict=True):
        assert type(mine) is ks.Listing and _types(mine) == _types(theirs)
        assert mine.model_fields_set == theirs.model_fields_set
        assert str(mine.price) == str(theirs.price)  # "7.5" stays "7.5", not "7.50"
    assert held.snapshot == original.snapshot and held.stats == original.stats


def test_listings_given_the_same_fields_share_one_set_of_names_across_results() -> None:
    one, two = compact(_mixed("a")), compact(decode(encode(_mixed("b"))))
    assert one.listings[0].model_fields_set is two.listings[0].model_fields_set
    assert one.listings[0].model_fields_set is not one.listings[1].model_fields_set
    assert compact(decode(encode(one))).model_fields_set is two.model_fields_set
    # Repeated short strings are one object each; unique ones stay the listing's own.
    assert one.listings[0].condition is two.listings[0].condition
    assert one.listings[0].extra["seller"] is two.listings[0].extra["seller"]
    assert one.card_identifier is one.query


def test_a_held_result_stays_frozen() -> None:
    held = compact(_result("wemby"))
    with pytest.raises(pydantic.ValidationError):
        held.listings[0].price = Decimal("1.00")  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        held.query = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        held.snapshot.market_value = None  # type: ignore[misc,union-attr]
    assert held == _result("wemby")


def test_the_shared_names_refuse_change_and_copies_are_their_own() -> None:
    one, two = compact(_result("a")), compact(_result("b"))
    names = one.listings[0].model_fields_set
    before = set(names)
    for change in (
        lambda: names.add("title"),
        lambda: names.discard("title"),
        lambda: names.clear(),
        lambda: names.update({"x"}),
        lambda: names.__ior__({"x"}),
    ):
        with pytest.raises(TypeError):
            change()
    assert two.listings[3].model_fields_set == before
    # pydantic's own copies get a set of their own, which may change.
    changed = one.listings[0].model_copy(update={"bids": 9})
    assert changed.bids == 9 and "bids" in changed.model_fields_set
    assert type(changed.model_fields_set) is set
    for other in (copy.copy(one.listings[0]), copy.deepcopy(one.listings[0])):
        assert other == one.listings[0] and type(other.model_fields_set) is set
    revived = pickle.loads(pickle.dumps(one))
    assert revived == one and revived.listings[0].model_fields_set == before
    assert two.listings[0].model_fields_set == before and one.listings[0].bids == 3


def test_display_data_is_never_shared_between_entries_or_with_the_caller() -> None:
    original = _mixed("wemby")
    first, second = compact(original), compact(original)
    for i in range(4):
        assert first.listings[i].extra is not second.listings[i].extra
        assert first.listings[i].extra is not original.listings[i].extra
    first.listings[0].extra["seller"] = "changed"
    first.listings[2].extra["added"] = True  # an empty one too
    original.listings[3].extra["added"] = True
    assert second.listings[0].extra["seller"] == "seller42"
    assert second.listings[2].extra == {} and first.listings[3].extra == {}
    assert first.params is not original.params


def test_past_the_bound_of_combinations_names_are_copied_not_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compacting, "_field_names", {})
    monkeypatch.setattr(compacting, "_MAX_COMBINATIONS", 0)
    original = _result("wemby")
    held = compact(original)
    assert held == original
    names = held.listings[0].model_fields_set
    assert type(names) is set and names is not held.listings[1].model_fields_set


async def test_the_memory_tier_and_the_near_cache_hold_compacted_results() -> None:
    clock = ks.ManualClock(NOW)
    tier = MemoryTier(10, clock, max_bytes=10**8)
    near = NearCache(MemoryTier(10, clock, max_bytes=10**8), TTL)
    for card in ("a", "b"):
        identity = ResultIdentity.of(card, ks.SearchType.SOLD, {"pages": 2})
        await tier.set(identity, decode(encode(_result(card))), TTL)
        await near.set(identity, decode(encode(_result(card))), TTL, near.ticket(identity))
    for held_in in (tier, near):
        one, two = [
            await held_in.get(ResultIdentity.of(card, ks.SearchType.SOLD, {"pages": 2}))
            for card in ("a", "b")
        ]
        assert one == _result("a") and two == _result("b")
        assert one is not None and two is not None
        assert one.listings[0].model_fields_set is two.listings[1].model_fields_set


def test_the_memo_of_shared_texts_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compacting, "_texts", {})
    monkeypatch.setattr(compacting, "_MAX_TEXTS", 3)
    listings = [_listing("wemby", i, extra={"seller": f"seller{i}"}) for i in range(10)]
    original = _result("wemby", listings)
    held = compact(original)
    assert held == original and len(compacting._texts) <= 3
    assert [x.extra["seller"] for x in held.listings] == [f"seller{i}" for i in range(10)]


def test_a_result_built_without_validation_compacts_too() -> None:
    # What a faster decode may hand over: models made with ``model_construct``.
    original = _result("wemby")
    listings = [ks.Listing.model_construct(**x.model_dump()) for x in original.listings]
    built = StoredResult.model_construct(**{**dict(original), "listings": listings})
    held = compact(built)
    assert held == original and held.model_dump_json() == original.model_dump_json()
    assert held.listings[0].model_fields_set is compact(original).listings[0].model_fields_set


def test_listings_given_alternating_fields_each_get_the_set_of_their_own_names() -> None:
    # One result mixing combinations back and forth, and listings that are held already.
    plain = _listing("wemby", 0)
    bare = ks.Listing(item_id="wemby-b", title="lot", price=Decimal("2"))
    held = compact(_result("other")).listings[0]
    listings = [plain, bare, plain, held, bare, held, plain]
    result = compact(_result("wemby", listings))
    assert result == _result("wemby", listings)
    for mine, theirs in zip(result.listings, listings, strict=True):
        assert mine.model_fields_set == theirs.model_fields_set
        assert type(mine.model_fields_set) is compacting._SharedNames
    names = [x.model_fields_set for x in result.listings]
    assert names[0] is names[2] is names[3] is names[5] is names[6] is held.model_fields_set
    assert names[1] is names[4] and names[1] is not names[0]
