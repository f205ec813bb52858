"""Every exception kuya-store raises on purpose, in one place."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = [
    "BudgetExhaustedError",
    "FetcherError",
    "InvalidInputError",
    "KuyaStoreError",
    "NotFoundError",
    "PermanentFetchError",
    "StorageUnavailableError",
    "StoreClosedError",
    "TransientFetchError",
]


class KuyaStoreError(Exception):
    """Base class of every kuya-store error, so one ``except`` catches whatever the store raises."""


class InvalidInputError(KuyaStoreError, ValueError):
    """Input that breaks a rule; raised before anything is written.

    Attributes:
        field: dotted path of the offending input, e.g. ``"listings[3].price"``.
        reason: what is wrong with it, never echoing secrets.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    @classmethod
    def from_validation_error(cls, exc: ValidationError, prefix: str = "") -> InvalidInputError:
        """Turn pydantic's first error into one that names the field, without the input value."""
        errors = exc.errors(include_input=False, include_url=False)
        first = errors[0]
        path = prefix
        for part in first["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path = f"{path}.{part}" if path else str(part)
        reason = first["msg"].removeprefix("Value error, ")
        if len(errors) > 1:
            reason += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return cls(path or prefix or "input", reason)


class FetcherError(KuyaStoreError):
    """The upstream fetcher failed and no stored result may be served instead."""


class PermanentFetchError(FetcherError):
    """Raised by a fetcher when retrying cannot help (bad request, missing API key, 4xx).

    The store makes exactly one call for it, then serves a stale result or raises
    :class:`FetcherError`.

    Attributes:
        status: the upstream HTTP status, when there was one.
    """

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class TransientFetchError(FetcherError):
    """Raised by a fetcher when a retry may succeed (timeout, connection reset, 429, 5xx).

    Attributes:
        status: the upstream HTTP status, when there was one.
    """

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class BudgetExhaustedError(FetcherError):
    """The day's (or hour's) API budget of this search type is spent, and nothing is stored."""


class NotFoundError(KuyaStoreError, LookupError):
    """The row asked for does not exist, or belongs to somebody else."""


class StorageUnavailableError(KuyaStoreError):
    """No tier could answer: hot tier, database and fetcher all failed."""


class StoreClosedError(KuyaStoreError, RuntimeError):
    """The store was closed, before or during this call; open a new one."""
