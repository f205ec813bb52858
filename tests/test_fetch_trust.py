"""A fetcher's listings are validated once: what validation built passes, anything else is checked.

The store validates whatever a fetcher returns (:func:`validate_fetch_result`). A listing that
validation built and nothing changed since is taken as it is; these tests hold that shortcut to
the outcome of validating everything again from plain data, on every form a fetcher can return.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kuya_store as ks
from kuya_store import models
from kuya_store.budget import ApiBudget
from kuya_store.freshness import policy_for
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.models import is_validated_listing
from kuya_store.pricing import DefaultValuator
from kuya_store.settings import StoreSettings
from kuya_store.upstream import Upstream, _as_data, validate_fetch_result

MANILA = timezone(timedelta(hours=8))
SOLD = datetime(2026, 11, 20, 9, 30, tzinfo=MANILA)


def _fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "item_id": "A1",
        "title": "2023 Prizm Wembanyama #136 PSA 10",
        "price": "189.99",
        "listing_type": "auction",
        "sold": True,
        "sold_date": SOLD,
        "bids": 7,
        "extra": {"image": "https://img.example/a1.jpg"},
    }
    return {**fields, **changes}


def _outcome(value: object) -> tuple[Any, ...]:
    try:
        result = validate_fetch_result(value)
    except ks.InvalidInputError as exc:
        return ("refused", exc.field, str(exc))
    assert all(type(x) is ks.Listing for x in result.listings)
    return ("accepted", result)


def _full(value: object) -> tuple[Any, ...]:
    """The outcome of validating everything from plain data: no listing is taken as it is."""
    if isinstance(value, list | tuple | ks.FetchResult):
        value = _as_data(value)
    return _outcome(value)


# -- the rule, on the forms a fetcher returns ---------------------------------------------


def test_a_fetchers_validated_result_is_taken_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    result = ks.FetchResult(listings=[ks.Listing(**_fields(item_id=f"A{i}")) for i in range(40)])
    dumps: list[object] = []
    checked = models._json_object
    monkeypatch.setattr(models, "_json_object", lambda *a: dumps.append(a) or checked(*a))

    validated = validate_fetch_result(result)

    assert all(a is b for a, b in zip(validated.listings, result.listings, strict=True))
    assert dumps == []  # the extra of each was checked when the fetcher built its result
    assert validated == _full(result)[1]


@pytest.mark.parametrize(
    "build",
    [
        lambda: ks.FetchResult.model_validate_json(
            ks.FetchResult(listings=[ks.Listing(**_fields())]).model_dump_json()
        ),
        lambda: [ks.Listing(**_fields())],
        lambda: (ks.Listing.model_validate(_fields()),),
        lambda: ks.FetchResult.model_construct(listings=[ks.Listing(**_fields())]),
    ],
    ids=["json", "list", "tuple", "constructed-result"],
)
def test_validated_listings_pass_in_every_form(build: Any) -> None:
    value = build()
    listings = value if isinstance(value, list | tuple) else value.listings
    validated = validate_fetch_result(value)
    assert validated.listings[0].sold_date == SOLD.astimezone(UTC)
    assert validated.listings[0].sold_date.tzinfo == UTC
    assert validated == _full(value)[1]
    if listings[0].sold_date.tzinfo == UTC:
        assert validated.listings[0] is listings[0]


def _negative(listing: ks.Listing) -> ks.Listing:
    object.__setattr__(listing, "price", Decimal("-1"))
    return listing


def _empty_id(listing: ks.Listing) -> ks.Listing:
    listing.__dict__["item_id"] = ""
    return listing


def _dropped_field(listing: ks.Listing) -> ks.Listing:
    # same values, another field: only the field names tell
    fields = listing.__dict__
    bids = fields.pop("bids")
    fields["bids"] = bids
    del fields["watchers"]
    fields["zzz"] = None
    return listing


class _Cheaper(ks.Listing):
    pass


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (lambda x: x.model_copy(update={"price": Decimal("-1")}), "price"),
        (lambda x: x.model_copy(update={"price": -3.5}), "price"),
        (lambda x: x.model_copy(update={"title": ""}), "title"),
        (lambda x: x.model_copy(update={"extra": {"bad": {1, 2}}}), "extra"),
        (lambda x: ks.Listing.model_construct(**_fields(price=Decimal("-1"))), "price"),
        (lambda x: ks.Listing.model_construct(**_fields(bids=-1)), "bids"),
        (_negative, "price"),
        (_empty_id, "item_id"),
        (lambda x: _Cheaper.model_construct(**_fields(price="-1")), "price"),
    ],
    ids=[
        "copy-negative",
        "copy-float",
        "copy-title",
        "copy-extra",
        "constructed-price",
        "constructed-bids",
        "setattr",
        "dict-write",
        "subclass",
    ],
)
@pytest.mark.parametrize("form", ["result", "list", "constructed-result"])
def test_a_changed_or_unvalidated_listing_is_refused(spoil: Any, field: str, form: str) -> None:
    bad = spoil(ks.Listing(**_fields()))
    assert not is_validated_listing(bad)
    listings = [ks.Listing(**_fields(item_id="OK")), bad]
    if form == "list":
        value: object = listings
    elif form == "result":
        try:
            value = ks.FetchResult(listings=listings)  # pydantic passes the model in unchecked
        except ValueError:
            return  # its own checks caught it: nothing reaches the store
    else:
        value = ks.FetchResult.model_construct(listings=listings)
    got = _outcome(value)
    assert got[0] == "refused"
    assert got[1].startswith("fetcher.listings[1]")
    assert field in got[1] or field == "extra"
    assert got == _full(value)


def test_a_listing_with_another_field_set_is_checked_again() -> None:
    listing = _dropped_field(ks.Listing(**_fields(watchers=None)))
    assert not is_validated_listing(listing)
    assert _outcome([listing]) == _full([listing])
    assert validate_fetch_result([listing]).listings[0].watchers is None


@pytest.mark.parametrize(
    "again",
    [copy.copy, copy.deepcopy, lambda x: pickle.loads(pickle.dumps(x)), lambda x: x.model_copy()],
    ids=["copy", "deepcopy", "pickle", "model_copy"],
)
def test_a_copy_is_validated_again_and_alike(again: Any) -> None:
    original = ks.Listing(**_fields())
    copied = again(original)
    assert copied == original
    assert not is_validated_listing(copied)
    assert validate_fetch_result([copied]) == validate_fetch_result([original])


def test_a_dict_listing_is_still_validated() -> None:
    result = validate_fetch_result([_fields(price=6.240000000000001, title="  t  ")])
    assert result.listings[0].price == Decimal("6.24")
    assert result.listings[0].title == "t"
    with pytest.raises(ks.InvalidInputError) as caught:
        validate_fetch_result([_fields(), _fields(item_id="B", price=-1)])
    assert caught.value.field == "fetcher.listings[1].price"


def test_extra_is_capped_once_even_for_a_listing_validated_alone() -> None:
    listing = ks.Listing(**_fields(extra={"blob": "x" * models.MAX_EXTRA_BYTES}))
    assert is_validated_listing(listing)  # a listing alone has no cap on its extra
    with pytest.raises(ks.InvalidInputError) as caught:
        validate_fetch_result([listing])
    assert caught.value.field == "fetcher.listings"
    assert "at most 8192 bytes" in str(caught.value)


def test_duplicates_are_refused_on_the_fast_path_too() -> None:
    one = ks.Listing(**_fields())
    with pytest.raises(ks.InvalidInputError, match="duplicate"):
        validate_fetch_result(ks.FetchResult(listings=[one, one]))


# -- the property: the shortcut accepts and refuses exactly what validating again does -----

_prices = st.one_of(
    st.decimals(min_value=-5, max_value=Decimal("100000000.5"), places=3),
    st.floats(min_value=-10, max_value=1e9),
    st.sampled_from([float("nan"), float("inf"), 6.240000000000001]),
    st.sampled_from(["19.99", " 7.5 ", "abc", "1e3", "-0", "0.005", "99999999.995"]),
    st.integers(min_value=-2, max_value=10**9),
    st.booleans(),
)
_texts = st.one_of(
    st.text(min_size=0, max_size=60),
    st.sampled_from(["  padded  ", "nul\x00", "", " ", "x" * 51, "\ud800"]),
)
_moments = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2030, 1, 1),
        timezones=st.sampled_from([UTC, MANILA, timezone(timedelta(hours=-5))]),
    ),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)),  # naive
)
_extras = st.one_of(
    st.just({}),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=20))),
    st.sampled_from(
        [{"big": "x" * 8200}, {"nan": float("nan")}, {"set": {1}}, {"n": 10**30}, {"ok": [1, 2]}]
    ),
)
_values = {
    "item_id": _texts,
    "title": _texts,
    "price": _prices,
    "listing_type": st.sampled_from([None, "auction", "buy_it_now", "raffle"]),
    "condition": st.one_of(st.none(), _texts),
    "sold": st.one_of(st.booleans(), st.sampled_from(["yes", 2])),
    "sold_date": _moments,
    "bids": st.one_of(st.none(), st.integers(min_value=-2, max_value=2**31 + 1)),
    "watchers": st.one_of(st.none(), st.integers(min_value=-1, max_value=50)),
    "extra": _extras,
}


_valid = {
    "item_id": st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
    "title": st.sampled_from(["2023 Prizm Wembanyama #136 PSA 10", " Ohtani RC ", "Lot of 3"]),
    "price": st.decimals(min_value=0, max_value=100_000, places=2),
    "listing_type": st.sampled_from([None, "auction", "buy_it_now"]),
    "condition": st.sampled_from([None, "Used", " New "]),
    "sold": st.booleans(),
    "sold_date": _moments.filter(lambda m: m is None or m.tzinfo is not None),
    "bids": st.one_of(st.none(), st.integers(min_value=0, max_value=40)),
    "watchers": st.none(),
    "extra": st.sampled_from([{}, {"image": "https://img.example/1.jpg"}, {"ok": [1, 2]}]),
}


@st.composite
def _listing(draw: st.DrawFn, index: int) -> object:
    # Mostly valid data with a field or two drawn from anything, so both outcomes are common.
    fields = {name: draw(values) for name, values in _valid.items()}
    for name in draw(st.lists(st.sampled_from(list(_values)), max_size=2)):
        fields[name] = draw(_values[name])
    fields["item_id"] = draw(st.sampled_from([f"I{index}", "DUP", fields["item_id"]]))
    how = draw(
        st.sampled_from(["dict", "validated", "copied", "setattr", "constructed", "subclass"])
    )
    if how == "dict":
        return fields
    if how == "constructed":
        return ks.Listing.model_construct(**fields)
    try:
        listing = (_Cheaper if how == "subclass" else ks.Listing).model_validate(fields)
    except ValueError:
        return fields  # not a listing: the fetcher hands over its data
    if how in ("copied", "setattr"):
        name = draw(st.sampled_from(list(_values)))
        value = draw(_values[name])
        if how == "copied":
            listing = listing.model_copy(update={name: value})
        else:
            object.__setattr__(listing, name, value)
    if draw(st.booleans()):
        # a fetcher that built its result first: its extra is checked, its moment made UTC
        with contextlib.suppress(ValueError):
            listing = ks.FetchResult(listings=[listing]).listings[0]
    return listing


@st.composite
def _returned(draw: st.DrawFn) -> object:
    listings = [draw(_listing(i)) for i in range(draw(st.integers(0, 4)))]
    form = draw(st.sampled_from(["list", "tuple", "constructed", "result"]))
    if form == "list":
        return listings
    if form == "tuple":
        return tuple(listings)
    pages = draw(st.sampled_from([1, 3, -1]))
    if form == "result":
        try:
            return ks.FetchResult(listings=listings, pages_scraped=pages)
        except ValueError:
            pass
    return ks.FetchResult.model_construct(listings=listings, pages_scraped=pages)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_returned())
def test_shortcut_accepts_and_refuses_exactly_what_validating_again_does(value: object) -> None:
    fast = _outcome(value)
    assert fast == _full(value)
    if fast[0] == "accepted":
        # and validating the accepted result once more changes nothing
        assert _outcome(fast[1]) == fast


# -- the stored result ---------------------------------------------------------------------


def _upstream(now: datetime) -> Upstream:
    settings = StoreSettings(database_url="sqlite+aiosqlite:///unused.db")  # never opened
    metrics = Metrics()
    clock = ks.ManualClock(now)
    return Upstream(
        settings=settings,
        clock=clock,
        metrics=metrics,
        valuator=DefaultValuator(),
        policy=policy_for(settings),
        budget=ApiBudget(settings, clock, metrics),
    )


async def test_identical_stored_result_by_either_path() -> None:
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    data = [
        _fields(
            item_id=f"S{i}",
            price=f"{100 + i * 7 % 23}.{i:02d}",
            sold_date=SOLD - timedelta(days=i),
            title=f"2023 Prizm Wembanyama #136 {'PSA 10' if i % 3 else 'Raw'}",
            extra={"image": f"https://img.example/{i}.jpg"},
        )
        for i in range(40)
    ]
    query = "2023 Prizm Wembanyama #136"
    identity = ResultIdentity.of_query(query, ks.SearchType.SOLD, {})
    request = ks.FetchRequest(query=query, search_type=ks.SearchType.SOLD)

    async def validated(request: ks.FetchRequest) -> ks.FetchResult:
        return ks.FetchResult.model_validate({"listings": data, "pages_scraped": 1})

    async def plain(request: ks.FetchRequest) -> dict[str, Any]:
        return {"listings": data, "pages_scraped": 1}

    fast = await _upstream(now).fetch(identity, request, validated)
    full = await _upstream(now).fetch(identity, request, plain)
    assert fast == full
    assert fast.snapshot is not None and fast.snapshot.sample_size == 40
    assert all(x.sold_date is not None and x.sold_date.tzinfo == UTC for x in fast.listings)
