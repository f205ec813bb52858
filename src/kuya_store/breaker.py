"""A circuit breaker, so a dead Redis costs one timeout, not one per request."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after ``threshold`` failures in a row; after ``reset_after`` s lets one probe through.

    ``allow()`` says whether to try the call; report the outcome with ``success()`` or
    ``failure()``. Time comes from ``monotonic`` so tests can drive it.
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
        self._probing = False

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
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self.threshold):
            self._opened_at = self._monotonic()
            self._probing = False
            if self._on_open is not None:
                self._on_open()
