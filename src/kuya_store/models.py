"""Domain values: what a search asks for and what it answers, as frozen pydantic models."""

from __future__ import annotations

import enum
import json
import math
import operator
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "MAX_EXTRA_BYTES",
    "MAX_PRICE",
    "CompsResult",
    "FetchRequest",
    "FetchResult",
    "FetchStats",
    "Health",
    "Invalidation",
    "Listing",
    "Money",
    "Params",
    "PriceSnapshot",
    "SearchFilters",
    "SearchType",
    "Source",
    "to_money",
]

MAX_PRICE = Decimal("99999999.99")
"""Largest amount a ``NUMERIC(10, 2)`` column holds."""

MAX_EXTRA_BYTES = 8192
"""Cap on the JSON size of ``Listing.extra`` (display data held only in the hot tiers)."""

_CENT = Decimal("0.01")


class SearchType(enum.StrEnum):
    """Which marketplace feed a search reads: sold and active results are kept and expire apart."""

    SOLD = "sold"
    ACTIVE = "active"


class Source(enum.StrEnum):
    """Which tier answered a search: ``api`` was a paid call, ``stale`` an old answer."""

    MEMORY = "memory"
    REDIS = "redis"
    DATABASE = "database"
    API = "api"
    STALE = "stale"


def to_money(value: object) -> Decimal:
    """Convert an amount to an exact 2-place ``Decimal`` within ``NUMERIC(10, 2)``.

    Floats go through their shortest text form, so ``19.99`` stays ``19.99``;
    more places than two are rounded half-up to the cent.
    """
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        value = repr(value)
    if isinstance(value, int | str | Decimal):
        try:
            amount = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise ValueError("is not a number") from None
    else:
        raise ValueError(f"must be a number, not {type(value).__name__}")
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    amount = amount.quantize(_CENT, rounding=ROUND_HALF_UP)
    if amount < 0:
        raise ValueError("must not be negative")
    if amount > MAX_PRICE:
        raise ValueError(f"must be at most {MAX_PRICE}")
    return amount


Money = Annotated[
    Decimal,
    BeforeValidator(to_money),
    PlainSerializer(lambda d: str(d), return_type=str, when_used="json"),
]
"""An exact amount with two places, serialised to JSON as a string (never a float)."""


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


UTCDateTime = Annotated[AwareDatetime, AfterValidator(_utc)]
"""A timezone-aware moment, normalised to UTC; naive datetimes are rejected."""

_Text = Annotated[str, AfterValidator(_no_nul)]


# What ``json.dumps(value, allow_nan=False, separators=(",", ":"))`` builds for each call.
_EXTRA_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def _json_object(value: Mapping[str, Any], what: str) -> None:
    if not value:
        return  # ``{}``: two bytes
    try:
        encoded = _EXTRA_JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a JSON object ({exc})") from None
    if len(encoded) > MAX_EXTRA_BYTES:  # ASCII (``ensure_ascii``): one byte a character
        raise ValueError(f"{what} must be at most {MAX_EXTRA_BYTES} bytes as JSON")


_NOT_UNICODE = "must be valid Unicode text (a lone surrogate has no UTF-8 form to store)"


def _explain_unicode(exc: ValidationError) -> ValidationError:
    """``exc`` with pydantic's "unable to parse raw data" (a lone surrogate) said plainly.

    The core refuses such text itself, so valid listings pay nothing for this; only the
    message of a refusal is rewritten, each error keeping its location.
    """
    errors = exc.errors(include_url=False)
    if not any(e["type"] == "string_unicode" for e in errors):
        return exc
    details = [
        InitErrorDetails(
            type=PydanticCustomError("string_unicode", _NOT_UNICODE)
            if e["type"] == "string_unicode"
            else e["type"],
            loc=e["loc"],
            input=e.get("input"),
            ctx=e.get("ctx", {}),
        )
        for e in errors
    ]
    try:
        return ValidationError.from_exception_data(exc.title, details)
    except (TypeError, ValueError, KeyError):  # pragma: no cover - an error type it cannot rebuild
        return exc


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)


