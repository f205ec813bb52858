"""Every worker's near-cache stays coherent: changes anywhere drop it, invalidate is a barrier.

The bookkeeping is tested without servers; the listener against a real Redis, between
stores in one process and between worker processes (tests/peers.py).
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import kuya_store as ks
from coherent import cache_only_store as _store
from coherent import coherent as _coherent
from coherent import coherent_pair as _pair
from coherent import until as _until
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity, changed_key, tracked_prefixes
from kuya_store.stored import StoredResult
from kuya_store.tiers.memory import MemoryTier
from kuya_store.tiers.near import NearCache

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
QUERY = "2023 Topps Chrome Victor Wembanyama #1"
PEERS = Path(__file__).with_name("peers.py")


def _result(card: str, at: datetime = NOW) -> StoredResult:
    return StoredResult(
        query=card,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        params={},
        listings=[ks.Listing(item_id="1", title=card, price=Decimal("1.00"), sold=True)],
        fetched_at=at,
    )


def _identity(card: str) -> ResultIdentity:
    return ResultIdentity.of(card, ks.SearchType.SOLD, {})


def _near(clock: ks.ManualClock) -> NearCache:
    return NearCache(MemoryTier(100, clock), timedelta(seconds=5))


# -- the bookkeeping, without servers ---------------------------------------------------


async def test_a_fill_overtaken_by_a_change_of_its_card_is_refused() -> None:
    near = _near(ks.ManualClock(NOW))
    wemby = _identity("wemby")
    ticket = near.ticket(wemby)
    near.changed(wemby.card_key)  # heard while the hot-tier read was under way
    assert await near.set(wemby, _result("wemby"), timedelta(minutes=5), ticket) is False
    assert await near.get(wemby) is None and near.refused_fills == 1
    assert await near.set(wemby, _result("wemby"), timedelta(minutes=5), near.ticket(wemby))
    assert await near.get(wemby) is not None


async def test_a_flush_refuses_every_fill_that_began_before_it() -> None:
    near = _near(ks.ManualClock(NOW))
    tickets = {card: near.ticket(_identity(card)) for card in ("a", "b")}
    await near.set(_identity("c"), _result("c"), timedelta(minutes=5), near.ticket(_identity("c")))
    near.flush()
    assert len(near) == 0
    for card, ticket in tickets.items():
        assert await near.set(_identity(card), _result(card), timedelta(minutes=5), ticket) is False


async def test_a_change_drops_the_one_variant_or_every_variant_of_the_card() -> None:
    near = _near(ks.ManualClock(NOW))
    variants = [ResultIdentity.of("wemby", ks.SearchType.SOLD, {"pages": p}) for p in (1, 2, 3)]
    for variant in variants:
        await near.set(variant, _result("wemby"), timedelta(minutes=5))
    near.changed(variants[0].card_key, variants[0].result_key)
    assert [await near.get(v) is None for v in variants] == [True, False, False]
    near.changed(variants[0].card_key)  # a fence: the whole card
    assert len(near) == 0


async def test_entries_live_as_long_as_the_hot_tier_value_only_while_coherent() -> None:
    clock = ks.ManualClock(NOW)
    near = _near(clock)
    await near.set(_identity("short"), _result("short"), timedelta(minutes=30))
    near.heard_everything(True)
    await near.set(_identity("long"), _result("long"), timedelta(minutes=30))
    clock.advance(60)
    assert await near.get(_identity("short")) is None  # near_cache_ttl while not coherent
    assert await near.get(_identity("long")) is not None
    near.heard_everything(False)  # the connection dropped: everything goes
    assert len(near) == 0 and near.coherent is False


def test_changed_keys_name_the_card_and_result_of_this_layout_only() -> None:
    identity = ResultIdentity.of_query("Ohtani -auto", ks.SearchType.SOLD, {"pages": 2})
    value, fence = identity.redis_key("kuya"), identity.redis_fence_key("kuya")
    assert changed_key("kuya", value) == ("r", identity.card_key, identity.result_key)
    assert changed_key("kuya", fence) == ("g", identity.card_key, None)
    assert all(key.startswith(tracked_prefixes("kuya")) for key in (value, fence))
    for other in (
        identity.redis_lock_key("kuya"),
        identity.redis_stamp_key("kuya"),
        identity.redis_index_key("kuya"),
        value.replace("kuya:", "other:", 1),
        f"kuya:v1:r:sold:{identity.result_key}",  # the layout before hash tags
        "kuya:v1:r:{unclosed",
        "kuya:v1:g:{}",
    ):
        assert changed_key("kuya", other) is None, other


# -- the listener, against a real Redis -------------------------------------------------


async def test_a_change_in_one_store_drops_the_copy_of_another(
    redis_url: str, key_prefix: str
) -> None:
    market = FakeMarketplace(listings=5)
    async with _pair(redis_url, key_prefix, market) as (one, two):
        await one.comps.search(QUERY)
        assert (await two.comps.search(QUERY)).source == "redis"
        old = await two.comps.search(QUERY)
        assert old.source == "memory"
        newer = await one.comps.search(QUERY, refresh=True)
        assert newer.fetched_at > old.fetched_at
        near = two._near
        assert near is not None
        await _until(lambda: len(near) == 0)  # dropped when the change was heard
        again = await two.comps.search(QUERY)
        assert again.source == "redis" and again.fetched_at == newer.fetched_at
        # A coherent entry outlives near_cache_ttl: it lives as long as the Redis value.
        assert (await two.comps.search(QUERY)).source == "memory"


def test_coherence_runs_on_uvloop(redis_url: str, key_prefix: str) -> None:
    # ``uvicorn --loop uvloop`` (its default with uvicorn[standard]) runs the app on uvloop,
    # whose transports are not ``asyncio.Transport``: the listener must start there too.
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        market = FakeMarketplace(listings=5)
        async with _pair(redis_url, key_prefix, market) as (one, two):
            await one.comps.search(QUERY)
            await two.comps.search(QUERY)
            assert (await two.comps.search(QUERY)).source == "memory"
            await one.comps.invalidate(QUERY, "sold")
            near = two._near
            assert near is not None
            await _until(lambda: len(near) == 0)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


async def test_a_dropped_invalidation_connection_flushes_the_near_cache(
    redis_url: str, key_prefix: str, redis_client: Any
) -> None:
    market = FakeMarketplace(listings=5)
    async with _store(redis_url, key_prefix, market) as store:
        await _until(lambda: _coherent(store))
        await store.comps.search(QUERY)
        assert (await store.comps.search(QUERY)).source == "memory"
        near, listener = store._near, store._listener
        assert near is not None and listener is not None
        tracking_id = listener._connections[0].client_id
        await redis_client.execute_command("CLIENT", "KILL", "ID", str(tracking_id))
        await _until(lambda: not near.coherent or near.flushes >= 2)
        assert len(near) == 0  # what changed meanwhile is unknown: everything went
        assert (await store.comps.search(QUERY)).source == "redis"
        await _until(lambda: _coherent(store))  # and it connects again by itself
        assert store.metrics()["coherence"]["drops"] >= 1
        assert listener._connections[0].client_id != tracking_id


async def test_flushdb_empties_every_near_cache(redis_url: str, key_prefix: str) -> None:
    from redis import asyncio as aioredis

    market = FakeMarketplace(listings=5)
    async with _store(redis_url, key_prefix, market) as store:
        await _until(lambda: _coherent(store))
        await store.comps.search(QUERY)
        await store.comps.search(QUERY)
        near = store._near
        assert near is not None and len(near) == 1
        # FLUSHDB on the store's own database (another test's Redis database is not ours).
        scratch = aioredis.Redis.from_url(redis_url)
        try:
            await scratch.set(f"{key_prefix}:noise", 1)
            await scratch.execute_command("FLUSHDB", "SYNC")
        finally:
            await scratch.aclose()
        await _until(lambda: len(near) == 0)
        assert _coherent(store)


async def test_without_coherence_entries_keep_the_short_ttl(
    redis_url: str, key_prefix: str
) -> None:
    market = FakeMarketplace(listings=5)
    async with _store(redis_url, key_prefix, market, near_cache_coherence=False) as store:
        assert store._listener is None
        await store.comps.search(QUERY)
        near = store._near
        assert near is not None and not near.coherent
        entry = next(iter(near.memory._entries.values()))
        assert entry.expires_at - datetime.now(UTC) <= store.settings.near_cache_ttl


# -- between worker processes -----------------------------------------------------------


class _Peer:
    """One worker process (tests/peers.py), commanded line by line."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(PEERS), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._held: list[dict[str, Any]] = []
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(json.loads(line))

    def send(self, op: str, **args: Any) -> int:
        self._next += 1
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"id": self._next, "op": op, **args}) + "\n")
        self._proc.stdin.flush()
        return self._next

    def reply(self, ident: int, timeout: float = 60.0, done: bool = False) -> dict[str, Any]:
        while True:
            for message in self._held:
                if message["id"] == ident and bool(message.get("done")) == done:
                    self._held.remove(message)
                    return message
            try:
                self._held.append(self._lines.get(timeout=timeout))
            except queue.Empty:
                assert self._proc.stderr is not None
                raise AssertionError(f"no answer from a peer: {self._proc.stderr.read()}") from None

    def __call__(self, op: str, **args: Any) -> dict[str, Any]:
        return self.reply(self.send(op, **args))

    def search(self, refresh: bool = False) -> dict[str, Any]:
        return self("search", query=QUERY, refresh=refresh)

    def close(self) -> None:
        if self._proc.poll() is None:
            self.send("quit")
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()


