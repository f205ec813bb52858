"""A fetch's listings and links are written by one bulk statement, and it keeps every rule.

The pure parts (deduplication, column arrays, the statement's shape) are tested without a
server; the statement itself is then attacked on real PostgreSQL and SQLite: an item_id
given twice in one fetch, an older write arriving after a newer one, no listings, 5,000
listings, extreme values and text, fields left empty, text no database can store, and the
same fetches written to both backends and read back alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

import kuya_store as ks
from kuya_store import write_records
from kuya_store.db.bulk import (
    LISTING_COLUMNS,
    LISTING_UPDATE_COLUMNS,
    listing_arrays,
    newest_per_item,
    postgres_upsert_with_links,
)
from kuya_store.db.tables import metadata
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import MAX_PRICE
from kuya_store.persistence import Database, FetchRecord, SearchRecord
from kuya_store.stored import StoredResult
from kuya_store.upstream import validate_fetch_result
from kuya_store.writer import WriteBehind, is_transient
from readback import rows as _rows

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CARD = "wemby"


def _listing(item_id: str, **fields: Any) -> ks.Listing:
    values: dict[str, Any] = {"title": f"card {item_id}", "price": "10.00", "sold": True}
    return ks.Listing(item_id=item_id, **{**values, **fields})


def _record(
    listings: list[ks.Listing],
    at: datetime = NOW,
    kind: ks.SearchType = ks.SearchType.SOLD,
    query: str = "wemby",
) -> FetchRecord:
    params: dict[str, Any] = {"q": query}
    search = SearchRecord(
        query=query,
        card_identifier=CARD,
        search_type=kind,
        filters={},
        params=params,
        created_at=at,
        execution_time_ms=1,
        cache_hit=False,
        items_count=len(listings),
        result_key=ResultIdentity.of(CARD, kind, params).result_key,
    )
    result = StoredResult(
        query=query,
        card_identifier=CARD,
        search_type=kind,
        params=params,
        listings=listings,
        fetched_at=at,
    )
    return FetchRecord(search=search, result=result, listing_ttl=at + timedelta(days=1))


def _identity(record: FetchRecord) -> ResultIdentity:
    return ResultIdentity.of(CARD, record.search.search_type, record.search.params)


async def _stored_listings(url: str) -> list[dict[str, Any]]:
    columns = ", ".join((*LISTING_COLUMNS, "first_seen", "last_updated", "ttl"))
    return await _rows(url, f"SELECT {columns} FROM listing_cache ORDER BY item_id")


async def _links(url: str) -> list[tuple[int, str]]:
    found = await _rows(
        url,
        "SELECT r.position, l.item_id FROM search_results r "
        "JOIN listing_cache l ON l.id = r.listing_id ORDER BY r.search_id, r.position",
    )
    return [(r["position"], r["item_id"]) for r in found]


@pytest.fixture
async def database(migrated_url: str) -> Any:
    db = Database(ks.StoreSettings(database_url=migrated_url), Metrics())
    yield db
    await db.close()


# -- the pure parts -----------------------------------------------------------------------


def test_an_item_given_twice_is_kept_once_with_its_last_occurrence_in_code_point_order() -> None:
    listings = [
        _listing("b", title="first b"),
        _listing("a"),
        _listing("é"),
        _listing("B"),
        _listing("b", title="last b"),
        _listing("🃏"),
    ]
    kept = newest_per_item(listings)
    assert [x.item_id for x in kept] == ["B", "a", "b", "é", "🃏"]
    assert next(x for x in kept if x.item_id == "b").title == "last b"
    assert newest_per_item([]) == []


def test_column_arrays_line_up_and_every_position_keeps_its_item() -> None:
    listings = [_listing("b", bids=3), _listing("a", condition=None), _listing("b", bids=4)]
    arrays = listing_arrays(listings)
    assert set(arrays) == {*LISTING_COLUMNS, "link_items"}
    assert arrays["item_id"] == ["a", "b"]
    assert arrays["bids"] == [None, 4]
    assert arrays["condition"] == [None, None]
    assert arrays["link_items"] == ["b", "a", "b"]
    assert all(len(arrays[name]) == 2 for name in LISTING_COLUMNS)


def test_a_naive_sale_date_built_without_validation_is_refused() -> None:
    naive = ks.Listing.model_construct(
        item_id="N", title="t", price=Decimal("1.00"), sold=True, sold_date=datetime(2026, 1, 1)
    )
    with pytest.raises(ValueError, match="naive"):
        listing_arrays([naive])


def test_the_statement_takes_one_parameter_per_column_whatever_the_fetch_size() -> None:
    statement = postgres_upsert_with_links(
        metadata.tables["listing_cache"], metadata.tables["search_results"]
    )
    compiled = statement.compile(dialect=asyncpg_dialect.dialect())
    sql = str(compiled)
    assert sorted(compiled.positiontup or ()) == sorted(
        (*LISTING_COLUMNS, "link_items", "moment", "ttl", "search_id")
    )
    assert sql.count("unnest(") == 2
    assert "ON CONFLICT (item_id) DO UPDATE" in sql
    # The newest-wins rule on every column a re-fetch overwrites, first_seen never.
    for name in LISTING_UPDATE_COLUMNS:
        assert f"{name} = CASE WHEN (excluded.last_updated >= listing_cache.last_updated)" in sql
    assert "first_seen = " not in sql
    assert "$6::NUMERIC(10, 2)[]" in sql  # money cast to the column's exact type


# -- the statement on real servers ----------------------------------------------------------


async def test_an_item_twice_in_one_fetch_is_one_row_and_every_position_links_to_it(
    database: Database, migrated_url: str
) -> None:
    listings = [
        _listing("A", title="first A", price="1.00"),
        _listing("B"),
        _listing("A", title="last A", price="3.00"),
    ]
    assert await database.persist_fetch(_record(listings)) is not None
    stored = await _stored_listings(migrated_url)
    assert [(r["item_id"], r["title"], r["price"]) for r in stored] == [
        ("A", "last A", Decimal("3.00") if "postgres" in migrated_url else 300),
        ("B", "card B", Decimal("10.00") if "postgres" in migrated_url else 1000),
    ]
    assert await _links(migrated_url) == [(0, "A"), (1, "B"), (2, "A")]
    back = await database.newest_result(_identity(_record(listings)), NOW - timedelta(hours=1))
    assert back is not None
    assert [(x.item_id, x.title) for x in back.listings] == [
        ("A", "last A"),
        ("B", "card B"),
        ("A", "last A"),
    ]


async def test_an_older_write_arriving_later_never_overwrites_a_newer_row(
    database: Database, migrated_url: str
) -> None:
    newer = _listing("X", title="newer title", price="120.00", condition="PSA 10", bids=7)
    older = _listing("X", title="older title", price="100.00", condition=None, bids=None)
    later, earlier = NOW, NOW - timedelta(hours=1)
    await database.persist_fetch(_record([newer, _listing("Y")], at=later, query="q1"))
    await database.persist_fetch(_record([older, _listing("Z")], at=earlier, query="q2"))
    row = {r["item_id"]: r for r in await _stored_listings(migrated_url)}
    assert await database.get_listing("X") == newer
    assert str(row["X"]["last_updated"])[:16] == "2026-11-20 12:00"
    assert await database.get_listing("Z") is not None  # the late fetch's new rows land
    # A newer write still replaces everything, empty fields included.
    newest = _listing("X", title="newest", price="90.00", condition=None, bids=None)
    await database.persist_fetch(_record([newest], at=later + timedelta(minutes=1), query="q3"))
    assert await database.get_listing("X") == newest
    # The same moment twice: the write that comes second wins, as before.
    again = _listing("X", title="same moment", price="91.00")
    await database.persist_fetch(_record([again], at=later + timedelta(minutes=1), query="q4"))
    assert await database.get_listing("X") == again


async def test_a_fetch_without_listings_writes_its_search_and_nothing_else(
    database: Database, migrated_url: str
) -> None:
    for kind in ks.SearchType:
        assert await database.persist_fetch(_record([], kind=kind)) is not None
    assert await _rows(migrated_url, "SELECT count(*) AS n FROM listing_cache") == [{"n": 0}]
    assert await _links(migrated_url) == []
    searches = await _rows(migrated_url, "SELECT count(*) AS n FROM searches")
    assert searches == [{"n": 2}]


async def test_five_thousand_listings_in_one_fetch_land_in_order(
    database: Database, migrated_url: str
) -> None:
    # Shuffled item_ids (written in their order, read back in the fetch's).
    listings = [
        _listing(f"L{(i * 7919) % 5000:05d}", price=f"{i % 997}.{i % 100:02d}") for i in range(5000)
    ]
    record = _record(listings)
    assert await database.persist_fetch(record) is not None
    back = await database.newest_result(_identity(record), NOW - timedelta(hours=1))
    assert back is not None and back.listings == listings
    # And again, a re-fetch of the same 5,000 one hour later: every row updated once.
    later = _record(listings[::-1], at=NOW + timedelta(hours=1), query="again")
    assert await database.persist_fetch(later) is not None
    stored = await _stored_listings(migrated_url)
    assert len(stored) == 5000
    assert {str(r["last_updated"])[:13] for r in stored} == {"2026-11-20 13"}
    assert len(await _links(migrated_url)) == 10_000


_AWKWARD_TITLES = (
    "x" * 500,
    "Wemby 🃏🔥 #1 — ルーキー",
    "quote ' double \" backslash \\ comma , semicolon ;",
    "new\nline\ttab\rreturn",
    '{"array", literal} NULL',
    "NULL",
    "\\N",
    "  spaces around  ",
)


def _extreme_listings() -> list[ks.Listing]:
    listings = [
        _listing(
            f"T{i}",
            title=title,
            price=MAX_PRICE if i % 2 else "0.00",
            listing_type="auction" if i % 2 else "buy_it_now",
            condition="c" * 50,
            sold=bool(i % 2),
            sold_date=datetime(
                2026, 11, 1, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-8))
            ),
            bids=2_147_483_647,
            watchers=0,
        )
        for i, title in enumerate(_AWKWARD_TITLES)
    ]
    listings.append(ks.Listing(item_id="E" * 50, title="bare", price="0.01"))  # defaults
    listings.append(ks.Listing(item_id="'\\,\"{}", title="t", price="5"))  # awkward item_id
    return listings


async def test_extreme_values_and_text_read_back_exactly(database: Database) -> None:
    listings = _extreme_listings()
    record = _record(listings, kind=ks.SearchType.ACTIVE)
    assert await database.persist_fetch(record) is not None
    back = await database.newest_result(_identity(record), NOW - timedelta(hours=1))
    assert back is not None
    assert back.listings == listings
    for listing in listings:
        assert await database.get_listing(listing.item_id) == listing
    assert back.listings[1].price == MAX_PRICE
    assert back.listings[0].sold_date == datetime(2026, 11, 2, 7, 59, 59, 999999, tzinfo=UTC)


def _amount(value: Any, column: str, cents: bool) -> Any:
    if value is None or column == "sample_size":
        return value
    return Decimal(value) / 100 if cents else Decimal(value)


async def test_sqlite_and_postgresql_store_the_same_rows(
    sqlite_url: str, postgres_url: str
) -> None:
    """Both backends take the same fetches (dupes, a late older write) and give the same back."""
    fetches = [
        _record(_extreme_listings(), at=NOW, query="one"),
        _record([_listing("T1", title="older"), _listing("N1")], at=NOW - timedelta(hours=2)),
        _record([_listing("T2", title="a"), _listing("T2", title="b")], at=NOW, query="three"),
    ]
    answers = []
    for url in (sqlite_url, postgres_url):
        await ks.migrations.upgrade_async(url)
        db = Database(ks.StoreSettings(database_url=url), Metrics())
        try:
            for record in fetches:
                assert await db.persist_fetch(record) is not None
            results = [
                await db.newest_result(_identity(r), NOW - timedelta(days=1)) for r in fetches
            ]
            listings = [await db.get_listing(x.item_id) for r in fetches for x in r.result.listings]
            due = await db.listings_due_for_refresh(NOW + timedelta(days=2), limit=100)
        finally:
            await db.close()
        snapshot = await _rows(
            url, "SELECT sample_size, market_value, min_price, max_price FROM price_snapshots"
        )
        cents = "sqlite" in url  # money is kept as integer cents there
        answers.append(
            (
                [r.listings if r else None for r in results],
                listings,
                sorted(due, key=lambda x: x.item_id),
                await _links(url),
                [{k: _amount(v, k, cents) for k, v in s.items()} for s in snapshot],
            )
        )
    sqlite_answer, postgres_answer = answers
    assert sqlite_answer[0] == postgres_answer[0]
    assert sqlite_answer[1] == postgres_answer[1]
    assert sqlite_answer[2] == postgres_answer[2]
    assert sqlite_answer[3] == postgres_answer[3]
    assert sqlite_answer[4] == postgres_answer[4]


async def test_postgresql_writes_listings_and_links_in_one_statement(postgres_url: str) -> None:
    await ks.migrations.upgrade_async(postgres_url)
    db = Database(ks.StoreSettings(database_url=postgres_url), Metrics())
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    def watch(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda q: statements.append(q.query))

    # Through SQLAlchemy, or on the driver's own connection (the logger sees only those).
    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    event.listen(db.engine.sync_engine, "connect", watch)
    try:
        listings = [_listing(f"S{i:04d}") for i in range(3000)]
        await db.persist_fetch(_record(listings, kind=ks.SearchType.ACTIVE))
    finally:
        await db.close()
    tables = ("searches", "listing_cache", "search_results")
    touching = [s for s in statements if any(table in s for table in tables)]
    assert len(touching) == 1, touching  # the search row, listings and links together
    assert len(await _links(postgres_url)) == 3000


def test_the_search_row_statement_names_every_column_a_record_fills() -> None:
    record = _record([])
    assert set(record.search.row()) == set(write_records.SEARCH_COLUMNS)


async def test_a_replayed_fetch_writes_nothing_again(database: Database, migrated_url: str) -> None:
    first = _record([_listing("R1"), _listing("R2")])
    assert await database.persist_fetch(first) is not None
    # The same record (same record_key) replayed with other listings, as a journal would.
    replay = FetchRecord(
        search=first.search,
        result=first.result.model_copy(update={"listings": [_listing("R1", price="99.00")]}),
        listing_ttl=first.listing_ttl,
    )
    assert await database.persist_fetch(replay) is None
    assert await database.get_listing("R1") == _listing("R1")
    assert await _links(migrated_url) == [(0, "R1"), (1, "R2")]
    assert await _rows(migrated_url, "SELECT count(*) AS n FROM searches") == [{"n": 1}]


def _unstorable(title: str) -> ks.Listing:
    # Built without validation: the model refuses this text before it reaches a database.
    return ks.Listing.model_construct(
        item_id="BAD", title=title, price=Decimal("1.00"), sold=True, extra={}
    )


@pytest.mark.parametrize("title", ["nul \x00 inside", "lone \ud800 surrogate"])
async def test_text_no_database_can_store_fails_the_fetch_whole_and_is_not_retried(
    database: Database, migrated_url: str, title: str
) -> None:
    with pytest.raises(ks.InvalidInputError, match="title"):  # refused before, as a rule
        validate_fetch_result([{"item_id": "BAD", "title": title, "price": "1.00"}])
    record = _record([_listing("GOOD"), _unstorable(title)])
    refusal: Exception | None = None
    try:
        await database.persist_fetch(record)
    except Exception as exc:  # whatever the driver raises is checked below
        refusal = exc
    counts = [
        (await _rows(migrated_url, f"SELECT count(*) AS n FROM {table}"))[0]["n"]
        for table in ("searches", "listing_cache", "search_results")
    ]
    if refusal is None:  # SQLite can keep a NUL; PostgreSQL never does
        assert "\x00" in title and "sqlite" in migrated_url
        assert counts == [1, 2, 2]
        return
    assert not is_transient(refusal)  # the writer rejects it rather than retrying forever
    assert counts == [0, 0, 0]  # one transaction: not the search, nor the good listing


async def test_the_writer_isolates_a_refused_fetch_and_writes_the_others(
    database: Database, migrated_url: str
) -> None:
    metrics = Metrics()
    buffer = WriteBehind(database, metrics, capacity=100, batch_size=10, interval=0.01)
    try:
        buffer.submit(_record([_listing("G1"), _listing("G1")], query="dupes"))
        buffer.submit(_record([_listing("G2"), _unstorable("lone \ud800")], query="bad"))
        buffer.submit(_record([_listing("G3")], query="good"))
        assert await buffer.flush(timeout=60)
    finally:
        await buffer.close(timeout=10)
    items = [r["item_id"] for r in await _stored_listings(migrated_url)]
    assert items == ["G1", "G3"]
    queries = await _rows(migrated_url, "SELECT query, result_key FROM searches ORDER BY id")
    assert [r["query"] for r in queries] == ["dupes", "bad", "good"]  # its search stays
    assert queries[1]["result_key"] is None
    assert metrics.count("writes_rejected") == 1
    assert await _links(migrated_url) == [(0, "G1"), (1, "G1"), (0, "G3")]


async def test_sold_fetches_value_the_day_from_the_rows_written(
    database: Database, migrated_url: str
) -> None:
    first = [_listing(f"V{i}", price=f"{10 + i}.00") for i in range(5)]
    await database.persist_fetch(_record(first, query="a"))
    # A later fetch of the same card re-prices V0 and adds V9 (and gives V9 twice).
    second = [_listing("V0", price="50.00"), _listing("V9", price="20.00"), _listing("V9")]
    await database.persist_fetch(_record(second, at=NOW + timedelta(hours=1), query="b"))
    rows = await _rows(migrated_url, "SELECT sample_size, max_price FROM price_snapshots")
    assert len(rows) == 1 and rows[0]["sample_size"] == 6
    assert Decimal(rows[0]["max_price"]) in (Decimal("50.00"), Decimal(5000))


def test_arrays_of_other_item_types_never_share_a_cached_statement() -> None:
    from kuya_store.db.bulk import _DriverArray
    from kuya_store.db.types import Money

    texts, money = _DriverArray(sa.String(50)), _DriverArray(Money())
    assert texts._static_cache_key != money._static_cache_key
    assert texts._static_cache_key == _DriverArray(sa.String(50))._static_cache_key
