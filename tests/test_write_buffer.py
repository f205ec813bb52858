"""The write-behind buffer never loses a good record: bad ones are isolated, the rest land.

Every test runs on real servers (SQLite and PostgreSQL), and breaks the rule on purpose:
a foreign key that fails, rows the database refuses in the middle of a batch, text no
database can store, records arriving after close, and a database that stops answering.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import kuya_store as ks
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import validate_params, validate_query
from kuya_store.metrics import Metrics
from kuya_store.persistence import Database, FetchRecord, SearchRecord
from kuya_store.stored import StoredResult
from kuya_store.testing.servers import PostgresServer
from kuya_store.writer import WriteBehind, is_transient
from readback import rows as _rows

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
SAME_CARD = "2023 topps chrome VICTOR wembanyama 1"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NO_SUCH_USER = 999
LONE_SURROGATE = "\ud800"


async def _count(url: str, sql: str) -> int:
    return int(next(iter((await _rows(url, sql))[0].values())))


def _search(query: str, user_id: int | None = None, **fields: Any) -> SearchRecord:
    return SearchRecord(
        query=query,
        card_identifier=ks.normalize_card(query),
        search_type=ks.SearchType.SOLD,
        filters=ks.SearchFilters().as_dict(),
        params={},
        created_at=NOW,
        execution_time_ms=1,
        cache_hit=fields.pop("cache_hit", True),
        user_id=user_id,
        **fields,
    )


def _fetch(query: str, listings: list[ks.Listing], user_id: int | None = None) -> FetchRecord:
    card = ks.normalize_card(query)
    search = _search(
        query,
        user_id,
        cache_hit=False,
        pages_scraped=1,
        items_count=len(listings),
        result_key=hashlib.sha256(query.encode()).hexdigest(),
    )
    result = StoredResult(
        query=query,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        params={},
        listings=listings,
        fetched_at=NOW,
    )
    snapshot = ks.PriceSnapshot(
        card_identifier=card, snapshot_date=NOW.date(), market_value="10.00", sample_size=1
    )
    return FetchRecord(search, result, NOW + timedelta(days=1), snapshot)


def _listing(item_id: str) -> ks.Listing:
    return ks.Listing(item_id=item_id, title=f"card {item_id}", price="10.00", sold=True)


@pytest.fixture
async def writer(migrated_url: str) -> AsyncIterator[tuple[WriteBehind, Metrics]]:
    """A buffer over a real database, batching 50 rows per statement."""
    metrics = Metrics()
    database = Database(ks.StoreSettings(database_url=migrated_url), metrics)
    buffer = WriteBehind(database, metrics, capacity=10_000, batch_size=50, interval=0.01)
    yield buffer, metrics
    await buffer.close(timeout=10)
    await database.close()


def _writer_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "kuya-write-behind" and not t.done()]


# -- rule: one bad record never destroys good ones ----------------------------------------


async def test_refused_rows_in_a_batch_are_isolated_and_every_good_one_lands(
    writer: tuple[WriteBehind, Metrics],
    migrated_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    buffer, metrics = writer
    caplog.set_level(logging.WARNING, logger="kuya_store.writer")
    bad_rows = {3, 77, 150}  # a NOT NULL column left empty: refused by both databases
    expected: list[str] = []
    for i in range(200):
        if i in bad_rows:
            buffer.submit(dataclasses.replace(_search(f"bad {i}"), query=None))  # type: ignore[arg-type]
        elif i == 100:  # a fetched result with a listing the database refuses
            broken = ks.Listing.model_construct(item_id="BROKEN", title=None, price=Decimal(1))
            buffer.submit(_fetch("Broken Card 100", [_listing("OK-1"), broken]))
            expected.append("Broken Card 100")  # its search stays in the log
        elif i == 120:  # a fetched result of a user who does not exist
            buffer.submit(_fetch("Unknown User Card", [_listing("U-1"), _listing("U-2")], 999))
            expected.append("Unknown User Card")
        else:
            buffer.submit(_search(f"good {i}"))
            expected.append(f"good {i}")
    assert await buffer.flush(timeout=120)

    rows = await _rows(migrated_url, "SELECT query, user_id, result_key FROM searches ORDER BY id")
    assert [r["query"] for r in rows] == expected  # every good record, in order
    by_query = {r["query"]: r for r in rows}
    assert by_query["Broken Card 100"]["result_key"] is None  # answers no read
    assert by_query["Unknown User Card"]["user_id"] is None
    assert by_query["Unknown User Card"]["result_key"] is not None
    items = await _rows(migrated_url, "SELECT item_id FROM listing_cache ORDER BY item_id")
    assert [r["item_id"] for r in items] == ["U-1", "U-2"]
    assert await _count(migrated_url, "SELECT count(*) FROM search_results") == 2
    assert await _count(migrated_url, "SELECT count(*) FROM price_snapshots") == 1
    assert metrics.count("writes_rejected") == 4
    assert metrics.count("writes_user_unknown") == 1
    assert metrics.count("writes_dropped") == 0
    assert buffer.pending == 0
    rejected = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(rejected) == 4
    assert all("query" in r.getMessage() or "title" in r.getMessage() for r in rejected)
    assert any("without its user" in r.getMessage() for r in caplog.records)


async def test_a_search_of_an_unknown_user_costs_no_other_row(
    migrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kuya_store.writer")
    market = FakeMarketplace(listings=5)
    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": market.sold}, write_flush_interval=0.05
    ) as store:
        user = await store.accounts.create_user("collector@example.com", "a long passphrase 1")
        await store.comps.search(QUERY)
        assert await store.flush(timeout=30)
        users = [user.id, None, NO_SUCH_USER, user.id, None, user.id, None, None, user.id, None]
        await asyncio.gather(*(store.comps.search(SAME_CARD, user_id=u) for u in users))
        assert await store.flush(timeout=30)
        writes = store.metrics()["writes"]
    assert await _count(migrated_url, "SELECT count(*) FROM searches") == 11
    assert await _count(migrated_url, f"SELECT count(*) FROM searches WHERE user_id={user.id}") == 4
    assert writes["rejected"] == 0 and writes["dropped"] == 0
    assert writes["user_unknown"] == 1
    assert "kept without its user" in caplog.text


async def test_a_fetched_result_of_an_unknown_user_keeps_its_listings_and_snapshot(
    migrated_url: str,
) -> None:
    market = FakeMarketplace(listings=7)
    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": market.sold}, write_flush_interval=0.01
    ) as store:
        await store.comps.search(QUERY, user_id=NO_SUCH_USER)  # a miss: the paid fetch
        await store.comps.search("1986 Fleer Michael Jordan #57")  # queued behind it
        assert await store.flush(timeout=30)
        writes = store.metrics()["writes"]
    assert await _count(migrated_url, "SELECT count(*) FROM listing_cache") == 14
    assert await _count(migrated_url, "SELECT count(*) FROM price_snapshots") == 2
    assert await _count(migrated_url, "SELECT count(*) FROM searches WHERE user_id IS NULL") == 2
    assert (writes["rejected"], writes["user_unknown"], writes["written"]) == (0, 1, 2)

    # The stored result answers the next process: the paid call is not repeated.
    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold}) as store:
        result = await store.comps.search(QUERY)
    assert (result.source, len(result.listings), market.call_count) == ("database", 7, 2)


# -- rule: what the database would reject is refused before anything is queued ------------


async def test_text_no_database_can_store_is_refused_and_every_good_search_lands(
    migrated_url: str,
) -> None:
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": market.sold}, write_flush_interval=0.05
    ) as store:
        await store.comps.search(QUERY)
        assert await store.flush(timeout=30)
        queries = [SAME_CARD] * 10 + [f"{SAME_CARD} {LONE_SURROGATE}"] + [SAME_CARD] * 11
        outcomes = await asyncio.gather(
            *(store.comps.search(q) for q in queries), return_exceptions=True
        )
        assert await store.flush(timeout=30)
        writes = store.metrics()["writes"]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], ks.InvalidInputError), errors
    assert errors[0].field == "query"
    assert LONE_SURROGATE not in str(errors[0])
    assert await _count(migrated_url, "SELECT count(*) FROM searches") == 1 + 21
    assert writes["rejected"] == 0 and market.call_count == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort_by": f"date{LONE_SURROGATE}"}, "params.sort_by"),
        ({f"sort{LONE_SURROGATE}": "date"}, "params"),
    ],
)
async def test_params_no_database_can_store_are_refused_before_the_fetcher(
    migrated_url: str, params: dict[str, Any], field: str
) -> None:
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold}) as store:
        with pytest.raises(ks.InvalidInputError) as info:
            await store.comps.search(QUERY, params=params)
        assert await store.flush(timeout=30)
    assert info.value.field == field
    assert "Unicode" in info.value.reason and LONE_SURROGATE not in str(info.value)
    assert market.call_count == 0
    assert await _count(migrated_url, "SELECT count(*) FROM searches") == 0


@pytest.mark.parametrize("name", ["item_id", "title", "condition"])
async def test_listing_text_no_database_can_store_names_the_field(
    migrated_url: str, name: str
) -> None:
    good = {"item_id": "A1", "title": "2023 Topps Chrome", "price": "5.00", "condition": "Raw"}
    bad = {**good, "item_id": "B2", name: f"{good[name]}{LONE_SURROGATE}"}

    async def fetch(request: ks.FetchRequest) -> Any:
        return {"listings": [good, bad]}

    async with ks.CompsStore(database_url=migrated_url) as store:
        with pytest.raises(ks.InvalidInputError) as info:
            await store.comps.search(QUERY, fetcher=fetch)
        assert await store.flush(timeout=30)
    assert info.value.field == f"fetcher.listings[1].{name}"
    assert "Unicode" in info.value.reason
    for table in ("searches", "listing_cache", "price_snapshots"):
        assert await _count(migrated_url, f"SELECT count(*) FROM {table}") == 0


def test_validators_refuse_lone_surrogates_and_keep_other_text() -> None:
    assert (
        validate_query(" Pokémon Charizard 1st Edition ✨ ") == "Pokémon Charizard 1st Edition ✨"
    )
    assert validate_params({"seller": "東京カード"}) == {"seller": "東京カード"}
    for text in ("\ud800", "a\udfffb", "\udc80"):
        with pytest.raises(ks.InvalidInputError, match="Unicode"):
            validate_query(text)


# -- rule: nothing is accepted after close ------------------------------------------------


async def test_a_record_after_close_is_refused_counted_and_never_restarts_the_writer(
    writer: tuple[WriteBehind, Metrics], migrated_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    buffer, metrics = writer
    buffer.submit(_search("before close"))
    assert await buffer.close(timeout=30)
    assert buffer.closed
    caplog.set_level(logging.ERROR, logger="kuya_store.writer")
    assert buffer.submit(_search("after close")) is False
    assert _writer_tasks() == []
    assert (metrics.count("writes_refused_closed"), metrics.count("writes_dropped")) == (1, 1)
    assert "closed" in caplog.text and "after close" in caplog.text
    assert await buffer.flush(timeout=1)  # nothing pending: it does not wait
    rows = await _rows(migrated_url, "SELECT query FROM searches")
    assert [r["query"] for r in rows] == ["before close"]


async def test_a_search_finishing_after_close_is_written_or_counted(migrated_url: str) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    market = FakeMarketplace(listings=3)

    async def slow(request: ks.FetchRequest) -> ks.FetchResult:
        entered.set()
        await release.wait()
        return await market.sold(request)

    store = ks.CompsStore(database_url=migrated_url, fetchers={"sold": slow})
    await store.start()
    search = asyncio.create_task(store.comps.search(QUERY))
    await entered.wait()
    closing = asyncio.create_task(store.close(timeout=10))
    await asyncio.sleep(0.1)
    release.set()
    outcome = await asyncio.gather(search, return_exceptions=True)
    await closing
    assert _writer_tasks() == []  # no writer left running on a closed store
    writes = store.metrics()["writes"]
    written = await _count(migrated_url, "SELECT count(*) FROM searches")
    # Either the store waited for the search and wrote it, or it refused it and says so.
    assert written + writes["refused_closed"] == 1, (outcome, writes)
    assert writes["dropped"] == writes["refused_closed"]


# -- rule: flush() and close() are bounded and report ------------------------------------


def test_flush_timeout_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ks.StoreSettings().flush_timeout == timedelta(seconds=30)
    monkeypatch.setenv("KUYA_FLUSH_TIMEOUT", "PT5S")
    assert ks.StoreSettings().flush_timeout == timedelta(seconds=5)
    for bad in (0, -1, "P0D"):
        with pytest.raises(ks.InvalidInputError) as info:
            ks.StoreSettings(flush_timeout=bad)
        assert info.value.field == "flush_timeout"


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def outage(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """A database and a way to make it stop answering writes, then answer again."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("own_postgres")
        yield {"url": server.url, "down": server.stop, "up": server.start}
        return
    path = tmp_path / "kuya.db"
    holder: list[sqlite3.Connection] = []

    def down() -> None:  # another process holds the write lock and does not let go
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        holder.append(conn)

    def up() -> None:
        holder.pop().rollback()

    yield {"url": f"sqlite+aiosqlite:///{path}", "down": down, "up": up}
    for conn in holder:
        conn.close()


