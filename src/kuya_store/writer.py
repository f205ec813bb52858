"""Writes behind the request: the search log and fetched results, in order, in batches.

A search never waits on the database. Records queue in a bounded buffer; one task
drains it, batching consecutive search-log rows into one statement and writing each
fetched result in its own transaction. When the database is unreachable the batch
stays at the head of the queue and is retried with jittered backoff, so the outage's
writes are replayed in order once it is back. What the full buffer had to refuse is
counted (``writes_dropped``), never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque

from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from kuya_store.metrics import Metrics
from kuya_store.models import SearchType
from kuya_store.persistence import Database, FetchRecord, SearchRecord

__all__ = ["WriteBehind", "is_transient"]

_log = logging.getLogger("kuya_store.writer")
Record = SearchRecord | FetchRecord


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write is worth retrying (connection trouble, a locked SQLite file)."""
    if isinstance(exc, OperationalError | OSError | asyncio.TimeoutError | ConnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        name = type(exc.orig).__name__ if exc.orig is not None else ""
        return "Connection" in name or "CannotConnectNow" in name or "Shutdown" in name
    return "Connection" in type(exc).__name__


class WriteBehind:
    """A bounded, ordered write buffer drained by one background task."""

    def __init__(
        self,
        database: Database,
        metrics: Metrics,
        capacity: int,
        batch_size: int,
        interval: float,
        attempts: int = 3,
        pause: float = 1.0,
    ) -> None:
        self._database = database
        self._metrics = metrics
        self._capacity = capacity
        self._batch_size = batch_size
        self._interval = interval
        self._attempts = attempts
        self._pause = pause
        self._queue: deque[Record] = deque()
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._outage = False
        self._urgent = False

    @property
    def pending(self) -> int:
        """Records waiting to be written (including a batch being written now)."""
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kuya-write-behind")

    def submit(self, record: Record) -> bool:
        """Queue a record; ``False`` (and counted) when the buffer is full."""
        if self._task is None or self._task.done():
            self._task = None
            self.start()
        if len(self._queue) >= self._capacity:
            self._metrics.incr("writes_dropped")
            return False
        self._queue.append(record)
        self._drained.clear()
        self._wakeup.set()
        return True

    def detach(self, card_identifier: str, search_type: SearchType) -> int:
        """Keep this card's buffered fetches as history only (after ``invalidate``).

        Returns how many queued fetches no longer name a result.
        """
        detached = 0
        for index in range(len(self._queue)):
            record = self._queue[index]
            if not isinstance(record, FetchRecord):
                continue
            search = record.search
            if (
                search.result_key is not None
                and search.card_identifier == card_identifier
                and search.search_type is search_type
            ):
                self._queue[index] = dataclasses.replace(
                    record, search=dataclasses.replace(search, result_key=None)
                )
                detached += 1
        return detached

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written; ``False`` if ``timeout`` passed."""
        self._urgent = True
        self._wakeup.set()
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the task; returns whether everything was written."""
        done = await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not done:
            self._metrics.incr("writes_dropped", len(self._queue))
            _log.error("closing with %d unwritten records", len(self._queue))
        return done

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._drained.set()
                self._urgent = False
                self._wakeup.clear()
                await self._wakeup.wait()
                if not self._urgent and self._queue and len(self._queue) < self._batch_size:
                    # Let a burst of hits gather into one statement.
                    await asyncio.sleep(self._interval)
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
                if not is_transient(exc):
                    if not self._queue:  # pragma: no cover - defensive: keep the task alive
                        _log.exception("unexpected error in the write-behind task")
                        continue
                    dropped = self._queue.popleft()
                    self._metrics.incr("writes_rejected")
                    _log.exception("write rejected by the database, dropped: %r", dropped)
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
        head = self._queue[0]
        if isinstance(head, FetchRecord):
            await self._database.persist_fetch(head)
            self._queue.popleft()
            self._metrics.incr("writes_written")
            return
        batch: list[SearchRecord] = []
        for record in self._queue:
            if not isinstance(record, SearchRecord) or len(batch) >= self._batch_size:
                break
            batch.append(record)
        await self._database.log_searches(batch)
        for _ in batch:
            self._queue.popleft()
        self._metrics.incr("writes_written", len(batch))
