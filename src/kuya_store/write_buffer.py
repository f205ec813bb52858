"""The write-behind's buffer: its queues, their counts, and the events that wake its tasks.

What the database task (:mod:`kuya_store.write_drain`) and the journal's tasks
(:mod:`kuya_store.write_journal`) share; :class:`~kuya_store.writer.WriteBehind` is all of
them over one buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from kuya_store.metrics import Metrics
from kuya_store.persistence import Database, FetchRecord, SearchRecord

if TYPE_CHECKING:
    from kuya_store.tiers.journal import Journal
    from kuya_store.tiers.journal_append import AppendedRecords

__all__ = [
    "CANCEL_GRACE",
    "Queued",
    "WriteBuffer",
    "cancel_requested",
    "wait_at_most",
]

Record = SearchRecord | FetchRecord
# How long close() waits for a cancelled in-flight write to unwind.
CANCEL_GRACE = 1.0


@dataclasses.dataclass(slots=True)
class Queued:
    """A buffered record and the journal entry it was read from, to acknowledge once written."""

    record: Record
    entry: str | None = None


def cancel_requested() -> bool:
    """Whether this task was asked to cancel, even where a library swallowed the error.

    Python 3.11's ``asyncio.wait_for`` (redis-py bounds each write by its socket timeout
    with it) returns a reply that lands with a cancellation and drops the cancellation:
    a loop that runs until stopped would then run on, and a loop closing its tasks waits
    on it forever. The task still counts the request (``Task.cancelling``).
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def wait_at_most(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event`` at most ``seconds``.

    Not ``asyncio.wait_for``: before Python 3.12 it can swallow a cancellation that meets
    its timeout, and a task that misses its cancel loops on after ``close()``.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class WriteBuffer:
    """A bounded, ordered buffer of records to write, and the journal records go to first."""

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
        self._queue: deque[Queued] = deque()
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
            from kuya_store.tiers.journal_append import AppendedRecords

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

    def _buffer(self, record: Record) -> bool:
        if len(self._queue) >= self._capacity:
            self._metrics.incr("writes_dropped")
            return False
        self._queue.append(Queued(record))
        self._accepted += 1
        self._wakeup.set()
        return True

    def _buffer_anyway(self, record: Record) -> None:
        # Only close() calls this: the records are counted as dropped right after.
        self._queue.append(Queued(record))
        self._accepted += 1

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
