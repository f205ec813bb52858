"""The write-behind's database task: the buffer's head written in order, outages retried.

- The database is unreachable (:func:`kuya_store.write_faults.is_transient`): the batch
  stays at the head of the queue and is retried with jittered backoff, so the outage's
  writes are replayed in order once it is back.
- The database refuses a batch for what is in it (a constraint, bad data): the batch is
  bisected (:func:`kuya_store.write_batches.halves`), each half in a fresh transaction,
  until the offending record stands alone; every other record lands. A row whose only
  fault is an unknown ``user_id`` is kept without its user; any other refused record is
  counted (``writes_rejected``) and logged with the reason. A refused fetched result still
  leaves its search in the log.
"""

from __future__ import annotations

import asyncio
import dataclasses

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from kuya_store.logs import get_logger
from kuya_store.observing import watch_write
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.write_batches import describe, halves, head_searches, log_fields
from kuya_store.write_buffer import Record, WriteBuffer, cancel_requested, wait_at_most
from kuya_store.write_faults import is_transient, may_be_unknown_user, reason, without_user

__all__ = ["DatabaseDrain"]

# The write-behind logs as one, under the name operators know it by.
_log = get_logger("kuya_store.writer")


class DatabaseDrain(WriteBuffer):
    """The task that writes the buffer to the database, a batch at a time, in order."""

    async def _run(self) -> None:
        while not self._stopped:
            if cancel_requested():
                raise asyncio.CancelledError
            if not self._queue:
                self._urgent = False
                self._hurry.clear()
                self._wakeup.clear()
                await self._wakeup.wait()
                if not self._urgent and self._queue and len(self._queue) < self._batch_size:
                    # Let a burst of hits gather into one statement, unless flush() asks.
                    await wait_at_most(self._hurry, self._interval)
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
        batch = head_searches((item.record for item in self._queue), self._batch_size)
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
            first, second = halves(batch)
            await self._write_searches(first)
            await self._write_searches(second)
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
                    describe(record),
                    reason(error),
                    extra=log_fields(record),
                )
                self._written(1)
                return
        self._metrics.incr("writes_rejected")
        if isinstance(record, FetchRecord):
            _log.error(
                "database rejected %s; its search stays in the log: %s",
                describe(record),
                reason(error),
                extra=log_fields(record),
            )
            # The search still happened: log it as a plain row that answers no later read.
            self._queue[0].record = dataclasses.replace(record.search, result_key=None)
            return
        _log.error(
            "database rejected %s, dropped: %s",
            describe(record),
            reason(error),
            extra=log_fields(record),
        )
        self._settle(1)

    def _written(self, count: int, new: int | None = None) -> None:
        """``count`` records committed, ``new`` of them not written before (a replay is not)."""
        new = count if new is None else new
        self._metrics.incr("writes_written", new)
        if count > new:
            self._metrics.incr("writes_replayed", count - new)
        self._settle(count)
