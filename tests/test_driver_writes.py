"""A fetch's write on the driver's own connection: the same rows, errors and guarantees.

On PostgreSQL ``persist_fetch`` sends its statements on the asyncpg connection in the
driver's transaction (``db/driver_writes.py``); SQLite and PgBouncer keep SQLAlchemy's.
Everything here is compared with SQLAlchemy's path on the same server: the rows byte for
byte, and every failure as the write-behind classifies it. Backends are killed, the
server stopped and tasks cancelled while a write waits on a lock held by another session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

import kuya_store as ks
from kuya_store.db.driver_writes import DriverStatement, as_sqlalchemy_error
from kuya_store.db.engine import is_disconnect, is_outage
from kuya_store.db.types import JSONType, UTCDateTime
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import MAX_PRICE
from kuya_store.persistence import Database, FetchRecord, SearchRecord
from kuya_store.pricing import DefaultValuator
from kuya_store.stored import StoredResult
from kuya_store.testing.servers import PostgresServer
from kuya_store.write_faults import is_transient, may_be_unknown_user, reason

NOW = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
_VALUATOR = DefaultValuator()
_TABLES = {
    "searches": "id",
    "listing_cache": "id",
    "search_results": "search_id, position",
    "price_snapshots": "id",
}


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _database(url: str, *, driver: bool = True, **settings: Any) -> Database:
    database = Database(ks.StoreSettings(database_url=url, **settings), Metrics())
    database._driver_writes = driver and database._driver_writes
    return database


def _record(
    listings: list[ks.Listing],
    *,
    at: datetime = NOW,
    card: str = "wemby 1",
    kind: ks.SearchType = ks.SearchType.SOLD,
    user_id: int | None = None,
    own: bool = True,
    **search: Any,
) -> FetchRecord:
    params: dict[str, Any] = search.pop("params", {"pages": 1})
    snapshot = None
    if own and kind is ks.SearchType.SOLD:
        day = at.astimezone(UTC).date()
        snapshot = _VALUATOR.value(card, listings, snapshot_date=day, now=at)
    values: dict[str, Any] = {
        "query": card,
        "card_identifier": card,
        "search_type": kind,
        "filters": {},
        "params": params,
        "created_at": at,
        "execution_time_ms": 12,
        "cache_hit": False,
        "items_count": len(listings),
        "user_id": user_id,
        "result_key": ResultIdentity.of(card, kind, params).result_key,
        **search,
    }
    result = StoredResult(
        query=values["query"],
        card_identifier=card,
        search_type=kind,
        params=params,
        listings=listings,
        fetched_at=at,
        snapshot=snapshot,
    )
    return FetchRecord(SearchRecord(**values), result, at + timedelta(days=1), snapshot)


def _listing(item_id: str, price: str = "10.00", **fields: Any) -> ks.Listing:
    return ks.Listing(item_id=item_id, title=f"card {item_id}", price=Decimal(price), **fields)


_TITLES = ("Wemby #1 🏀", "שלום Ohtani", "e\u0301 combining", "ＦＵＬＬ", "plain", "x" * 500)
_ZONES = (UTC, timezone(timedelta(hours=-8)), timezone(timedelta(hours=5, minutes=45)))


def _shapes(seed: int, count: int) -> list[FetchRecord]:
    """Records of many shapes: duplicates, None fields, extras, unicode, extreme numbers."""
    rng = random.Random(seed)
    records = []
    for n in range(count):
        at = NOW + timedelta(minutes=rng.randrange(-600, 600), microseconds=rng.randrange(10**6))
        at = at.astimezone(rng.choice(_ZONES))
        items = [f"i{rng.randrange(40)}" for _ in range(rng.randrange(0, 25))]
        listings = [
            ks.Listing(
                item_id=item,
                title=rng.choice(_TITLES),
                price=rng.choice(
                    [Decimal("0.00"), Decimal("0.01"), MAX_PRICE, Decimal("19.99"), Decimal(n)]
                ),
                listing_type=rng.choice([None, "auction", "buy_it_now"]),
                condition=rng.choice([None, "PSA 10", "raw ✓", ""]),
                sold=rng.random() < 0.8,
                sold_date=rng.choice([None, at - timedelta(days=rng.randrange(30))]),
                bids=rng.choice([None, 0, 2_147_483_647]),
                watchers=rng.choice([None, 3]),
                extra=rng.choice([{}, {"image": "https://img/1.jpg", "nested": {"ü": [1, None]}}]),
            )
            for item in items
        ]
        records.append(
            _record(
                listings,
                at=at,
                card=rng.choice(["wemby 1", "ohtani 17", "ünïcode"]),
                kind=rng.choice([ks.SearchType.SOLD, ks.SearchType.SOLD, ks.SearchType.ACTIVE]),
                own=rng.random() < 0.7,
                params=rng.choice([{}, {"pages": 2, "big": 2**70, "f": 1.5}, {"q": "é\"'\\"}]),
                filters=rng.choice([{}, {"graded": True, "lots": False}]),
                pages_scraped=rng.choice([None, 1, 3]),
                fetch_stats=rng.choice([None, {"pages": 2, "http_ms": 91}]),
                complete=rng.choice([None, True, False]),
                user_id=rng.choice([None, 1]),
                result_key=rng.choice([None, "k" * 64, f"r{n}"]),
            )
        )
    return records


async def _rows(admin: asyncpg.Connection) -> dict[str, list[str]]:
    """Every row of the fetch tables, as the server prints it."""
    return {
        table: [
            r[0]
            for r in await admin.fetch(f"SELECT to_jsonb(t)::text FROM {table} t ORDER BY {order}")
        ]
        for table, order in _TABLES.items()
    }


@pytest.fixture
async def admin(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    await ks.migrations.upgrade_async(postgres_url)
    conn = await asyncpg.connect(_dsn(postgres_url))
    await conn.execute("INSERT INTO users (id, email) VALUES (1, 'a@example.com')")
    yield conn
    await conn.close()


async def _clean(admin: asyncpg.Connection) -> None:
    await admin.execute(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE")


# -- the same rows ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_driver_writes_the_rows_sqlalchemy_writes_byte_for_byte(
    postgres_url: str, admin: asyncpg.Connection, seed: int
) -> None:
    records = _shapes(seed, 40)
    records += records[::7]  # replays: written once, nothing more
    written: dict[bool, tuple[list[int | None], dict[str, list[str]]]] = {}
    for driver in (False, True):
        await _clean(admin)
        database = _database(postgres_url, driver=driver)
        try:
            ids = [await database.persist_fetch(record) for record in records]
        finally:
            await database.close()
        written[driver] = ids, await _rows(admin)
    assert written[True] == written[False]
    ids, rows = written[True]
    assert ids[40:] == [None] * len(records[40:])  # a replay writes nothing, returns None
    assert len(rows["searches"]) == 40 and rows["price_snapshots"]


async def test_a_sold_fetch_is_a_driver_statement_or_two_each_timed(
    postgres_url: str, admin: asyncpg.Connection
) -> None:
    database = _database(postgres_url)
    driver_sent: list[str] = []
    through_sqlalchemy: list[str] = []

    def watch(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda q: driver_sent.append(q.query))

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        through_sqlalchemy.append(statement)

    event.listen(database.engine.sync_engine, "connect", watch)
    event.listen(database.engine.sync_engine, "before_cursor_execute", seen)
    try:
        listings = [_listing(f"L{i}", sold=True) for i in range(40)]
        for record in (_record(listings), _record(listings, own=False, at=NOW + timedelta(1))):
            driver_sent.clear()
            before = database.metrics.snapshot()["timings"].get("db_query", {"count": 0})["count"]
            assert await database.persist_fetch(record) is not None
            after = database.metrics.snapshot()["timings"]["db_query"]["count"]
            sent = [q for q in driver_sent if q.strip().upper() != "SELECT 1"]
            # BEGIN, the fetch, the day's sales (and a snapshot upsert when valued), COMMIT;
            # the driver's own look-ups of types it has not seen yet are not the store's.
            assert sent[0] == "BEGIN;" and sent[-1] == "COMMIT;", sent
            writes = [q for q in sent if "searches" in q or "price_snapshots" in q]
            assert len(writes) in (2, 3)
            assert after - before == len(writes)  # every statement timed, as SQLAlchemy's
        assert not [s for s in through_sqlalchemy if "searches" in s]
    finally:
        await database.close()


# -- the same errors -------------------------------------------------------------------------


def _bad(case: str) -> FetchRecord:
    good = [_listing("B1", sold=True)]
    if case == "unknown user":
        return _record(good, user_id=424242)
    if case == "record_key too long":
        return _record(good, record_key="r" * 33)
    if case == "price too large":
        return _record(
            [ks.Listing.model_construct(item_id="P", title="t", price=Decimal("1e10"), sold=True)],
            own=False,
        )
    if case == "nul in the query":
        return _record(good, query="nul \x00 here")
    if case == "naive moment":
        return _record(good, own=False, created_at=NOW.replace(tzinfo=None))
    if case == "an int the column cannot hold":
        return _record(good, kind=ks.SearchType.ACTIVE, filters={"x": 1}, execution_time_ms=2**40)
    raise AssertionError(case)


_CASES = [
    "unknown user",
    "record_key too long",
    "price too large",
    "nul in the query",
    "naive moment",
    "an int the column cannot hold",
]


def _verdict(record: FetchRecord, error: BaseException) -> dict[str, Any]:
    orig = getattr(error, "orig", None)
    return {
        "type": type(error),
        "orig": type(orig),
        "cause": type(getattr(orig, "__cause__", None)),
        "sqlstate": getattr(orig, "sqlstate", None),
        "statement": getattr(error, "statement", None),
        "invalidated": getattr(error, "connection_invalidated", None),
        "transient": is_transient(error),
        "unknown user": may_be_unknown_user(record, error),
        "reason": reason(error),
        "outage": is_outage(error),
        "disconnect": is_disconnect(error),
    }


async def _assert_pool_clean(database: Database) -> None:
    """The pool's only connection has no transaction open and serves SQLAlchemy."""
    async with database.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert not raw.driver_connection.is_in_transaction()
        assert (await conn.execute(sa.text("SELECT count(*) FROM searches"))).scalar_one() >= 0
        await conn.commit()


