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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from kuya_store.breaker import CircuitBreaker
from kuya_store.keys import KEY_VERSION
from kuya_store.logs import get_logger
from kuya_store.metrics import Metrics
from kuya_store.models import SearchType
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.settings import StoreSettings
from kuya_store.stored import (
    NotRebuiltError,
    ValueSeal,
    aware_moment,
    rebuilt_result,
    rebuilt_snapshot,
)
from kuya_store.tiers.redis_scripts import Script

__all__ = [
    "AppendedRecords",
    "Entry",
    "Journal",
    "JournalUnavailableError",
    "RecordSeal",
    "decode_record",
    "encode_record",
    "script_runs",
]

_log = get_logger("kuya_store.journal")
Record = SearchRecord | FetchRecord
_GROUP = "writers"
_SEARCH = TypeAdapter(SearchRecord)
_FETCH = TypeAdapter(FetchRecord)
_SEARCH_LOCAL = {"trace"}
_FETCH_LOCAL: dict[str, Any] = {"search": _SEARCH_LOCAL}

# KEYS: stream, sequence counter. ARGV: max length, payloads. Each entry's sequence number
# and the entry are made together, so the numbers in the stream have no gaps but what was
# trimmed; one run takes a whole batch, in order, so it costs Redis one command.
_APPEND = """
local ids = {}
for i = 2, #ARGV do
    local seq = redis.call("incr", KEYS[2])
    ids[i - 1] = redis.call("xadd", KEYS[1], "MAXLEN", "~", ARGV[1], "*", "s", seq, "r", ARGV[i])
end
return ids
"""
# KEYS: stream, last sequence number delivered, trimmed counter. ARGV: group, consumer,
# count. Delivers new entries and counts the numbers skipped: entries trimmed unread.
_READ = """
local got = redis.call("xreadgroup", "GROUP", ARGV[1], ARGV[2], "COUNT", ARGV[3],
    "STREAMS", KEYS[1], ">")
if not got then
    return {}
end
local entries = got[1][2]
local last = tonumber(redis.call("get", KEYS[2]) or "0") or 0
local skipped = 0
for _, entry in ipairs(entries) do
    local seq = tonumber(entry[2][2])
    if seq then
        if seq > last + 1 then
            skipped = skipped + seq - last - 1
        end
        if seq > last then
            last = seq
        end
    end
end
redis.call("set", KEYS[2], last)
if skipped > 0 then
    redis.call("incrby", KEYS[3], skipped)
end
return entries
"""
# KEYS: stream, epoch. ARGV: group, a new epoch. The epoch names this stream's lifetime:
# missing, the stream was lost (a Redis restart without persistence, or a first start),
# so the group is made again, reading from the start, under a new epoch.
_ENSURE = """
local epoch = redis.call("get", KEYS[2])
if epoch then
    return epoch
end
redis.pcall("xgroup", "CREATE", KEYS[1], ARGV[1], "0", "MKSTREAM")
redis.call("set", KEYS[2], ARGV[2])
return ARGV[2]
"""
_APPEND_SCRIPT = Script(_APPEND)
_ENSURE_SCRIPT = Script(_ENSURE)
_READ_SCRIPT = Script(_READ)
# One script run holds Redis for as long as it takes: a batch is split so no run holds it
# long, while the pipeline of runs still costs one round trip.
_RUN_RECORDS = 100
_RUN_BYTES = 1 << 20


