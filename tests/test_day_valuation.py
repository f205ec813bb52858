"""A sold fetch's write values the card's UTC day: the fetch's own valuation only when it is the day's.

The day's ``price_snapshots`` row values every distinct sale linked to the card's sold
fetches of that day, as of the day's newest fetch. When the fetch being written is that
newest one and the day's sales are exactly its listings with the values it wrote, that
valuation is the one the fetch already carries, and it is written without valuing again.
Every test here compares the stored row with a full recomputation from the database
(:func:`_recomputed`, the rule written out plainly), and attacks the shortcut: two fetches
of a card in either order, a listing kept by a newer fetch of another card, a replay, a
day boundary in UTC, no listings, an ``item_id`` given twice, and random days.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kuya_store as ks
from kuya_store.db.tables import metadata
from kuya_store.keys import ResultIdentity
from kuya_store.metrics import Metrics
from kuya_store.persistence import Database, FetchRecord, SearchRecord
from kuya_store.pricing import DefaultValuator
from kuya_store.stored import StoredResult

DAY = date(2026, 11, 20)
NOON = datetime.combine(DAY, time(12), UTC)
_VALUATOR = DefaultValuator()
_searches = metadata.tables["searches"]
_listings = metadata.tables["listing_cache"]
_links = metadata.tables["search_results"]
_snapshots = metadata.tables["price_snapshots"]
_numbers = itertools.count()


def _sale(
    item_id: str, price: str, title: str = "2023 Prizm Wembanyama #136", **more: Any
) -> ks.Listing:
    fields: dict[str, Any] = {"sold": True, "sold_date": NOON - timedelta(days=1)}
    return ks.Listing(item_id=item_id, title=title, price=Decimal(price), **{**fields, **more})


def _record(
    card: str, listings: list[ks.Listing], at: datetime, *, own: bool = True
) -> FetchRecord:
    """A paid sold fetch as the request path queues it: valued as of ``at`` (``upstream``)."""
    params = {"n": next(_numbers)}
    snapshot = _VALUATOR.value(card, listings, snapshot_date=at.date(), now=at) if own else None
    search = SearchRecord(
        query=card,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        filters={},
        params=params,
        created_at=at,
        execution_time_ms=1,
        cache_hit=False,
        items_count=len(listings),
        result_key=ResultIdentity.of(card, ks.SearchType.SOLD, params).result_key,
    )
    result = StoredResult(
        query=card,
        card_identifier=card,
        search_type=ks.SearchType.SOLD,
        params=params,
        listings=listings,
        fetched_at=at,
        snapshot=snapshot,
    )
    return FetchRecord(search, result, at + timedelta(days=1), snapshot)


async def _recomputed(db: Database, card: str, day: date) -> tuple[ks.PriceSnapshot, int] | None:
    """The day's valuation from scratch: every sale linked to the day's fetches, validated."""
    start = datetime.combine(day, time(), UTC)
    fetches = sa.and_(
        _searches.c.card_identifier == card,
        _searches.c.search_type == "sold",
        _searches.c.cache_hit.is_(False),
        _searches.c.created_at >= start,
        _searches.c.created_at < start + timedelta(days=1),
    )
    async with db.engine.connect() as conn:
        newest = (
            await conn.execute(
                sa.select(_searches.c.id, _searches.c.created_at)
                .where(fetches)
                .order_by(_searches.c.created_at.desc(), _searches.c.id.desc())
                .limit(1)
            )
        ).first()
        if newest is None:
            return None
        seen = sa.select(_links.c.listing_id).join(_searches, _searches.c.id == _links.c.search_id)
        rows = await conn.execute(
            sa.select(_listings).where(_listings.c.id.in_(seen.where(fetches)))
        )
        sales = [
            ks.Listing(
                item_id=r.item_id,
                title=r.title,
                price=r.price,
                listing_type=r.listing_type,
                condition=r.condition,
                sold=bool(r.sold),
                sold_date=r.sold_date,
                bids=r.bids,
                watchers=r.watchers,
            )
            for r in rows
        ]
    snapshot = _VALUATOR.value(card, sales, snapshot_date=day, now=newest.created_at)
    return snapshot, newest.id


async def _stored(db: Database, card: str, day: date) -> tuple[ks.PriceSnapshot, int] | None:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(_snapshots).where(
                    _snapshots.c.card_identifier == card, _snapshots.c.snapshot_date == day
                )
            )
        ).first()
    if row is None:
        return None
    fields = {name: getattr(row, name) for name in ks.PriceSnapshot.model_fields}
    return ks.PriceSnapshot(**fields), row.search_id


async def _assert_day_is_recomputed(db: Database, card: str, day: date) -> ks.PriceSnapshot:
    stored, expected = await _stored(db, card, day), await _recomputed(db, card, day)
    assert stored is not None and expected is not None
    assert stored == expected
    return stored[0]


@pytest.fixture
def valuations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The cards the store valued again (every call of ``DefaultValuator.value_sold``, which
    ``value`` calls and the day's valuation calls on stored rows)."""
    calls: list[str] = []
    original = DefaultValuator.value_sold

    def counted(self: DefaultValuator, card_identifier: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(card_identifier)
        return original(self, card_identifier, *args, **kwargs)

    monkeypatch.setattr(DefaultValuator, "value_sold", counted)
    return calls


@pytest.fixture
async def db(migrated_url: str) -> Any:
    database = Database(ks.StoreSettings(database_url=migrated_url), Metrics())
    yield database
    await database.close()


async def test_the_first_fetch_of_a_day_keeps_its_own_valuation(
    db: Database, valuations: list[str]
) -> None:
    listings = [_sale(f"A{i}", p) for i, p in enumerate(["10", "12", "15", "11", "90"])]
    record = _record("wemby", listings, NOON)
    valuations.clear()
    assert await db.persist_fetch(record) is not None
    assert valuations == []  # written as the request path valued it
    assert await _assert_day_is_recomputed(db, "wemby", DAY) == record.snapshot


async def test_a_later_fetch_that_saw_every_sale_of_the_day_keeps_its_own(
    db: Database, valuations: list[str]
) -> None:
    early = _record("wemby", [_sale("X", "10"), _sale("Y", "12")], NOON)
    late = _record(
        "wemby", [_sale("X", "11"), _sale("Y", "12"), _sale("Z", "14")], NOON + timedelta(hours=1)
    )
    await db.persist_fetch(early)
    valuations.clear()
    await db.persist_fetch(late)
    assert valuations == []  # its listings are the day's sales, holding its values
    assert await _assert_day_is_recomputed(db, "wemby", DAY) == late.snapshot


@pytest.mark.parametrize("order", ["older first", "newer first"])
async def test_two_fetches_of_a_card_on_one_day_in_either_order(
    db: Database, valuations: list[str], order: str
) -> None:
    older = _record("wemby", [_sale("X", "10"), _sale("Y", "20")], NOON)
    newer = _record("wemby", [_sale("Y", "25"), _sale("Z", "30")], NOON + timedelta(hours=2))
    for record in (older, newer) if order == "older first" else (newer, older):
        await db.persist_fetch(record)
    day = await _assert_day_is_recomputed(db, "wemby", DAY)
    # Three sales, none of the two fetches' own valuations, as of the newer fetch.
    assert day.sample_size == 3
    assert day not in (older.snapshot, newer.snapshot)
    assert valuations  # the second write valued the day again


async def test_a_listing_kept_by_a_newer_fetch_of_another_card(
    db: Database, valuations: list[str]
) -> None:
    # Another card's fetch saw X later, at another price: the row keeps its version.
    other = _record("luka", [_sale("X", "99")], NOON + timedelta(hours=3))
    mine = _record("wemby", [_sale("X", "10"), _sale("Y", "12"), _sale("W", "11")], NOON)
    await db.persist_fetch(other)
    valuations.clear()
    await db.persist_fetch(mine)
    assert valuations == ["wemby"]
    day = await _assert_day_is_recomputed(db, "wemby", DAY)
    assert day.max_price == Decimal("99.00")  # the row's value, not this fetch's
    assert day != mine.snapshot


async def test_a_replayed_record_writes_and_values_nothing(db: Database) -> None:
    first = _record("wemby", [_sale("X", "10")], NOON)
    second = _record("wemby", [_sale("X", "10"), _sale("Y", "40")], NOON + timedelta(hours=1))
    assert await db.persist_fetch(first) is not None
    newest = await db.persist_fetch(second)
    assert await db.persist_fetch(first) is None
    stored = await _stored(db, "wemby", DAY)
    assert stored is not None and stored[1] == newest
    assert stored[0] == second.snapshot
    await _assert_day_is_recomputed(db, "wemby", DAY)


async def test_the_day_is_the_utc_day(db: Database, valuations: list[str]) -> None:
    # 23:30 at UTC-05:00 is the next UTC day: the request path dated its valuation by the
    # local day, and the row must not take it.
    local = datetime(2026, 11, 20, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    record = _record("wemby", [_sale("X", "10"), _sale("Y", "11"), _sale("Z", "12")], local)
    assert record.snapshot is not None and record.snapshot.snapshot_date == DAY
    await db.persist_fetch(record)
    assert await _stored(db, "wemby", DAY) is None
    day = await _assert_day_is_recomputed(db, "wemby", DAY + timedelta(days=1))
    assert day.snapshot_date == DAY + timedelta(days=1)
    # Either side of midnight UTC: two days, each valuing its own fetch only.
    before = _record("luka", [_sale("L1", "5")], datetime.combine(DAY, time(23, 59, 59), UTC))
    after = _record(
        "luka", [_sale("L2", "7")], datetime.combine(DAY, time(), UTC) + timedelta(days=1)
    )
    valuations.clear()
    await db.persist_fetch(after)
    await db.persist_fetch(before)
    assert valuations == []
    assert await _assert_day_is_recomputed(db, "luka", DAY) == before.snapshot
    assert await _assert_day_is_recomputed(db, "luka", DAY + timedelta(days=1)) == after.snapshot


async def test_a_fetch_with_no_listings(db: Database, valuations: list[str]) -> None:
    empty = _record("wemby", [], NOON)
    valuations.clear()
    await db.persist_fetch(empty)
    assert valuations == []
    day = await _assert_day_is_recomputed(db, "wemby", DAY)
    assert day.sample_size == 0
    # An empty fetch after one with sales: the day keeps those sales.
    await db.persist_fetch(_record("wemby", [_sale("X", "10")], NOON + timedelta(hours=1)))
    await db.persist_fetch(_record("wemby", [], NOON + timedelta(hours=2)))
    assert (await _assert_day_is_recomputed(db, "wemby", DAY)).sample_size == 1


async def test_an_item_given_twice_is_one_sale_of_the_day(
    db: Database, valuations: list[str]
) -> None:
    record = _record("wemby", [_sale("X", "10"), _sale("Y", "12"), _sale("X", "10")], NOON)
    valuations.clear()
    await db.persist_fetch(record)
    assert valuations == ["wemby"]  # its own valuation counted X twice
    day = await _assert_day_is_recomputed(db, "wemby", DAY)
    assert day.sample_size == 2 and record.snapshot is not None
    assert record.snapshot.sample_size == 3


async def test_a_record_without_a_valuation_or_of_another_moment_is_valued(
    db: Database, valuations: list[str]
) -> None:
    listings = [_sale("X", "10"), _sale("Y", "12"), _sale("Z", "13")]
    await db.persist_fetch(_record("wemby", listings, NOON, own=False))
    assert valuations == ["wemby"]
    await _assert_day_is_recomputed(db, "wemby", DAY)
    # A valuation made at another moment than the fetch's is not the day's.
    record = _record("luka", listings, NOON)
    moved = FetchRecord(
        record.search,
        record.result.model_copy(update={"fetched_at": NOON - timedelta(minutes=5)}),
        record.listing_ttl,
        _VALUATOR.value("luka", listings, snapshot_date=DAY, now=NOON - timedelta(days=20)),
    )
    valuations.clear()
    await db.persist_fetch(moved)
    assert valuations == ["luka"]
    await _assert_day_is_recomputed(db, "luka", DAY)


# -- random days -----------------------------------------------------------------------

_TITLES = [
    "2023 Prizm Wembanyama #136",
    "2023 Prizm Wembanyama #136 PSA 10",
    "2023 Prizm Wembanyama #136 Silver /99",
    "2023 Prizm Wembanyama #136 lot of 3",
]
_ZONES = [UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-5))]
_fetch = st.fixed_dictionaries(
    {
        "card": st.sampled_from(["wemby", "luka"]),
        "minute": st.integers(min_value=-90, max_value=24 * 60 + 90),
        "zone": st.sampled_from(_ZONES),
        "own": st.booleans(),
        "items": st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=6),  # shared by both cards
                st.sampled_from(["3", "10", "10.5", "11", "12.25", "40", "500"]),
                st.sampled_from(_TITLES),
                st.booleans(),  # sold
                st.integers(min_value=0, max_value=40),  # days before noon
                st.sampled_from([None, 0, 2, 7]),  # bids
            ),
            max_size=7,
        ),
    }
)


