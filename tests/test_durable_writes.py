"""Nothing is lost when a process dies: the write journal on Redis, proven on real servers.

A worker SIGKILLed with its records unwritten has them written, exactly once, by the
workers that survive it; a Redis restart mid-stream loses nothing; the stream's bound is
counted; without Redis the embedded default keeps its documented guarantee.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import kuya_store as ks
from kuya_store.keys import KEY_VERSION
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.testing.servers import RedisServer
from kuya_store.tiers.journal import decode_record, encode_record

WORKERS = Path(__file__).with_name("workers.py")
CARDS = [f"2023 Topps Chrome Card {i} #{i}" for i in range(20)]
LISTINGS = 4
# A worker that reads the journal but would write only after a minute: killed first.
SLOW_WRITER = {"write_flush_interval": 60, "write_batch_size": 10_000, "journal_claim_idle": 300}


async def _scalar(url: str, sql: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(sa.text(sql))).scalar_one())
    finally:
        await engine.dispose()


async def _counts(url: str) -> dict[str, int]:
    return {
        "searches": await _scalar(url, "SELECT count(*) FROM searches"),
        "fetches": await _scalar(url, "SELECT count(*) FROM searches WHERE cache_hit = false"),
        "keys": await _scalar(url, "SELECT count(DISTINCT record_key) FROM searches"),
        "listings": await _scalar(url, "SELECT count(*) FROM listing_cache"),
        "links": await _scalar(url, "SELECT count(*) FROM search_results"),
    }


async def _wait_for_rows(url: str, rows: int, within: float) -> None:
    """Until the search log has ``rows`` rows, or ``within`` seconds passed."""
    for _ in range(int(within / 0.2)):
        if (await _counts(url))["searches"] >= rows:
            return
        await asyncio.sleep(0.2)


def _start_worker(args: dict[str, Any]) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKERS), "answer_then_hang", json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once every search has returned
    if not line:
        proc.kill()
        raise AssertionError(proc.communicate(timeout=30)[1].decode()[-3000:])
    return proc, json.loads(line)


def _stream(prefix: str) -> str:
    return f"{prefix}:v{KEY_VERSION}:journal:{{journal}}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _market(calls: list[str]) -> Any:
    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        calls.append(request.query)
        await asyncio.sleep(0.002)
        return ks.FetchResult(
            listings=[
                ks.Listing(
                    item_id=f"{request.query}-{i}".replace(" ", "_")[:50],
                    title=f"{request.query} #{i}",
                    price=f"{10 + i}.25",
                    sold=True,
                )
                for i in range(LISTINGS)
            ]
        )

    return fetch


# -- a worker that dies --------------------------------------------------------------------


async def test_sigkilled_worker_is_recovered_exactly_once_by_the_others(
    migrated_url: str, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    calls_file = tmp_path / "calls.txt"
    queries = CARDS + CARDS[:10]  # 20 fetches, then 10 answers from the hot tier
    proc, report = _start_worker(
        {
            "database_url": migrated_url,
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "calls_file": str(calls_file),
            "listings": LISTINGS,
            "queries": queries,
            "store": SLOW_WRITER,
            "hold": True,
        }
    )
    assert report["answered"] == 30 and report["fetched"] == 20
    assert report["journal"]["appended"] == 30
    # Every record is on the stream and none in the database: the worker's buffer alone
    # held them, as the in-memory buffer of old did.
    assert (await _counts(migrated_url))["searches"] == 0
    _kill(proc)
    killed_at = time.monotonic()

    # Two survivors with the default settings race for the dead worker's entries.
    stores = [
        ks.CompsStore(database_url=migrated_url, redis_url=redis_url, key_prefix=key_prefix)
        for _ in range(2)
    ]
    for store in stores:
        await store.start()
    try:
        await _wait_for_rows(migrated_url, 30, within=60)
        recovered_in = time.monotonic() - killed_at
        for store in stores:
            assert await store.flush(timeout=30)
        await asyncio.sleep(1.5)  # another second of claims: nothing more may land
        metrics = [store.metrics()["journal"] for store in stores]
    finally:
        for store in stores:
            await store.close()
    assert recovered_in <= 30, f"recovered in {recovered_in:.1f} s"
    assert await _counts(migrated_url) == {
        "searches": 30,
        "fetches": 20,
        "keys": 30,
        "listings": 20 * LISTINGS,
        "links": 20 * LISTINGS,
    }
    assert sum(m["claimed"] for m in metrics) >= 30
    assert len(calls_file.read_text().splitlines()) == 20  # nothing was bought again
    print(f"recovered {report['answered']} records in {recovered_in:.1f} s")


async def test_restarted_worker_drains_what_it_left(
    migrated_url: str, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    args = {
        "database_url": migrated_url,
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "calls_file": str(tmp_path / "calls.txt"),
        "listings": LISTINGS,
        "queries": CARDS[:8],
        "store": SLOW_WRITER,
    }
    proc, _ = _start_worker(args)
    _kill(proc)
    # The same deployment starts again (a new process, hence a new consumer) and answers.
    proc, _ = _start_worker({**args, "queries": CARDS[8:10], "store": {"journal_claim_idle": 1}})
    try:
        await _wait_for_rows(migrated_url, 10, within=30)
    finally:
        _kill(proc)
    counts = await _counts(migrated_url)
    assert counts["searches"] == counts["keys"] == counts["fetches"] == 10
    assert counts["listings"] == 10 * LISTINGS


# -- Redis restarts ------------------------------------------------------------------------


async def test_redis_restart_mid_stream_loses_nothing(migrated_url: str, key_prefix: str) -> None:
    calls: list[str] = []
    with RedisServer() as redis:
        store = ks.CompsStore(
            database_url=migrated_url,
            redis_url=redis.url,
            key_prefix=key_prefix,
            near_cache_size=0,
            breaker_reset_after=0.3,
            redis_socket_timeout=0.2,
            # Entries wait on the stream and in the buffer when Redis dies, unwritten.
            write_flush_interval=2,
            fetchers={"sold": _market(calls)},
        )
        answered = 0
        failures: list[BaseException] = []

        async def load(queries: list[str]) -> None:
            nonlocal answered
            for outcome in await asyncio.gather(
                *(store.comps.search(q) for q in queries), return_exceptions=True
            ):
                if isinstance(outcome, BaseException):
                    failures.append(outcome)
                else:
                    answered += 1

        async with store:
            await load([f"{c} first" for c in CARDS])
            before = await _counts(migrated_url)
            redis.kill()  # without persistence: the stream goes with it
            await load([f"{c} during" for c in CARDS[:10]])
            redis.restart()
            await load([f"{c} after" for c in CARDS[:10]] + [f"{c} first" for c in CARDS[:5]])
            assert await store.flush(timeout=30)
            metrics = store.metrics()["journal"]
        assert failures == []
        assert before["searches"] < 20, "the first searches were written before Redis died"
        counts = await _counts(migrated_url)
        assert counts["searches"] == counts["keys"] == answered == 45
        assert counts["fetches"] == len(calls)
        assert counts["links"] == len(calls) * LISTINGS
        assert metrics["fallbacks"] > 0
        assert metrics["rebuffered"] > 0


# -- the bound -----------------------------------------------------------------------------


async def test_stream_bound_counts_what_it_trimmed_unwritten(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'later.db'}"  # not migrated yet: writes wait
    calls: list[str] = []
    async with ks.CompsStore(
        database_url=url,
        redis_url=redis_url,
        key_prefix=key_prefix,
        mode="dual_write",
        journal_max_length=100,
        write_buffer_size=20,
        fetchers={"sold": _market(calls)},
    ) as store:
        for start in range(0, 600, 10):
            await asyncio.gather(
                *(store.comps.search(f"card {i} #{i}") for i in range(start, start + 10))
            )
        await ks.migrations.upgrade_async(url)
        assert await store.flush(timeout=60)
        await asyncio.sleep(1.5)  # the stats refresh each second
        journal = store.metrics()["journal"]
        writes = store.metrics()["writes"]
    assert journal["appended"] == 600 and journal["fallbacks"] == 0
    trimmed = journal["trimmed_unacked"]
    assert trimmed > 0
    assert await _scalar(url, "SELECT count(*) FROM searches") == 600 - trimmed
    assert writes["written"] == 600 - trimmed
    assert journal["length"] is not None and journal["length"] <= 300


# -- what gets written ---------------------------------------------------------------------


async def test_bad_input_writes_nothing_anywhere(
    migrated_url: str, redis_url: str, key_prefix: str, redis_client: Any
) -> None:
    async def bad(request: ks.FetchRequest) -> ks.FetchResult:
        return "not a result"  # type: ignore[return-value]

    async with ks.CompsStore(
        database_url=migrated_url,
        redis_url=redis_url,
        key_prefix=key_prefix,
        fetchers={"sold": bad},
    ) as store:
        stream = store.metrics()["journal"]
        assert stream["enabled"]
        for call in (
            lambda: store.comps.search(""),
            lambda: store.comps.search("x" * 6000),
            lambda: store.comps.search("wemby", filters={"raw_only": "yes"}),
            lambda: store.comps.search("wemby", user_id=-1),
            lambda: store.comps.search("wemby"),  # the fetcher's answer is invalid
        ):
            with pytest.raises(ks.InvalidInputError):
                await call()
        assert await store.flush()
        assert store.metrics()["journal"]["appended"] == 0
    assert await redis_client.xlen(_stream(key_prefix)) == 0
    assert await _scalar(migrated_url, "SELECT count(*) FROM searches") == 0


async def test_corrupt_entry_is_counted_and_skipped(
    migrated_url: str, redis_url: str, key_prefix: str, redis_client: Any
) -> None:
    calls: list[str] = []
    async with ks.CompsStore(
        database_url=migrated_url,
        redis_url=redis_url,
        key_prefix=key_prefix,
        fetchers={"sold": _market(calls)},
    ) as store:
        await store.comps.search(CARDS[0])
        await store.flush()
        await redis_client.xadd(_stream(key_prefix), {"r": b"\x80 not json"})
        await store.comps.search(CARDS[1])
        assert await store.flush()
        metrics = store.metrics()["journal"]
    assert metrics["corrupt"] == 1
    assert await _scalar(migrated_url, "SELECT count(*) FROM searches") == 2


def test_records_round_trip_through_their_json() -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    from kuya_store.stored import StoredResult

    at = datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=UTC)
    search = SearchRecord(
        query="Wemby #1",
        card_identifier="wemby 1",
        search_type=ks.SearchType.SOLD,
        filters={"raw_only": True},
        params={"page": 2, "site": "x"},
        created_at=at,
        execution_time_ms=12,
        cache_hit=False,
        result_key="k" * 64,
        fetch_stats={"pages": 1},
    )
    result = StoredResult(
        query="Wemby #1",
        card_identifier="wemby 1",
        search_type=ks.SearchType.SOLD,
        params={"page": 2, "site": "x"},
        listings=[ks.Listing(item_id="1", title="t", price=Decimal("10.10"), sold=True)],
        fetched_at=at,
    )
    fetch = FetchRecord(search=search, result=result, listing_ttl=at)
    assert decode_record(encode_record(search)) == search
    back = decode_record(encode_record(fetch))
    assert back == fetch and isinstance(back, FetchRecord)
    assert back.result.listings[0].price == Decimal("10.10")
    for junk in (b"", b"null", b"[]", b'{"v": 999}', b'{"v": 1, "kind": "fetch", "record": {}}'):
        assert decode_record(junk) is None


# -- without Redis -------------------------------------------------------------------------


@pytest.mark.parametrize("flush", [True, False])
async def test_sqlite_default_keeps_its_documented_guarantee(tmp_path: Path, flush: bool) -> None:
    """Embedded (SQLite, no Redis): what flush() confirmed, or older than a flush interval
    and a commit, survives a SIGKILL."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'kuya.db'}"
    await ks.migrations.upgrade_async(url)
    proc, report = _start_worker(
        {
            "database_url": url,
            "key_prefix": "embedded",
            "calls_file": str(tmp_path / "calls.txt"),
            "listings": LISTINGS,
            "queries": CARDS + CARDS[:5],
            "flush": flush,
        }
    )
    assert report["journal"]["enabled"] is False
    if not flush:
        await asyncio.sleep(2.0)  # 8 x write_flush_interval: the bounded delay has passed
    _kill(proc)
    counts = await _counts(url)
    assert counts["searches"] == report["answered"] == 25
    assert counts["fetches"] == 20


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"journal_claim_idle": 0}, "journal_claim_idle"),
        ({"journal_claim_idle": -5}, "journal_claim_idle"),
        ({"journal_claim_idle": 0.3}, "journal_claim_idle"),  # < 2 x write_flush_interval
        ({"journal_max_length": 5}, "journal_max_length"),
        ({"journal_max_length": "many"}, "journal_max_length"),
        ({"durable_writes": "perhaps"}, "durable_writes"),
    ],
)
def test_journal_settings_are_checked(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ks.InvalidInputError) as caught:
        ks.StoreSettings(**values)
    assert caught.value.field == field
