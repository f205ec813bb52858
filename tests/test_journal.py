"""The write journal's pure parts: script runs, the encoding, and what a process holds of its own."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import TypeAdapter

import kuya_store as ks
from kuya_store.keys import KEY_VERSION
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.stored import StoredResult
from kuya_store.tiers.journal import AppendedRecords, decode_record, encode_record, script_runs

AT = datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=UTC)


def _search(query: str = "Wembanyama é #1") -> SearchRecord:
    return SearchRecord(
        query=query,
        card_identifier="wembanyama 1",
        search_type=ks.SearchType.SOLD,
        filters={"raw_only": True},
        params={"pages": 2, "sort_by": "date_desc", "min": 1.5},
        created_at=AT,
        execution_time_ms=12,
        cache_hit=False,
        result_key="k" * 64,
        fetch_stats={"pages": 1},
        user_id=3,
    )


def _fetch() -> FetchRecord:
    result = StoredResult(
        query="Wembanyama #1",
        card_identifier="wembanyama 1",
        search_type=ks.SearchType.SOLD,
        params={"pages": 2},
        listings=[
            ks.Listing(item_id=str(i), title=f"Wemby #{i}", price=Decimal("10.10"), sold=True)
            for i in range(3)
        ],
        fetched_at=AT,
    )
    return FetchRecord(search=_search(), result=result, listing_ttl=AT)


# -- script runs ----------------------------------------------------------------------------


def _sizes(runs: list[list[bytes]]) -> list[int]:
    return [len(run) for run in runs]


def test_a_batch_is_split_by_count_and_kept_in_order() -> None:
    payloads = [str(i).encode() for i in range(250)]
    runs = script_runs(payloads, 100, 1 << 20)
    assert _sizes(runs) == [100, 100, 50]
    assert [p for run in runs for p in run] == payloads


def test_a_batch_is_split_by_bytes_and_a_large_record_runs_alone() -> None:
    small, large = b"x" * 100, b"y" * 5000
    runs = script_runs([small] * 5 + [large] + [small] * 3, 100, 450)
    assert _sizes(runs) == [4, 1, 1, 3]
    assert runs[2] == [large]
    assert all(sum(map(len, run)) <= 450 for run in runs if len(run) > 1)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_small_batches_are_one_run(count: int) -> None:
    runs = script_runs([b"r"] * count, 100, 1 << 20)
    assert _sizes(runs) == ([count] if count else [])


# -- the encoding ---------------------------------------------------------------------------


def _as_before(record: SearchRecord | FetchRecord) -> bytes:
    """An entry as earlier versions wrote it (json.dumps of the dumped record)."""
    kind = "fetch" if isinstance(record, FetchRecord) else "search"
    adapter: TypeAdapter[object] = TypeAdapter(type(record))
    body = adapter.dump_python(record, mode="json")
    return json.dumps({"v": KEY_VERSION, "kind": kind, "record": body}).encode()


@pytest.mark.parametrize("make", [_search, _fetch])
def test_entries_read_the_same_by_every_version(make: object) -> None:
    record = make()  # type: ignore[operator]
    new, old = encode_record(record), _as_before(record)
    # An older worker reads a new entry: the same members but the process-local trace,
    # which it reads as absent (``None``) as it always did.
    expected = json.loads(old)
    body = expected["record"]
    body.get("search", body).pop("trace")
    assert json.loads(new) == expected
    assert decode_record(new) == record
    assert decode_record(old) == record  # entries already on the stream still decode


def test_money_stays_text_and_moments_keep_their_zone() -> None:
    body = json.loads(encode_record(_fetch()))["record"]
    assert body["result"]["listings"][0]["price"] == "10.10"
    assert body["search"]["created_at"] == "2026-12-01T12:30:15.123456Z"
    back = decode_record(encode_record(_fetch()))
    assert isinstance(back, FetchRecord)
    assert back.result.listings[0].price == Decimal("10.10")
    assert back.search.created_at.tzinfo is not None


# -- what a process holds of its own appends ------------------------------------------------


def _held(limit: int, count: int, generation: int = 1) -> tuple[AppendedRecords, list[str]]:
    own = AppendedRecords(limit)
    ids = [f"1000-{i}" for i in range(count)]
    own.add(generation, ids, [_search(f"q{i}") for i in range(count)])
    return own, ids


def test_held_records_are_found_only_by_their_id_in_their_lifetime_of_the_stream() -> None:
    own = AppendedRecords(10)
    record = _search()
    own.add(1, ["1000-0"], [record])
    assert own.get(1, "1000-0") is record  # the very object that was encoded
    assert own.get(1, "1000-1") is None
    # The same id in a later lifetime (Redis lost the stream) is another entry.
    assert own.get(2, "1000-0") is None


def test_held_records_stay_bounded_dropping_the_oldest() -> None:
    own, ids = _held(100, 10_000)
    assert len(own) == 100
    assert own.get(1, ids[0]) is None and own.get(1, ids[-1]) is not None


def test_settled_records_are_dropped_oldest_first_up_to_the_first_unsettled() -> None:
    own, ids = _held(100, 10)
    # Delivered through 1000-9, the oldest pending entry 1000-4: four are written through.
    own.forget_settled(1, ((1000, 9), (1000, 4)))
    assert len(own) == 6 and own.get(1, ids[3]) is None and own.get(1, ids[4]) is not None
    own.forget_settled(1, ((1000, 9), None))
    assert len(own) == 0


def test_settled_state_of_another_lifetime_drops_nothing() -> None:
    own, _ = _held(100, 10, generation=1)
    own.forget_settled(2, ((1000, 9), None))
    own.forget_settled(1, None)  # the group's state not read yet
    assert len(own) == 10


def test_records_of_a_lost_lifetime_are_taken_back_in_order() -> None:
    own, _ = _held(100, 3, generation=1)
    own.add(2, ["5-0"], [_search("later")])
    assert [r.query for r in own.take_lost(2)] == ["q0", "q1", "q2"]
    assert len(own) == 1 and own.take_lost(2) == []
