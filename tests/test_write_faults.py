"""Whose fault a failed write is, decided without any server: pure functions over errors."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

import kuya_store as ks
from kuya_store.persistence import FetchRecord, SearchRecord
from kuya_store.stored import StoredResult
from kuya_store.write_faults import is_transient, may_be_unknown_user, reason, without_user

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class _PgError(Exception):
    """A driver error as the asyncpg adapter presents it: a SQLSTATE attribute."""

    def __init__(self, sqlstate: str, text: str = "server said no") -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


class _SqliteError(Exception):
    """A driver error as sqlite3 presents it: an extended error name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} constraint failed")
        self.sqlite_errorname = name


class InvalidCachedStatementError(Exception):
    """Named like asyncpg's: a pooler moved the connection, the record is not at fault."""


def _search(user_id: int | None = 7) -> SearchRecord:
    return SearchRecord(
        query="Wemby #1",
        card_identifier="wemby 1",
        search_type=ks.SearchType.SOLD,
        filters={},
        params={},
        created_at=AT,
        execution_time_ms=3,
        cache_hit=False,
        user_id=user_id,
    )


def _fetch(user_id: int | None = 7) -> FetchRecord:
    result = StoredResult(
        query="Wemby #1",
        card_identifier="wemby 1",
        search_type=ks.SearchType.SOLD,
        params={},
        listings=[ks.Listing(item_id="1", title="Wemby #1", price=Decimal("10.00"), sold=True)],
        fetched_at=AT,
    )
    return FetchRecord(search=_search(user_id), result=result, listing_ttl=AT)


def _dbapi(orig: Exception, cls: type[DBAPIError] = DBAPIError) -> DBAPIError:
    return cls("INSERT INTO searches (query) VALUES ($1)", {"query": "hunter2"}, orig)


# -- transient or the record's fault --------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_dbapi(_PgError("23505")), False),  # unique violation: the record
        (_dbapi(_PgError("22P02")), False),  # invalid text representation: the record
        (_dbapi(_PgError("08001")), True),  # cannot connect
        (_dbapi(_PgError("3D000")), True),  # no such database yet
        (_dbapi(_PgError("26000")), True),  # prepared statement gone (a pooler)
        (_dbapi(_PgError("42P05")), True),  # prepared statement already there (a pooler)
        (_dbapi(_PgError("XX000")), False),  # internal error, no sign the server is away
        (_dbapi(InvalidCachedStatementError("cached plan")), True),  # named, no SQLSTATE
        (_dbapi(ValueError("no sqlstate")), False),
        (_dbapi(_PgError("22003"), OperationalError), True),  # SQLite "database is locked"
        (PoolTimeoutError("QueuePool limit reached"), True),
        (ConnectionResetError(104, "reset by peer"), True),
        (TimeoutError(), True),
        (ValueError("bad"), False),
        (KeyError("price"), False),
    ],
)
def test_transient_means_the_database_not_the_record(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_an_invalidated_connection_is_transient_whatever_the_driver_said() -> None:
    error = DBAPIError("SELECT 1", {}, ValueError("odd"), connection_invalidated=True)
    assert is_transient(error)


def test_a_connection_error_behind_the_driver_error_is_transient() -> None:
    class ConnectionDoesNotExistError(Exception):
        pass

    orig = ValueError("wrapped")
    orig.__cause__ = ConnectionDoesNotExistError("closed mid-statement")
    assert is_transient(_dbapi(orig))


# -- the unknown user -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orig", "user", "maybe"),
    [
        (_PgError("23503"), 7, True),  # foreign key violation: the only one is users
        (_PgError("23505"), 7, False),  # unique violation: not the user
        (_PgError("23503"), None, False),  # no user to blame
        (_SqliteError("SQLITE_CONSTRAINT_FOREIGNKEY"), 7, True),
        (_SqliteError("SQLITE_CONSTRAINT_UNIQUE"), 7, False),
        (ValueError("an older sqlite3 names nothing"), 7, True),  # retrying without it tells
    ],
)
def test_unknown_user_is_read_from_the_constraint(
    orig: Exception, user: int | None, maybe: bool
) -> None:
    error = _dbapi(orig, IntegrityError)
    assert may_be_unknown_user(_search(user), error) is maybe
    assert may_be_unknown_user(_fetch(user), error) is maybe


def test_only_an_integrity_error_can_be_the_user() -> None:
    assert not may_be_unknown_user(_search(), _dbapi(_PgError("23503")))
    assert not may_be_unknown_user(_search(), ValueError("23503"))


def test_without_user_keeps_everything_else_and_the_record_key() -> None:
    search, fetch = _search(), _fetch()
    anonymous = without_user(search)
    assert isinstance(anonymous, SearchRecord) and anonymous.user_id is None
    assert anonymous.record_key == search.record_key  # a replay still writes it once
    assert anonymous.query == search.query and anonymous.created_at == search.created_at
    kept = without_user(fetch)
    assert isinstance(kept, FetchRecord) and kept.search.user_id is None
    assert kept.result == fetch.result and kept.search.record_key == fetch.search.record_key
    assert search.user_id == 7 and fetch.search.user_id == 7  # the originals are unchanged


# -- what is logged -------------------------------------------------------------------------


def test_reason_is_the_databases_first_line_never_the_statement() -> None:
    error = _dbapi(_PgError("23505", 'duplicate key value\nDETAIL: Key (q)=("hunter2")'))
    said = reason(error)
    assert said == "_PgError: duplicate key value"
    assert "INSERT" not in said and "hunter2" not in said
    assert reason(ValueError("x" * 1000)).startswith("ValueError: " + "x" * 300)
    assert len(reason(ValueError("x" * 1000))) == len("ValueError: ") + 300
    assert reason(ValueError("")) == "ValueError: "
