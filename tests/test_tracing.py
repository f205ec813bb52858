"""OpenTelemetry spans: the tree of a miss, a hit and a failure, shared fetches, writes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import kuya_store as ks
from kuya_store.demo import FakeMarketplace

SRC = Path(__file__).parents[1] / "src"
CARD = "2023 Topps Chrome Victor Wembanyama #1"
_EXPORTER = InMemorySpanExporter()


def _install_provider() -> None:
    """One SDK provider for the process (OpenTelemetry allows setting it once)."""
    current = trace.get_tracer_provider()
    if getattr(current, "kuya_test_provider", False):
        return
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    provider.kuya_test_provider = True  # type: ignore[attr-defined]
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another tracer provider was set first"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _install_provider()
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _named(
    finished: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str
) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def _one(finished: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> ReadableSpan:
    found = _named(finished, name)
    assert len(found) == 1, f"{len(found)} spans named {name}: {[s.name for s in finished]}"
    return found[0]


def _children(finished: Any, parent: ReadableSpan) -> list[str]:
    own = parent.get_span_context().span_id
    return [s.name for s in finished if s.parent is not None and s.parent.span_id == own]


def _parent_is(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return (
        child.parent is not None
        and child.parent.span_id == parent.get_span_context().span_id
        and child.get_span_context().trace_id == parent.get_span_context().trace_id
    )


class _Failing:
    """An upstream that always fails with a connection error (worth retrying)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: ks.FetchRequest) -> ks.FetchResult:
        self.calls += 1
        raise ConnectionError("marketplace unreachable")


async def test_a_miss_is_one_search_span_over_its_tiers_fetch_request_and_write(
    migrated_url: str, spans: InMemorySpanExporter
) -> None:
    market = FakeMarketplace(listings=4)
    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold}) as store:
        result = await store.comps.search(CARD, params={"pages": 2})
        assert await store.flush()
    finished = spans.get_finished_spans()
    search = _one(finished, "kuya_store.search")
    assert search.parent is None
    assert search.status.status_code is not StatusCode.ERROR
    assert dict(search.attributes or {}) == {
        "kuya_store.card": result.card_identifier,
        "kuya_store.search_type": "sold",
        "kuya_store.source": "api",
        "kuya_store.cache_hit": False,
        "kuya_store.upstream_pages": 2,
        "kuya_store.pages_scraped": 2,
        "kuya_store.listings": len(result.listings),
    }
    # Each tier consulted before paying, then the fetch, all children of the search.
    assert _children(finished, search) == [
        "kuya_store.tier.memory",
        "kuya_store.tier.database",
        "kuya_store.fetch",
    ]
    assert all(
        s.attributes["kuya_store.hit"] is False for s in _named(finished, "kuya_store.tier.memory")
    )
    fetch = _one(finished, "kuya_store.fetch")
    assert fetch.attributes["kuya_store.paid"] is True
    request = _one(finished, "kuya_store.upstream.request")
    assert _parent_is(request, fetch)
    assert request.attributes["kuya_store.attempts"] == 1
    assert request.attributes["kuya_store.cost"] == 2
    # Written behind, in the write-behind task, yet traced under the fetch it stores.
    persist = _one(finished, "kuya_store.db.persist_fetch")
    assert _parent_is(persist, fetch)
    assert persist.attributes["kuya_store.rows"] == 4 * 2
    assert persist.status.status_code is not StatusCode.ERROR
    assert {s.get_span_context().trace_id for s in finished} == {search.get_span_context().trace_id}


async def test_a_hit_is_a_search_span_with_the_tier_that_answered(
    migrated_url: str, spans: InMemorySpanExporter
) -> None:
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold}) as store:
        await store.comps.search(CARD)
        assert await store.flush()
        spans.clear()
        result = await store.comps.search(CARD)
        assert await store.flush()
    assert result.cache_hit
    finished = spans.get_finished_spans()
    search = _one(finished, "kuya_store.search")
    assert search.attributes["kuya_store.source"] == "memory"
    assert search.attributes["kuya_store.cache_hit"] is True
    assert search.attributes["kuya_store.upstream_pages"] == 0
    assert _children(finished, search) == ["kuya_store.tier.memory"]
    assert _one(finished, "kuya_store.tier.memory").attributes["kuya_store.hit"] is True
    assert not _named(finished, "kuya_store.fetch")
    assert not _named(finished, "kuya_store.upstream.request")
    # Its search-log row is written in a batch of its own trace, linked to the search.
    (batch,) = _named(finished, "kuya_store.db.log_searches")
    assert batch.parent is None
    assert [link.context.span_id for link in batch.links] == [search.get_span_context().span_id]


