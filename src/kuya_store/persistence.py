"""The persistent tier: bulk writes of fetched results and the search log, and the reads back.

Every fetched result is written in one transaction; listings are upserted by ``item_id``
with native ``INSERT .. ON CONFLICT DO UPDATE``, in ``item_id`` order so two writers
lock rows in the same order and never deadlock. Newest data wins: a listing row takes a
write's values only when that write saw the listing later than the row did, so a fetch
replayed late (after an outage, from another process) never rolls prices back. On
PostgreSQL (not behind PgBouncer) a fetch's statements, and the search log's batch, go on
the driver's own connection, compiled once (``db/driver_writes.py``): the same rows, the
same errors, a third less CPU than through SQLAlchemy's execution.

The day's ``price_snapshots`` row of a card values every distinct sold listing that the
card's fetches saw that day (every params and query variant, each listing once), so it
does not flip with whichever variant was fetched last, and a late write recomputes the
same row. When the fetch written is the day's newest and the day's sales are exactly its
listings, with the values it wrote, that valuation is the one the request path already
made of the fetch (``FetchRecord.snapshot``; the rule is
:func:`~kuya_store.write_records.own_valuation`): the row takes it without valuing again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kuya_store.db.bulk import (
    LISTING_UPDATE_COLUMNS,
    listing_arrays,
    listing_rows,
    newest_wins,
    postgres_log_searches,
    postgres_persist_fetch,
)
from kuya_store.db.checks import unchecked_read
from kuya_store.db.driver_writes import DriverStatement, column_arrays, driver_transaction
from kuya_store.db.driver_writes import run as run_on_driver
from kuya_store.db.engine import (
    create_engine,
    driver_connection,
    idle_driver_connection,
    is_outage,
    single_statement,
)
from kuya_store.db.fetches import (
    HEAD_FIELDS,
    NEWEST_RESULT_SQL,
    SNAPSHOT_FIELDS,
    SNAPSHOT_UPDATE_COLUMNS,
    day_sales,
    listing_columns,
    newest_head,
    newest_listings,
    newest_result_text,
)
from kuya_store.db.replicas import ReplicaSet
from kuya_store.db.rows import listings_from_rows
from kuya_store.db.tables import (
    ListingRow,
    PriceSnapshotRow,
    SearchResultRow,
    SearchRow,
    metadata,
)
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import Listing, PriceSnapshot, SearchType
from kuya_store.pricing import DefaultValuator, Valuator
from kuya_store.pricing.sold import SOLD_FIELDS, SoldRow
from kuya_store.settings import StoreSettings
from kuya_store.stored import StoredResult
from kuya_store.write_records import (
    SEARCH_COLUMNS,
    FetchRecord,
    SearchRecord,
    listing_ttl,
    own_valuation,
)

__all__ = [
    "LISTING_UPDATE_COLUMNS",
    "Database",
    "FetchRecord",
    "SearchRecord",
    "listing_ttl",
    "snapshot_from_row",
]

_searches = metadata.tables[SearchRow.__tablename__]
_listings = metadata.tables[ListingRow.__tablename__]
_links = metadata.tables[SearchResultRow.__tablename__]
_snapshots = metadata.tables[PriceSnapshotRow.__tablename__]

_T = TypeVar("_T")

_Run = Callable[[Any, dict[str, Any]], Awaitable[Sequence[Any]]]
"""Runs a statement with its parameters by name in the write's transaction; its rows."""

_SNAPSHOT_COLUMNS = (*SNAPSHOT_FIELDS, "search_id", "created_at")
"""The columns a day's snapshot row is written with (:meth:`Database._upsert_snapshot`)."""


def _through_sqlalchemy(conn: AsyncConnection) -> _Run:
    async def on_sqlalchemy(statement: Any, parameters: dict[str, Any]) -> Sequence[Any]:
        result = await conn.execute(statement, parameters)
        return result.all() if result.returns_rows else ()

    return on_sqlalchemy


def snapshot_from_row(row: Row[Any]) -> PriceSnapshot:
    """A stored snapshot; the column types already give exact money and aware dates."""
    return PriceSnapshot.model_construct(**{name: getattr(row, name) for name in SNAPSHOT_FIELDS})


