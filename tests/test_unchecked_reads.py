"""Reads that take a recently read connection unchecked: never a dead one for the caller.

Within ``pool_check_window`` of a read, the next read skips the pool's ``SELECT 1``; a
connection the server closed meanwhile makes that read run once more on a checked one.
Writes are always checked and never run twice. The servers here are killed while the
event loop is blocked, so the store has not yet seen the connections close when it
hands them out: exactly the case the check was for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import date

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

import kuya_store as ks
from kuya_store.db.engine import is_disconnect, must_check
from kuya_store.errors import StorageUnavailableError
from kuya_store.testing.servers import PostgresServer

HISTORY = """
INSERT INTO price_snapshots (card_identifier, snapshot_date, market_value, sample_size,
                             parallel_analysis)
SELECT 'ohtani', DATE '2026-11-01' + d, 10 + d, d, jsonb_build_object('base', d)
FROM generate_series(0, 29) AS d
"""
KILL_STORE = (
    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
    "WHERE application_name = 'kuya-store' AND pid <> pg_backend_pid()"
)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _load(url: str) -> None:
    await ks.migrations.upgrade_async(url)
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute(HISTORY)
    finally:
        await conn.close()


def _blocking(coro_factory: object) -> object:
    """Run a coroutine on another thread's loop while this loop waits, seeing nothing."""
    out: list[object] = []

    def target() -> None:
        out.append(asyncio.run(coro_factory()))  # type: ignore[operator]

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return out[0]


def _kill_store_backends(url: str) -> int:
    async def kill() -> int:
        admin = await asyncpg.connect(_dsn(url))
        try:
            return int(await admin.fetchval(KILL_STORE))
        finally:
            await admin.close()

    killed = _blocking(kill)
    assert isinstance(killed, int)
    return killed


async def _kill_the_store_backend_waiting_on_a_lock(admin: asyncpg.Connection) -> int:
    """Terminate the store's backends once one waits on a lock (up to 10 s); how many."""
    for _ in range(500):
        waiting = int(
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'kuya-store' AND wait_event_type = 'Lock'"
            )
        )
        if waiting:
            return waiting
        await asyncio.sleep(0.02)
    return 0


