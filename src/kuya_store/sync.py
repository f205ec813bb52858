"""``SyncCompsStore``: the same store without ``await``, for Flask, scripts and notebooks.

anyio's blocking portal runs the async store on an event loop in a daemon thread; every
call is handed to it and waited for, so the facade is safe from many threads at once.
The async objects are wrapped, not rewritten: each coroutine method of ``store.comps``,
``store.analytics``, ``store.accounts``, ``store.backup`` (and of any other part of the
store) becomes a blocking method of the same name.

Its life, whatever the caller forgets:

- ``close()`` refuses new calls, lets the calls in flight finish within ``timeout`` and
  then cancels them (their callers get :class:`~kuya_store.StoreClosedError`), persists
  the buffer in what is left of ``timeout``, disconnects and stops the loop; it returns
  within about ``timeout`` plus a few seconds even while a fetcher hangs.
- In a forked child (``gunicorn --preload``) the store re-opens itself on first use: a
  new loop, new connections, an empty buffer. The parent's copy is never touched in the
  child, so what the parent had buffered is written once, by the parent.
- A store nobody closed is closed when it is garbage collected or the interpreter exits;
  only a weak reference is held for that, so it never keeps a store alive.

The loop thread is started here rather than by ``anyio.from_thread.start_blocking_portal``
because that context manager joins the thread without a bound (a sync fetcher still
running would hold ``close()``), and in a forked child its exit would wait on a loop that
no longer runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, TypeVarTuple, Unpack

import anyio
from anyio.from_thread import BlockingPortal

from kuya_store.clock import Clock
from kuya_store.db.maintenance import MaintenanceReport
from kuya_store.errors import StoreClosedError
from kuya_store.fetching import Fetcher
from kuya_store.freshness import FreshnessPolicy
from kuya_store.models import Health, SearchType
from kuya_store.pricing import Valuator
from kuya_store.settings import StoreSettings
from kuya_store.store import CompsStore
from kuya_store.sync_parts import (
    SyncAccounts,
    SyncAnalytics,
    SyncBackup,
    SyncCards,
    SyncCollections,
    SyncCompsRepository,
    _Part,
)

__all__ = ["SyncCompsStore"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")
_log = logging.getLogger("kuya_store.sync")

_THREAD_NAME = "kuya-store-loop"
_GRACE = 5.0
"""Seconds allowed, beyond the flush timeout, for disconnecting and stopping the loop."""
_FORGOTTEN_CLOSE_TIMEOUT = 30.0
_CLOSED = "this SyncCompsStore is closed; open a new one"
_CLOSED_DURING_CALL = "the SyncCompsStore was closed while this call was running"

_Last = Callable[[float | None], Awaitable[object]]
"""The store's own close, handed the seconds left of the close timeout."""


class _Portal:
    """anyio's blocking portal on an event loop in a daemon thread of its own."""

    def __init__(self) -> None:
        started: concurrent.futures.Future[BlockingPortal] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=_serve, args=(started,), name=_THREAD_NAME, daemon=True
        )
        self._thread.start()
        self._portal = started.result()
        self._lock = threading.Lock()
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self._accepting = True
        self._stopped = False

    def call(self, func: Callable[[Unpack[_Ts]], Awaitable[_T]], *args: *_Ts) -> _T:
        """Run ``func(*args)`` on the loop and wait; ``StoreClosedError`` once stopping."""
        self.refuse_own_thread()
        with self._lock:
            if not self._accepting:
                raise StoreClosedError(_CLOSED)
        try:
            future = self._portal.start_task_soon(func, *args)
        except RuntimeError:  # the portal stopped between the check and the call
            raise StoreClosedError(_CLOSED) from None
        with self._lock:
            self._calls.add(future)
            if not self._accepting:  # stop() took its list of calls before this one
                future.cancel()
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise StoreClosedError(_CLOSED_DURING_CALL) from None
        finally:
            with self._lock:
                self._calls.discard(future)

    def stop(self, last: _Last | None, timeout: float | None) -> None:
        """Refuse new calls, let running ones finish, then cancel them, run ``last``, stop.

        Running calls and ``last`` share ``timeout``: ``last`` is handed what is left of it.
        """
        self.refuse_own_thread()
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._accepting = False
            running = list(self._calls)
        deadline = None if timeout is None else time.monotonic() + timeout
        concurrent.futures.wait(running, timeout)
        for future in running:
            future.cancel()  # their callers get StoreClosedError
        if last is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._run_last(last, left)
        with contextlib.suppress(RuntimeError):  # the loop is already gone
            self._portal.call(self._portal.stop, True)
        self._thread.join(_GRACE)
        if self._thread.is_alive():
            # A sync fetcher still running in a worker thread holds the loop's exit.
            _log.warning("event loop still finishing in the background (a fetcher is running)")

    def _run_last(self, last: _Last, left: float | None) -> None:
        try:
            future = self._portal.start_task_soon(last, left)
        except RuntimeError:
            return
        bound = None if left is None else left + _GRACE
        try:
            future.result(bound)
        except TimeoutError:
            future.cancel()
            _log.error("closing the store took longer than %.1f s; stopped waiting", bound)
        except concurrent.futures.CancelledError:
            pass
        except Exception:
            _log.exception("closing the store failed")

    def refuse_own_thread(self) -> None:
        """Waiting on the loop from the loop's own thread would never end."""
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError(
                "SyncCompsStore called from its own event loop (from an async fetcher?); "
                "await the CompsStore (store.async_store) there"
            )


