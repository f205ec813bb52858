"""Display data across restarts: kept by listing for ``display_ttl``, never in a row.

The decisions are tested alone; the rest on real servers: a new store on the same Redis
and database (a restart), the memory tier without Redis, Redis stopped while an answer is
dressed, expiry on a manual clock, and a Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from redis.crc import key_slot

import kuya_store as ks
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.testing.servers import RedisServer
from kuya_store.tiers.display import (
    DisplayData,
    RedisDisplay,
    answer_complete,
    carried_over,
    decode_entry,
    dressed,
    encode_entry,
    outlived,
    to_keep,
)
from kuya_store.tiers.redis import RedisTier
from readback import rows

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
SOLD = ks.SearchType.SOLD
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MakeStore = Callable[..., ks.CompsStore]


def _listing(item_id: str, link: bool = True) -> ks.Listing:
    extra: dict[str, Any] = {"link": f"https://shop.example/itm/{item_id}"} if link else {}
    return ks.Listing(item_id=item_id, title=f"card {item_id}", price=Decimal("10"), extra=extra)


def _result(listings: list[ks.Listing], **fields: Any) -> StoredResult:
    return StoredResult(
        query="card",
        card_identifier="card",
        search_type=SOLD,
        params={},
        listings=listings,
        fetched_at=T0,
        **fields,
    )


# -- the decisions, without servers --------------------------------------------------


def test_a_fetch_keeps_every_listing_and_a_partial_result_only_what_it_has() -> None:
    until = T0 + timedelta(hours=1)
    fetched = _result([_listing("a"), _listing("b", link=False)], display_until=until)
    # A listing fetched without display data is remembered as such: nothing is missing.
    assert to_keep(fetched) == {"a": fetched.listings[0].extra, "b": {}}
    partial = fetched.model_copy(update={"display_complete": False})
    assert to_keep(partial) == {"a": fetched.listings[0].extra}  # "b" may have lost its own
    assert to_keep(fetched.model_copy(update={"display_until": None})) == {}


def test_dressing_says_what_it_found_and_until_when() -> None:
    row = _result([_listing("a", link=False), _listing("b", link=False), _listing("c", False)])
    a = DisplayData({"link": "A"}, T0 + timedelta(hours=2))
    b = DisplayData({}, T0 + timedelta(hours=1))
    out = dressed(row, {"a": a, "b": b})
    assert [x.extra for x in out.listings] == [{"link": "A"}, {}, {}]
    assert out.display_complete is False and out.display_until == T0 + timedelta(hours=1)
    whole = dressed(row, {"a": a, "b": b, "c": b})
    assert whole.display_complete is True
    assert dressed(row, {}).display_until is None
    # An answer showing only dressed listings is complete even if its result is not.
    assert answer_complete(out, out.listings[:1]) is True
    assert answer_complete(out, out.listings) is False


def test_a_refresh_on_top_of_a_stored_result_inherits_its_gaps_and_deadline() -> None:
    own = T0 + timedelta(hours=6)
    stale = _result([_listing("old", link=False)], display_complete=False, display_until=T0)
    new = [_listing("new")]
    assert carried_over(new, None, own) == (True, own)
    assert carried_over(new, stale, own) == (True, own)  # nothing carried over
    assert carried_over([*new, *stale.listings], stale, own) == (False, T0)
    # The same item fetched again is a fresh copy, with its own display data.
    again = [_listing("old")]
    assert carried_over(again, stale, own) == (True, own)


def test_a_copy_past_its_display_deadline_does_not_answer() -> None:
    kept = _result([_listing("a")], display_until=T0 + timedelta(minutes=5))
    assert not outlived(kept, T0)
    assert outlived(kept, T0 + timedelta(minutes=5))
    bare = _result([_listing("a", link=False)], display_until=T0)
    assert not outlived(bare, T0 + timedelta(days=1))  # nothing shown, nothing to forget


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"u": 1}',
        b'{"u": "1", "x": {}}',
        b'{"u": true, "x": {}}',
        b'{"u": 1, "x": []}',
        b'{"u": 1e400, "x": {}}',
        b'{"u": 99999999999999999999, "x": {}}',
        b'{"u": 1, "x": {"a": "' + b"x" * 10_000 + b'"}}',
        b"\xff\xfe",
    ],
)
def test_an_entry_that_does_not_decode_is_a_miss(raw: bytes) -> None:
    assert decode_entry(raw) is None


def test_an_entry_round_trips() -> None:
    data = decode_entry(encode_entry({"link": "x", "n": [1, None]}, T0))
    assert data == DisplayData({"link": "x", "n": [1, None]}, T0)


def test_display_keys_share_the_slot_of_the_card() -> None:
    identity = ResultIdentity.of_query(QUERY, SOLD, {"pages": 2})
    keys = [identity.redis_key("kuya"), identity.redis_fence_key("kuya")]
    keys += [identity.redis_display_key("kuya", f"item{i}") for i in range(200)]
    keys.append(identity.redis_display_key("kuya", "odd}{id"))
    assert len({key_slot(k.encode()) for k in keys}) == 1
    minus = ResultIdentity.of_query(QUERY + " -auto", SOLD, {})  # another variant, same card
    assert minus.redis_display_key("kuya", "x") == identity.redis_display_key("kuya", "x")


def test_display_ttl_is_a_positive_duration() -> None:
    assert StoreSettings().display_ttl == timedelta(hours=6)
    assert StoreSettings(display_ttl="PT15M").display_ttl == timedelta(minutes=15)
    for bad in (0, -1, "soon"):
        with pytest.raises(ks.InvalidInputError) as caught:
            StoreSettings(display_ttl=bad)
        assert caught.value.field == "display_ttl"


# -- on real servers ----------------------------------------------------------------


def _fetch(request: ks.FetchRequest) -> list[dict[str, Any]]:
    """Five listings, the last one without display data (some feeds give none)."""
    return [
        {
            "item_id": f"X{i}",
            "title": f"{request.query} PSA {i}",
            "price": "12.50",
            "sold": True,
            "extra": {
                "link": f"https://shop.example/itm/X{i}",
                "thumbnail": f"https://img.example/X{i}.jpg",
                "seller": "cardshop",
            }
            if i < 4
            else {},
        }
        for i in range(5)
    ]


@pytest.fixture
def clock() -> ks.ManualClock:
    return ks.ManualClock()


@pytest.fixture
async def make_store(
    migrated_url: str, key_prefix: str, clock: ks.ManualClock
) -> AsyncIterator[MakeStore]:
    stores: list[ks.CompsStore] = []

    def make(**overrides: Any) -> ks.CompsStore:
        options: dict[str, Any] = {
            "database_url": migrated_url,
            "key_prefix": key_prefix,
            "write_flush_interval": 0.01,
            # The database answers for two hours; the hot tier keeps a result 30 minutes.
            "freshness_policy": "fixed",
            "sold_fresh_for": timedelta(hours=2),
            "sold_max_fresh_for": timedelta(hours=2),
            "display_ttl": timedelta(hours=1),
            **overrides,
        }
        store = ks.CompsStore(fetchers={"sold": _fetch}, clock=clock, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def _no_display_in_rows(url: str) -> None:
    for table in ("listing_cache", "searches", "price_snapshots", "search_results"):
        for row in await rows(url, f"SELECT * FROM {table}"):
            text = json.dumps(row, default=str)
            assert "shop.example" not in text and "img.example" not in text, table
            assert "cardshop" not in text, table


async def _drop_hot_results(client: Any, prefix: str) -> int:
    """What the hot tier's TTL does to results (their display data stays)."""
    doomed = [k async for k in client.scan_iter(f"{prefix}:v1:[rt]:*")]
    return int(await client.delete(*doomed)) if doomed else 0


