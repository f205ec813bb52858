"""The database tier's read of a stored result: through a streaming replica against the primary.

A primary and a hot standby (``pg_basebackup``, tests/pg_cluster.py) on loopback; another
process writes search-log rows to the primary all along (write load the replica replays).
Two stores read the same stored fetch with ``Database.newest_result``, the read a search
makes when the hot tier misses: one knows only the primary, the other has the replica in
``replica_urls`` (lag bound 5 s, so the replica answers; its lag is measured every 1.25 s).
Interleaved rounds; the target is on the p50 difference.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta

import kuya_store as ks
from bench.stats import Target, line, pct, sample_interleaved
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
# Rows to the primary until killed: 20 every 20 ms, about 1,000 a second (ten times the
# 100 searches a second the scaling issue plans for).
WRITER = """
import asyncio, sys, asyncpg
async def main(dsn):
    conn = await asyncpg.connect(dsn)
    rows = [("load", "sold") for _ in range(20)]
    while True:
        await conn.executemany(
            "INSERT INTO searches (query, search_type, created_at) VALUES ($1, $2, now())", rows)
        await asyncio.sleep(0.02)
asyncio.run(main(sys.argv[1]))
"""


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    from kuya_store.testing.pg_cluster import StreamingPair  # the test harness's servers

    n = 200 if scale < 1 else max(500, int(5000 * scale))
    print(f"\n## database-tier reads through a streaming replica ({n} reads each, write load)")
    with StreamingPair() as pair:
        primary, replica = pair.create_database("bench_replicas")
        await ks.migrations.upgrade_async(primary)
        market = FakeMarketplace(listings=40)
        async with ks.CompsStore(database_url=primary, fetchers={"sold": market.sold}) as store:
            await store.comps.search(QUERY)
            assert await store.flush()
        pair.replica.wait_caught_up()
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WRITER,
            primary.replace("+asyncpg", ""),
            stderr=subprocess.DEVNULL,
        )
        try:
            identity = ResultIdentity.of_query(QUERY, ks.SearchType.SOLD, {}, None)
            since = ks.ManualClock().now - timedelta(days=3650)
            async with (
                ks.CompsStore(database_url=primary) as direct,
                ks.CompsStore(
                    database_url=primary, replica_urls=[replica], max_replica_lag=5
                ) as replicated,
            ):
                assert direct._database is not None
                assert replicated._database is not None
                on_primary, on_replica = direct._database, replicated._database

                async def from_primary() -> object:
                    found = await on_primary.newest_result(identity, since)
                    assert found is not None
                    assert len(found.listings) == 40
                    return found

                async def from_replica() -> object:
                    found = await on_replica.newest_result(identity, since)
                    assert found is not None
                    assert len(found.listings) == 40
                    return found

                samples = sample_interleaved(
                    {"primary": from_primary, "replica": from_replica}, n, warmup=100
                )
                results = await samples
                reads = replicated.metrics()["database"]["replica_reads"]
                written = await _count(primary)
        finally:
            writer.kill()
            await writer.wait()
    print(line("newest stored result, primary only", results["primary"]))
    print(line("newest stored result, through the replica", results["replica"]))
    print(f"replica answered {reads} reads; the writer logged {written:,} rows meanwhile")
    added_ms = (pct(results["replica"], 50) - pct(results["primary"], 50)) / 1000
    return [
        Target(
            "replica read path vs primary, p50 under write load",
            "<= 1 ms added",
            f"{added_ms:+.3f} ms ({pct(results['replica'], 50) / 1000:.2f} vs "
            f"{pct(results['primary'], 50) / 1000:.2f} ms; replica answered {reads})",
            added_ms <= 1.0 and reads > 0,
        )
    ]


async def _count(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM searches"))
    finally:
        await conn.close()
