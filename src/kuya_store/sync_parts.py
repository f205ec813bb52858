"""The parts of :class:`~kuya_store.SyncCompsStore` (``comps``, ``analytics``, ...), typed.

Each part names the methods of its async twin and nothing more: ``search =
_blocking(CompsRepository.search)`` takes the parameters and the result type from
``CompsRepository.search`` itself, so a type checker sees ``store.comps.search(...)`` as
returning a :class:`~kuya_store.CompsResult` and the sync signature can never drift from
the async one. Every call still goes to the async store of the moment (re-opened after a
fork), on the facade's event loop. The test suite checks that every public method of
each async part has its twin here.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Concatenate, Generic, ParamSpec, TypeVar, overload

from kuya_store.accounts import Accounts
from kuya_store.analytics import Analytics
from kuya_store.backup import Backup
from kuya_store.cards import Cards
from kuya_store.collections import Collections
from kuya_store.repository import CompsRepository

if TYPE_CHECKING:
    from typing import Self

    from kuya_store.store import CompsStore
    from kuya_store.sync import SyncCompsStore

__all__ = [
    "SyncAccounts",
    "SyncAnalytics",
    "SyncBackup",
    "SyncCards",
    "SyncCollections",
    "SyncCompsRepository",
]

_A = TypeVar("_A")
_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Part(Generic[_A]):
    """One part of the async store, reached through the facade's event loop."""

    _attribute: ClassVar[str]
    """The attribute of :class:`~kuya_store.CompsStore` that holds the async part."""

    def __init__(self, facade: SyncCompsStore) -> None:
        self._facade = facade

    @property
    def _async(self) -> _A:
        part: _A = getattr(self._facade.async_store, self._attribute)
        return part

    if not TYPE_CHECKING:
        # A method the async part gained and this class does not name yet still works;
        # type checkers see only what is named.
        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            attribute = getattr(self._async, name)
            if not inspect.iscoroutinefunction(attribute):
                return attribute
            part = self._attribute

            def blocking(*args: Any, **kwargs: Any) -> Any:
                return self._facade._run(
                    lambda store: getattr(getattr(store, part), name)(*args, **kwargs)
                )

            blocking.__name__, blocking.__doc__ = name, attribute.__doc__
            return blocking

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | set(dir(self._async)))

    def __repr__(self) -> str:
        return f"<blocking {self._attribute} of {self._facade!r}>"


