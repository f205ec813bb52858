"""The benchmark app's fetcher: the upstream's JSON validated in one go, as a fetcher should."""

from __future__ import annotations

import json

import httpx
import pytest
from bench import fake_upstream
from bench.kuya_app import UpstreamFetcher

import kuya_store as ks
from kuya_store.models import is_validated_listing
from kuya_store.upstream import validate_fetch_result


@pytest.mark.parametrize("kind", [ks.SearchType.SOLD, ks.SearchType.ACTIVE])
async def test_fetcher_reads_the_upstream_once(
    monkeypatch: pytest.MonkeyPatch, kind: ks.SearchType
) -> None:
    monkeypatch.setenv("BENCH_UPSTREAM_LATENCY", "0")
    app = fake_upstream.create()
    fetcher = UpstreamFetcher("http://upstream")
    request = ks.FetchRequest(
        query="2023 Topps Chrome Wembanyama #1", search_type=kind, params={"pages": 2}
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://upstream"
    ) as client:
        fetcher._client = client
        got = await fetcher(request)
        body = await client.get("/search", params={"q": request.query, "type": kind, "pages": 2})
    plain = json.loads(body.content)

    # what validating each listing from the body gives, field for field
    one_by_one = ks.FetchResult(
        listings=[ks.Listing.model_validate(x) for x in plain["listings"]],
        pages_scraped=plain["pages_scraped"],
    )
    assert got == one_by_one
    assert got.listings and all(is_validated_listing(x) for x in got.listings)
    stored = validate_fetch_result(got)
    assert all(a is b for a, b in zip(stored.listings, got.listings, strict=True))
