"""A worker's own write keeps its near-cache copy; every other change still evicts it.

The ledger of writes in flight is tested without servers; the witness that tells an echo
apart, against a real Redis (one server, Sentinel and Cluster), between stores in one
process standing for workers.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import kuya_store as ks
from coherent import cache_only_store as _store
from coherent import coherent as _coherent
from coherent import coherent_pair as _pair
from coherent import until as _until
from kuya_store.demo import FakeMarketplace
from kuya_store.keys import ResultIdentity, changed_key, witness_key
from kuya_store.stored import StoredResult, decode
from kuya_store.testing.servers import RedisServer
from kuya_store.tiers.memory import MemoryTier
from kuya_store.tiers.near import EchoLedger, NearCache
from records import result_of

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
QUERY = "2023 Topps Chrome Victor Wembanyama #1"
TTL = timedelta(minutes=5)
SOLD = ks.SearchType.SOLD


def _result(card: str, at: datetime = NOW, price: str = "1.00") -> StoredResult:
    return result_of(card, at, price)


def _identity(card: str) -> ResultIdentity:
    return ResultIdentity.of(card, SOLD, {})


def _near() -> NearCache:
    near = NearCache(MemoryTier(100, ks.ManualClock(NOW)), timedelta(seconds=5))
    near.heard_everything(True)
    return near


async def _write(
    near: NearCache, identity: ResultIdentity, result: StoredResult, echo_first: bool
) -> bool:
    """What the store does around its own written write, echo heard before or after the reply."""
    ticket = near.ticket(identity, own_write=True)
    name = near.echoes.expect(identity.card_key, identity.result_key, result.fetched_at)
    assert name is not None
    if echo_first:
        near.value_changed(identity.card_key, identity.result_key, [name])
    near.settled(name, identity.card_key, identity.result_key, written=True)
    kept = await near.set(identity, result, TTL, ticket)
    if not echo_first:
        near.value_changed(identity.card_key, identity.result_key, [name])
    return kept


# -- the ledger, without servers --------------------------------------------------------


@pytest.mark.parametrize("echo_first", [True, False])
async def test_the_echo_of_a_written_write_keeps_its_copy(echo_first: bool) -> None:
    near = _near()
    wemby = _identity("wemby")
    await near.set(wemby, _result("wemby", NOW - timedelta(minutes=1)), TTL)  # an older copy
    assert await _write(near, wemby, _result("wemby"), echo_first)
    held = await near.get(wemby)
    assert held is not None and held.fetched_at == NOW
    assert len(near.echoes) == 0


async def test_an_echo_refuses_a_read_begun_before_it() -> None:
    # A read sent before the write may come back with the value the write replaced.
    near = _near()
    wemby = _identity("wemby")
    read = near.ticket(wemby)
    ticket = near.ticket(wemby, own_write=True)
    name = near.echoes.expect(wemby.card_key, wemby.result_key, NOW)
    assert name is not None
    near.value_changed(wemby.card_key, wemby.result_key, [name])
    assert await near.set(wemby, _result("wemby", NOW - timedelta(minutes=1)), TTL, read) is False
    near.settled(name, wemby.card_key, wemby.result_key, written=True)
    assert await near.set(wemby, _result("wemby"), TTL, ticket)


@pytest.mark.parametrize("witnesses", [[], ["other-worker-1"], ["mine", "other-worker-1"]])
@pytest.mark.parametrize("echo_first", [True, False])
async def test_another_change_of_the_value_evicts_even_beside_our_echo(
    witnesses: list[str], echo_first: bool
) -> None:
    near = _near()
    wemby = _identity("wemby")
    ticket = near.ticket(wemby, own_write=True)
    name = near.echoes.expect(wemby.card_key, wemby.result_key, NOW)
    assert name is not None
    heard = [name if w == "mine" else w for w in witnesses]
    if echo_first:
        assert near.value_changed(wemby.card_key, wemby.result_key, heard) == "change"
    near.settled(name, wemby.card_key, wemby.result_key, written=True)
    kept = await near.set(wemby, _result("wemby"), TTL, ticket)
    if not echo_first:
        assert near.value_changed(wemby.card_key, wemby.result_key, heard) == "change"
    assert kept is not echo_first  # refused when heard before, dropped when heard after
    assert await near.get(wemby) is None


@pytest.mark.parametrize("echo_heard", [True, False])
async def test_a_write_not_made_keeps_nothing_and_applies_what_was_heard(echo_heard: bool) -> None:
    near = _near()
    wemby = _identity("wemby")
    await near.set(wemby, _result("wemby", NOW - timedelta(minutes=1)), TTL)
    ticket = near.ticket(wemby, own_write=True)
    name = near.echoes.expect(wemby.card_key, wemby.result_key, NOW)
    assert name is not None
    if echo_heard:  # a failed or cancelled write may still have been made
        near.value_changed(wemby.card_key, wemby.result_key, [name])
    near.settled(name, wemby.card_key, wemby.result_key, written=False)
    assert len(near.echoes) == 0
    if echo_heard:
        assert await near.get(wemby) is None
        # What the store does after a failed write: it fills; the change refuses it.
        assert await near.set(wemby, _result("wemby"), TTL, ticket) is False
    # A late echo of a withdrawn write is a change like any other.
    assert near.value_changed(wemby.card_key, wemby.result_key, [name]) == "change"
    assert await near.get(wemby) is None


async def test_two_own_writes_of_one_value_keep_no_copy_through_their_echoes() -> None:
    # Which of the two Redis kept is not known here: neither fill may pass an echo.
    near = _near()
    wemby = _identity("wemby")
    results = [_result("wemby", NOW + timedelta(minutes=m)) for m in range(2)]
    tickets = [near.ticket(wemby, own_write=True) for _ in results]
    names = [near.echoes.expect(wemby.card_key, wemby.result_key, r.fetched_at) for r in results]
    assert None not in names
    near.value_changed(wemby.card_key, wemby.result_key, [n for n in names if n])
    for name in names:
        assert name is not None
        near.settled(name, wemby.card_key, wemby.result_key, written=True)
    for result, ticket in zip(results, tickets, strict=True):
        assert await near.set(wemby, result, TTL, ticket) is False
    assert len(near.echoes) == 0 and await near.get(wemby) is None


def test_a_witness_names_no_entry_and_an_anonymous_one_is_never_ours() -> None:
    key = ResultIdentity.of_query(QUERY, SOLD, {}).redis_key("kuya")
    named, anonymous = witness_key("kuya", key, "abc1"), witness_key("kuya", key)
    assert named.endswith(key[len("kuya:v1:r:") :]) and "{" in named
    assert changed_key("kuya", named) is None and changed_key("kuya", anonymous) is None
    ledger = EchoLedger()
    identity = ResultIdentity.of_query(QUERY, SOLD, {})
    ours = ledger.expect(identity.card_key, identity.result_key, datetime.now(UTC))
    assert ours is not None and "-" not in ours
    anonymous_name = anonymous[len("kuya:v1:r:#") :].partition(":")[0]
    assert ledger.heard(identity.card_key, identity.result_key, [ours, anonymous_name]) == "change"


def test_the_ledger_stays_bounded_and_forgets_only_what_is_safe_to() -> None:
    ledger = EchoLedger(limit=4)
    in_flight = [ledger.expect("card", f"r{i}", NOW) for i in range(3)]
    written = ledger.expect("card", "r3", NOW)
    assert written is not None and None not in in_flight
    ledger.settle(written, written=True)  # waits for its echo: may be forgotten
    assert ledger.expect("card", "r4", NOW) is not None and len(ledger) == 4
    assert ledger.expect("card", "r5", NOW) is None  # four in flight: the write goes unwitnessed
    # The forgotten write's echo is now another's change: its copy is evicted (safe).
    assert ledger.heard("card", "r3", [written]) == "change"
    for name in in_flight:
        assert name is not None and ledger.settle(name, written=False) is False
    assert len(ledger) == 1


async def test_a_flush_forgets_every_write_in_flight() -> None:
    near = _near()
    wemby = _identity("wemby")
    ticket = near.ticket(wemby, own_write=True)
    name = near.echoes.expect(wemby.card_key, wemby.result_key, NOW)
    assert name is not None
    near.heard_everything(False)  # the connection dropped: the echo will never come
    assert len(near.echoes) == 0
    near.settled(name, wemby.card_key, wemby.result_key, written=True)
    assert await near.set(wemby, _result("wemby"), TTL, ticket) is False


# -- against a real Redis ---------------------------------------------------------------


def _near_of(store: ks.CompsStore) -> NearCache:
    near = store._near
    assert near is not None
    return near


async def _settled(*stores: ks.CompsStore) -> None:
    """Until every write's echo has been heard."""
    await _until(lambda: all(len(_near_of(s).echoes) == 0 for s in stores))


