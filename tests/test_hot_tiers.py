"""One suite, every hot tier: the in-process memory tier and Redis behave the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

import kuya_store as ks
from kuya_store.breaker import CircuitBreaker
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult, decode, encode
from kuya_store.testing.servers import RedisServer
from kuya_store.tiers import HotTier
from kuya_store.tiers.memory import MemoryTier
from kuya_store.tiers.redis import RedisTier

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def _result(card: str = "wemby", price: str = "10.00") -> StoredResult:
    return StoredResult(
        query=card,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        params={"pages": 1},
        listings=[
            ks.Listing(item_id="1", title="t", price=Decimal(price), sold=True, extra={"link": "x"})
        ],
        fetched_at=NOW,
        pages_scraped=1,
    )


def _identity(card: str = "wemby", pages: int = 1) -> ResultIdentity:
    return ResultIdentity.of(card, ks.SearchType.SOLD, {"pages": pages})


_REDIS_URLS = {
    "redis": "redis_base_url",
    "sentinel": "redis_sentinel_url",
    "cluster": "redis_cluster_url",
}


@pytest.fixture(params=["memory", "redis", "sentinel", "cluster"])
async def tier(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[HotTier]:
    if request.param == "memory":
        clock = ks.ManualClock(NOW)
        yield MemoryTier(100, clock)
        return
    settings = StoreSettings(
        redis_url=request.getfixturevalue(_REDIS_URLS[request.param]), key_prefix=key_prefix
    )
    redis_tier = RedisTier(settings, Metrics())
    yield redis_tier
    await redis_tier.close()


async def test_set_then_get_returns_an_equal_result(tier: HotTier) -> None:
    assert await tier.get(_identity()) is None
    await tier.set(_identity(), _result(), timedelta(minutes=5))
    assert await tier.get(_identity()) == _result()
    assert await tier.get(_identity(pages=2)) is None


async def test_overwrite_replaces(tier: HotTier) -> None:
    await tier.set(_identity(), _result(price="1.00"), timedelta(minutes=5))
    await tier.set(_identity(), _result(price="2.00"), timedelta(minutes=5))
    got = await tier.get(_identity())
    assert got is not None and got.listings[0].price == Decimal("2.00")


async def test_zero_ttl_stores_nothing(tier: HotTier) -> None:
    await tier.set(_identity(), _result(), timedelta(0))
    assert await tier.get(_identity()) is None


async def test_invalidate_drops_every_params_variant_of_the_card(tier: HotTier) -> None:
    for pages in (1, 2, 3):
        await tier.set(_identity(pages=pages), _result(), timedelta(minutes=5))
    await tier.set(_identity("other"), _result("other"), timedelta(minutes=5))
    assert await tier.invalidate(_identity()) == 3
    assert all([await tier.get(_identity(pages=p)) is None for p in (1, 2, 3)])
    assert await tier.get(_identity("other")) is not None


async def test_ping(tier: HotTier) -> None:
    assert await tier.ping() is True


def test_memory_tier_expires_by_its_clock_and_evicts_least_recently_used() -> None:
    import asyncio

    async def scenario() -> None:
        clock = ks.ManualClock(NOW)
        tier = MemoryTier(2, clock)
        await tier.set(_identity("a"), _result("a"), timedelta(seconds=10))
        await tier.set(_identity("b"), _result("b"), timedelta(seconds=10))
        assert await tier.get(_identity("a")) is not None  # a is now the most recent
        await tier.set(_identity("c"), _result("c"), timedelta(seconds=10))
        assert await tier.get(_identity("b")) is None  # evicted
        assert len(tier) == 2
        clock.advance(10)
        assert await tier.get(_identity("a")) is None  # expired
        assert await tier.invalidate(_identity("a")) == 0

    asyncio.run(scenario())


async def test_redis_ttl_is_set(redis_base_url: str, key_prefix: str, redis_client: object) -> None:
    tier = RedisTier(StoreSettings(redis_url=redis_base_url, key_prefix=key_prefix), Metrics())
    await tier.set(_identity(), _result(), timedelta(seconds=90))
    ttl = await tier.client.pttl(_identity().redis_key(key_prefix))
    assert 89_000 < ttl <= 90_000
    await tier.close()


def test_values_are_json_not_pickle() -> None:
    payload = encode(_result())
    assert payload.startswith(b"{") and b'"price":"10.00"' in payload
    assert decode(payload) == _result()


async def test_redis_down_is_a_miss_and_the_breaker_opens(key_prefix: str) -> None:
    with RedisServer() as server:
        metrics = Metrics()
        settings = StoreSettings(
            redis_url=server.url, key_prefix=key_prefix, breaker_failure_threshold=2
        )
        tier = RedisTier(settings, metrics)
        await tier.set(_identity(), _result(), timedelta(minutes=5))
        assert await tier.get(_identity()) is not None
        server.kill()
        for _ in range(5):
            assert await tier.get(_identity()) is None  # never raises
            await tier.set(_identity(), _result(), timedelta(minutes=5))
        assert await tier.ping() is False
        assert metrics.count("redis_errors") == 2  # then the breaker stops asking
        assert metrics.count("redis_breaker_opens") == 1
        assert metrics.count("redis_skipped") == 8
        await tier.close()


def test_circuit_breaker_states() -> None:
    now = [0.0]
    opened: list[int] = []
    breaker = CircuitBreaker(3, 5.0, monotonic=lambda: now[0], on_open=lambda: opened.append(1))
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow() and opened == [1]
    now[0] = 5.0
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.failure()  # the probe failed: open again
    assert breaker.state == "open" and opened == [1, 1]
    now[0] = 10.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()
