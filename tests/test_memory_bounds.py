"""The in-process tiers are bounded in bytes as well as entries, and the estimate is close."""

from __future__ import annotations

import copy
import gc
import tracemalloc
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import kuya_store as ks
from kuya_store.keys import ResultIdentity
from kuya_store.stored import StoredResult, decode, encode
from kuya_store.tiers.compact import compact
from kuya_store.tiers.memory import MemoryTier
from kuya_store.tiers.sizing import approximate_size, display_size

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def _result(card: str, listings: int, title: str = "t", extra: int = 0) -> StoredResult:
    return StoredResult(
        query=card,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        params={"pages": 1},
        listings=[
            ks.Listing(
                item_id=f"{card}-{i}",
                title=f"{title} {card} #{i}",
                price=Decimal("10.00") + i,
                sold=True,
                sold_date=NOW,
                condition="Used",
                extra={
                    f"field{j}": f"https://img.example/{card}/{i}/{j}.jpg" for j in range(extra)
                },
            )
            for i in range(listings)
        ],
        fetched_at=NOW,
    )


def _identity(card: str) -> ResultIdentity:
    return ResultIdentity.of(card, ks.SearchType.SOLD, {"pages": 1})


def _measured(result: StoredResult) -> float:
    """Bytes a held copy of ``result`` takes (decoded, compacted), as ``tracemalloc`` sees them."""
    raw = encode(result)
    compact(decode(raw))  # the shared field-name sets exist before the reading
    gc.collect()
    tracemalloc.start()
    try:
        copies = [compact(decode(raw)) for _ in range(5)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(copies) == 5
    return held / 5


@pytest.mark.parametrize(
    ("listings", "title", "extra"),
    [
        (10, "2023 Topps Chrome Victor Wembanyama", 0),
        (10, "2023 Topps Chrome Victor Wembanyama", 3),
        (120, "2023 Topps Chrome Victor Wembanyama Rookie Refractor PSA 10 Gem Mint", 4),
        (120, "Ohtani \u5927\u8c37\u7fd4\u5e73 auto", 2),  # not ASCII: wider strings
        (300, "x" * 400, 10),
    ],
)
def test_the_size_estimate_is_within_a_fifth_of_what_python_holds(
    listings: int, title: str, extra: int
) -> None:
    result = _result("wemby", listings, title, extra)
    measured = _measured(result)
    estimate = approximate_size(result)
    assert abs(estimate - measured) / measured < 0.2, (estimate, measured)


def test_a_120_listing_result_with_display_data_is_counted_in_over_a_hundred_kib() -> None:
    # About 1 KiB a listing as held (compacted): the display data is most of it.
    assert 100 * 1024 < approximate_size(_result("wemby", 120, "a card title", 4)) < 400 * 1024


async def test_the_byte_bound_evicts_the_least_recently_used() -> None:
    one = approximate_size(_result("a", 20))
    tier = MemoryTier(1000, ks.ManualClock(NOW), max_bytes=int(one * 3.5))
    for card in "abc":
        await tier.set(_identity(card), _result(card, 20), timedelta(minutes=5))
    assert await tier.get(_identity("a")) is not None  # "b" is now the least recently used
    await tier.set(_identity("d"), _result("d", 20), timedelta(minutes=5))
    assert await tier.get(_identity("b")) is None
    assert all([await tier.get(_identity(c)) is not None for c in "acd"])
    assert len(tier) == 3 and tier.bytes <= tier.max_bytes and tier.evictions == 1
    # Many small results may take the room of one large one, and the other way round.
    await tier.set(_identity("big"), _result("big", 60), timedelta(minutes=5))
    assert await tier.get(_identity("big")) is not None
    assert tier.bytes <= int(one * 3.5) and len(tier) < 3


async def test_a_result_larger_than_the_bound_is_not_kept_and_drops_the_older_copy() -> None:
    small = _result("a", 1)
    tier = MemoryTier(10, ks.ManualClock(NOW), max_bytes=approximate_size(small) * 2)
    await tier.set(_identity("a"), small, timedelta(minutes=5))
    huge = _result("a", 200).model_copy(update={"fetched_at": NOW + timedelta(seconds=1)})
    assert await tier.set(_identity("a"), huge, timedelta(minutes=5)) is True
    assert await tier.get(_identity("a")) is None  # neither the huge one nor the older one
    assert tier.bytes == 0


async def test_bytes_are_given_back_on_replace_expiry_invalidate_and_clear() -> None:
    clock = ks.ManualClock(NOW)
    tier = MemoryTier(10, clock, max_bytes=10**9)
    await tier.set(_identity("a"), _result("a", 5), timedelta(seconds=10))
    newer = _result("a", 9).model_copy(update={"fetched_at": NOW + timedelta(seconds=1)})
    await tier.set(_identity("a"), newer, timedelta(seconds=10))
    assert tier.bytes == approximate_size(newer)
    await tier.set(_identity("b"), _result("b", 5), timedelta(seconds=10))
    await tier.invalidate(_identity("b"))
    assert tier.bytes == approximate_size(newer)
    clock.advance(11)
    assert await tier.get(_identity("a")) is None and tier.bytes == 0
    await tier.set(
        _identity("c"),
        _result("c", 5).model_copy(update={"fetched_at": clock()}),
        timedelta(seconds=10),
    )
    tier.clear()
    assert tier.bytes == 0 and len(tier) == 0


async def test_expired_entries_give_their_room_back_unread_and_evict_nothing_live() -> None:
    clock = ks.ManualClock(NOW)
    tier = MemoryTier(2, clock, max_bytes=10**9)
    await tier.set(_identity("old"), _result("old", 5), timedelta(seconds=5))
    await tier.set(_identity("live"), _result("live", 5), timedelta(minutes=5))
    clock.advance(6)
    # "old" was never read again: it holds neither an entry nor bytes once it expired.
    assert len(tier) == 1 and tier.bytes == approximate_size(_result("live", 5))
    later = _result("new", 5).model_copy(update={"fetched_at": clock()})
    await tier.set(_identity("new"), later, timedelta(minutes=5))
    # The expired entry made the room: the live one stays, and nothing counts as evicted.
    assert await tier.get(_identity("live")) is not None
    assert await tier.get(_identity("new")) is not None
    assert tier.evictions == 0 and len(tier) == 2
    assert tier.drop_card("old") == 0  # and coherence no longer indexes it


def test_byte_settings_take_units_and_refuse_nonsense() -> None:
    settings = ks.StoreSettings(near_cache_max_bytes="64MiB", memory_tier_max_bytes="1GB")
    assert settings.near_cache_max_bytes == 64 * 2**20
    assert settings.memory_tier_max_bytes == 10**9
    assert ks.StoreSettings().near_cache_max_bytes == 128 * 2**20
    assert ks.StoreSettings().memory_tier_max_bytes == 256 * 2**20
    for field, value in (
        ("memory_tier_max_bytes", 0),
        ("near_cache_max_bytes", -1),
        ("near_cache_max_bytes", "lots"),
    ):
        with pytest.raises(ks.InvalidInputError) as info:
            ks.StoreSettings(**{field: value})
        assert info.value.field == field


async def test_the_memory_hot_tier_of_a_store_keeps_to_its_byte_bound() -> None:
    from kuya_store.demo import FakeMarketplace

    market = FakeMarketplace(listings=50)
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        memory_tier_max_bytes="1MiB",
        fetchers={"sold": market.sold},
    ) as store:
        for i in range(40):
            await store.comps.search(f"2023 Topps Chrome Prospect {i} #1")
        hot = store._hot
        assert isinstance(hot, MemoryTier)
        assert 0 < hot.bytes <= 2**20 and 5 < len(hot) < 40  # about 100 KiB each
        # The most recent are kept; the first were evicted.
        assert (await store.comps.search("2023 Topps Chrome Prospect 39 #1")).source == "memory"
        assert (await store.comps.search("2023 Topps Chrome Prospect 0 #1")).source == "api"


