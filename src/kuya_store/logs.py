"""Structured log records: which card, search type and source each one is about, no secret.

Every record of the library's loggers (``kuya_store.*``) carries three attributes, ``None``
where unknown: ``card`` (the card identifier), ``search_type`` and ``source`` (the tier
that answered, ``"api"`` while the fetcher is asked). A search sets them for everything
logged while it runs, in the tasks it starts too (a fetch flight, its retries, its
budget); a record about a buffered write takes them from the write. A formatter can name
them (``%(card)s``) and a JSON formatter finds them on the record.

Before a record leaves the library its text is scrubbed: the password of any URL
(``postgresql://kuya:***@db/kuya``), ``password=``, ``api_key=``, ``token=`` values and
bearer tokens become ``***``, in the message and in a traceback alike. Add
:class:`ContextFilter` to a handler to give other libraries' records (SQLAlchemy,
redis-py) the same attributes and the same scrubbing.
"""

from __future__ import annotations

import logging
import re
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from dataclasses import dataclass

__all__ = [
    "ContextFilter",
    "LogFields",
    "answered_by",
    "fields_of",
    "get_logger",
    "redact_secrets",
    "searching",
]

FIELDS = ("card", "search_type", "source")
"""The attributes every record of the library carries."""


@dataclass(slots=True)
class LogFields:
    """What the records logged during one search are about."""

    card: str | None = None
    search_type: str | None = None
    source: str | None = None

    def as_extra(self) -> dict[str, str | None]:
        """The fields as ``extra=`` of a logging call."""
        return {"card": self.card, "search_type": self.search_type, "source": self.source}


_current: ContextVar[LogFields | None] = ContextVar("kuya_store_log_fields", default=None)


class _Searching(LogFields):
    """A search's fields that are their own ``with`` block: one object per search, not two."""

    __slots__ = ("_token",)

    def __enter__(self) -> LogFields:
        self._token: Token[LogFields | None] = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)


def searching(card: str, search_type: str) -> AbstractContextManager[LogFields]:
    """Tag every record logged inside (and in the tasks started inside) with this search.

    Set ``source`` on what it yields once a tier answers.
    """
    return _Searching(card, search_type)


def answered_by(source: str) -> None:
    """The running search's answer comes from ``source`` (``"api"`` while fetching)."""
    fields = _current.get()
    if fields is not None:
        fields.source = source


def fields_of(
    card: str | None = None, search_type: str | None = None, source: str | None = None
) -> dict[str, str | None]:
    """``extra=`` for a record about a search other than the one running (a buffered write)."""
    return LogFields(card, search_type, source).as_extra()


_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):[^@\s]+@")
_KEYWORD = re.compile(
    r"(?i)\b(?P<name>password|passwd|pwd|api[_-]?key|apikey|access[_-]?token|token|secret"
    r"|client[_-]?secret|key)(?P<sep>\s*[=:]\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^&\s'\",;)}\]]+)"
)
_BEARER = re.compile(r"(?i)\b(?P<kind>bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}")


def redact_secrets(text: str) -> str:
    """``text`` with URL passwords, ``password=``/``api_key=``-like values and tokens as ``***``."""
    if not text:
        return text
    text = _USERINFO.sub(r"\g<head>:***@", text)
    text = _KEYWORD.sub(r"\g<name>\g<sep>***", text)
    return _BEARER.sub(r"\g<kind> ***", text)


_TRACEBACKS = logging.Formatter()


class ContextFilter(logging.Filter):
    """Gives each record the search's fields and scrubs its text of secrets (never drops one).

    The library's own loggers have it; add it to a handler to treat every record alike.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _current.get()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, getattr(fields, name) if fields is not None else None)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, as it would
            return True
        scrubbed = redact_secrets(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            traceback = _TRACEBACKS.formatException(record.exc_info)
            record.exc_text = redact_secrets(traceback)
            if record.exc_text != traceback:
                # Formatters that render the exception again (JSON ones do) get only the
                # scrubbed text; a traceback that held no secret keeps its exception.
                record.exc_info = None
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
        return True


_FILTER = ContextFilter()


def get_logger(name: str) -> logging.Logger:
    """The library's logger ``name``, with :class:`ContextFilter` on it."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
