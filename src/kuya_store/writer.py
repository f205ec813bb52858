"""Writes behind the request: the search log and fetched results, in order, in batches.

A search never waits on the database. Records queue in a bounded buffer; one task
drains it, batching consecutive search-log rows into one statement and writing each
fetched result in its own transaction.

- The database is unreachable (:func:`is_transient`): the batch stays at the head of the
  queue and is retried with jittered backoff, so the outage's writes are replayed in
  order once it is back.
- The database refuses a batch for what is in it (a constraint, bad data): the batch is
  bisected, each half in a fresh transaction, until the offending record stands alone;
  every other record lands. A row whose only fault is an unknown ``user_id`` is kept
  without its user; any other refused record is counted (``writes_rejected``) and logged
  with the reason. A refused fetched result still leaves its search in the log.
- What the full buffer, or a closed one, had to refuse, and what ``close()`` could not
  write in time, is counted (``writes_dropped``), never silent. ``flush()`` and
  ``close()`` wait at most their timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
from collections import deque

from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
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

__all__ = ["WriteBehind", "is_transient"]

_log = get_logger("kuya_store.writer")
Record = SearchRecord | FetchRecord

# SQLSTATEs where the server, not the record, is at fault: connection (08), authorization
# (28), rollback such as deadlock or serialization (40), resources (53), shutdown (57),
# system (58); a missing database, grant or table (the schema is not migrated yet, which
# SQLite reports as a retried OperationalError too); a lock not available; a prepared
# statement the server connection does not have, or already has (a pooler such as PgBouncer
# in transaction mode moved the connection: the record is not at fault).
_TRANSIENT_CLASSES = frozenset({"08", "28", "40", "53", "57", "58"})
_TRANSIENT_STATES = frozenset({"3D000", "42501", "42P01", "55006", "55P03", "26000", "42P05"})
_TRANSIENT_NAMES = ("Connection", "CannotConnect", "Shutdown", "InvalidCachedStatement")
# How long close() waits for a cancelled in-flight write to unwind.
_CANCEL_GRACE = 1.0


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed later unchanged: the database is at fault, not the data.

    Transient: connection trouble, a locked SQLite file, a server shutting down, a deadlock,
    an exhausted pool, a schema not migrated yet. Anything else (a constraint violation,
    data the column cannot hold) is the record's fault and retrying cannot fix it.
    """
    if isinstance(exc, OSError | TimeoutError | PoolTimeoutError | DisconnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError):
            return True
        state = getattr(exc.orig, "sqlstate", None)
        if isinstance(state, str) and len(state) == 5:
            return (
                state[:2] in _TRANSIENT_CLASSES
                or state in _TRANSIENT_STATES
                or (exc.orig is not None and _transient_name(exc.orig))
            )
        causes = (exc.orig, getattr(exc.orig, "__cause__", None))
        return any(_transient_name(cause) for cause in causes if cause is not None)
    return _transient_name(exc)


def _transient_name(exc: BaseException) -> bool:
    name = type(exc).__name__
    return any(word in name for word in _TRANSIENT_NAMES)


def _may_be_unknown_user(record: Record, exc: Exception) -> bool:
    """Whether the refusal may be the ``users`` foreign key (the only one a search row has)."""
    search = record.search if isinstance(record, FetchRecord) else record
    if search.user_id is None or not isinstance(exc, IntegrityError):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    sqlite_name = getattr(exc.orig, "sqlite_errorname", None)
    if state is not None:
        return bool(state == "23503")
    return sqlite_name is None or sqlite_name == "SQLITE_CONSTRAINT_FOREIGNKEY"


def _without_user(record: Record) -> Record:
    if isinstance(record, FetchRecord):
        return dataclasses.replace(record, search=dataclasses.replace(record.search, user_id=None))
    return dataclasses.replace(record, user_id=None)


