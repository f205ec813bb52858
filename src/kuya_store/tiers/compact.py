"""Results as the in-process tiers hold them: equal values, with what repeats stored once.

pydantic keeps a ``set`` of the field names given, per model instance: for a listing
that set (728 bytes) outweighs the listing's own strings and numbers. A result entering
an in-process tier is rebuilt with one shared, read-only set per combination of names,
and with the short strings that repeat from listing to listing (listing types,
conditions, short values of display data) shared too, through a bounded memo. Values are never
changed, so a compacted result equals the original and dumps the same.

What is deliberately not shared: dictionaries (``extra``, ``params``, analyses), even
empty ones. The models are frozen, but a dict inside one can still be changed in place,
and a shared one would carry such a change into every entry holding it. Money and
moments are not shared either: they rarely repeat within the bound of a small memo, and
``Decimal("10.5") == Decimal("10.50")`` would make sharing by equality change a value's
form. ``bench/REPORT.md`` section 6 gives the measurements behind these choices.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel

from kuya_store.built_models import SET_DICT, SET_EXTRA, SET_FIELDS_SET, SET_PRIVATE
from kuya_store.models import Listing
from kuya_store.stored import StoredResult

__all__ = ["compact"]

_M = TypeVar("_M", bound=BaseModel)

# Display values this short are names (a seller, a marketplace, a currency) that repeat;
# longer ones are links and text that are unique to their listing.
_SHORT = 32
# Combinations of given field names seen; past this many, new ones are not shared.
_MAX_COMBINATIONS = 512
# Distinct short texts remembered for sharing; the memo starts over when it is full.
_MAX_TEXTS = 16_384


class _SharedNames(set[str]):
    """A model's given field names, shared by every model given the same ones: read-only.

    pydantic copies the set before changing it (``model_copy``) and frozen models never
    reach the point of changing it, so this only stops code outside pydantic from
    changing every listing's set at once through one of them.
    """

    __slots__ = ()

    def __copy__(self) -> set[str]:
        return set(self)

    def __deepcopy__(self, _memo: dict[int, Any]) -> set[str]:
        return set(self)

    def _refuse(self, *_args: object) -> NoReturn:
        raise TypeError("the field names of a held result are shared; copy them to change them")

    add = discard = remove = pop = clear = _refuse
    update = difference_update = intersection_update = symmetric_difference_update = _refuse
    __ior__ = __iand__ = __isub__ = __ixor__ = _refuse


_field_names: dict[frozenset[str], _SharedNames] = {}


def _shared_names(names: set[str]) -> set[str]:
    if type(names) is _SharedNames:
        return names  # held already
    key = frozenset(names)
    shared = _field_names.get(key)
    if shared is None:
        if len(_field_names) >= _MAX_COMBINATIONS:
            return set(key)
        shared = _field_names.setdefault(key, _SharedNames(sys.intern(name) for name in key))
    return shared


# The slots every model has, set through their descriptors, four for every listing held.
_DICT, _FIELDS_SET, _EXTRA, _PRIVATE = SET_DICT, SET_FIELDS_SET, SET_EXTRA, SET_PRIVATE


def _rebuilt(model: _M, values: dict[str, Any], names: set[str]) -> _M:
    """``model`` with ``values`` as its fields and ``names`` as the set of its given names."""
    # What ``model_construct`` does, without its per-field defaults pass: every field is given.
    copy = object.__new__(type(model))
    _DICT(copy, values)
    _FIELDS_SET(copy, names)
    # A model built without validation may leave these unset.
    _EXTRA(copy, getattr(model, "__pydantic_extra__", None))
    _PRIVATE(copy, getattr(model, "__pydantic_private__", None))
    return copy


def _rebuilt_whole(model: _M) -> _M:
    return _rebuilt(model, dict(model.__dict__), _shared_names(model.__pydantic_fields_set__))


_texts: dict[str, str] = {}


def _text(text: str) -> str:
    # Not ``sys.intern``: these come from the marketplace, without end, and on some
    # Python versions an interned string is never freed. This memo is bounded.
    held = _texts.get(text)
    if held is None:
        if len(_texts) >= _MAX_TEXTS:
            _texts.clear()
        held = _texts.setdefault(text, text)
    return held


def _short(value: Any) -> Any:
    return _text(value) if type(value) is str and len(value) <= _SHORT else value


def _listings(listings: list[Listing]) -> list[Listing]:
    """Compacted copies of ``listings``, in one loop: this runs for every listing held."""
    held: list[Listing] = []
    given: set[str] | None = None
    shared: set[str] = set()
    known, text, new = _texts.get, _text, object.__new__
    set_dict, set_names, set_extra, set_private = _DICT, _FIELDS_SET, _EXTRA, _PRIVATE
    for listing in listings:
        names = listing.__pydantic_fields_set__
        # The listings of one fetch are mostly given the same fields (one set, when read
        # back from Redis or the database): comparing with the last listing's costs less
        # than looking the combination up.
        if (names is not given and names != given) or type(shared) is not _SharedNames:
            given, shared = names, _shared_names(names)
        values = listing.__dict__.copy()
        value = values.get("listing_type")
        if value is not None:
            values["listing_type"] = known(value) or text(value)
        value = values.get("condition")
        if value is not None:
            values["condition"] = known(value) or text(value)
        extra = values.get("extra")
        if extra is not None:
            # Its own copy even when empty: what the caller does to its listing stays there.
            # A copy keeps the original's table size; its keys are already shared (the JSON
            # parser's key cache, or a fetcher's literals), and only short texts repeat.
            extra = values["extra"] = extra.copy()
            for key, value in extra.items():
                if type(value) is str and len(value) <= _SHORT:
                    value_held = known(value) or text(value)
                    if value_held is not value:
                        extra[key] = value_held  # the same key: the loop may go on
        # What ``_rebuilt`` does, inline.
        copy = new(type(listing))
        set_dict(copy, values)
        set_names(copy, shared)
        set_extra(copy, getattr(listing, "__pydantic_extra__", None))
        set_private(copy, getattr(listing, "__pydantic_private__", None))
        held.append(copy)
    return held


def compact(result: StoredResult) -> StoredResult:
    """An equal copy of ``result`` that shares what repeats with the other results held."""
    values = dict(result.__dict__)
    values["listings"] = _listings(result.listings)
    if result.card_identifier == result.query:
        values["card_identifier"] = result.query
    values["params"] = {_text(key): _short(v) for key, v in result.params.items()}
    for name in ("snapshot", "stats"):
        part = values.get(name)
        if part is not None:
            values[name] = _rebuilt_whole(part)
    return _rebuilt(result, values, _shared_names(result.__pydantic_fields_set__))