async def test_flush_and_close_are_bounded_during_an_outage_and_report(
    outage: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    url = outage["url"]
    await ks.migrations.upgrade_async(url)
    caplog.set_level(logging.WARNING, logger="kuya_store.writer")
    market = FakeMarketplace(listings=2)
    store = ks.CompsStore(
        database_url=url,
        fetchers={"sold": market.sold},
        flush_timeout=1,  # the default wait of both flush() and close()
        sqlite_busy_timeout=0.2,
        db_connect_timeout=1,
    )
    await store.start()
    await store.comps.search(QUERY)
    assert await store.flush()
    outage["down"]()
    for _ in range(5):
        await store.comps.search(SAME_CARD)  # answered by the hot tier, written behind

    async with asyncio.timeout(30):  # a hang fails the test instead of stalling the suite
        started = time.monotonic()
        assert not await store.flush()
        assert time.monotonic() - started < 1 + 5
        assert store.metrics()["writes"]["pending"] == 5
        assert "5 records still unwritten" in caplog.text

        started = time.monotonic()
        assert not await store.flush(timeout=0.3)
        assert time.monotonic() - started < 0.3 + 5

        started = time.monotonic()
        await store.close()
        assert time.monotonic() - started < 1 + 8
    writes = store.metrics()["writes"]
    assert (writes["dropped"], writes["pending"], writes["rejected"]) == (5, 0, 0)
    assert "closing with 5 unwritten records" in caplog.text
    outage["up"]()
    assert await _count(url, "SELECT count(*) FROM searches") == 1


async def test_flush_does_not_wait_for_records_queued_after_it(migrated_url: str) -> None:
    market = FakeMarketplace(listings=2)
    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": market.sold}, write_flush_interval=0.01
    ) as store:
        await store.comps.search(QUERY)
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                await store.comps.search(SAME_CARD)
                await asyncio.sleep(0)

        load = asyncio.create_task(traffic())
        await asyncio.sleep(0.05)
        try:
            assert await store.flush(timeout=30)  # returns although the queue never empties
        finally:
            stop.set()
            await load


