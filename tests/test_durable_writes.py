"""Nothing is lost when a process dies: the write journal on Redis, proven on real servers.

A worker SIGKILLed with its records unwritten has them written, exactly once, by the
workers that survive it; a Redis restart mid-stream loses nothing; the stream's bound is
counted; without Redis the embedded default keeps its documented guarantee.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis import asyncio as aioredis
from sqlalchemy.ext.asyncio import create_async_engine

import kuya_store as ks
from kuya_store.keys import KEY_VERSION
from kuya_store.metrics import Metrics
from kuya_store.persistence import Database, FetchRecord, SearchRecord
from kuya_store.stored import StoredResult
from kuya_store.testing.servers import RedisServer, free_port
from kuya_store.tiers.journal import (
    AppendedRecords,
    Journal,
    JournalUnavailableError,
    decode_record,
    encode_record,
)
from kuya_store.writer import WriteBehind
from readback import rows as _rows
from records import fetch_record, hit_of

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
    # None of it was the survivors' own: every entry was decoded and validated.
    assert sum(m["decoded"] for m in metrics) >= 30 and sum(m["held"] for m in metrics) == 0
    # What the dead worker had read back was its own: the records it held, none decoded.
    assert report["journal"]["decoded"] == 0
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
        # Not asserted: whether some entries were still unread on the lost stream (written
        # from this process's copies, counted as rebuffered) depends on when the reader
        # last ran. The counts above are what must hold either way.


# -- entries read back by the process that appended them --------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _record_pair(query: str) -> list[SearchRecord | FetchRecord]:
    """A fetched result (listings, snapshot, params, filters, user-less) and a later hit."""
    listings = [
        ks.Listing(item_id=f"own-{i}", title=f"{query} #{i}", price=f"{10 + i}.05", sold=True)
        for i in range(3)
    ]
    fetch = fetch_record(
        query,
        NOW,
        listings,
        "11.05",
        params={"pages": 2, "sort": "date_desc"},
        filters={"raw_only": True, "base_only": False, "exclude_auto": False},
        execution_time_ms=7,
        result_key="a" * 64,
        fetch_stats={"pages": 1},
    )
    return [fetch, hit_of(fetch.search, NOW + timedelta(minutes=1))]


async def _written(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row the records left, minus what the database makes itself (ids, stamps)."""
    searches = await _rows(url, "SELECT * FROM searches ORDER BY record_key")
    keys = {row.pop("id"): row["record_key"] for row in searches}
    listings = await _rows(url, "SELECT * FROM listing_cache ORDER BY item_id")
    items = {row["id"]: row["item_id"] for row in listings}
    links = await _rows(url, "SELECT * FROM search_results")
    for link in links:
        link["search_id"] = keys[link["search_id"]]
        link["listing_id"] = items[link["listing_id"]]
    snapshots = await _rows(url, "SELECT * FROM price_snapshots")
    made_here = {"id", "first_seen", "last_updated", "created_at"}
    for row in listings + snapshots:
        row["search_id"] = keys.get(row["search_id"])
    return {
        "searches": searches,
        "links": sorted(links, key=repr),
        "listings": [{k: v for k, v in r.items() if k not in made_here} for r in listings],
        "snapshots": [{k: v for k, v in r.items() if k not in made_here} for r in snapshots],
    }


