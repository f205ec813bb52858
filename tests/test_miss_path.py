"""A miss does its work once: a fetcher's checked result and the hot tier's look before paying.

- A ``FetchResult`` whose every listing its own validation checked has only its other
  fields validated again by the store; anything else in it is still refused.
- Behind the cross-process lock, a never-seen query is looked up in the hot tier once
  more (by the lock's holder), not twice; a search that raced a fetch of its own process,
  or of another, still finds that fetch's result and does not pay.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as redis

import kuya_store as ks
from kuya_store import models, upstream
from kuya_store.demo import FakeMarketplace
from kuya_store.fetching import FetchCoordinator
from kuya_store.keys import ResultIdentity
from kuya_store.models import is_fetch_checked_listing, is_validated_listing
from kuya_store.tiers.redis import RedisTier
from kuya_store.upstream import _as_data, validate_fetch_result

CARD = "2023 Prizm Victor Wembanyama #136"
SOLD = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def _fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "item_id": "A1",
        "title": "2023 Prizm Wembanyama #136 PSA 10",
        "price": "189.99",
        "sold": True,
        "sold_date": SOLD,
        "extra": {"image": "https://img.example/a1.jpg"},
    }
    return {**fields, **changes}


def _checked(count: int = 3) -> ks.FetchResult:
    body = {
        "listings": [_fields(item_id=f"A{i}", sold_date=SOLD.isoformat()) for i in range(count)]
    }
    return ks.FetchResult.model_validate_json(json.dumps(body))


def _outcome(value: object) -> tuple[Any, ...]:
    try:
        return ("accepted", validate_fetch_result(value))
    except ks.InvalidInputError as exc:
        return ("refused", exc.field, str(exc))


# -- a fetcher's checked result ------------------------------------------------------------


def test_a_checked_result_has_only_its_other_fields_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = _checked(40)
    seen: list[object] = []
    validate = ks.FetchResult.model_validate

    def spy(value: Any, *args: Any, **kwargs: Any) -> ks.FetchResult:
        seen.append(value["listings"] if isinstance(value, dict) else value)
        return validate(value, *args, **kwargs)

    monkeypatch.setattr(upstream.FetchResult, "model_validate", spy)
    got = validate_fetch_result(result)
    assert seen == [[]]  # the listings were not handed to validation again
    assert all(a is b for a, b in zip(got.listings, result.listings, strict=True))
    assert got.listings is not result.listings  # the store's own list, as validation gives
    monkeypatch.undo()
    assert got == validate_fetch_result(_as_data(result))
    assert got.model_fields_set == validate_fetch_result(_as_data(result)).model_fields_set


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"pages_scraped": -1}, "fetcher.pages_scraped"),
        ({"has_more": "perhaps"}, "fetcher.has_more"),
        ({"stats": ks.FetchStats.model_construct(items_scraped=-3)}, "fetcher.stats.items_scraped"),
    ],
    ids=["pages", "has-more", "stats"],
)
def test_a_checked_results_other_fields_are_still_checked(
    changes: dict[str, Any], field: str
) -> None:
    checked = _checked()
    value = ks.FetchResult.model_construct(listings=checked.listings, **changes)
    got = _outcome(value)
    assert got[0] == "refused"
    assert got[1] == field
    assert got == _outcome(_as_data(value))


def test_a_listing_added_after_the_check_is_validated() -> None:
    result = _checked()
    result.listings.append(ks.Listing.model_construct(**_fields(item_id="B", price=-1)))
    got = _outcome(result)
    assert got[:2] == ("refused", "fetcher.listings[3].price")
    result.listings[-1] = ks.Listing(**_fields(item_id="A0"))  # valid, but a duplicate
    with pytest.raises(ks.InvalidInputError, match="duplicate"):
        validate_fetch_result(result)


def test_fetch_checked_means_validated_checked_and_unchanged() -> None:
    alone = ks.Listing(**_fields())
    assert is_validated_listing(alone)
    assert not is_fetch_checked_listing(alone)  # its extra has not been capped yet
    checked = ks.FetchResult(listings=[alone]).listings[0]
    assert is_fetch_checked_listing(checked)
    assert not is_fetch_checked_listing(ks.Listing.model_construct(**_fields()))
    assert not is_fetch_checked_listing(checked.model_copy())
    assert not is_fetch_checked_listing(_fields())
    object.__setattr__(checked, "price", checked.price + 1)
    assert not is_fetch_checked_listing(checked)


@pytest.mark.parametrize("text", ["x", "é", "\u20ac", "\U0001f0cf", '"'])
def test_extra_is_capped_at_its_json_size_in_bytes(text: str) -> None:
    def size(extra: dict[str, Any]) -> int:
        return len(json.dumps(extra, allow_nan=False, separators=(",", ":")).encode())

    blob = text * (models.MAX_EXTRA_BYTES // size({"b": text}))
    while size({"b": blob + text}) <= models.MAX_EXTRA_BYTES:
        blob += text
    fits, over = {"b": blob}, {"b": blob + text}
    assert size(fits) <= models.MAX_EXTRA_BYTES < size(over)
    assert ks.FetchResult(listings=[ks.Listing(**_fields(extra=fits))]).listings[0].extra == fits
    with pytest.raises(ks.InvalidInputError, match="at most 8192 bytes"):
        validate_fetch_result([ks.Listing(**_fields(extra=over))])
    with pytest.raises(ks.InvalidInputError, match="JSON object"):
        validate_fetch_result([ks.Listing(**_fields(extra={"nan": float("nan")}))])


# -- the hot tier's look before paying -----------------------------------------------------


def _worker(redis_url: str, prefix: str, market: FakeMarketplace) -> ks.CompsStore:
    return ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=redis_url,
        key_prefix=prefix,
        fetchers={"sold": market.sold},
    )


def _counted(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[object]:
    """The first argument of every call of ``owner.name`` from now on, in order."""
    calls: list[object] = []
    method = getattr(owner, name)

    async def counted(self: object, *args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return await method(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def _counted_looks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    return _counted(monkeypatch, FetchCoordinator, "_ready")


async def test_a_never_seen_query_is_looked_up_once_before_paying(
    redis_base_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks = _counted_looks(monkeypatch)
    market = FakeMarketplace(listings=3)
    async with _worker(redis_base_url, key_prefix, market) as store:
        first = await store.comps.search(CARD)
        assert first.source == "api"
        assert len(looks) == 1  # the lock holder's look; none before taking the lock
        assert market.call_count == 1


async def test_a_search_that_raced_a_fetch_of_its_process_does_not_pay(
    redis_base_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    market = FakeMarketplace(listings=3)
    async with _worker(redis_base_url, key_prefix, market) as store:
        await store.comps.search(CARD)
        coordinator = store.comps._fetching
        (identity,) = coordinator._landings
        looks = _counted_looks(monkeypatch)
        # What a search whose lookup missed just before that flight landed then asks:
        request = ks.FetchRequest(query=CARD, search_type=ks.SearchType.SOLD)
        stored, source, paid = await coordinator.fetch(
            identity, request, market.sold, on_fetched=lambda _: None
        )
        assert (source, paid) == (ks.Source.REDIS, False)
        assert len(looks) == 1  # found before taking the lock
        assert store.metrics()["single_flight_waits"] == 1
        assert market.call_count == 1
        assert len(stored.listings) == 3


async def test_a_search_that_raced_another_processs_fetch_does_not_pay(
    redis_base_url: str, key_prefix: str
) -> None:
    market = FakeMarketplace(listings=3)
    first = _worker(redis_base_url, key_prefix, market)
    second = _worker(redis_base_url, key_prefix, market)
    async with first, second:
        await first.comps.search(CARD)
        (identity,) = first.comps._fetching._landings
        coordinator = second.comps._fetching
        assert identity not in coordinator._landings
        request = ks.FetchRequest(query=CARD, search_type=ks.SearchType.SOLD)
        _, source, paid = await coordinator.fetch(
            identity, request, market.sold, on_fetched=lambda _: None
        )
        assert (source, paid) == (ks.Source.REDIS, False)  # the lock holder's look found it
        assert market.call_count == 1
        assert (await second.comps.search(CARD)).source in ("memory", "redis")
        assert market.call_count == 1


# -- the fetch lock goes with the result's write -------------------------------------------


def _lock_key(prefix: str) -> str:
    identity = ResultIdentity.of(ks.normalize_card(CARD), ks.SearchType.SOLD, {})
    return identity.redis_lock_key(prefix)


def _counted_unlocks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    return _counted(monkeypatch, RedisTier, "unlock")


async def test_the_results_write_lets_go_of_the_fetch_lock(
    redis_base_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    unlocks = _counted_unlocks(monkeypatch)
    market = FakeMarketplace(listings=3)
    client = redis.Redis.from_url(redis_base_url)
    async with _worker(redis_base_url, key_prefix, market) as store:
        assert (await store.comps.search(CARD)).source == "api"
        assert await client.exists(_lock_key(key_prefix)) == 0
        assert unlocks == []  # no round trip of its own
        assert (await store.comps.search(CARD)).source == "memory"
    await client.aclose()
    assert market.call_count == 1


async def test_a_refused_write_lets_go_of_the_lock_too(
    redis_base_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    unlocks = _counted_unlocks(monkeypatch)
    market = FakeMarketplace(listings=3)
    client = redis.Redis.from_url(redis_base_url)
    identity = ResultIdentity.of(ks.normalize_card(CARD), ks.SearchType.SOLD, {})
    # Redis holds a newer fetch's stamp: the script refuses this older one.
    await client.set(identity.redis_stamp_key(key_prefix), 2**52, px=60_000)
    async with _worker(redis_base_url, key_prefix, market) as store:
        assert (await store.comps.search(CARD)).source == "api"
        assert await client.exists(identity.redis_key(key_prefix)) == 0  # refused
        assert await client.exists(_lock_key(key_prefix)) == 0
        assert unlocks == []
    await client.aclose()


async def test_a_fenced_result_that_is_not_written_still_releases_the_lock(
    redis_base_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    unlocks = _counted_unlocks(monkeypatch)
    market = FakeMarketplace(listings=3)
    client = redis.Redis.from_url(redis_base_url)
    identity = ResultIdentity.of(ks.normalize_card(CARD), ks.SearchType.SOLD, {})
    async with _worker(redis_base_url, key_prefix, market) as store:
        # This worker learnt of an invalidation after any moment this fetch can have.
        store.comps.learn_fence(identity.card_key, datetime(2100, 1, 1, tzinfo=UTC))
        await store.comps.search(CARD)
        assert len(unlocks) == 1  # the hot tier was not written: the holder let go itself
        assert await client.exists(_lock_key(key_prefix)) == 0
    await client.aclose()


async def test_the_write_leaves_a_lock_that_is_no_longer_its_own(
    redis_base_url: str, key_prefix: str
) -> None:
    market = FakeMarketplace(listings=3)
    client = redis.Redis.from_url(redis_base_url)

    async def outlived(request: ks.FetchRequest) -> ks.FetchResult:
        # The holder's lock expired mid-fetch and another process took it.
        await client.set(_lock_key(key_prefix), "another-holder", px=60_000)
        return await market.sold(request)

    store = ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=redis_base_url,
        key_prefix=key_prefix,
        fetchers={"sold": outlived},
    )
    async with store:
        assert (await store.comps.search(CARD)).source == "api"
        assert await client.get(_lock_key(key_prefix)) == b"another-holder"
    await client.aclose()
