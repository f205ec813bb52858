"""Sealed journal entries: another worker with the secret writes them without validating again.

An entry is rebuilt on trust only when its seal checks under the reader's secret, for
this stream and this kind, under the journal's own key; anything else (no seal, another
secret, a hot-tier value, a tampered or cut entry) is validated in full, as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

import kuya_store as ks
from kuya_store.keys import KEY_VERSION, ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.stored import CorruptEntryError, ValueSeal, unseal
from kuya_store.tiers.journal import Journal, RecordSeal, decode_record, encode_record
from kuya_store.tiers.redis import RedisTier
from records import fetch_record, hit_of
from test_durable_writes import (
    _foreign_append,
    _foreign_appends,
    _journal_written,
    _scalar,
    _stream,
    _until,
    _wait_for_rows,
    _wipe,
    _written,
)
from test_trusted_decode import _json_scalar, _moments, _results, _same, _snapshots, _text

SECRET = "journal-seal-secret-5e0b7c2d9a4f18e3"
OTHER_SECRET = "another-journal-secret-c41a9e07b2d6"
STREAM = "kuya:v1:journal:{journal}"
NOW = datetime(2026, 12, 1, 9, 15, 30, 250000, tzinfo=UTC)

Record = SearchRecord | FetchRecord


# -- the trusted rebuild is validation's result ---------------------------------------------

_searches = st.builds(
    SearchRecord,
    query=_text,
    card_identifier=_text,
    search_type=st.sampled_from(list(ks.SearchType)),
    filters=st.dictionaries(
        st.sampled_from(["raw_only", "base_only", "exclude_auto"]), st.booleans()
    ),
    params=st.dictionaries(_text, _json_scalar, max_size=3),
    created_at=_moments,
    execution_time_ms=st.integers(0, 10**6),
    cache_hit=st.booleans(),
    pages_scraped=st.none() | st.integers(0, 100),
    items_count=st.none() | st.integers(0, 10_000),
    user_id=st.none() | st.integers(1, 2**31),
    result_key=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    fetch_stats=st.none() | st.dictionaries(_text, st.integers(0, 10_000), max_size=3),
    complete=st.none() | st.booleans(),
    trace=st.none() | st.lists(st.integers(0, 2**63 - 1), max_size=4),
    record_key=st.uuids().map(lambda u: u.hex),
)
_fetches = st.builds(
    FetchRecord,
    search=_searches,
    result=_results,
    listing_ttl=_moments,
    snapshot=_snapshots,
)


def _alike(fast: Any, full: Any, where: str = "record") -> None:
    """Equal, and of the same types all the way down, the records' own fields included."""
    assert type(fast) is type(full), where
    if isinstance(full, SearchRecord | FetchRecord):
        for field in dataclasses.fields(full):
            _alike(getattr(fast, field.name), getattr(full, field.name), f"{where}.{field.name}")
    elif isinstance(full, list):
        assert len(fast) == len(full), where
        for n, (a, b) in enumerate(zip(fast, full, strict=True)):
            _alike(a, b, f"{where}[{n}]")
    else:
        _same(fast, full, where)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_searches, _fetches))
def test_the_trusted_rebuild_is_what_validation_builds(record: Record) -> None:
    seal = RecordSeal(SECRET.encode(), STREAM)
    raw = seal.seal(record)
    fast, trusted = seal.open(raw)
    full = decode_record(raw)
    assert trusted and full is not None
    _alike(fast, full)
    assert fast == full == record
    assert encode_record(fast) == encode_record(full)  # type: ignore[arg-type]
    if isinstance(fast, FetchRecord):
        assert fast.result.fetched_at.tzinfo is UTC


def test_money_moments_and_display_data_come_back_exact() -> None:
    record = _fetch()
    fast, trusted = RecordSeal(SECRET.encode(), STREAM).open(
        RecordSeal(SECRET.encode(), STREAM).seal(record)
    )
    assert trusted and isinstance(fast, FetchRecord)
    listing = fast.result.listings[0]
    assert type(listing.price) is Decimal and listing.price.as_tuple() == Decimal("0.50").as_tuple()
    assert listing.extra == {"image": "https://img.example/0.jpg", "tags": ["psa", 10]}
    assert fast.search.created_at.utcoffset() == timedelta(hours=5, minutes=30)
    assert fast.result.listings[1].sold_date is None and fast.search.user_id is None
    assert fast.snapshot is not None and type(fast.snapshot.market_value) is Decimal


