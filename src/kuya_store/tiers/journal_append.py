"""Appending to the journal: records sealed, in script runs, and held by the ids they got.

A record is appended (``XADD``) before the search that made it returns. Every entry
carries a sequence number from a counter bumped in the same script as the ``XADD``, so the
reader can count what the bounded stream trimmed before delivery.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.tiers.journal_entries import Record
from kuya_store.tiers.journal_stream import JournalStream, _text, stream_id
from kuya_store.tiers.redis_scripts import Script

__all__ = ["AppendedRecords", "JournalAppender", "is_settled", "script_runs"]

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
_APPEND_SCRIPT = Script(_APPEND)
# One script run holds Redis for as long as it takes: a batch is split so no run holds it
# long, while the pipeline of runs still costs one round trip.
_RUN_RECORDS = 100
_RUN_BYTES = 1 << 20


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


class JournalAppender(JournalStream):
    """This process's appends to the stream: one script run per batch, pipelined."""

    def __init__(self, client: Any, settings: StoreSettings, metrics: Metrics) -> None:
        super().__init__(client, settings, metrics)
        self._max_length = settings.journal_max_length

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
            line = self._line
            for records_run in runs:
                self._metrics.incr("journal_round_trips")
                args = [self._max_length, *records_run]
                if line is not None:
                    answers.append(await line.run(_APPEND_SCRIPT, keys, args))
                else:
                    answers.append(await _APPEND_SCRIPT(self._appender, keys, args))
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