@pytest.mark.parametrize("case", _CASES)
async def test_a_refused_write_fails_as_it_did_through_sqlalchemy(
    postgres_url: str, admin: asyncpg.Connection, case: str
) -> None:
    record = _bad(case)
    verdicts = []
    for driver in (False, True):
        database = _database(postgres_url, driver=driver, pool_size=1, max_overflow=0)
        try:
            with pytest.raises(Exception) as raised:
                await database.persist_fetch(record)
            verdicts.append(_verdict(record, raised.value))
            await _assert_pool_clean(database)
            # And the next write on that connection lands.
            assert await database.persist_fetch(_record([_listing("OK")], own=False)) is not None
        finally:
            await database.close()
        await _clean(admin)
    assert verdicts[0] == verdicts[1]
    assert not verdicts[0]["transient"]  # the record's fault: the drain isolates it
    assert verdicts[0]["unknown user"] is (case == "unknown user")


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.ForeignKeyViolationError("violates foreign key"),
        asyncpg.exceptions.NumericValueOutOfRangeError("numeric field overflow"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.InvalidSQLStatementNameError("prepared statement does not exist"),
        asyncpg.exceptions.InterfaceError("cannot perform operation: connection is closed"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        ConnectionResetError(104, "reset by peer"),
        TimeoutError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_driver_errors_take_sqlalchemys_classes_and_verdicts(error: Exception) -> None:
    """What SQLAlchemy's asyncpg adapter makes of an error, the boundary makes of it too."""
    dialect = sa.create_engine("postgresql+asyncpg://u@h/d").dialect
    adapter = pytest.importorskip("sqlalchemy.dialects.postgresql.asyncpg")
    record = _record([], user_id=7)
    # The driver's connection is closed when it says so.
    lost = isinstance(
        error, asyncpg.exceptions.ConnectionDoesNotExistError | asyncpg.exceptions.InterfaceError
    )
    ours = as_sqlalchemy_error(error, dialect, "INSERT", (1,), lost=lost)
    try:
        adapter.AsyncAdapt_asyncpg_connection._handle_exception_no_connection(
            dialect.loaded_dbapi, error
        )
    except Exception as translated:
        expected: Exception = translated
    if isinstance(expected, dialect.loaded_dbapi.Error):
        theirs = sa_exc.DBAPIError.instance(
            "INSERT",
            (1,),
            expected,
            dialect.loaded_dbapi.Error,
            connection_invalidated=lost
            or isinstance(error, asyncpg.exceptions.InvalidSQLStatementNameError),
            dialect=dialect,
        )
        assert type(ours) is type(theirs) and type(ours.orig) is type(theirs.orig)  # type: ignore[attr-defined]
        assert ours.connection_invalidated == theirs.connection_invalidated  # type: ignore[attr-defined]
        assert ours.orig.__cause__ is error  # type: ignore[attr-defined]
    else:
        assert ours is error  # raised as it is, as SQLAlchemy raises it
        theirs = error
    for verdict in (is_transient, is_outage, is_disconnect, reason):
        assert verdict(ours) == verdict(theirs)  # type: ignore[operator]
    assert may_be_unknown_user(record, ours) == may_be_unknown_user(record, theirs)
    transient = not isinstance(
        error,
        asyncpg.exceptions.UniqueViolationError
        | asyncpg.exceptions.ForeignKeyViolationError
        | asyncpg.exceptions.NumericValueOutOfRangeError,
    )
    assert is_transient(ours) is transient


def test_a_statement_binds_what_sqlalchemy_binds() -> None:
    """Positional values in the statement's order, through the column types' processors."""
    dialect = sa.create_engine("postgresql+asyncpg://u@h/d").dialect
    table = sa.table("t", sa.column("a", UTCDateTime()), sa.column("b", sa.JSON()))
    stmt = sa.select(sa.literal_column("1")).where(
        table.c.a == sa.bindparam("a", type_=UTCDateTime()),
        table.c.b == sa.bindparam("b", type_=JSONType),
        sa.column("c") == 5,
    )
    statement = DriverStatement(stmt, dialect)
    moment = datetime(2026, 1, 1, 3, tzinfo=timezone(timedelta(hours=3)))
    values = statement.bind({"a": moment, "b": {"ü": [1, None]}})
    assert values == [datetime(2026, 1, 1, 0, tzinfo=UTC), '{"\\u00fc": [1, null]}', 5]
    assert "$1" in statement.sql and "$3" in statement.sql
    with pytest.raises(ValueError, match="naive"):
        statement.bind({"a": moment.replace(tzinfo=None), "b": None})


# -- lost connections, a stopped server, cancellation ---------------------------------------


async def _wait_for_lock(admin: asyncpg.Connection, terminate: bool) -> int:
    """The store's backends waiting on a lock (terminated if asked), once there is one."""
    call = "pg_terminate_backend(pid)" if terminate else "pid"
    for _ in range(500):
        # Inside the lock's transaction the activity view would stay as first read.
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        waiting = await admin.fetch(
            f"SELECT {call} FROM pg_stat_activity "
            "WHERE application_name = 'kuya-store' AND wait_event_type = 'Lock'"
        )
        if waiting:
            return len(waiting)
        await asyncio.sleep(0.02)
    return 0


async def _written_once(admin: asyncpg.Connection, record: FetchRecord) -> int:
    """How many times the record's search row is there; its links are all there if it is."""
    found = await admin.fetch(
        "SELECT id FROM searches WHERE record_key = $1", record.search.record_key
    )
    for row in found:
        links = await admin.fetchval(
            "SELECT count(*) FROM search_results WHERE search_id = $1", row["id"]
        )
        assert links == len(record.result.listings)
    return len(found)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


async def test_a_backend_killed_mid_write_fails_as_through_sqlalchemy_and_lands_once_on_retry(
    postgres_url: str, admin: asyncpg.Connection
) -> None:
    verdicts = []
    for driver in (False, True):
        database = _database(postgres_url, driver=driver, pool_size=1, max_overflow=0)
        try:
            record = _record([_listing(f"K{i}", sold=True) for i in range(30)])
            lock = admin.transaction()
            await lock.start()
            await admin.execute("LOCK TABLE search_results IN SHARE MODE")
            write = asyncio.create_task(database.persist_fetch(record))
            assert await _wait_for_lock(admin, terminate=True) == 1
            with pytest.raises(Exception) as raised:
                await write
            await lock.commit()
            verdicts.append(_verdict(record, raised.value))
            assert await _written_once(admin, record) == 0
            # The write-behind retries a transient failure: it lands once, a replay after.
            assert await database.persist_fetch(record) is not None
            assert await database.persist_fetch(record) is None
            assert await _written_once(admin, record) == 1
            await _assert_pool_clean(database)
        finally:
            await database.close()
        await _clean(admin)
    assert verdicts[0] == verdicts[1]
    assert verdicts[0]["transient"] and verdicts[0]["disconnect"]


async def test_a_server_stopped_mid_write_loses_nothing_and_doubles_nothing(
    own_postgres: PostgresServer,
) -> None:
    await ks.migrations.upgrade_async(own_postgres.url)
    admin = await asyncpg.connect(_dsn(own_postgres.url))
    database = _database(own_postgres.url, pool_size=1, max_overflow=0, db_connect_timeout=2)
    record = _record([_listing(f"S{i}", sold=True) for i in range(30)])
    failures: list[Exception] = []
    written: int | None = None
    try:
        await admin.execute("BEGIN; LOCK TABLE search_results IN SHARE MODE")
        write = asyncio.create_task(database.persist_fetch(record))
        assert await _wait_for_lock(admin, terminate=False) == 1
        own_postgres.stop()  # a fast shutdown: every session ends, the write's too
        with pytest.raises(Exception) as raised:
            await write
        assert is_transient(raised.value)
        own_postgres.start()
        # Retried as the write-behind retries it, until the server answers.
        for _ in range(50):
            try:
                written = await database.persist_fetch(record)
            except Exception as exc:
                failures.append(exc)
                await asyncio.sleep(0.1)
            else:
                break
        assert written is not None and all(is_transient(exc) for exc in failures)
        assert await database.persist_fetch(record) is None
        admin = await asyncpg.connect(_dsn(own_postgres.url))
        assert await _written_once(admin, record) == 1
    finally:
        await database.close()
        await admin.close()


async def test_a_write_cancelled_mid_statement_is_absent_and_the_pool_usable(
    postgres_url: str, admin: asyncpg.Connection
) -> None:
    database = _database(postgres_url, pool_size=1, max_overflow=0)
    try:
        record = _record([_listing(f"C{i}", sold=True) for i in range(30)])
        lock = admin.transaction()
        await lock.start()
        await admin.execute("LOCK TABLE search_results IN SHARE MODE")
        write = asyncio.create_task(database.persist_fetch(record))
        assert await _wait_for_lock(admin, terminate=False) == 1
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        await lock.commit()
        # The only pooled connection: nothing left open on it, and it serves the next write.
        other = _record([_listing("after")], at=NOW + timedelta(seconds=1))
        assert await asyncio.wait_for(database.persist_fetch(other), 5) is not None
        await _assert_pool_clean(database)
        assert await _written_once(admin, record) == 0
        assert await _written_once(admin, other) == 1
        for _ in range(100):  # the cancelled session ends (its transaction with it)
            open_ = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kuya-store' "
                "AND state LIKE 'idle in transaction%'"
            )
            if not open_:
                break
            await asyncio.sleep(0.05)
        assert not open_
    finally:
        await database.close()


@pytest.mark.parametrize("when", [0.0, 0.001, 0.003, 0.01])
async def test_a_write_cancelled_at_any_moment_is_whole_or_absent(
    postgres_url: str, admin: asyncpg.Connection, when: float
) -> None:
    database = _database(postgres_url, pool_size=1, max_overflow=0)
    try:
        for n in range(10):
            record = _record(
                [_listing(f"W{n}-{i}", sold=True) for i in range(40)],
                at=NOW + timedelta(seconds=n),
            )
            write = asyncio.create_task(database.persist_fetch(record))
            await asyncio.sleep(when)
            write.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write
            await asyncio.sleep(0.05)
            assert await _written_once(admin, record) in (0, 1)  # links complete if there
            await _assert_pool_clean(database)
    finally:
        await database.close()


# -- the write-behind on top of it ----------------------------------------------------------


async def test_the_write_behind_retries_a_killed_write_and_lands_it_once(
    postgres_url: str, admin: asyncpg.Connection
) -> None:
    market = FakeMarketplace(listings=20)
    async with ks.CompsStore(
        database_url=postgres_url, fetchers={"sold": market.sold}, pool_size=2, max_overflow=0
    ) as store:
        lock = admin.transaction()
        await lock.start()
        await admin.execute("LOCK TABLE search_results IN SHARE MODE")
        await store.comps.search("2023 Topps Chrome Wembanyama #1")
        assert await _wait_for_lock(admin, terminate=True) == 1
        await lock.commit()
        assert await store.flush(timeout=30)
        assert store._metrics.snapshot()["counters"].get("write_retries", 0) >= 1
    assert await admin.fetchval("SELECT count(*) FROM searches WHERE cache_hit IS false") == 1
    assert await admin.fetchval("SELECT count(*) FROM search_results") == 20


async def test_behind_pgbouncer_the_write_stays_with_sqlalchemy(pgbouncer_url: str) -> None:
    await ks.migrations.upgrade_async(pgbouncer_url)
    database = Database(ks.StoreSettings(database_url=pgbouncer_url, pgbouncer=True), Metrics())
    through_sqlalchemy: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        through_sqlalchemy.append(statement)

    event.listen(database.engine.sync_engine, "before_cursor_execute", seen)
    try:
        assert await database.persist_fetch(_record([_listing("PB", sold=True)])) is not None
    finally:
        await database.close()
    assert [s for s in through_sqlalchemy if "INSERT INTO searches" in s]


# -- the search log -------------------------------------------------------------------------


def _log_batch(seed: int, count: int) -> list[SearchRecord]:
    searches = [record.search for record in _shapes(seed, count)]
    rng = random.Random(seed)
    hits = [
        dataclasses.replace(s, cache_hit=True, record_key=f"h{seed}-{n}", result_key=None)
        for n, s in enumerate(rng.sample(searches, count // 2))
    ]
    return [*searches, *hits, *searches[:3]]  # the last three: replays inside the batch


@pytest.mark.parametrize("seed", [4, 5])
async def test_the_search_log_batch_writes_the_rows_sqlalchemy_writes(
    postgres_url: str, admin: asyncpg.Connection, seed: int
) -> None:
    batch = _log_batch(seed, 30)
    written: dict[bool, tuple[list[int], dict[str, list[str]]]] = {}
    for driver in (False, True):
        await _clean(admin)
        database = _database(postgres_url, driver=driver)
        try:
            counts = [await database.log_searches(batch), await database.log_searches(batch[:5])]
            counts.append(await database.log_searches([]))
        finally:
            await database.close()
        written[driver] = counts, await _rows(admin)
    assert written[True] == written[False]
    assert written[True][0] == [45, 0, 0]  # replays, in the batch or after it, are not new


@pytest.mark.parametrize("case", ["unknown user", "record_key too long", "search_type too long"])
async def test_a_refused_search_log_batch_fails_as_it_did_through_sqlalchemy(
    postgres_url: str, admin: asyncpg.Connection, case: str
) -> None:
    good = _log_batch(6, 6)[:-3]  # no replays: every row is new
    bad = {
        "unknown user": dataclasses.replace(good[0], user_id=424242, record_key="u"),
        "record_key too long": dataclasses.replace(good[0], record_key="r" * 33),
        "search_type too long": dataclasses.replace(
            good[0], search_type=ks.SearchType.SOLD, record_key="s", query="q"
        ),
    }[case]
    batch = [*good, bad]
    verdicts = []
    for driver in (False, True):
        database = _database(postgres_url, driver=driver, pool_size=1, max_overflow=0)
        if case == "search_type too long":  # a value the column cannot hold
            object.__setattr__(bad, "search_type", _LongType())
        try:
            with pytest.raises(Exception) as raised:
                await database.log_searches(batch)
            verdicts.append(_verdict(_record([], user_id=bad.user_id), raised.value))
            await _assert_pool_clean(database)
            assert await database.log_searches(good) == len(good)
        finally:
            await database.close()
        await _clean(admin)
    verdicts[0].pop("statement"), verdicts[1].pop("statement")  # the batch's own statement
    assert verdicts[0] == verdicts[1]
    assert not verdicts[0]["transient"]
    assert verdicts[0]["unknown user"] is (case == "unknown user")


class _LongType:
    """A search type longer than its column (``VARCHAR(20)``) holds."""

    value = "s" * 21
