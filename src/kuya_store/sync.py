"""``SyncCompsStore``: the same store without ``await``, for Flask, scripts and notebooks.

One private event loop runs in a daemon thread; every call is handed to it with
``run_coroutine_threadsafe`` and waited for, so the facade is safe to use from many
threads at once. The async objects are wrapped, not rewritten: each coroutine method of
``store.comps``, ``store.analytics``, ``store.accounts``, ``store.backup`` and
``store.cards`` becomes a blocking method of the same name.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from kuya_store.db.maintenance import MaintenanceReport
from kuya_store.models import Health
from kuya_store.settings import StoreSettings
from kuya_store.store import CompsStore

__all__ = ["SyncCompsStore"]

_T = TypeVar("_T")


class _Portal:
    """An event loop in a thread of its own, and a way to run coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="kuya-store-loop", daemon=True
        )
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "SyncCompsStore called from its own event loop; use CompsStore there"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class _Blocking:
    """Exposes an async object's coroutine methods as blocking methods of the same name."""

    def __init__(self, target: object, portal: _Portal) -> None:
        self._target = target
        self._portal = portal

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        @functools.wraps(attribute)
        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._portal.call(attribute(*args, **kwargs))

        return blocking

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._target)))

    def __repr__(self) -> str:
        return f"<blocking {self._target!r}>"


class SyncCompsStore:
    """:class:`~kuya_store.CompsStore` with the same methods, without ``await``.

    Use it as ``with SyncCompsStore(...) as store:``, or call :meth:`close` when done.
    Arguments are those of :class:`~kuya_store.CompsStore`; fetchers may be sync or async.
    """

    _PARTS = ("comps", "analytics", "accounts", "backup", "cards")
    comps: Any
    analytics: Any
    accounts: Any
    backup: Any
    cards: Any

    def __init__(self, settings: StoreSettings | None = None, **kwargs: Any) -> None:
        self._portal = _Portal()
        try:
            self._store: CompsStore = self._portal.call(_open(settings, kwargs))
        except BaseException:
            self._portal.stop()
            raise
        self.settings = self._store.settings
        for part in self._PARTS:
            setattr(self, part, _Blocking(getattr(self._store, part), self._portal))
        self._closed = False
        self._lock = threading.Lock()

    @property
    def async_store(self) -> CompsStore:
        """The wrapped :class:`CompsStore` (its coroutines must run on this facade's loop)."""
        return self._store

    def __repr__(self) -> str:
        return f"Sync{self._store!r}"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
        return self._portal.call(method(*args))

    def create_schema(self) -> None:
        """Migrate the database to the newest revision."""
        self._call(self._store.create_schema)

    def health(self) -> Health:
        """Readiness: healthy, degraded or unhealthy."""
        return self._call(self._store.health)

    def ping_redis(self) -> bool:
        """True when Redis answers."""
        return self._call(self._store.ping_redis)

    def ping_database(self) -> bool:
        """True when the database answers."""
        return self._call(self._store.ping_database)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every buffered write is persisted."""
        return self._call(self._store.flush, timeout)

    def database_size(self) -> int | None:
        """Bytes the database takes; remembered for ``metrics()``."""
        return self._call(self._store.database_size)

    def maintain(self) -> MaintenanceReport:
        """Partitions ahead, retention, refreshed analytics views."""
        return self._call(self._store.maintain)

    def metrics(self) -> dict[str, Any]:
        """Counters and timings as a plain dict."""
        return self._store.metrics()

    def close(self, timeout: float | None = 30.0) -> None:
        """Persist what is buffered, disconnect, and stop the loop thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._call(self._store.close, timeout)
        finally:
            self._portal.stop()


async def _open(settings: StoreSettings | None, kwargs: dict[str, Any]) -> CompsStore:
    store = CompsStore(settings, **kwargs)
    await store.start()
    return store
