"""SyncCompsStore: the same store without await, from many threads, closed cleanly."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import kuya_store as ks
from kuya_store.demo import FakeMarketplace

QUERY = "2020 Prizm Justin Herbert #325"


def test_same_methods_without_await(migrated_url: str) -> None:
    market = FakeMarketplace(listings=6)
    with ks.SyncCompsStore(database_url=migrated_url, fetchers={"sold": market.sold}) as store:
        first = store.comps.search(QUERY)
        again = store.comps.search(QUERY.lower())
        assert (first.source, again.source) == ("api", "memory")
        assert store.flush()
        assert store.health().status == "healthy"
        assert store.ping_database() and not store.ping_redis()
        assert len(store.analytics.price_history(QUERY)) == 1
        user = store.accounts.create_user("sync@example.com", "long enough password")
        assert store.accounts.authenticate("sync@example.com", "long enough password").id == user.id
        assert store.metrics()["api_calls_saved"] == 1
        assert isinstance(store.database_size(), int)
        assert "SyncCompsStore" in repr(store)


def test_sync_fetchers_and_many_threads(migrated_url: str) -> None:
    calls = []
    lock = threading.Lock()

    def fetch(request: ks.FetchRequest) -> ks.FetchResult:  # a plain function: runs in a thread
        with lock:
            calls.append(request.query)
        return ks.FetchResult(
            listings=[
                ks.Listing(
                    item_id=f"{request.query[-2:]}-{i}",
                    title=request.query,
                    price="5.00",
                    sold=True,
                )
                for i in range(3)
            ]
        )

    store = ks.SyncCompsStore(database_url=migrated_url, fetchers={"sold": fetch})
    queries = [f"{QUERY} {i % 10:02d}" for i in range(200)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(store.comps.search, queries))
    assert len(results) == 200
    assert sorted(set(calls)) == sorted(set(queries))  # one call per distinct card
    assert store.flush()
    store.close()
    store.close()  # idempotent
    assert not any(t.name == "kuya-store-loop" and t.is_alive() for t in threading.enumerate())


def test_errors_cross_the_thread_boundary(migrated_url: str) -> None:
    with ks.SyncCompsStore(database_url=migrated_url) as store:
        with pytest.raises(ks.InvalidInputError) as info:
            store.comps.search("")
        assert info.value.field == "query"
        with pytest.raises(ks.FetcherError):
            store.comps.search(QUERY)


def test_bad_settings_leave_no_thread_behind() -> None:
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(ks.InvalidInputError):
        ks.SyncCompsStore(database_url="mysql://x/y")
    leftover = [
        t for t in threading.enumerate() if t.ident not in before and t.name == "kuya-store-loop"
    ]
    assert leftover == []


def test_parts_and_methods_the_facade_does_not_name_are_made_blocking(
    migrated_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Extras:
        def __init__(self, store: ks.CompsStore) -> None:
            self._store = store

        async def count(self) -> int:
            return len(await self._store.analytics.top_searches())

    class Extended(ks.CompsStore):
        async def tidy(self) -> str:
            return "tidied"

        @property
        def extras(self) -> Extras:
            return Extras(self)

    monkeypatch.setattr("kuya_store.sync.CompsStore", Extended)
    with ks.SyncCompsStore(database_url=migrated_url) as store:
        assert store.tidy() == "tidied"  # type: ignore[attr-defined]
        assert store.extras.count() == 0  # type: ignore[attr-defined]
        assert store.extras is store.extras  # type: ignore[attr-defined]  # one proxy, made once
        with pytest.raises(AttributeError):
            store.no_such_part  # noqa: B018