class _Blocking(Generic[_A, _P, _T]):
    """A coroutine method of an async part, as a blocking method of the same name."""

    def __init__(self, method: Callable[Concatenate[_A, _P], Awaitable[_T]]) -> None:
        self._method = method
        self._name = method.__name__
        self.__doc__ = method.__doc__

    def __set_name__(self, owner: type[object], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, part: None, owner: type[object]) -> Self: ...

    @overload
    def __get__(self, part: _Part[_A], owner: type[object]) -> Callable[_P, _T]: ...

    def __get__(self, part: _Part[_A] | None, owner: type[object]) -> Self | Callable[_P, _T]:
        if part is None:
            return self
        facade, attribute, name = part._facade, part._attribute, self._name

        def blocking(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            async def call(store: CompsStore) -> _T:
                # Looked up on the store of the moment: after a fork it is a new one.
                method: Callable[_P, Awaitable[_T]] = getattr(getattr(store, attribute), name)
                return await method(*args, **kwargs)

            return facade._run(call)

        blocking.__name__, blocking.__doc__ = name, self.__doc__
        return blocking


class _Same(Generic[_A, _P, _T]):
    """A plain method of an async part, called as it is (it does not touch the loop)."""

    def __init__(self, method: Callable[Concatenate[_A, _P], _T]) -> None:
        self._name = method.__name__
        self.__doc__ = method.__doc__

    def __set_name__(self, owner: type[object], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, part: None, owner: type[object]) -> Self: ...

    @overload
    def __get__(self, part: _Part[_A], owner: type[object]) -> Callable[_P, _T]: ...

    def __get__(self, part: _Part[_A] | None, owner: type[object]) -> Self | Callable[_P, _T]:
        if part is None:
            return self
        method: Callable[_P, _T] = getattr(part._async, self._name)
        return method


def _blocking(method: Callable[Concatenate[_A, _P], Awaitable[_T]]) -> _Blocking[_A, _P, _T]:
    return _Blocking(method)


def _same(method: Callable[Concatenate[_A, _P], _T]) -> _Same[_A, _P, _T]:
    return _Same(method)


class SyncCompsRepository(_Part[CompsRepository]):
    """``store.comps`` without ``await``: searches, listings and invalidation.

    The methods of :class:`~kuya_store.CompsRepository`, with the same parameters and results.
    """

    _attribute = "comps"
    search = _blocking(CompsRepository.search)
    peek = _blocking(CompsRepository.peek)
    get_listing = _blocking(CompsRepository.get_listing)
    invalidate = _blocking(CompsRepository.invalidate)
    listings_due_for_refresh = _blocking(CompsRepository.listings_due_for_refresh)
    close = _blocking(CompsRepository.close)
    register_fetcher = _same(CompsRepository.register_fetcher)
    learn_fence = _same(CompsRepository.learn_fence)
    describe = _same(CompsRepository.describe)


class SyncAnalytics(_Part[Analytics]):
    """``store.analytics`` without ``await``: price history, trends and search statistics.

    The methods of :class:`~kuya_store.Analytics`, with the same parameters and results.
    """

    _attribute = "analytics"
    price_history = _blocking(Analytics.price_history)
    price_trend = _blocking(Analytics.price_trend)
    grading_outlook = _blocking(Analytics.grading_outlook)
    search_stats = _blocking(Analytics.search_stats)
    top_searches = _blocking(Analytics.top_searches)
    daily_searches = _blocking(Analytics.daily_searches)
    history_statement = staticmethod(Analytics.history_statement)


class SyncAccounts(_Part[Accounts]):
    """``store.accounts`` without ``await``: users, saved searches and alerts.

    The methods of :class:`~kuya_store.Accounts`, with the same parameters and results.
    """

    _attribute = "accounts"
    create_user = _blocking(Accounts.create_user)
    authenticate = _blocking(Accounts.authenticate)
    get_user = _blocking(Accounts.get_user)
    set_active = _blocking(Accounts.set_active)
    save_search = _blocking(Accounts.save_search)
    list_saved_searches = _blocking(Accounts.list_saved_searches)
    rename_saved_search = _blocking(Accounts.rename_saved_search)
    set_alert = _blocking(Accounts.set_alert)
    delete_saved_search = _blocking(Accounts.delete_saved_search)
    run_alerts = _blocking(Accounts.run_alerts)
    close = _same(Accounts.close)


class SyncBackup(_Part[Backup]):
    """``store.backup`` without ``await``: CSV export and import, and the partial rollback.

    The methods of :class:`~kuya_store.Backup`, with the same parameters and results.
    """

    _attribute = "backup"
    count_snapshots = _blocking(Backup.count_snapshots)
    export_snapshots_csv = _blocking(Backup.export_snapshots_csv)
    import_snapshots_csv = _blocking(Backup.import_snapshots_csv)
    purge_since = _blocking(Backup.purge_since)


class SyncCollections(_Part[Collections]):
    """``store.collections`` without ``await``: binders, cards, revaluation and value history.

    The methods of :class:`~kuya_store.Collections`, with the same parameters and results.
    """

    _attribute = "collections"
    create_binder = _blocking(Collections.create_binder)
    list_binders = _blocking(Collections.list_binders)
    rename_binder = _blocking(Collections.rename_binder)
    delete_binder = _blocking(Collections.delete_binder)
    add_card = _blocking(Collections.add_card)
    get_card = _blocking(Collections.get_card)
    list_cards = _blocking(Collections.list_cards)
    remove_card = _blocking(Collections.remove_card)
    revalue = _blocking(Collections.revalue)
    summary = _blocking(Collections.summary)
    value_history = _blocking(Collections.value_history)


class SyncCards(_Part[Cards]):
    """``store.cards`` without ``await``: full-text search over the cards searched before.

    The methods of :class:`~kuya_store.Cards`, with the same parameters and results.
    """

    _attribute = "cards"
    search = _blocking(Cards.search)