async def test_with_redis_display_data_survives_a_restart_until_its_ttl(
    make_store: MakeStore,
    migrated_url: str,
    redis_base_url: str,
    redis_client: Any,
    key_prefix: str,
    clock: ks.ManualClock,
) -> None:
    first_store = make_store(redis_url=redis_base_url)
    first = await first_store.comps.search(QUERY)
    assert first.source == "api" and first.display_complete
    await first_store.close()
    await _no_display_in_rows(migrated_url)
    # Redis forgets the display data by itself too, at display_ttl.
    ttls = [await redis_client.pttl(k) async for k in redis_client.scan_iter(f"{key_prefix}:*:d:*")]
    assert len(ttls) == 5 and all(0 < ttl <= 3_600_000 for ttl in ttls)

    assert await _drop_hot_results(redis_client, key_prefix) > 0
    clock.advance(timedelta(minutes=40))
    restarted = make_store(redis_url=redis_base_url)
    again = await restarted.comps.search(QUERY)
    assert again.source == "database" and again.fetched_at == first.fetched_at
    assert again.display_complete is True
    assert again.listings == first.listings  # links, thumbnails and seller: all back
    assert restarted.metrics()["display"]["found"] == 5
    # The database answer filled the tiers above it, dressed.
    assert (await restarted.comps.search(QUERY)).listings == first.listings
    await restarted.flush()
    await _no_display_in_rows(migrated_url)

    # Past display_ttl (on the store's clock), no copy shows it any more, hot tier included.
    clock.advance(timedelta(minutes=21))
    later = make_store(redis_url=redis_base_url)
    gone = await later.comps.search(QUERY)
    assert gone.source == "database" and gone.display_complete is False
    assert all(x.extra == {} for x in gone.listings)
    assert [x.item_id for x in gone.listings] == [x.item_id for x in first.listings]
    assert (await restarted.comps.search(QUERY)).display_complete is False