async def _fetched(listings: int, display: bool) -> StoredResult:
    """A FakeMarketplace result with its snapshot, as ``bench/memory.py`` measures them."""
    from kuya_store.demo import FakeMarketplace
    from kuya_store.pricing import DefaultValuator

    market = FakeMarketplace(listings=listings)
    request = ks.FetchRequest(query="2023 Topps Chrome Wembanyama #1", search_type="sold")
    fetched = await market.sold(request)
    now = market._clock()
    snapshot = DefaultValuator().value("card", fetched.listings, snapshot_date=now.date(), now=now)
    return StoredResult(
        query=request.query,
        card_identifier="2023 topps chrome wembanyama 1",
        search_type=ks.SearchType.SOLD,
        params={"pages": 3},
        listings=fetched.listings if display else [x.metadata_only() for x in fetched.listings],
        fetched_at=now,
        snapshot=snapshot,
    )


@pytest.mark.parametrize("display", [True, False], ids=["display", "bare"])
@pytest.mark.parametrize("listings", [1, 10, 50, 120])
async def test_the_estimate_of_marketplace_results_is_within_a_fifth(
    listings: int, display: bool
) -> None:
    result = await _fetched(listings, display)
    measured = _measured(result)
    assert abs(approximate_size(result) - measured) / measured < 0.2


