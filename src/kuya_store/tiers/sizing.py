"""How many bytes a result takes in process memory, approximately (pure code, no I/O).

The in-process tiers are bounded in bytes as well as entries: a result of 120 listings
with display data takes about 200 KiB as validated models, one of 10 listings about
19 KiB, so a count alone says little about memory. The estimate walks the result's
fields with constants measured with ``tracemalloc`` on CPython 3.11; the test suite
checks it against a measurement and ``bench/REPORT.md`` gives its error. It is paid
once, when an entry is stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kuya_store.models import Listing
from kuya_store.stored import StoredResult

__all__ = ["approximate_size", "display_size"]

# Measured: a decoded result with no listings (model, params, moments, snapshot), and
# one listing with short strings and no display data (model, its dict, Decimal, moment).
_RESULT = 1_300
_SNAPSHOT = 2_400
_LISTING = 1_140
_EXTRA = 64
_SLOT = 24


def _text(value: str) -> int:
    # CPython stores ASCII at one byte per character, anything else at two or four.
    return 50 + len(value) if value.isascii() else 76 + 2 * len(value)


def _json(value: Any) -> int:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping):
        # Keys repeat from listing to listing, and the JSON parser shares repeated keys.
        return _EXTRA + sum(_SLOT + _json(v) for v in value.values())
    if isinstance(value, list | tuple):
        return 56 + sum(8 + _json(item) for item in value)
    if isinstance(value, bool) or value is None:
        return 0  # shared singletons
    return 32  # int or float


def _listing(listing: Listing) -> int:
    title = listing.title
    size = _LISTING + _text(listing.item_id) + _text(title) + len(title) // 3
    if listing.condition is not None:
        size += _text(listing.condition)
    if listing.extra:
        size += _json(listing.extra)
    return size


def approximate_size(result: StoredResult) -> int:
    """Approximate bytes that ``result`` and everything it owns take in this process."""
    size = _RESULT + _text(result.query) + _text(result.card_identifier) + _json(result.params)
    if result.snapshot is not None:
        size += _SNAPSHOT
        for analysis in (result.snapshot.parallel_analysis, result.snapshot.grading_analysis):
            if analysis:
                size += _json(analysis)
    return size + sum(_listing(listing) for listing in result.listings)


def display_size(extra: Mapping[str, Any]) -> int:
    """Approximate bytes one listing's display data takes when kept on its own."""
    return _SLOT * 4 + _json(extra)