@pytest.fixture
def peers(redis_url: str, key_prefix: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[_Peer] = []

    def start(count: int, **config: Any) -> list[_Peer]:
        config = {"redis_url": redis_url, "key_prefix": key_prefix, "near_cache_ttl": 600, **config}
        config.setdefault("database_url", "sqlite+aiosqlite://")
        config.setdefault("mode", "cache_only")
        fresh = [_Peer(config) for _ in range(count)]
        started.extend(fresh)
        for peer in fresh:
            assert peer("ready", timeout=60)["coherent"]
        return fresh

    yield start
    for peer in started:
        peer.close()


def test_every_process_answers_the_new_data_after_another_changes_it(peers: Any) -> None:
    workers = peers(4)  # a gunicorn host's usual four workers
    first = workers[0].search()
    assert first["source"] == "api"
    for worker in workers[1:]:
        assert worker.search()["source"] == "redis"
        assert worker.search()["source"] == "memory"  # each holds its own copy now
    newer = workers[-1].search(refresh=True)
    assert newer["source"] == "api" and newer["fetched_at"] > first["fetched_at"]
    for worker in workers[:-1]:
        # Copies would live ten minutes here (near_cache_ttl): only the change drops them.
        for _ in range(500):
            answer = worker.search()
            if answer["fetched_at"] == newer["fetched_at"]:
                break
            time.sleep(0.01)
        assert answer["fetched_at"] == newer["fetched_at"], answer
    invalidated = workers[0]("invalidate", query=QUERY)
    assert invalidated["complete"]
    for worker in workers[1:]:
        # A barrier: the very next search anywhere does not see the invalidated result.
        answer = worker.search()
        assert answer["source"] == "api" and answer["fetched_at"] > newer["fetched_at"], answer
        break  # one refetch is enough: it fills Redis again for the others


async def _rows(url: str, sql: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(sa.text(sql))).all())
    finally:
        await engine.dispose()