def _reason(exc: BaseException) -> str:
    """The database's own words, first line only: never the statement or its parameters."""
    source = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(source).strip().splitlines()
    return f"{type(source).__name__}: {text[0][:300] if text else ''}"


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
    ) -> None:
        self._database = database
        self._metrics = metrics
        self._capacity = capacity
        self._batch_size = batch_size
        self._interval = interval
        self._attempts = attempts
        self._pause = pause
        self._timeout = timeout
        self._queue: deque[Record] = deque()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outage = False
        self._urgent = False
        self._hurry = asyncio.Event()  # set by flush(): cuts the gathering pause short
        self._closed = False
        # flush() waits for a count, not an empty queue, so steady traffic cannot starve it.
        self._accepted = 0
        self._settled = 0

    @property
    def pending(self) -> int:
        """Records waiting to be written (including a batch being written now)."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun: from then on every record is refused."""
        return self._closed

    def start(self) -> None:
        """Start the draining task (again, should it have died); never after :meth:`close`."""
        if not self._closed:
            self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            # A context of its own: started by a search, it must not log as that search.
            self._task = asyncio.create_task(
                self._run(), name="kuya-write-behind", context=contextvars.Context()
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
        if len(self._queue) >= self._capacity:
            self._metrics.incr("writes_dropped")
            return False
        self._queue.append(record)
        self._accepted += 1
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
        """Wait until everything queued so far is written or refused.

        Returns ``False`` (and logs what is left) when ``timeout`` seconds, by default the
        buffer's own, ran out first: the records stay queued and are written later.
        """
        target = self._accepted
        if self._settled >= target:
            return True
        limit = self._timeout if timeout is None else timeout
        self._ensure_running()  # also while close() flushes: what was accepted is written
        self._urgent = True
        self._hurry.set()
        self._wakeup.set()
        try:
            async with asyncio.timeout(limit):
                while self._settled < target:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            _log.warning(
                "flush gave up after %.1f s: %d records still unwritten, %d buffered in all%s",
                limit,
                target - self._settled,
                len(self._queue),
                " (database unreachable)" if self._outage else "",
            )
            return False
        return True

    async def close(self, timeout: float | None = None) -> bool:
        """Refuse new records, flush for at most ``timeout`` seconds, then stop.

        Returns whether everything was written; what was not is counted as dropped.
        """
        if self._closed:
            return not self._queue
        self._closed = True
        done = await self.flush(timeout)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # A write blocked on a dead server must not hold close() up either.
            await asyncio.wait({task}, timeout=_CANCEL_GRACE)
        left = len(self._queue)
        if left:
            fetches = sum(isinstance(r, FetchRecord) for r in self._queue)
            self._metrics.incr("writes_dropped", left)
            _log.error(
                "closing with %d unwritten records (%d search-log rows, %d fetched results); "
                "counted as dropped",
                left,
                left - fetches,
                fetches,
            )
            self._queue.clear()
            self._settle(left)
        return done and not left

    def _settle(self, count: int) -> None:
        """``count`` records left the queue (written, refused or dropped): wake flush()."""
        for _ in range(min(count, len(self._queue))):
            self._queue.popleft()
        self._settled += count
        self._progress.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._urgent = False
                self._hurry.clear()
                self._wakeup.clear()
                await self._wakeup.wait()
                if not self._urgent and self._queue and len(self._queue) < self._batch_size:
                    # Let a burst of hits gather into one statement, unless flush() asks.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._hurry.wait(), self._interval)
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
        head = self._queue[0]
        if isinstance(head, FetchRecord):
            try:
                await self._persist_fetch(head)
            except Exception as exc:
                if is_transient(exc):
                    raise
                await self._write_alone(head, exc)
                return
            self._written(1)
            return
        batch: list[SearchRecord] = []
        for record in self._queue:
            if not isinstance(record, SearchRecord) or len(batch) >= self._batch_size:
                break
            batch.append(record)
        await self._write_searches(batch)

    async def _persist_fetch(self, record: FetchRecord) -> None:
        listings = len(record.result.listings)
        with watch_write(self._metrics, "persist_fetch", listings, parent=record.search.trace):
            await self._database.persist_fetch(record)

    async def _log_searches(self, batch: list[SearchRecord]) -> None:
        links = [record.trace for record in batch]
        with watch_write(self._metrics, "log_searches", len(batch), links=links):
            await self._database.log_searches(batch)

    async def _write_searches(self, batch: list[SearchRecord]) -> None:
        """Write the rows at the head of the queue; a refused batch is bisected.

        Each half is its own transaction (on PostgreSQL a failed statement aborts the
        whole one), so k bad rows among n cost about 2k log2(n) statements.
        """
        try:
            await self._log_searches(batch)
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
        self._written(len(batch))

    async def _write_alone(self, record: Record, error: Exception) -> None:
        """The head record, refused on its own: kept without an unknown user, else rejected."""
        if _may_be_unknown_user(record, error):
            anonymous = _without_user(record)
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
                    _reason(error),
                    extra=_about(record),
                )
                self._written(1)
                return
        self._metrics.incr("writes_rejected")
        if isinstance(record, FetchRecord):
            _log.error(
                "database rejected %s; its search stays in the log: %s",
                _describe(record),
                _reason(error),
                extra=_about(record),
            )
            # The search still happened: log it as a plain row that answers no later read.
            self._queue[0] = dataclasses.replace(record.search, result_key=None)
            return
        _log.error(
            "database rejected %s, dropped: %s",
            _describe(record),
            _reason(error),
            extra=_about(record),
        )
        self._settle(1)

    def _written(self, count: int) -> None:
        self._metrics.incr("writes_written", count)
        self._settle(count)
