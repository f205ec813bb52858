"""The Prometheus exposition: histograms, labelled counters, gauges, read as Prometheus reads them."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import kuya_store as ks
from kuya_store.dashboard import render_dashboard
from kuya_store.demo import FakeMarketplace
from kuya_store.integrations.prometheus import exposition
from kuya_store.metrics import BUCKETS_SECONDS, Histogram, Metrics

CARDS = ("1986 Fleer Michael Jordan #57", "2018 Prizm Luka Doncic #280", "2003 Topps LeBron #221")

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class _Down:
    async def __call__(self, request: ks.FetchRequest) -> ks.FetchResult:
        raise ks.PermanentFetchError("listing API says no")


def _families(store: Any) -> dict[str, Any]:
    body, content_type = exposition(store)
    assert content_type.startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def _value(families: dict[str, Any], sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels``."""
    family = families[re.sub(r"_(total|bucket|count|sum)$", "", sample)]
    return sum(
        s.value
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_a_histogram_counts_a_bound_in_its_own_bucket_and_the_rest_only_in_inf() -> None:
    histogram = Histogram()
    for ms in (0.5, 0.50001, 60_000.0, 60_001.0):
        histogram.observe(ms)
    figures = histogram.as_dict()
    buckets = dict(figures["buckets"])
    assert buckets[0.0005] == 1  # le="0.0005" holds 0.5 ms exactly
    assert buckets[0.001] == 2
    assert buckets[60.0] == 3  # 60.001 s is only in +Inf
    assert figures["count"] == 4
    assert list(buckets) == list(BUCKETS_SECONDS)
    assert figures["sum_seconds"] == 120.002  # rounded to the microsecond


def test_labelled_counts_and_histograms_are_kept_apart_per_label_set() -> None:
    metrics = Metrics()
    metrics.incr_by("searches", {"source": "api", "search_type": "sold"})
    metrics.incr_by("searches", {"search_type": "sold", "source": "api"}, 2)  # same set
    metrics.incr_by("searches", {"search_type": "sold", "source": "memory"})
    metrics.observe("search", 3.0, {"search_type": "sold", "source": "api"})
    metrics.observe("search", 4.0, {"search_type": "sold", "source": "none"}, summary=False)
    snap = metrics.snapshot()
    assert snap["labelled"]["searches"] == [
        {"labels": {"search_type": "sold", "source": "api"}, "value": 3},
        {"labels": {"search_type": "sold", "source": "memory"}, "value": 1},
    ]
    assert [h["count"] for h in snap["histograms"]["search"]] == [1, 1]
    assert snap["timings"]["search"]["count"] == 1  # summary=False stays out of latency


async def test_exposition_parses_and_agrees_with_metrics_search_stats_and_the_dashboard(
    migrated_url: str,
) -> None:
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(
        database_url=migrated_url,
        fetchers={"sold": market.sold, "active": _Down()},
        api_budget=100,
    ) as store:
        for card in CARDS:
            await store.comps.search(card, params={"pages": 2})  # three misses, two pages each
        for card in CARDS[:2]:
            await store.comps.search(card, params={"pages": 2})  # two hits
        with pytest.raises(ks.FetcherError):
            await store.comps.search(CARDS[0], search_type="active")  # nothing stale to serve
        assert await store.flush()
        await store.database_size()
        stats = await store.analytics.search_stats()
        metrics = store.metrics()
        families = _families(store)
        page = render_dashboard(
            stats=stats, top=await store.analytics.top_searches(), metrics=metrics
        )

    for name, family in families.items():
        assert _NAME.match(name) and name.startswith("kuya_store_"), name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
    assert {n for n, f in families.items() if f.type == "summary"} == set()

    # Searches by source and outcome, as the search log and the dashboard count them.
    fetched = _value(families, "kuya_store_searches_total", outcome="fetched")
    hits = _value(families, "kuya_store_searches_total", outcome="hit")
    assert (fetched, hits) == (3, 2)
    assert _value(families, "kuya_store_searches_total", source="api", search_type="sold") == 3
    assert _value(families, "kuya_store_searches_total", source="memory", outcome="hit") == 2
    assert (
        _value(
            families,
            "kuya_store_searches_total",
            search_type="active",
            outcome="failed",
            source="none",
        )
        == 1
    )
    assert stats.total == fetched + hits == metrics["searches"]
    assert stats.cache_hits == hits == stats.api_calls_saved
    assert _value(families, "kuya_store_api_calls_saved_total") == hits
    assert stats.by_type["sold"].api_calls == 6 == market.call_count * 2
    assert _value(families, "kuya_store_api_calls_total", search_type="sold") == 6
    assert _value(families, "kuya_store_api_calls_total", search_type="active") == 1
    assert _value(families, "kuya_store_api_errors_total", search_type="active") == 1
    assert _value(families, "kuya_store_api_calls_total") == metrics["api_calls"] == 7
    assert 'id="searches">Searches<b>5</b>' in page
    assert 'id="api-calls-saved">API calls saved<b>2</b>' in page
    assert 'id="api-calls">API calls<b>6</b>' in page  # the search log's paid pages: sold
    assert f'id="hit-rate">Cache hit rate<b>{hits / (fetched + hits):.1%}</b>' in page
    assert math.isclose(stats.cache_hit_rate, hits / (fetched + hits), abs_tol=1e-4)

    # The search histogram: every search, answered ones as many as latency.search counts.
    search = families["kuya_store_search_duration_seconds"]
    assert search.type == "histogram"
    assert _value(families, "kuya_store_search_duration_seconds_count", source="api") == 3
    assert _value(families, "kuya_store_search_duration_seconds_count", source="memory") == 2
    assert _value(families, "kuya_store_search_duration_seconds_count", source="none") == 1
    answered = sum(
        s.value
        for s in search.samples
        if s.name.endswith("_count") and s.labels["source"] != "none"
    )
    assert answered == metrics["latency"]["search"]["count"] == stats.total
    total_ms = metrics["latency"]["search"]["total_ms"]
    answered_sum = sum(
        s.value for s in search.samples if s.name.endswith("_sum") and s.labels["source"] != "none"
    )
    assert math.isclose(answered_sum * 1000, total_ms, rel_tol=1e-3, abs_tol=0.01)
    for labels in {tuple(sorted(s.labels.items())) for s in search.samples if "le" in s.labels}:
        chosen = dict(labels)
        chosen.pop("le")
        series = [
            s
            for s in search.samples
            if s.name.endswith("_bucket") and all(s.labels.get(k) == v for k, v in chosen.items())
        ]
        counts = [s.value for s in series]
        assert counts == sorted(counts), "buckets are cumulative"
        assert series[-1].labels["le"] == "+Inf"
        assert series[-1].value == _value(
            families, "kuya_store_search_duration_seconds_count", **chosen
        )

    # Tiers, fetches and the database: histograms over the same calls the dict counts.
    tier_hits = _value(
        families, "kuya_store_tier_duration_seconds_count", tier="memory", outcome="hit"
    )
    assert tier_hits == metrics["tier_hits"]["memory"] == 2
    assert (
        _value(families, "kuya_store_tier_duration_seconds_count", tier="database", outcome="miss")
        >= 3
    )
    assert _value(families, "kuya_store_fetch_duration_seconds_count", outcome="ok") == 3
    assert (
        _value(
            families,
            "kuya_store_fetch_duration_seconds_count",
            search_type="active",
            outcome="error",
        )
        == 1
    )
    assert (
        _value(families, "kuya_store_fetch_duration_seconds_count")
        == metrics["latency"]["fetch"]["count"]
    )
    assert (
        _value(families, "kuya_store_db_query_duration_seconds_count")
        == metrics["database"]["queries"]["count"]
        > 0
    )
    assert _value(families, "kuya_store_db_write_duration_seconds_count", kind="persist_fetch") == 3
    assert _value(families, "kuya_store_db_write_duration_seconds_count", kind="log_searches") >= 1
    assert _value(families, "kuya_store_db_write_duration_seconds_count", outcome="error") == 0

    # Writes, gauges and the budget.
    assert (
        _value(families, "kuya_store_writes_total", outcome="written")
        == metrics["writes"]["written"]
        == 5
    )
    assert _value(families, "kuya_store_writes_total", outcome="dropped") == 0
    assert _value(families, "kuya_store_write_buffer_pending") == 0
    assert _value(families, "kuya_store_write_buffer_capacity") == store.settings.write_buffer_size
    pool = metrics["database"]["pool"]
    if "size" in pool:
        assert _value(families, "kuya_store_db_pool_size") == pool["size"]
        assert (
            _value(families, "kuya_store_db_pool_connections", state="checked_out")
            == pool["checkedout"]
        )
    assert (
        _value(families, "kuya_store_database_size_bytes") == metrics["database"]["size_bytes"] > 0
    )
    assert _value(families, "kuya_store_api_budget_used", search_type="sold", period="daily") == 6
    assert (
        _value(families, "kuya_store_api_budget_limit", search_type="sold", period="daily") == 100
    )
    assert _value(families, "kuya_store_api_budget_used", search_type="active", period="daily") == 1


async def test_two_stores_expose_only_their_own_searches(sqlite_url: str, tmp_path: Any) -> None:
    market = FakeMarketplace(listings=2)
    other_url = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    async with (
        ks.CompsStore(database_url=sqlite_url, fetchers={"sold": market.sold}) as one,
        ks.CompsStore(database_url=other_url, fetchers={"sold": market.sold}) as other,
    ):
        await one.create_schema()
        await other.create_schema()
        for _ in range(3):
            await one.comps.search(CARDS[0])
        await other.comps.search(CARDS[1])
        first, second = _families(one), _families(other)
        assert _value(first, "kuya_store_searches_total") == 3
        assert _value(second, "kuya_store_searches_total") == 1
        assert _value(first, "kuya_store_search_duration_seconds_count") == 3
        assert _value(second, "kuya_store_search_duration_seconds_count") == 1
        again = _families(one)  # a second scrape reads, it never adds
        assert _value(again, "kuya_store_searches_total") == 3


async def test_a_cancelled_search_is_counted_as_cancelled_not_failed(sqlite_url: str) -> None:
    import asyncio

    market = FakeMarketplace(listings=2, latency=0.3)
    async with ks.CompsStore(database_url=sqlite_url, fetchers={"sold": market.sold}) as store:
        await store.create_schema()
        task = asyncio.create_task(store.comps.search(CARDS[0]))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    families = _families(store)  # closing let the fetch land
    assert _value(families, "kuya_store_searches_total", outcome="cancelled", source="none") == 1
    assert _value(families, "kuya_store_searches_total", outcome="failed") == 0
    # The fetch it started still landed and was paid once.
    assert _value(families, "kuya_store_fetch_duration_seconds_count", outcome="ok") == 1
    assert _value(families, "kuya_store_api_calls_total") == 1


async def test_a_peek_reads_the_tiers_without_counting_as_searches_or_tier_reads(
    sqlite_url: str,
) -> None:
    market = FakeMarketplace(listings=2)
    async with ks.CompsStore(database_url=sqlite_url, fetchers={"sold": market.sold}) as store:
        await store.create_schema()
        await store.comps.search(CARDS[0])
        before = _families(store)
        assert await store.comps.peek(CARDS[0]) is not None
        assert await store.comps.peek(CARDS[1]) is None
        after = _families(store)
    for sample in ("kuya_store_tier_duration_seconds_count", "kuya_store_searches_total"):
        assert _value(after, sample) == _value(before, sample) > 0, sample


async def test_the_write_journal_shows_as_counters_and_stream_gauges(
    sqlite_url: str, redis_base_url: str, key_prefix: str
) -> None:
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(
        database_url=sqlite_url,
        redis_url=redis_base_url,
        key_prefix=key_prefix,
        fetchers={"sold": market.sold},
    ) as store:
        await store.create_schema()
        for i in range(3):
            await store.comps.search(f"1986 Fleer Michael Jordan #{57 + i}")
        await store.flush()
        journal = store.metrics()["journal"]
        families = _families(store)
        assert journal["enabled"] and journal["appended"] >= 3  # a fetch carries its search row
        assert _value(families, "kuya_store_journal_appended_total") == journal["appended"]
        assert _value(families, "kuya_store_journal_acked_total") == journal["acked"]
        assert families["kuya_store_journal_length"].type == "gauge"
    async with ks.CompsStore(database_url=sqlite_url) as plain:  # no Redis: no journal series
        assert not any(name.startswith("kuya_store_journal") for name in _families(plain))
