"""Users, saved searches and alerts: hashing, scoping, injection strings, alerts that fire once."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

import kuya_store as ks

PASSWORD = "correct horse battery staple"
INJECTION = "x'); DROP TABLE users; --"
CARD = "2018 Prizm Luka Doncic #280"


@pytest.fixture
def clock() -> ks.ManualClock:
    return ks.ManualClock()


class Market:
    """A fetcher whose prices the test sets."""

    def __init__(self) -> None:
        self.price = Decimal("50.00")
        self.calls = 0

    async def __call__(self, request: ks.FetchRequest) -> ks.FetchResult:
        self.calls += 1
        sold = request.search_type is ks.SearchType.SOLD
        return ks.FetchResult(
            listings=[
                ks.Listing(
                    item_id=f"{request.search_type.value}-{i}-{self.price}",
                    title=f"{request.query} #{i}",
                    price=self.price + i,
                    sold=sold,
                )
                for i in range(5)
            ]
        )


@pytest.fixture
def market() -> Market:
    return Market()


@pytest.fixture
async def store(
    migrated_url: str, clock: ks.ManualClock, market: Market
) -> AsyncIterator[ks.CompsStore]:
    async with ks.CompsStore(
        database_url=migrated_url,
        clock=clock,
        fetchers={"sold": market, "active": market},
        write_flush_interval=0.01,
    ) as store:
        yield store


async def _all_rows(store: ks.CompsStore) -> str:
    engine = store._database.engine  # type: ignore[union-attr]
    dump = []
    async with engine.connect() as conn:
        for table in ("users", "saved_searches", "searches"):
            dump += [
                dict(r._mapping) for r in await conn.execute(sa.text(f"SELECT * FROM {table}"))
            ]
    return json.dumps(dump, default=str)


async def test_create_and_authenticate(
    store: ks.CompsStore, clock: ks.ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = await store.accounts.create_user("  Ana@Example.COM ", PASSWORD, display_name="Ana")
    assert (user.email, user.display_name, user.is_active, user.last_login) == (
        "ana@example.com",
        "Ana",
        True,
        None,
    )
    clock.advance(60)
    again = await store.accounts.authenticate("ANA@example.com", PASSWORD)
    assert again is not None and again.id == user.id and again.last_login == clock()
    assert await store.accounts.authenticate("ana@example.com", PASSWORD + "!") is None
    assert await store.accounts.authenticate("nobody@example.com", PASSWORD) is None
    assert await store.accounts.authenticate("not an email", PASSWORD) is None
    await store.accounts.set_active(user.id, False)
    assert await store.accounts.authenticate("ana@example.com", PASSWORD) is None
    rows = await _all_rows(store)
    assert PASSWORD not in rows and "$argon2id$" in rows
    assert PASSWORD not in caplog.text
    assert "password_hash" not in user.model_dump()


async def test_email_is_unique_regardless_of_case(store: ks.CompsStore) -> None:
    await store.accounts.create_user("bo@example.com", PASSWORD)
    with pytest.raises(ks.InvalidInputError) as info:
        await store.accounts.create_user("BO@Example.com", PASSWORD)
    assert info.value.field == "email"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("not-an-email", PASSWORD), "email"),
        (("a@b.co", "short"), "password"),
        (("a@b.co", "x" * 2000), "password"),
        (("a@b.co", PASSWORD, "n" * 101), "display_name"),
        (("a@b.co\x00", PASSWORD), "email"),
    ],
)
async def test_bad_user_input(store: ks.CompsStore, args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(ks.InvalidInputError) as info:
        await store.accounts.create_user(*args)
    assert info.value.field == field
    assert "users" in await _all_rows(store) or True
    engine = store._database.engine  # type: ignore[union-attr]
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT count(*) FROM users"))).scalar_one() == 0


async def test_saved_searches_are_scoped_to_their_user(store: ks.CompsStore) -> None:
    ana = await store.accounts.create_user("ana@example.com", PASSWORD)
    bo = await store.accounts.create_user("bo@example.com", PASSWORD)
    mine = await store.accounts.save_search(ana.id, "Luka rookie", CARD, {"raw_only": True}, "40")
    assert mine.alert_enabled and mine.alert_threshold == Decimal("40.00")
    assert mine.filters == ks.SearchFilters(raw_only=True)
    assert await store.accounts.list_saved_searches(bo.id) == []
    with pytest.raises(ks.NotFoundError):
        await store.accounts.rename_saved_search(bo.id, mine.id, "stolen")
    with pytest.raises(ks.NotFoundError):
        await store.accounts.delete_saved_search(bo.id, mine.id)
    with pytest.raises(ks.NotFoundError):
        await store.accounts.set_alert(bo.id, mine.id, "1")
    assert await store.accounts.list_saved_searches(ana.id) == [mine]
    renamed = await store.accounts.rename_saved_search(ana.id, mine.id, "Luka RC")
    assert renamed.name == "Luka RC"
    await store.accounts.delete_saved_search(ana.id, mine.id)
    assert await store.accounts.list_saved_searches(ana.id) == []
    with pytest.raises(ks.NotFoundError):
        await store.accounts.delete_saved_search(ana.id, mine.id)
    with pytest.raises(ks.NotFoundError):
        await store.accounts.save_search(999_999, "ghost", CARD)


async def test_duplicate_name_is_invalid_input(store: ks.CompsStore) -> None:
    ana = await store.accounts.create_user("ana@example.com", PASSWORD)
    bo = await store.accounts.create_user("bo@example.com", PASSWORD)
    first = await store.accounts.save_search(ana.id, "Luka", CARD)
    await store.accounts.save_search(bo.id, "Luka", CARD)  # the same name for another user is fine
    with pytest.raises(ks.InvalidInputError) as info:
        await store.accounts.save_search(ana.id, "Luka", "something else")
    assert info.value.field == "name"
    second = await store.accounts.save_search(ana.id, "Other", CARD)
    with pytest.raises(ks.InvalidInputError):
        await store.accounts.rename_saved_search(ana.id, second.id, "Luka")
    assert [s.name for s in await store.accounts.list_saved_searches(ana.id)] == [
        first.name,
        "Other",
    ]


async def test_injection_strings_are_stored_verbatim_and_harmless(store: ks.CompsStore) -> None:
    user = await store.accounts.create_user("eve@example.com", PASSWORD, display_name=INJECTION)
    saved = await store.accounts.save_search(user.id, INJECTION, INJECTION)
    assert saved.name == INJECTION and saved.query == INJECTION
    assert (await store.accounts.get_user(user.id)).display_name == INJECTION
    result = await store.comps.search(INJECTION, user_id=user.id)
    assert result.query == INJECTION
    await store.flush()
    top = await store.analytics.top_searches()
    assert top[0].query == INJECTION
    assert len(await store.accounts.list_saved_searches(user.id)) == 1  # users table still there


async def test_search_records_the_user(store: ks.CompsStore) -> None:
    user = await store.accounts.create_user("ana@example.com", PASSWORD)
    await store.comps.search(CARD, user_id=user.id)
    await store.comps.search(CARD, user_id=user.id)
    await store.flush()
    engine = store._database.engine  # type: ignore[union-attr]
    async with engine.connect() as conn:
        ids = (await conn.execute(sa.text("SELECT user_id FROM searches"))).scalars().all()
    assert ids == [user.id, user.id]


async def test_alerts_fire_once_per_observation(
    store: ks.CompsStore, clock: ks.ManualClock, market: Market
) -> None:
    ana = await store.accounts.create_user("ana@example.com", PASSWORD)
    sold = await store.accounts.save_search(ana.id, "sold", CARD, alert_threshold="100")
    active = await store.accounts.save_search(
        ana.id, "active", CARD, alert_threshold="100", search_type="active"
    )
    quiet = await store.accounts.save_search(ana.id, "quiet", CARD, alert_threshold="10")
    await store.accounts.save_search(ana.id, "no alert", CARD)

    assert await store.accounts.run_alerts() == []  # nothing stored, no budget: nothing known
    fired = await store.accounts.run_alerts(refresh_budget=5)
    assert {a.saved_search_id for a in fired} == {sold.id, active.id}
    assert market.calls == 2  # one fetch per feed; the third sold alert reused the first
    cheapest = next(a for a in fired if a.saved_search_id == active.id)
    assert (cheapest.kind, cheapest.observed_price, cheapest.item_id) == (
        "cheapest_listing",
        Decimal("50.00"),
        "active-0-50.00",
    )

    assert await store.accounts.run_alerts(refresh_budget=5) == []  # same observations: silent
    clock.advance(timedelta(hours=1))
    market.price = Decimal("60.00")
    again = await store.accounts.run_alerts(refresh_budget=1)  # only one refresh allowed
    assert len(again) == 1 and market.calls == 3
    listed = {s.id: s for s in await store.accounts.list_saved_searches(ana.id)}
    assert listed[quiet.id].last_run == clock()
    assert await store.accounts.run_alerts(refresh_budget=5) != []  # the other feed, refreshed now
    with pytest.raises(ks.InvalidInputError):
        await store.accounts.run_alerts(refresh_budget=-1)
