"""How many bytes a result takes in process memory, approximately (pure code, no I/O).

The in-process tiers are bounded in bytes as well as entries: a result of 120 listings
with display data takes about 120 KiB as a held (compacted) result, one of 10 listings
about 16 KiB, so a count alone says little about memory. The estimate walks the result's
fields with constants measured with ``tracemalloc`` on CPython 3.11; the test suite
checks it against a measurement of what a tier holds and ``bench/REPORT.md`` gives its
error. It is paid once, when an entry is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kuya_store.models import Listing
from kuya_store.stored import StoredResult

__all__ = ["approximate_size", "display_size"]

# Measured: a held result with no listings (model, params, moments), its snapshot, and one
# listing with short strings and no display data (model, its dict, Decimal, moment). The
# set of given field names of each model is not counted: held results share one per
# combination of names (:mod:`kuya_store.tiers.compact`), as they share listing types
# and conditions.
_RESULT = 1_300
_SNAPSHOT = 1_000
_LISTING = 400
_SLOT = 24


def _text(value: str) -> int:
    # CPython stores ASCII at one byte per character, anything else at two or four.
    return 50 + len(value) if value.isascii() else 76 + 2 * len(value)


def _mapping(entries: int) -> int:
    # A dict's table grows in steps; the keys themselves repeat and are shared.
    return 64 if entries == 0 else max(184, 88 + 18 * entries)


def _json(value: Any) -> int:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping):
        return _mapping(len(value)) + sum(_json(v) for v in value.values())
    if isinstance(value, list | tuple):
        return 56 + sum(8 + _json(item) for item in value)
    if isinstance(value, bool) or value is None:
        return 0  # shared singletons
    return 32  # int or float


def _listing(listing: Listing) -> int:
    title = listing.title
    return _LISTING + _text(listing.item_id) + _text(title) + len(title) // 3 + _json(listing.extra)


def approximate_size(result: StoredResult) -> int:
    """Approximate bytes that ``result`` and everything it owns take in this process."""
    size = _RESULT + _text(result.query) + _json(result.params)
    if result.card_identifier != result.query:  # else held as one string
        size += _text(result.card_identifier)
    if result.snapshot is not None:
        size += _SNAPSHOT
        for analysis in (result.snapshot.parallel_analysis, result.snapshot.grading_analysis):
            if analysis:
                # Measured: decoded analyses take about half again what this walk counts.
                size += _json(analysis) * 3 // 2
    return size + sum(_listing(listing) for listing in result.listings)


def display_size(extra: Mapping[str, Any]) -> int:
    """Approximate bytes one listing's display data takes when kept on its own."""
    return _SLOT * 4 + _json(extra)