async def test_without_redis_display_data_lives_as_long_as_the_process(
    make_store: MakeStore, migrated_url: str, clock: ks.ManualClock
) -> None:
    store = make_store()
    first = await store.comps.search(QUERY)
    await store.flush()
    clock.advance(timedelta(minutes=31))  # the memory hot tier let the result go
    again = await store.comps.search(QUERY)
    assert again.source == "database" and again.display_complete
    assert again.listings == first.listings
    await store.close()

    restarted = make_store()
    after = await restarted.comps.search(QUERY)
    assert after.source == "database" and after.display_complete is False
    assert all(x.extra == {} for x in after.listings)
    assert restarted.metrics()["display"]["missing"] == 5
    await _no_display_in_rows(migrated_url)


async def test_a_corrupt_entry_costs_only_its_listing(
    make_store: MakeStore, redis_base_url: str, redis_client: Any, key_prefix: str
) -> None:
    store = make_store(redis_url=redis_base_url)
    first = await store.comps.search(QUERY)
    await store.close()
    await _drop_hot_results(redis_client, key_prefix)
    identity = ResultIdentity.of_query(QUERY, SOLD, {})
    await redis_client.set(identity.redis_display_key(key_prefix, "X0"), b"\x80garbage")
    restarted = make_store(redis_url=redis_base_url)
    again = await restarted.comps.search(QUERY)
    assert again.source == "database" and again.display_complete is False
    assert again.listings[0].extra == {} and again.listings[1:] == first.listings[1:]
    assert restarted.metrics()["display"]["corrupt"] == 1


async def test_redis_down_while_dressing_still_answers(
    make_store: MakeStore, tmp_path: Any
) -> None:
    with RedisServer() as redis:
        store = make_store(redis_url=redis.url, redis_socket_timeout=0.2)
        first = await store.comps.search(QUERY)
        assert first.display_complete
        await store.close()
        redis.stop()
        restarted = make_store(redis_url=redis.url, redis_socket_timeout=0.2)
        for _ in range(4):  # through the breaker's opening, and once it is open
            answer = await restarted.comps.search(QUERY)
            # The database answers, then the near-cache it filled (for near_cache_ttl).
            assert answer.source in ("database", "memory") and answer.display_complete is False
            assert [x.item_id for x in answer.listings] == [x.item_id for x in first.listings]
        assert restarted.metrics()["display"]["unreachable"] >= 1


