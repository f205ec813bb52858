"""Models built from values the store has checked already, without validating them again.

A hit's answer (:func:`tier_answer`, :func:`checked_result`) and a value read back from a
tier or the database (:func:`built`) are made as validation would make them, to the fields
set, from values that were validated when they were fetched or stored.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from kuya_store.models import (
    CompsResult,
    Listing,
    Params,
    PriceSnapshot,
    SearchFilters,
    SearchType,
    Source,
)

__all__ = [
    "SET_DICT",
    "SET_EXTRA",
    "SET_FIELDS_SET",
    "SET_PRIVATE",
    "built",
    "checked_result",
    "tier_answer",
]


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    """How ``model_construct`` sets one of a model's slots, without looking the name up.

    ``object.__setattr__`` would look the name up on the class first, on every call.
    """
    slot: Any = vars(BaseModel).get(name)
    if hasattr(slot, "__set__"):
        return cast("Callable[[Any, Any], None]", slot.__set__)
    return lambda item, value: object.__setattr__(item, name, value)  # pragma: no cover


SET_DICT = _slot_setter("__dict__")
SET_FIELDS_SET = _slot_setter("__pydantic_fields_set__")
SET_EXTRA = _slot_setter("__pydantic_extra__")
SET_PRIVATE = _slot_setter("__pydantic_private__")

_COMPS_DEFAULTS = {
    name: field.get_default(call_default_factory=True)
    for name, field in CompsResult.model_fields.items()
}


def checked_result(**values: Any) -> CompsResult:
    """A :class:`CompsResult` of values the store has already checked, not validated again.

    Validating the answer revisits every listing, each already validated when it was
    fetched or read back, and cost more than the rest of a near-cache hit. Built here as
    ``CompsResult(**values)`` would build it, to the fields set: the listings and params
    copied, moments in UTC, a field not given at its default.
    """
    fields = {**_COMPS_DEFAULTS, **values}  # in the order of the fields, as validation's
    return _answer(fields, set(values))


def tier_answer(
    *,
    query: str,
    card_identifier: str,
    search_type: SearchType,
    filters: SearchFilters,
    params: Params,
    listings: list[Listing],
    source: Source,
    fetched_at: datetime,
    cache_hit: bool,
    snapshot: PriceSnapshot | None,
    pages_scraped: int | None,
    complete: bool,
    fresh_until: datetime | None,
    display_complete: bool,
    execution_time_ms: int | None = None,
) -> CompsResult:
    """:func:`checked_result` given every field (``execution_time_ms`` may stay unset).

    What a search answered from a tier builds on every hit: named arguments, not a dict
    of them merged with the defaults.
    """
    fields = {
        "query": query,
        "card_identifier": card_identifier,
        "search_type": search_type,
        "filters": filters,
        "params": params,
        "listings": listings,
        "source": source,
        "fetched_at": fetched_at,
        "cache_hit": cache_hit,
        "snapshot": snapshot,
        "pages_scraped": pages_scraped,
        "execution_time_ms": 0 if execution_time_ms is None else execution_time_ms,
        "complete": complete,
        "fresh_until": fresh_until,
        "display_complete": display_complete,
    }
    given = _TIMED if execution_time_ms is not None else _UNTIMED
    return _answer(fields, set(given))


_TIMED = frozenset(_COMPS_DEFAULTS)
_UNTIMED = _TIMED - {"execution_time_ms"}


def _answer(fields: dict[str, Any], given: set[str]) -> CompsResult:
    fields["listings"] = list(fields["listings"])  # the answer's own, as validation's copy is
    fields["params"] = dict(fields["params"])
    fetched_at, fresh = fields["fetched_at"], fields["fresh_until"]
    if fetched_at.tzinfo is not UTC:
        fields["fetched_at"] = fetched_at.astimezone(UTC)
    if fresh is not None and fresh.tzinfo is not UTC:
        fields["fresh_until"] = fresh.astimezone(UTC)
    return built(CompsResult, fields, given)


_M = TypeVar("_M", bound=BaseModel)


def built(model: type[_M], fields: dict[str, Any], fields_set: set[str] | None = None) -> _M:
    """An instance holding ``fields`` as they are, set the way ``model_construct`` sets them.

    For values the store has checked already: nothing is validated or copied.

    Args:
        fields_set: the fields given explicitly (default: every key of ``fields``).
    """
    item = model.__new__(model)
    SET_DICT(item, fields)
    SET_FIELDS_SET(item, set(fields) if fields_set is None else fields_set)
    SET_EXTRA(item, None)
    SET_PRIVATE(item, None)
    return item
