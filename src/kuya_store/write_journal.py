"""The write-behind's journal side: group commit to the Redis Stream, and reading it back.

Records reach the stream by group commit: one task sends what is queued as one batch, a
single round trip, and what the searches queue meanwhile goes as the next batch once it is
back. A lone search waits one round trip, no timer; concurrent searches share theirs. Each
is woken when the batch holding its records is back, not by later ones, and what befalls
the batch (taken, or buffered here when Redis fails it) befalls each of them alike; one that
gives up waiting leaves the batch and its records alone. The reader gathers the same way:
woken by an append, it lets the next moments' appends join before one read takes them all.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import TYPE_CHECKING

from kuya_store.logs import get_logger
from kuya_store.persistence import FetchRecord
from kuya_store.write_batches import history_only
from kuya_store.write_buffer import (
    CANCEL_GRACE,
    Queued,
    WriteBuffer,
    cancel_requested,
    wait_at_most,
)

if TYPE_CHECKING:
    from kuya_store.tiers.journal_read import Entry

__all__ = ["JournalLink"]

# The write-behind logs as one, under the name operators know it by.
_log = get_logger("kuya_store.writer")

_STATS_EVERY = 1.0
_ACK_BATCH = 1000
# How long the journal's reader, woken by an append, waits for more to gather (at most
# write_flush_interval): a read per append would cost a lone search a second round trip.
_READ_GATHER = 0.05


class JournalLink(WriteBuffer):
    """The tasks that put records on the journal and read its entries into the buffer."""

    async def durable(self) -> None:
        """Wait until every record submitted so far is on the journal, or buffered here.

        Woken when the batch holding the last of them is back, not by later batches.
        Bounded by ``durable_wait``: a Redis that hangs past it leaves the records queued
        for the journal, where they go on, or fall back to this buffer. Cancelled, the
        records go on just the same.
        """
        target = self._outbox_accepted
        if self._outbox_done >= target:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (target, next(self._tickets), waiter))
        try:
            async with asyncio.timeout(self._durable_wait):
                await waiter
        except TimeoutError:
            self._metrics.incr("journal_slow")
        finally:
            waiter.cancel()  # a no-op once woken; else its heap entry is skipped later

    def _journaled_through(self, count: int) -> None:
        """``count`` more records are on the journal or buffered here: wake their waiters."""
        self._outbox_done += count
        self._journaled.set()
        while self._waiters and self._waiters[0][0] <= self._outbox_done:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)

    async def _stream_settled(self, appended: tuple[int, str]) -> bool:
        from kuya_store.tiers.journal_stream import JournalUnavailableError

        assert self._journal is not None
        generation, entry = appended
        if generation != self._journal.generation:
            return True  # the stream was lost with Redis's data; nothing left to wait for
        try:
            return await self._journal.settled_through(entry)
        except JournalUnavailableError:
            return False

    async def _leave_journal(self) -> None:
        """Acknowledge what was written, and leave the group if holding nothing (bounded)."""
        if self._journal is None:
            return
        from kuya_store.tiers.journal_stream import JournalUnavailableError

        try:
            async with asyncio.timeout(CANCEL_GRACE):
                await self._send_acks()
                if not self._held:
                    await self._journal.forget_consumer()
        except (TimeoutError, JournalUnavailableError):
            pass
        finally:
            await self._journal.close()

    async def _append_run(self) -> None:
        """Put queued records on the stream, a batch per round trip; fall back on failure."""
        from kuya_store.tiers.journal_stream import JournalUnavailableError

        journal = self._journal
        assert journal is not None
        while not self._stopped:
            if cancel_requested():
                raise asyncio.CancelledError
            if not self._outbox:
                self._outbox_wakeup.clear()
                await self._outbox_wakeup.wait()
                continue
            # Group commit: everything queued while the last batch was in flight goes now.
            size = min(len(self._outbox), self._journal_batch)
            batch = [self._outbox.popleft() for _ in range(size)]
            try:
                ids = await journal.append(batch, self._own)
            except JournalUnavailableError as exc:
                self._metrics.incr("journal_fallbacks", len(batch))
                _log.warning("journal unavailable (%s); %d records buffered here", exc, len(batch))
                for record in batch:
                    self._buffer(record)
            except BaseException:
                for record in batch:
                    self._buffer_anyway(record)
                raise
            else:
                self._metrics.incr("journal_appended", len(batch))
                self._appended = (journal.generation, ids[-1])
                self._consume_wakeup.set()
            finally:
                self._journaled_through(len(batch))

    async def _consume_run(self) -> None:
        """Read the group's entries into this buffer; acknowledge those written."""
        from kuya_store.tiers.journal_stream import JournalUnavailableError

        journal = self._journal
        assert journal is not None
        next_claim = next_stats = 0.0
        while not self._stopped:
            if cancel_requested():
                raise asyncio.CancelledError
            got: list[Entry] = []
            # Cleared before reading: an append made meanwhile is read on the next turn.
            self._consume_wakeup.clear()
            try:
                await self._send_acks()
                now = time.monotonic()
                room = min(self._capacity - len(self._queue), self._batch_size)
                if room > 0 and now >= next_claim:
                    next_claim = now + self._claim_every
                    got = await journal.claim(room, self._held, self._own)
                    if len(got) == room:
                        next_claim = now  # more may be waiting: look again at once
                if room - len(got) > 0:
                    got += await journal.read(room - len(got), self._own)
                if now >= next_stats:
                    next_stats = now + _STATS_EVERY
                    await journal.refresh_stats()
                    self._forget_settled()
            except JournalUnavailableError:
                self._rebuffer_lost()
                await asyncio.sleep(self._pause if journal.breaker.state == "open" else 0.05)
                continue
            self._rebuffer_lost()
            if self._take(got) and len(got) >= room:
                continue  # a full read: more may be waiting
            if self._to_ack:
                continue
            await wait_at_most(self._consume_wakeup, self._interval)
            if self._consume_wakeup.is_set() and not self._urgent:
                # Woken by an append: let the appends of the next moments gather, so one
                # read takes them all instead of a read per search (flush() cuts it short).
                await wait_at_most(self._hurry, min(_READ_GATHER, self._interval))

    def _forget_settled(self) -> None:
        assert self._journal is not None
        assert self._own is not None
        self._own.forget_settled(self._journal.generation, self._journal.settled)

    def _rebuffer_lost(self) -> None:
        """Records appended to a stream Redis has since lost: written from here instead."""
        assert self._journal is not None
        assert self._own is not None
        lost = 0
        for record in self._own.take_lost(self._journal.generation):
            lost += self._buffer(record)
        if lost:
            self._metrics.incr("journal_rebuffered", lost)
            _log.warning("Redis lost the journal; %d records it held are written from here", lost)

    def _take(self, entries: list[Entry]) -> int:
        """Buffer the entries read (each once); returns how many were new here."""
        taken = 0
        for entry in entries:
            if entry.id in self._held:
                continue  # ours already (a claim of our own idle entry)
            self._held.add(entry.id)
            taken += 1
            record = entry.record
            if record is None:
                self._metrics.incr("journal_corrupt")
                _log.error("journal entry %s does not decode; acknowledged and skipped", entry.id)
                self._to_ack.append(entry.id)
                continue
            if isinstance(record, FetchRecord) and self.fenced is not None and self.fenced(record):
                record = history_only(record)
            self._queue.append(Queued(record, entry.id))
            self._accepted += 1
        if taken:
            self._wakeup.set()
        return taken

    async def _send_acks(self) -> None:
        assert self._journal is not None
        while self._to_ack:
            ids = self._to_ack[:_ACK_BATCH]
            await self._journal.ack(ids)
            del self._to_ack[: len(ids)]
            self._held.difference_update(ids)
            self._metrics.incr("journal_acked", len(ids))
