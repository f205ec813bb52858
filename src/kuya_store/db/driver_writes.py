"""Writes sent on the driver's own connection, in the driver's own transaction (PostgreSQL).

A fetch's write is a few statements whose SQL never changes: run through SQLAlchemy each
one is compiled (from its cache), its parameters processed, its cursor and result
wrapped, and the transaction begun and ended through the dialect - about as much CPU as
the statements cost the driver. Here each statement is compiled once
(:class:`DriverStatement`: positional ``$n`` parameters in a fixed order) and its values
go through the very bind processors SQLAlchemy's types give (JSON, datetimes, the
``TypeDecorator`` types of :mod:`kuya_store.db.types`), so the rows hold the same bytes.

What SQLAlchemy did around a failure is done here too (:func:`driver_transaction`): a
driver error is raised as the SQLAlchemy exception SQLAlchemy would have raised for it
(:func:`as_sqlalchemy_error`), so whoever classifies it (``write_faults``, the outage
checks) sees no difference; and the connection goes back to the pool with no transaction
open, or is discarded when that cannot be known (lost, cancelled mid-statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = [
    "DriverStatement",
    "as_sqlalchemy_error",
    "column_arrays",
    "driver_transaction",
    "run",
]

_LOST_STATEMENT = "26000"
"""SQLSTATE of a prepared statement the server lost: the pool retires the connection
(``db/checks.retire_lost_statements``), so the error says the connection is invalidated."""

_MISSING = object()


class DriverStatement:
    """A statement compiled once for the asyncpg dialect: its SQL and how to bind its values.

    Args:
        column_keys: for an ``INSERT`` whose values come with the parameters, the columns
            they give (as SQLAlchemy compiles it for that set of keys).
    """

    __slots__ = ("_binders", "sql")

    def __init__(
        self,
        statement: ClauseElement,
        dialect: Dialect,
        column_keys: Sequence[str] | None = None,
    ) -> None:
        compiled = statement.compile(
            dialect=dialect, column_keys=None if column_keys is None else list(column_keys)
        )
        if (
            not isinstance(compiled, SQLCompiler)
            or compiled.positiontup is None
            or compiled.escaped_bind_names
        ):
            raise ValueError("a statement for the driver needs plain positional parameters")
        self.sql: str = compiled.string
        # The processors SQLAlchemy itself applies to these parameters at execution.
        processors: Mapping[str, Any] = compiled._bind_processors
        binders: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            default = _MISSING if bind.required else bind.effective_value
            binders.append((name, default, processors.get(name)))
        self._binders = tuple(binders)

    def bind(self, values: Mapping[str, Any]) -> list[Any]:
        """The positional parameters for ``values`` by name, processed as SQLAlchemy would."""
        parameters = []
        for name, default, process in self._binders:
            value = values[name] if default is _MISSING else values.get(name, default)
            parameters.append(value if process is None else process(value))
        return parameters


def column_arrays(
    table: sa.Table, rows: Sequence[Mapping[str, Any]], names: Sequence[str], dialect: Dialect
) -> dict[str, list[Any]]:
    """The rows' values as one list per column, each processed as its column's type binds it.

    For a statement whose parameters are arrays handed to the driver as they are
    (``db/bulk.py``): SQLAlchemy would have processed each value of a row's own
    parameters just so.
    """
    arrays: dict[str, list[Any]] = {}
    for name in names:
        process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        values = [row[name] for row in rows]
        arrays[name] = values if process is None else [process(v) for v in values]
    return arrays


def as_sqlalchemy_error(
    error: Exception,
    dialect: Dialect,
    statement: str | None = None,
    parameters: Sequence[Any] | None = None,
    lost: bool = False,
) -> Exception:
    """The exception SQLAlchemy would have raised for a driver error (raise it ``from`` its
    ``orig``, the adapter's translation, whose cause is the driver's error).

    The asyncpg adapter's translation (an ``IntegrityError`` for a constraint), wrapped as
    ``Connection`` wraps it; an error the adapter does not translate (a timeout, a
    socket's ``OSError``) is ``error`` itself, raised as it is, as there.

    Args:
        lost: the driver's connection is closed; the error then says the connection
            is invalidated, as SQLAlchemy's does.
    """
    dbapi: Any = dialect.loaded_dbapi
    translated: Exception = error
    try:
        # The adapter raises its translation, ``from error``.
        _adapter_class()._handle_exception_no_connection(dbapi, error)
    except Exception as raised:
        translated = raised
    if not isinstance(translated, dbapi.Error):
        return error
    wrapped: Exception = sa_exc.DBAPIError.instance(
        statement,
        None if parameters is None else tuple(parameters),
        translated,
        dbapi.Error,
        connection_invalidated=lost or getattr(error, "sqlstate", None) == _LOST_STATEMENT,
        dialect=dialect,
    )
    return wrapped


def _adapter_class() -> Any:
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

    return AsyncAdapt_asyncpg_connection


def _raise_as_sqlalchemy(
    error: Exception,
    dialect: Dialect,
    statement: str | None,
    parameters: Sequence[Any] | None,
    driver: Any,
) -> NoReturn:
    wrapped = as_sqlalchemy_error(error, dialect, statement, parameters, driver.is_closed())
    if wrapped is error:
        raise error
    raise wrapped from getattr(wrapped, "orig", error)


async def run(
    driver: Any,
    dialect: Dialect,
    statement: DriverStatement,
    values: Mapping[str, Any],
    observe: Callable[[float], None],
) -> list[Any]:
    """Run ``statement`` with ``values`` on the driver connection; its rows.

    Timed with ``observe`` (it is given the ``perf_counter`` the statement began at), as
    SQLAlchemy's statements are; an error is raised as SQLAlchemy's: a value its type
    refuses as a ``StatementError``, a driver error as the adapter's, wrapped.
    """
    try:
        parameters = statement.bind(values)
    except Exception as exc:
        refused: Exception = sa_exc.DBAPIError.instance(
            statement.sql, dict(values), exc, dialect.loaded_dbapi.Error, dialect=dialect
        )
        raise refused from exc
    started = time.perf_counter()
    try:
        rows: list[Any] = await driver.fetch(statement.sql, *parameters)
    except Exception as exc:
        _raise_as_sqlalchemy(exc, dialect, statement.sql, parameters, driver)
    finally:
        observe(started)
    return rows


@contextlib.asynccontextmanager
async def driver_transaction(conn: AsyncConnection, driver: Any) -> AsyncIterator[None]:
    """A transaction of the driver's own on ``conn``'s connection, committed at the end.

    ``conn`` must have run nothing (``engine.idle_driver_connection``): SQLAlchemy then
    knows of no transaction and has none to end. On a failure the driver's transaction is
    rolled back; when that cannot be done for sure (the connection is lost, the task was
    cancelled, the rollback failed) the connection is invalidated instead: the server
    ends a closed session's transaction, and the pool never hands out a connection with
    one open. A commit either happened or it did not: the write is whole or absent.

    Even one statement gets its transaction: behind a PgBouncer the store was not told
    of, a statement's parse and its execution reach the same server only inside one.
    """
    dialect = conn.dialect
    transaction = driver.transaction()
    try:
        try:
            await transaction.start()
        except Exception as exc:
            _raise_as_sqlalchemy(exc, dialect, None, None, driver)
        yield
        try:
            await transaction.commit()
        except Exception as exc:
            _raise_as_sqlalchemy(exc, dialect, None, None, driver)
    except BaseException as exc:
        await _discard(conn, driver, transaction, exc)
        raise


async def _discard(
    conn: AsyncConnection, driver: Any, transaction: Any, error: BaseException
) -> None:
    """End a failed write's transaction, or the connection when its state is not known.

    A connection the error says is gone (SQLAlchemy's ``connection_invalidated``: closed,
    or its prepared statements lost to an undeclared pooler) is retired, as SQLAlchemy
    retires it.
    """
    retired = isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated
    if not (retired or isinstance(error, asyncio.CancelledError) or driver.is_closed()):
        try:
            if driver.is_in_transaction():
                await transaction.rollback()
        except Exception:  # the connection is invalidated instead, below
            pass
        else:
            return
    if not conn.invalidated:
        # The pool closes it: a transaction left open ends with its session.
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.invalidate())
