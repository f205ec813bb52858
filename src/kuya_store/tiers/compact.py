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

_set_attribute = object.__setattr__


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


def _shared_names(model: BaseModel) -> set[str]:
    names = model.__pydantic_fields_set__
    if type(names) is _SharedNames:
        return names  # held already
    key = frozenset(names)
    shared = _field_names.get(key)
    if shared is None:
        if len(_field_names) >= _MAX_COMBINATIONS:
            return set(key)
        shared = _field_names.setdefault(key, _SharedNames(sys.intern(name) for name in key))
    return shared


def _rebuilt(model: _M, values: dict[str, Any]) -> _M:
    """``model`` with ``values`` as its fields and the shared set of its given names."""
    # What ``model_construct`` does, without its per-field defaults pass: every field is given.
    cls = type(model)
    copy = object.__new__(cls)
    _set_attribute(copy, "__dict__", values)
    _set_attribute(copy, "__pydantic_fields_set__", _shared_names(model))
    # A model built without validation may leave these unset.
    _set_attribute(copy, "__pydantic_extra__", getattr(model, "__pydantic_extra__", None))
    _set_attribute(copy, "__pydantic_private__", getattr(model, "__pydantic_private__", None))
    return copy


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


def _display(extra: dict[str, Any]) -> dict[str, Any]:
    # A copy keeps the original's table size; its keys are already shared (the JSON
    # parser's key cache, or a fetcher's literals).
    copy = extra.copy()
    for key, value in extra.items():
        copy[key] = _short(value)
    return copy


def _listing(listing: Listing) -> Listing:
    values = dict(listing.__dict__)
    for name in ("listing_type", "condition"):
        text = values.get(name)
        if text is not None:
            values[name] = _text(text)
    extra = values.get("extra")
    if extra is not None:
        # Its own copy even when empty: what the caller does to its listing stays there.
        values["extra"] = _display(extra)
    return _rebuilt(listing, values)


def compact(result: StoredResult) -> StoredResult:
    """An equal copy of ``result`` that shares what repeats with the other results held."""
    values = dict(result.__dict__)
    values["listings"] = [_listing(listing) for listing in result.listings]
    if result.card_identifier == result.query:
        values["card_identifier"] = result.query
    values["params"] = {_text(key): _short(v) for key, v in result.params.items()}
    for name in ("snapshot", "stats"):
        part = values.get(name)
        if part is not None:
            values[name] = _rebuilt(part, dict(part.__dict__))
    return _rebuilt(result, values)