# Display data a listing may carry, beyond the marketplace's flat texts.
_DISPLAYS: list[dict[str, Any]] = [
    {"link": "https://m.example/1", "seller": "s1"},
    {},
    {"seller": "\u5927\u8c37", "n": 3, "price": 2.5, "gone": None, "free": True},
    {"nested": {"a": [1, "b", {"c": None}]}, "list": [], "text": "x" * 300},
    {"emoji": "\U0001f600", "link": "https://m.example/2"},
]


@pytest.mark.parametrize(
    "pattern",
    [[0, 0, 0], [0, 1, 0], [2, 2], [0, 2, 0], [3, 0], [4, 0, 0], [0, 1, 2, 3, 4]],
    ids=["texts", "empty", "scalars", "mixed", "nested", "wide", "all"],
)
def test_display_data_is_counted_as_walking_each_listing_would(pattern: list[int]) -> None:
    # The listings are counted all at once; every shape counts what one listing alone does.
    listings = [
        ks.Listing(
            item_id=f"id{i}", title=f"t{i}", price=Decimal("1"), extra=copy.deepcopy(_DISPLAYS[k])
        )
        for i, k in enumerate(pattern)
    ]
    bare = [x.metadata_only() for x in listings]
    with_display, without = _result("a", 0), _result("a", 0)
    with_display = with_display.model_copy(update={"listings": listings})
    without = without.model_copy(update={"listings": bare})
    counted = approximate_size(with_display) - approximate_size(without)
    alone = sum(display_size(x.extra) - display_size({}) for x in listings)
    assert counted == alone


def test_one_wide_title_among_narrow_ones_is_the_only_one_counted_wide() -> None:
    def titled(titles: list[str]) -> StoredResult:
        listings = [
            ks.Listing(item_id=f"id{i}", title=title, price=Decimal("1"))
            for i, title in enumerate(titles)
        ]
        return _result("a", 0).model_copy(update={"listings": listings})

    narrow = "2023 Topps Chrome Wembanyama"
    wide = narrow[:-4] + "\u5927\u8c37\u7fd4\u5e73"  # as many characters
    difference = approximate_size(titled([narrow] * 9 + [wide])) - approximate_size(
        titled([narrow] * 10)
    )
    # CPython holds a wide text at two bytes a character, behind a larger header.
    assert difference == (76 + 2 * len(wide)) - (50 + len(narrow))