async def _wipe(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for table in ("search_results", "price_snapshots", "listing_cache", "searches"):
                await conn.execute(sa.text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


async def _foreign_append(client: Any, prefix: str, payload: bytes, **fields: Any) -> str:
    """An entry as another process appends it: its own sequence number, then the record."""
    stream = _stream(prefix)
    sequence = await client.incr(f"{stream}:seq")
    entry = await client.xadd(stream, {"s": sequence, "r": payload, **fields})
    return str(entry.decode())


async def _foreign_appends(client: Any, prefix: str, payloads: list[bytes]) -> None:
    for payload in payloads:
        await _foreign_append(client, prefix, payload)


async def _journal_written(
    url: str, redis_url: str, prefix: str, append: Callable[[], Awaitable[object]], **settings: Any
) -> dict[str, Any]:
    """Open a store on ``prefix``, ``append`` entries for it and wait until it wrote and acked
    two of them (one fetch, one hit); its journal metrics then."""
    async with ks.CompsStore(
        database_url=url, redis_url=redis_url, key_prefix=prefix, **settings
    ) as store:
        await store.start()
        await append()
        await _wait_for_rows(url, 2, within=30)
        await _until(lambda: store.metrics()["journal"]["acked"] == 2, within=30)
        metrics: dict[str, Any] = store.metrics()["journal"]
    return metrics


async def test_own_entries_are_written_from_memory_exactly_as_decoded_ones(
    migrated_url: str, redis_url: str, key_prefix: str, redis_client: Any
) -> None:
    records = _record_pair("2023 Topps Chrome Held #1")
    async with ks.CompsStore(
        database_url=migrated_url, redis_url=redis_url, key_prefix=key_prefix
    ) as store:
        writer: Any = store._writer
        for record in records:
            assert writer.submit(record)
        await writer.durable()
        assert await store.flush(timeout=30)
        own = store.metrics()["journal"]
    assert own["appended"] == own["held"] == 2 and own["decoded"] == 0
    from_memory = await _written(migrated_url)
    assert len(from_memory["searches"]) == 2 and len(from_memory["links"]) == 3

    # The same records as another process's entries: decoded, validated, then written.
    await _wipe(migrated_url)
    other = f"{key_prefix}b"
    entries = [encode_record(record) for record in records]
    foreign = await _journal_written(
        migrated_url, redis_url, other, lambda: _foreign_appends(redis_client, other, entries)
    )
    assert foreign["decoded"] == 2 and foreign["held"] == 0
    assert await _written(migrated_url) == from_memory


def _journal(client: Any, key_prefix: str) -> tuple[Journal, Metrics]:
    metrics = Metrics()
    return Journal(client, ks.StoreSettings(key_prefix=key_prefix), metrics), metrics


async def test_entries_another_process_wrote_are_validated_whatever_they_carry(
    redis_client: Any, key_prefix: str
) -> None:
    journal, metrics = _journal(redis_client, key_prefix)
    own = AppendedRecords(10)
    fetch, hit = _record_pair("2023 Topps Chrome Forged #1")
    ids = await journal.append([fetch], own)
    tampered = dataclasses.replace(hit, query="tampered")
    invalid = encode_record(hit).replace(b'"execution_time_ms":7', b'"execution_time_ms":"x"')
    # Copies of ours and forgeries, each naming this process as its writer.
    for payload in (encode_record(fetch), encode_record(tampered), invalid):
        await _foreign_append(redis_client, key_prefix, payload, p=journal.consumer, id=ids[0])
    entries = await journal.read(10, own)
    assert [e.id for e in entries][:1] == ids
    assert entries[0].record is fetch  # our own entry: the very object that was encoded
    assert entries[1].record == fetch and entries[1].record is not fetch  # decoded
    assert entries[2].record == tampered
    assert entries[3].record is None  # refused by validation: counted corrupt by the writer
    assert metrics.snapshot()["counters"]["journal_held"] == 1
    assert metrics.snapshot()["counters"]["journal_decoded"] == 3


class _LateReplies:
    """A client whose script replies come back late: the entries are on the stream already."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.landed = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def _late(self, call: Any, *args: Any) -> Any:
        answer = await call(*args)
        self.landed.set()
        await asyncio.sleep(0.3)
        return answer

    async def evalsha(self, *args: Any) -> Any:
        return await self._late(self._client.evalsha, *args)

    async def eval(self, *args: Any) -> Any:
        return await self._late(self._client.eval, *args)


async def test_a_read_that_beats_its_own_append_back_still_takes_the_held_record(
    redis_client: Any, key_prefix: str
) -> None:
    journal, metrics = _journal(redis_client, key_prefix)
    await journal.ensure_group()
    late = _LateReplies(journal._appender)
    journal._appender = late
    journal._line = None  # the append goes through the client, whose replies come late
    own = AppendedRecords(10)
    _, hit = _record_pair("2023 Topps Chrome Raced #1")
    append = asyncio.create_task(journal.append([hit], own))
    async with asyncio.timeout(10):
        await late.landed.wait()
    entries = await journal.read(10, own)  # its reply is back before the append's
    ids = await append
    assert [e.id for e in entries] == ids
    assert entries[0].record is hit
    assert metrics.snapshot()["counters"].get("journal_decoded", 0) == 0


async def test_an_entry_under_our_id_in_a_new_lifetime_of_the_stream_is_decoded(
    key_prefix: str,
) -> None:
    fetch, _ = _record_pair("2023 Topps Chrome Restarted #1")
    tampered = dataclasses.replace(fetch.search, query="tampered")
    with RedisServer() as redis:
        client = aioredis.Redis.from_url(redis.url)
        try:
            journal, metrics = _journal(client, key_prefix)
            own = AppendedRecords(10)
            ids = await journal.append([fetch], own)
            redis.kill()  # without persistence: the stream goes, and its epoch with it
            redis.restart()
            # Another process appends under the very id this one holds.
            forger = aioredis.Redis.from_url(redis.url)
            payload = {"s": 1, "r": encode_record(tampered)}
            await forger.xadd(_stream(key_prefix), payload, id=ids[0])  # type: ignore[arg-type]
            await forger.aclose()
            entries: list[Any] = []
            for _ in range(100):
                try:
                    entries = await journal.read(10, own)
                except JournalUnavailableError:
                    await asyncio.sleep(0.05)  # reconnecting, then the group is made again
                    continue
                break
        finally:
            await client.aclose()
    assert [e.id for e in entries] == ids
    assert entries[0].record is not None and entries[0].record.query == "tampered"
    assert metrics.snapshot()["counters"].get("journal_held", 0) == 0
    # Our record of the lost stream is still held, to be written from this process.
    assert own.take_lost(journal.generation) == [fetch]


async def test_each_record_is_encoded_once_even_when_redis_asks_for_the_script_again(
    redis_client: Any, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kuya_store.tiers import journal_entries as journal_module

    encoded: list[object] = []

    def counted(record: SearchRecord | FetchRecord) -> bytes:
        encoded.append(record)
        return encode_record(record)

    monkeypatch.setattr(journal_module, "encode_record", counted)
    journal, _ = _journal(redis_client, key_prefix)
    await journal.ensure_group()
    await redis_client.script_flush()  # every run of the batch is refused, then sent whole
    records = [_record_pair(f"once {i}")[1] for i in range(250)]
    ids = await journal.append(records)  # three script runs, pipelined
    assert len(ids) == len(set(ids)) == 250
    assert len(encoded) == 250 and all(a is b for a, b in zip(encoded, records, strict=True))
    assert await redis_client.xlen(_stream(key_prefix)) == 250


async def test_held_records_stay_bounded_while_another_consumer_writes_them(
    migrated_url: str, redis_url: str, key_prefix: str
) -> None:
    dead = f"postgresql+asyncpg://kuya@127.0.0.1:{free_port()}/kuya"
    settings = ks.StoreSettings(database_url=dead, key_prefix=key_prefix)
    metrics = Metrics()
    client = aioredis.Redis.from_url(redis_url)
    database = Database(settings, metrics)
    # This process cannot write (its database is gone): it reads what its buffer takes,
    # and the other store writes everything else it appends.
    writer = WriteBehind(
        database,
        metrics,
        capacity=200,
        batch_size=50,
        interval=0.01,
        pause=0.2,
        journal=Journal(client, settings, metrics),
    )
    other = ks.CompsStore(
        database_url=migrated_url, redis_url=redis_url, key_prefix=key_prefix, journal_claim_idle=1
    )
    await other.start()
    sizes: list[int] = []
    try:
        for batch in range(50):
            for i in range(200):
                record = SearchRecord(
                    query=f"bounded {batch} {i}",
                    card_identifier=f"bounded {batch} {i}",
                    search_type=ks.SearchType.SOLD,
                    filters={},
                    params={},
                    created_at=NOW,
                    execution_time_ms=1,
                    cache_hit=True,
                )
                assert writer.submit(record)
            await writer.durable()
            sizes.append(len(writer._own))
        appended = metrics.snapshot()["counters"]["journal_appended"]
        await writer.close(timeout=0.5)  # what it read stays on the stream for the other
        await _wait_for_rows(migrated_url, 10_000, within=120)
        assert await other.flush(timeout=30)
    finally:
        await other.close()
        await database.close()
        await client.aclose()
    assert appended == 10_000
    assert max(sizes) <= 200
    counts = await _counts(migrated_url)
    assert counts["searches"] == counts["keys"] == 10_000


# -- group commit --------------------------------------------------------------------------

HOT = "2023 Topps Chrome Victor Wembanyama #1"


async def _until(predicate: Any, within: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.002)


def _batch_in_flight(store: ks.CompsStore) -> bool:
    """Every record queued for the journal was taken into a batch that is not back yet."""
    writer: Any = store._writer
    return not writer._outbox and writer._outbox_done < writer._outbox_accepted


async def _appends_during(url: str, stream: str, work: Any) -> tuple[Any, int]:
    """Run ``work``; count the script calls that append to ``stream`` Redis received meanwhile.

    Read from ``MONITOR``: an append is a script call whose keys are the stream and its
    sequence counter, however many records it carries.
    """
    watcher = aioredis.Redis.from_url(url)
    marker = uuid.uuid4().hex
    appends = 0
    try:
        async with watcher.monitor() as monitor:

            async def watch() -> None:
                nonlocal appends
                async for seen in monitor.listen():
                    command = seen["command"]
                    if marker in command:
                        return
                    if command.startswith(("EVALSHA ", "EVAL ")) and (
                        f" {stream} {stream}:seq " in command
                    ):
                        appends += 1

            watching = asyncio.create_task(watch())
            await asyncio.sleep(0.1)  # the monitor is listening
            outcome = await work()
            await watcher.echo(marker)
            async with asyncio.timeout(30):
                await watching
    finally:
        await watcher.aclose()
    return outcome, appends


async def _stream_sequences(client: Any, prefix: str) -> list[int]:
    return [int(fields[b"s"]) for _, fields in await client.xrange(_stream(prefix))]


async def test_concurrent_searches_share_round_trips_and_each_record_lands_once(
    migrated_url: str, key_prefix: str
) -> None:
    calls: list[str] = []
    with RedisServer() as redis:  # its own server: what it receives is this test's
        client = aioredis.Redis.from_url(redis.url)
        try:
            async with ks.CompsStore(
                database_url=migrated_url,
                redis_url=redis.url,
                key_prefix=key_prefix,
                fetchers={"sold": _market(calls)},
            ) as store:
                await store.comps.search(HOT)
                assert await store.flush()
                before = store.metrics()["journal"]

                async def burst() -> list[ks.CompsResult]:
                    return await asyncio.gather(*(store.comps.search(HOT) for _ in range(200)))

                results, appends = await _appends_during(redis.url, _stream(key_prefix), burst)
                after = store.metrics()["journal"]
                assert await store.flush(timeout=30)
            sequences = await _stream_sequences(client, key_prefix)
        finally:
            await client.aclose()
    assert all(r.cache_hit for r in results) and len(calls) == 1
    round_trips = after["round_trips"] - before["round_trips"]
    assert after["appended"] - before["appended"] == 200 and after["fallbacks"] == 0
    # A script call (and a round trip) per search before; now the searches that finish
    # together share a round trip, and one call carries many records. How many finish
    # together depends on how busy the machine is: half of one per search is the bound.
    assert round_trips <= 100, round_trips
    assert appends <= 100, appends
    # Each record on the stream once, numbered without a gap, and in the database once.
    assert sorted(sequences) == list(range(1, 202))
    counts = await _counts(migrated_url)
    assert counts["searches"] == counts["keys"] == 201


async def test_redis_killed_mid_batch_sends_each_waiter_to_the_buffer(
    migrated_url: str, key_prefix: str
) -> None:
    calls: list[str] = []
    with RedisServer() as redis:
        store = ks.CompsStore(
            database_url=migrated_url,
            redis_url=redis.url,
            key_prefix=key_prefix,
            # The batch fails because Redis dies, not because a socket timed out first.
            redis_socket_timeout=5,
            single_flight_lock_ttl=20,
            fetchers={"sold": _market(calls)},
        )
        async with store:
            await store.comps.search(HOT)
            assert await store.flush()
            admin = aioredis.Redis.from_url(redis.url)
            await admin.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")  # holds the batch
            await admin.aclose()
            searches = [asyncio.create_task(store.comps.search(HOT)) for _ in range(40)]
            await _until(lambda: _batch_in_flight(store))
            redis.kill()
            started = time.monotonic()
            outcomes = await asyncio.gather(*searches, return_exceptions=True)
            waited = time.monotonic() - started
            journal = store.metrics()["journal"]
            redis.restart()
            assert await store.flush(timeout=30)
    # What a failed XADD always meant: the search answers, its record kept in the buffer.
    assert [type(o) for o in outcomes] == [ks.CompsResult] * 40
    assert waited < 10, f"the waiters took {waited:.1f} s to hear of the failure"
    assert journal["fallbacks"] >= 40 and journal["slow"] == 0
    counts = await _counts(migrated_url)
    assert counts["searches"] == counts["keys"] == 41


async def test_a_cancelled_waiter_leaves_the_batch_and_every_record(
    migrated_url: str, key_prefix: str
) -> None:
    calls: list[str] = []
    with RedisServer() as redis:
        client = aioredis.Redis.from_url(redis.url)
        store = ks.CompsStore(
            database_url=migrated_url,
            redis_url=redis.url,
            key_prefix=key_prefix,
            redis_socket_timeout=30,  # the held batch waits for the unpause, however slow
            single_flight_lock_ttl=90,
            fetchers={"sold": _market(calls)},
        )
        try:
            async with store:
                await store.comps.search(HOT)
                assert await store.flush()
                await client.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
                writer: Any = store._writer
                base = writer._outbox_accepted
                searches = [asyncio.create_task(store.comps.search(HOT)) for _ in range(20)]
                # Every search answered and waits for the journal, a batch held in flight.
                await _until(lambda: writer._outbox_accepted == base + 20)
                await _until(lambda: writer._outbox_done < writer._outbox_accepted)
                for task in searches[:5]:
                    task.cancel()
                await asyncio.sleep(0.05)  # the cancellations are delivered while it waits
                await client.execute_command("CLIENT", "UNPAUSE")
                outcomes = await asyncio.gather(*searches, return_exceptions=True)
                assert await store.flush(timeout=30)
                journal = store.metrics()["journal"]
            sequences = await _stream_sequences(client, key_prefix)
        finally:
            await client.aclose()
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes[:5])
    assert all(isinstance(o, ks.CompsResult) for o in outcomes[5:])
    # The batch went on: every record of it on the stream once, none buffered instead,
    # and the cancelled searches' rows too (a search cancelled after answering is logged).
    assert journal["fallbacks"] == 0 and journal["appended"] == 21
    # Read back by the process that appended them: written from memory, none decoded.
    assert journal["held"] == 21 and journal["decoded"] == 0
    assert sorted(sequences) == list(range(1, 22))
    counts = await _counts(migrated_url)
    assert counts["searches"] == counts["keys"] == 21


async def test_group_commit_on_a_cluster_keeps_every_record_once(
    redis_cluster_url: str, key_prefix: str, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'kuya.db'}"
    await ks.migrations.upgrade_async(url)
    calls: list[str] = []
    async with ks.CompsStore(
        database_url=url,
        redis_url=redis_cluster_url,
        key_prefix=key_prefix,
        fetchers={"sold": _market(calls)},
    ) as store:
        for card in CARDS[:4]:  # each card on its own slot, the journal on its hash tag's
            await store.comps.search(card)
        assert await store.flush()
        before = store.metrics()["journal"]
        await asyncio.gather(*(store.comps.search(CARDS[i % 4]) for i in range(100)))
        assert await store.flush(timeout=30)
        after = store.metrics()["journal"]
    assert after["appended"] - before["appended"] == 100
    assert after["fallbacks"] == 0 and after["errors"] == 0
    assert after["round_trips"] - before["round_trips"] <= 40
    counts = await _counts(url)
    assert counts["searches"] == counts["keys"] == 104
    assert counts["fetches"] == len(calls) == 4


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
