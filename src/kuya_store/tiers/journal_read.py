"""Reading the journal: this consumer's new entries, idle ones claimed, acknowledgements.

Entries are acknowledged (``XACK``) only once the database has committed their records;
the search row's ``record_key`` makes a replay write nothing twice. Entries a dead consumer
held are claimed by the others (``XAUTOCLAIM``) once idle for ``journal_claim_idle``.

The stream is bounded (``MAXLEN ~ journal_max_length``). Nothing it trims goes unnoticed:
a read that skips sequence numbers counts the entries trimmed before delivery, and a claim
counts the pending entries trimmed before acknowledgement (``XAUTOCLAIM`` names them; those
the claiming process holds in memory are not lost). The count lives in Redis beside the
stream, for every worker to report.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from kuya_store.logs import get_logger
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.tiers.journal_append import AppendedRecords
from kuya_store.tiers.journal_entries import Record
from kuya_store.tiers.journal_stream import GROUP, JournalStream, _fields, _text, stream_id
from kuya_store.tiers.redis_scripts import Script

__all__ = ["Entry", "JournalReader", "claim_interval"]

_log = get_logger("kuya_store.journal")
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
_READ_SCRIPT = Script(_READ)


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: its id and its record (``None`` when it did not decode)."""

    id: str
    record: Record | None


class JournalReader(JournalStream):
    """This process's consumer in the group: reads, claims and acknowledges entries."""

    def __init__(self, client: Any, settings: StoreSettings, metrics: Metrics) -> None:
        super().__init__(client, settings, metrics)
        self._claim_idle_ms = int(settings.journal_claim_idle.total_seconds() * 1000)
        self.settled: tuple[tuple[int, int], tuple[int, int] | None] | None = None
        """As last read: the group's last delivered id and its oldest pending id (if any)."""
        self.stats: dict[str, int | None] = {
            "length": None,
            "lag": None,
            "pending": None,
            "trimmed_unacked": None,
        }

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
        args = [GROUP, self.consumer, count]
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
                self.stream, GROUP, self.consumer, self._claim_idle_ms, self._cursor, count
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
        return int(await self._guarded(lambda: self._reader.xack(self.stream, GROUP, *ids)))

    async def settled_through(self, entry_id: str) -> bool:
        """Whether every entry up to ``entry_id`` was delivered and acknowledged."""

        async def run() -> bool:
            group = await self._group()
            if group is None:
                return True  # no group: the stream is gone with what it held
            delivered = stream_id(_text(group.get("last-delivered-id") or ""))
            if delivered < stream_id(entry_id):
                return False
            summary = await self._client.xpending(self.stream, GROUP)
            if not summary or not summary.get("pending"):
                return True
            return stream_id(_text(summary.get("min"))) > stream_id(entry_id)

        return bool(await self._guarded(run))

    async def _group(self) -> dict[str, Any] | None:
        for group in await self._client.xinfo_groups(self.stream):
            fields = _fields(group)
            if _text(fields.get("name")) == GROUP:
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
                summary = await self._client.xpending(self.stream, GROUP)
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

    async def forget_consumer(self) -> None:
        """Leave the group when this consumer holds nothing, so the group does not fill up."""

        async def run() -> None:
            for consumer in await self._client.xinfo_consumers(self.stream, GROUP):
                fields = _fields(consumer)
                if _text(fields.get("name")) == self.consumer and not fields.get("pending"):
                    await self._client.xgroup_delconsumer(self.stream, GROUP, self.consumer)

        await self._guarded(run)


def claim_interval(idle: timedelta) -> float:
    """How often to look for idle entries: often enough that one waits at most half again."""
    return max(idle.total_seconds() / 2, 0.5)