_URLS = ["redis_base_url", "redis_sentinel_url", "redis_cluster_url"]


@pytest.mark.parametrize("url_fixture", _URLS)
async def test_a_fetched_card_is_answered_from_the_near_cache_next(
    url_fixture: str, key_prefix: str, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue(url_fixture)
    market = FakeMarketplace(listings=5)
    async with _store(redis_url, key_prefix, market) as store:
        await _until(lambda: _coherent(store))
        near = _near_of(store)
        identity = ResultIdentity.of_query(QUERY, SOLD, {})
        before = near.ticket(identity).changes
        assert (await store.comps.search(QUERY)).source == "api"
        await _until(lambda: near.ticket(identity).changes > before)  # its echo was heard
        reads = store.metrics()["tier_hits"]
        again = await store.comps.search(QUERY)
        assert again.source == "memory"
        after = store.metrics()["tier_hits"]
        assert after["memory"] == reads["memory"] + 1 and after["redis"] == reads["redis"]
        assert len(near.echoes) == 0


@pytest.mark.parametrize("url_fixture", _URLS)
async def test_another_workers_write_after_ours_drops_our_copy(
    url_fixture: str, key_prefix: str, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue(url_fixture)
    market = FakeMarketplace(listings=5)
    async with _pair(redis_url, key_prefix, market) as (one, two):
        ours = await one.comps.search(QUERY)
        await _settled(one)
        assert (await one.comps.search(QUERY)).source == "memory"
        newer = await two.comps.search(QUERY, refresh=True)
        assert newer.fetched_at > ours.fetched_at
        await _until(lambda: len(_near_of(one)) == 0)
        again = await one.comps.search(QUERY)
        assert again.source == "redis" and again.fetched_at == newer.fetched_at


async def test_racing_writes_of_two_workers_leave_no_stale_copy(
    redis_url: str, key_prefix: str
) -> None:
    # Ours then theirs, theirs then ours, in one pass of Redis' event loop or not, their
    # echo before or after our reply: our copy is either gone or the value Redis holds.
    market = FakeMarketplace(listings=5)
    rng = random.Random(7)
    async with _pair(redis_url, key_prefix, market) as (one, two):
        identity = _identity("race")
        base = datetime.now(UTC)
        for round_ in range(60):
            ours = _result("race", base + timedelta(milliseconds=2 * round_), "1.00")
            theirs = _result("race", ours.fetched_at + timedelta(milliseconds=rng.choice([-1, 1])))
            now = datetime.now(UTC)

            async def foreign(theirs: StoredResult = theirs, now: datetime = now) -> None:
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)
                await two.comps._fill(identity, theirs, now)

            await asyncio.gather(one.comps._fill(identity, ours, now), foreign())
            await _settled(one, two)
            held = await _near_of(one).get(identity)
            stored = await one._hot.get(identity)
            assert stored is not None
            assert held is None or held.fetched_at == stored.fetched_at, round_


@pytest.mark.parametrize("they_listen", [True, False], ids=["coherent", "not-listening"])
async def test_our_write_and_theirs_merged_in_one_message_drop_our_copy(
    redis_url: str, key_prefix: str, redis_client: Any, they_listen: bool
) -> None:
    # Redis reports a key changed twice in one pass of its event loop once: a count of
    # expected echoes would take their write for ours. Paused clients run in one pass.
    # A worker that hears no changes itself still names its write, anonymously.
    market = FakeMarketplace(listings=5)
    async with (
        _store(redis_url, key_prefix, market) as one,
        _store(redis_url, key_prefix, market, near_cache_coherence=they_listen) as two,
    ):
        await _until(lambda: _coherent(one) and (_coherent(two) or not they_listen))
        identity = _identity("merged")
        now = datetime.now(UTC)
        near = _near_of(one)
        heard: list[tuple[int, str]] = []
        value_changed = near.value_changed

        def spy(card_key: str, result_key: str, witnesses: list[str]) -> Any:
            verdict = value_changed(card_key, result_key, witnesses)
            heard.append((len(witnesses), verdict))
            return verdict

        # Loaded beforehand: a script Redis lacks is sent again, in a later pass.
        await one.comps._fill(_identity("warm-up"), _result("warm-up", now), now)
        await _settled(one)
        near.value_changed = spy  # type: ignore[method-assign]
        ours, theirs = _result("merged", now), _result("merged", now + timedelta(seconds=1))

        async def blocked() -> int:
            info = await redis_client.info("clients")
            return int(info["blocked_clients"])

        await redis_client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        try:
            writing = asyncio.create_task(one.comps._fill(identity, ours, now))
            for _ in range(1000):
                if await blocked() >= 1:
                    break
                await asyncio.sleep(0.01)
            foreign = asyncio.create_task(two.comps._fill(identity, theirs, now))
            for _ in range(1000):
                if await blocked() >= 2:
                    break
                await asyncio.sleep(0.01)
            assert await blocked() >= 2
        finally:
            await redis_client.execute_command("CLIENT", "UNPAUSE")
        await asyncio.gather(writing, foreign)
        await _settled(one, two)
        stored = await one._hot.get(identity)
        assert stored is not None and stored.fetched_at == theirs.fetched_at
        held = await near.get(identity)
        assert held is None or held.fetched_at == theirs.fetched_at
        assert heard == [(2, "change")]  # one message named both writes


async def test_a_refused_write_keeps_nothing_and_a_change_heard_meanwhile_applies(
    redis_url: str, key_prefix: str
) -> None:
    market = FakeMarketplace(listings=5)
    async with _pair(redis_url, key_prefix, market) as (one, two):
        identity = _identity("refused")
        now = datetime.now(UTC)
        first = _result("refused", now - timedelta(seconds=2))
        await one.comps._fill(identity, first, now)
        await _settled(one)
        assert await _near_of(one).get(identity) == first
        newer = _result("refused", now)
        await two.comps._fill(identity, newer, now)  # the stored value is newer now
        older = _result("refused", now - timedelta(seconds=1))
        await one.comps._fill(identity, older, now)  # refused by Redis
        await _settled(one, two)
        await _until(lambda: len(_near_of(one)) == 0)  # their change was applied
        assert await one._hot.get(identity) == newer


async def test_invalidate_elsewhere_drops_a_copy_kept_through_its_echo(
    redis_url: str, key_prefix: str
) -> None:
    market = FakeMarketplace(listings=5)
    async with _pair(redis_url, key_prefix, market) as (one, two):
        fetched = await one.comps.search(QUERY)
        await _settled(one)
        assert (await one.comps.search(QUERY)).source == "memory"
        assert (await two.comps.invalidate(QUERY, "sold")).complete
        assert len(_near_of(one)) == 0  # gone before invalidate() returned
        again = await one.comps.search(QUERY)
        assert again.source == "api" and again.fetched_at > fetched.fetched_at


async def test_a_killed_and_restarted_redis_leaves_no_copy_it_did_not_hold(
    key_prefix: str,
) -> None:
    market = FakeMarketplace(listings=5)
    with RedisServer() as redis:
        async with _store(
            redis.url, key_prefix, market, redis_socket_timeout=0.3, breaker_reset_after=0.2
        ) as store:
            await _until(lambda: _coherent(store))
            near = _near_of(store)
            await store.comps.search(QUERY)
            await _settled(store)
            assert (await store.comps.search(QUERY)).source == "memory"
            redis.kill()
            await _until(lambda: not near.coherent)
            assert len(near) == 0 and len(near.echoes) == 0
            # Writes that fail while it is down witness nothing and keep only short copies.
            for i in range(5):
                await store.comps.search(f"{QUERY} {i}")
            assert len(near.echoes) == 0
            redis.restart()  # empty
            await _until(lambda: _coherent(store), timeout=30)
            assert len(near) == 0
            fetched = await store.comps.search(f"{QUERY} after")
            await _settled(store)
            again = await store.comps.search(f"{QUERY} after")
            assert again.source == "memory" and again.fetched_at == fetched.fetched_at


async def test_many_concurrent_fetches_leave_the_ledger_empty_and_copies_right(
    redis_url: str, key_prefix: str, redis_client: Any
) -> None:
    market = FakeMarketplace(listings=5, latency=0.005)
    async with _pair(redis_url, key_prefix, market) as (one, two):
        queries = [f"{QUERY} {i}" for i in range(40)]
        searches = [s.comps.search(q) for q in queries for s in (one, two)]
        searches += [one.comps.search(QUERY) for _ in range(20)]
        searches += [two.comps.search(QUERY, refresh=True) for _ in range(3)]
        await asyncio.gather(*searches)
        # Own writes of one value racing each other, with different data.
        identity = _identity("own-race")
        now = datetime.now(UTC)
        await asyncio.gather(
            *[
                one.comps._fill(identity, _result("own-race", now - timedelta(seconds=i)), now)
                for i in range(10)
            ]
        )
        await _settled(one, two)
        assert len(_near_of(one).echoes) == 0 and len(_near_of(two).echoes) == 0
        for store in (one, two):
            near = _near_of(store)
            for query in [*queries, QUERY]:
                key = ResultIdentity.of_query(query, SOLD, {})
                held = await near.get(key)
                # Read apart from the stores: on a loaded machine their breakers may have
                # opened meanwhile, and a tier skipped reads nothing. A write that timed out
                # there leaves the fetched copy with nothing in Redis to contradict it.
                raw = await redis_client.get(key.redis_key(key_prefix))
                stored = decode(raw) if raw is not None else None
                assert held is None or stored is None or held == stored, query
                if store.metrics()["redis"]["errors"] == 0:
                    assert held is None or stored is not None, query
            held = await near.get(identity)
            assert held is None or held.fetched_at == now
