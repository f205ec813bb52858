"""The write-behind's pure decisions: which records go together, how a refused batch splits.

Plain functions over records, tested without a database: the search-log rows written as
one statement, the halves a refused batch is bisected into, a fetch kept as history only
(after ``invalidate``), and how a record reads in the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from kuya_store.logs import fields_of
from kuya_store.models import SearchType
from kuya_store.persistence import FetchRecord, SearchRecord

__all__ = ["describe", "detached", "halves", "head_searches", "history_only", "log_fields"]

Record = SearchRecord | FetchRecord


def head_searches(records: Iterable[Record], limit: int) -> list[SearchRecord]:
    """The search-log rows at the head of the queue, up to the first fetch: one statement."""
    batch: list[SearchRecord] = []
    for record in records:
        if not isinstance(record, SearchRecord) or len(batch) >= limit:
            break
        batch.append(record)
    return batch


def halves(batch: list[SearchRecord]) -> tuple[list[SearchRecord], list[SearchRecord]]:
    """A refused batch bisected: each half is tried in a transaction of its own.

    k bad rows among n cost about 2k log2(n) statements.
    """
    middle = len(batch) // 2
    return batch[:middle], batch[middle:]


def history_only(record: FetchRecord) -> FetchRecord:
    """The fetch with its search row naming no result: kept for history, answering no read."""
    return dataclasses.replace(record, search=dataclasses.replace(record.search, result_key=None))


def detached(record: Record, card_identifier: str, search_type: SearchType) -> Record | None:
    """The fetch of this card kept as history only, or ``None`` when it is left as it is."""
    if not isinstance(record, FetchRecord):
        return None
    search = record.search
    if (
        search.result_key is not None
        and search.card_identifier == card_identifier
        and search.search_type is search_type
    ):
        return history_only(record)
    return None


def describe(record: Record) -> str:
    """What a record is, in the words of a log line: its kind, query, type, user and moment."""
    search = record.search if isinstance(record, FetchRecord) else record
    what = (
        f"fetched result ({len(record.result.listings)} listings) of"
        if isinstance(record, FetchRecord)
        else "search-log row of"
    )
    return (
        f"{what} {search.query!r} ({search.search_type.value}, "
        f"user {search.user_id}, at {search.created_at.isoformat()})"
    )


def log_fields(record: Record) -> dict[str, str | None]:
    """The log fields of a record: a fetched result came from the fetcher."""
    search = record.search if isinstance(record, FetchRecord) else record
    source = "api" if isinstance(record, FetchRecord) else None
    return fields_of(search.card_identifier, search.search_type.value, source)