class _Statements:
    """Every statement the store's connections send, in order (asyncpg's query log)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def attach(self, engine: sa.ext.asyncio.AsyncEngine) -> None:
        def on_connect(dbapi_connection: object, _record: object) -> None:
            driver = dbapi_connection.driver_connection  # type: ignore[attr-defined]
            driver.add_query_logger(lambda logged: self.sent.append(logged.query))

        sa.event.listen(engine.sync_engine, "connect", on_connect)

    def checks(self) -> int:
        return sum(1 for q in self.sent if q.strip().upper() == "SELECT 1")


def _engine(store: ks.CompsStore) -> sa.ext.asyncio.AsyncEngine:
    database = store._database
    assert database is not None
    return database.engine


# -- the decisions, without servers ----------------------------------------------------


@pytest.mark.parametrize(
    ("read_ago", "window", "may_skip", "check"),
    [
        (0.01, 1.0, True, False),  # a read finished with it just now
        (0.99, 1.0, True, False),
        (1.0, 1.0, True, True),  # idle as long as the window: checked
        (30.0, 1.0, True, True),
        (None, 1.0, True, True),  # a write, a probe, or nothing used it last
        (0.01, 1.0, False, True),  # a write never skips the check
        (0.01, 0.0, True, True),  # window 0: always checked
        (-0.5, 1.0, True, True),  # a clock that went back proves nothing
    ],
)
def test_which_checkouts_are_checked(
    read_ago: float | None, window: float, may_skip: bool, check: bool
) -> None:
    assert must_check(read_ago, window, may_skip) is check


def test_what_counts_as_a_lost_connection() -> None:
    lost_pg = asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle")
    shutdown = asyncpg.exceptions.AdminShutdownError("terminating connection")
    farewell = asyncpg.exceptions._base.InternalClientError("another operation is in progress")
    closed = asyncpg.exceptions._base.InterfaceError("connection is closed")
    wrapped = sa_exc.DBAPIError("SELECT", None, ConnectionResetError(), connection_invalidated=True)
    for error in (lost_pg, shutdown, farewell, closed, wrapped, ConnectionResetError()):
        assert is_disconnect(error), error
    caused = RuntimeError("wrapped")
    caused.__cause__ = shutdown
    assert is_disconnect(caused)
    # A statement the server answered with an error, a slow server, the store's own
    # errors: another connection would fail alike.
    for error in (
        asyncpg.exceptions.UndefinedTableError("no such table"),
        asyncpg.exceptions.QueryCanceledError("statement timeout"),
        TimeoutError(),
        StorageUnavailableError("down"),
        ValueError("bad"),
    ):
        assert not is_disconnect(error), error


def test_the_window_is_a_setting() -> None:
    assert ks.StoreSettings().pool_check_window.total_seconds() == 1
    assert ks.StoreSettings(pool_check_window=0).pool_check_window.total_seconds() == 0
    with pytest.raises(ValueError, match="pool_check_window"):
        ks.StoreSettings(pool_check_window=-1)


# -- against PostgreSQL --------------------------------------------------------------


async def test_a_read_right_after_a_read_sends_only_its_query(postgres_url: str) -> None:
    await _load(postgres_url)
    statements = _Statements()
    async with ks.CompsStore(
        database_url=postgres_url, pool_size=1, max_overflow=0, pool_check_window=60
    ) as store:
        statements.attach(_engine(store))
        first = await store.analytics.price_history("ohtani")
        assert statements.checks() == 1  # a new connection: nothing read on it yet
        for _ in range(5):
            assert await store.analytics.price_history("ohtani") == first
        assert statements.checks() == 1
        await store.analytics.price_trend("ohtani", days=3650)
        assert statements.checks() == 1
        # A write on the same connection is checked first, and the read after it too:
        # the write may have left the connection in any state.
        await store.accounts.create_user("checked@example.com", "correct horse battery")
        assert statements.checks() == 2
        await store.analytics.price_history("ohtani")
        assert statements.checks() == 3
        await store.analytics.price_history("ohtani")
        assert statements.checks() == 3


async def test_window_zero_checks_every_read(postgres_url: str) -> None:
    await _load(postgres_url)
    statements = _Statements()
    async with ks.CompsStore(
        database_url=postgres_url, pool_size=1, max_overflow=0, pool_check_window=0
    ) as store:
        statements.attach(_engine(store))
        for _ in range(4):
            await store.analytics.price_history("ohtani")
        assert statements.checks() == 4


async def test_backends_killed_inside_the_window_never_reach_the_caller(
    postgres_url: str,
) -> None:
    await _load(postgres_url)
    async with ks.CompsStore(
        database_url=postgres_url, pool_size=3, max_overflow=0, pool_check_window=60
    ) as store:
        # Three pooled connections, each just read on.
        await asyncio.gather(*(store.analytics.price_history("ohtani") for _ in range(3)))
        before = await store.analytics.price_history("ohtani")
        trend = await store.analytics.price_trend("ohtani", days=3650)
        for round_ in range(3):
            assert _kill_store_backends(postgres_url) >= 1, round_
            # Read straight away, the loop having seen nothing close: unchecked, dead.
            assert await store.analytics.price_history("ohtani") == before
            assert await store.analytics.price_history("Ohtani", date(2026, 11, 3)) == [
                s for s in before if s.snapshot_date >= date(2026, 11, 3)
            ]
            assert _kill_store_backends(postgres_url) >= 1
            assert await store.analytics.price_trend("ohtani", days=3650) == trend
            killed = _kill_store_backends(postgres_url)
            assert killed >= 1
            answers = await asyncio.gather(
                *(store.analytics.price_history("ohtani") for _ in range(5))
            )
            assert all(a == before for a in answers)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


async def test_a_server_restarted_inside_the_window_never_reaches_the_caller(
    own_postgres: PostgresServer,
) -> None:
    url = own_postgres.url
    await _load(url)
    async with ks.CompsStore(database_url=url, pool_size=2, pool_check_window=60) as store:
        await asyncio.gather(*(store.analytics.price_history("ohtani") for _ in range(2)))
        before = await store.analytics.price_history("ohtani")
        for _ in range(2):
            own_postgres.restart()  # blocks the loop: the store sees nothing of it
            assert await store.analytics.price_history("ohtani") == before
        # A server that stays down is still an outage, raised as before.
        own_postgres.stop()
        with pytest.raises(StorageUnavailableError):
            await store.analytics.price_history("ohtani")
        own_postgres.start()
        assert await store.analytics.price_history("ohtani") == before


async def test_a_write_inside_the_window_is_checked_and_runs_once(postgres_url: str) -> None:
    await _load(postgres_url)
    async with ks.CompsStore(
        database_url=postgres_url, pool_size=1, max_overflow=0, pool_check_window=60
    ) as store:
        await store.analytics.price_history("ohtani")  # the one connection, just read on
        assert _kill_store_backends(postgres_url) == 1
        await store.accounts.create_user("once@example.com", "correct horse battery")
        admin = await asyncpg.connect(_dsn(postgres_url))
        try:
            count = "SELECT count(*) FROM users WHERE email = 'once@example.com'"
            assert await admin.fetchval(count) == 1
        finally:
            await admin.close()


async def test_a_write_whose_connection_dies_is_not_run_again(postgres_url: str) -> None:
    await _load(postgres_url)
    admin = await asyncpg.connect(_dsn(postgres_url))
    count = "SELECT count(*) FROM users WHERE email = 'twice@example.com'"
    try:
        async with ks.CompsStore(
            database_url=postgres_url, pool_size=1, max_overflow=0, pool_check_window=60
        ) as store:
            await store.analytics.price_history("ohtani")
            # The write waits on a lock; its connection dies while it runs.
            lock = admin.transaction()
            await lock.start()
            await admin.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            write = asyncio.create_task(
                store.accounts.create_user("twice@example.com", "correct horse battery")
            )
            assert await _kill_the_store_backend_waiting_on_a_lock(admin) == 1
            await lock.commit()
            with pytest.raises(StorageUnavailableError):
                await write
            await asyncio.sleep(0.5)  # a second run, if there were one, would be done
            assert await admin.fetchval(count) == 0
            # The store goes on: the next write is checked and runs once.
            await store.accounts.create_user("twice@example.com", "correct horse battery")
            assert await admin.fetchval(count) == 1
    finally:
        await admin.close()


async def test_a_read_that_fails_on_a_checked_connection_is_not_run_again(
    postgres_url: str,
) -> None:
    # Only an unchecked connection earns another attempt: a read killed while it runs on
    # a checked one raises as before.
    await _load(postgres_url)
    admin = await asyncpg.connect(_dsn(postgres_url))
    try:
        async with ks.CompsStore(
            database_url=postgres_url, pool_size=1, max_overflow=0, pool_check_window=0
        ) as store:
            await store.analytics.price_history("ohtani")
            lock = admin.transaction()
            await lock.start()
            await admin.execute("LOCK TABLE price_snapshots IN ACCESS EXCLUSIVE MODE")
            read = asyncio.create_task(store.analytics.price_history("ohtani"))
            assert await _kill_the_store_backend_waiting_on_a_lock(admin) == 1
            await lock.commit()
            with pytest.raises(StorageUnavailableError):
                await read
    finally:
        await admin.close()


# -- the read before a paid fetch ----------------------------------------------------


async def _stored_search(store: ks.CompsStore) -> tuple[object, object]:
    """A search fetched and persisted; its identity and the newest-result read's ``since``."""
    from datetime import UTC, datetime, timedelta

    from kuya_store.keys import ResultIdentity

    await store.comps.search("2023 Topps Chrome Checked Window #7")
    assert await store.flush()
    card = ks.normalize_card("2023 Topps Chrome Checked Window #7")
    return ResultIdentity.of(card, ks.SearchType.SOLD, {}), datetime.now(UTC) - timedelta(days=1)


