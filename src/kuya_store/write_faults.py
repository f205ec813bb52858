"""Whose fault a failed write is: the database's (retry it later) or the record's.

Pure decisions over exceptions and records, used by the write-behind buffer
(:mod:`kuya_store.writer`) and by every call site that retries a database call.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from kuya_store.persistence import FetchRecord, SearchRecord

__all__ = ["is_transient", "may_be_unknown_user", "reason", "without_user"]

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
_FOREIGN_KEY_VIOLATION = "23503"


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


def may_be_unknown_user(record: Record, exc: BaseException) -> bool:
    """Whether the refusal may be the ``users`` foreign key (the only one a search row has).

    SQLite names the constraint only with extended error codes; without them any
    integrity error of a row with a user may be it, and retrying without the user tells.
    """
    search = record.search if isinstance(record, FetchRecord) else record
    if search.user_id is None or not isinstance(exc, IntegrityError):
        return False
    state = getattr(exc.orig, "sqlstate", None)
    sqlite_name = getattr(exc.orig, "sqlite_errorname", None)
    if state is not None:
        return bool(state == _FOREIGN_KEY_VIOLATION)
    return sqlite_name is None or sqlite_name == "SQLITE_CONSTRAINT_FOREIGNKEY"


def without_user(record: Record) -> Record:
    """The record with its search row kept anonymous (its user is not in ``users``)."""
    if isinstance(record, FetchRecord):
        return dataclasses.replace(record, search=dataclasses.replace(record.search, user_id=None))
    return dataclasses.replace(record, user_id=None)


def reason(exc: BaseException) -> str:
    """The database's own words, first line only: never the statement or its parameters."""
    source = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(source).strip().splitlines()
    return f"{type(source).__name__}: {text[0][:300] if text else ''}"