# -- records and entries --------------------------------------------------------------------


def _fetch(query: str = "2023 Topps Chrome Sealed #1") -> FetchRecord:
    listings = [
        ks.Listing(
            item_id=f"seal-{i}",
            title=f"{query} #{i}",
            price=Decimal(f"{i}.50"),
            sold=True,
            sold_date=NOW - timedelta(days=1) if i % 2 == 0 else None,
            extra={"image": f"https://img.example/{i}.jpg", "tags": ["psa", 10]},
        )
        for i in range(4)
    ]
    return fetch_record(
        query,
        NOW,
        listings,
        "1.50",
        params={"pages": 1},
        filters={"raw_only": False, "base_only": False, "exclude_auto": True},
        created_at=NOW.astimezone(timezone(timedelta(hours=5, minutes=30))),
        execution_time_ms=9,
        result_key="c" * 64,
    )


def _pair(query: str = "2023 Topps Chrome Sealed #1") -> list[Record]:
    fetch = _fetch(query)
    return [fetch, hit_of(fetch.search, NOW + timedelta(minutes=1))]


JournalFor = Callable[..., tuple[Journal, Metrics]]


@pytest.fixture
async def journal_for(redis_client: Any, key_prefix: str) -> AsyncIterator[JournalFor]:
    made: list[Journal] = []

    def make(secret: str | None = SECRET, prefix: str = key_prefix) -> tuple[Journal, Metrics]:
        metrics = Metrics()
        settings = ks.StoreSettings(key_prefix=prefix, hot_tier_secret=secret)
        journal = Journal(redis_client, settings, metrics)
        made.append(journal)
        return journal, metrics

    yield make
    for journal in made:
        await journal.close()


def _counters(metrics: Metrics) -> tuple[int, int]:
    counters = metrics.snapshot()["counters"]
    return counters.get("journal_trusted", 0), counters.get("journal_decoded", 0)


async def _raw_entries(client: Any, prefix: str) -> list[bytes]:
    return [fields[b"r"] for _, fields in await client.xrange(_stream(prefix))]


# -- across workers, on the database ----------------------------------------------------------


async def test_entries_another_worker_appended_are_written_on_trust_as_validated_ones(
    migrated_url: str, redis_url: str, key_prefix: str, redis_client: Any, journal_for: JournalFor
) -> None:
    records = _pair()
    appender, _ = journal_for(SECRET)  # another worker's journal: it appends, never reads
    sealed = await _journal_written(
        migrated_url,
        redis_url,
        key_prefix,
        lambda: appender.append(records),
        hot_tier_secret=SECRET,
    )
    assert (sealed["trusted"], sealed["decoded"], sealed["held"]) == (2, 0, 0)
    on_trust = await _written(migrated_url)
    assert len(on_trust["searches"]) == 2 and len(on_trust["links"]) == 4
    assert [row["item_id"] for row in on_trust["listings"]] == [f"seal-{i}" for i in range(4)]

    # The very same entries as an older release appends them: validated, then written.
    await _wipe(migrated_url)
    other = f"{key_prefix}b"
    entries = [encode_record(record) for record in records]
    validated = await _journal_written(
        migrated_url,
        redis_url,
        other,
        lambda: _foreign_appends(redis_client, other, entries),
        hot_tier_secret=SECRET,
    )
    assert (validated["trusted"], validated["decoded"]) == (0, 2)
    assert await _written(migrated_url) == on_trust


async def test_a_tampered_entry_under_a_copied_seal_is_never_written(
    migrated_url: str, redis_url: str, key_prefix: str, redis_client: Any, journal_for: JournalFor
) -> None:
    appender, _ = journal_for(SECRET)
    fetch = _fetch("2023 Topps Chrome Tampered #1")
    await appender.append([fetch])
    [sealed] = await _raw_entries(redis_client, key_prefix)
    # Another record_key (so it is no replay) and a negative price, the seal copied as it was.
    forged = sealed.replace(fetch.search.record_key.encode(), b"f" * 32).replace(
        b'"price":"1.50"', b'"price":"-1.50"'
    )
    assert forged.count(b"-1.50") == 1 and forged.endswith(sealed[-90:])
    await _foreign_append(redis_client, key_prefix, forged)
    async with ks.CompsStore(
        database_url=migrated_url,
        redis_url=redis_url,
        key_prefix=key_prefix,
        hot_tier_secret=SECRET,
    ) as store:
        await store.start()
        await _wait_for_rows(migrated_url, 1, within=30)
        await _until(lambda: store.metrics()["journal"]["acked"] == 2, within=30)
        seen = store.metrics()["journal"]
    assert (seen["trusted"], seen["decoded"], seen["corrupt"]) == (1, 1, 1)
    written = await _written(migrated_url)
    assert [row["record_key"] for row in written["searches"]] == [fetch.search.record_key]
    assert len(written["listings"]) == 4
    assert await _scalar(migrated_url, "SELECT count(*) FROM listing_cache WHERE price < 0") == 0


