"""What a search asks for: its arguments validated, and the stored results that may answer.

A search names a card (its query folded, operators kept: "Ohtani -auto" is the card
"ohtani", but never shares a stored result with "Ohtani" or "Ohtani auto"), a search
type, title filters and upstream params; :func:`ask` checks them once and lists its
levels (:mod:`kuya_store.answering`). The same searches recur, so :class:`AskedSearches`
keeps what they asked by :func:`asked_key`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

from kuya_store.answering import Level, levels
from kuya_store.keys import (
    ResultIdentity,
    validate_filters,
    validate_params,
    validate_query,
    validate_search_type,
)
from kuya_store.models import Params, SearchFilters, SearchType

__all__ = ["Asked", "AskedSearches", "ask", "asked_key"]


class Asked(NamedTuple):
    """A search's validated arguments, and the levels that may answer it."""

    text: str
    kind: SearchType
    wanted: SearchFilters
    options: Params
    card: str
    identity: ResultIdentity
    chain: Sequence[Level]


_SCALARS = (str, int, float, bool, type(None))


_PlainKey = tuple[str, type, object, SearchFilters | None, tuple[tuple[object, type, object], ...]]


def asked_key(
    query: object, search_type: object, filters: object, params: object
) -> _PlainKey | None:
    """A memo key for a search's arguments, or ``None`` when they are not plain values.

    Types are part of the key: ``1``, ``1.0`` and ``True`` are equal but not the same params.
    """
    if type(query) is not str or type(search_type) not in (str, SearchType):
        return None
    if filters is not None and type(filters) is not SearchFilters:
        return None
    options: tuple[tuple[object, type, object], ...] = ()
    if params is not None:
        if type(params) is not dict or not all(type(v) in _SCALARS for v in params.values()):
            return None
        options = tuple((k, type(v), v) for k, v in params.items())
    return (query, type(search_type), search_type, filters, options)


def ask(
    query: object, search_type: object, filters: object, params: object, *, filter_upstream: bool
) -> Asked:
    """Validate what a search asks for, and name the stored result that answers it.

    Raises:
        InvalidInputError: an argument is not what a search takes.
    """
    text = validate_query(query)
    kind = validate_search_type(search_type)
    wanted = validate_filters(filters)
    options = validate_params(params)
    chain = levels(text, kind, wanted, options, filter_upstream=filter_upstream)
    identity = next(level.identity for level in chain if level.name == "exact")
    return Asked(text, kind, wanted, options, identity.card_identifier, identity, tuple(chain))


class AskedSearches:
    """What recent searches asked, validated once each.

    Memoised for the plain values a web route passes (:func:`asked_key`); anything
    else is validated on every call.
    """

    def __init__(self, *, filter_upstream: bool, size: int = 4096) -> None:
        self._filter_upstream = filter_upstream
        # The key holds every argument, so it is all the memo needs to work one out.
        self._asked = functools.lru_cache(maxsize=size)(self._ask_plain)

    def of(self, query: object, search_type: object, filters: object, params: object) -> Asked:
        """Validate what a search asks for, and name the stored result that answers it.

        Raises:
            InvalidInputError: an argument is not what a search takes.
        """
        key = asked_key(query, search_type, filters, params)
        if key is None:
            return ask(query, search_type, filters, params, filter_upstream=self._filter_upstream)
        return self._asked(key)

    def _ask_plain(self, key: _PlainKey) -> Asked:
        query, _, search_type, filters, options = key
        params = {name: value for name, _, value in options}
        return ask(query, search_type, filters, params, filter_upstream=self._filter_upstream)
