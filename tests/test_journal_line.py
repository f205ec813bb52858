"""The journal's appends on a connection of their own: bounded, reconnecting, never the pool's."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import asyncio as aioredis

import kuya_store as ks
from kuya_store.metrics import Metrics
from kuya_store.persistence import SearchRecord
from kuya_store.testing.servers import RedisServer
from kuya_store.tiers.journal import AppendedRecords, Journal, JournalUnavailableError
from kuya_store.tiers.redis_clients import RedisDeployment


def _hit(query: str) -> SearchRecord:
    return SearchRecord(
        query=query,
        card_identifier=ks.normalize_card(query),
        search_type=ks.SearchType.SOLD,
        filters={"raw_only": False, "base_only": False, "exclude_auto": False},
        params={},
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        execution_time_ms=1,
        cache_hit=True,
        items_count=3,
    )


def _journal(client: Any, key_prefix: str, timeout: float | None = None) -> Journal:
    settings = ks.StoreSettings(key_prefix=key_prefix)
    if timeout is not None:
        settings = ks.StoreSettings(
            key_prefix=key_prefix, redis_socket_timeout=timedelta(seconds=timeout)
        )
    return Journal(client, settings, Metrics())


class _Counted:
    """A client that counts the commands sent through it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.commands: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def evalsha(self, *args: Any) -> Any:
        self.commands.append("evalsha")
        return await self._client.evalsha(*args)

    async def eval(self, *args: Any) -> Any:
        self.commands.append("eval")
        return await self._client.eval(*args)


async def test_an_append_takes_no_connection_of_the_clients(
    redis_client: Any, key_prefix: str
) -> None:
    journal = _journal(redis_client, key_prefix)
    counted = _Counted(journal._appender)
    journal._appender = counted
    own = AppendedRecords(10)
    hit = _hit("2023 Topps Chrome Own Line #1")
    try:
        ids = await journal.append([hit], own)
        entries = await journal.read(10, own)
    finally:
        await journal.close()
    assert counted.commands == []
    assert [e.id for e in entries] == ids
    assert entries[0].record is hit


async def test_a_server_that_forgot_the_script_is_sent_it_whole(
    redis_client: Any, key_prefix: str
) -> None:
    journal = _journal(redis_client, key_prefix)
    own = AppendedRecords(10)
    try:
        first = await journal.append([_hit("2023 Topps Chrome Flushed #1")], own)
        await redis_client.script_flush()
        second = await journal.append([_hit("2023 Topps Chrome Flushed #2")], own)
    finally:
        await journal.close()
    assert len(first) == len(second) == 1
    assert await redis_client.xlen(journal.stream) == 2


async def test_a_paused_server_fails_the_append_within_its_socket_timeout(
    redis_client: Any, redis_url: str, key_prefix: str
) -> None:
    settings = ks.StoreSettings(
        key_prefix=key_prefix, redis_url=redis_url, redis_socket_timeout=timedelta(seconds=0.5)
    )
    deployment = RedisDeployment(settings)  # the client a store makes
    journal = Journal(deployment.client, settings, Metrics())
    await journal.ensure_group()
    own = AppendedRecords(10)
    await redis_client.ping()
    await redis_client.client_pause(3000, all=True)
    started = time.monotonic()
    try:
        try:
            await journal.append([_hit("2023 Topps Chrome Paused #1")], own)
        except JournalUnavailableError:
            pass
        else:
            raise AssertionError("a paused Redis took the append")
        assert time.monotonic() - started < 2.5  # its own deadline, not the pause's end
    finally:
        await redis_client.client_unpause()
    try:
        ids = await journal.append([_hit("2023 Topps Chrome Paused #2")], own)
    finally:
        await journal.close()
        await deployment.client.aclose()
    assert len(ids) == 1


async def test_the_line_reconnects_after_redis_restarts(key_prefix: str) -> None:
    with RedisServer() as redis:
        client = aioredis.Redis.from_url(redis.url)
        journal = _journal(client, key_prefix, timeout=1.0)
        own = AppendedRecords(10)
        try:
            await journal.append([_hit("2023 Topps Chrome Restart #1")], own)
            redis.kill()
            redis.restart()
            ids: list[str] = []
            for _ in range(100):
                try:
                    ids = await journal.append([_hit("2023 Topps Chrome Restart #2")], own)
                except JournalUnavailableError:
                    journal.breaker.success()  # a test of the line, not of the breaker
                    await asyncio.sleep(0.05)
                    continue
                break
            assert len(ids) == 1
            fresh = aioredis.Redis.from_url(redis.url)
            try:
                assert await fresh.xlen(journal.stream) == 1  # a new lifetime of the stream
            finally:
                await fresh.aclose()
        finally:
            await journal.close()
            await client.aclose()


async def test_concurrent_appends_each_get_their_own_ids(
    redis_client: Any, key_prefix: str
) -> None:
    journal = _journal(redis_client, key_prefix)
    own = AppendedRecords(100)
    hits = [_hit(f"2023 Topps Chrome Together #{i}") for i in range(20)]
    try:
        answers = await asyncio.gather(*(journal.append([hit], own) for hit in hits))
    finally:
        await journal.close()
    ids = [one for answer in answers for one in answer]
    assert len(set(ids)) == len(hits)
    for hit, answer in zip(hits, answers, strict=True):
        assert own.get(journal.generation, answer[0]) is hit