def test_a_fetch_in_flight_in_another_process_cannot_write_back_after_invalidate(
    peers: Any, postgres_url: str
) -> None:
    from kuya_store import migrations

    asyncio.run(migrations.upgrade_async(postgres_url))
    fetching, invalidating = peers(2, database_url=postgres_url, mode="read_through")
    fetching("slow", seconds=1.5)
    pending = fetching.send("search_bg", query=QUERY)
    assert fetching.reply(pending)["started"]  # the fetcher was called: the data is older
    assert invalidating("invalidate", query=QUERY)["complete"]
    landed = fetching.reply(pending, done=True)  # its own waiters still get their answer
    assert landed["source"] == "api"
    fetching("slow", seconds=0)
    for worker in (fetching, invalidating, fetching):
        answer = worker.search()
        # Neither the near-cache, Redis nor the database answers with the fenced-off fetch.
        assert answer["fetched_at"] > landed["fetched_at"], answer
    fetching("flush")
    invalidating("flush")
    attached = asyncio.run(
        _rows(
            postgres_url,
            "SELECT created_at FROM searches WHERE result_key IS NOT NULL AND NOT cache_hit",
        )
    )
    assert attached and all(
        row[0] > datetime.fromisoformat(landed["fetched_at"]) for row in attached
    ), attached