class SearchFilters(BaseModel):
    """The title filters of a search; one upstream fetch serves every combination."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    raw_only: bool = False
    base_only: bool = False
    exclude_auto: bool = False

    def as_dict(self) -> dict[str, bool]:
        """The filters as the ``searches.filters`` JSON object."""
        return {
            "raw_only": self.raw_only,
            "base_only": self.base_only,
            "exclude_auto": self.exclude_auto,
        }


Scalar = str | int | float | bool | None
Params = dict[str, Scalar]
"""Upstream options handed to the fetcher (pages, sort order, ...): JSON scalars only."""


_NO_NUL = r"^[^\x00]*$"


def _cents(amount: Decimal) -> str:
    return f"{amount:.2f}"


def _round_price(value: object) -> object:
    """Round a float or over-precise amount to the cent, however a listing is built.

    Exact two-place amounts pass untouched to pydantic's core (the Redis read path); an
    amount out of range is rounded all the same, and one that is not a number is left
    as it is, for the field's own checks to name.
    """
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            return value
        text: object = repr(value)
    elif kind is str:
        _, dot, places = value.partition(".")  # type: ignore[attr-defined]
        if not dot or len(places.strip()) <= 2:
            return value
        text = value.strip()  # type: ignore[attr-defined]
    elif kind is Decimal:
        exponent = value.as_tuple().exponent  # type: ignore[attr-defined]
        if not isinstance(exponent, int) or exponent >= -2:
            return value
        text = value
    else:
        return value
    try:
        return Decimal(text).quantize(_CENT, rounding=ROUND_HALF_UP)  # type: ignore[arg-type]
    except ArithmeticError:  # not a number, or too many digits to round
        return value


_Name = Annotated[str, StringConstraints(strip_whitespace=True)]


class Listing(_Frozen):
    """One marketplace listing: the metadata the database keeps, plus display-only ``extra``.

    The constraints are checked by pydantic's compiled core, so reading thousands of
    listings back from Redis stays cheap. A float or over-precise ``price`` is rounded
    half-up to the cent, however the listing is built; a fetcher's result
    (:class:`FetchResult`) also normalises ``sold_date`` to UTC and caps ``extra`` at
    ``MAX_EXTRA_BYTES`` before anything is stored.

    A listing built by validation remembers its field values (see
    :func:`is_validated_listing`), so a fetcher's listings are checked once, not again
    by the store.
    """

    # The values validation gave the fields, and those a fetch result's checks passed:
    # not fields, not copied by ``model_copy``, ``copy`` or pickling, not compared by ``==``.
    __slots__ = ("_fetch_checked", "_validated")
    # The metadata's strings are stripped field by field: a model-wide setting would also
    # strip the display data's values, in Python mode only (JSON mode leaves a
    # ``JsonValue`` as it is), so one fetch would differ by how its fetcher handed it over.
    model_config = ConfigDict(str_strip_whitespace=False)

    item_id: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50, pattern=_NO_NUL)
    ]
    title: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=_NO_NUL),
    ]
    price: Annotated[
        Decimal,
        # The rounding comes after the constraints, so it runs before them and they stay
        # in pydantic's core (constraints after a validator are checked in Python).
        # ``le`` and two places bound the digits to ten: ``NUMERIC(10, 2)``.
        Field(ge=0, le=MAX_PRICE, decimal_places=2, allow_inf_nan=False),
        BeforeValidator(_round_price),
        PlainSerializer(_cents, return_type=str, when_used="json"),
    ]
    listing_type: Literal["auction", "buy_it_now"] | None = None
    condition: (
        Annotated[str, StringConstraints(strip_whitespace=True, max_length=50, pattern=_NO_NUL)]
        | None
    ) = None
    sold: bool = False
    sold_date: AwareDatetime | None = None
    bids: Annotated[int, Field(ge=0, le=2_147_483_647)] | None = None
    watchers: Annotated[int, Field(ge=0, le=2_147_483_647)] | None = None
    # The display data's names are stripped like the metadata's strings; its values are
    # kept as given. (A stripped key is also the JSON parser's cached string, so the keys
    # every listing repeats are held once.)
    extra: dict[_Name, JsonValue] = Field(default_factory=dict)

    def metadata_only(self) -> Listing:
        """This listing without its display data: what the database may keep."""
        return self if not self.extra else self.model_copy(update={"extra": {}})

    @model_validator(mode="wrap")
    @classmethod
    def _remember_values(cls, data: Any, handler: ModelWrapValidatorHandler[Listing]) -> Listing:
        listing = handler(data)
        # A model handed in is passed through unvalidated (``model_construct`` too):
        # only a listing built here from plain data is known to be valid. (``dict`` first:
        # the common case, spared the metaclass's ``isinstance``.)
        if type(data) is dict or not isinstance(data, BaseModel):
            _set_slot(listing, "_validated", tuple(listing.__dict__.values()))
        return listing


_set_slot = object.__setattr__
_LISTING_FIELDS = tuple(Listing.model_fields)
_is = operator.is_
# The slots read directly: an unset one would go through the model's ``__getattr__``.
_SLOTS = {name: Listing.__dict__[name] for name in Listing.__slots__}


def _slot(listing: object, slot: str) -> tuple[object, ...] | None:
    try:
        return _SLOTS[slot].__get__(listing)  # type: ignore[no-any-return]
    except AttributeError:
        return None


def _seal(listing: object, slot: str) -> tuple[object, ...] | None:
    """The values ``slot`` remembers, if they are still exactly the listing's own."""
    if type(listing) is not Listing:  # a subclass may validate differently
        return None
    seal = _slot(listing, slot)
    fields = listing.__dict__
    if (
        seal is None
        or len(seal) != len(fields)
        or not all(map(_is, seal, fields.values()))
        or tuple(fields) != _LISTING_FIELDS
    ):
        return None
    return seal


