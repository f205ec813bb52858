"""Writes behind the request: the search log and fetched results, in order, in batches.

A search never waits on the database. Records queue in a bounded buffer; one task
drains it, batching consecutive search-log rows into one statement and writing each
fetched result in its own transaction.

- The database is unreachable (:func:`kuya_store.write_faults.is_transient`): the batch
  stays at the head of the queue and is retried with jittered backoff, so the outage's
  writes are replayed in order once it is back.
- The database refuses a batch for what is in it (a constraint, bad data): the batch is
  bisected, each half in a fresh transaction, until the offending record stands alone;
  every other record lands. A row whose only fault is an unknown ``user_id`` is kept
  without its user; any other refused record is counted (``writes_rejected``) and logged
  with the reason. A refused fetched result still leaves its search in the log.
- What the full buffer, or a closed one, had to refuse, and what ``close()`` could not
  write in time, is counted (``writes_dropped``), never silent. ``flush()`` and
  ``close()`` wait at most their timeout.

With a journal (Redis configured, ``durable_writes``), a record goes to the Redis Stream
first (:mod:`kuya_store.tiers.journal`) and ``durable()`` waits for that; this buffer
then holds what the consumer read from the stream, and each entry is acknowledged once
its record is committed (or refused for good). An entry this process appended itself is
read back as the record it still holds, not decoded again; another worker's, sealed
under the same ``hot_tier_secret``, is rebuilt on trust; any other is decoded and
validated as untrusted content. A record the journal could not take is
buffered here as without one (``journal.fallbacks``). What ``close()`` leaves unwritten
stays on the stream for another worker, so it is not dropped.

Records reach the stream by group commit: one task sends what is queued as one batch, a
single round trip, and what the searches queue meanwhile goes as the next batch once it is
back. A lone search waits one round trip, no timer; concurrent searches share theirs. Each
is woken when the batch holding its records is back, not by later ones, and what befalls
the batch (taken, or buffered here when Redis fails it) befalls each of them alike; one that
gives up waiting leaves the batch and its records alone. The reader gathers the same way:
woken by an append, it lets the next moments' appends join before one read takes them all.

Each part has a module of its own: the buffer the tasks share (:mod:`kuya_store.write_buffer`),
the database task (:mod:`kuya_store.write_drain`), the journal's tasks
(:mod:`kuya_store.write_journal`) and the pure decisions over records
(:mod:`kuya_store.write_batches`); :class:`WriteBehind` is all of them over one buffer.
"""

from __future__ import annotations

import asyncio
import contextvars

from kuya_store.logs import get_logger
from kuya_store.models import SearchType
from kuya_store.persistence import FetchRecord
from kuya_store.write_batches import describe, detached, log_fields
from kuya_store.write_buffer import CANCEL_GRACE, Record
from kuya_store.write_drain import DatabaseDrain
from kuya_store.write_faults import is_transient
from kuya_store.write_journal import JournalLink

__all__ = ["WriteBehind", "is_transient"]

_log = get_logger("kuya_store.writer")

# How often flush() asks Redis whether the stream is written through its entries.
_SETTLED_POLL = 0.02


