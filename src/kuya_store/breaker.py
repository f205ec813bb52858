"""A circuit breaker, so a dead server costs one timeout, not one per request.

Every guarded call site (the Redis tier, database reads) goes through
:meth:`CircuitBreaker.guard`, so the rules live here once:

- a failure counts, a success closes the breaker;
- a call that is cancelled (client disconnect, a timeout around ``search()``) counts as
  neither: it hands the probe back, so the next call may probe again;
- a probe that never reports back (a task killed without unwinding) expires after
  ``reset_after``, so a half-open breaker can never refuse forever;
- a cancellation that a driver swallowed is raised again. On Python 3.11
  ``asyncio.wait_for`` returns the result instead of raising when the cancellation
  arrives as the awaited call completes (redis-py sends every command through it), so a
  search whose caller had given up would go on, and pay.

It is written here rather than taken from a breaker library because none of those
available keeps these rules: ``purgatory`` lets every call through while half-open,
counts a cancelled call as a failure (or, told to ignore it, as a success that closes
the breaker) and reads the wall clock; ``circuitbreaker`` closes the breaker on any
exception it does not count, cancellation included, and has no single probe;
``pybreaker`` is synchronous (asyncio only through Tornado) and ``aiobreaker``, its
asyncio port, is no longer maintained. None can be driven by a test clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

__all__ = ["CircuitBreaker", "Outcome"]

State = Literal["closed", "open", "half_open"]
Outcome = Literal["ok", "skipped", "failed"]
_T = TypeVar("_T")


class CircuitBreaker:
    """Opens after ``threshold`` failures in a row; after ``reset_after`` s lets one probe through.

    ``allow()`` says whether to try the call; report the outcome with ``success()``,
    ``failure()`` or, when the call was abandoned, ``release()``. Time comes from
    ``monotonic`` so tests can drive it.
    """

    def __init__(
        self,
        threshold: int,
        reset_after: float,
        monotonic: Callable[[], float] = time.monotonic,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self._monotonic = monotonic
        self._on_open = on_open
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_since: float | None = None

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._monotonic() - self._opened_at >= self.reset_after:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._monotonic()
        if self._probe_since is None or now - self._probe_since >= self.reset_after:
            self._probe_since = now
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probe_since = None

    def failure(self) -> None:
        self._failures += 1
        probing = self._probe_since is not None
        if probing or (self._opened_at is None and self._failures >= self.threshold):
            self._opened_at = self._monotonic()
            self._probe_since = None
            if self._on_open is not None:
                self._on_open()

    def release(self) -> None:
        """The allowed call ended without an outcome (cancelled): let another call probe."""
        self._probe_since = None

    async def guard(
        self,
        operation: Callable[[], Awaitable[_T]],
        failures: tuple[type[BaseException], ...] | Callable[[BaseException], bool],
    ) -> tuple[Outcome, _T | None]:
        """Run ``operation`` if the breaker allows it.

        Returns ``("ok", value)``, ``("skipped", None)`` when the breaker is open, or
        ``("failed", None)`` when the call raised one of ``failures`` (a tuple of types, or
        a predicate). Anything else, cancellation included, propagates after the breaker
        has been told that this call has no outcome.
        """
        if not self.allow():
            return "skipped", None
        task = asyncio.current_task()
        asked = task.cancelling() if task is not None else 0
        try:
            value = await operation()
        except BaseException as exc:
            counts = isinstance(exc, failures) if isinstance(failures, tuple) else failures(exc)
            if counts and isinstance(exc, Exception):
                self.failure()
                return "failed", None
            self.release()
            raise
        self.success()
        if task is not None and task.cancelling() > asked:
            raise asyncio.CancelledError  # asked during the call, and lost by the driver
        return "ok", value
