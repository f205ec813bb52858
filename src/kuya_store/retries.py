"""When to try again: the one retry policy every upstream and database call site uses.

Rules that hold everywhere because they live here:

- cancellation (a client that went away, a timeout around ``search()``) is never retried;
- only failures that a retry can fix are retried: timeouts, connection errors, HTTP 408,
  425, 429 and 5xx; a fetcher says so explicitly with :class:`TransientFetchError` or
  :class:`PermanentFetchError`; anything else (4xx, a missing API key, a bug, invalid
  data) costs exactly one call.
"""

from __future__ import annotations

import asyncio
import urllib.error
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, stop_after_attempt, wait_random_exponential

from kuya_store.errors import InvalidInputError, PermanentFetchError, TransientFetchError

__all__ = ["http_status", "is_transient_fetch_error", "retrying"]

_RETRYABLE_STATUS = frozenset({408, 425, 429})
# Transport failures of the HTTP clients fetchers are written with, recognised by name so
# that none of them has to be installed.
_TRANSPORT_MODULES = ("httpx", "aiohttp", "requests", "urllib3", "httpcore")
_TRANSPORT_NAMES = frozenset(
    {
        "TransportError",
        "TimeoutException",
        "NetworkError",
        "RemoteProtocolError",
        "ClientConnectionError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientPayloadError",
        "ConnectionError",
        "Timeout",
        "ProtocolError",
    }
)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (httpx, aiohttp, requests, urllib), if any."""
    for value in (
        getattr(exc, "status", None),
        getattr(exc, "status_code", None),
        getattr(getattr(exc, "response", None), "status_code", None),
        exc.code if isinstance(exc, urllib.error.HTTPError) else None,
    ):
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _is_transport_error(exc: BaseException) -> bool:
    for cls in type(exc).__mro__:
        module = cls.__module__.split(".", 1)[0]
        if module in _TRANSPORT_MODULES and cls.__name__ in _TRANSPORT_NAMES:
            return True
    return False


def is_transient_fetch_error(exc: BaseException) -> bool:
    """Whether a failed fetcher call is worth another (paid) attempt."""
    if not isinstance(exc, Exception):
        return False  # cancellation, KeyboardInterrupt, SystemExit
    if isinstance(exc, TransientFetchError):
        return True
    if isinstance(exc, PermanentFetchError | InvalidInputError):
        return False
    status = http_status(exc)
    if status is not None:
        return status in _RETRYABLE_STATUS or status >= 500
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    return _is_transport_error(exc) or isinstance(exc, OSError)


def retrying(
    attempts: int,
    *,
    backoff: float,
    max_backoff: float,
    transient: Callable[[BaseException], bool],
    keep_going: Callable[[], bool] | None = None,
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """A tenacity loop that retries only ``transient`` failures, and never cancellation.

    Args:
        keep_going: asked before each retry; ``False`` stops (nobody waits any more).
    """

    def should_retry(state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        exc = outcome.exception()
        if exc is None or isinstance(exc, asyncio.CancelledError) or not transient(exc):
            return False
        return keep_going is None or keep_going()

    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=backoff, max=max_backoff),
        retry=should_retry,
        before_sleep=before_sleep,
        reraise=True,
    )
