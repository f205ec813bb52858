"""``store.cards.search``: searched cards ranked by how well they match, typos forgiven."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import kuya_store as ks
from kuya_store.cards import score, trigrams
from kuya_store.demo import FakeMarketplace

SEARCHED = {
    "2023 Topps Chrome Victor Wembanyama #1 RC": 3,
    "2023 Topps Chrome Victor Wembanyama #1 Silver Prizm": 1,
    "1986 Fleer Michael Jordan #57": 2,
    "2003 Topps Chrome LeBron James #111": 1,
    "Pokemon Charizard Base Set Holo PSA 10": 1,
}
WEMBY_RC = "2023-topps-chrome-victor-wembanyama-1-rc"


def test_trigrams_and_score_follow_pg_trgm() -> None:
    assert trigrams("ab") == {"  a", " ab", "ab "}
    assert score("wembanyama", WEMBY_RC) > score("wembanyama", "1986-fleer-michael-jordan-57")
    assert score("wembanyma", WEMBY_RC) > 0.7  # one letter missing
    assert score("", WEMBY_RC) == 0.0


@pytest.fixture
async def store(migrated_url: str) -> Any:
    clock = ks.ManualClock()
    market = FakeMarketplace(listings=6, clock=clock)
    async with ks.CompsStore(
        database_url=migrated_url,
        fetchers={"sold": market.sold},
        clock=clock,
        write_flush_interval=0.01,
    ) as store:
        for query, times in SEARCHED.items():
            for _ in range(times):
                await store.comps.search(query)
        assert await store.flush()
        yield store


async def _best(store: ks.CompsStore, text: str) -> list[str]:
    return [m.card_identifier for m in await store.cards.search(text)]


async def _finds_what_it_should(store: ks.CompsStore) -> None:
    found = await store.cards.search("wemby chrome rookie", limit=10)
    assert found[0].card_identifier == WEMBY_RC
    assert found[0].searches == 3 and found[0].query.startswith("2023 Topps Chrome")
    assert isinstance(found[0].market_value, Decimal) and found[0].valued_on is not None
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    assert (await _best(store, "wembanyma"))[0] == WEMBY_RC  # a typo
    assert (await _best(store, "jordan fleer"))[0] == "1986-fleer-michael-jordan-57"
    assert (await _best(store, "charizard psa 10"))[0].startswith("pokemon-charizard")
    assert len(await store.cards.search("topps chrome", limit=2)) == 2
    assert await store.cards.search("zzzqqq") == []


async def test_card_search_ranks_and_forgives_typos(store: ks.CompsStore) -> None:
    await _finds_what_it_should(store)


async def test_cards_searched_after_a_refresh_are_found(
    store: ks.CompsStore, migrated_url: str
) -> None:
    report = await store.maintain()
    if migrated_url.startswith("postgresql"):
        assert "card_directory" in report.views_refreshed
    await _finds_what_it_should(store)  # from the directory now
    await store.comps.search("2024 Bowman Chrome Roki Sasaki Auto")
    assert await store.flush()
    found = await store.cards.search("sasaki bowman")
    assert found[0].card_identifier.startswith("2024-bowman-chrome-roki-sasaki")
    assert found[0].searches == 1


@pytest.mark.parametrize(("text", "limit"), [("", 10), ("#!", 10), (7, 10), ("ok", 0)])
async def test_bad_card_search_input(store: ks.CompsStore, text: Any, limit: int) -> None:
    with pytest.raises(ks.InvalidInputError, match="text|limit"):
        await store.cards.search(text, limit=limit)


async def test_without_pg_trgm_search_is_full_text_only(postgres_url: str) -> None:
    await ks.migrations.upgrade_async(postgres_url)
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    await conn.execute("DROP EXTENSION pg_trgm CASCADE")  # as where it may not be created
    await conn.close()
    fetch = ks.FetchResult(listings=[])
    async with ks.CompsStore(database_url=postgres_url) as store:
        await store.comps.search(next(iter(SEARCHED)), fetcher=lambda request: fetch)
        assert await store.flush()
        assert (await _best(store, "chrome rookie"))[0] == WEMBY_RC
        assert await store.cards.search("wembanyma") == []  # no typo tolerance without it


async def test_card_search_before_the_upgrade_says_what_to_do(database_url: str) -> None:
    await ks.migrations.upgrade_async(database_url, "0005")
    async with ks.CompsStore(database_url=database_url) as store:
        with pytest.raises(ks.KuyaStoreError, match="db upgrade"):
            await store.cards.search("wemby")
