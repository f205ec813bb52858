"""Small operational rules: UTC bounds, password hashing off the shared executor, foreign keys
named as such, the statement cache setting, and metrics that never keep a store alive."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import kuya_store as ks
from kuya_store.db.engine import create_engine
from kuya_store.db.tables import metadata
from kuya_store.demo import FakeMarketplace

CARD = "1986 Fleer Michael Jordan #57"
PASSWORD = "correct horse battery staple"
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture
async def store(migrated_url: str) -> AsyncIterator[ks.CompsStore]:
    clock = ks.ManualClock(datetime(2026, 1, 3, 12, tzinfo=UTC))
    async with ks.CompsStore(database_url=migrated_url, clock=clock) as store:
        yield store


# -- price_history bounds are UTC days ----------------------------------------------------


async def test_price_history_bounds_are_utc_days(store: ks.CompsStore) -> None:
    table = metadata.tables["price_snapshots"]
    rows = [
        {
            "card_identifier": ks.normalize_card(CARD),
            "snapshot_date": date(2026, 1, day),
            "market_value": Decimal(day),
        }
        for day in (1, 2, 3)
    ]
    async with store._database.engine.begin() as conn:  # type: ignore[union-attr]
        await conn.execute(table.insert(), rows)
    # 20:00 on Jan 1 in California is 04:00 on Jan 2 in UTC.
    california = timezone(timedelta(hours=-8))
    start = datetime(2026, 1, 1, 20, tzinfo=california)
    history = await store.analytics.price_history(CARD, start=start)
    assert [h.snapshot_date for h in history] == [date(2026, 1, 2), date(2026, 1, 3)]
    # 01:00 on Jan 3 in Karachi is 20:00 on Jan 2 in UTC.
    end = datetime(2026, 1, 3, 1, tzinfo=timezone(timedelta(hours=5)))
    history = await store.analytics.price_history(CARD, end=end)
    assert [h.snapshot_date for h in history] == [date(2026, 1, 1), date(2026, 1, 2)]
    assert len(await store.analytics.price_history(CARD, date(2026, 1, 2), date(2026, 1, 2))) == 1


@pytest.mark.parametrize("field", ["start", "end"])
async def test_price_history_rejects_naive_datetimes(store: ks.CompsStore, field: str) -> None:
    with pytest.raises(ks.InvalidInputError) as caught:
        await store.analytics.price_history(CARD, **{field: datetime(2026, 1, 2, 12)})
    assert caught.value.field == field
    assert "timezone" in caught.value.reason


# -- password hashing ------------------------------------------------------------------------


def test_importing_the_library_spends_no_password_hash() -> None:
    probe = (
        "import argon2\n"
        "calls = []\n"
        "real = argon2.PasswordHasher.hash\n"
        "def counted(self, *args, **kwargs):\n"
        "    calls.append(1)\n"
        "    return real(self, *args, **kwargs)\n"
        "argon2.PasswordHasher.hash = counted\n"
        "import kuya_store, kuya_store.accounts\n"
        "print(len(calls))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"


async def test_login_burst_leaves_the_default_executor_free(sqlite_url: str) -> None:
    await ks.migrations.upgrade_async(sqlite_url)
    async with ks.CompsStore(database_url=sqlite_url) as store:
        # Unknown emails: a full argon2 verification each, and no write after it, so a login
        # is done as soon as its hash is.
        assert await store.accounts.authenticate("warm@example.com", PASSWORD) is None
        logins = [
            asyncio.create_task(store.accounts.authenticate(f"u{i}@example.com", PASSWORD))
            for i in range(40)
        ]
        await asyncio.wait(logins, return_when=asyncio.FIRST_COMPLETED)
        # A sync fetcher's turn on the default executor, in the middle of the burst.
        assert await asyncio.to_thread(lambda: "fetched") == "fetched"
        finished_first = sum(login.done() for login in logins)
        assert await asyncio.gather(*logins) == [None] * 40
    # Queued behind the burst, the call would have waited for most of the 40 hashes.
    assert finished_first < 8


async def test_close_stops_the_hashing_threads(sqlite_url: str) -> None:
    await ks.migrations.upgrade_async(sqlite_url)
    store = ks.CompsStore(database_url=sqlite_url)
    await store.start()
    await store.accounts.create_user("a@example.com", PASSWORD)
    before = {t.name for t in threading.enumerate() if "kuya-argon2" in t.name}
    assert before
    await store.close()
    for _ in range(100):
        alive = [t for t in threading.enumerate() if "kuya-argon2" in t.name]
        if not alive:
            break
        await asyncio.sleep(0.05)
    assert alive == []


# -- saved searches name a missing user ------------------------------------------------------


async def test_save_search_for_an_unknown_user_is_not_found(store: ks.CompsStore) -> None:
    with pytest.raises(ks.NotFoundError, match="user 999"):
        await store.accounts.save_search(999, "mine", CARD)
    user = await store.accounts.create_user("a@example.com", PASSWORD)
    await store.accounts.save_search(user.id, "mine", CARD)
    with pytest.raises(ks.InvalidInputError) as caught:
        await store.accounts.save_search(user.id, "mine", CARD)
    assert caught.value.field == "name"


async def test_save_search_for_a_user_deleted_meanwhile_is_not_found(postgres_url: str) -> None:
    await ks.migrations.upgrade_async(postgres_url)
    users = metadata.tables["users"]
    other = create_async_engine(postgres_url)
    async with ks.CompsStore(database_url=postgres_url) as store:
        user = await store.accounts.create_user("gone@example.com", PASSWORD)
        try:
            async with other.connect() as admin:
                # Deleted, not yet committed: the row is still there for everyone else.
                await admin.execute(sa.delete(users).where(users.c.id == user.id))
                saving = asyncio.create_task(store.accounts.save_search(user.id, "mine", CARD))
                waiting = sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                for _ in range(500):  # until the insert's key check waits on the deleted row
                    if (await admin.execute(waiting)).scalar_one():
                        break
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("the insert never waited on the deleted user")
                await admin.commit()
            with pytest.raises(ks.NotFoundError, match=f"user {user.id}"):
                await saving
        finally:
            await other.dispose()


# -- statement_cache_size ----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 17])
async def test_statement_cache_size_sizes_both_prepared_statement_caches(
    postgres_url: str, size: int
) -> None:
    settings = ks.StoreSettings(database_url=postgres_url, statement_cache_size=size)
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            adapter = raw.dbapi_connection
            driver = raw.driver_connection
            assert driver._stmt_cache.get_max_size() == size  # type: ignore[union-attr]
            cache = adapter._prepared_statement_cache  # type: ignore[union-attr]
            assert (cache is None) if size == 0 else (cache.capacity == size)
    finally:
        await engine.dispose()
    # And the store works on it: PgBouncer in transaction mode needs 0.
    await ks.migrations.upgrade_async(postgres_url)
    market = FakeMarketplace(listings=5)
    async with ks.CompsStore(settings, fetchers={"sold": market.sold}) as store:
        await store.comps.search(CARD)
        await store.flush()
        assert len(await store.analytics.price_history(CARD)) == 1
        assert (await store.analytics.search_stats()).total == 1


# -- Prometheus never keeps a store alive ---------------------------------------------------


async def test_exposition_does_not_keep_a_closed_store_alive(sqlite_url: str) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from kuya_store.integrations.prometheus import StoreCollector, exposition

    store = ks.CompsStore(database_url=sqlite_url, mode="cache_only")
    await store.start()
    body, _ = exposition(store)
    assert b"kuya_store_searches_total" in body
    own = CollectorRegistry(auto_describe=False)
    own.register(StoreCollector(store))
    await store.close()
    gone = weakref.ref(store)
    del store
    gc.collect()
    assert gone() is None
    assert b"kuya_" not in generate_latest(own)  # a collector outliving its store is empty