async def test_the_read_before_a_fetch_sends_only_its_query_inside_the_window(
    postgres_url: str,
) -> None:
    from kuya_store.demo import FakeMarketplace

    await ks.migrations.upgrade_async(postgres_url)
    statements = _Statements()
    async with ks.CompsStore(
        database_url=postgres_url,
        fetchers={"sold": FakeMarketplace(listings=5).sold},
        pool_size=1,
        max_overflow=0,
        pool_check_window=60,
    ) as store:
        statements.attach(_engine(store))
        identity, since = await _stored_search(store)
        database = store._database
        assert database is not None
        first = await database.newest_result(identity, since)  # type: ignore[arg-type]
        assert first is not None and len(first.listings) == 5
        checks = statements.checks()
        for _ in range(5):
            assert await database.newest_result(identity, since) == first  # type: ignore[arg-type]
        assert statements.checks() == checks
        # No transaction around it: no BEGIN, no autocommit switching, on the driver.
        tail = [q.strip().upper() for q in statements.sent[-5:]]
        assert not any(q.startswith(("BEGIN", "ROLLBACK", "SET")) for q in tail), tail


async def test_backends_killed_inside_the_window_never_reach_the_read_before_a_fetch(
    postgres_url: str,
) -> None:
    from kuya_store.demo import FakeMarketplace

    await ks.migrations.upgrade_async(postgres_url)
    market = FakeMarketplace(listings=5)
    async with ks.CompsStore(
        database_url=postgres_url,
        fetchers={"sold": market.sold},
        pool_size=2,
        max_overflow=0,
        pool_check_window=60,
    ) as store:
        identity, since = await _stored_search(store)
        database = store._database
        assert database is not None
        before = await database.newest_result(identity, since)  # type: ignore[arg-type]
        assert before is not None
        for round_ in range(3):
            assert _kill_store_backends(postgres_url) >= 1, round_
            assert await database.newest_result(identity, since) == before  # type: ignore[arg-type]
            assert _kill_store_backends(postgres_url) >= 1, round_
            answers = await asyncio.gather(
                *(database.newest_result(identity, since) for _ in range(4))  # type: ignore[arg-type]
            )
            assert all(a == before for a in answers)


async def test_a_cancelled_read_gives_its_connection_back(postgres_url: str) -> None:
    # The read on the driver's pooled connection is cancelled while its statement waits
    # on a lock: the connection goes back to the pool, and the next read answers.
    await _load(postgres_url)
    admin = await asyncpg.connect(_dsn(postgres_url))
    try:
        async with ks.CompsStore(
            database_url=postgres_url, pool_size=1, max_overflow=0, pool_check_window=60
        ) as store:
            before = await store.analytics.price_history("ohtani")
            pool = _engine(store).sync_engine.pool
            lock = admin.transaction()
            await lock.start()
            await admin.execute("LOCK TABLE price_snapshots IN ACCESS EXCLUSIVE MODE")
            read = asyncio.create_task(store.analytics.price_history("ohtani"))
            await asyncio.sleep(0.3)
            assert pool.checkedout() == 1  # type: ignore[attr-defined]
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            assert pool.checkedout() == 0  # type: ignore[attr-defined]
            await lock.commit()
            assert await store.analytics.price_history("ohtani") == before
            assert pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await admin.close()