class JournalUnavailableError(Exception):
    """Redis did not take the call (down, or its breaker open): the caller falls back."""


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: its id and its record (``None`` when it did not decode)."""

    id: str
    record: Record | None


def encode_record(record: Record) -> bytes:
    """JSON bytes of a record (money as strings, moments as ISO 8601); never pickle."""
    # Serialised in pydantic's core (several times faster than dumping to Python objects
    # and then to JSON): a batch is encoded while the searches in it wait.
    # A record's trace is this process's span context: it has no JSON form, and another
    # process could not parent anything under it.
    if isinstance(record, FetchRecord):
        kind, body = b"fetch", _FETCH.dump_json(record, exclude=_FETCH_LOCAL)
    else:
        kind, body = b"search", _SEARCH.dump_json(record, exclude=_SEARCH_LOCAL)
    return b'{"v":%d,"kind":"%s","record":%s}' % (KEY_VERSION, kind, body)


def decode_record(raw: bytes | str) -> Record | None:
    """The record of an entry, or ``None`` when it does not parse or validate."""
    try:
        envelope = json.loads(raw)
        if not isinstance(envelope, dict) or envelope.get("v") != KEY_VERSION:
            return None
        kind, body = envelope.get("kind"), envelope.get("record")
        record: Record
        if kind == "fetch":
            record = _FETCH.validate_python(body)
        elif kind == "search":
            record = _SEARCH.validate_python(body)
        else:
            return None
    except (ValueError, TypeError, ValidationError, UnicodeDecodeError):
        return None
    return record


# -- sealed entries ---------------------------------------------------------------------

# The envelope's head as encode_record writes it names the kind before anything is parsed:
# the tag is checked only on an entry of a layout this release writes.
_HEADS = {
    kind: b'{"v":%d,"kind":"%s","record":' % (KEY_VERSION, kind.encode())
    for kind in ("fetch", "search")
}
_ENVELOPE_MEMBERS = frozenset({"v", "kind", "record", "mac"})
_SEARCH_MEMBERS = frozenset(f.name for f in dataclasses.fields(SearchRecord)) - _SEARCH_LOCAL
_SEARCH_SLOTS = tuple(
    (f.name, getattr(SearchRecord, f.name).__set__) for f in dataclasses.fields(SearchRecord)
)
_new = object.__new__
_FETCH_MEMBERS = frozenset(f.name for f in dataclasses.fields(FetchRecord))
# What a sealed entry that does not rebuild may raise: it is validated instead.
_NOT_REBUILT = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)


@functools.cache
def _layout() -> bytes:
    """What the journal's seal key is bound to: a label of its own, the version, the schemas.

    The label keeps the key apart from the hot tier's (derived from the same secret), so a
    value sealed for one never checks as the other.
    """
    schema = json.dumps(
        {"fetch": _FETCH.json_schema(), "search": _SEARCH.json_schema()}, sort_keys=True
    )
    return f"kuya-store journal entry {KEY_VERSION}\x00{schema}".encode()


def _trusted_search(fields: Any) -> SearchRecord:
    if type(fields) is not dict or fields.keys() != _SEARCH_MEMBERS:
        raise NotRebuiltError("search members")
    fields["search_type"] = SearchType(fields["search_type"])
    fields["created_at"] = aware_moment(fields["created_at"])
    fields["trace"] = None  # never written: it is the appending process's own
    # Set slot by slot: the frozen dataclass's __init__ costs as much as validating it.
    record = _new(SearchRecord)
    for name, put in _SEARCH_SLOTS:
        put(record, fields[name])
    return record


def _trusted_fetch(fields: Any) -> FetchRecord:
    if type(fields) is not dict or fields.keys() != _FETCH_MEMBERS:
        raise NotRebuiltError("fetch members")
    return FetchRecord(
        search=_trusted_search(fields["search"]),
        result=rebuilt_result(fields["result"]),
        listing_ttl=aware_moment(fields["listing_ttl"]),
        snapshot=rebuilt_snapshot(fields["snapshot"]),
    )


def _trusted(kind: str, envelope: Any) -> Record:
    """A sealed entry's record, built as validation builds it, without its checks."""
    if (
        type(envelope) is not dict
        or envelope.keys() != _ENVELOPE_MEMBERS
        or envelope["v"] != KEY_VERSION
        or envelope["kind"] != kind
    ):
        raise NotRebuiltError("envelope members")
    body = envelope["record"]
    return _trusted_fetch(body) if kind == "fetch" else _trusted_search(body)


