"""A fetched result as the tiers keep it, and its JSON encoding for Redis (no pickle).

Redis content is untrusted: :func:`decode` validates a value in full. A value a store
wrote itself can carry a seal (:class:`ValueSeal`, an HMAC tag appended as one more
JSON member); :func:`unseal` rebuilds a value whose seal checks without validating it
again, and validates everything else exactly as :func:`decode` does. The write journal
seals its entries the same way, under a key of their own (:func:`rebuilt_result`
rebuilds the result a sealed entry holds).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from kuya_store.built_models import SET_DICT, SET_EXTRA, SET_FIELDS_SET, SET_PRIVATE, built
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

__all__ = ["CorruptEntryError", "StoredResult", "ValueSeal", "decode", "encode", "unseal"]


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


# -- encoding -------------------------------------------------------------------------


def _member(value: Any) -> Any:
    """What orjson cannot write itself, written the way ``model_dump_json`` writes it."""
    if type(value) is Listing:
        fields = dict(value.__dict__)
        fields["price"] = f"{value.price:.2f}"
        return fields
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(type(value).__name__)


def encode(result: StoredResult) -> bytes:
    """JSON bytes; money as strings, moments as ISO 8601.

    orjson writes the same bytes as ``model_dump_json`` (field order, ``"19.99"``,
    ``...Z``) in about half the time; what orjson refuses (an integer beyond 64 bits in
    ``extra``) is left to pydantic.
    """
    try:
        return orjson.dumps(result.__dict__, default=_member, option=orjson.OPT_UTC_Z)
    except TypeError:
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


# -- the seal -------------------------------------------------------------------------

# A sealed value is the JSON object with one more member, last, of a fixed length:
# readers that ignore unknown members (every release before the seal) read it as before.
_HEAD = b',"mac":"hmac-sha256:'
_TAIL = b'"}'
_HEX = 64
_SUFFIX = len(_HEAD) + _HEX + len(_TAIL)


@functools.cache
def _layout() -> bytes:
    """What the seal's key is bound to: the value version and the models' full schema.

    Processes whose models differ (another release, or a pydantic that describes them
    otherwise) never take each other's values on trust; they validate them, as any other.
    """
    schema = json.dumps(StoredResult.model_json_schema(), sort_keys=True)
    return f"kuya-store hot-tier value {KEY_VERSION}\x00{schema}".encode()


class ValueSeal:
    """Seals the values a store writes to Redis, and recognises them when read back.

    The tag is HMAC-SHA256 over the Redis key and the JSON, under a key derived from the
    secret and :func:`_layout`. Only a holder of the secret can make a tag that checks,
    so a value whose tag checks is one a store's own :func:`encode` wrote (from a
    validated result) under that very key: moving it to another key breaks the seal.

    Args:
        layout: what else the key is derived from, in place of :func:`_layout`: what is
            sealed under one layout never checks under another (the journal's entries
            and the hot tier's values can't pass for each other).
    """

    def __init__(self, secret: bytes, layout: bytes | None = None) -> None:
        derived = hmac.digest(secret, layout if layout is not None else _layout(), "sha256")
        self._mac = hmac.new(derived, digestmod=hashlib.sha256)

    @classmethod
    def ephemeral(cls, layout: bytes | None = None) -> ValueSeal:
        """A seal of this process alone: its own writes come back trusted, no one else's."""
        return cls(secrets.token_bytes(32), layout)

    def _tag(self, key: str, body: bytes | memoryview) -> bytes:
        mac = self._mac.copy()
        name = key.encode()
        mac.update(len(name).to_bytes(4, "big"))
        mac.update(name)
        mac.update(body)
        return mac.hexdigest().encode()

    def seal(self, key: str, payload: bytes) -> bytes:
        """``payload`` (a JSON object) with its tag for ``key`` as its last member."""
        if not payload.endswith(b"}") or len(payload) < 3:
            raise ValueError("only a non-empty JSON object can be sealed")
        body = payload[:-1]
        return body + _HEAD + self._tag(key, body) + _TAIL

    def sealed(self, key: str, raw: bytes) -> bool:
        """Whether ``raw`` carries a tag this seal made for ``key`` (compared in constant time)."""
        cut = len(raw) - _SUFFIX
        if cut < 2 or not raw.endswith(_TAIL) or raw[cut : cut + len(_HEAD)] != _HEAD:
            return False
        tag = raw[cut + len(_HEAD) : -len(_TAIL)]
        return hmac.compare_digest(tag, self._tag(key, memoryview(raw)[:cut]))


def unseal(raw: bytes, key: str, seal: ValueSeal) -> tuple[StoredResult, bool]:
    """The result a hot-tier value holds, and whether its seal spared it validation.

    A value whose seal does not check (none, another secret, another key, tampered or
    cut short), or that does not rebuild exactly, goes through :func:`decode`.

    Raises:
        CorruptEntryError: the value is not sealed and does not validate.
    """
    if seal.sealed(key, raw):
        try:
            return _trusted(orjson.loads(raw)), True
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError):
            pass  # sealed by a writer whose values this release does not rebuild: validate
    return decode(raw), False


