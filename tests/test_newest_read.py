"""The read before every fetch: one statement, listings exactly as validation builds them.

On PostgreSQL the newest stored fetch and its listings come in one statement, through the
driver's own connection (or, behind PgBouncer, through SQLAlchemy in a transaction), and
its listings are built without validating again what the columns typed. The listings
must be the very models ``Listing(...)`` gives for the same values, on both backends and
through PgBouncer; a fetch with no listings, a listing row gone, a row written by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

import kuya_store as ks
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.persistence import Database, FetchRecord, SearchRecord
from kuya_store.stored import StoredResult

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
_FIELDS = ("item_id", "title", "price", "listing_type", "condition", "sold", "sold_date")


def _listings() -> list[ks.Listing]:
    return [
        ks.Listing(item_id="B-2", title="Prizm Wembanyama #136", price="12.5", sold=True),
        ks.Listing(
            item_id="A-1",
            title="Prizm Wembanyama #136 PSA 10",
            price=Decimal("99999999.99"),
            listing_type="auction",
            condition="Graded",
            sold=True,
            sold_date=datetime(2026, 11, 19, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
            bids=2_147_483_647,
            watchers=0,
        ),
        ks.Listing(item_id="C-3", title="ünïcode ⚾ card", price="0", listing_type="buy_it_now"),
        ks.Listing(item_id="B-2", title="Prizm Wembanyama #136", price="13.00", sold=True),
    ]


def _record(
    listings: list[ks.Listing], at: datetime = NOW, kind: ks.SearchType = ks.SearchType.SOLD
) -> FetchRecord:
    params: dict[str, Any] = {"pages": 2, "grade": "PSA 10", "raw": False}
    search = SearchRecord(
        query="wemby prizm",
        card_identifier="wemby",
        search_type=kind,
        filters={},
        params=params,
        created_at=at,
        execution_time_ms=1,
        cache_hit=False,
        pages_scraped=2,
        items_count=len(listings),
        result_key=_identity(kind).result_key,
        complete=False,
    )
    result = StoredResult(
        query="wemby prizm",
        card_identifier="wemby",
        search_type=kind,
        params=params,
        listings=listings,
        fetched_at=at,
    )
    return FetchRecord(search, result, at + timedelta(days=1))


def _identity(kind: ks.SearchType = ks.SearchType.SOLD) -> ResultIdentity:
    return ResultIdentity.of("wemby", kind, {"pages": 2, "grade": "PSA 10", "raw": False})


def _validated(listing: ks.Listing) -> ks.Listing:
    """What the database holds of a listing, built through validation."""
    return ks.Listing(
        item_id=listing.item_id,
        title=listing.title,
        price=listing.price.quantize(Decimal("0.01")),  # NUMERIC(10, 2)
        listing_type=listing.listing_type,
        condition=listing.condition,
        sold=listing.sold,
        sold_date=None if listing.sold_date is None else listing.sold_date.astimezone(UTC),
        bids=listing.bids,
        watchers=listing.watchers,
    )


def _same(read: list[ks.Listing], expected: list[ks.Listing]) -> None:
    assert read == expected
    for one, two in zip(read, expected, strict=True):
        assert one.model_fields_set == two.model_fields_set
        assert one.model_dump() == two.model_dump()
        assert [type(v) for v in one.model_dump().values()] == [
            type(v) for v in two.model_dump().values()
        ]
        assert str(one.price) == str(two.price)  # two places, as validation gives them
        assert one.sold_date is None or one.sold_date.tzinfo is UTC
        assert one.model_dump_json() == two.model_dump_json()
        assert one.extra == {} and one.extra is not two.extra


@pytest.fixture(params=["direct", "pgbouncer"])
async def any_url(request: pytest.FixtureRequest, database_url: str) -> str:
    """Every backend, and PostgreSQL once more through PgBouncer in transaction mode."""
    await ks.migrations.upgrade_async(database_url)
    if request.param == "direct":
        return database_url
    if not database_url.startswith("postgresql"):
        pytest.skip("PgBouncer stands in front of PostgreSQL only")
    pgbouncer = request.getfixturevalue("pgbouncer")
    return f"{pgbouncer.url_for(sa.engine.make_url(database_url).database)}?pgbouncer=true"


async def test_a_stored_result_reads_back_as_validation_builds_it(any_url: str) -> None:
    database = Database(ks.StoreSettings(database_url=any_url), Metrics())
    try:
        assert await database.newest_result(_identity(), NOW - timedelta(hours=1)) is None
        listings = _listings()
        await database.persist_fetch(_record(listings))
        back = await database.newest_result(_identity(), NOW - timedelta(hours=1))
        assert back is not None
        # Every position, in order; an item given twice holds its last version.
        last = {x.item_id: x for x in listings}
        _same(back.listings, [_validated(last[x.item_id]) for x in listings])
        assert back.params == {"pages": 2, "grade": "PSA 10", "raw": False}
        assert (back.query, back.pages_scraped, back.complete) == ("wemby prizm", 2, False)
        assert back.fetched_at == NOW and back.fetched_at.tzinfo is UTC
        assert back == StoredResult.model_validate(back.model_dump())
        for listing in listings:
            got = await database.get_listing(listing.item_id)
            assert got is not None
            _same([got], [_validated(last[listing.item_id])])
        due = await database.listings_due_for_refresh(NOW + timedelta(days=2), limit=10)
        _same(sorted(due, key=lambda x: x.item_id), [_validated(last[i]) for i in sorted(last)])
        # A newer fetch with no listings answers with none.
        await database.persist_fetch(_record([], NOW + timedelta(minutes=1)))
        empty = await database.newest_result(_identity(), NOW - timedelta(hours=1))
        assert empty is not None and empty.listings == [] and empty.fetched_at > NOW
        assert await database.newest_result(_identity(), NOW + timedelta(minutes=2)) is None
    finally:
        await database.close()


async def test_a_listing_gone_or_written_by_hand(migrated_url: str) -> None:
    database = Database(ks.StoreSettings(database_url=migrated_url), Metrics())
    try:
        await database.persist_fetch(_record(_listings(), kind=ks.SearchType.ACTIVE))
        async with database.engine.begin() as conn:
            # Another tool cleared a flag and removed the first position's listing.
            await conn.execute(
                sa.text("UPDATE listing_cache SET sold = NULL WHERE item_id = 'C-3'")
            )
            await conn.execute(sa.text("DELETE FROM listing_cache WHERE item_id = 'B-2'"))
        back = await database.newest_result(_identity(ks.SearchType.ACTIVE), NOW)
        assert back is not None
        assert [x.item_id for x in back.listings] == ["A-1", "C-3"]
        assert back.listings[1].sold is False
        _same(back.listings, [_validated(_listings()[1]), _validated(_listings()[2])])
    finally:
        await database.close()


async def test_the_read_is_one_statement(any_url: str) -> None:
    if not any_url.startswith("postgresql"):
        pytest.skip("SQLite asks its two statements of a local file")
    metrics = Metrics()
    database = Database(ks.StoreSettings(database_url=any_url), metrics)
    statements: list[str] = []

    def timed() -> int:
        return int(metrics.snapshot()["timings"].get("db_query", {"count": 0})["count"])

    def watch(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda q: statements.append(q.query))

    def through_sqlalchemy(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    # The driver's own statements, and those SQLAlchemy prepares (the logger skips them).
    event.listen(database.engine.sync_engine, "connect", watch)
    event.listen(database.engine.sync_engine, "before_cursor_execute", through_sqlalchemy)
    try:
        await database.persist_fetch(_record(_listings()))
        for since, found in ((NOW, True), (NOW + timedelta(seconds=1), False)):
            statements.clear()
            before = timed()
            result = await database.newest_result(_identity(), since)
            assert (result is not None) is found
            asked = [q for q in statements if "searches" in q or "search_results" in q]
            assert len(asked) == 1, statements
            assert timed() - before == 1  # timed as every statement is, driver's or not
    finally:
        await database.close()