async def test_hits_from_redis_then_from_the_near_cache(
    sqlite_url: str, redis_url: str, key_prefix: str, spans: InMemorySpanExporter
) -> None:
    market = FakeMarketplace(listings=3)
    async with ks.CompsStore(
        database_url=sqlite_url,
        redis_url=redis_url,
        key_prefix=key_prefix,
        fetchers={"sold": market.sold},
    ) as store:
        await store.create_schema()
        await store.comps.search(CARD)
        first = spans.get_finished_spans()
        spans.clear()
        # The worker keeps the copy of its own write: as a worker that did not fetch it.
        assert store._near is not None
        store._near.flush()
        await store.comps.search(CARD)
        second = spans.get_finished_spans()
        spans.clear()
        await store.comps.search(CARD)
        third = spans.get_finished_spans()
        assert await store.flush()
        # Traced records go through the journal like any other: their span stays here.
        journal = store.metrics()["journal"]
        assert journal["appended"] == 3 and journal["fallbacks"] == 0
        assert store._database is not None
        async with store._database.engine.connect() as conn:
            logged = (await conn.exec_driver_sql("SELECT count(*) FROM searches")).scalar()
        assert logged == 3
    search = _one(first, "kuya_store.search")
    assert _children(first, search) == [
        "kuya_store.tier.near",
        "kuya_store.tier.redis",
        "kuya_store.tier.database",
        "kuya_store.fetch",
    ]
    # Under the cross-process lock the request is still the fetch's child.
    assert _parent_is(_one(first, "kuya_store.upstream.request"), _one(first, "kuya_store.fetch"))
    from_redis = _one(second, "kuya_store.search")
    assert from_redis.attributes["kuya_store.source"] == "redis"
    assert _children(second, from_redis) == ["kuya_store.tier.near", "kuya_store.tier.redis"]
    assert [
        s.attributes["kuya_store.hit"] for s in second if s.name.startswith("kuya_store.tier")
    ] == [False, True]
    from_near = _one(third, "kuya_store.search")
    assert from_near.attributes["kuya_store.source"] == "memory"  # the near-cache, filled by it
    assert _children(third, from_near) == ["kuya_store.tier.near"]


async def test_a_failure_is_recorded_on_the_request_the_fetch_and_the_search(
    migrated_url: str, spans: InMemorySpanExporter
) -> None:
    failing = _Failing()
    async with ks.CompsStore(
        database_url=migrated_url,
        fetchers={"sold": failing},
        fetch_attempts=2,
        fetch_backoff=timedelta(milliseconds=10),
    ) as store:
        with pytest.raises(ks.FetcherError):
            await store.comps.search(CARD)
    assert failing.calls == 2
    finished = spans.get_finished_spans()
    search = _one(finished, "kuya_store.search")
    fetch = _one(finished, "kuya_store.fetch")
    request = _one(finished, "kuya_store.upstream.request")
    for failed in (search, fetch, request):
        assert failed.status.status_code is StatusCode.ERROR, failed.name
        assert any(
            e.name == "exception" and e.attributes["exception.type"].endswith("FetcherError")
            for e in failed.events
        ), failed.name
    # Each failed attempt is an event of its request, with the upstream's own error.
    attempts = [
        e.attributes["kuya_store.attempt"]
        for e in request.events
        if e.attributes.get("exception.type") == "ConnectionError"
    ]
    assert attempts == [1, 2]
    assert request.attributes["kuya_store.attempts"] == 2
    assert _parent_is(fetch, search) and _parent_is(request, fetch)
    assert "kuya_store.source" not in (search.attributes or {})  # nothing answered it