def _records(specs: list[dict[str, Any]], tag: str) -> list[FetchRecord]:
    records = []
    for spec in specs:
        at = (datetime.combine(DAY, time(), UTC) + timedelta(minutes=spec["minute"])).astimezone(
            spec["zone"]
        )
        listings = [
            ks.Listing(
                item_id=f"{tag}-{item}",
                title=title,
                price=Decimal(price),
                sold=sold,
                sold_date=NOON - timedelta(days=days, minutes=item),
                listing_type=None if bids is None else "auction",
                bids=bids,
            )
            for item, price, title, sold, days, bids in spec["items"]
        ]
        records.append(_record(f"{spec['card']}-{tag}", listings, at, own=spec["own"]))
    return records


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=st.lists(_fetch, min_size=1, max_size=6),
    order=st.randoms(use_true_random=False),
    replays=st.lists(st.integers(min_value=0, max_value=5), max_size=2),
)
async def test_random_days_are_valued_as_a_full_recomputation(
    db: Database, specs: list[dict[str, Any]], order: Any, replays: list[int]
) -> None:
    records = _records(specs, uuid.uuid4().hex[:8])
    writes = list(records)
    order.shuffle(writes)
    writes += [records[i] for i in replays if i < len(records)]  # replayed late
    for record in writes:
        card, day = record.search.card_identifier, record.search.created_at.astimezone(UTC).date()
        before = await _stored(db, card, day)
        if await db.persist_fetch(record) is None:  # a replay: the row stays as it was
            assert await _stored(db, card, day) == before
        else:
            await _assert_day_is_recomputed(db, card, day)