class RecordSeal:
    """Seals the entries a store appends, and rebuilds sealed ones read back unvalidated.

    The tag (:class:`~kuya_store.stored.ValueSeal`) covers the whole entry and is bound
    to the stream and the record's kind, under a key derived from the secret and the
    journal's own :func:`_layout`. Only a holder of the secret makes a tag that checks,
    and it seals only what :func:`encode_record` wrote from a validated record.
    """

    def __init__(self, secret: bytes | None, stream: str) -> None:
        self._seal = (
            ValueSeal(secret, _layout()) if secret is not None else ValueSeal.ephemeral(_layout())
        )
        self._names = {kind: f"{kind}\x00{stream}" for kind in _HEADS}

    @classmethod
    def of(cls, settings: StoreSettings, stream: str) -> RecordSeal:
        """Keyed from ``hot_tier_secret``; without one, this process trusts only itself."""
        secret = settings.hot_tier_secret
        return cls(secret.get_secret_value().encode() if secret is not None else None, stream)

    def seal(self, record: Record) -> bytes:
        """The entry of ``record``: :func:`encode_record`'s JSON with its tag, last."""
        kind = "fetch" if isinstance(record, FetchRecord) else "search"
        return self._seal.seal(self._names[kind], encode_record(record))

    def open(self, raw: bytes | str) -> tuple[Record | None, bool]:
        """The record of an entry (``None``: it does not decode), and whether it was trusted."""
        if isinstance(raw, bytes):
            for kind, head in _HEADS.items():
                if raw.startswith(head):
                    if self._seal.sealed(self._names[kind], raw):
                        try:
                            return _trusted(kind, orjson.loads(raw)), True
                        except _NOT_REBUILT:
                            pass  # sealed by a writer whose records this release differs on
                    break
        return decode_record(raw), False


def is_settled(entry: str, settled: tuple[tuple[int, int], tuple[int, int] | None] | None) -> bool:
    """Whether an entry was delivered and acknowledged, by the group's state as last read."""
    if settled is None:
        return False
    delivered, oldest = settled
    at = stream_id(entry)
    return at <= delivered and (oldest is None or at < oldest)


def script_runs(payloads: Sequence[bytes], records: int, size: int) -> list[list[bytes]]:
    """A batch split into script runs of at most ``records`` payloads and ``size`` bytes.

    A payload larger than ``size`` runs alone; the order is kept.
    """
    runs: list[list[bytes]] = []
    run: list[bytes] = []
    held = 0
    for payload in payloads:
        if run and (len(run) >= records or held + len(payload) > size):
            runs.append(run)
            run, held = [], 0
        run.append(payload)
        held += len(payload)
    if run:
        runs.append(run)
    return runs


def stream_id(raw: str | None) -> tuple[int, int]:
    """An entry id as a comparable pair; ``(0, 0)`` for none."""
    if not raw:
        return (0, 0)
    ms, _, seq = raw.partition("-")
    return (int(ms), int(seq or 0))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, Any]:
    """A flat ``[name, value, ...]`` reply (or a dict) as a dict with text names."""
    if isinstance(raw, dict):
        return {_text(k): v for k, v in raw.items()}
    items = list(raw or [])
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


class AppendedRecords:
    """What this process appended, by entry id, until the group has written it through.

    An entry read back under one of these ids is this process's own: its record is the
    object held here, the very one that was encoded, so it is not decoded and validated
    again. The key is the id Redis's ``XADD`` returned to this process in one lifetime
    of the stream (its generation), which nothing written by another process can
    claim: an entry under any other id is decoded as untrusted content. Should Redis
    lose the stream, the records of its lost lifetime are written from here instead.

    Bounded: past ``limit`` the oldest goes (it is still on the stream, and decoded
    should it come back); one the group wrote through, whoever consumed it, goes when
    seen settled.
    """

    def __init__(self, limit: int) -> None:
        self._limit = max(limit, 0)
        self._records: OrderedDict[tuple[int, str], Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, generation: int, ids: Sequence[str], records: Sequence[Record]) -> None:
        """Hold the records of a batch appended in ``generation``, by their entry ids."""
        for entry_id, record in zip(ids, records, strict=True):
            self._records[(generation, entry_id)] = record
        while len(self._records) > self._limit:
            self._records.popitem(last=False)  # still on the stream: only the spare copy goes

    def get(self, generation: int, entry_id: str) -> Record | None:
        """The record this process appended under ``entry_id`` in ``generation``, if held."""
        return self._records.get((generation, entry_id))

    def forget_settled(
        self, generation: int, settled: tuple[tuple[int, int], tuple[int, int] | None] | None
    ) -> None:
        """Drop, oldest first, the records the group has delivered and acknowledged."""
        while self._records:
            held_in, entry_id = next(iter(self._records))
            if held_in != generation or not is_settled(entry_id, settled):
                return
            self._records.popitem(last=False)

    def take_lost(self, generation: int) -> list[Record]:
        """Remove and return the records appended to lifetimes of the stream before this one."""
        lost: list[Record] = []
        while self._records:
            held_in, _ = next(iter(self._records))
            if held_in >= generation:
                break
            lost.append(self._records.popitem(last=False)[1])
        return lost


