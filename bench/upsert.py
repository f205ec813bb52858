"""Bulk upsert throughput: ``Database.persist_fetch`` against raw asyncpg ``executemany``.

Every contender writes the same fetches (1,000 listings each, half of them seen by the
fetch before) into ``listing_cache`` of a freshly migrated schema, one transaction per
fetch. The baseline is raw asyncpg ``executemany`` of ``INSERT .. ON CONFLICT (item_id)
DO UPDATE`` of the same columns, listings only. kuya-store's transaction also writes the
fetch's ``searches`` row and its 1,000 ``search_results`` links, keeps the newest-wins
``CASE`` on every column, and for a sold fetch re-values the card's day from every sale
its fetches saw that day (all fetches are of one card on one day: 10,500 sales by the
last one). So persist_fetch is measured on the same listings as active fetches (the
writes alone) and as sold fetches (the writes and the day's valuation). A card's day of
10,500 sales is ten times what a card price app meets: a fetch's sales span weeks, and
the card's next fetches that day see mostly the same ones, plus the day's few new sales.
So the sold fetches are measured once more on days of two fetches (1,000 and 1,500
sales), the same listings again.

Then the bulk statements PostgreSQL offers, on raw asyncpg, each writing the listings
(with the newest-wins ``CASE``) and the links in one transaction per fetch: kuya-store's
one ``unnest`` statement (compiled from ``db/bulk.py``), and ``COPY`` into a temporary
table (``ON COMMIT DROP``) followed by the same ``INSERT .. SELECT .. ON CONFLICT``. And
last, ``persist_fetch`` itself with either (active fetches of 60, 200 and 1,000 listings),
since their fixed costs differ: ``COPY`` pays two more round trips and a temporary table
per transaction, ``unnest`` a little more client encoding per row.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

import kuya_store as ks
from bench.records import fetch_record
from bench.servers import drop_database
from bench.stats import Target
from kuya_store.db.bulk import LISTING_COLUMNS, listing_arrays, postgres_upsert_with_links
from kuya_store.db.tables import metadata
from kuya_store.metrics import Metrics
from kuya_store.persistence import LISTING_UPDATE_COLUMNS, Database, FetchRecord

TARGET = 1.0
# The same columns as kuya-store writes, so both sides do the same work per row.
UPDATED = LISTING_UPDATE_COLUMNS
COLUMNS = ("item_id", "first_seen", *UPDATED)
UPSERT = (
    f"INSERT INTO listing_cache ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "
    f"ON CONFLICT (item_id) DO UPDATE SET "
    f"{', '.join(f'{c} = EXCLUDED.{c}' for c in UPDATED)}"
)
START = datetime(2026, 11, 1, tzinfo=UTC)
_NEWER = "EXCLUDED.last_updated >= listing_cache.last_updated"
_SET = ", ".join(
    f"{c} = CASE WHEN {_NEWER} THEN EXCLUDED.{c} ELSE listing_cache.{c} END" for c in UPDATED
)
_INCOMING = (
    "CREATE TEMP TABLE incoming (item_id varchar(50), title text, price numeric(10, 2), "
    "listing_type varchar(20), condition varchar(50), sold boolean, "
    "sold_date timestamptz, bids integer, watchers integer) ON COMMIT DROP"
)
_FROM_COPY = (
    f"WITH written AS (INSERT INTO listing_cache ({', '.join(LISTING_COLUMNS)}, "
    "first_seen, last_updated, ttl, search_id) "
    f"SELECT {', '.join(LISTING_COLUMNS)}, $1, $1, $2, $3 FROM incoming "
    f'ORDER BY item_id COLLATE "C" ON CONFLICT (item_id) DO UPDATE SET {_SET} '
    "RETURNING id, item_id) "
    "INSERT INTO search_results (search_id, position, listing_id) "
    "SELECT $3, p.n - 1, written.id FROM unnest($4::varchar[]) WITH ORDINALITY AS p(item_id, n) "
    "JOIN written ON written.item_id = p.item_id"
)


def _listings(fetch: int, size: int) -> list[ks.Listing]:
    first = fetch * size // 2
    return [
        ks.Listing(
            item_id=f"U{first + i:09d}",
            title=f"2023 Topps Chrome Wembanyama #1 lot {first + i}",
            price=Decimal(10 + (first + i) % 50) + Decimal("0.99"),
            sold=True,
            listing_type="auction",
            condition="Ungraded",
            bids=i % 9,
            watchers=i % 13,
            sold_date=START + timedelta(minutes=first + i),
        )
        for i in range(size)
    ]


def _record(fetch: int, listings: list[ks.Listing]) -> FetchRecord:
    return fetch_record(fetch, listings, START + timedelta(hours=fetch))


def _two_a_day(record: FetchRecord) -> FetchRecord:
    """The same sold fetch on a day of its own and its neighbour's: 1,000 or 1,500 sales."""
    number = record.search.params["fetch"]
    at = START + timedelta(days=number // 2, hours=number % 2)
    return dataclasses.replace(
        record,
        search=dataclasses.replace(record.search, created_at=at),
        result=record.result.model_copy(update={"fetched_at": at}),
        listing_ttl=at + timedelta(days=1),
    )


def _active(record: FetchRecord) -> FetchRecord:
    """The same fetch as an active search: persisted alike, without a day to re-value."""
    kind = ks.SearchType.ACTIVE
    return dataclasses.replace(
        record,
        search=dataclasses.replace(record.search, search_type=kind),
        result=record.result.model_copy(update={"search_type": kind}),
    )


def _rows(record: FetchRecord, search_id: int) -> list[tuple[object, ...]]:
    moment = record.search.created_at
    rows = []
    for x in sorted(record.result.listings, key=lambda x: x.item_id):
        values = {
            **x.model_dump(include=set(COLUMNS)),
            "first_seen": moment,
            "last_updated": moment,
            "ttl": record.listing_ttl,
            "search_id": search_id,
        }
        rows.append(tuple(values[name] for name in COLUMNS))
    return rows


# One fetch's write on a raw connection: (connection, record, its search id).
_Write = Callable[[asyncpg.Connection, FetchRecord, int], Awaitable[None]]


def _unnest_write() -> _Write:
    """kuya-store's own statement, compiled once, executed on the raw driver."""
    statement = postgres_upsert_with_links(
        metadata.tables["listing_cache"], metadata.tables["search_results"]
    )
    compiled = statement.compile(dialect=asyncpg_dialect.dialect())
    sql, order = str(compiled), list(compiled.positiontup or ())

    async def write(conn: asyncpg.Connection, record: FetchRecord, search_id: int) -> None:
        values: dict[str, Any] = {
            **listing_arrays(record.result.listings),
            "moment": record.search.created_at,
            "ttl": record.listing_ttl,
            "search_id": search_id,
        }
        await conn.execute(sql, *(values[name] for name in order))

    return write


async def _copy_write(conn: asyncpg.Connection, record: FetchRecord, search_id: int) -> None:
    arrays = listing_arrays(record.result.listings)
    await conn.execute(_INCOMING)
    columns = [arrays[name] for name in LISTING_COLUMNS]
    await conn.copy_records_to_table("incoming", records=list(zip(*columns, strict=True)))
    moment = record.search.created_at
    await conn.execute(_FROM_COPY, moment, record.listing_ttl, search_id, arrays["link_items"])


class _Contender:
    """One way of writing the fetches, into a database of its own."""

    async def start(self, url: str, records: list[FetchRecord]) -> None:
        raise NotImplementedError

    async def write(self, index: int, record: FetchRecord) -> None:
        raise NotImplementedError

    async def stop(self) -> tuple[int, int]:
        """Listings and links stored, checked once the run is over."""
        raise NotImplementedError


class _Raw(_Contender):
    """A raw asyncpg connection; one ``searches`` row per fetch made before the clock."""

    def __init__(self, write: _Write | None = None) -> None:
        self._write = write
        self._ids: list[int] = []

    async def start(self, url: str, records: list[FetchRecord]) -> None:
        self._conn = await asyncpg.connect(_dsn(url))
        for _ in records:
            self._ids.append(
                await self._conn.fetchval(
                    "INSERT INTO searches (query, search_type) VALUES ('wemby', 'sold') "
                    "RETURNING id"
                )
            )
        # The baseline's parameter tuples are built before the clock starts.
        self._rows = [_rows(r, self._ids[0]) for r in records] if self._write is None else []

    async def write(self, index: int, record: FetchRecord) -> None:
        async with self._conn.transaction():
            if self._write is None:
                await self._conn.executemany(UPSERT, self._rows[index])
            else:
                await self._write(self._conn, record, self._ids[index])

    async def stop(self) -> tuple[int, int]:
        try:
            listings = await self._conn.fetchval("SELECT count(*) FROM listing_cache")
            links = await self._conn.fetchval("SELECT count(*) FROM search_results")
        finally:
            await self._conn.close()
        return int(listings), int(links)


class _Kuya(_Contender):
    """``Database.persist_fetch``, as the store's write-behind task calls it."""

    def __init__(
        self,
        kind: ks.SearchType,
        database: type[Database] = Database,
        day: Callable[[FetchRecord], FetchRecord] = lambda record: record,
    ) -> None:
        self._kind = kind
        self._class = database
        self._day = day

    async def start(self, url: str, records: list[FetchRecord]) -> None:
        self._database = self._class(ks.StoreSettings(database_url=url), Metrics())
        sold = self._kind is ks.SearchType.SOLD
        self._records = [self._day(r) for r in records] if sold else [_active(r) for r in records]
        assert await self._database.ping()

    async def write(self, index: int, record: FetchRecord) -> None:
        await self._database.persist_fetch(self._records[index])

    async def stop(self) -> tuple[int, int]:
        try:
            async with self._database.engine.connect() as conn:
                listings = await conn.exec_driver_sql("SELECT count(*) FROM listing_cache")
                links = await conn.exec_driver_sql("SELECT count(*) FROM search_results")
                counts = int(listings.scalar_one()), int(links.scalar_one())
        finally:
            await self._database.close()
        return counts


class _CopyDatabase(Database):
    """``persist_fetch`` with the road not taken: ``COPY`` to a temporary table on PostgreSQL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._driver_writes = False  # its COPY runs in SQLAlchemy's transaction

    async def _write_fetch(self, conn: Any, run: Any, record: FetchRecord) -> int | None:
        search_id: int | None = (
            await conn.execute(self._log_stmt.values(record.search.row()))
        ).scalar_one_or_none()
        if search_id is not None and record.result.listings:
            raw = (await conn.get_raw_connection()).driver_connection
            await _copy_write(raw, record, search_id)
        return search_id


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


BASELINE = "asyncpg executemany ON CONFLICT (baseline)"
REALISTIC = "kuya-store persist_fetch, sold, days of <= 1,500 sales"


def _contenders() -> dict[str, Callable[[], _Contender]]:
    unnest = _unnest_write()
    return {
        BASELINE: _Raw,
        "kuya-store persist_fetch, active fetches": lambda: _Kuya(ks.SearchType.ACTIVE),
        "kuya-store persist_fetch, sold fetches": lambda: _Kuya(ks.SearchType.SOLD),
        REALISTIC: lambda: _Kuya(ks.SearchType.SOLD, day=_two_a_day),
        "asyncpg: unnest arrays, one statement (kuya-store's)": lambda: _Raw(unnest),
        "asyncpg: COPY to a temp table + INSERT .. SELECT": lambda: _Raw(_copy_write),
    }


async def _one_run(
    pg_url: str, records: list[FetchRecord], makers: dict[str, Callable[[], _Contender]]
) -> dict[str, float]:
    """Every contender in a fresh database of its own, taking turns fetch by fetch.

    Turns, not one contender after another: on a shared machine a noisy moment then
    slows every contender's same fetch, not one contender's whole run.
    """
    admin = await asyncpg.connect(_dsn(pg_url))
    names = {name: f"bench_upsert_{uuid.uuid4().hex[:8]}" for name in makers}
    base = pg_url.rsplit("/", 1)[0]
    running: dict[str, _Contender] = {}
    elapsed = dict.fromkeys(makers, 0.0)
    try:
        for name, make in makers.items():
            await admin.execute(f'CREATE DATABASE "{names[name]}"')
            url = f"{base}/{names[name]}"
            await ks.migrations.upgrade_async(url)
            running[name] = make()
            await running[name].start(url, records)
        for index, record in enumerate(records):
            for name, contender in running.items():
                started = time.perf_counter()
                await contender.write(index, record)
                elapsed[name] += time.perf_counter() - started
        distinct, positions = _distinct(records), sum(len(r.result.listings) for r in records)
        for name in list(running):
            listings, links = await running.pop(name).stop()
            assert listings == distinct, (name, listings)
            assert links == (0 if name == BASELINE else positions), (name, links)
    finally:
        for contender in running.values():
            await contender.stop()
        for name in names.values():
            await drop_database(admin, name)
        await admin.close()
    return elapsed


def _distinct(records: list[FetchRecord]) -> int:
    return len({x.item_id for r in records for x in r.result.listings})


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    fetches, size = max(4, int(20 * scale)), 1000
    best_of = 1 if scale < 1 else 2  # a smoke run: every database made once, not twice
    total = fetches * size
    print(
        f"\n## bulk upsert on PostgreSQL ({fetches} fetches x {size:,} listings, best of {best_of})"
    )
    records = [_record(f, _listings(f, size)) for f in range(fetches)]
    runs = [await _one_run(pg_url, records, _contenders()) for _ in range(best_of)]
    rates = {name: total / min(r[name] for r in runs) for name in runs[0]}
    baseline = rates[BASELINE]
    for name, rate in rates.items():
        print(f"{name:<56} {rate:10,.0f} listings/s  {rate / baseline:5.2f}x")
    print("(every row but the baseline also writes the links and keeps the newest-wins CASE)")
    await _by_fetch_size(pg_url, scale, best_of)
    targets = []
    for kind in ("active", "sold"):
        ratio = rates[f"kuya-store persist_fetch, {kind} fetches"] / baseline
        targets.append(
            Target(
                f"persist_fetch ({kind} fetches) vs asyncpg executemany, same rows",
                f">= {TARGET:.1f}x the throughput",
                f"{ratio:.2f}x",
                ratio >= TARGET,
            )
        )
    ratio = rates[REALISTIC] / baseline
    targets.append(
        Target(
            "persist_fetch (sold fetches, days of up to 1,500 sales) vs asyncpg executemany",
            f">= {TARGET:.1f}x the throughput",
            f"{ratio:.2f}x",
            ratio >= TARGET,
        )
    )
    return targets


async def _by_fetch_size(pg_url: str, scale: float, best_of: int) -> None:
    """``unnest`` against ``COPY`` inside ``persist_fetch`` (active fetches), by fetch size."""
    print("\npersist_fetch (active fetches), unnest against COPY, by listings per fetch:")
    makers: dict[str, Callable[[], _Contender]] = {
        "unnest": lambda: _Kuya(ks.SearchType.ACTIVE),
        "copy": lambda: _Kuya(ks.SearchType.ACTIVE, _CopyDatabase),
    }
    for size, fetches in ((60, 100), (200, 60), (1000, 20)):
        fetches = max(4, int(fetches * scale))
        records = [_record(f, _listings(f, size)) for f in range(fetches)]
        runs = [await _one_run(pg_url, records, makers) for _ in range(best_of)]
        unnest, copy = (size * fetches / min(r[name] for r in runs) for name in makers)
        print(
            f"{size:>5} listings: unnest {unnest:8,.0f}/s  COPY {copy:8,.0f}/s  "
            f"COPY/unnest {copy / unnest:4.2f}x"
        )