class Database:
    """Reads and writes of the persistent tier over one ``AsyncEngine``."""

    def __init__(
        self, settings: StoreSettings, metrics: Metrics, valuator: Valuator | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.valuator = valuator or DefaultValuator()
        self.engine: AsyncEngine = create_engine(settings)
        self.dialect = self.engine.dialect.name
        self.replicas = ReplicaSet(
            settings, metrics, self.engine, lambda url: create_engine(settings, url)
        )
        self._slow_ms = settings.slow_query_threshold.total_seconds() * 1000
        for engine in (self.engine, *(r.engine for r in self.replicas.replicas)):
            self._time_queries(engine)
        # Built once: executed with fresh parameters for every fetch.
        listings = self._insert(_listings)
        self._upsert_listings_stmt = listings.on_conflict_do_update(
            index_elements=[_listings.c.item_id], set_=newest_wins(listings, _listings)
        ).returning(_listings.c.id, _listings.c.item_id, sort_by_parameter_order=True)
        self._persist_fetch_stmt = postgres_persist_fetch(
            _searches, _listings, _links, SEARCH_COLUMNS
        )
        # A record replayed (from the journal, or after a commit whose answer was lost)
        # meets the unique key and is skipped: RETURNING names only the rows written.
        self._log_stmt = (
            self._insert(_searches)
            .on_conflict_do_nothing(index_elements=[_searches.c.record_key, _searches.c.created_at])
            .returning(_searches.c.id)
        )
        self._listing_columns = listing_columns(self.dialect == "postgresql")
        # Only a valuation known to be a function of the set of sales (not of their
        # order, which differs between the fetch and the day's rows) may stand for the
        # day's: the default one is. It reads a sale's priced fields only, so the day's
        # read gives just those, as rows; another valuator gets whole listings.
        self._default = self.valuator if type(self.valuator) is DefaultValuator else None
        self._set_valued = self._default is not None
        self._day_sales_stmt = (
            day_sales(self.dialect == "postgresql", SOLD_FIELDS, ordered=False)
            if self._set_valued
            else day_sales(self.dialect == "postgresql")
        )
        snapshots = self._insert(_snapshots)
        self._upsert_snapshot_stmt = snapshots.on_conflict_do_update(
            index_elements=[_snapshots.c.card_identifier, _snapshots.c.snapshot_date],
            set_={name: snapshots.excluded[name] for name in SNAPSHOT_UPDATE_COLUMNS},
        )
        # On asyncpg a fetch's statements and the search log go on the driver's connection
        # (compiled on first use, by the dialect the first connection set up).
        self._driver_writes = (
            self.dialect == "postgresql" and self.engine.dialect.driver == "asyncpg"
        )
        self._driver_statements: dict[Any, DriverStatement] | None = None
        self._log_batch_stmt = postgres_log_searches(_searches, SEARCH_COLUMNS)

    def _time_queries(self, engine: AsyncEngine) -> None:
        def before(conn: Connection, *_: Any) -> None:
            conn.info.setdefault("kuya_query_start", []).append(time.perf_counter())

        def after(conn: Connection, *_: Any) -> None:
            self._observe_query(conn.info["kuya_query_start"].pop())

        event.listen(engine.sync_engine, "before_cursor_execute", before)
        event.listen(engine.sync_engine, "after_cursor_execute", after)

    def _observe_query(self, started: float) -> None:
        """Time a statement that began at ``started`` (``perf_counter``), as ``db_query``."""
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.metrics.observe("db_query", elapsed_ms)
        if elapsed_ms >= self._slow_ms:
            self.metrics.incr("db_slow_queries")

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    async def ping(self) -> bool:
        """True when a trivial query succeeds; never raises."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self.replicas.close()
        await self.engine.dispose()

    async def read(
        self,
        work: Callable[[AsyncConnection], Awaitable[_T]],
        confirm: Callable[[_T], bool] | None = None,
    ) -> _T:
        """Run a read on a replica within the lag bound, else on the primary.

        Args:
            confirm: whether a replica's answer stands; one that does not (a miss that
                would cost a paid fetch, say) is asked of the primary, which may have it.
        """
        replica = await self.replicas.pick() if self.replicas.replicas else None
        if replica is not None:
            try:
                async with replica.engine.connect() as conn:
                    result = await work(conn)
            except Exception as exc:
                # A replica that cannot answer is skipped for a while; a query at fault
                # fails on the primary as well, with the primary's own error.
                if is_outage(exc) or _conflicts_with_recovery(exc):
                    self.replicas.failed(replica)
            else:
                self.replicas.answered(replica)
                if confirm is None or confirm(result):
                    return result
                self.metrics.incr("replica_confirmed_on_primary")
        # A connection a read just finished with is taken unchecked within the pool's
        # check window; the read runs once more if that one was dead (db/checks.py).
        return await unchecked_read(self._on_primary, work)

    async def _on_primary(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        async with self.engine.connect() as conn:
            return await work(conn)

    # -- writes -------------------------------------------------------------------------

    async def log_searches(self, records: Sequence[SearchRecord]) -> int:
        """Insert a batch of search-log rows in one statement; returns how many were new."""
        if not records:
            return 0
        rows = [r.row() for r in records]
        async with self.engine.connect() as conn:
            driver = self._idle_driver(conn)
            if driver is None:
                async with conn.begin():
                    return len((await conn.execute(self._log_stmt, rows)).all())
            # One statement of one array per column, whatever the batch's size.
            arrays = column_arrays(_searches, rows, SEARCH_COLUMNS, conn.dialect)
            async with driver_transaction(conn, driver):
                run = self._through_driver(conn, driver)
                return len(await run(self._log_batch_stmt, arrays))

    async def persist_fetch(self, record: FetchRecord) -> int | None:
        """Write a fetched result in one transaction; returns the new ``searches.id``.

        ``None`` when the record was written before (a replay): nothing is written again.
        On PostgreSQL (not behind a transaction pooler) the statements go on the driver's
        own connection, in its own transaction (``db/driver_writes.py``).
        """
        async with self.engine.connect() as conn:
            driver = self._idle_driver(conn)
            if driver is None:
                async with conn.begin():
                    return await self._persist_fetch(conn, _through_sqlalchemy(conn), record)
            async with driver_transaction(conn, driver):
                return await self._persist_fetch(conn, self._through_driver(conn, driver), record)

    def _idle_driver(self, conn: AsyncConnection) -> Any:
        """The driver's connection under ``conn`` for a write, or ``None``: SQLAlchemy's path.

        ``None`` on SQLite, and behind PgBouncer (in transaction mode a statement's parse
        and execution must share SQLAlchemy's transaction).
        """
        return idle_driver_connection(conn) if self._driver_writes else None

    async def _persist_fetch(
        self, conn: AsyncConnection, run: _Run, record: FetchRecord
    ) -> int | None:
        search_id = await self._write_fetch(conn, run, record)
        if search_id is not None and record.search.search_type is SearchType.SOLD:
            await self._revalue_day(run, record, search_id)
        return search_id

    def _through_driver(self, conn: AsyncConnection, driver: Any) -> _Run:
        """Runs this database's write statements on ``driver``, compiled once for it."""
        statements = self._driver_statements
        if statements is None:  # compiled by the dialect as the first connection set it up
            dialect = conn.dialect
            statements = self._driver_statements = {
                self._persist_fetch_stmt: DriverStatement(self._persist_fetch_stmt, dialect),
                self._day_sales_stmt: DriverStatement(self._day_sales_stmt, dialect),
                self._upsert_snapshot_stmt: DriverStatement(
                    self._upsert_snapshot_stmt, dialect, _SNAPSHOT_COLUMNS
                ),
                self._log_batch_stmt: DriverStatement(self._log_batch_stmt, dialect),
            }
        dialect, observe = conn.dialect, self._observe_query

        async def on_driver(statement: Any, parameters: dict[str, Any]) -> Sequence[Any]:
            return await run_on_driver(driver, dialect, statements[statement], parameters, observe)

        return on_driver

    async def _revalue_day(self, run: _Run, record: FetchRecord, search_id: int) -> None:
        """Recompute the card's snapshot of the fetch's UTC day from every sale seen that day.

        When the day's sales are exactly this fetch's listings, with the values it wrote,
        and it is the day's newest fetch, the day's valuation is the fetch's own
        (``record.snapshot``, see :func:`~kuya_store.write_records.own_valuation`): it is
        written as it is.
        """
        card, moment = record.search.card_identifier, record.search.created_at
        start = datetime.combine(moment.astimezone(UTC).date(), datetime.min.time(), UTC)
        own = own_valuation(record, start) if self._set_valued else None
        parameters = {
            "card": card,
            "start": start,
            "end": start + timedelta(days=1),
            "search_id": search_id,
            "trusted": own is not None,
        }
        if self.dialect == "postgresql":  # the statement upserts the fetch's own valuation
            values = dict.fromkeys(SNAPSHOT_FIELDS) if own is None else _snapshot_values(own)
            parameters.update({f"snapshot_{k}": v for k, v in values.items()}, created_at=moment)
        rows = await run(self._day_sales_stmt, parameters)
        if not rows:  # pragma: no cover - the fetch being written is one of them
            return
        newest_id, newest_at, ours = rows[0][:3]
        if own is not None and ours:
            if self.dialect != "postgresql":
                await self._upsert_snapshot(run, own, newest_id, newest_at)
            return
        day, empty = start.date(), rows[0][3] is None
        if self._default is not None:
            sales = [] if empty else [SoldRow._make(r[3:]) for r in rows]
            snapshot = self._default.value_sold(card, sales, snapshot_date=day, now=newest_at)
        else:
            listings = [] if empty else listings_from_rows(r[3:] for r in rows)
            snapshot = self.valuator.value(card, listings, snapshot_date=day, now=newest_at)
        await self._upsert_snapshot(run, snapshot, newest_id, newest_at)

    async def _write_fetch(
        self, conn: AsyncConnection, run: _Run, record: FetchRecord
    ) -> int | None:
        """The fetch's search row, listings and links; ``None`` for a replay (nothing written).

        On PostgreSQL one statement (``db/bulk.py``); on SQLite the search row, then the
        listings executed with many parameter sets, then the links.
        """
        moment, ttl = record.search.created_at, record.listing_ttl
        listings = record.result.listings
        if self.dialect == "postgresql":
            parameters = {f"search_{name}": value for name, value in record.search.row().items()}
            parameters.update(listing_arrays(listings), moment=moment, ttl=ttl)
            written = await run(self._persist_fetch_stmt, parameters)
            return None if not written else int(written[0][0])
        search_id: int | None = (
            await conn.execute(self._log_stmt.values(record.search.row()))
        ).scalar_one_or_none()
        if search_id is None or not listings:
            return search_id
        # "insertmanyvalues" turns this into multi-row INSERTs, paged under the driver's
        # bind-parameter limit.
        ids = {
            item_id: listing_id
            for listing_id, item_id in await conn.execute(
                self._upsert_listings_stmt, listing_rows(listings, moment, ttl, search_id)
            )
        }
        await conn.execute(
            sa.insert(_links),
            [
                {"search_id": search_id, "position": i, "listing_id": ids[x.item_id]}
                for i, x in enumerate(listings)
            ],
        )
        return search_id

    async def _upsert_snapshot(
        self,
        run: _Run,
        snapshot: PriceSnapshot,
        search_id: int | None,
        created_at: datetime,
    ) -> None:
        values = _snapshot_values(snapshot)
        values["search_id"] = search_id
        values["created_at"] = created_at  # the store's clock, as for every other row
        await run(self._upsert_snapshot_stmt, values)

    async def detach_results(self, identity: ResultIdentity, before: datetime | None = None) -> int:
        """Stop stored fetches of this card and search type from answering (``invalidate``).

        The rows stay (history is never lost); only their ``result_key`` is cleared: for
        every fetch, or with ``before``, for those fetched at or before that moment.
        """
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(_searches)
                .where(
                    _searches.c.card_identifier == identity.card_identifier,
                    _searches.c.search_type == identity.search_type.value,
                    _searches.c.result_key.is_not(None),
                    *(() if before is None else (_searches.c.created_at <= before,)),
                )
                .values(result_key=None)
            )
        return int(result.rowcount or 0)

    # -- reads --------------------------------------------------------------------------

    async def newest_result(self, identity: ResultIdentity, since: datetime) -> StoredResult | None:
        """The newest fetch stored for this identity at or after ``since``, if any.

        A replica's miss is asked of the primary: a miss costs a paid fetch.
        """
        return await self.read(
            lambda conn: self._newest_result(conn, identity, since),
            confirm=lambda found: found is not None,
        )

    async def _newest_result(
        self, conn: AsyncConnection, identity: ResultIdentity, since: datetime
    ) -> StoredResult | None:
        # Asked before every fetch: it needs no transaction. A connection that ran nothing
        # has none open, so the driver takes the statement as it is; else autocommit.
        key = identity.result_key
        if self.dialect == "postgresql":
            driver = idle_driver_connection(conn)
            if driver is None:
                conn = await single_statement(conn)
                driver = await driver_connection(conn)
            if driver is not None:  # timed as SQLAlchemy's statements are
                started = time.perf_counter()
                try:
                    row = await driver.fetchrow(NEWEST_RESULT_SQL, key, since)
                finally:
                    self._observe_query(started)
            else:  # in a transaction (PgBouncer): the same statement, untyped by SQLAlchemy
                found = await conn.execute(newest_result_text, {"key": key, "since": since})
                row = found.first()
            if row is None:
                return None
            head, columns = row[: len(HEAD_FIELDS)], row[len(HEAD_FIELDS) :]
            listings = [] if columns[0] is None else listings_from_rows(zip(*columns, strict=True))
        else:
            head = (await conn.execute(newest_head, {"key": key, "since": since})).first()
            if head is None:
                return None
            rows = await conn.execute(newest_listings, {"search_id": head[0]})
            listings = listings_from_rows(rows)
        _, query, created_at, pages_scraped, params, complete = head
        # The day's snapshot values the whole card; this result's valuation is its own
        # listings', computed by the caller.
        return StoredResult(
            query=query,
            card_identifier=identity.card_identifier,
            search_type=identity.search_type,
            params=params or {},
            listings=listings,
            fetched_at=created_at,
            pages_scraped=pages_scraped,
            complete=complete,
        )

    async def get_listing(self, item_id: str) -> Listing | None:
        async def work(conn: AsyncConnection) -> Listing | None:
            query = sa.select(*self._listing_columns).where(_listings.c.item_id == item_id)
            found = listings_from_rows(await conn.execute(query))
            return found[0] if found else None

        return await self.read(work, confirm=lambda found: found is not None)

    async def listings_due_for_refresh(self, now: datetime, limit: int) -> list[Listing]:
        async def work(conn: AsyncConnection) -> list[Listing]:
            rows = await conn.execute(
                sa.select(*self._listing_columns)
                .where(_listings.c.ttl <= now)
                .order_by(_listings.c.ttl, _listings.c.id)
                .limit(limit)
            )
            return listings_from_rows(rows)

        return await self.read(work)

    async def size_bytes(self) -> int:
        """How much space the database takes (PostgreSQL: the database; SQLite: the file)."""
        async with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                query = "SELECT pg_database_size(current_database())"
                return int((await conn.execute(sa.text(query))).scalar_one())
            pages = (await conn.execute(sa.text("PRAGMA page_count"))).scalar_one()
            size = (await conn.execute(sa.text("PRAGMA page_size"))).scalar_one()
            return int(pages) * int(size)

    def pool_stats(self) -> dict[str, Any]:
        pool = self.engine.pool
        stats: dict[str, Any] = {"class": type(pool).__name__}
        for name in ("size", "checkedin", "checkedout", "overflow"):
            method = getattr(pool, name, None)
            if callable(method):
                stats[name] = method()
        return stats


def _snapshot_values(snapshot: PriceSnapshot) -> dict[str, Any]:
    """A snapshot's values by column (its fields hold them as the columns take them)."""
    return snapshot.model_dump(mode="python")


def _conflicts_with_recovery(error: BaseException) -> bool:
    """A standby cancelled the query so replay could go on (SQLSTATE 40001): ask elsewhere."""
    orig = getattr(error, "orig", None)
    return getattr(orig, "sqlstate", None) == "40001"