# -- what is worth retrying (pure) --------------------------------------------------------


class _DriverError(Exception):
    """A driver error as the asyncpg adapter presents it: a SQLSTATE attribute."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"server said {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [
        ("23503", False),  # foreign key violation
        ("23502", False),  # not null violation
        ("22003", False),  # numeric value out of range
        ("22021", False),  # character not in repertoire
        ("42601", False),  # syntax error
        ("40P01", True),  # deadlock detected
        ("40001", True),  # serialization failure
        ("57P01", True),  # admin shutdown
        ("57P03", True),  # cannot connect now
        ("08006", True),  # connection failure
        ("53300", True),  # too many connections
        ("28P01", True),  # password rejected: the configuration, not the record
        ("42P01", True),  # the table is not there yet
        ("55P03", True),  # lock not available
    ],
)
def test_is_transient_reads_the_sqlstate(sqlstate: str, transient: bool) -> None:
    exc = DBAPIError("INSERT INTO searches ...", {}, _DriverError(sqlstate))
    assert is_transient(exc) is transient


def test_is_transient_on_pool_and_os_errors() -> None:
    assert is_transient(PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached"))
    assert is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert is_transient(TimeoutError())
    assert not is_transient(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert not is_transient(ValueError("bad"))


async def _violate_foreign_key(engine: AsyncEngine, sqlite: bool) -> None:
    async with engine.begin() as conn:
        if sqlite:
            await conn.execute(sa.text("PRAGMA foreign_keys = ON"))
        await conn.execute(sa.text("INSERT INTO s VALUES (1, 42)"))


async def test_is_transient_on_real_driver_errors(database_url: str) -> None:
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE u (id INTEGER PRIMARY KEY)"))
            await conn.execute(sa.text("CREATE TABLE s (id INTEGER, u INTEGER REFERENCES u (id))"))
        with pytest.raises(IntegrityError) as fk:
            await _violate_foreign_key(engine, database_url.startswith("sqlite"))
        assert not is_transient(fk.value)
        async with engine.connect():  # holds the pool's only connection
            with pytest.raises(PoolTimeoutError) as busy:
                await engine.connect()
        assert is_transient(busy.value)
    finally:
        await engine.dispose()


async def test_get_listing_refuses_text_without_utf8_form(migrated_url: str) -> None:
    async with ks.CompsStore(database_url=migrated_url) as store:
        with pytest.raises(ks.InvalidInputError) as caught:
            await store.comps.get_listing("A\ud800")
        assert caught.value.field == "item_id"
