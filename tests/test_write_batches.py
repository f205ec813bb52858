"""The write-behind's pure decisions, without a database: batches, halves, history only."""

from __future__ import annotations

from datetime import UTC, datetime

import kuya_store as ks
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.stored import StoredResult
from kuya_store.write_batches import describe, detached, halves, head_searches, log_fields

AT = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)


def _search(query: str = "Wembanyama #1", **changes: object) -> SearchRecord:
    fields: dict[str, object] = {
        "query": query,
        "card_identifier": "wembanyama 1",
        "search_type": ks.SearchType.SOLD,
        "filters": {},
        "params": {},
        "created_at": AT,
        "execution_time_ms": 3,
        "cache_hit": False,
        "result_key": "k" * 64,
        "user_id": 7,
    }
    fields.update(changes)
    return SearchRecord(**fields)  # type: ignore[arg-type]


def _fetch(**changes: object) -> FetchRecord:
    search = _search(**changes)
    result = StoredResult(
        query=search.query,
        card_identifier=search.card_identifier,
        search_type=search.search_type,
        params={},
        listings=[],
        fetched_at=AT,
    )
    return FetchRecord(search=search, result=result, listing_ttl=AT)


def test_one_statement_takes_the_search_rows_up_to_the_first_fetch() -> None:
    rows = [_search(f"row {i}") for i in range(3)]
    queue = [*rows, _fetch(), _search("after the fetch")]
    assert head_searches(queue, 100) == rows


def test_one_statement_takes_no_more_rows_than_the_batch_size() -> None:
    rows = [_search(f"row {i}") for i in range(7)]
    assert head_searches(rows, 3) == rows[:3]
    assert head_searches(rows, 0) == []


def test_a_fetch_at_the_head_is_never_batched_with_rows() -> None:
    assert head_searches([_fetch(), _search()], 100) == []


def test_a_refused_batch_splits_into_two_halves_that_keep_every_row_in_order() -> None:
    for size in (2, 3, 8, 9):
        batch = [_search(f"row {i}") for i in range(size)]
        first, second = halves(batch)
        assert first + second == batch
        assert first and second  # each half is smaller: bisection ends at single rows
        assert abs(len(first) - len(second)) <= 1


def test_bisecting_isolates_one_bad_row_in_about_log2_statements() -> None:
    batch = [_search(f"row {i}") for i in range(64)]
    bad = batch[41]
    statements = 0

    def write(rows: list[SearchRecord]) -> list[SearchRecord]:
        """The rows refused on their own, bisecting as the database task does."""
        nonlocal statements
        statements += 1
        if bad not in rows:
            return []
        if len(rows) == 1:
            return rows
        first, second = halves(rows)
        return write(first) + write(second)

    assert write(batch) == [bad]
    assert statements <= 2 * 6 + 1  # 2k log2(n) + the first try, k = 1, n = 64


def test_only_this_cards_fetches_of_this_type_that_name_a_result_are_detached() -> None:
    fetch = _fetch()
    kept = detached(fetch, "wembanyama 1", ks.SearchType.SOLD)
    assert isinstance(kept, FetchRecord)
    assert kept.search.result_key is None
    assert kept.result is fetch.result and kept.search.record_key == fetch.search.record_key
    assert fetch.search.result_key == "k" * 64  # the original is left alone
    assert detached(fetch, "another card", ks.SearchType.SOLD) is None
    assert detached(fetch, "wembanyama 1", ks.SearchType.ACTIVE) is None
    assert detached(_fetch(result_key=None), "wembanyama 1", ks.SearchType.SOLD) is None
    assert detached(_search(), "wembanyama 1", ks.SearchType.SOLD) is None


def test_a_record_reads_in_the_log_by_its_kind_query_user_and_moment() -> None:
    assert describe(_search("Wemby 'rc'")) == (
        "search-log row of \"Wemby 'rc'\" (sold, user 7, at 2026-12-01T12:30:00+00:00)"
    )
    assert describe(_fetch()).startswith("fetched result (0 listings) of 'Wembanyama #1'")
    assert log_fields(_fetch())["source"] == "api"
    assert log_fields(_search())["source"] is None


async def test_a_loop_stops_when_its_cancellation_was_swallowed() -> None:
    """As Python 3.11's ``wait_for`` does inside redis-py: the error lost, the request kept."""
    import asyncio
    import contextlib

    from kuya_store.write_buffer import cancel_requested

    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            if cancel_requested():
                raise asyncio.CancelledError
            turns += 1
            # A library that returns a reply that landed with the cancellation:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    assert not cancel_requested()  # this task was never asked
    task.cancel()
    await asyncio.wait_for(asyncio.shield(asyncio.gather(task, return_exceptions=True)), 5)
    assert task.cancelled() and turns > 0
