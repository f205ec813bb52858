"""The log scan: no record logged anywhere in the suite may hold a password or an API key.

``tests/conftest.py`` attaches a :class:`SecretScanner` to the root logger for the whole
session (the library's loggers at DEBUG, every other logger at its own level) and fails
the session if any record held one of :data:`SECRETS`: the harness's server passwords,
the API key the fetcher tests use, and every module constant of the suite named like a
secret (``SECRET``, ``PASSWORD``, ``*_API_KEY``, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import quote

__all__ = ["SECRETS", "TEST_API_KEY", "SecretScanner", "remember", "rendered"]

TEST_API_KEY = "kuya-test-api-key-7Qf2"
"""The API key of the tests' paid fetchers; it must never be logged."""

SECRETS: set[str] = {TEST_API_KEY}

_MIN_LENGTH = 6  # a shorter "password" (testcontainers' "test") would match ordinary text
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


def remember(*values: object) -> None:
    """Scan the logs for these too (``None``, non-strings and short values are ignored)."""
    for value in values:
        if isinstance(value, str) and len(value) >= _MIN_LENGTH:
            SECRETS.add(value)


def rendered(record: logging.LogRecord) -> str:
    """Everything a handler could write of a record: message, traceback, stack, extras."""
    try:
        parts = [record.getMessage()]
    except Exception:
        parts = [str(record.msg), repr(record.args)]
    if record.exc_text:
        parts.append(record.exc_text)
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        parts.append(record.stack_info)
    parts.extend(f"{k}={v!r}" for k, v in record.__dict__.items() if k not in _STANDARD)
    return "\n".join(parts)


class SecretScanner(logging.Handler):
    """Checks every record it sees against the secrets; keeps only where it found one."""

    def __init__(self, secrets: Iterable[str] = SECRETS) -> None:
        super().__init__(level=logging.DEBUG)
        self.secrets = secrets
        self.seen = 0
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        text = rendered(record)
        for secret in list(self.secrets):
            if secret in text or quote(secret, safe="") in text:
                where = f"{record.name} {record.levelname} at {record.pathname}:{record.lineno}"
                self.leaks.append(f"{where}: holds {secret[:3]}... : {text[:300]!r}")