def is_validated_listing(value: object) -> bool:
    """Whether ``value`` is a :class:`Listing` that validation built, unchanged since.

    Each field must still hold the very object validation gave it, so a listing made by
    ``model_construct``, changed by ``model_copy(update=...)``, ``object.__setattr__`` or
    its ``__dict__``, copied, unpickled, or of a subclass is not one. What is not seen: a
    change inside the ``extra`` dict itself (the model is frozen, the dict is not).
    """
    return _seal(value, "_validated") is not None


def is_fetch_checked_listing(value: object) -> bool:
    """Whether a fetch result's own checks already passed this validated, unchanged listing."""
    seal = _seal(value, "_validated")
    # The checks remember the very values validation gave: one comparison covers both.
    return seal is not None and _slot(value, "_fetch_checked") is seal


class PriceSnapshot(_Frozen):
    """A card's aggregated prices for one day: one ``price_snapshots`` row."""

    card_identifier: Annotated[_Text, StringConstraints(min_length=1)]
    snapshot_date: date
    fmv_low: Money | None = None
    fmv_high: Money | None = None
    market_value: Money | None = None
    quick_sale: Money | None = None
    patient_sale: Money | None = None
    sample_size: Annotated[int, Field(ge=0)] | None = 0
    min_price: Money | None = None
    max_price: Money | None = None
    avg_price: Money | None = None
    volume_confidence: Annotated[str, StringConstraints(max_length=20)] | None = None
    parallel_analysis: dict[str, Any] | None = None
    grading_analysis: dict[str, Any] | None = None


