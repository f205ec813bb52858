"""CSV backup and restore of price snapshots, the partial rollback, and pg_dump/pg_restore."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import kuya_store as ks
from kuya_store import migrations
from kuya_store.backup import COLUMNS, Backup, ImportReport, PurgeReport
from kuya_store.db.engine import create_engine
from kuya_store.db.tables import metadata
from kuya_store.demo import FakeMarketplace

SNAPSHOTS = metadata.tables["price_snapshots"]
SEARCHES = metadata.tables["searches"]
LISTINGS = metadata.tables["listing_cache"]
LINKS = metadata.tables["search_results"]
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HEADER = ",".join(COLUMNS)

MakeDatabase = Callable[..., Awaitable[str]]

SAMPLE: list[dict[str, Any]] = [
    {
        "id": 1,
        "card_identifier": "1986 fleer michael jordan 57",
        "search_id": 1,
        "snapshot_date": date(2026, 11, 24),
        "fmv_low": Decimal("90.00"),
        "fmv_high": Decimal("110.50"),
        "market_value": Decimal("100.00"),
        "quick_sale": Decimal("85.10"),
        "patient_sale": Decimal("115.00"),
        "sample_size": 12,
        "min_price": Decimal("0.01"),
        "max_price": Decimal("250.00"),
        "avg_price": Decimal("101.37"),
        "volume_confidence": "high",
        # Keys of different byte lengths, and "é" (2 bytes) against "ab" and "b".
        "parallel_analysis": {
            "silver prizm": {"count": 3, "median": 101.5, "sold": [1, 2.25, None, True]},
            "b": False,
            "é": "accent",
            "ab": [],
            "base": {"zz": {}, "a": {"deep": [{"y": 1, "x": 2}]}},
        },
        "grading_analysis": {"psa 10": {"n": 2, "premium": 3.2}, "raw": {}},
        "created_at": T0,
    },
    {
        "id": 2,
        "card_identifier": 'wemby, "the alien" #1\nrookie\r\nsilver',
        "search_id": None,
        "snapshot_date": date(2026, 11, 25),
        "market_value": Decimal("0.00"),
        "sample_size": None,
        "volume_confidence": "",
        "parallel_analysis": None,
        "grading_analysis": {
            "note": 'quote " comma , newline \n tab \t unicode é ✓ backslash \\',
            "tiny": 1e-07,
            "huge": 1e20,
            "zero": -0.0,
            "big": 12345678901234567890,
        },
        "created_at": T0 + timedelta(seconds=0.5),
    },
    {
        "id": 3,
        "card_identifier": "ünïcode 卡 2023 topps chrome 1",
        "search_id": None,
        "snapshot_date": date(2026, 1, 1),
        "fmv_low": Decimal("99999999.99"),
        "sample_size": 0,
        "volume_confidence": "low",
        "created_at": datetime(
            2026, 11, 25, 17, 30, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))
        ),
    },
    {
        "id": 5,
        "card_identifier": "plain",
        "search_id": None,
        "snapshot_date": date(2025, 2, 28),
        "created_at": None,
    },
]


def _contents(path: Path) -> bytes:
    return path.read_bytes()


def _rows(sample: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{name: row.get(name) for name in COLUMNS} for row in sample]


@pytest.fixture
def clock() -> ks.ManualClock:
    return ks.ManualClock(T0 + timedelta(hours=1))


@pytest.fixture
async def make_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeDatabase]:
    """Extra fresh databases for a test: ``await make_database("sqlite" | "postgresql")``."""
    import asyncpg

    created: list[tuple[str, str]] = []

    async def admin(base: str, statement: str) -> None:
        conn = await asyncpg.connect(
            make_url(base).set(drivername="postgresql").render_as_string(False)
        )
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def make(kind: str, *, migrate: bool = True) -> str:
        name = f"kb_{uuid.uuid4().hex[:12]}"
        if kind == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}"
        else:
            base: str = request.getfixturevalue("postgres_base_url")
            await admin(base, f'CREATE DATABASE "{name}"')
            created.append((base, name))
            url = make_url(base).set(database=name).render_as_string(hide_password=False)
        if migrate:
            await migrations.upgrade_async(url)
        return url

    yield make
    for base, name in created:
        await admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _backup_of(url: str, clock: ks.ManualClock) -> tuple[Backup, Any]:
    engine = create_engine(ks.StoreSettings(database_url=url))
    return Backup(engine, clock), engine


async def _seed(url: str, sample: list[dict[str, Any]] = SAMPLE) -> None:
    engine = create_engine(ks.StoreSettings(database_url=url))
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(SEARCHES),
            [{"id": 1, "query": "mj", "search_type": "sold", "created_at": T0}],
        )
        await conn.execute(sa.insert(SNAPSHOTS), _rows(sample))
        if engine.dialect.name == "postgresql":
            for table in ("searches", "price_snapshots"):
                await conn.execute(
                    sa.text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                )
    await engine.dispose()


async def _table(url: str, *, with_ids: bool = False) -> list[dict[str, Any]]:
    engine = create_engine(ks.StoreSettings(database_url=url))
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(SNAPSHOTS).order_by(SNAPSHOTS.c.card_identifier, SNAPSHOTS.c.snapshot_date)
        )
        skip = () if with_ids else ("id", "search_id")
        result = [{k: v for k, v in row._mapping.items() if k not in skip} for row in rows]
    await engine.dispose()
    return result


async def _export(url: str, clock: ks.ManualClock, dest: Path) -> bytes:
    backup, engine = await _backup_of(url, clock)
    try:
        assert await backup.export_snapshots_csv(dest) == await backup.count_snapshots()
    finally:
        await engine.dispose()
    return _contents(dest)


async def _import(url: str, clock: ks.ManualClock, src: Any) -> ImportReport:
    backup, engine = await _backup_of(url, clock)
    try:
        return await backup.import_snapshots_csv(src)
    finally:
        await engine.dispose()


def _pg_tool(name: str) -> str:
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    found = str(versions[-1]) if versions else shutil.which(name)
    assert found, f"{name} not found"
    return found


def _run_pg(tool: str, url: str, *args: str, timezone_name: str = "UTC") -> bytes:
    parts = make_url(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=parts.password or "", PGTZ=timezone_name, PGCLIENTENCODING="UTF8")
    command = [_pg_tool(tool), "-h", parts.host or "127.0.0.1", "-p", str(parts.port or 5432)]
    command += ["-U", parts.username or "", *args]
    done = subprocess.run(command, env=env, capture_output=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


# The table is partitioned on PostgreSQL: COPY reads it through a query.
_ALL_SNAPSHOTS = "(SELECT * FROM price_snapshots ORDER BY id)"


def _psql_copy(url: str, source: str = _ALL_SNAPSHOTS, timezone_name: str = "UTC") -> bytes:
    database = make_url(url).database or ""
    copy = f"COPY {source} TO STDOUT CSV HEADER"
    return _run_pg("psql", url, "-X", "-q", "-d", database, "-c", copy, timezone_name=timezone_name)


# -- export ----------------------------------------------------------------------------


async def test_postgres_export_equals_psql_copy(
    postgres_url: str, clock: ks.ManualClock, tmp_path: Path, make_database: MakeDatabase
) -> None:
    await migrations.upgrade_async(postgres_url)
    await _seed(postgres_url)
    exported = await _export(postgres_url, clock, tmp_path / "snapshots.csv")
    assert exported == _psql_copy(postgres_url)
    assert exported.startswith(HEADER.encode() + b"\n")
    assert b'"wemby, ""the alien"" #1\nrookie\r\nsilver"' in exported
    assert b",2026-11-25 12:00:00.5+00\n" in exported
    assert b",2026-11-25 12:00:00.123456+00\n" in exported
    # Rows come in id order even once an update has moved a row physically.
    engine = create_engine(ks.StoreSettings(database_url=postgres_url))
    async with engine.begin() as conn:
        await conn.execute(sa.update(SNAPSHOTS).where(SNAPSHOTS.c.id == 1).values(sample_size=13))
    await engine.dispose()
    exported = await _export(postgres_url, clock, tmp_path / "again.csv")
    assert exported == _psql_copy(postgres_url, "(SELECT * FROM price_snapshots ORDER BY id)")
    # psql's own file imports, even when written in another time zone.
    elsewhere = tmp_path / "psql-new-york.csv"
    elsewhere.write_bytes(_psql_copy(postgres_url, timezone_name="America/New_York"))
    assert b"-05\n" in elsewhere.read_bytes()
    target = await make_database("sqlite")
    assert (await _import(target, clock, elsewhere)).inserted == len(SAMPLE)
    assert await _table(target) == await _table(postgres_url)


async def test_sqlite_export_equals_postgres_export(
    make_database: MakeDatabase, clock: ks.ManualClock, tmp_path: Path
) -> None:
    lite, pg = await make_database("sqlite"), await make_database("postgresql")
    await _seed(lite)
    await _seed(pg)
    from_sqlite = await _export(lite, clock, tmp_path / "sqlite.csv")
    from_postgres = await _export(pg, clock, tmp_path / "postgres.csv")
    assert from_sqlite.decode() == from_postgres.decode()
    assert len(from_sqlite.splitlines()) > len(SAMPLE)


async def test_a_lone_carriage_return_and_an_empty_string_follow_copy_not_python_csv(
    make_database: MakeDatabase, clock: ks.ManualClock, tmp_path: Path
) -> None:
    # The two places where Python's csv module differs from COPY ... CSV: it leaves a
    # lone "\r" unquoted, and it writes (and reads) an empty string and NULL alike.
    edge = [
        {"id": 1, "card_identifier": "lone\rreturn", "snapshot_date": date(2026, 1, 1)},
        {"id": 2, "card_identifier": "empty", "snapshot_date": date(2026, 1, 1)},
        {"id": 3, "card_identifier": "null", "snapshot_date": date(2026, 1, 1)},
    ]
    edge[0]["volume_confidence"] = edge[1]["volume_confidence"] = ""
    lite, pg = await make_database("sqlite"), await make_database("postgresql")
    await _seed(lite, edge)
    await _seed(pg, edge)
    exported = await _export(lite, clock, tmp_path / "edge.csv")
    assert exported == _psql_copy(pg)
    assert b'\n1,"lone\rreturn",' in exported and b',"",' in exported
    (tmp_path / "psql.csv").write_bytes(_psql_copy(pg))
    for target, source in (
        (await make_database("postgresql"), tmp_path / "edge.csv"),
        (await make_database("sqlite"), tmp_path / "psql.csv"),
    ):
        await _import(target, clock, source)
        confidence = {r["card_identifier"]: r["volume_confidence"] for r in await _table(target)}
        assert confidence == {"lone\rreturn": "", "empty": "", "null": None}


async def test_export_to_a_binary_file_reports_progress(
    migrated_url: str, clock: ks.ManualClock, tmp_path: Path
) -> None:
    rows = [
        {"card_identifier": f"card {i}", "snapshot_date": date(2026, 1, 1), "created_at": T0}
        for i in range(2500)
    ]
    engine = create_engine(ks.StoreSettings(database_url=migrated_url))
    async with engine.begin() as conn:
        await conn.execute(sa.insert(SNAPSHOTS), rows)
    backup = Backup(engine, clock)
    seen: list[int] = []
    try:
        with (tmp_path / "out.csv").open("wb") as out:
            assert await backup.export_snapshots_csv(out, progress=seen.append) == 2500
        assert seen == sorted(seen) and seen[-1] == 2500 and len(seen) >= 2
        target = Backup(engine, clock)
        with (tmp_path / "out.csv").open("rb") as src:
            imported: list[int] = []
            report = await target.import_snapshots_csv(src, progress=imported.append)
            assert not src.closed
        assert report == ImportReport(rows=2500, inserted=0, updated=0, unchanged=2500)
        assert imported == [1000, 2000, 2500]
    finally:
        await engine.dispose()
    assert len(_contents(tmp_path / "out.csv").splitlines()) == 2501
    assert [name for name in os.listdir(tmp_path) if "out.csv" in name] == ["out.csv"]


# -- import ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("sqlite", "sqlite"),
        ("postgresql", "postgresql"),
        ("sqlite", "postgresql"),
        ("postgresql", "sqlite"),
    ],
)
async def test_export_then_import_restores_identical_rows(
    source: str, target: str, make_database: MakeDatabase, clock: ks.ManualClock, tmp_path: Path
) -> None:
    origin, restored = await make_database(source), await make_database(target)
    await _seed(origin)
    await _export(origin, clock, tmp_path / "backup.csv")
    report = await _import(restored, clock, str(tmp_path / "backup.csv"))
    assert report == ImportReport(rows=len(SAMPLE), inserted=len(SAMPLE), updated=0, unchanged=0)
    assert await _table(restored) == await _table(origin)
    # Links to searches are not part of a snapshot backup.
    assert all(row["search_id"] is None for row in await _table(restored, with_ids=True))
    # And what the restored database exports matches the origin row for row.
    await _export(restored, clock, tmp_path / "again.csv")
    again = await _import(origin, clock, tmp_path / "again.csv")
    # SQLite compares JSON as text: the two rows seeded with keys in another order than
    # jsonb's are rewritten once. PostgreSQL compares jsonb values.
    changed = 0 if source == "postgresql" else 2
    assert again == ImportReport(rows=4, inserted=0, updated=changed, unchanged=4 - changed)
    assert await _table(origin) == await _table(restored)


async def test_import_is_idempotent(
    migrated_url: str, make_database: MakeDatabase, clock: ks.ManualClock, tmp_path: Path
) -> None:
    origin = await make_database("sqlite")
    await _seed(origin)
    await _export(origin, clock, tmp_path / "backup.csv")
    first = await _import(migrated_url, clock, tmp_path / "backup.csv")
    table = await _table(migrated_url, with_ids=True)
    second = await _import(migrated_url, clock, tmp_path / "backup.csv")
    assert first == ImportReport(rows=4, inserted=4, updated=0, unchanged=0)
    assert second == ImportReport(rows=4, inserted=0, updated=0, unchanged=4)
    assert await _table(migrated_url, with_ids=True) == table
    # A changed row is updated in place (same id), the others are left alone.
    engine = create_engine(ks.StoreSettings(database_url=migrated_url))
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(SNAPSHOTS).where(SNAPSHOTS.c.card_identifier == "plain").values(sample_size=7)
        )
    await engine.dispose()
    third = await _import(migrated_url, clock, tmp_path / "backup.csv")
    assert third == ImportReport(rows=4, inserted=0, updated=1, unchanged=3)
    assert await _table(migrated_url, with_ids=True) == table


async def test_import_without_optional_columns_keeps_the_rest(
    migrated_url: str, clock: ks.ManualClock, tmp_path: Path
) -> None:
    await _seed(migrated_url)
    before = {row["card_identifier"]: row for row in await _table(migrated_url)}
    csv = tmp_path / "partial.csv"
    csv.write_text(
        "snapshot_date,card_identifier,market_value\n"
        "2026-11-24,1986 fleer michael jordan 57,120.5\n"
        "2026-12-01,new card,3\n",
        encoding="utf-8",
    )
    report = await _import(migrated_url, clock, csv)
    assert report == ImportReport(rows=2, inserted=1, updated=1, unchanged=0)
    after = {(r["card_identifier"], r["snapshot_date"]): r for r in await _table(migrated_url)}
    mj = after[("1986 fleer michael jordan 57", date(2026, 11, 24))]
    # A changed row records when its values were written, so purge_since can take them back.
    changed = {"market_value": Decimal("120.50"), "created_at": clock()}
    assert mj == {**before["1986 fleer michael jordan 57"], **changed}
    new = after[("new card", date(2026, 12, 1))]
    assert new["market_value"] == Decimal("3.00") and new["created_at"] == clock()


async def test_bad_rows_are_reported_by_line_and_nothing_is_written(
    migrated_url: str, clock: ks.ManualClock, tmp_path: Path
) -> None:
    await _seed(migrated_url)
    before = await _table(migrated_url, with_ids=True)
    good = "id,card_identifier,snapshot_date,market_value,fmv_low,parallel_analysis,created_at\n"
    lines = [
        '9,good card,2026-11-01,10.00,,"{""a"": 1}",2026-11-25 12:00:00+00',  # line 2
        "10,negative,2026-11-01,-1.00,,,",  # line 3
        "11,not a number,2026-11-01,NaN,,,",  # line 4
        "12,bad date,2026-13-45,1.00,,,",  # line 5
        "17,,2026-11-01,1.00,,,",  # line 6: missing card_identifier
        "13,too big,2026-11-01,100000000.00,,,",  # line 7
        '14,"multi\nline",2026-11-01,1.00,,[1],',  # line 8 (spans 9)
        "15,good card,2026-11-01,1.00,,,2026-11-25 12:00:00",  # line 10: naive, duplicate
        "16,short,2026-11-01",  # line 11
    ]
    csv = tmp_path / "bad.csv"
    csv.write_text(good + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ks.InvalidInputError) as caught:
        await _import(migrated_url, clock, csv)
    error = caught.value
    assert error.field == "csv"
    reason = error.reason
    assert "nothing imported" in reason
    assert "line 2" not in reason
    assert "line 3: market_value: must not be negative" in reason
    assert "line 4: market_value: must be a finite number" in reason
    assert "line 5: snapshot_date:" in reason
    assert "line 6: card_identifier: Field required" in reason
    assert "line 7: market_value: must be at most 99999999.99" in reason
    assert "line 8: parallel_analysis:" in reason
    assert "line 10: created_at: Input should have timezone info" in reason
    assert "line 11: expected 7 fields, found 3 fields" in reason
    assert await _table(migrated_url, with_ids=True) == before

    csv.write_text("card_identifier,snapshot_date,price,colour\nx,2026-11-01,1,red\n")
    with pytest.raises(ks.InvalidInputError, match="unknown columns: price, colour"):
        await _import(migrated_url, clock, csv)
    csv.write_text("card_identifier,market_value\nx,1\n")
    with pytest.raises(ks.InvalidInputError, match="missing columns: snapshot_date"):
        await _import(migrated_url, clock, csv)
    csv.write_text(
        HEADER + "\n" + "\n".join(f",2026-11-01,{i}" + "," * 14 for i in range(30)) + "\n"
    )
    with pytest.raises(ks.InvalidInputError) as caught:
        await _import(migrated_url, clock, csv)
    assert "30 bad rows" in caught.value.reason and "and 10 more" in caught.value.reason
    csv.write_bytes(b"card_identifier,snapshot_date\n\xff\xfe,2026-11-01\n")
    with pytest.raises(ks.InvalidInputError, match="UTF-8"):
        await _import(migrated_url, clock, csv)
    assert await _table(migrated_url, with_ids=True) == before


# -- partial rollback ------------------------------------------------------------------


async def test_purge_since_deletes_only_what_came_after(
    migrated_url: str, clock: ks.ManualClock
) -> None:
    engine = create_engine(ks.StoreSettings(database_url=migrated_url))
    moments = [
        T0 - timedelta(hours=2),
        T0 - timedelta(hours=1),
        T0 + timedelta(seconds=1),
        T0 + timedelta(hours=1),
    ]
    # Listing 3 was first seen before T0 and overwritten after it; listing 4 is new after.
    seen = [(moments[0], moments[0]), (moments[1], moments[1]), (moments[0], moments[2])]
    seen.append((moments[3], moments[3]))
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(SEARCHES),
            [
                {
                    "id": i + 1,
                    "query": f"q{i}",
                    "search_type": "sold",
                    "created_at": m,
                    "result_key": f"k{i + 1}",
                }
                for i, m in enumerate(moments)
            ],
        )
        await conn.execute(
            sa.insert(LISTINGS),
            [
                {
                    "id": i + 1,
                    "item_id": f"item{i}",
                    "title": "t",
                    "search_id": i + 1,
                    "first_seen": first,
                    "last_updated": last,
                }
                for i, (first, last) in enumerate(seen)
            ],
        )
        await conn.execute(
            sa.insert(LINKS),
            [
                {"search_id": s, "position": p, "listing_id": (s + p) % 4 + 1}
                for s in range(1, 5)
                for p in range(s)
            ],
        )
        await conn.execute(
            sa.insert(SNAPSHOTS),
            [
                {
                    "card_identifier": "old",
                    "snapshot_date": date(2026, 11, 24),
                    "created_at": moments[0],
                    "search_id": 1,
                },
                {
                    "card_identifier": "linked",
                    "snapshot_date": date(2026, 11, 24),
                    "created_at": T0,
                    "search_id": 3,
                },
                {
                    "card_identifier": "new",
                    "snapshot_date": date(2026, 11, 25),
                    "created_at": moments[3],
                    "search_id": 4,
                },
                {
                    "card_identifier": "undated",
                    "snapshot_date": date(2026, 11, 25),
                    "created_at": None,
                    "search_id": None,
                },
            ],
        )
    backup = Backup(engine, clock)
    try:
        with pytest.raises(ks.InvalidInputError) as caught:
            await backup.purge_since(datetime(2026, 11, 25, 12))
        assert caught.value.field == "moment"
        report = await backup.purge_since(T0.astimezone(timezone(timedelta(hours=-5))))
        # Links: the 3 + 4 of the later searches, and search 2's two to listings 3 and 4,
        # which goes on in the log but no longer answers ("detached").
        assert report == PurgeReport(
            searches=2, search_results=3 + 4 + 2, snapshots=2, listings=2, detached=1
        )
        async with engine.connect() as conn:
            searches = (
                await conn.execute(
                    sa.select(SEARCHES.c.id, SEARCHES.c.result_key).order_by(SEARCHES.c.id)
                )
            ).all()
            links = (await conn.execute(sa.select(LINKS.c.search_id).distinct())).scalars().all()
            listings = (
                await conn.execute(sa.select(LISTINGS.c.search_id).order_by(LISTINGS.c.id))
            ).all()
            snapshots = dict(
                (
                    await conn.execute(
                        sa.select(SNAPSHOTS.c.card_identifier, SNAPSHOTS.c.search_id)
                    )
                ).all()
            )
        assert [tuple(row) for row in searches] == [(1, "k1"), (2, None)]
        assert sorted(links) == [1]
        assert [s for (s,) in listings] == [1, 2]
        # "linked" was written at T0 but last overwritten by search 3, after the moment.
        assert snapshots == {"old": 1, "undated": None}
        assert await backup.purge_since(T0) == PurgeReport(
            searches=0, search_results=0, snapshots=0
        )
    finally:
        await engine.dispose()


class _MovingPrices:
    """A sold-listings fetcher that returns the same listings at prices the test sets."""

    def __init__(self) -> None:
        self.price = Decimal("40.00")

    async def __call__(self, request: ks.FetchRequest) -> ks.FetchResult:
        return ks.FetchResult(
            listings=[
                ks.Listing(
                    item_id=f"mj-{i}",
                    title=f"{request.query} #{i}",
                    price=self.price + i,
                    sold=True,
                    sold_date=T0 - timedelta(days=i + 1),
                )
                for i in range(6)
            ]
        )


async def test_purge_since_takes_back_overwritten_snapshots_and_listings(
    migrated_url: str, tmp_path: Path
) -> None:
    card = "1986 Fleer Michael Jordan #57"
    clock = ks.ManualClock(T0)
    prices = _MovingPrices()
    async with ks.CompsStore(
        database_url=migrated_url,
        clock=clock,
        fetchers={"sold": prices},
        freshness_policy="fixed",  # refetched 41 minutes later
    ) as store:
        first = await store.comps.search(card)
        await store.flush()
        assert await store.backup.export_snapshots_csv(tmp_path / "nightly.csv") == 1
        moment = clock.advance(60)
        # Later the same day a bad batch overwrites the day's snapshot and every listing.
        clock.advance(timedelta(minutes=40))
        prices.price = Decimal("900.00")
        second = await store.comps.search(card)
        assert second.source == "api"
        await store.flush()
        assert first.snapshot is not None and second.snapshot is not None
        [overwritten] = await store.analytics.price_history(card)
        assert overwritten.market_value == second.snapshot.market_value
        assert overwritten.market_value != first.snapshot.market_value
        assert (await store.comps.get_listing("mj-0")).price == Decimal("900.00")

        report = await store.backup.purge_since(moment)

        assert report == PurgeReport(
            searches=1, search_results=12, snapshots=1, listings=6, detached=1
        )
        # Nothing written after the moment is left: not the values, not the rows.
        assert await store.analytics.price_history(card) == []
        with pytest.raises(ks.NotFoundError):
            await store.comps.get_listing("mj-0")
        assert await store.comps.listings_due_for_refresh() == []
        # The snapshot's earlier values come back from the last export.
        restored = await store.backup.import_snapshots_csv(tmp_path / "nightly.csv")
        assert restored == ImportReport(rows=1, inserted=1, updated=0, unchanged=0)
        [before] = await store.analytics.price_history(card)
        assert before.market_value == first.snapshot.market_value
    # The first search's listings went, so it no longer answers from the database.
    async with ks.CompsStore(
        database_url=migrated_url, clock=clock, fetchers={"sold": prices}
    ) as fresh:
        clock.now = T0 + timedelta(minutes=5)
        assert (await fresh.comps.search(card)).source == "api"


async def test_cache_only_mode_has_no_backup(clock: ks.ManualClock, tmp_path: Path) -> None:
    backup = Backup(None, clock)
    calls = [
        backup.count_snapshots(),
        backup.export_snapshots_csv(tmp_path / "x.csv"),
        backup.import_snapshots_csv(tmp_path / "x.csv"),
        backup.purge_since(T0),
    ]
    for call in calls:
        with pytest.raises(ks.StorageUnavailableError, match="cache_only"):
            await call
    assert not (tmp_path / "x.csv").exists()


# -- whole-database backup -------------------------------------------------------------


async def test_pg_dump_and_pg_restore_read_back_whole(
    postgres_url: str, make_database: MakeDatabase, clock: ks.ManualClock, tmp_path: Path
) -> None:
    await migrations.upgrade_async(postgres_url)
    queries = ["1986 Fleer Michael Jordan #57", "2003 Topps Chrome LeBron James #111"]
    market = FakeMarketplace(listings=8, clock=clock)
    fetchers = {"sold": market.sold, "active": market.active}
    async with ks.CompsStore(database_url=postgres_url, clock=clock, fetchers=fetchers) as store:
        original = {
            (q, kind): await store.comps.search(q, kind)
            for q in queries
            for kind in ("sold", "active")
        }
        await store.flush()
        history = {q: await store.analytics.price_history(q) for q in queries}
    assert all(history.values())

    dump = tmp_path / "kuya.dump"
    database = make_url(postgres_url).database or ""
    _run_pg("pg_dump", postgres_url, "-Fc", "-f", str(dump), "-d", database)
    restored = await make_database("postgresql", migrate=False)
    target = make_url(restored).database or ""
    _run_pg("pg_restore", restored, "--exit-on-error", "-d", target, str(dump))

    assert await migrations.current_async(restored) == migrations.head()
    fresh_market = FakeMarketplace(listings=8, clock=clock)
    fetchers = {"sold": fresh_market.sold, "active": fresh_market.active}
    async with ks.CompsStore(database_url=restored, clock=clock, fetchers=fetchers) as store:
        for (query, kind), before in original.items():
            after = await store.comps.search(query, kind)
            assert after.source is ks.Source.DATABASE
            assert after.listings == [listing.metadata_only() for listing in before.listings]
            assert after.snapshot == before.snapshot
        for query, snapshots in history.items():
            assert await store.analytics.price_history(query) == snapshots
        await store.flush()
    assert fresh_market.call_count == 0
    assert await _table(restored) == await _table(postgres_url)