async def test_a_shared_fetch_stays_under_the_search_that_started_it_when_that_one_is_cancelled(
    sqlite_url: str, spans: InMemorySpanExporter
) -> None:
    market = FakeMarketplace(listings=3, latency=0.3)
    async with ks.CompsStore(database_url=sqlite_url, fetchers={"sold": market.sold}) as store:
        await store.create_schema()
        first = asyncio.create_task(store.comps.search(CARD))
        for _ in range(1000):
            if store.comps._fetching.in_flight:
                break
            await asyncio.sleep(0.005)
        second = asyncio.create_task(store.comps.search(CARD))
        await asyncio.sleep(0.05)  # the second search joins the flight
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        result = await asyncio.wait_for(second, 5)
        assert await store.flush()
    assert market.call_count == 1
    assert result.cache_hit  # the second search did not pay
    finished = spans.get_finished_spans()
    starter, joiner = sorted(_named(finished, "kuya_store.search"), key=lambda s: s.start_time or 0)
    assert starter.attributes["kuya_store.cancelled"] is True
    assert starter.status.status_code is not StatusCode.ERROR  # cancelling is not failing
    fetch = _one(finished, "kuya_store.fetch")
    assert _parent_is(fetch, starter)
    assert fetch.status.status_code is not StatusCode.ERROR
    assert fetch.attributes["kuya_store.paid"] is True
    assert (fetch.end_time or 0) > (starter.end_time or 0)  # it outlived its search
    assert _parent_is(_one(finished, "kuya_store.upstream.request"), fetch)
    assert _parent_is(_one(finished, "kuya_store.db.persist_fetch"), fetch)
    join = _one(finished, "kuya_store.fetch.join")
    assert _parent_is(join, joiner)
    assert [link.context.span_id for link in join.links] == [fetch.get_span_context().span_id]
    assert joiner.attributes["kuya_store.source"] == "api"


async def test_a_failed_database_write_is_an_error_span_then_a_retried_one_lands(
    sqlite_url: str, spans: InMemorySpanExporter
) -> None:
    market = FakeMarketplace(listings=2)
    async with ks.CompsStore(
        database_url=sqlite_url,
        fetchers={"sold": market.sold},
        write_flush_interval=timedelta(milliseconds=10),
    ) as store:
        await store.comps.search(CARD)  # the schema is not there yet: the write must wait
        for _ in range(500):
            if any(
                s.status.status_code is StatusCode.ERROR
                for s in _named(spans.get_finished_spans(), "kuya_store.db.persist_fetch")
            ):
                break
            await asyncio.sleep(0.01)
        await store.create_schema()
        assert await store.flush(timeout=30)
    writes = _named(spans.get_finished_spans(), "kuya_store.db.persist_fetch")
    assert writes[0].status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in writes[0].events)
    assert writes[-1].status.status_code is not StatusCode.ERROR
    fetch = _one(spans.get_finished_spans(), "kuya_store.fetch")
    assert all(_parent_is(write, fetch) for write in writes)


def test_without_opentelemetry_tracing_is_one_shared_object_that_does_nothing(
    tmp_path: Any,
) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # not installed
        import kuya_store as ks
        from kuya_store import tracing
        from kuya_store.demo import FakeMarketplace

        async def main():
            market = FakeMarketplace(listings=2)
            async with ks.CompsStore(mode="cache_only", fetchers={"sold": market.sold}) as store:
                await store.comps.search("1986 Fleer Michael Jordan #57")
                hit = await store.comps.search("1986 Fleer Michael Jordan #57")
            assert hit.cache_hit
            assert not tracing.enabled()
            assert tracing.span("a") is tracing.span("b", {"x": 1}) is tracing.start("c")
            assert tracing.current() is None
            assert not any(name.startswith("opentelemetry") and sys.modules[name] is not None
                           for name in sys.modules)
            print("ok")

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_with_the_api_but_no_provider_set_up_spans_record_nothing(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        import asyncio
        import kuya_store as ks
        from kuya_store import tracing
        from kuya_store.demo import FakeMarketplace

        async def main():
            market = FakeMarketplace(listings=2)
            async with ks.CompsStore(mode="cache_only", fetchers={"sold": market.sold}) as store:
                await store.comps.search("1986 Fleer Michael Jordan #57")
            assert tracing.enabled()
            with tracing.span("kuya_store.probe") as span:
                assert not span.is_recording()
                assert tracing.current() is None  # nothing to parent later work to
            print("ok")

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


def test_a_sync_search_is_a_child_of_the_callers_span(
    sqlite_url: str, spans: InMemorySpanExporter
) -> None:
    market = FakeMarketplace(listings=2)
    tracer = trace.get_tracer("an-app")
    with ks.SyncCompsStore(database_url=sqlite_url, fetchers={"sold": market.sold}) as store:
        store.create_schema()
        with tracer.start_as_current_span("GET /comps") as request:
            store.comps.search(
                CARD
            )  # answered on the facade's loop thread, in the caller's context
        store.comps.search(CARD)  # no span around it: a trace of its own
        store.flush()
    inside, outside = sorted(
        _named(spans.get_finished_spans(), "kuya_store.search"), key=lambda s: s.start_time or 0
    )
    app = _one(spans.get_finished_spans(), "GET /comps")
    assert app.get_span_context().span_id == request.get_span_context().span_id
    assert _parent_is(inside, app)
    assert _parent_is(_one(spans.get_finished_spans(), "kuya_store.fetch"), inside)
    assert outside.parent is None
