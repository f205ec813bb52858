"""Sealed hot-tier values: a store's own writes come back without validation, nothing else does.

A value in Redis is trusted only when its seal (an HMAC tag over the key and the JSON)
checks under the reader's secret; anything else (no seal, another secret, another key,
a tampered or cut value) is validated in full, as every value was before the seal.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

import kuya_store as ks
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import FetchStats
from kuya_store.settings import StoreSettings
from kuya_store.stored import (
    CorruptEntryError,
    StoredResult,
    ValueSeal,
    decode,
    encode,
    unseal,
)
from kuya_store.tiers.compact import compact
from kuya_store.tiers.redis import RedisTier

SECRET = "hot-tier-secret-0f3c9a7e5b1d4c2a8e6f"
OTHER_SECRET = "another-hot-tier-secret-77d1e0b94c2a"
QUERY = "2023 Topps Chrome Victor Wembanyama #1"
NOW = datetime(2026, 11, 25, 12, 30, 15, 123456, tzinfo=UTC)
KEY = "kuya:v1:r:{0123}:sold:" + "ab" * 32
OLD_VALUE = Path(__file__).parent / "data" / "hot_value_v1_unsealed.json"

MakeStore = Callable[..., ks.CompsStore]


def _result(price: str = "10.00", listings: int = 2) -> StoredResult:
    return StoredResult(
        query="wemby",
        card_identifier="wemby",
        search_type=ks.SearchType.SOLD,
        params={"pages": 1},
        listings=[
            ks.Listing(
                item_id=f"i{n}",
                title=f"Wembanyama #{n}",
                price=Decimal(price),
                sold=True,
                sold_date=NOW - timedelta(days=n),
                extra={"link": f"https://x.example/{n}"},
            )
            for n in range(listings)
        ],
        fetched_at=NOW,
        pages_scraped=1,
    )


def _identity() -> ResultIdentity:
    return ResultIdentity.of("wemby", ks.SearchType.SOLD, {"pages": 1})


def _counts(tier: RedisTier) -> tuple[int, int, int]:
    m = tier._metrics
    return (
        m.count("hot_decodes_trusted"),
        m.count("hot_decodes_validated"),
        m.count("corrupt_entries"),
    )


@pytest.fixture
async def tiers(redis_url: str, key_prefix: str) -> AsyncIterator[Callable[..., RedisTier]]:
    made: list[RedisTier] = []

    def make(secret: str | None = SECRET) -> RedisTier:
        settings = StoreSettings(redis_url=redis_url, key_prefix=key_prefix, hot_tier_secret=secret)
        tier = RedisTier(settings, Metrics())
        made.append(tier)
        return tier

    yield make
    for tier in made:
        await tier.close()


@pytest.fixture
async def make_store(redis_url: str, key_prefix: str) -> AsyncIterator[MakeStore]:
    stores: list[ks.CompsStore] = []
    market = FakeMarketplace(listings=20)

    def make(**overrides: Any) -> ks.CompsStore:
        options: dict[str, Any] = {
            "database_url": "sqlite+aiosqlite://",
            "mode": "cache_only",
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "near_cache_size": 0,
            "fetchers": {"sold": market.sold},
            **overrides,
        }
        store = ks.CompsStore(**options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


# -- across stores ----------------------------------------------------------------------


async def test_a_value_one_store_writes_is_read_by_another_on_trust(make_store: MakeStore) -> None:
    writer, reader = make_store(hot_tier_secret=SECRET), make_store(hot_tier_secret=SECRET)
    await writer.start()
    await reader.start()
    fetched = await writer.comps.search(QUERY)
    read = await reader.comps.search(QUERY)
    assert (fetched.source, read.source) == ("api", "redis")
    assert read.listings == fetched.listings and read.fetched_at == fetched.fetched_at
    assert reader.metrics()["redis"]["trusted_decodes"] == 1
    assert reader.metrics()["redis"]["validated_decodes"] == 0
    # A third process with the same secret trusts the writes of the second too.
    third = make_store(hot_tier_secret=SECRET)
    await third.start()
    await reader.comps.search(QUERY, refresh=True)
    assert (await third.comps.search(QUERY)).source == "redis"
    assert third.metrics()["redis"]["trusted_decodes"] == 1


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    import kuya_store as ks
    from kuya_store.demo import FakeMarketplace

    async def main():
        async with ks.CompsStore(
            database_url="sqlite+aiosqlite://", mode="cache_only", redis_url=sys.argv[1],
            key_prefix=sys.argv[2], near_cache_size=0, hot_tier_secret=sys.argv[3],
            fetchers={"sold": FakeMarketplace(listings=20).sold},
        ) as store:
            assert (await store.comps.search(sys.argv[4])).source == "api"

    asyncio.run(main())
    """
)


