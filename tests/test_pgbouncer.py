"""Through a real PgBouncer in transaction mode: no write is lost, none is reported wrongly."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import kuya_store as ks
from kuya_store.db.engine import driver_arguments
from kuya_store.demo import FakeMarketplace

# One process of many concurrent searches through PgBouncer; prints what it saw.
_WORKER = """
import asyncio, json, sys
import kuya_store as ks
from kuya_store.demo import FakeMarketplace

async def main(url, tag):
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(database_url=url, fetchers={"sold": market.sold},
                             write_flush_interval=0.01) as store:
        for round in range(3):
            await asyncio.gather(*(store.comps.search(f"{tag} card {i % 40}", record=True)
                                   for i in range(100)))
        flushed = await store.flush()
        print(json.dumps({"flushed": flushed, "writes": store.metrics()["writes"]}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _search_rows(postgres_url: str) -> int:
    conn = await asyncpg.connect(_dsn(postgres_url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM searches"))
    finally:
        await conn.close()


async def _concurrent_searches(url: str, **settings: Any) -> dict[str, Any]:
    market = FakeMarketplace(listings=5)
    fetchers = {"sold": market.sold, "active": market.active}
    async with ks.CompsStore(
        database_url=url, fetchers=fetchers, write_flush_interval=0.01, **settings
    ) as store:
        results = await asyncio.gather(
            *(store.comps.search(f"2023 Topps Chrome prospect {i % 50}") for i in range(200))
        )
        assert len(results) == 200
        flushed = await store.flush(timeout=60)
        writes = dict(store.metrics()["writes"])
    return {"flushed": flushed, **writes}


async def test_concurrent_searches_through_pgbouncer_are_all_written(
    postgres_url: str, pgbouncer_url: str
) -> None:
    await ks.migrations.upgrade_async(postgres_url)
    report = await _concurrent_searches(pgbouncer_url, pgbouncer=True)
    assert report["flushed"] is True
    assert (report["written"], report["rejected"], report["dropped"]) == (200, 0, 0)
    assert report["retries"] == 0  # nothing failed on the way, not even once
    assert await _search_rows(postgres_url) == 200


async def test_a_refusal_caused_by_the_pooler_is_retried_never_dropped(
    postgres_url: str, pgbouncer_url: str
) -> None:
    # Misconfigured: PgBouncer in front, PgBouncer mode off. The database refuses some
    # statements ("prepared statement ... does not exist"); the rows are not at fault, so
    # they are retried until they land rather than counted as rejected and lost.
    await ks.migrations.upgrade_async(postgres_url)
    report = await _concurrent_searches(pgbouncer_url, breaker_reset_after=0.05)
    assert report["rejected"] == 0
    assert report["written"] + report["pending"] == 200
    assert report["dropped"] == 0
    # close() wrote whatever the flush left buffered.
    assert await _search_rows(postgres_url) == 200


def test_two_processes_through_one_pgbouncer(postgres_url: str, pgbouncer_url: str) -> None:
    # asyncpg names statements from a per-process counter: two processes would collide on
    # a shared server connection without PgBouncer mode's names of their own.
    ks.migrations.upgrade(f"{pgbouncer_url}?pgbouncer=true")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, f"{pgbouncer_url}?pgbouncer=true", tag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("left", "right")
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    for out, _ in outputs:
        report = json.loads(out.strip().splitlines()[-1])
        assert report["flushed"] is True
        assert (report["writes"]["written"], report["writes"]["rejected"]) == (300, 0)
    assert asyncio.run(_search_rows(postgres_url)) == 600


def test_pgbouncer_mode_from_the_url() -> None:
    url, args = driver_arguments("postgresql+asyncpg://u:p@h/db?pgbouncer=true&ssl=prefer")
    assert "pgbouncer" not in url.query and url.query["ssl"] == "prefer"
    assert args["statement_cache_size"] == 0 and args["prepared_statement_cache_size"] == 0
    names = {args["prepared_statement_name_func"]() for _ in range(100)}
    assert len(names) == 100
    assert driver_arguments("postgresql+asyncpg://u:p@h/db?pgbouncer=false")[1] == {}
    assert driver_arguments("postgresql+asyncpg://u:p@h/db", pgbouncer=True)[1]
    assert driver_arguments("postgresql+asyncpg://u:p@h/db")[1] == {}


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@h/db?pgbouncer=maybe", "sqlite+aiosqlite:///./x.db?pgbouncer=true"],
)
def test_a_bad_pgbouncer_flag_names_the_setting(url: str) -> None:
    with pytest.raises(ks.InvalidInputError, match="database_url"):
        ks.StoreSettings(database_url=url)
