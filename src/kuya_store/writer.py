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
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from kuya_store.logs import fields_of, get_logger
from kuya_store.metrics import Metrics
from kuya_store.models import SearchType
from kuya_store.observing import watch_write
from kuya_store.persistence import Database, FetchRecord, SearchRecord
from kuya_store.write_faults import is_transient, may_be_unknown_user, reason, without_user

if TYPE_CHECKING:
    from kuya_store.tiers.journal import AppendedRecords, Entry, Journal

__all__ = ["WriteBehind", "is_transient"]

_log = get_logger("kuya_store.writer")
Record = SearchRecord | FetchRecord

# How long close() waits for a cancelled in-flight write to unwind.
_CANCEL_GRACE = 1.0
# How often flush() asks Redis whether the stream is written through its entries.
_SETTLED_POLL = 0.02
_STATS_EVERY = 1.0
_ACK_BATCH = 1000
# How long the journal's reader, woken by an append, waits for more to gather (at most
# write_flush_interval): a read per append would cost a lone search a second round trip.
_READ_GATHER = 0.05


@dataclasses.dataclass(slots=True)
class _Queued:
    """A buffered record and the journal entry it was read from, to acknowledge once written."""

    record: Record
    entry: str | None = None


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event`` at most ``seconds``.

    Not ``asyncio.wait_for``: before Python 3.12 it can swallow a cancellation that meets
    its timeout, and a task that misses its cancel loops on after ``close()``.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _describe(record: Record) -> str:
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


def _about(record: Record) -> dict[str, str | None]:
    """The log fields of a record: a fetched result came from the fetcher."""
    search = record.search if isinstance(record, FetchRecord) else record
    source = "api" if isinstance(record, FetchRecord) else None
    return fields_of(search.card_identifier, search.search_type.value, source)