async def test_another_process_with_the_secret_is_trusted(
    make_store: MakeStore, redis_url: str, key_prefix: str
) -> None:
    """Another interpreter (its own hash seed, its own schema build) derives the same key."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(ks.__file__).parents[1]),
        "PYTHONHASHSEED": "random",
    }
    args = [sys.executable, "-c", _WRITER, redis_url, key_prefix, SECRET, QUERY]
    done = await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    reader = make_store(hot_tier_secret=SECRET)
    await reader.start()
    assert (await reader.comps.search(QUERY)).source == "redis"
    assert reader.metrics()["redis"]["trusted_decodes"] == 1


async def test_a_store_with_another_secret_validates_in_full(make_store: MakeStore) -> None:
    writer, reader = make_store(hot_tier_secret=SECRET), make_store(hot_tier_secret=OTHER_SECRET)
    await writer.start()
    await reader.start()
    fetched = await writer.comps.search(QUERY)
    read = await reader.comps.search(QUERY)
    assert read.source == "redis" and read.listings == fetched.listings
    assert reader.metrics()["redis"]["validated_decodes"] == 1
    assert reader.metrics()["redis"]["trusted_decodes"] == 0


async def test_without_a_secret_a_process_trusts_only_its_own_writes(
    tiers: Callable[..., RedisTier],
) -> None:
    writer, other = tiers(None), tiers(None)
    assert await writer.set(_identity(), _result(), timedelta(minutes=5))
    assert await other.get(_identity()) == _result()
    assert _counts(other) == (0, 1, 0)
    writer._decoded.clear()  # its memo would answer without decoding at all
    assert await writer.get(_identity()) == _result()
    assert _counts(writer) == (1, 0, 0)
    # A secret-holding reader does not trust a value sealed with a process's own key.
    holder = tiers(SECRET)
    assert await holder.get(_identity()) == _result()
    assert _counts(holder) == (0, 1, 0)


# -- tampering --------------------------------------------------------------------------


async def test_a_tampered_price_under_a_copied_seal_is_refused_never_served(
    make_store: MakeStore, redis_client: Any, key_prefix: str
) -> None:
    writer, reader = make_store(hot_tier_secret=SECRET), make_store(hot_tier_secret=SECRET)
    await writer.start()
    await reader.start()
    fetched = await writer.comps.search(QUERY)
    [key] = [k async for k in redis_client.scan_iter(f"{key_prefix}:*:r:*")]
    raw: bytes = await redis_client.get(key)
    price = f'"price":"{fetched.listings[0].price:.2f}"'.encode()
    assert raw.count(price) >= 1
    # Same length, same layout, seal kept: only validation can tell the price is impossible.
    bad = b'"price":"-' + price[len(b'"price":"-') :]
    tampered = raw.replace(price, bad[: len(price)], 1)
    assert len(tampered) == len(raw) and tampered != raw
    await redis_client.set(key, tampered, keepttl=True)
    result = await reader.comps.search(QUERY)
    assert result.source == "api"  # a miss: fetched again, the planted price never served
    assert all(listing.price >= 0 for listing in result.listings)
    metrics = reader.metrics()
    assert metrics["corrupt_entries"] >= 1  # the miss path reads again under its lock
    assert metrics["redis"]["trusted_decodes"] == 0


async def test_a_plausible_tamper_is_validated_not_trusted(
    tiers: Callable[..., RedisTier], redis_client: Any, key_prefix: str
) -> None:
    writer, reader = tiers(), tiers()
    await writer.set(_identity(), _result("10.00"), timedelta(minutes=5))
    key = _identity().redis_key(key_prefix)
    raw: bytes = await redis_client.get(key)
    await redis_client.set(key, raw.replace(b'"10.00"', b'"99.00"'), keepttl=True)
    read = await reader.get(_identity())
    assert read is not None and read.listings[0].price == Decimal("99.00")
    assert _counts(reader) == (0, 1, 0)  # what any untrusted value gets: full validation


async def test_a_sealed_value_moved_to_another_key_is_not_trusted(
    tiers: Callable[..., RedisTier], redis_client: Any, key_prefix: str
) -> None:
    writer, reader = tiers(), tiers()
    await writer.set(_identity(), _result(), timedelta(minutes=5))
    other = ResultIdentity.of("ohtani", ks.SearchType.SOLD, {"pages": 1})
    raw = await redis_client.get(_identity().redis_key(key_prefix))
    await redis_client.set(other.redis_key(key_prefix), raw, px=60_000)
    assert await reader.get(other) is not None
    assert _counts(reader) == (0, 1, 0)


def _other_digit(raw: bytes) -> bytes:
    last = raw[-3:-2]
    return raw[:-3] + (b"1" if last == b"0" else b"0") + raw[-2:]


@pytest.mark.parametrize(
    ("cut", "served"),
    [
        pytest.param(lambda raw: raw[:-1], False, id="last byte cut"),
        pytest.param(lambda raw: raw[:-40], False, id="cut inside the tag"),
        pytest.param(lambda raw: raw[: len(raw) // 2], False, id="cut in half"),
        pytest.param(_other_digit, True, id="one tag digit changed"),
        pytest.param(lambda raw: raw[: raw.rindex(b',"mac"')] + b"}", True, id="seal removed"),
    ],
)
async def test_a_cut_or_unsealed_value_goes_through_validation(
    tiers: Callable[..., RedisTier],
    redis_client: Any,
    key_prefix: str,
    cut: Callable[[bytes], bytes],
    served: bool,
) -> None:
    writer, reader = tiers(), tiers()
    await writer.set(_identity(), _result(), timedelta(minutes=5))
    key = _identity().redis_key(key_prefix)
    changed = cut(await redis_client.get(key))
    assert not ValueSeal(SECRET.encode()).sealed(key, changed)
    await redis_client.set(key, changed, keepttl=True)
    read = await reader.get(_identity())
    if served:  # still a valid value: validated in full, as any value without a seal
        assert read == _result() and _counts(reader) == (0, 1, 0)
    else:  # not JSON any more: a clean miss
        assert read is None and _counts(reader) == (0, 0, 1)


# -- what an unsealed or foreign value looks like ----------------------------------------


def test_a_value_in_the_layout_before_the_seal_still_decodes() -> None:
    """The fixture is a value as the release before the seal wrote it (no ``mac`` member)."""
    old = OLD_VALUE.read_bytes().strip()
    seal = ValueSeal(SECRET.encode())
    result, trusted = unseal(old, KEY, seal)
    assert not trusted and result == decode(old)
    assert result.listings[0].price == Decimal("19.99") and result.snapshot is not None


def test_a_release_before_the_seal_reads_a_sealed_value_as_before() -> None:
    sealed = ValueSeal(SECRET.encode()).seal(KEY, encode(_result()))
    assert b'"mac":"hmac-sha256:' in sealed
    # The reader of that release: validate, unknown members ignored, check the version.
    old_reader = StoredResult.model_validate_json(sealed)
    assert old_reader == _result() and old_reader.v == 1


def test_only_a_json_object_is_sealed() -> None:
    seal = ValueSeal(SECRET.encode())
    for payload in (b"[1, 2]", b"{}", b""):
        with pytest.raises(ValueError, match="JSON object"):
            seal.seal(KEY, payload)


def test_a_sealed_value_of_another_version_is_a_clean_miss() -> None:
    seal = ValueSeal(SECRET.encode())
    other = _result().model_copy(update={"v": 2})
    with pytest.raises(CorruptEntryError, match="version 2"):
        unseal(seal.seal(KEY, encode(other)), KEY, seal)


def _sealed_json(data: dict[str, Any], seal: ValueSeal) -> bytes:
    return seal.seal(KEY, json.dumps(data, separators=(",", ":")).encode())


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda d: d["listings"][0].update(shipping="free"), id="unknown listing field"
        ),
        pytest.param(lambda d: d.update(origin="elsewhere"), id="unknown result field"),
        pytest.param(lambda d: d["listings"][0].update(price=10.0), id="price as a number"),
        pytest.param(
            lambda d: d["listings"][0].update(sold_date="2026-11-25T12:00:00"), id="naive"
        ),
        pytest.param(lambda d: d["listings"][0].pop("bids"), id="missing listing field"),
    ],
)
def test_a_sealed_value_this_release_does_not_write_is_validated(
    change: Callable[[dict[str, Any]], None],
) -> None:
    """Same secret, but members this release would not write (another release's layout)."""
    seal = ValueSeal(SECRET.encode())
    data = json.loads(encode(_result()))
    change(data)
    raw = _sealed_json(data, seal)
    assert seal.sealed(KEY, raw)
    try:
        result, trusted = unseal(raw, KEY, seal)
    except CorruptEntryError:
        return  # refused by validation (a naive moment): a miss
    assert not trusted and result == decode(raw)


def test_the_seal_is_bound_to_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process whose models differ (another release) never takes these values on trust."""
    from kuya_store import stored

    raw = ValueSeal(SECRET.encode()).seal(KEY, encode(_result()))
    schema = StoredResult.model_json_schema()
    monkeypatch.setattr(StoredResult, "model_json_schema", lambda: {**schema, "changed": True})
    stored._layout.cache_clear()
    try:
        assert not ValueSeal(SECRET.encode()).sealed(KEY, raw)
    finally:
        stored._layout.cache_clear()
        monkeypatch.undo()
    assert ValueSeal(SECRET.encode()).sealed(KEY, raw)


# -- the fast path builds exactly what validation builds ------------------------------------

_text = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=30,
    )
    .map(str.strip)
    .filter(bool)
)
_json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_extra = st.dictionaries(
    _text,
    st.recursive(
        _json_scalar,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
        max_leaves=6,
    ),
    max_size=4,
)
_moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2099, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone.min]),
)
_prices = st.decimals(min_value=0, max_value=Decimal("99999999.99"), places=2)
_listings = st.builds(
    ks.Listing,
    item_id=_text,
    title=_text,
    price=_prices,
    listing_type=st.sampled_from([None, "auction", "buy_it_now"]),
    condition=st.none() | _text,
    sold=st.booleans(),
    sold_date=st.none() | _moments,
    bids=st.none() | st.integers(0, 2_147_483_647),
    watchers=st.none() | st.integers(0, 2_147_483_647),
    extra=_extra,
)
_snapshots = st.none() | st.builds(
    ks.PriceSnapshot,
    card_identifier=_text,
    snapshot_date=st.dates(date(2000, 1, 1), date(2099, 1, 1)),
    fmv_low=st.none() | _prices,
    market_value=st.none() | _prices,
    sample_size=st.none() | st.integers(0, 10_000),
    volume_confidence=st.none() | st.sampled_from(["low", "high"]),
    parallel_analysis=st.none() | _extra,
)
_results = st.builds(
    StoredResult,
    query=_text,
    card_identifier=_text,
    search_type=st.sampled_from(list(ks.SearchType)),
    params=st.dictionaries(_text.filter(lambda k: len(k) <= 64), _json_scalar, max_size=3),
    listings=st.lists(_listings, max_size=6),
    fetched_at=_moments,
    pages_scraped=st.none() | st.integers(0, 100),
    snapshot=_snapshots,
    stats=st.none() | st.builds(FetchStats, items_scraped=st.none() | st.integers(0, 500)),
    complete=st.none() | st.booleans(),
    fresh_until=st.none() | _moments,
    display_complete=st.booleans(),
    display_until=st.none() | _moments,
)


def _same(fast: Any, full: Any, where: str = "result") -> None:
    """Equal, and of the same types all the way down (aware moments: any UTC-equal zone)."""
    assert type(fast) is type(full), where
    if isinstance(full, ks.Listing | StoredResult | ks.PriceSnapshot | FetchStats):
        assert fast.model_fields_set == full.model_fields_set, where
        for name in type(full).model_fields:
            _same(getattr(fast, name), getattr(full, name), f"{where}.{name}")
    elif isinstance(full, list):
        assert len(fast) == len(full), where
        for n, (a, b) in enumerate(zip(fast, full, strict=True)):
            _same(a, b, f"{where}[{n}]")
    elif isinstance(full, dict):
        assert list(fast) == list(full), where
        for name in full:
            _same(fast[name], full[name], f"{where}.{name}")
    elif isinstance(full, datetime):
        assert fast == full and fast.utcoffset() == full.utcoffset(), where
    elif isinstance(full, Decimal):
        assert fast.as_tuple() == full.as_tuple(), where  # "10.00" stays two places
    else:
        assert fast == full, where


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_results)
def test_the_fast_path_builds_exactly_what_validation_builds(result: StoredResult) -> None:
    seal = ValueSeal(SECRET.encode())
    raw = seal.seal(KEY, encode(result))
    fast, trusted = unseal(raw, KEY, seal)
    full = decode(raw)
    assert trusted
    _same(fast, full)
    assert fast == full
    assert fast.fetched_at.tzinfo is UTC
    assert encode(fast) == encode(full)
    assert fast.model_dump() == full.model_dump()


@settings(max_examples=150, deadline=None)
@given(_results)
def test_the_encoder_writes_what_pydantic_writes(result: StoredResult) -> None:
    assert encode(result) == result.model_dump_json().encode()
    assert decode(encode(result)) == decode(result.model_dump_json())


def test_an_integer_beyond_64_bits_still_round_trips() -> None:
    listing = ks.Listing(item_id="1", title="t", price="1", extra={"big": 2**70})
    result = _result().model_copy(update={"listings": [listing]})
    raw = encode(result)
    assert raw == result.model_dump_json().encode()
    seal = ValueSeal(SECRET.encode())
    read, _ = unseal(seal.seal(KEY, raw), KEY, seal)
    assert read == decode(raw) and read.listings[0].extra["big"] == 2**70


def test_the_listings_of_one_value_share_their_given_names_and_copies_get_their_own() -> None:
    seal = ValueSeal(SECRET.encode())
    read, trusted = unseal(seal.seal(KEY, encode(_result(listings=3))), KEY, seal)
    assert trusted
    first, second, third = read.listings
    assert first.model_fields_set is second.model_fields_set is third.model_fields_set
    changed = first.model_copy(update={"bids": 4})
    assert changed.bids == 4 and changed.model_fields_set is not first.model_fields_set
    assert second.model_fields_set == set(ks.Listing.model_fields)
    # The near-cache's copy of them shares its own set, not theirs.
    held = compact(read)
    assert held == read and held.listings[0].model_fields_set is held.listings[2].model_fields_set
    assert held.listings[0].model_fields_set is not first.model_fields_set


# -- the setting ----------------------------------------------------------------------------


def test_the_secret_comes_from_the_environment_and_never_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUYA_HOT_TIER_SECRET", SECRET)
    settings = StoreSettings()
    assert isinstance(settings.hot_tier_secret, SecretStr)
    assert settings.hot_tier_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    monkeypatch.setenv("KUYA_HOT_TIER_SECRET", "")
    assert StoreSettings().hot_tier_secret is None
    assert StoreSettings(hot_tier_secret=SecretStr(SECRET)).hot_tier_secret == SecretStr(SECRET)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("too-short-secret", "at least 32 characters"),
        (" " + SECRET, "whitespace"),
        (SECRET + "\n", "whitespace"),
        (12345678901234567890123456789012345, "string"),
        (SECRET + "\ud800", "Unicode"),
    ],
)
def test_a_bad_secret_is_refused_naming_the_field(value: object, reason: str) -> None:
    with pytest.raises(ks.InvalidInputError) as caught:
        StoreSettings(hot_tier_secret=value)
    assert caught.value.field == "hot_tier_secret"
    assert reason in caught.value.reason
    assert str(value) not in str(caught.value)


async def test_a_bad_secret_in_the_environment_stops_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUYA_HOT_TIER_SECRET", "short")
    with pytest.raises(ks.InvalidInputError, match="hot_tier_secret"):
        ks.CompsStore(database_url="sqlite+aiosqlite://")


# -- the memo of decoded values ---------------------------------------------------------------


async def test_a_value_read_once_is_not_kept_one_read_twice_is(
    tiers: Callable[..., RedisTier],
) -> None:
    """A rotation over more cards than the memo holds would only churn it (and free results)."""
    writer, reader = tiers(), tiers()
    identities = [ResultIdentity.of(f"card{n}", ks.SearchType.SOLD, {}) for n in range(20)]
    for identity in identities:
        await writer.set(identity, _result(), timedelta(minutes=5))
    for identity in identities:
        assert await reader.get(identity) == _result()
    assert len(reader._decoded) == 0
    assert await reader.get(identities[0]) == _result()  # read again: kept from now on
    assert list(reader._decoded) == [identities[0].redis_key(reader._prefix)]
    decodes = _counts(reader)
    assert await reader.get(identities[0]) == _result()
    assert _counts(reader) == decodes  # answered from the memo, not decoded again
