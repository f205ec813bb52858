"""Reads of one statement on PostgreSQL: autocommit, the driver's rows, a one-trip pool check."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import kuya_store as ks
from kuya_store.db.engine import decode_json
from kuya_store.db.rows import decimal_texts, decode_json_texts, models_from_rows
from kuya_store.models import _Frozen

ROWS = """
INSERT INTO price_snapshots (card_identifier, snapshot_date, fmv_low, market_value,
                             sample_size, volume_confidence, parallel_analysis, grading_analysis)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)
"""


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _load(url: str) -> None:
    await ks.migrations.upgrade_async(url)
    conn = await asyncpg.connect(_dsn(url))
    try:
        analyses = [
            {"base": {"count": 30, "median": "12.50"}, "ünïcode ⚾": [1, 2.5, None, True]},
            {"huge": 2**70, "negative": -(2**80), "deep": {"a": {"b": {"c": []}}}},
            None,
        ]
        for day in range(1, 31):
            analysis = analyses[day % 3]
            await conn.execute(
                ROWS,
                "ohtani",
                date(2026, 11, day),
                None if day % 4 == 0 else f"{day}.05",
                ("0.00", "-0.10", "100")[day % 3] if day % 5 == 0 else f"{day * 3}.99",
                day,
                "high" if day % 2 else None,
                json.dumps(analysis) if analysis is not None else None,
                json.dumps({"PSA 10": {"count": day}}),
            )
        await conn.execute(ROWS, "other", date(2026, 11, 5), "1.00", "2.00", 1, None, None, None)
    finally:
        await conn.close()


async def _history(url: str, start: date | None, end: date | None) -> list[ks.PriceSnapshot]:
    async with ks.CompsStore(database_url=url) as store:
        return await store.analytics.price_history("Ohtani", start, end)


@pytest.mark.parametrize(
    ("start", "end"),
    [(None, None), (date(2026, 11, 10), None), (None, date(2026, 11, 3)), (date(2026, 11, 7),) * 2],
)
async def test_the_driver_s_rows_equal_sqlalchemy_s(
    postgres_url: str, pgbouncer_url: str, start: date | None, end: date | None
) -> None:
    # Through PgBouncer a read keeps its transaction and SQLAlchemy's result layer: the
    # same rows read both ways must give the same snapshots, to the type.
    await _load(postgres_url)
    direct = await _history(postgres_url, start, end)
    pooled = await _history(f"{pgbouncer_url}?pgbouncer=true", start, end)
    assert direct == pooled and direct
    assert repr(direct) == repr(pooled)  # field order, and each Decimal's places
    for one, two in zip(direct, pooled, strict=True):
        assert one.model_dump() == two.model_dump()
        assert [type(v) for v in one.model_dump().values()] == [
            type(v) for v in two.model_dump().values()
        ]
        assert one.model_fields_set == two.model_fields_set
        assert one.card_identifier == "ohtani"
    if start is None and end is None:
        assert {str(s.market_value) for s in direct} >= {"0.00", "-0.10", "100.00", "3.99"}
    days = [s.snapshot_date for s in direct]
    assert days == sorted(days)
    assert all((start or days[0]) <= d <= (end or days[-1]) for d in days)
    huge = [s for s in direct if s.parallel_analysis and "huge" in s.parallel_analysis]
    assert huge and huge[0].parallel_analysis == {
        "huge": 2**70,
        "negative": -(2**80),
        "deep": {"a": {"b": {"c": []}}},
    }


async def test_the_driver_s_trend_equals_sqlalchemy_s(
    postgres_url: str, pgbouncer_url: str
) -> None:
    await _load(postgres_url)
    trends = []
    for url in (postgres_url, f"{pgbouncer_url}?pgbouncer=true"):
        async with ks.CompsStore(database_url=url) as store:
            trends.append(await store.analytics.price_trend("ohtani", days=3650))
    direct, pooled = trends
    assert direct == pooled and len(direct.points) == 30
    assert repr(direct) == repr(pooled)


def test_numbers_as_text_are_the_driver_s_decimals() -> None:
    texts = ["5.07", None, "0.00", "-0.00", "-99999999.99", "100.00", "NaN"]
    got = decimal_texts(texts)
    assert [None if d is None else d.as_tuple() for d in got] == [
        None if t is None else Decimal(t).as_tuple() for t in texts
    ]
    assert str(got[5]) == "100.00"


def test_rows_with_one_value_for_all_take_it_from_the_query() -> None:
    class Point(_Frozen):
        card: str
        day: int
        price: Decimal | None
        info: dict[str, int] | None

    rows = [(1, "2.50", '{"a": 1}'), (2, None, None), (3, "7", "null")]
    got = models_from_rows(
        Point, ("card", "day", "price", "info"), rows, ("info",), {"card": "x"}, ("price",)
    )
    assert got == [
        Point(card="x", day=1, price=Decimal("2.50"), info={"a": 1}),
        Point(card="x", day=2, price=None, info=None),
        Point(card="x", day=3, price=Decimal("7"), info=None),
    ]
    assert repr(got[0]) == repr(Point(card="x", day=1, price=Decimal("2.50"), info={"a": 1}))
    assert models_from_rows(Point, ("card", "day", "price", "info"), [], (), {"card": "x"}) == []
    with pytest.raises(ValueError, match="columns"):
        models_from_rows(Point, ("card", "day", "price", "info"), rows, ("info",))


async def test_pooled_connections_killed_by_the_server_are_replaced_unseen(
    postgres_url: str,
) -> None:
    await _load(postgres_url)
    async with ks.CompsStore(database_url=postgres_url, pool_size=3) as store:
        await asyncio.gather(*(store.analytics.price_history("ohtani") for _ in range(3)))
        before = await store.analytics.price_history("ohtani")
        admin = await asyncpg.connect(_dsn(postgres_url))
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'kuya-store' AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed >= 1
        for _ in range(5):  # every pooled connection is dead: none may reach the caller
            assert await store.analytics.price_history("ohtani") == before
            trend = await store.analytics.price_trend("ohtani", days=3650)
            assert trend.direction != "unknown"


def test_json_beyond_sixty_four_bits_still_decodes() -> None:
    text = json.dumps({"n": 2**70, "f": 1.5, "s": "x"})
    assert decode_json(text) == {"n": 2**70, "f": 1.5, "s": "x"}
    assert decode_json(b'{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        decode_json("{not json")


def test_json_texts_decode_in_one_pass_as_each_would_alone() -> None:
    texts = [
        '{"base": {"count": 30, "median": "12.50"}}',
        None,
        '{"ünïcode ⚾": [1, 2.5, null, true]}',
        json.dumps({"huge": 2**70}),  # orjson refuses it: the pass is made again
        "[]",
    ]
    assert decode_json_texts(texts) == [None if t is None else json.loads(t) for t in texts]
    assert decode_json_texts(iter(texts[:3])) == decode_json_texts(texts[:3])
    assert decode_json_texts([]) == []
    with pytest.raises(ValueError):
        decode_json_texts(['{"a": 1}', "{not json"])
    # Texts that are not one value each: decoded one by one, as each would alone.
    with pytest.raises(ValueError):
        decode_json_texts(["1, 2", "3"])
    with pytest.raises(ValueError):
        decode_json_texts(['{"a": 1}', ""])
