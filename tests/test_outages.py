"""During an outage: health says what can still answer, and every database call fails fast.

The servers really go away: a PostgreSQL cluster of the test's own is stopped, a SQLite
file's directory disappears (an unmounted volume), a port accepts connections but never
answers (a hung server).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import kuya_store as ks
from kuya_store.demo import FakeMarketplace
from kuya_store.store import health_status
from kuya_store.testing.servers import PostgresServer, RedisServer, free_port

CARD = "1986 Fleer Michael Jordan #57"
PASSWORD = "correct horse battery staple"
T0 = datetime(2026, 11, 25, 12, tzinfo=UTC)
# Far above what a call that fails fast takes, far below what one that hangs would.
BOUND = 10.0

Call = Callable[[], Awaitable[Any]]


# -- health: the decision ----------------------------------------------------------------

# (redis, database, memory_tier, reads_database, fetcher) -> status; None = not configured.
HEALTH_TABLE = [
    # memory hot tier and a database (the embedded default)
    ((None, True, True, True, True), "healthy"),
    ((None, False, True, True, True), "degraded"),
    ((None, False, True, True, False), "degraded"),  # the memory tier still answers hits
    ((None, False, True, False, False), "degraded"),  # dual_write: memory answers
    # memory hot tier alone (cache_only)
    ((None, None, True, False, True), "healthy"),
    ((None, None, True, False, False), "healthy"),
    # Redis and a database
    ((True, True, False, True, True), "healthy"),
    ((False, True, False, True, False), "degraded"),  # the database answers
    ((True, False, False, True, False), "degraded"),  # Redis answers
    ((False, False, False, True, True), "degraded"),  # only the fetcher answers, at a cost
    ((False, False, False, True, False), "unhealthy"),
    ((False, True, False, False, False), "unhealthy"),  # dual_write never reads the database
    ((False, True, False, False, True), "degraded"),
    # Redis alone (cache_only)
    ((True, None, False, False, False), "healthy"),
    ((False, None, False, False, True), "degraded"),
    ((False, None, False, False, False), "unhealthy"),
]


@pytest.mark.parametrize(("parts", "status"), HEALTH_TABLE)
def test_health_status_table(parts: tuple[Any, ...], status: str) -> None:
    redis, database, memory_tier, reads_database, fetcher = parts
    assert (
        health_status(
            redis=redis,
            database=database,
            memory_tier=memory_tier,
            reads_database=reads_database,
            fetcher=fetcher,
        )
        == status
    )


def _documented_health() -> list[tuple[dict[str, Any], str]]:
    """The rows of the table in docs/operations.md, as ``health_status`` arguments."""
    doc = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    rows = []
    for line in doc.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] not in ("memory", "Redis"):
            continue
        hot, database, fetcher, down, status = cells
        redis = None if hot == "memory" else "Redis" not in down
        arguments = {
            "redis": redis,
            "database": None if database == "none" else "database" not in down,
            "memory_tier": hot == "memory",
            "reads_database": database == "read_through",
            "fetcher": fetcher == "yes",
        }
        rows.append((arguments, status))
    return rows


def test_documented_health_table_is_what_the_store_decides() -> None:
    rows = _documented_health()
    assert len(rows) >= 12
    assert {status for _, status in rows} == {"healthy", "degraded", "unhealthy"}
    for arguments, status in rows:
        assert health_status(**arguments) == status, arguments


# -- health: on real servers -------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


async def test_database_down_with_memory_tier_is_degraded_and_searches_answer(
    own_postgres: PostgresServer,
) -> None:
    await ks.migrations.upgrade_async(own_postgres.url)
    market = FakeMarketplace(listings=4)
    async with ks.CompsStore(
        database_url=own_postgres.url, fetchers={"sold": market.sold}, db_connect_timeout=1
    ) as store:
        await store.comps.search(CARD)
        assert (await store.health()).status == "healthy"
        own_postgres.stop()
        health = await store.health()
        assert (health.status, health.redis, health.database) == ("degraded", False, False)
        # And it is true: a hit from memory, a miss from the fetcher.
        assert (await store.comps.search(CARD)).source == "memory"
        assert (await store.comps.search("2003 Topps Chrome LeBron James #111")).source == "api"
        own_postgres.start()
        assert (await store.health()).status == "healthy"


async def test_nothing_answers_only_without_tiers_and_fetcher(
    own_postgres: PostgresServer, key_prefix: str
) -> None:
    await ks.migrations.upgrade_async(own_postgres.url)
    market = FakeMarketplace(listings=4)
    with RedisServer() as redis:
        options: dict[str, Any] = {
            "database_url": own_postgres.url,
            "redis_url": redis.url,
            "key_prefix": key_prefix,
            "db_connect_timeout": 1,
        }
        async with (
            ks.CompsStore(**options) as bare,
            ks.CompsStore(**options, fetchers={"sold": market.sold}) as fetching,
        ):
            assert (await bare.health()).status == "healthy"
            redis.stop()
            assert (await bare.health()).status == "degraded"  # the database answers
            own_postgres.stop()
            assert (await bare.health()).status == "unhealthy"
            assert (await fetching.health()).status == "degraded"
            assert (await fetching.comps.search(CARD)).source == "api"
            with pytest.raises(ks.FetcherError):
                await bare.comps.search(CARD)


# -- every database call fails fast and clearly --------------------------------------------


def _calls(store: ks.CompsStore, tmp_path: Path) -> dict[str, Call]:
    good_csv = tmp_path / "good.csv"
    good_csv.write_text("card_identifier,snapshot_date,market_value\nx,2026-11-24,1.00\n")
    comps, analytics, accounts, backup = store.comps, store.analytics, store.accounts, store.backup
    return {
        "comps.get_listing": lambda: comps.get_listing("item-1"),
        "comps.listings_due_for_refresh": lambda: comps.listings_due_for_refresh(),
        "analytics.price_history": lambda: analytics.price_history(CARD),
        "analytics.price_trend": lambda: analytics.price_trend(CARD),
        "analytics.search_stats": lambda: analytics.search_stats(),
        "analytics.top_searches": lambda: analytics.top_searches(),
        "accounts.create_user": lambda: accounts.create_user("a@example.com", PASSWORD),
        "accounts.authenticate": lambda: accounts.authenticate("a@example.com", PASSWORD),
        "accounts.get_user": lambda: accounts.get_user(1),
        "accounts.set_active": lambda: accounts.set_active(1, False),
        "accounts.save_search": lambda: accounts.save_search(1, "mine", CARD),
        "accounts.list_saved_searches": lambda: accounts.list_saved_searches(1),
        "accounts.rename_saved_search": lambda: accounts.rename_saved_search(1, 1, "other"),
        "accounts.set_alert": lambda: accounts.set_alert(1, 1, "5.00"),
        "accounts.delete_saved_search": lambda: accounts.delete_saved_search(1, 1),
        "accounts.run_alerts": lambda: accounts.run_alerts(),
        "backup.count_snapshots": lambda: backup.count_snapshots(),
        "backup.export_snapshots_csv": lambda: backup.export_snapshots_csv(tmp_path / "out.csv"),
        "backup.import_snapshots_csv": lambda: backup.import_snapshots_csv(good_csv),
        "backup.purge_since": lambda: backup.purge_since(T0),
    }


def _bad_calls(store: ks.CompsStore, tmp_path: Path) -> dict[str, tuple[Call, str]]:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("card_identifier,snapshot_date\nx,not a date\n")
    naive = datetime(2026, 11, 25, 12)
    comps, analytics, accounts, backup = store.comps, store.analytics, store.accounts, store.backup
    return {
        "comps.get_listing": (lambda: comps.get_listing(""), "item_id"),
        "comps.listings_due_for_refresh": (lambda: comps.listings_due_for_refresh(0), "limit"),
        "analytics.price_history": (lambda: analytics.price_history(CARD, naive), "start"),
        "analytics.price_trend": (lambda: analytics.price_trend(CARD, days=0), "days"),
        "analytics.search_stats": (lambda: analytics.search_stats(naive), "since"),
        "analytics.top_searches": (lambda: analytics.top_searches(0), "limit"),
        "accounts.create_user": (lambda: accounts.create_user("nope", PASSWORD), "email"),
        "accounts.get_user": (lambda: accounts.get_user(0), "user_id"),
        "accounts.save_search": (lambda: accounts.save_search(1, " ", CARD), "name"),
        "accounts.list_saved_searches": (lambda: accounts.list_saved_searches(-1), "user_id"),
        "accounts.set_alert": (lambda: accounts.set_alert(1, 1, "-5"), "alert_threshold"),
        "accounts.delete_saved_search": (
            lambda: accounts.delete_saved_search(1, 0),
            "saved_search_id",
        ),
        "accounts.run_alerts": (lambda: accounts.run_alerts(-1), "refresh_budget"),
        "backup.import_snapshots_csv": (lambda: backup.import_snapshots_csv(bad_csv), "csv"),
        "backup.purge_since": (lambda: backup.purge_since(naive), "moment"),
    }


async def _assert_every_call_is_unavailable(store: ks.CompsStore, tmp_path: Path) -> None:
    wrong: list[str] = []
    for name, call in _calls(store, tmp_path).items():
        started = time.monotonic()
        try:
            await call()
        except ks.StorageUnavailableError as exc:
            if not isinstance(exc.__cause__, Exception):  # the driver's error, for the logs
                wrong.append(f"{name} lost the driver's error")
        except Exception as exc:
            wrong.append(f"{name} raised {type(exc).__module__}.{type(exc).__name__}: {exc}")
            continue
        else:
            wrong.append(f"{name} returned")
            continue
        if (elapsed := time.monotonic() - started) > BOUND:
            wrong.append(f"{name} took {elapsed:.1f} s")
    assert wrong == []
    for name, (call, field) in _bad_calls(store, tmp_path).items():
        with pytest.raises(ks.InvalidInputError) as caught:
            await call()
        assert caught.value.field == field, name
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "out.csv.partial").exists()


async def test_postgres_stopped_every_call_is_storage_unavailable(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    await ks.migrations.upgrade_async(own_postgres.url)
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(
        database_url=own_postgres.url,
        fetchers={"sold": market.sold},
        db_connect_timeout=1,
        db_command_timeout=2,
    ) as store:
        await store.comps.search(CARD)
        assert await store.flush(timeout=30)
        await store.analytics.search_stats()  # so pooled connections exist
        own_postgres.stop()
        await _assert_every_call_is_unavailable(store, tmp_path)
        own_postgres.start()
        assert (await store.analytics.search_stats()).total >= 1  # and back when it is


async def test_sqlite_volume_gone_every_call_is_storage_unavailable(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    url = f"sqlite+aiosqlite:///{volume / 'kuya.db'}"
    await ks.migrations.upgrade_async(url)
    volume.rename(tmp_path / "unmounted")  # root ignores permissions; a missing path it cannot
    async with ks.CompsStore(database_url=url) as store:
        await _assert_every_call_is_unavailable(store, tmp_path)


@pytest.fixture
def hung_server() -> Iterator[str]:
    """A port that accepts connections and never says a word, like a frozen server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen(64)
        host, port = listener.getsockname()
        yield f"postgresql+asyncpg://kuya:pw@{host}:{port}/kuya"


async def test_hung_postgres_fails_within_the_connect_timeout(
    hung_server: str, tmp_path: Path
) -> None:
    async with ks.CompsStore(
        database_url=hung_server, mode="dual_write", db_connect_timeout=0.5
    ) as store:
        started = time.monotonic()
        with pytest.raises(ks.StorageUnavailableError):
            await store.analytics.search_stats()
        with pytest.raises(ks.StorageUnavailableError):
            await store.comps.get_listing("item-1")
        with pytest.raises(ks.StorageUnavailableError):
            await store.accounts.authenticate("a@example.com", PASSWORD)
        assert time.monotonic() - started < BOUND


async def test_a_missing_schema_is_not_called_an_outage(sqlite_url: str) -> None:
    import sqlalchemy as sa

    async with ks.CompsStore(database_url=sqlite_url, mode="dual_write") as store:
        with pytest.raises(sa.exc.OperationalError, match="no such table"):
            await store.analytics.search_stats()
