"""Stores on one Redis as the workers of a fleet, and waiting for what they hear."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import kuya_store as ks
from kuya_store.demo import FakeMarketplace


def cache_only_store(
    redis_url: str, key_prefix: str, market: FakeMarketplace, **more: Any
) -> ks.CompsStore:
    """A worker: the near-cache (coherent unless told otherwise) over ``redis_url``."""
    return ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        redis_url=redis_url,
        key_prefix=key_prefix,
        fetchers={"sold": market.sold},
        **more,
    )


@contextlib.asynccontextmanager
async def coherent_pair(
    redis_url: str, key_prefix: str, market: FakeMarketplace
) -> AsyncIterator[tuple[ks.CompsStore, ks.CompsStore]]:
    """Two workers on one Redis and one marketplace, given once both hear every change."""
    async with (
        cache_only_store(redis_url, key_prefix, market) as one,
        cache_only_store(redis_url, key_prefix, market) as two,
    ):
        await until(lambda: coherent(one) and coherent(two))
        yield one, two


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def coherent(store: ks.CompsStore) -> bool:
    """Whether the store's near-cache hears every change now."""
    return store._near is not None and store._near.coherent
