"""store.analytics.grading_outlook: is grading a raw card worth it, from the stored sales."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

import kuya_store as ks

CARD = "2023 Topps Chrome Victor Wembanyama #1 RC"
NOW = datetime(2026, 10, 30, 12, tzinfo=UTC)


def _fetch(request: ks.FetchRequest) -> ks.FetchResult:
    rows = [("", p) for p in ("40", "41", "39", "42", "40")]
    rows += [(" PSA 10", p) for p in ("160", "158", "162", "165")]
    rows += [(" PSA 9", p) for p in ("70", "72", "68")]
    return ks.FetchResult(
        listings=[
            ks.Listing(
                item_id=f"g{n}",
                title=f"{CARD}{suffix}",
                price=price,
                sold=True,
                sold_date=NOW - timedelta(days=1),  # one day: equal weights
            )
            for n, (suffix, price) in enumerate(rows)
        ]
    )


@pytest.fixture
async def store(migrated_url: str) -> AsyncIterator[ks.CompsStore]:
    async with ks.CompsStore(
        database_url=migrated_url,
        clock=ks.ManualClock(NOW),
        fetchers={"sold": _fetch},
        write_flush_interval=0.01,
    ) as store:
        yield store


async def test_the_outlook_comes_from_the_cards_stored_sales(store: ks.CompsStore) -> None:
    await store.comps.search(CARD)
    await store.flush()
    outlook = await store.analytics.grading_outlook(
        CARD, odds={"PSA 10": 0.25, "PSA 9": 0.5, "PSA 8": 0.25}, grading_cost="25"
    )
    assert outlook.card_identifier == ks.normalize_card(CARD)
    assert outlook.raw_value == Decimal("40.00")
    assert outlook.expected_value == Decimal("85.25")  # .25 * 161 + .5 * 70 + .25 * 40 (raw)
    assert outlook.expected_gain == Decimal("20.25")
    assert outlook.worth_grading and outlook.break_even_grade == "PSA 9"
    [latest] = await store.analytics.price_history(CARD)
    assert outlook == ks.grading_outlook(
        latest, odds={"PSA 10": 0.25, "PSA 9": 0.5, "PSA 8": 0.25}, grading_cost="25"
    )


async def test_a_card_without_stored_sales_is_not_found(store: ks.CompsStore) -> None:
    with pytest.raises(ks.NotFoundError):
        await store.analytics.grading_outlook(CARD, odds={"PSA 10": 1}, grading_cost=20)