def consumer_name() -> str:
    """Unique per process, readable in ``XINFO CONSUMERS``: host, pid and a random part."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Journal:
    """The deployment's stream and this process's consumer in its group."""

    def __init__(self, client: Any, settings: StoreSettings, metrics: Metrics) -> None:
        self._client = client
        # A Cluster pipeline refuses scripts: there each run is a call of its own, on the
        # one node the hash tag names.
        self._pipelined = not isinstance(client, RedisCluster)
        # The appender and the reader each make one call at a time, all the time: each
        # keeps a connection of its own rather than take one from the pool per call (about
        # a third of a call's CPU). A Cluster client has no such connection to keep.
        self._appender = client.client() if self._pipelined else client
        self._reader = client.client() if self._pipelined else client
        self._appending: asyncio.Future[None] | None = None
        """Resolved once the append under way is back (and its records held)."""
        self._append_wait = 3 * settings.redis_socket_timeout.total_seconds()
        self._metrics = metrics
        base = f"{settings.key_prefix}:v{KEY_VERSION}:journal:{{journal}}"
        self.stream = base
        self._sequence = f"{base}:seq"
        self._delivered = f"{base}:delivered"
        self._trimmed = f"{base}:trimmed"
        self._epoch_key = f"{base}:epoch"
        self._seal = RecordSeal.of(settings, base)
        self._epoch: str | None = None
        self.consumer = consumer_name()
        self._max_length = settings.journal_max_length
        self._claim_idle_ms = int(settings.journal_claim_idle.total_seconds() * 1000)
        self._cursor = "0-0"
        self._group_ready = False
        self.generation = 0
        """Bumped when the group had to be made again: what was appended before is gone."""
        self.breaker = CircuitBreaker(
            settings.breaker_failure_threshold,
            settings.breaker_reset_after.total_seconds(),
            on_open=lambda: metrics.incr("journal_breaker_opens"),
        )
        self.settled: tuple[tuple[int, int], tuple[int, int] | None] | None = None
        """As last read: the group's last delivered id and its oldest pending id (if any)."""
        self.stats: dict[str, int | None] = {
            "length": None,
            "lag": None,
            "pending": None,
            "trimmed_unacked": None,
        }

    async def _guarded(self, call: Any) -> Any:
        if not self.breaker.allow():
            raise JournalUnavailableError("the journal's breaker is open")
        try:
            value = await call()
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except Exception as exc:
            if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                self.breaker.success()  # Redis answered: it lost the group (a restart)
                self._group_ready = False
                raise JournalUnavailableError("the consumer group is gone") from exc
            self.breaker.failure()
            self._metrics.incr("journal_errors")
            raise JournalUnavailableError(f"{type(exc).__name__}: {exc}"[:200]) from exc
        self.breaker.success()
        return value

    async def ensure_group(self) -> None:
        """Make the stream and its group if missing (a first start, or a Redis restart)."""
        if not self._group_ready:
            await self._check_epoch()

    async def _check_epoch(self) -> None:
        keys = [self.stream, self._epoch_key]
        args = [_GROUP, uuid.uuid4().hex]
        raw = await self._guarded(lambda: _ENSURE_SCRIPT(self._client, keys, args))
        epoch = _text(raw)
        if epoch != self._epoch:
            # Another lifetime of the stream: what was appended to the last one is gone.
            self.generation += 1
            self._epoch = epoch
            self._cursor = "0-0"
        self._group_ready = True

    async def append(
        self, records: Sequence[Record], own: AppendedRecords | None = None
    ) -> list[str]:
        """Put a batch of records on the stream; returns the entry ids, in order.

        One script run appends many records, so every search waiting on the batch shares
        its round trip; a large batch is several runs, pipelined (one after another on a
        Cluster, whose pipelines refuse scripts).

        Args:
            own: where this process holds what it appended, by the ids Redis returned.

        Raises:
            JournalUnavailableError: Redis did not take them; some may still have landed,
                which the ``record_key`` makes harmless.
        """
        if not records:
            return []
        await self.ensure_group()
        runs = script_runs([self._seal.seal(r) for r in records], _RUN_RECORDS, _RUN_BYTES)
        keys = [self.stream, self._sequence]

        async def send(chosen: list[int], whole: bool) -> list[Any]:
            pipe = self._appender.pipeline(transaction=False)
            for index in chosen:
                _APPEND_SCRIPT.queue(pipe, keys, [self._max_length, *runs[index]], whole=whole)
            self._metrics.incr("journal_round_trips")
            return list(await pipe.execute(raise_on_error=False))

        async def pipelined() -> list[Any]:
            answers = await send(list(range(len(runs))), whole=False)
            # A node new to the script (a first start, a restart, a failover) ran none of
            # the runs it refused: only those are sent again, whole.
            missing = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
            if missing:
                for index, answer in zip(missing, await send(missing, whole=True), strict=True):
                    answers[index] = answer
            for answer in answers:
                if isinstance(answer, Exception):
                    raise answer
            return answers

        async def one_by_one() -> list[Any]:
            answers = []
            for records_run in runs:
                self._metrics.incr("journal_round_trips")
                answers.append(
                    await _APPEND_SCRIPT(self._appender, keys, [self._max_length, *records_run])
                )
            return answers

        async def run() -> list[str]:
            many = self._pipelined and len(runs) > 1
            answers = await (pipelined() if many else one_by_one())
            return [_text(entry) for answer in answers for entry in answer]

        landed = asyncio.get_running_loop().create_future()
        self._appending = landed
        try:
            ids = list(await self._guarded(run))
            if own is not None:
                own.add(self.generation, ids, records)
        finally:
            landed.set_result(None)
            if self._appending is landed:
                self._appending = None
        return ids

    async def _after_own_appends(self, raw: Any, own: AppendedRecords | None) -> None:
        """Wait for the append under way should the entries read include ones it made.

        The reader's reply can come back before the appender's, over another connection,
        with the same entries: they are this process's own once that append is back.
        """
        landed = self._appending
        if landed is None or own is None:
            return
        if all(own.get(self.generation, _text(item[0])) is not None for item in raw or []):
            return
        # Not cancelled with the reader, nor waited on past the appender's own timeout.
        await asyncio.wait([landed], timeout=self._append_wait)

    async def read(self, count: int, own: AppendedRecords | None = None) -> list[Entry]:
        """New entries for this consumer (none when nothing waits).

        Args:
            own: what this process appended: those entries take the held record, undecoded.
        """
        await self.ensure_group()
        keys = [self.stream, self._delivered, self._trimmed]
        args = [_GROUP, self.consumer, count]
        raw = await self._guarded(lambda: _READ_SCRIPT(self._reader, keys, args))
        await self._after_own_appends(raw, own)
        return self._entries(raw, own)

    async def claim(
        self, count: int, held: set[str], own: AppendedRecords | None = None
    ) -> list[Entry]:
        """Take over entries other consumers left idle past ``journal_claim_idle``.

        Args:
            held: entries this process has in memory; trimmed, they are not lost.
            own: what this process appended: those entries take the held record, undecoded.
        """
        await self.ensure_group()

        async def run() -> Any:
            return await self._reader.xautoclaim(
                self.stream, _GROUP, self.consumer, self._claim_idle_ms, self._cursor, count
            )

        got = await self._guarded(run)
        self._cursor = _text(got[0])
        # Pending entries trimmed before anyone wrote them: gone, and named by the claim.
        gone = [_text(i) for i in (got[2] if len(got) > 2 else []) if _text(i) not in held]
        if gone:
            self._metrics.incr("journal_trimmed_pending", len(gone))
            _log.error("%d journal entries were trimmed before they were written", len(gone))
            await self._guarded(lambda: self._client.incrby(self._trimmed, len(gone)))
        await self._after_own_appends(got[1], own)
        entries = self._entries(got[1], own)
        if entries:
            self._metrics.incr("journal_claimed", len(entries))
        return entries

    def _entries(self, raw: Any, own: AppendedRecords | None) -> list[Entry]:
        entries = []
        held = trusted = 0
        for item in raw or []:
            entry_id = _text(item[0])
            record = own.get(self.generation, entry_id) if own is not None else None
            if record is not None:
                held += 1
            else:
                payload = _fields(item[1]).get("r")
                record, sealed = self._seal.open(payload) if payload is not None else (None, False)
                trusted += sealed
            entries.append(Entry(entry_id, record))
        if held:
            self._metrics.incr("journal_held", held)
        if trusted:
            self._metrics.incr("journal_trusted", trusted)
        if len(entries) > held + trusted:
            self._metrics.incr("journal_decoded", len(entries) - held - trusted)
        return entries

    async def ack(self, ids: Sequence[str]) -> int:
        """Acknowledge entries whose records the database has (or refused for good)."""
        if not ids:
            return 0
        return int(await self._guarded(lambda: self._reader.xack(self.stream, _GROUP, *ids)))

    async def settled_through(self, entry_id: str) -> bool:
        """Whether every entry up to ``entry_id`` was delivered and acknowledged."""

        async def run() -> bool:
            group = await self._group()
            if group is None:
                return True  # no group: the stream is gone with what it held
            delivered = stream_id(_text(group.get("last-delivered-id") or ""))
            if delivered < stream_id(entry_id):
                return False
            summary = await self._client.xpending(self.stream, _GROUP)
            if not summary or not summary.get("pending"):
                return True
            return stream_id(_text(summary.get("min"))) > stream_id(entry_id)

        return bool(await self._guarded(run))

    async def _group(self) -> dict[str, Any] | None:
        for group in await self._client.xinfo_groups(self.stream):
            fields = _fields(group)
            if _text(fields.get("name")) == _GROUP:
                return fields
        return None

    async def refresh_stats(self) -> None:
        """Read the stream's length, the group's lag and pending count, and what was trimmed."""

        await self._check_epoch()

        async def run() -> None:
            length = await self._client.xlen(self.stream)
            group = await self._group()
            trimmed = await self._client.get(self._trimmed)
            lag = group.get("lag") if group is not None else None
            if group is not None:
                summary = await self._client.xpending(self.stream, _GROUP)
                oldest = summary.get("min") if summary and summary.get("pending") else None
                delivered = stream_id(_text(group.get("last-delivered-id") or ""))
                self.settled = (delivered, stream_id(_text(oldest)) if oldest else None)
            self.stats = {
                "length": int(length),
                "lag": int(lag) if lag is not None else None,
                "pending": int(group.get("pending") or 0) if group is not None else None,
                "trimmed_unacked": int(trimmed or 0),
            }

        await self._guarded(run)

    async def close(self) -> None:
        """Give the appender's and the reader's connections back to the pool."""
        for client in (self._appender, self._reader):
            if client is not self._client:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def forget_consumer(self) -> None:
        """Leave the group when this consumer holds nothing, so the group does not fill up."""

        async def run() -> None:
            for consumer in await self._client.xinfo_consumers(self.stream, _GROUP):
                fields = _fields(consumer)
                if _text(fields.get("name")) == self.consumer and not fields.get("pending"):
                    await self._client.xgroup_delconsumer(self.stream, _GROUP, self.consumer)

        await self._guarded(run)


def claim_interval(idle: timedelta) -> float:
    """How often to look for idle entries: often enough that one waits at most half again."""
    return max(idle.total_seconds() / 2, 0.5)