async def test_a_cluster_keeps_and_reads_a_result_in_one_round_trip(
    redis_cluster_url: str, key_prefix: str
) -> None:
    tier = RedisTier(StoreSettings(redis_url=redis_cluster_url, key_prefix=key_prefix), Metrics())
    metrics = Metrics()
    store = RedisDisplay(tier, key_prefix, lambda: T0, metrics)
    try:
        listings = [_listing(f"item{i}", link=i % 3 != 0) for i in range(300)]
        identity = ResultIdentity.of("wemby", SOLD, {})
        fetched = _result(listings, display_until=T0 + timedelta(hours=1))
        await store.keep(identity, fetched)
        row = fetched.model_copy(update={"listings": [x.metadata_only() for x in listings]})
        back = await store.dress(identity, row)
        assert back.listings == listings and back.display_complete
        snapshot = metrics.snapshot()["counters"]
        assert snapshot["display_kept"] == 300 and snapshot["display_found"] == 300
        assert "display_unreachable" not in snapshot
    finally:
        await tier.close()


# Display data that could break a packing of many entries into one argument: line breaks
# and braces inside strings, wide characters, nesting, and an empty object between others.
_AWKWARD: list[dict[str, Any]] = [
    {"link": "https://shop.example/itm/1", "note": "line one\nline two\r\nend"},
    {},
    {"seller": "}\n{", "quote": '"\\', "wide": "\u5927\u8c37 \U0001f600 \u2028"},
    {"nested": {"a": [1, 2.5, None, True, {"b": "\n"}]}, "n": -3},
    {"empty": "", "list": []},
]


async def test_a_keep_writes_each_entry_as_one_set_of_it_would(
    redis_base_url: str, redis_client: Any, key_prefix: str
) -> None:
    tier = RedisTier(StoreSettings(redis_url=redis_base_url, key_prefix=key_prefix), Metrics())
    store = RedisDisplay(tier, key_prefix, lambda: T0, Metrics())
    until = T0 + timedelta(minutes=30)
    ids = ["odd}{id", "caf\u00e9 1", "a b", "x" * 50, "-"]
    listings = [
        ks.Listing(item_id=item, title="card", price=Decimal("1"), extra=extra)
        for item, extra in zip(ids, _AWKWARD, strict=True)
    ]
    try:
        identity = ResultIdentity.of("wemby", SOLD, {})
        await store.keep(identity, _result(listings, display_until=until))
        keys = [identity.redis_display_key(key_prefix, item) for item in ids]
        raws = await redis_client.mget(keys)
        extras = [x.extra for x in listings]  # as the listing keeps them
        assert "\n" in extras[0]["note"] and extras[2]["seller"] == "}\n{"
        assert raws == [encode_entry(extra, until) for extra in extras]
        assert [decode_entry(raw) for raw in raws] == [DisplayData(x, until) for x in extras]
        ttls = [await redis_client.pttl(key) for key in keys]
        assert all(29 * 60_000 < ttl <= 30 * 60_000 for ttl in ttls), ttls
        # Nothing else was written for the card: one key a listing.
        written = [k async for k in redis_client.scan_iter(f"{key_prefix}:*")]
        assert sorted(written) == sorted(k.encode() for k in keys)
    finally:
        await tier.close()


async def test_entries_as_earlier_versions_wrote_them_still_dress_an_answer(
    redis_base_url: str, redis_client: Any, key_prefix: str
) -> None:
    # The bytes of one key a listing, written by a plain SET: the format every version reads.
    stored = {
        "X0": b'{"u":1767272400000,"x":{"link":"https://shop.example/itm/X0","seller":"s"}}',
        "X1": b'{"u":1767272400000,"x":{}}',
    }
    identity = ResultIdentity.of("wemby", SOLD, {})
    for item, raw in stored.items():
        await redis_client.set(identity.redis_display_key(key_prefix, item), raw, px=60_000)
    tier = RedisTier(StoreSettings(redis_url=redis_base_url, key_prefix=key_prefix), Metrics())
    store = RedisDisplay(tier, key_prefix, lambda: T0, Metrics())
    try:
        bare = _result([_listing("X0", link=False), _listing("X1", link=False)])
        back = await store.dress(identity, bare)
        assert back.display_complete and back.display_until == T0 + timedelta(hours=1)
        assert back.listings[0].extra == {"link": "https://shop.example/itm/X0", "seller": "s"}
        assert back.listings[1].extra == {}
        # And what is written now is byte for byte what they wrote.
        await store.keep(identity, back)
        assert await redis_client.mget(
            [identity.redis_display_key(key_prefix, item) for item in stored]
        ) == list(stored.values())
    finally:
        await tier.close()