class WriteBehind:
    """A bounded, ordered write buffer drained by one background task.

    Args:
        timeout: seconds ``flush()`` and ``close()`` wait when not given one.
        journal: the Redis Stream records go to first; ``None`` writes from memory only.
        claim_every: seconds between looks for entries other workers left idle.
        durable_wait: the longest ``durable()`` waits for Redis to take a record.
        journal_batch: the most records one round trip to the journal takes; 1 costs a
            round trip per record (how it compares is measured by ``bench/journal.py``).
    """

    def __init__(
        self,
        database: Database,
        metrics: Metrics,
        capacity: int,
        batch_size: int,
        interval: float,
        attempts: int = 3,
        pause: float = 1.0,
        timeout: float = 30.0,
        journal: Journal | None = None,
        claim_every: float = 5.0,
        durable_wait: float = 5.0,
        journal_batch: int = 500,
    ) -> None:
        self._database = database
        self._metrics = metrics
        self._capacity = capacity
        self._batch_size = batch_size
        self._interval = interval
        self._attempts = attempts
        self._pause = pause
        self._timeout = timeout
        self._queue: deque[_Queued] = deque()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outage = False
        self._urgent = False
        self._hurry = asyncio.Event()  # set by flush(): cuts the gathering pause short
        self._closed = False
        # Set by close() before it cancels the tasks: a loop ends on it even should the
        # cancellation be lost inside a client library.
        self._stopped = False
        # flush() waits for a count, not an empty queue, so steady traffic cannot starve it.
        self._accepted = 0
        self._settled = 0
        # The journal side: records on their way to the stream, entries to acknowledge.
        self._journal = journal
        self._claim_every = claim_every
        self._durable_wait = durable_wait
        self._journal_batch = max(journal_batch, 1)
        self._outbox: deque[Record] = deque()
        self._outbox_accepted = 0
        self._outbox_done = 0
        self._outbox_wakeup = asyncio.Event()
        self._journaled = asyncio.Event()
        # Searches waiting in durable(): (records journaled it waits for, tie-break, wakeup).
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tickets = itertools.count()
        self._consume_wakeup = asyncio.Event()
        self._appended: tuple[int, str] | None = None
        self._to_ack: list[str] = []
        self._held: set[str] = set()  # entries buffered or awaiting their acknowledgement
        # What this process appended and has not seen written yet: read back, an entry of
        # its own is not decoded again; should Redis lose the stream (a restart without
        # persistence), these are written from here instead.
        self._own: AppendedRecords | None = None
        if journal is not None:
            from kuya_store.tiers.journal import AppendedRecords

            self._own = AppendedRecords(capacity)
        self._append_task: asyncio.Task[None] | None = None
        self._consume_task: asyncio.Task[None] | None = None
        self.fenced: Callable[[FetchRecord], bool] | None = None
        """Whether a fetch read from the journal predates an invalidation of its card."""

    @property
    def pending(self) -> int:
        """Records waiting to be written here (including a batch being written now)."""
        return len(self._queue) + len(self._outbox)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun: from then on every record is refused."""
        return self._closed

    @property
    def journal(self) -> Journal | None:
        return self._journal

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
                "write buffer is closed; refused %s", _describe(record), extra=_about(record)
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

    def _buffer(self, record: Record) -> bool:
        if len(self._queue) >= self._capacity:
            self._metrics.incr("writes_dropped")
            return False
        self._queue.append(_Queued(record))
        self._accepted += 1
        self._wakeup.set()
        return True

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

    def detach(self, card_identifier: str, search_type: SearchType) -> int:
        """Keep this card's buffered fetches as history only (after ``invalidate``).

        Returns how many queued fetches no longer name a result.
        """

        def detached(record: Record) -> Record | None:
            if not isinstance(record, FetchRecord):
                return None
            search = record.search
            if (
                search.result_key is not None
                and search.card_identifier == card_identifier
                and search.search_type is search_type
            ):
                return dataclasses.replace(
                    record, search=dataclasses.replace(search, result_key=None)
                )
            return None

        count = 0
        for item in self._queue:
            changed = detached(item.record)
            if changed is not None:
                item.record = changed
                count += 1
        for index, record in enumerate(self._outbox):
            changed = detached(record)
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

    async def _stream_settled(self, appended: tuple[int, str]) -> bool:
        from kuya_store.tiers.journal import JournalUnavailableError

        assert self._journal is not None
        generation, entry = appended
        if generation != self._journal.generation:
            return True  # the stream was lost with Redis's data; nothing left to wait for
        try:
            return await self._journal.settled_through(entry)
        except JournalUnavailableError:
            return False

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
            await asyncio.wait(tasks, timeout=_CANCEL_GRACE)
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

    def _buffer_anyway(self, record: Record) -> None:
        # Only close() calls this: the records are counted as dropped right after.
        self._queue.append(_Queued(record))
        self._accepted += 1

    async def _leave_journal(self) -> None:
        """Acknowledge what was written, and leave the group if holding nothing (bounded)."""
        if self._journal is None:
            return
        from kuya_store.tiers.journal import JournalUnavailableError

        try:
            async with asyncio.timeout(_CANCEL_GRACE):
                await self._send_acks()
                if not self._held:
                    await self._journal.forget_consumer()
        except (TimeoutError, JournalUnavailableError):
            pass
        finally:
            await self._journal.close()

    def _settle(self, count: int) -> None:
        """``count`` records left the queue (written, refused or dropped): wake flush()."""
        acked = False
        for _ in range(min(count, len(self._queue))):
            item = self._queue.popleft()
            if item.entry is not None:
                if self._closed and self._task is None:
                    self._held.discard(item.entry)  # close(): left on the stream
                else:
                    self._to_ack.append(item.entry)
                    acked = True
        self._settled += count
        self._progress.set()
        if acked:
            self._consume_wakeup.set()

    # -- the journal ------------------------------------------------------------------

    async def _append_run(self) -> None:
        """Put queued records on the stream, a batch per round trip; fall back on failure."""
        from kuya_store.tiers.journal import JournalUnavailableError

        journal = self._journal
        assert journal is not None
        while not self._stopped:
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
        from kuya_store.tiers.journal import JournalUnavailableError

        journal = self._journal
        assert journal is not None
        next_claim = next_stats = 0.0
        while not self._stopped:
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
            await _wait(self._consume_wakeup, self._interval)
            if self._consume_wakeup.is_set() and not self._urgent:
                # Woken by an append: let the appends of the next moments gather, so one
                # read takes them all instead of a read per search (flush() cuts it short).
                await _wait(self._hurry, min(_READ_GATHER, self._interval))

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
                record = dataclasses.replace(
                    record, search=dataclasses.replace(record.search, result_key=None)
                )
            self._queue.append(_Queued(record, entry.id))
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

    # -- the database -----------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopped:
            if not self._queue:
                self._urgent = False
                self._hurry.clear()
                self._wakeup.clear()
                await self._wakeup.wait()
                if not self._urgent and self._queue and len(self._queue) < self._batch_size:
                    # Let a burst of hits gather into one statement, unless flush() asks.
                    await _wait(self._hurry, self._interval)
                continue  # woken by flush() with nothing queued, or ready to write
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self._attempts),
                    wait=wait_random_exponential(multiplier=0.05, max=self._pause),
                    retry=retry_if_exception(is_transient),
                    before_sleep=self._count_retry,
                    reraise=True,
                ):
                    with attempt:
                        await self._write_head()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):  # pragma: no cover - every write isolates its own
                    _log.exception("unexpected error in the write-behind task")
                    await asyncio.sleep(self._pause)
                    continue
                # The database is down: keep everything, in order, and try again later.
                if not self._outage:
                    _log.warning("database unreachable (%s); buffering writes", type(exc).__name__)
                self._outage = True
                self._metrics.incr("write_retries")
                await asyncio.sleep(self._pause)
            else:
                if self._outage:
                    self._metrics.incr("write_recoveries")
                    _log.info(
                        "database reachable again; %d writes still buffered", len(self._queue)
                    )
                self._outage = False

    def _count_retry(self, state: RetryCallState) -> None:
        self._metrics.incr("write_retries")

    async def _write_head(self) -> None:
        head = self._queue[0].record
        if isinstance(head, FetchRecord):
            try:
                search_id = await self._persist_fetch(head)
            except Exception as exc:
                if is_transient(exc):
                    raise
                await self._write_alone(head, exc)
                return
            self._written(1, 0 if search_id is None else 1)
            return
        batch: list[SearchRecord] = []
        for item in self._queue:
            record = item.record
            if not isinstance(record, SearchRecord) or len(batch) >= self._batch_size:
                break
            batch.append(record)
        await self._write_searches(batch)

    async def _persist_fetch(self, record: FetchRecord) -> int | None:
        listings = len(record.result.listings)
        with watch_write(self._metrics, "persist_fetch", listings, parent=record.search.trace):
            return await self._database.persist_fetch(record)

    async def _log_searches(self, batch: list[SearchRecord]) -> int:
        links = [record.trace for record in batch]
        with watch_write(self._metrics, "log_searches", len(batch), links=links):
            return await self._database.log_searches(batch)

    async def _write_searches(self, batch: list[SearchRecord]) -> None:
        """Write the rows at the head of the queue; a refused batch is bisected.

        Each half is its own transaction (on PostgreSQL a failed statement aborts the
        whole one), so k bad rows among n cost about 2k log2(n) statements.
        """
        try:
            new = await self._log_searches(batch)
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(batch) == 1:
                await self._write_alone(batch[0], exc)
                return
            middle = len(batch) // 2
            await self._write_searches(batch[:middle])
            await self._write_searches(batch[middle:])
            return
        self._written(len(batch), new)

    async def _write_alone(self, record: Record, error: Exception) -> None:
        """The head record, refused on its own: kept without an unknown user, else rejected."""
        if may_be_unknown_user(record, error):
            anonymous = without_user(record)
            try:
                if isinstance(anonymous, FetchRecord):
                    await self._persist_fetch(anonymous)
                else:
                    await self._log_searches([anonymous])
            except Exception as exc:
                if is_transient(exc):
                    raise
                error = exc
            else:
                self._metrics.incr("writes_user_unknown")
                _log.warning(
                    "%s kept without its user: %s",
                    _describe(record),
                    reason(error),
                    extra=_about(record),
                )
                self._written(1)
                return
        self._metrics.incr("writes_rejected")
        if isinstance(record, FetchRecord):
            _log.error(
                "database rejected %s; its search stays in the log: %s",
                _describe(record),
                reason(error),
                extra=_about(record),
            )
            # The search still happened: log it as a plain row that answers no later read.
            self._queue[0].record = dataclasses.replace(record.search, result_key=None)
            return
        _log.error(
            "database rejected %s, dropped: %s",
            _describe(record),
            reason(error),
            extra=_about(record),
        )
        self._settle(1)

    def _written(self, count: int, new: int | None = None) -> None:
        """``count`` records committed, ``new`` of them not written before (a replay is not)."""
        new = count if new is None else new
        self._metrics.incr("writes_written", new)
        if count > new:
            self._metrics.incr("writes_replayed", count - new)
        self._settle(count)
