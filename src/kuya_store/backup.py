"""``store.backup``: a CSV backup of the price snapshots, its restore, and the partial rollback.

``pg_dump``/``pg_restore`` save and restore a whole PostgreSQL database (``docs/backup.md``).
This module covers the rest of the plan's backup strategy: the "critical data only" copy of
``price_snapshots``, and the "Data Rollback" of everything written after a moment.

The CSV is PostgreSQL's own ``COPY ... CSV HEADER`` format on both backends (SQLite output
is formatted the way PostgreSQL prints each type), so one file restores into either and
diffs cleanly against ``psql``'s. Rows come in ``id`` order and timestamps are in UTC.

The format is written and parsed here rather than with Python's :mod:`csv` module, which
cannot keep two of ``COPY``'s rules: an empty string is quoted (``""``) while NULL is an
empty field, and :mod:`csv` writes and reads both as an empty field; and a field holding
a lone carriage return is quoted, which :mod:`csv` only does for the characters of its
own line terminator.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import IO, Annotated, Any

import sqlalchemy as sa
from pydantic import BeforeValidator, ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from kuya_store.analytics_views import refresh_views
from kuya_store.db.engine import DatabaseFeature
from kuya_store.db.tables import metadata
from kuya_store.errors import InvalidInputError
from kuya_store.models import PriceSnapshot, UTCDateTime, _Frozen

__all__ = ["Backup", "ImportReport", "PurgeReport"]

_snapshots = metadata.tables["price_snapshots"]
_searches = metadata.tables["searches"]
_links = metadata.tables["search_results"]
_listings = metadata.tables["listing_cache"]
COLUMNS = tuple(column.name for column in _snapshots.columns)
_KEY = ("card_identifier", "snapshot_date")
_IGNORED = frozenset({"id", "search_id"})
_CHUNK = 1000
_MAX_REPORTED = 20
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')
# A field is any run of unquoted text and quoted sections ("" inside quotes is one quote).
_FIELD = re.compile(r'(?:[^,"]+|"[^"]*(?:""[^"]*)*")*')
_QUOTED = re.compile(r'"([^"]*(?:""[^"]*)*)"')

Progress = Callable[[int], None]
Source = str | os.PathLike[str] | IO[bytes]


class ImportReport(_Frozen):
    """What ``import_snapshots_csv`` did: ``rows = inserted + updated + unchanged``."""

    rows: int
    inserted: int
    updated: int
    unchanged: int


class PurgeReport(_Frozen):
    """How many rows ``purge_since`` deleted per table, and how many older searches it detached."""

    searches: int
    search_results: int
    snapshots: int
    listings: int = 0
    """``listing_cache`` rows first written or overwritten after the moment."""
    detached: int = 0
    """Searches from before the moment that no longer answer: a listing they returned went."""


class _Counter:
    """Counts the CSV records in a byte stream, reporting every ``_CHUNK`` or so."""

    def __init__(self, progress: Progress | None) -> None:
        # rows starts at -1: the header is a record too.
        self.progress, self.rows, self.reported, self.quoted = progress, -1, 0, False

    def feed(self, data: bytes) -> None:
        # A record ends at a newline outside quotes; every quote flips the state (a doubled
        # one twice), so every other piece between quotes is outside them.
        pieces = data.split(b'"')
        self.rows += sum(piece.count(b"\n") for piece in pieces[int(self.quoted) :: 2])
        self.quoted ^= len(pieces) % 2 == 0
        if self.progress is not None and self.rows - self.reported >= _CHUNK:
            self.reported = self.rows
            self.progress(self.rows)


def _jsonb(value: Any) -> str:
    """JSON text as PostgreSQL prints ``jsonb``: keys by byte length, then bytewise."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        return "{" + ", ".join(f"{_jsonb(key)}: {_jsonb(value[key])}" for key in keys) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_jsonb(item) for item in value) + "]"
    if isinstance(value, float):
        # jsonb keeps numbers as numeric, which never prints an exponent or a negative zero.
        number = Decimal(repr(value))
        return format(abs(number) if number.is_zero() else number, "f")
    return json.dumps(value, ensure_ascii=False)