# -- what is not trusted ----------------------------------------------------------------------


async def test_another_secret_or_none_is_validated_in_full(
    redis_client: Any, journal_for: JournalFor
) -> None:
    records = _pair()
    for writer_secret, reader_secret in ((SECRET, OTHER_SECRET), (None, None), (SECRET, None)):
        prefix = f"seal-{uuid.uuid4().hex[:8]}"
        appender, _ = journal_for(writer_secret, prefix)
        reader, metrics = journal_for(reader_secret, prefix)
        await appender.append(records)
        entries = await reader.read(10)
        assert [e.record for e in entries] == records
        assert _counters(metrics) == (0, 2), (writer_secret, reader_secret)


async def test_without_a_secret_a_worker_trusts_its_own_entries_only(
    journal_for: JournalFor, key_prefix: str
) -> None:
    journal, metrics = journal_for(None)
    records = _pair()
    await journal.append(records)  # not held: read back from the stream's bytes
    entries = await journal.read(10)
    assert [e.record for e in entries] == records
    assert entries[0].record is not records[0]
    assert _counters(metrics) == (2, 0)


async def test_a_hot_tier_value_planted_in_the_journal_is_not_trusted(
    redis_url: str, key_prefix: str, redis_client: Any, journal_for: JournalFor
) -> None:
    fetch = _fetch("2023 Topps Chrome Planted #1")
    tier = RedisTier(
        ks.StoreSettings(redis_url=redis_url, key_prefix=key_prefix, hot_tier_secret=SECRET),
        Metrics(),
    )
    try:
        identity = ResultIdentity.of("planted", ks.SearchType.SOLD, {})
        # A write that timed out on a loaded machine counts as Redis down (nothing refused
        # it): write again until the value is there.
        value = None
        for _ in range(5):
            assert await tier.set(identity, fetch.result, timedelta(minutes=5))
            value = await redis_client.get(identity.redis_key(key_prefix))
            if value is not None:
                break
    finally:
        await tier.close()
    assert value is not None
    reader, metrics = journal_for(SECRET)
    await reader.ensure_group()
    # A hot-tier value as it is, and a journal entry sealed with the hot tier's key.
    hot_seal = ValueSeal(SECRET.encode())
    entry = encode_record(fetch)
    for name in (f"fetch\x00{reader.stream}", reader.stream, identity.redis_key(key_prefix)):
        await _foreign_append(redis_client, key_prefix, hot_seal.seal(name, entry))
    await _foreign_append(redis_client, key_prefix, value)
    entries = await reader.read(10)
    assert [e.record for e in entries] == [fetch, fetch, fetch, None]
    assert _counters(metrics) == (0, 4)


def test_a_journal_entry_is_no_hot_tier_value() -> None:
    fetch = _fetch()
    raw = RecordSeal(SECRET.encode(), STREAM).seal(fetch)
    hot_seal = ValueSeal(SECRET.encode())
    assert not hot_seal.sealed(STREAM, raw) and not hot_seal.sealed(f"fetch\x00{STREAM}", raw)
    with pytest.raises(CorruptEntryError):
        unseal(raw, f"fetch\x00{STREAM}", hot_seal)


def test_an_entry_of_another_stream_or_kind_is_validated() -> None:
    fetch, hit = _pair()
    mine, theirs = RecordSeal(SECRET.encode(), STREAM), RecordSeal(SECRET.encode(), "x:v1:j")
    assert mine.open(theirs.seal(fetch)) == (fetch, False)
    assert mine.open(mine.seal(fetch)) == (fetch, True)
    # Tagged with the journal's key, but for the other kind than its head names.
    for record, other in ((fetch, "search"), (hit, "fetch")):
        raw = mine._seal.seal(f"{other}\x00{STREAM}", encode_record(record))
        assert mine.open(raw) == (record, False)


