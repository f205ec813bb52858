"""A fetched result as the tiers keep it, and its JSON encoding for Redis (no pickle)."""

from __future__ import annotations

from pydantic import ValidationError

from kuya_store.keys import KEY_VERSION
from kuya_store.models import (
    FetchStats,
    Listing,
    Params,
    PriceSnapshot,
    SearchType,
    UTCDateTime,
    _Frozen,
)

__all__ = ["CorruptEntryError", "StoredResult", "decode", "encode"]


class CorruptEntryError(ValueError):
    """A hot-tier value that does not decode or validate: treated as a miss."""


class StoredResult(_Frozen):
    """One upstream fetch, unfiltered: what every tier stores and every filter reads from."""

    v: int = KEY_VERSION
    query: str
    card_identifier: str
    search_type: SearchType
    params: Params
    listings: list[Listing]
    fetched_at: UTCDateTime
    pages_scraped: int | None = None
    snapshot: PriceSnapshot | None = None
    stats: FetchStats | None = None
    complete: bool | None = None
    """The upstream had nothing more; ``False`` when the page limit cut it off, ``None``
    when the fetcher does not say."""
    fresh_until: UTCDateTime | None = None
    """Set by the freshness policy when the result is fetched or read back."""
    display_complete: bool = True
    """Every listing carries the display data it was fetched with (``Listing.extra``)."""
    display_until: UTCDateTime | None = None
    """Until when the display data of these listings may be shown (``display_ttl``)."""

    def without_extra(self) -> StoredResult:
        """The database's view of this result: listing metadata only."""
        return self.model_copy(update={"listings": [x.metadata_only() for x in self.listings]})


def encode(result: StoredResult) -> bytes:
    """JSON bytes; money as strings, moments as ISO 8601."""
    return result.model_dump_json().encode()


def decode(raw: bytes | str) -> StoredResult:
    """Parse and validate a hot-tier value, or raise :class:`CorruptEntryError`."""
    try:
        result = StoredResult.model_validate_json(raw)
    except (ValidationError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptEntryError(str(exc)[:200]) from None
    if result.v != KEY_VERSION:
        raise CorruptEntryError(f"value version {result.v} is not {KEY_VERSION}")
    return result