def _field(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        moment = value.astimezone(UTC).replace(tzinfo=None)
        text = moment.isoformat(sep=" ", timespec="microseconds").rstrip("0").rstrip(".") + "+00"
    elif isinstance(value, date):
        text = value.isoformat()
    elif isinstance(value, dict | list):
        text = _jsonb(value)
    else:
        text = str(value)
    if text == "" or _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def _split(record: str) -> list[str | None] | None:
    """A record's fields (an unquoted empty one is NULL: ``None``); ``None`` if malformed."""
    fields: list[str | None] = []
    position = 0
    while True:
        match = _FIELD.match(record, position)
        assert match is not None  # the pattern also matches the empty string
        raw = match.group()
        if '"' in raw:
            fields.append(_QUOTED.sub(lambda m: m.group(1).replace('""', '"'), raw))
        else:
            fields.append(raw or None)
        position = match.end()
        if position == len(record):
            return fields
        if record[position] != ",":
            return None
        position += 1


def _records(lines: IO[str]) -> Iterator[tuple[int, str]]:
    """``(first line number, text)`` of each record; quoted fields may span lines."""
    pending: list[str] = []
    start = quotes = 0
    for number, line in enumerate(lines, start=1):
        if not pending:
            start = number
        pending.append(line)
        quotes += line.count('"')
        if quotes % 2 == 0:
            yield start, "".join(pending).removesuffix("\n").removesuffix("\r")
            pending, quotes = [], 0
    if pending:
        yield start, "".join(pending)


def _timestamp(value: object) -> object:
    # PostgreSQL prints offsets as "+00", which pydantic does not parse and fromisoformat does.
    if not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a timestamp") from None


def _json_text(value: object) -> object:
    def reject(name: str) -> None:
        raise ValueError(f"{name} is not JSON")  # jsonb has no NaN or Infinity

    try:
        return json.loads(value, parse_constant=reject) if isinstance(value, str) else value
    except ValueError as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None


class _CsvRow(PriceSnapshot):
    """One CSV line: a snapshot with its JSON as text, and when it was recorded."""

    parallel_analysis: Annotated[dict[str, Any] | None, BeforeValidator(_json_text)] = None
    grading_analysis: Annotated[dict[str, Any] | None, BeforeValidator(_json_text)] = None
    created_at: Annotated[UTCDateTime, BeforeValidator(_timestamp)] | None = None


def _validate(values: dict[str, str | None]) -> tuple[dict[str, Any], list[str]]:
    # An empty key field is left out, so the model says "Field required".
    fields = {k: v for k, v in values.items() if v is not None or k not in _KEY}
    try:
        row = _CsvRow.model_validate(fields)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        return {}, [
            f"{'.'.join(str(part) for part in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in errors
        ]
    return row.model_dump(include=set(values) - _IGNORED), []


def _read(src: Source) -> tuple[list[str], list[dict[str, Any]]]:
    """Parse and validate a whole file, or raise naming every bad line (up to a limit)."""
    binary = src if not isinstance(src, str | os.PathLike) else open(src, "rb")  # noqa: SIM115
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
    try:
        records = _records(text)
        columns = _split(next(records, (1, ""))[1]) or [None]
        if None in columns or len(set(columns)) != len(columns):
            raise InvalidInputError("csv", "line 1: expected a header naming each column once")
        names = [str(name) for name in columns]
        if unknown := [name for name in names if name not in COLUMNS]:
            raise InvalidInputError("csv", f"unknown columns: {', '.join(unknown)}")
        if missing := [name for name in _KEY if name not in names]:
            raise InvalidInputError("csv", f"missing columns: {', '.join(missing)}")
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        first_seen: dict[tuple[Any, ...], int] = {}
        for line, record in records:
            fields = _split(record)
            if fields is None or len(fields) != len(names):
                found = "malformed quoting" if fields is None else f"{len(fields)} fields"
                problems.append(f"line {line}: expected {len(names)} fields, found {found}")
                continue
            row, errors = _validate(dict(zip(names, fields, strict=True)))
            key = tuple(row.get(name) for name in _KEY)
            if not errors and key in first_seen:
                errors.append(f"duplicates line {first_seen[key]} (same {' and '.join(_KEY)})")
            if errors:
                problems.append(f"line {line}: {'; '.join(errors)}")
            else:
                first_seen[key] = line
                rows.append(row)
    except UnicodeDecodeError:
        raise InvalidInputError("csv", "is not UTF-8 text") from None
    finally:
        if binary is src:
            text.detach()  # the caller's file stays open
        else:
            text.close()
    if problems:
        more = len(problems) - _MAX_REPORTED
        listed = "\n".join(problems[:_MAX_REPORTED]) + (f"\nand {more} more" if more > 0 else "")
        raise InvalidInputError("csv", f"{len(problems)} bad rows, nothing imported:\n{listed}")
    return names, rows


@contextlib.asynccontextmanager
async def _opened(dest: Source) -> AsyncIterator[IO[bytes]]:
    if not isinstance(dest, str | os.PathLike):
        yield dest
        return
    # Written aside and renamed, so a failed export never leaves a truncated backup behind.
    path = os.fspath(dest)
    partial = f"{path}.partial"
    handle = await asyncio.to_thread(open, partial, "wb")
    try:
        yield handle
        handle.close()
        os.replace(partial, path)
    except BaseException:
        handle.close()
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


class Backup(DatabaseFeature):
    """CSV export and import of ``price_snapshots``, and the partial rollback."""

    _purpose = "backup reads and writes the database"

    async def count_snapshots(self) -> int:
        """How many ``price_snapshots`` rows there are (a total for progress bars)."""
        async with self._connect() as conn:
            return int((await conn.scalar(sa.select(sa.func.count()).select_from(_snapshots))) or 0)

    async def export_snapshots_csv(self, dest: Source, *, progress: Progress | None = None) -> int:
        """Write every price snapshot to ``dest`` as CSV with a header; returns the row count."""
        counter = _Counter(progress)
        # Connected first: a database that does not answer leaves ``dest`` untouched.
        async with self._connect() as conn, _opened(dest) as out, conn.begin():

            async def write(data: bytes) -> None:
                await asyncio.to_thread(out.write, data)
                counter.feed(data)

            if conn.dialect.name == "postgresql":
                rows = await self._copy_out(conn, write)
            else:
                rows = await self._format_out(conn, write)
        if progress is not None:
            progress(rows)
        return rows

    @staticmethod
    async def _copy_out(conn: AsyncConnection, write: Callable[[bytes], Any]) -> int:
        # timestamptz prints in the session's zone; the file is always UTC.
        await conn.execute(sa.text("SET LOCAL TIME ZONE 'UTC'"))
        await conn.execute(sa.text("SET LOCAL DateStyle = 'ISO'"))
        driver: Any = (await conn.get_raw_connection()).driver_connection
        query = f"SELECT {', '.join(COLUMNS)} FROM price_snapshots ORDER BY id"
        status: str = await driver.copy_from_query(query, output=write, format="csv", header=True)
        return int(status.split()[-1])

    @staticmethod
    async def _format_out(conn: AsyncConnection, write: Callable[[bytes], Any]) -> int:
        await write((",".join(COLUMNS) + "\n").encode())
        rows = 0
        # Selected through the table's column types: Money turns SQLite's cents into Decimal.
        stmt = sa.select(_snapshots).order_by(_snapshots.c.id)
        result = await conn.stream(stmt.execution_options(yield_per=_CHUNK))
        async for chunk in result.partitions():
            lines = "".join(",".join(_field(value) for value in row) + "\n" for row in chunk)
            await write(lines.encode())
            rows += len(chunk)
        return rows

    async def import_snapshots_csv(
        self, src: Source, *, progress: Progress | None = None
    ) -> ImportReport:
        """Validate a snapshot CSV whole, then upsert it in one transaction (all or nothing)."""
        engine = self._require()
        names, rows = await asyncio.to_thread(_read, src)
        if "created_at" not in names:
            now = self._clock()
            rows = [{**row, "created_at": now} for row in rows]
        postgres = engine.dialect.name == "postgresql"
        insert = (postgresql.insert if postgres else sqlite.insert)(_snapshots)
        changing = [n for n in names if n not in _IGNORED and n not in _KEY]
        if changing:
            overwrite = {n: insert.excluded[n] for n in changing}
            if "created_at" not in names:
                # A row whose values change records when: purge_since relies on it.
                overwrite["created_at"] = insert.excluded["created_at"]
            upsert = insert.on_conflict_do_update(
                index_elements=[_snapshots.c[n] for n in _KEY],
                set_=overwrite,
                # Rows already equal to the file's are left alone: no write, no dead tuple.
                where=sa.or_(
                    *(_snapshots.c[n].is_distinct_from(insert.excluded[n]) for n in changing)
                ),
            )
        else:
            upsert = insert.on_conflict_do_nothing(index_elements=[_snapshots.c[n] for n in _KEY])
        returning = upsert.returning(*(_snapshots.c[n] for n in _KEY))
        # New rows first, so each row is known as inserted or not; the partitioned table on
        # PostgreSQL has no xmax to tell.
        fresh = insert.on_conflict_do_nothing(
            index_elements=[_snapshots.c[n] for n in _KEY]
        ).returning(*(_snapshots.c[n] for n in _KEY))
        inserted = written = 0
        async with self._begin() as conn:
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                new = {tuple(r) for r in (await conn.execute(fresh, chunk)).all()}
                inserted += len(new)
                rest = [row for row in chunk if tuple(row[n] for n in _KEY) not in new]
                if rest and changing:
                    written += len((await conn.execute(returning, rest)).all())
                if progress is not None:
                    progress(min(start + _CHUNK, len(rows)))
            written += inserted
        return ImportReport(
            rows=len(rows),
            inserted=inserted,
            updated=written - inserted,
            unchanged=len(rows) - written,
        )

    async def purge_since(self, moment: datetime) -> PurgeReport:
        """Undo everything written after ``moment``, in one transaction (the partial rollback).

        Goes: the searches logged after it with their result links; the snapshots and
        listings written after it, whether first written or overwritten then, since the
        values they held before are not kept (restore snapshots from a CSV export). A search
        from before that returned a listing that went is detached, as ``invalidate`` does:
        it stays in the log but no longer answers, because it could only answer in part.
        """
        if not isinstance(moment, datetime):
            raise InvalidInputError("moment", "must be a datetime")
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidInputError(
                "moment", "must be timezone-aware (naive datetimes are ambiguous)"
            )
        later = sa.select(_searches.c.id).where(_searches.c.created_at > moment)
        # A row names the search that last wrote it (an upsert moves search_id on), and says
        # when it was written: either reveals an overwrite after the moment.
        snapshot_written = sa.or_(
            _snapshots.c.created_at > moment, _snapshots.c.search_id.in_(later)
        )
        listing_written = sa.or_(
            _listings.c.first_seen > moment,
            _listings.c.last_updated > moment,
            _listings.c.search_id.in_(later),
        )
        going = sa.select(_listings.c.id).where(listing_written)
        async with self._begin() as conn:
            # In this order: the searches go last, so search_id still says who wrote what.
            snapshots = await conn.execute(sa.delete(_snapshots).where(snapshot_written))
            detached = await conn.execute(
                sa.update(_searches)
                .where(
                    _searches.c.id.not_in(later),
                    _searches.c.result_key.is_not(None),
                    _searches.c.id.in_(
                        sa.select(_links.c.search_id).where(_links.c.listing_id.in_(going))
                    ),
                )
                .values(result_key=None)
            )
            # Deleted explicitly rather than by the cascades, so the counts are what went.
            links = await conn.execute(
                sa.delete(_links).where(
                    sa.or_(_links.c.search_id.in_(later), _links.c.listing_id.in_(going))
                )
            )
            listings = await conn.execute(sa.delete(_listings).where(listing_written))
            searches = await conn.execute(sa.delete(_searches).where(_searches.c.id.in_(later)))
            # The analytics views counted what just went: they take the rollback with it.
            await refresh_views(conn, self._clock())
        return PurgeReport(
            searches=searches.rowcount,
            search_results=links.rowcount,
            snapshots=snapshots.rowcount,
            listings=listings.rowcount,
            detached=detached.rowcount,
        )