_WIDE_TITLES = [
    "2023 Prizm Wembanyama #136",
    "2023 Prizm Wembanyama #136 RC",
    "2023 Prizm Wembanyama #136 PSA 10",
    "2023 Prizm Wembanyama #136 PSA 9",
    "2023 Prizm Wembanyama #136 BGS 9.5",
    "2023 Prizm Wembanyama #136 Silver /99",
    "2023 Prizm Wembanyama #136 Gold Prizm 7/10",
    "2023 Prizm Wembanyama #136 Auto",
    "2023 Prizm Wembanyama #136 reprint",
    "2023 Prizm Wembanyama #136 lot of 3",
]
_wide_day = st.lists(
    st.fixed_dictionaries(
        {
            "minute": st.integers(min_value=0, max_value=24 * 60 - 1),
            "own": st.booleans(),
            "items": st.lists(
                st.tuples(
                    st.integers(min_value=0, max_value=60),
                    st.integers(min_value=1, max_value=99_999),  # cents
                    st.sampled_from(_WIDE_TITLES),
                    st.sampled_from([None, "auction", "buy_it_now"]),
                    st.none() | st.integers(min_value=0, max_value=15),
                    st.none() | st.integers(min_value=-2, max_value=400),  # hours before
                ),
                max_size=40,
            ),
        }
    ),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(day=_wide_day, graded=st.booleans())
async def test_random_days_of_every_kind_of_sale_are_valued_as_a_full_recomputation(
    db: Database, day: list[dict[str, Any]], graded: bool
) -> None:
    """Grades, parallels, lots and reprints, either listing type, any bids, sales with no
    date or dated after the fetch, a graded card's day: the stored row is the full one."""
    tag = uuid.uuid4().hex[:8]
    card = f"wemby-{tag}" + ("-psa_10" if graded else "")
    start = datetime.combine(DAY, time(), UTC)
    for spec in day:
        at = start + timedelta(minutes=spec["minute"])
        listings = [
            ks.Listing(
                item_id=f"{tag}-{item}",
                title=title,
                price=Decimal(cents).scaleb(-2),
                sold=True,
                sold_date=None if hours is None else at - timedelta(hours=hours),
                listing_type=kind,
                bids=bids,
            )
            for item, cents, title, kind, bids, hours in {x[0]: x for x in spec["items"]}.values()
        ]
        assert await db.persist_fetch(_record(card, listings, at, own=spec["own"])) is not None
        await _assert_day_is_recomputed(db, card, DAY)
