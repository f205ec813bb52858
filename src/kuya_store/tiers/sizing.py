"""How many bytes a result takes in process memory, approximately (pure code, no I/O).

The in-process tiers are bounded in bytes as well as entries: a result of 120 listings
with display data takes about 120 KiB as a held (compacted) result, one of 10 listings
about 16 KiB, so a count alone says little about memory. The estimate walks the result's
fields with constants measured with ``tracemalloc`` on CPython 3.11; the test suite
checks it against a measurement of what a tier holds and ``bench/REPORT.md`` gives its
error. It is paid once, when an entry is stored.

Listings are counted all at once rather than one by one, since a result may hold
hundreds: their texts are joined and measured in one call, and display data of plain
values (texts, numbers) is counted from the kinds and lengths of its values. Nested
display data, and a snapshot's analyses, are walked value by value; both ways count the
same bytes for the same values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from operator import attrgetter
from typing import Any

from kuya_store.models import Listing
from kuya_store.stored import StoredResult

__all__ = ["approximate_size", "display_size"]

# Measured: a held result with no listings (model, params, moments), its snapshot, and one
# listing with short strings and no display data (model, its dict, Decimal, moment). The
# set of given field names of each model is not counted: held results share one per
# combination of names (:mod:`kuya_store.tiers.compact`), as they share listing types
# and conditions.
_RESULT = 550
_SNAPSHOT = 900
_LISTING = 400
_SLOT = 24
_NUMBER = 32
_FLAT = frozenset({str, int, float, bool, type(None)})


def _text(value: str) -> int:
    # CPython stores ASCII at one byte per character, anything else at two or four.
    return 50 + len(value) if value.isascii() else 76 + 2 * len(value)


def _texts(joined: str, count: int, each: Iterable[str]) -> int:
    """What ``count`` texts take, given joined; ``each`` is walked only if some are wide."""
    if joined.isascii():  # the common case: one pass over all of them
        return 50 * count + len(joined)
    return sum(map(_text, each))


def _mapping(entries: int) -> int:
    # A dict's table grows in steps; the keys themselves repeat and are shared.
    return 64 if entries == 0 else max(184, 88 + 18 * entries)


_MAPPINGS = tuple(map(_mapping, range(64)))


def _mappings(lengths: list[int]) -> int:
    try:
        return sum(map(_MAPPINGS.__getitem__, lengths))
    except IndexError:
        return sum(map(_mapping, lengths))


def _json(value: Any) -> int:
    kind = type(value)
    if kind is str:
        return _text(value)
    if kind is dict:
        return _mapping(len(value)) + sum(map(_json, value.values()))
    if value is None or kind is bool:
        return 0  # shared singletons
    if kind is int or kind is float:
        return _NUMBER
    if kind is list:
        return 56 + 8 * len(value) + sum(map(_json, value))
    return _json_subclassed(value)


def _json_subclassed(value: Any) -> int:
    # Whatever is not exactly a JSON type: subclasses, other mappings, tuples.
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping):
        return _mapping(len(value)) + sum(_json(v) for v in value.values())
    if isinstance(value, list | tuple):
        return 56 + sum(8 + _json(item) for item in value)
    if isinstance(value, bool) or value is None:
        return 0
    return _NUMBER  # int or float


def _values(extras: list[dict[str, Any]]) -> Iterator[Any]:
    return chain.from_iterable(map(dict.values, extras))


def _displays(extras: list[dict[str, Any]]) -> int:
    """What the display data of many listings takes: what walking each would count.

    Counted from the kinds and lengths of all their values at once, unless some nest.
    (An analysis of a snapshot nests, and is small: it is walked.)
    """
    lengths = list(map(len, extras))
    try:
        # Raises unless every value is a text: the common case, counted in three passes.
        joined = "".join(_values(extras))
    except TypeError:
        return _mixed_displays(extras, lengths)
    return _mappings(lengths) + _texts(joined, sum(lengths), _values(extras))


def _mixed_displays(extras: list[dict[str, Any]], lengths: list[int]) -> int:
    try:
        values = list(_values(extras))
    except TypeError:  # not all dicts (listings built without validation)
        return sum(map(_json, extras))
    kinds = Counter(map(type, values))
    if not kinds.keys() <= _FLAT:
        return sum(map(_json, extras))  # nested: walked
    texts = [v for v in values if type(v) is str]
    return (
        _mappings(lengths)
        + _NUMBER * (kinds[int] + kinds[float])
        + _texts("".join(texts), len(texts), texts)
    )


_ITEM_ID, _TITLE, _EXTRA = attrgetter("item_id"), attrgetter("title"), attrgetter("extra")


def _listings(listings: Sequence[Listing]) -> int:
    count = len(listings)
    if not count:
        return 0
    ids = _texts("".join(map(_ITEM_ID, listings)), count, map(_ITEM_ID, listings))
    joined = "".join(map(_TITLE, listings))
    titles = _texts(joined, count, map(_TITLE, listings)) + len(joined) // 3
    return _LISTING * count + ids + titles + _displays(list(map(_EXTRA, listings)))


def approximate_size(result: StoredResult) -> int:
    """Approximate bytes that ``result`` and everything it owns take in this process."""
    size = _RESULT + _text(result.query) + _json(result.params)
    if result.card_identifier != result.query:  # else held as one string
        size += _text(result.card_identifier)
    if result.snapshot is not None:
        size += _SNAPSHOT
        for analysis in (result.snapshot.parallel_analysis, result.snapshot.grading_analysis):
            if analysis:
                # Measured: decoded analyses take about four fifths again what the walk
                # counts (1.73 to 1.86 times, 5 to 120 listings).
                size += _json(analysis) * 9 // 5
    return size + _listings(result.listings)


def display_size(extra: Mapping[str, Any]) -> int:
    """Approximate bytes one listing's display data takes when kept on its own."""
    return _SLOT * 4 + _json(extra)
