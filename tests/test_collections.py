"""store.collections: binders and cards scoped per user, revaluation within a budget,
value history and gain, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

import kuya_store as ks
from kuya_store.collection_values import _grade, _Holding, card_value, collection_history

PASSWORD = "correct horse battery"
NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)
WEMBY = "2023 Topps Chrome Victor Wembanyama #1"


class Market:
    """Sold listings of any card: five raw sales around 40 x level and four PSA 10s at 4x."""

    def __init__(self, clock: ks.ManualClock) -> None:
        self.clock = clock
        self.level = Decimal(1)
        self.calls: list[str] = []
        self.failing = False

    def __call__(self, request: ks.FetchRequest) -> ks.FetchResult:
        self.calls.append(request.query)
        if self.failing:
            raise ks.PermanentFetchError("the marketplace is down")
        card = request.query.replace(" PSA 10", "")
        key = ks.normalize_card(card)[-30:]
        rows = [("", p) for p in ("39", "40", "40", "41", "42")]
        rows += [(" PSA 10", p) for p in ("158", "160", "160", "162")]
        return ks.FetchResult(
            listings=[
                ks.Listing(
                    item_id=f"{key}-{n}",
                    title=f"{card}{suffix}",
                    price=(Decimal(price) * self.level).quantize(Decimal("0.01")),
                    sold=True,
                    sold_date=self.clock.now - timedelta(hours=n + 1),
                )
                for n, (suffix, price) in enumerate(rows)
            ]
        )


@pytest.fixture
def clock() -> ks.ManualClock:
    return ks.ManualClock(NOW)


@pytest.fixture
def market(clock: ks.ManualClock) -> Market:
    return Market(clock)


@pytest.fixture
async def store(
    migrated_url: str, clock: ks.ManualClock, market: Market
) -> AsyncIterator[ks.CompsStore]:
    async with ks.CompsStore(
        database_url=migrated_url,
        clock=clock,
        fetchers={"sold": market},
        write_flush_interval=0.01,
        fetch_attempts=1,
    ) as store:
        yield store


async def _user(store: ks.CompsStore, name: str) -> int:
    return (await store.accounts.create_user(f"{name}@example.com", PASSWORD)).id


# ------------------------------------------------------------------------ ownership


async def test_another_users_binders_and_cards_are_not_found(store: ks.CompsStore) -> None:
    ana, bo = await _user(store, "ana"), await _user(store, "bo")
    binder = await store.collections.create_binder(ana, "Rookies")
    card = await store.collections.add_card(ana, binder.id, WEMBY, purchase_price="35.00")
    assert await store.collections.list_binders(bo) == []
    assert await store.collections.list_cards(bo) == []
    with pytest.raises(ks.NotFoundError):
        await store.collections.get_card(bo, card.id)
    with pytest.raises(ks.NotFoundError):
        await store.collections.remove_card(bo, card.id)
    with pytest.raises(ks.NotFoundError):
        await store.collections.add_card(bo, binder.id, WEMBY)
    with pytest.raises(ks.NotFoundError):
        await store.collections.rename_binder(bo, binder.id, "Mine now")
    with pytest.raises(ks.NotFoundError):
        await store.collections.delete_binder(bo, binder.id)
    assert await store.collections.list_cards(bo, binder.id) == []
    # nothing of Ana's changed
    assert [c.id for c in await store.collections.list_cards(ana)] == [card.id]
    assert (await store.collections.list_binders(ana))[0].name == "Rookies"


async def test_binders_and_cards(store: ks.CompsStore) -> None:
    ana = await _user(store, "ana")
    with pytest.raises(ks.NotFoundError):
        await store.collections.create_binder(ana + 100, "Nobody's")
    rookies = await store.collections.create_binder(ana, "Rookies")
    with pytest.raises(ks.InvalidInputError) as info:
        await store.collections.create_binder(ana, " Rookies ")
    assert info.value.field == "name"
    slabs = await store.collections.create_binder(ana, "Slabs")
    raw = await store.collections.add_card(
        ana, rookies.id, WEMBY, purchase_price=35, purchase_date=date(2026, 10, 1)
    )
    ten = await store.collections.add_card(ana, slabs.id, WEMBY, grade="psa10")
    named = await store.collections.add_card(ana, slabs.id, f"{WEMBY} PSA 10")
    assert (raw.grade, ten.grade, named.grade) == (None, "PSA 10", "PSA 10")
    assert ten.card_identifier == named.card_identifier == ks.normalize_card(f"{WEMBY} PSA 10")
    assert raw.purchase_price == Decimal("35.00") and raw.gain is None
    assert [c.id for c in await store.collections.list_cards(ana, slabs.id)] == [ten.id, named.id]
    await store.collections.remove_card(ana, named.id)
    await store.collections.rename_binder(ana, slabs.id, "Graded")
    await store.collections.delete_binder(ana, slabs.id)
    assert [c.id for c in await store.collections.list_cards(ana)] == [raw.id]
    assert [b.name for b in await store.collections.list_binders(ana)] == ["Rookies"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query": ""}, "query"),
        ({"grade": "banana"}, "grade"),
        ({"grade": 10}, "grade"),
        ({"grade": "PSA 10\x00"}, "grade"),
        ({"grade": "BGS 9.5", "query": f"{WEMBY} PSA 10"}, "grade"),
        ({"purchase_price": "-1"}, "purchase_price"),
        ({"purchase_price": "abc"}, "purchase_price"),
        ({"purchase_date": "2026-01-01"}, "purchase_date"),
    ],
)
async def test_bad_cards_are_refused_before_anything_is_written(
    store: ks.CompsStore, kwargs: dict[str, object], field: str
) -> None:
    ana = await _user(store, "ana")
    binder = await store.collections.create_binder(ana, "Rookies")
    arguments: dict[str, object] = {"query": WEMBY, **kwargs}
    query = arguments.pop("query")
    with pytest.raises(ks.InvalidInputError) as info:
        await store.collections.add_card(ana, binder.id, query, **arguments)  # type: ignore[arg-type]
    assert info.value.field == field
    assert await store.collections.list_cards(ana) == []


def test_grades_of_collected_cards() -> None:
    assert _grade(None, WEMBY) == (None, WEMBY)
    assert _grade("raw", WEMBY) == (None, WEMBY)
    assert _grade("PSA 10", WEMBY) == ("PSA 10", f"{WEMBY} PSA 10")
    assert _grade("sgc 96", WEMBY) == ("SGC 9", f"{WEMBY} SGC 9")
    assert _grade(None, f"{WEMBY} BGS 9.5") == ("BGS 9.5", f"{WEMBY} BGS 9.5")
    with pytest.raises(ks.InvalidInputError):
        _grade("raw", f"{WEMBY} PSA 10")


# ------------------------------------------------------------------------ revaluation


async def test_revalue_spends_at_most_its_budget_stalest_first(
    store: ks.CompsStore, market: Market, clock: ks.ManualClock
) -> None:
    ana, bo = await _user(store, "ana"), await _user(store, "bo")
    binder = await store.collections.create_binder(ana, "Base")
    cards = [
        await store.collections.add_card(ana, binder.id, f"2024 Topps Chrome Player {n} #{n}")
        for n in range(5)
    ]
    # Bo holds Ana's first card too: one search values both
    bos = await store.collections.create_binder(bo, "Mine")
    shared = await store.collections.add_card(bo, bos.id, "2024 Topps Chrome Player 0 #0")

    report = await store.collections.revalue(budget=2)
    assert (report.api_calls, report.searches, report.cards) == (2, 2, 6)
    assert len(market.calls) == 2
    valued = {c.id: c.last_value for c in await store.collections.list_cards(ana)}
    assert valued[cards[0].id] == valued[cards[1].id] == Decimal("40.00")
    assert valued[cards[2].id] is None  # past the budget, and nothing stored yet
    assert (await store.collections.get_card(bo, shared.id)).last_value == Decimal("40.00")

    await store.flush()
    clock.advance(timedelta(minutes=1))
    report = await store.collections.revalue(budget=2)
    assert report.api_calls == 2 and len(market.calls) == 4  # the two stalest, never valued
    assert market.calls[2:] == [
        "2024 Topps Chrome Player 2 #2",
        "2024 Topps Chrome Player 3 #3",
    ]
    assert report.from_stored == 3  # the two valued before (three cards) come from storage

    await store.flush()
    clock.advance(timedelta(minutes=1))
    report = await store.collections.revalue(budget=0)
    assert report.api_calls == 0 and report.searches == 0 and len(market.calls) == 4
    assert report.valued == 5  # four cards from stored snapshots (five with Bo's), one unknown


async def test_a_fresh_stored_result_costs_nothing(store: ks.CompsStore, market: Market) -> None:
    ana = await _user(store, "ana")
    binder = await store.collections.create_binder(ana, "Base")
    await store.collections.add_card(ana, binder.id, WEMBY)
    await store.comps.search(WEMBY, filters=ks.SearchFilters(raw_only=True))
    report = await store.collections.revalue(budget=1)
    assert (report.searches, report.api_calls, len(market.calls)) == (1, 0, 1)
    assert report.valued == 1


async def test_a_failing_fetcher_falls_back_to_stored_values(
    store: ks.CompsStore, market: Market, clock: ks.ManualClock
) -> None:
    ana = await _user(store, "ana")
    binder = await store.collections.create_binder(ana, "Base")
    card = await store.collections.add_card(ana, binder.id, WEMBY, grade="PSA 10")
    await store.collections.revalue(budget=5)
    await store.flush()
    assert (await store.collections.get_card(ana, card.id)).last_value == Decimal("160.00")
    clock.advance(timedelta(days=3))
    market.failing = True
    report = await store.collections.revalue(budget=5)
    assert report.valued == 1 and report.api_calls <= 5
    assert (await store.collections.get_card(ana, card.id)).last_value == Decimal("160.00")


async def test_revalue_refuses_a_bad_budget(store: ks.CompsStore) -> None:
    for budget in (-1, 1.5, True):
        with pytest.raises(ks.InvalidInputError) as info:
            await store.collections.revalue(budget=budget)  # type: ignore[arg-type]
        assert info.value.field == "budget"


# ----------------------------------------------------------------- history and gain


async def test_value_history_and_gain(
    store: ks.CompsStore, market: Market, clock: ks.ManualClock
) -> None:
    ana = await _user(store, "ana")
    binder = await store.collections.create_binder(ana, "Wemby")
    raw = await store.collections.add_card(
        ana, binder.id, WEMBY, purchase_price="30.00", purchase_date=date(2026, 10, 1)
    )
    await store.collections.add_card(
        ana,
        binder.id,
        WEMBY,
        grade="PSA 10",
        purchase_price="150.00",
        purchase_date=date(2026, 11, 3),  # bought on the second day
    )
    await store.collections.revalue(budget=10)
    clock.advance(timedelta(days=1))
    market.level = Decimal("1.5")
    await store.collections.revalue(budget=10)
    await store.flush()

    history = await store.collections.value_history(ana)
    assert [(p.day, p.value, p.cards, p.valued) for p in history] == [
        (date(2026, 11, 2), Decimal("40.00"), 1, 1),  # the slab was not bought yet
        (date(2026, 11, 3), Decimal("300.00"), 2, 2),  # 60.00 raw + 240.00 PSA 10
    ]
    assert history[-1].cost_basis == Decimal("180.00")
    assert history[-1].gain == Decimal("120.00")
    assert await store.collections.value_history(ana, start=date(2026, 11, 3)) == history[1:]

    summary = await store.collections.summary(ana)
    assert (summary.value, summary.cost_basis, summary.gain) == (
        Decimal("300.00"),
        Decimal("180.00"),
        Decimal("120.00"),
    )
    assert summary.gain_pct == Decimal("66.67")
    assert (await store.collections.get_card(ana, raw.id)).gain == Decimal("30.00")
    bo = await _user(store, "bo")
    assert await store.collections.value_history(bo) == []


def test_history_carries_each_cards_newest_value_forward() -> None:
    def snap(card: str, day: int, raw: str | None) -> ks.PriceSnapshot:
        analysis = None if raw is None else {"raw": {"count": 5, "median": raw}}
        return ks.PriceSnapshot(
            card_identifier=card,
            snapshot_date=date(2026, 11, day),
            grading_analysis=analysis,
        )

    holdings = [
        _Holding("a", None, date(2026, 11, 1), Decimal("10")),
        _Holding("b", None, date(2026, 11, 2), None),
    ]
    history = collection_history(
        holdings, [snap("a", 1, "12.00"), snap("b", 3, "5.00"), snap("a", 4, None)]
    )
    assert [(p.day.day, p.value, p.valued, p.gain) for p in history] == [
        (1, Decimal("12.00"), 1, Decimal("2.00")),
        (3, Decimal("17.00"), 2, Decimal("2.00")),
        (4, Decimal("17.00"), 2, Decimal("2.00")),  # a's value goes on until a new one
    ]
    assert card_value(snap("a", 1, "12.00"), "PSA 10") is None


async def test_the_budget_holds_while_other_searches_spend_calls_too(
    store: ks.CompsStore, market: Market
) -> None:
    import asyncio

    ana = await _user(store, "ana")
    binder = await store.collections.create_binder(ana, "Base")
    queries = [f"2024 Topps Chrome Collected {n} #{n}" for n in range(8)]
    for query in queries:
        await store.collections.add_card(ana, binder.id, query)

    async def traffic() -> None:
        for n in range(8):
            await store.comps.search(f"2024 Bowman Someone Else {n}")
            await asyncio.sleep(0)

    before = store.metrics()["api_calls"]
    report, _ = await asyncio.gather(store.collections.revalue(budget=3), traffic())
    collected = [q for q in market.calls if q in queries]
    assert len(collected) <= 3  # its own calls stay within the budget
    assert report.api_calls >= len(collected)  # others' calls meanwhile count against it
    assert store.metrics()["api_calls"] - before == len(market.calls)


async def test_revalue_of_one_user_leaves_the_others_alone(
    store: ks.CompsStore, market: Market
) -> None:
    ana, bo = await _user(store, "ana"), await _user(store, "bo")
    mine = await store.collections.create_binder(ana, "A")
    theirs = await store.collections.create_binder(bo, "B")
    await store.collections.add_card(ana, mine.id, "2024 Topps Chrome Ana #1")
    other = await store.collections.add_card(bo, theirs.id, "2024 Topps Chrome Bo #2")
    report = await store.collections.revalue(budget=5, user_id=ana)
    assert report.cards == 1 and market.calls == ["2024 Topps Chrome Ana #1"]
    assert (await store.collections.get_card(bo, other.id)).last_value is None
