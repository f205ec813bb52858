"""The write journal: search-log rows and fetched results made durable on a Redis Stream.

A record is appended (``XADD``) before the search that made it returns, then read by the
deployment's consumer group, one consumer per store process, and acknowledged (``XACK``)
only once the database has committed it; the search row's ``record_key`` makes a replay
write nothing twice. Entries a dead consumer held are claimed by the others
(``XAUTOCLAIM``) once idle for ``journal_claim_idle``.

The stream is bounded (``MAXLEN ~ journal_max_length``). Nothing it trims goes unnoticed:
every entry carries a sequence number from a counter bumped in the same script as the
``XADD``, so a read that skips numbers counts the entries trimmed before delivery, and a
claim counts the pending entries trimmed before acknowledgement (``XAUTOCLAIM`` names
them; those the claiming process holds in memory are not lost). The count lives in Redis
beside the stream, for every worker to report.

Every key carries the hash tag ``{journal}``, so on a Cluster each script runs on one node.
Redis content is untrusted: an entry that does not decode is counted and acknowledged. An
entry this process appended itself is not decoded when it comes back: the process holds
the very record it encoded, by the id its own ``XADD`` returned (:class:`AppendedRecords`).
An entry another process appended carries a seal (:class:`RecordSeal`, keyed from
``hot_tier_secret``): one whose seal checks is rebuilt without validation; one without a
seal (an older release's), under another secret, tampered or cut is validated in full.

Each idea has a module of its own: the entry's encoding and seal
(:mod:`~kuya_store.tiers.journal_entries`), the stream and its group
(:mod:`~kuya_store.tiers.journal_stream`), appending
(:mod:`~kuya_store.tiers.journal_append`, on a connection of its own where there is one
server: :mod:`~kuya_store.tiers.journal_line`) and reading
(:mod:`~kuya_store.tiers.journal_read`); :class:`Journal` is both halves in one.
"""

from __future__ import annotations

from kuya_store.tiers.journal_append import AppendedRecords, JournalAppender, script_runs
from kuya_store.tiers.journal_entries import RecordSeal, decode_record, encode_record
from kuya_store.tiers.journal_read import Entry, JournalReader, claim_interval
from kuya_store.tiers.journal_stream import JournalUnavailableError

__all__ = [
    "AppendedRecords",
    "Entry",
    "Journal",
    "JournalUnavailableError",
    "RecordSeal",
    "claim_interval",
    "decode_record",
    "encode_record",
    "script_runs",
]


class Journal(JournalAppender, JournalReader):
    """The deployment's stream and this process's consumer in its group."""