# -- rebuilding a sealed value ----------------------------------------------------------

_MODEL_FIELDS = frozenset(StoredResult.model_fields)
_RESULT_FIELDS = _MODEL_FIELDS | {"mac"}
_LISTING_FIELDS = frozenset(Listing.model_fields)
_SNAPSHOT_FIELDS = frozenset(PriceSnapshot.model_fields)
_STATS_FIELDS = frozenset(FetchStats.model_fields)
_SNAPSHOT_MONEY = (
    "fmv_low",
    "fmv_high",
    "market_value",
    "quick_sale",
    "patient_sale",
    "min_price",
    "max_price",
    "avg_price",
)


class NotRebuiltError(ValueError):
    """A sealed value whose members are not the ones this release writes."""


def aware_moment(text: str) -> datetime:
    """A moment as a sealed value writes it (ISO 8601 with its zone); naive ones are refused."""
    return _aware(text)


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise NotRebuiltError("naive moment")
    return moment


def _utc(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = _aware(text)
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def _money(text: str | None) -> Decimal | None:
    if text is None:
        return None
    if type(text) is not str:  # a float would not be the exact amount written
        raise NotRebuiltError("money not written as text")
    return Decimal(text)


def _listings(items: list[Any]) -> list[Listing]:
    # The one loop that runs per listing, so it is lean: its lookups local, its steps
    # inline, and only checks that cost next to nothing. The seal binds the models'
    # schema, so a listing of another layout can only come from a writer with the same
    # secret and other models; a member count, the price's type and an aware sold_date
    # catch those (a full member check would cost a tenth of the whole rebuild). The
    # slots are set through their descriptors, and the listings of one value share one
    # set of given names, as listings read from the database do: pydantic only reads it.
    new, parse, names = object.__new__, datetime.fromisoformat, set(_LISTING_FIELDS)
    set_dict, set_names, set_extra, set_private = SET_DICT, SET_FIELDS_SET, SET_EXTRA, SET_PRIVATE
    count = len(names)
    for index, fields in enumerate(items):
        price = fields["price"]
        if len(fields) != count or type(price) is not str:
            raise NotRebuiltError("listing members")
        fields["price"] = Decimal(price)
        sold = fields["sold_date"]
        if sold is not None:
            sold = fields["sold_date"] = parse(sold)
            if sold.tzinfo is None:
                raise NotRebuiltError("naive sold_date")
        item = new(Listing)
        set_dict(item, fields)
        set_names(item, names)
        set_extra(item, None)
        set_private(item, None)
        items[index] = item
    return items


def rebuilt_snapshot(fields: dict[str, Any] | None) -> PriceSnapshot | None:
    """A sealed snapshot's model, built as validation builds it (``None`` stays ``None``)."""
    return _snapshot(fields)


def _snapshot(fields: dict[str, Any] | None) -> PriceSnapshot | None:
    if fields is None:
        return None
    if fields.keys() != _SNAPSHOT_FIELDS:
        raise NotRebuiltError("snapshot members")
    for name in _SNAPSHOT_MONEY:
        fields[name] = _money(fields[name])
    fields["snapshot_date"] = date.fromisoformat(fields["snapshot_date"])
    return built(PriceSnapshot, fields)


def _stats(fields: dict[str, Any] | None) -> FetchStats | None:
    if fields is None:
        return None
    if fields.keys() != _STATS_FIELDS:
        raise NotRebuiltError("stats members")
    return built(FetchStats, fields)


def _trusted(data: dict[str, Any]) -> StoredResult:
    """A sealed value's result, built as validation would build it, without its checks."""
    if data.keys() != _RESULT_FIELDS:
        raise NotRebuiltError("result members")
    del data["mac"]
    return _rebuilt(data)


def rebuilt_result(data: Any) -> StoredResult:
    """A result held inside a sealed record (its members exactly the model's), unvalidated.

    Raises:
        NotRebuiltError: the members are not the ones this release writes (as may
            ``KeyError``, ``TypeError`` or ``ValueError``: the caller validates then).
    """
    if type(data) is not dict or data.keys() != _MODEL_FIELDS:
        raise NotRebuiltError("result members")
    return _rebuilt(data)


def _rebuilt(data: dict[str, Any]) -> StoredResult:
    if data["v"] != KEY_VERSION:
        raise NotRebuiltError("result version")
    data["search_type"] = SearchType(data["search_type"])
    data["listings"] = _listings(data["listings"])
    data["fetched_at"] = _utc(data["fetched_at"])
    data["fresh_until"] = _utc(data["fresh_until"])
    data["display_until"] = _utc(data["display_until"])
    data["snapshot"] = _snapshot(data["snapshot"])
    data["stats"] = _stats(data["stats"])
    return built(StoredResult, data)
