"""``store.accounts``: users, their saved searches, and price alerts on them.

Passwords are hashed with argon2id (argon2-cffi) on a small pool of threads of its own,
and never stored, logged or echoed. Every saved-search call is scoped to its user: another
user's saved search is ``NotFoundError``, exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from kuya_store.alerts import Alert, run_alerts
from kuya_store.clock import Clock
from kuya_store.db.engine import DatabaseFeature, outage_as_unavailable
from kuya_store.db.tables import metadata
from kuya_store.errors import (
    InvalidInputError,
    NotFoundError,
)
from kuya_store.keys import validate_filters, validate_query, validate_search_type
from kuya_store.models import SearchFilters, SearchType, _Frozen, to_money

if TYPE_CHECKING:
    from kuya_store.repository import CompsRepository

__all__ = ["Accounts", "SavedSearch", "User"]

_users = metadata.tables["users"]
_saved = metadata.tables["saved_searches"]
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Each hash takes a core and the hasher's memory cost (64 MiB): a login burst queues here
# instead of filling the default executor that sync fetchers share through to_thread.
_HASHING_THREADS = 2
_T = TypeVar("_T")


@functools.cache
def _dummy_hash() -> str:
    """Verified when the email is unknown, so a wrong email costs as long as a wrong password.

    Made on first use, not at import: importing the library never spends a hash.
    """
    return _hasher.hash("not a real password, only for timing")


class User(_Frozen):
    """An account (never carries the password or its hash)."""

    id: int
    email: str
    display_name: str | None
    created_at: datetime | None
    last_login: datetime | None
    is_active: bool


class SavedSearch(_Frozen):
    """A user's named search, with an optional price alert."""

    id: int
    user_id: int
    name: str
    query: str
    search_type: SearchType
    filters: SearchFilters
    alert_enabled: bool
    alert_threshold: Decimal | None
    created_at: datetime | None
    last_run: datetime | None