def _serve(started: concurrent.futures.Future[BlockingPortal]) -> None:
    async def run() -> None:
        async with BlockingPortal() as portal:
            started.set_result(portal)
            await portal.sleep_until_stopped()

    try:
        anyio.run(run)
    except BaseException as exc:
        if not started.done():
            started.set_exception(exc)
        else:
            _log.exception("the store's event loop stopped with an error")


@dataclass(frozen=True)
class _Opened:
    """An open async store, its portal, and the process they belong to."""

    portal: _Portal
    store: CompsStore
    pid: int


async def _start(settings: StoreSettings | None, kwargs: dict[str, Any]) -> CompsStore:
    store = CompsStore(settings, **kwargs)
    await store.start()
    return store


def _open(settings: StoreSettings | None, kwargs: dict[str, Any]) -> _Opened:
    portal = _Portal()
    try:
        store = portal.call(_start, settings, kwargs)
    except BaseException:
        portal.stop(None, 0)
        raise
    return _Opened(portal, store, os.getpid())


def _shut(opened: _Opened, timeout: float | None) -> None:
    """Close an open store; in a forked child the parent's copy is left alone."""
    if opened.pid == os.getpid():
        opened.portal.stop(opened.store.close, timeout)


def _close_forgotten(opened: _Opened) -> None:
    """Close a store nobody closed: it was garbage collected, or the interpreter is exiting."""
    if opened.pid != os.getpid():
        return
    _log.info("closing a SyncCompsStore that was not closed")
    if threading.current_thread() is threading.main_thread():
        _shut(opened, _FORGOTTEN_CLOSE_TIMEOUT)
    else:
        # The collector may be running on a thread the close needs (the loop's, a driver's).
        threading.Thread(
            target=_shut, args=(opened, _FORGOTTEN_CLOSE_TIMEOUT), name="kuya-store-close"
        ).start()


_stores: weakref.WeakSet[SyncCompsStore] = weakref.WeakSet()
_forsaken: list[_Opened] = []
"""A forked child's copies of its parent's stores: kept, never used, never finalized."""


def _after_fork_in_child() -> None:
    # A lock some parent thread held at the fork would stay held in the child forever.
    for store in list(_stores):
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _has_coroutine_methods(value: object) -> bool:
    return any(
        inspect.iscoroutinefunction(getattr(type(value), name, None))
        for name in dir(type(value))
        if not name.startswith("_")
    )