class WriteBehind(DatabaseDrain, JournalLink):
    """A bounded, ordered write buffer drained by one background task.

    Args:
        timeout: seconds ``flush()`` and ``close()`` wait when not given one.
        journal: the Redis Stream records go to first; ``None`` writes from memory only.
        claim_every: seconds between looks for entries other workers left idle.
        durable_wait: the longest ``durable()`` waits for Redis to take a record.
        journal_batch: the most records one round trip to the journal takes; 1 costs a
            round trip per record (how it compares is measured by ``bench/journal.py``).
    """

    def start(self) -> None:
        """Start the background tasks (again, should one have died); never after :meth:`close`."""
        if not self._closed:
            self._ensure_running()

    def _ensure_running(self) -> None:
        if self._stopped:
            return
        if self._task is None or self._task.done():
            # A context of its own: started by a search, it must not log as that search.
            self._task = asyncio.create_task(
                self._run(), name="kuya-write-behind", context=contextvars.Context()
            )
        if self._journal is None:
            return
        if self._append_task is None or self._append_task.done():
            self._append_task = asyncio.create_task(
                self._append_run(), name="kuya-journal-append", context=contextvars.Context()
            )
        if self._consume_task is None or self._consume_task.done():
            self._consume_task = asyncio.create_task(
                self._consume_run(), name="kuya-journal-consume", context=contextvars.Context()
            )

    def submit(self, record: Record) -> bool:
        """Queue a record; ``False`` (counted, never silent) when closed or full."""
        if self._closed:
            self._metrics.incr("writes_dropped")
            self._metrics.incr("writes_refused_closed")
            _log.error(
                "write buffer is closed; refused %s", describe(record), extra=log_fields(record)
            )
            return False
        self.start()
        journal = self._journal
        # A full outbox (Redis slower than the searches) falls back to this buffer, counted.
        usable = journal is not None and journal.breaker.state != "open"
        if usable and len(self._outbox) < self._capacity:
            self._outbox.append(record)
            self._outbox_accepted += 1
            self._outbox_wakeup.set()
            return True
        if journal is not None:
            self._metrics.incr("journal_fallbacks")
        return self._buffer(record)

    def detach(self, card_identifier: str, search_type: SearchType) -> int:
        """Keep this card's buffered fetches as history only (after ``invalidate``).

        Returns how many queued fetches no longer name a result.
        """
        count = 0
        for item in self._queue:
            changed = detached(item.record, card_identifier, search_type)
            if changed is not None:
                item.record = changed
                count += 1
        for index, record in enumerate(self._outbox):
            changed = detached(record, card_identifier, search_type)
            if changed is not None:
                self._outbox[index] = changed
                count += 1
        return count

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written or refused.

        With a journal that includes the stream: every entry up to the last this process
        appended is written and acknowledged, by whichever worker read it. Returns
        ``False`` (and logs what is left) when ``timeout`` seconds, by default the
        buffer's own, ran out first: the records stay queued and are written later.
        """
        target = self._accepted
        outbox_target = self._outbox_accepted
        if (
            self._settled >= target
            and self._outbox_done >= outbox_target
            and self._appended is None
        ):
            return True
        limit = self._timeout if timeout is None else timeout
        self._ensure_running()  # also while close() flushes: what was accepted is written
        try:
            async with asyncio.timeout(limit):
                while self._outbox_done < outbox_target:
                    self._journaled.clear()
                    await self._journaled.wait()
                appended = self._appended
                self._hurry_up()
                while self._settled < target:
                    self._progress.clear()
                    await self._progress.wait()
                while appended is not None and not await self._stream_settled(appended):
                    self._hurry_up()
                    self._consume_wakeup.set()
                    await asyncio.sleep(_SETTLED_POLL)
        except TimeoutError:
            _log.warning(
                "flush gave up after %.1f s: %d records still unwritten here, %d buffered in all%s",
                limit,
                max(target - self._settled, 0),
                self.pending,
                " (database unreachable)" if self._outage else "",
            )
            return False
        if self._appended == appended:
            self._appended = None  # written through: the next flush need not ask Redis
        return True

    def _hurry_up(self) -> None:
        self._urgent = True
        self._hurry.set()
        self._wakeup.set()

    async def close(self, timeout: float | None = None) -> bool:
        """Refuse new records, flush for at most ``timeout`` seconds, then stop.

        Returns whether everything was written; what was not is counted as dropped,
        except entries still on the journal, which another worker writes.
        """
        if self._closed:
            return not self._queue
        self._closed = True
        done = await self.flush(timeout)
        self._stopped = True
        for event in (self._wakeup, self._hurry, self._outbox_wakeup, self._consume_wakeup):
            event.set()
        tasks = [t for t in (self._task, self._append_task, self._consume_task) if t]
        self._task = self._append_task = self._consume_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            # A write blocked on a dead server must not hold close() up either.
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        await self._leave_journal()
        unjournaled = len(self._outbox)
        for record in self._outbox:
            self._buffer_anyway(record)
        self._outbox.clear()
        self._journaled_through(unjournaled)
        on_journal = sum(item.entry is not None for item in self._queue)
        if on_journal:
            self._metrics.incr("journal_left", on_journal)
            _log.warning(
                "closing with %d records unwritten here; they stay on the journal for "
                "another worker",
                on_journal,
            )
        left = len(self._queue) - on_journal
        if left:
            fetches = sum(isinstance(i.record, FetchRecord) for i in self._queue if not i.entry)
            self._metrics.incr("writes_dropped", left)
            _log.error(
                "closing with %d unwritten records (%d search-log rows, %d fetched results); "
                "counted as dropped",
                left,
                left - fetches,
                fetches,
            )
        count = len(self._queue)
        if count:
            self._queue.clear()
            self._settle(count)
        return done and not left