def _email(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInputError("email", "must be a string")
    email = value.strip().lower()
    if len(email) > 255 or not _EMAIL.match(email) or "\x00" in email:
        raise InvalidInputError("email", "is not a valid email address")
    return email


def _password(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInputError("password", "must be a string")
    if not 8 <= len(value) <= 1024 or "\x00" in value:
        raise InvalidInputError("password", "must be 8 to 1024 characters, without NUL")
    return value


def _text(value: object, field: str, limit: int, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > limit:
        raise InvalidInputError(field, f"must be 1 to {limit} characters")
    if "\x00" in value:
        raise InvalidInputError(field, "must not contain NUL characters")
    return value.strip()


def _id(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(field, "must be a positive integer")
    return value


def _threshold(value: object) -> Decimal | None:
    if value is None:
        return None
    try:
        return to_money(value)
    except ValueError as exc:
        raise InvalidInputError("alert_threshold", str(exc)) from None


def _breaks_foreign_key(exc: IntegrityError) -> bool:
    """Whether an integrity error is a foreign-key violation (SQLSTATE 23503 or SQLite's)."""
    orig = exc.orig
    return getattr(orig, "sqlstate", None) == "23503" or (
        getattr(orig, "sqlite_errorname", None) == "SQLITE_CONSTRAINT_FOREIGNKEY"
    )


def _user(row: Any) -> User:
    return User(
        id=row.id,
        email=row.email,
        display_name=row.display_name,
        created_at=row.created_at,
        last_login=row.last_login,
        is_active=bool(row.is_active),
    )


def _saved_search(row: Any) -> SavedSearch:
    return SavedSearch(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        query=row.query,
        search_type=SearchType(row.search_type),
        filters=SearchFilters(**(row.filters or {})),
        alert_enabled=bool(row.alert_enabled),
        alert_threshold=row.alert_threshold,
        created_at=row.created_at,
        last_run=row.last_run,
    )


class Accounts(DatabaseFeature):
    """Users, saved searches and alerts over the persistent tier."""

    _purpose = "accounts live in the database"

    def __init__(self, engine: AsyncEngine | None, clock: Clock, comps: CompsRepository) -> None:
        super().__init__(engine, clock)
        self._comps = comps
        self._hashing: ThreadPoolExecutor | None = None

    async def _hash_work(self, work: Callable[..., _T], *args: Any) -> _T:
        """Run a password hash or verification on the accounts' own bounded thread pool."""
        if self._hashing is None:
            self._hashing = ThreadPoolExecutor(_HASHING_THREADS, thread_name_prefix="kuya-argon2")
        return await asyncio.get_running_loop().run_in_executor(self._hashing, work, *args)

    def close(self) -> None:
        """Stop the hashing threads (the store's ``close()`` calls this); reopened on next use."""
        if self._hashing is not None:
            self._hashing.shutdown(wait=False, cancel_futures=True)
            self._hashing = None

    # -- users --------------------------------------------------------------------------

    async def create_user(self, email: str, password: str, display_name: str | None = None) -> User:
        """Register a user; the email is unique regardless of case."""
        address = _email(email)
        secret = _password(password)
        name = _text(display_name, "display_name", 100, optional=True)
        hashed = await self._hash_work(_hasher.hash, secret)
        try:
            async with self._begin() as conn:
                row = (
                    await conn.execute(
                        sa.insert(_users)
                        .values(
                            email=address,
                            password_hash=hashed,
                            display_name=name,
                            created_at=self._clock(),
                        )
                        .returning(_users)
                    )
                ).one()
        except IntegrityError:
            raise InvalidInputError("email", "is already registered") from None
        return _user(row)

    async def authenticate(self, email: str, password: str) -> User | None:
        """The user, if the password is right and the account active; else ``None``."""
        try:
            address, secret = _email(email), _password(password)
        except InvalidInputError:
            return None
        async with self._connect() as conn:
            row = (await conn.execute(sa.select(_users).where(_users.c.email == address))).first()
        if row is not None and row.password_hash:
            stored = row.password_hash
        else:
            stored = await self._hash_work(_dummy_hash)
        try:
            await self._hash_work(_hasher.verify, stored, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or not row.is_active:
            return None
        now = self._clock()
        values: dict[str, Any] = {"last_login": now}
        if _hasher.check_needs_rehash(stored):
            values["password_hash"] = await self._hash_work(_hasher.hash, secret)
        async with self._begin() as conn:
            updated = (
                await conn.execute(
                    sa.update(_users)
                    .where(_users.c.id == row.id)
                    .values(**values)
                    .returning(_users)
                )
            ).one()
        return _user(updated)

    async def get_user(self, user_id: int) -> User:
        """One user, or ``NotFoundError``."""
        uid = _id(user_id, "user_id")
        async with self._connect() as conn:
            row = (await conn.execute(sa.select(_users).where(_users.c.id == uid))).first()
        if row is None:
            raise NotFoundError(f"no user {uid}")
        return _user(row)

    async def set_active(self, user_id: int, is_active: bool) -> User:
        """Activate or deactivate an account; inactive users cannot authenticate."""
        uid = _id(user_id, "user_id")
        if not isinstance(is_active, bool):
            raise InvalidInputError("is_active", "must be a boolean")
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    sa.update(_users)
                    .where(_users.c.id == uid)
                    .values(is_active=is_active)
                    .returning(_users)
                )
            ).first()
        if row is None:
            raise NotFoundError(f"no user {uid}")
        return _user(row)

    # -- saved searches -----------------------------------------------------------------

    async def save_search(
        self,
        user_id: int,
        name: str,
        query: str,
        filters: SearchFilters | Mapping[str, bool] | None = None,
        alert_threshold: Decimal | float | str | None = None,
        *,
        search_type: SearchType | str = SearchType.SOLD,
    ) -> SavedSearch:
        """Save a named search for a user; a threshold turns its price alert on."""
        uid = _id(user_id, "user_id")
        values = {
            "user_id": uid,
            "name": _text(name, "name", 100),
            "query": validate_query(query),
            "search_type": validate_search_type(search_type).value,
            "filters": validate_filters(filters).as_dict(),
            "alert_threshold": _threshold(alert_threshold),
            "alert_enabled": alert_threshold is not None,
            "created_at": self._clock(),
        }
        try:
            async with self._begin() as conn:
                row = (
                    await conn.execute(sa.insert(_saved).values(**values).returning(_saved))
                ).one()
        except IntegrityError as exc:
            # The constraint says which: no such user (or deleted meanwhile), or a taken name.
            if _breaks_foreign_key(exc):
                raise NotFoundError(f"no user {uid}") from None
            raise InvalidInputError("name", "is already used by another saved search") from None
        return _saved_search(row)

    async def list_saved_searches(self, user_id: int) -> list[SavedSearch]:
        """A user's saved searches, oldest first."""
        uid = _id(user_id, "user_id")
        async with self._connect() as conn:
            rows = await conn.execute(
                sa.select(_saved).where(_saved.c.user_id == uid).order_by(_saved.c.id)
            )
            return [_saved_search(r) for r in rows]

    async def _update_own(self, user_id: int, saved_search_id: int, **values: Any) -> SavedSearch:
        uid, sid = _id(user_id, "user_id"), _id(saved_search_id, "saved_search_id")
        try:
            async with self._begin() as conn:
                row = (
                    await conn.execute(
                        sa.update(_saved)
                        .where(_saved.c.id == sid, _saved.c.user_id == uid)
                        .values(**values)
                        .returning(_saved)
                    )
                ).first()
        except IntegrityError:
            raise InvalidInputError("name", "is already used by another saved search") from None
        if row is None:
            raise NotFoundError(f"no saved search {sid} for user {uid}")
        return _saved_search(row)

    async def rename_saved_search(
        self, user_id: int, saved_search_id: int, name: str
    ) -> SavedSearch:
        """Rename one of the user's saved searches."""
        return await self._update_own(user_id, saved_search_id, name=_text(name, "name", 100))

    async def set_alert(
        self, user_id: int, saved_search_id: int, alert_threshold: Decimal | float | str | None
    ) -> SavedSearch:
        """Set (or with ``None`` turn off) the price alert of one of the user's saved searches."""
        threshold = _threshold(alert_threshold)
        return await self._update_own(
            user_id,
            saved_search_id,
            alert_threshold=threshold,
            alert_enabled=threshold is not None,
            last_alert_observation=None,
        )

    async def delete_saved_search(self, user_id: int, saved_search_id: int) -> None:
        """Delete one of the user's saved searches."""
        uid, sid = _id(user_id, "user_id"), _id(saved_search_id, "saved_search_id")
        async with self._begin() as conn:
            result = await conn.execute(
                sa.delete(_saved).where(_saved.c.id == sid, _saved.c.user_id == uid)
            )
        if not result.rowcount:
            raise NotFoundError(f"no saved search {sid} for user {uid}")

    # -- alerts -------------------------------------------------------------------------

    async def run_alerts(self, refresh_budget: int = 0) -> list[Alert]:
        """Evaluate every enabled alert once; return those that fire (see ``kuya_store.alerts``)."""
        engine = self._require()
        with outage_as_unavailable(self._purpose):
            return await run_alerts(engine, self._clock, self._comps, refresh_budget)