class FetchRequest(_Frozen):
    """What the store hands to a fetcher on a miss."""

    query: str
    search_type: SearchType
    filters: SearchFilters = SearchFilters()
    params: Params = Field(default_factory=dict)
    page: Annotated[int, Field(ge=1)] | None = None
    """The page asked of a paged fetcher (1-based, newest first); ``None`` for a whole result."""


class FetchStats(_Frozen):
    """What a fetcher reports beside its listings, kept with the search-log row.

    Every count is optional: report what the upstream client knows.
    """

    items_scraped: Annotated[int, Field(ge=0)] | None = None
    """Items the upstream returned before the fetcher's own filtering."""
    duplicates_removed: Annotated[int, Field(ge=0)] | None = None
    """Items dropped because they repeated an ``item_id``."""
    zero_price_removed: Annotated[int, Field(ge=0)] | None = None
    """Items dropped because they had no usable price."""
    other_removed: Annotated[int, Field(ge=0)] | None = None
    """Items dropped for any other reason (lots, off-topic listings, ...)."""

    def as_dict(self) -> dict[str, int]:
        """The counts that were reported, as the ``searches.fetch_stats`` JSON object."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class FetchResult(_Frozen):
    """What a fetcher returns: the listings of one upstream search."""

    listings: list[Listing]
    pages_scraped: Annotated[int, Field(ge=0, le=10_000)] = 1
    stats: FetchStats | None = None
    has_more: bool | None = None
    """Whether the upstream holds more beyond these listings; ``None`` when it does not say."""

    @field_validator("listings")
    @classmethod
    def _normalise(cls, listings: list[Listing]) -> list[Listing]:
        out = []
        for index, listing in enumerate(listings):
            seal = _seal(listing, "_validated")
            if seal is not None and _slot(listing, "_fetch_checked") is seal:
                out.append(listing)  # checked by an earlier result, unchanged since
                continue
            _json_object(listing.extra, f"listing {index}: extra")
            moment = listing.sold_date
            if moment is not None and moment.utcoffset() != timedelta(0):
                listing = listing.model_copy(update={"sold_date": moment.astimezone(UTC)})
                if seal is not None:  # a valid listing, with a valid moment: valid too
                    seal = tuple(listing.__dict__.values())
                    _set_slot(listing, "_validated", seal)
            if seal is not None:
                _set_slot(listing, "_fetch_checked", seal)
            out.append(listing)
        return out

    @field_validator("listings", mode="wrap")
    @classmethod
    def _explain_text(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            raise _explain_unicode(exc) from None


class CompsResult(_Frozen):
    """The answer to ``CompsRepository.search``: listings plus where they came from."""

    query: str
    card_identifier: str
    search_type: SearchType
    filters: SearchFilters
    params: Params = Field(default_factory=dict)
    listings: list[Listing]
    source: Source
    fetched_at: UTCDateTime
    cache_hit: bool
    snapshot: PriceSnapshot | None = None
    pages_scraped: int | None = None
    execution_time_ms: int = 0
    complete: bool = False
    """The upstream had nothing beyond these listings (before filters)."""
    fresh_until: UTCDateTime | None = None
    """Until when this answer counts as fresh; a later search asks upstream again."""
    display_complete: bool = True
    """Every listing carries its display data (``extra``); a database answer has none."""


class Invalidation(_Frozen):
    """What ``CompsRepository.invalidate`` reached.

    Attributes:
        hot_tier: the hot tier (Redis, or memory) dropped the card's results.
        database: the database stopped them answering; ``None`` without a database.
    """

    hot_tier: bool
    database: bool | None = None

    @property
    def complete(self) -> bool:
        """Every configured tier was reached."""
        return self.hot_tier and self.database is not False


class Health(_Frozen):
    """Readiness, as the migration plan's ``/health/ready``: unhealthy only when nothing answers.

    A part that is not configured (no Redis URL; no database in ``cache_only`` mode)
    reads ``False`` but does not degrade the status.
    """

    status: Literal["healthy", "degraded", "unhealthy"]
    redis: bool
    database: bool