class SyncCompsStore:
    """:class:`~kuya_store.CompsStore` with the same methods, without ``await``.

    Use it as ``with SyncCompsStore(...) as store:``, or call :meth:`close` when done.
    Arguments are those of :class:`~kuya_store.CompsStore`; fetchers may be sync or async.
    """

    comps: SyncCompsRepository
    """``store.comps``: searches, listings and invalidation."""
    analytics: SyncAnalytics
    """``store.analytics``: price history, trends and search statistics."""
    accounts: SyncAccounts
    """``store.accounts``: users, saved searches and alerts."""
    backup: SyncBackup
    """``store.backup``: CSV export and import, and the partial rollback."""
    collections: SyncCollections
    """``store.collections``: binders, cards, revaluation and value history."""
    cards: SyncCards
    """``store.cards``: full-text search over the cards searched before."""
    settings: StoreSettings
    """The settings the store runs with (arguments and environment merged)."""

    def __init__(
        self,
        settings: StoreSettings | None = None,
        *,
        fetchers: Mapping[SearchType, Fetcher] | Mapping[str, Fetcher] | None = None,
        clock: Clock | None = None,
        valuator: Valuator | str | None = None,
        freshness: FreshnessPolicy | None = None,
        **overrides: Any,
    ) -> None:
        kwargs: dict[str, Any] = {
            "fetchers": fetchers,
            "clock": clock,
            "valuator": valuator,
            "freshness": freshness,
            **overrides,
        }
        self._args = (settings, kwargs)
        self._lock = threading.Lock()
        self._closed = False
        self._opened = _open(settings, kwargs)
        self._finalizer = weakref.finalize(self, _close_forgotten, self._opened)
        self.settings = self._opened.store.settings
        self.comps = SyncCompsRepository(self)
        self.analytics = SyncAnalytics(self)
        self.accounts = SyncAccounts(self)
        self.backup = SyncBackup(self)
        self.collections = SyncCollections(self)
        self.cards = SyncCards(self)
        _stores.add(self)

    if not TYPE_CHECKING:
        # Whatever the async store gained and this class does not name yet still works;
        # type checkers see only what is named.
        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            attribute = getattr(self.async_store, name)
            if inspect.iscoroutinefunction(attribute):

                @functools.wraps(attribute)
                def blocking(*args: Any, **kwargs: Any) -> Any:
                    return self._run(lambda store: getattr(store, name)(*args, **kwargs))

                return blocking
            if _has_coroutine_methods(attribute):
                part = type(f"Sync{type(attribute).__name__}", (_Part,), {"_attribute": name})
                setattr(self, name, part(self))
                return getattr(self, name)
            return attribute

    @property
    def async_store(self) -> CompsStore:
        """The wrapped :class:`CompsStore` (its coroutines must run on this facade's loop)."""
        return self._current().store

    def __repr__(self) -> str:
        return f"Sync{self._opened.store!r}"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _current(self) -> _Opened:
        """The open store of this process: re-opened once after a fork; never after close."""
        opened = self._opened
        if self._closed:
            raise StoreClosedError(_CLOSED)
        if opened.pid != os.getpid():
            return self._reopen_after_fork()
        return opened

    def _reopen_after_fork(self) -> _Opened:
        with self._lock:
            if self._closed:
                raise StoreClosedError(_CLOSED)
            if self._opened.pid != os.getpid():
                # The parent's loop thread does not exist here and its connections are the
                # parent's: leave them be (and its buffer to the parent) and start afresh.
                _forsaken.append(self._opened)
                self._finalizer.detach()
                self._opened = _open(*self._args)
                self._finalizer = weakref.finalize(self, _close_forgotten, self._opened)
                _log.info("store re-opened in forked process %d", self._opened.pid)
            return self._opened

    def _run(self, step: Callable[[CompsStore], Awaitable[_T]]) -> _T:
        opened = self._current()
        return opened.portal.call(step, opened.store)

    def create_schema(self) -> None:
        """Migrate the database to the newest revision."""
        self._run(CompsStore.create_schema)

    def health(self) -> Health:
        """Readiness: healthy, degraded or unhealthy."""
        return self._run(CompsStore.health)

    def ping_redis(self) -> bool:
        """True when Redis answers."""
        return self._run(CompsStore.ping_redis)

    def ping_database(self) -> bool:
        """True when the database answers."""
        return self._run(CompsStore.ping_database)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every buffered write is persisted."""
        return self._run(lambda store: store.flush(timeout))

    def database_size(self) -> int | None:
        """Bytes the database takes; remembered for ``metrics()``."""
        return self._run(CompsStore.database_size)

    def maintain(self) -> MaintenanceReport:
        """Partitions ahead, retention, refreshed analytics views."""
        return self._run(lambda store: store.maintain())

    def metrics(self) -> dict[str, Any]:
        """Counters and timings as a plain dict."""
        return self._current().store.metrics()

    def close(self, timeout: float | None = 30.0) -> None:
        """Persist what is buffered, disconnect, and stop the loop thread, within ``timeout``.

        Calls running in other threads may finish within ``timeout``; then they are cancelled
        and raise ``StoreClosedError``, as does every call after this one. Closing twice is
        harmless.
        """
        if self._opened.pid == os.getpid():
            self._opened.portal.refuse_own_thread()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            opened = self._opened
        self._finalizer.detach()
        _stores.discard(self)
        _shut(opened, timeout)
