"""The API budget: counted across processes, never exceeded, stale answers when spent."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import kuya_store as ks
from kuya_store.budget import periods
from kuya_store.demo import FakeMarketplace
from kuya_store.testing.servers import free_port

CARD = "2023 Topps Chrome Victor Wembanyama #1"


def test_periods_are_utc_days_and_hours() -> None:
    moment = datetime(2026, 12, 1, 23, 30, tzinfo=UTC) + timedelta(hours=3)  # 02:30 next day
    spans = periods(moment, 100, 10)
    assert [(name, limit) for name, limit, _ in spans] == [
        ("2026-12-02", 100),
        ("2026-12-02T02", 10),
    ]
    assert spans[0][2] == datetime(2026, 12, 3, tzinfo=UTC)
    assert periods(moment, None, None) == []


@pytest.mark.parametrize("counter", ["redis", "database"])
async def test_two_stores_share_one_budget(
    migrated_url: str, redis_base_url: str, key_prefix: str, counter: str
) -> None:
    market = FakeMarketplace(listings=3)
    options: dict[str, Any] = {
        "database_url": migrated_url,
        "redis_url": redis_base_url if counter == "redis" else None,
        "key_prefix": key_prefix,
        "fetchers": {"sold": market.sold},
        "api_budget": 5,
    }
    async with ks.CompsStore(**options) as one, ks.CompsStore(**options) as two:
        outcomes = []
        for i in range(8):
            store = one if i % 2 else two
            try:
                await store.comps.search(f"{CARD} variant {i}")
                outcomes.append("ok")
            except ks.BudgetExhaustedError:
                outcomes.append("spent")
        assert market.call_count == 5
        assert outcomes == ["ok"] * 5 + ["spent"] * 3
        assert isinstance(ks.BudgetExhaustedError("x"), ks.FetcherError)
        assert one.metrics()["budget"]["daily_limit"] == 5


async def _spend(store: ks.CompsStore, searches: int, name: str) -> list[str]:
    outcomes = []
    for i in range(searches):
        try:
            await store.comps.search(f"{CARD} {name} {i}")
            outcomes.append("ok")
        except ks.BudgetExhaustedError:
            outcomes.append("spent")
    return outcomes


async def test_a_redis_counter_out_of_reach_opens_no_second_budget(
    migrated_url: str, redis_base_url: str, key_prefix: str
) -> None:
    # The database's count follows every request Redis grants, so a process whose Redis
    # calls fail (a timeout under load, a partition) falls back to what was spent.
    market = FakeMarketplace(listings=3)
    shared = {"database_url": migrated_url, "key_prefix": key_prefix, "api_budget": 5}
    async with ks.CompsStore(
        **shared, redis_url=redis_base_url, fetchers={"sold": market.sold}
    ) as one:
        assert await _spend(one, 4, "one") == ["ok"] * 4
    async with ks.CompsStore(
        **shared, redis_url=f"redis://127.0.0.1:{free_port()}/0", fetchers={"sold": market.sold}
    ) as cut_off:
        assert await _spend(cut_off, 3, "cut off") == ["ok", "spent", "spent"]
        assert cut_off.metrics()["budget"]["fallbacks"] >= 3
    assert market.call_count == 5


async def test_a_redis_that_forgot_the_count_spends_no_second_budget(
    migrated_url: str, redis_base_url: str, key_prefix: str, redis_client: Any
) -> None:
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(
        database_url=migrated_url,
        redis_url=redis_base_url,
        key_prefix=key_prefix,
        fetchers={"sold": market.sold},
        api_budget=5,
    ) as store:
        assert await _spend(store, 5, "before") == ["ok"] * 5
        counters = [key async for key in redis_client.scan_iter(f"{key_prefix}:b:*")]
        assert counters
        await redis_client.delete(*counters)  # a restart without persistence
        assert await _spend(store, 3, "after") == ["spent"] * 3
        assert market.call_count == 5
        assert int(await redis_client.get(counters[0])) >= 5  # Redis knows again


async def test_spent_budget_serves_the_newest_stored_result_of_any_age(migrated_url: str) -> None:
    clock = ks.ManualClock()
    market = FakeMarketplace(listings=3, clock=clock)
    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": market.sold}, clock=clock, api_budget=1
    ) as store:
        first = await store.comps.search(CARD)
        await store.flush()
        clock.advance(timedelta(days=30))  # past max_stale (7 days) and into a new day
        await store.comps.search(f"{CARD} other")  # spends the new day's one request
        old = await store.comps.search(CARD)
        assert old.source == "stale"
        assert old.fetched_at == first.fetched_at
        with pytest.raises(ks.BudgetExhaustedError):
            await store.comps.search(f"{CARD} never stored")
        assert market.call_count == 2


_WORKER = textwrap.dedent(
    """
    import asyncio, json, sys
    import kuya_store as ks

    async def main(url, redis, prefix, name, count):
        calls = 0
        async def fetch(request):
            nonlocal calls
            calls += 1
            return ks.FetchResult(listings=[])
        async with ks.CompsStore(database_url=url, redis_url=redis, key_prefix=prefix,
                                 fetchers={"sold": fetch}, api_budget=15) as store:
            spent = 0
            for i in range(count):
                try:
                    await store.comps.search(f"card {name} {i}")
                except ks.BudgetExhaustedError:
                    spent += 1
        print(json.dumps({"calls": calls, "spent": spent}))

    asyncio.run(main(*sys.argv[1:5], int(sys.argv[5])))
    """
)


@pytest.mark.parametrize("counter", ["redis", "sqlite"])
def test_budget_is_never_exceeded_across_processes(
    request: pytest.FixtureRequest, key_prefix: str, tmp_path: Path, counter: str
) -> None:
    # Counted in Redis (on PostgreSQL), or in the embedded default's SQLite file.
    url = request.getfixturevalue("postgres_url" if counter == "redis" else "sqlite_url")
    ks.migrations.upgrade(url)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    redis = request.getfixturevalue("redis_base_url") if counter == "redis" else ""
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, redis, key_prefix, str(n), "12"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(3)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    assert sum(r["calls"] for r in reports) == 15  # 36 searches, a budget of 15: exactly
    assert sum(r["spent"] for r in reports) == 21


async def test_budget_shows_in_metrics_prometheus_and_the_dashboard(migrated_url: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from kuya_store.dashboard import render_dashboard
    from kuya_store.integrations.prometheus import exposition

    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(
        database_url=migrated_url, fetchers={"sold": market.sold}, api_budget=10
    ) as store:
        await store.comps.search(CARD)
        budget = store.metrics()["budget"]
        (period,) = budget["sold"]
        assert budget["sold"][period] == {"used_here": 1, "limit": 10}
        body, _ = exposition(store)
        samples = {
            (s.name, s.labels.get("search_type")): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        assert samples[("kuya_store_api_budget_used", "sold")] == 1
        assert samples[("kuya_store_api_budget_limit", "sold")] == 10
        await store.flush()
        page = render_dashboard(
            stats=await store.analytics.search_stats(),
            top=await store.analytics.top_searches(),
            metrics=store.metrics(),
            chart_url="/chart",
        )
        assert f"sold 1 of 10 ({period})" in page
