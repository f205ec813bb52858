"""Where a sold ``persist_fetch`` spends its time, by the size of the card's day.

``python -m bench.day_profile`` (``KUYA_BENCH_POSTGRES_URL`` set): for each day size, a
fresh database gets one sold fetch of that many sales early in the day, then a few
40-listing sold fetches of the same card later that day (half of their listings new,
none with its own valuation, as the write-behind's records from other processes). Each
measured fetch's time is split into the write, the read of the day's sales, building
the listings, the valuation (title parses cached, and not) and the snapshot's upsert.
Two title sets: the upsert benchmark's (every title says "lot", so nothing is usable)
and varied titles of one card (grades, parallels, serials), each one distinct.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

import kuya_store as ks
import kuya_store.persistence as persistence
from bench.records import fetch_record
from bench.servers import drop_database
from kuya_store.metrics import Metrics
from kuya_store.pricing import DefaultValuator, valuation

START = datetime(2026, 11, 1, tzinfo=UTC)
_GRADES = ("", "", "", "PSA 10", "PSA 9", "BGS 9.5", "SGC 10", "raw")
_PARALLELS = ("", "", "", "Refractor", "Gold Refractor /50", "Prizm Silver", "/99")


def bench_title(n: int) -> str:
    return f"2023 Topps Chrome Wembanyama #1 lot {n}"


def varied_title(n: int) -> str:
    rng = random.Random(n)
    words = [
        "2023 Topps Chrome Victor Wembanyama #1 RC Rookie",
        rng.choice(_PARALLELS),
        rng.choice(_GRADES),
        f"seller{n}",
    ]
    return " ".join(w for w in words if w)


def _listings(first: int, count: int, title: Callable[[int], str]) -> list[ks.Listing]:
    return [
        ks.Listing(
            item_id=f"D{first + i:09d}",
            title=title(first + i),
            price=Decimal(10 + (first + i) % 50) + Decimal("0.99"),
            sold=True,
            listing_type="auction" if i % 3 else "buy_it_now",
            bids=i % 9,
            watchers=i % 13,
            sold_date=START + timedelta(seconds=first + i),
        )
        for i in range(count)
    ]


_times: dict[str, list[float]] = defaultdict(list)


@contextmanager
def _timed(name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        _times[name].append(time.perf_counter() - started)


def _wrap(name: str, function: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        with _timed(name):
            return function(*args, **kwargs)

    return timed


class _Timed(persistence.Database):
    """The store's database with each statement of a fetch's write timed by kind."""

    def _through_driver(self, conn: Any, driver: Any) -> Any:
        run = super()._through_driver(conn, driver)
        names = {
            id(self._persist_fetch_stmt): "write (one statement)",
            id(self._day_sales_stmt): "read the day's sales",
            id(self._upsert_snapshot_stmt): "snapshot upsert",
        }

        async def timed(statement: Any, parameters: dict[str, Any]) -> Any:
            with _timed(names.get(id(statement), "other statement")):
                return await run(statement, parameters)

        return timed


async def _day(url: str, size: int, title: Callable[[int], str], cold: bool) -> dict[str, float]:
    database = _Timed(ks.StoreSettings(database_url=url), Metrics())
    try:
        await database.persist_fetch(fetch_record(0, _listings(0, size, title), START))
        _times.clear()
        for n in range(1, 6):
            if cold:
                valuation._usable_title.cache_clear()
            first = size + (n - 2) * 20
            at = START + timedelta(hours=n)
            with _timed("persist_fetch, all"):
                await database.persist_fetch(fetch_record(n, _listings(first, 40, title), at))
    finally:
        await database.close()
    return {name: statistics.median(values) * 1000 for name, values in _times.items()}


def _time_the_valuation() -> None:
    """Time the valuation and the building of its listings (each version's own steps)."""
    persistence.listings_from_rows = _wrap("build listings", persistence.listings_from_rows)
    name = "value_sold" if hasattr(DefaultValuator, "value_sold") else "value"
    setattr(DefaultValuator, name, _wrap("valuation", getattr(DefaultValuator, name)))


async def main() -> None:
    url = os.environ["KUYA_BENCH_POSTGRES_URL"]
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    base = url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(dsn)
    _time_the_valuation()
    print("median ms per 40-listing sold fetch, by sales in the card's day")
    try:
        for label, title in (("bench titles (lots)", bench_title), ("varied titles", varied_title)):
            for cold in (False, True):
                print(f"\n{label}, title cache {'cleared before each fetch' if cold else 'warm'}")
                for size in (40, 400, 4000, 10000):
                    name = f"bench_day_{uuid.uuid4().hex[:8]}"
                    await admin.execute(f'CREATE DATABASE "{name}"')
                    try:
                        await ks.migrations.upgrade_async(f"{base}/{name}")
                        parts = await _day(f"{base}/{name}", size, title, cold)
                    finally:
                        await drop_database(admin, name)
                    shown = ", ".join(f"{k} {v:7.2f}" for k, v in sorted(parts.items()))
                    print(f"{size:>6} sales: {shown}")
    finally:
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