def test_an_unsealed_entry_of_an_older_release_decodes_as_before() -> None:
    seal = RecordSeal(SECRET.encode(), STREAM)
    for record in _pair():
        kind = "fetch" if isinstance(record, FetchRecord) else "search"
        body = TypeAdapter(type(record)).dump_python(record, mode="json")
        older = json.dumps({"v": KEY_VERSION, "kind": kind, "record": body}).encode()
        assert seal.open(older) == (record, False)
        assert seal.open(encode_record(record)) == (record, False)
        # A sealed entry still reads for a release that ignores the seal.
        assert decode_record(seal.seal(record)) == record


def test_a_truncated_or_cut_entry_is_refused() -> None:
    seal = RecordSeal(SECRET.encode(), STREAM)
    fetch = _fetch()
    raw = seal.seal(fetch)
    for cut in (raw[:-1], raw[:-2], raw[: len(raw) // 2], raw[:-90] + b"}", b"", b"{}"):
        assert seal.open(cut) == (None, False)
    # Without its seal's tail (cut where the seal begins), it is an unsealed entry.
    assert seal.open(raw[: raw.rindex(b',"mac":')] + b"}") == (fetch, False)


def test_a_sealed_entry_this_release_does_not_rebuild_is_validated() -> None:
    """Same secret, other models: a naive moment or money as a number goes to validation."""
    fetch = _fetch()
    seal = RecordSeal(SECRET.encode(), STREAM)
    name = f"fetch\x00{STREAM}"
    entry = encode_record(fetch)
    naive = entry.replace(
        b'"listing_ttl":"2026-12-02T09:15:30.250000Z"',
        b'"listing_ttl":"2026-12-02T09:15:30.250000"',
    )
    number = entry.replace(b'"price":"1.50"', b'"price":1.5')
    extra_member = entry.replace(b'"listing_ttl":', b'"later":1,"listing_ttl":')
    for body in (naive, number, extra_member):
        assert body != entry
        record, trusted = seal.open(seal._seal.seal(name, body))
        assert not trusted
        assert record == decode_record(body)
    assert decode_record(number) == fetch


async def test_entries_claimed_from_a_dead_worker_are_taken_on_trust(
    redis_client: Any, key_prefix: str
) -> None:
    def journal(secret: str) -> tuple[Journal, Metrics]:
        metrics = Metrics()
        settings = ks.StoreSettings(
            key_prefix=key_prefix,
            hot_tier_secret=secret,
            write_flush_interval=timedelta(milliseconds=50),
            journal_claim_idle=timedelta(milliseconds=100),
        )
        return Journal(redis_client, settings, metrics), metrics

    records = _pair("2023 Topps Chrome Claimed #1")
    dead, _ = journal(SECRET)
    await dead.append(records)
    assert len(await dead.read(10)) == 2  # delivered to it, never acknowledged
    for secret, counted in ((OTHER_SECRET, (0, 2)), (SECRET, (2, 0))):
        survivor, metrics = journal(secret)
        claimed: list[Any] = []
        for _ in range(100):
            claimed += await survivor.claim(10, set())
            if len(claimed) == 2:
                break
            await asyncio.sleep(0.05)
        assert [e.record for e in claimed] == records
        assert _counters(metrics) == counted, secret


_SEAL_IN_ANOTHER_PROCESS = textwrap.dedent(
    """
    import sys
    from kuya_store.tiers.journal import RecordSeal, encode_record
    import kuya_store as ks
    from kuya_store.persistence import SearchRecord
    from datetime import datetime, UTC

    record = SearchRecord(
        query="q", card_identifier="q", search_type=ks.SearchType.SOLD, filters={},
        params={}, created_at=datetime(2026, 1, 1, tzinfo=UTC), execution_time_ms=1,
        cache_hit=True, record_key="0" * 32,
    )
    sys.stdout.buffer.write(RecordSeal(sys.argv[1].encode(), sys.argv[2]).seal(record))
    """
)


async def test_another_interpreter_with_the_secret_seals_alike() -> None:
    """Its own hash seed and its own schema build: the same key, so its entries are trusted."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(ks.__file__).parents[1]),
        "PYTHONHASHSEED": "random",
    }
    args = [sys.executable, "-c", _SEAL_IN_ANOTHER_PROCESS, SECRET, STREAM]
    done = await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    record, trusted = RecordSeal(SECRET.encode(), STREAM).open(done.stdout)
    assert trusted and isinstance(record, SearchRecord) and record.record_key == "0" * 32
