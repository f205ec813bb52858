"""A search answered from a tier: built without validating again, yet the same answer."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

import kuya_store as ks
from kuya_store.built_models import checked_result
from kuya_store.demo import FakeMarketplace, with_links, with_links_json
from kuya_store.metrics import _RESERVOIR, Metrics, Timing, labels_of
from kuya_store.models import CompsResult

QUERY = "2023 Topps Chrome Victor Wembanyama #1"
LINK = "https://www.ebay.com/itm/{item_id}"


def _validated(result: CompsResult) -> CompsResult:
    """What validation builds from the fields ``result`` was given."""
    return CompsResult(**{name: getattr(result, name) for name in result.model_fields_set})


def _same(built: CompsResult, validated: CompsResult) -> None:
    assert built == validated
    assert built.model_fields_set == validated.model_fields_set
    assert list(built.__dict__) == list(validated.__dict__)
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True)
    for name, value in validated.__dict__.items():
        assert type(built.__dict__[name]) is type(value), name


def _listing(index: int, **fields: Any) -> ks.Listing:
    return ks.Listing.model_validate(
        {"item_id": f"i/{index} é", "title": f"Card {index}", "price": "1.50", **fields}
    )


def test_a_checked_result_is_what_validation_builds_even_from_odd_values() -> None:
    plus_two = timezone(timedelta(hours=2))
    listings = [
        _listing(1, sold_date=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=plus_two)),
        _listing(2, extra={"nested": {"a": [1, 2.5, None, True]}, "link": "x"}),
    ]
    values: dict[str, Any] = {
        "query": "Ohtani -auto",
        "card_identifier": "ohtani",
        "search_type": ks.SearchType.SOLD,
        "filters": ks.SearchFilters(raw_only=True),
        "params": {"pages": 1, "ratio": 1.0, "flag": True, "sort": "x", "none": None},
        "listings": listings,
        "source": ks.Source.REDIS,
        # Not UTC: validation moves a moment to UTC, and so must the trusted build.
        "fetched_at": datetime(2026, 1, 2, 5, 0, tzinfo=plus_two),
        "cache_hit": True,
        "snapshot": None,
        "pages_scraped": 3,
        "complete": True,
        "fresh_until": datetime(2026, 1, 2, 6, 0, tzinfo=plus_two),
        "display_complete": False,
    }
    for given in (values, {**values, "execution_time_ms": 7}):
        built = checked_result(**given)
        _same(built, CompsResult(**given))
        assert built.fetched_at.tzinfo is UTC and built.fresh_until is not None
        assert built.fresh_until.tzinfo is UTC
    # The answer's list and params are its own, as validation's copies are.
    built = checked_result(**values)
    built.listings.clear()
    built.params.clear()
    assert len(listings) == 2 and values["params"]["pages"] == 1


def _counting_validations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every validation of a ``CompsResult`` (the validator is pydantic's own)."""
    calls: list[int] = []
    validator = CompsResult.__pydantic_validator__

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(validator, name)

        def validate_python(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return validator.validate_python(*args, **kwargs)

    monkeypatch.setattr(CompsResult, "__pydantic_validator__", Counting())
    return calls


@pytest.mark.parametrize("tier", ["near", "redis", "memory"])
async def test_a_hit_answers_without_validating_the_answer_again(
    tier: str, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    market = FakeMarketplace(listings=30)
    kwargs: dict[str, Any] = {"redis_url": redis_url, "key_prefix": key_prefix}
    if tier == "redis":
        kwargs["near_cache_size"] = 0
    elif tier == "memory":
        kwargs = {}
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://",
        mode="cache_only",
        fetchers={"sold": market.sold},
        **kwargs,
    ) as store:
        fetched = await store.comps.search(QUERY)
        await store.comps.search(QUERY + " -psa")  # not complete: a fetch of its own
        calls = _counting_validations(monkeypatch)
        answers = [
            await store.comps.search(QUERY),
            await store.comps.search(QUERY, filters={"raw_only": True}),
            await store.comps.search(QUERY + " -psa"),
        ]
        peeked = await store.comps.peek(QUERY)
        assert calls == []
        monkeypatch.undo()
        expected = "memory" if tier in ("near", "memory") else "redis"
        for answer in [*answers, peeked]:
            assert answer is not None and answer.cache_hit and answer.source == expected
            _same(answer, _validated(answer))
        assert answers[0].listings == fetched.listings
        assert answers[0].snapshot == fetched.snapshot
        # What a caller does to its answer's lists stays there.
        answers[0].listings.clear()
        answers[0].params["pages"] = 99
        again = await store.comps.search(QUERY)
        assert again.listings == fetched.listings and again.params == {}


async def test_a_hit_still_counts_and_logs_what_it_did(migrated_url: str) -> None:
    market = FakeMarketplace(listings=10)
    async with ks.CompsStore(database_url=migrated_url, fetchers={"sold": market.sold}) as store:
        await store.comps.search(QUERY)
        for _ in range(3):
            assert (await store.comps.search(QUERY)).source == "memory"
        await store.flush(timeout=5.0)
        metrics = store.metrics()
        stats = await store.analytics.search_stats(fresh=True)
    assert metrics["tier_hits"]["memory"] == 3
    assert stats.total == 4 and stats.cache_hits == 3
    assert len(market.calls) == 1


def test_kept_label_keys_count_as_the_labels_themselves() -> None:
    by_dict, by_key = Metrics(), Metrics()
    labels = {"source": "memory", "search_type": "sold"}
    by_dict.observe("search", 1.5, labels)
    by_dict.incr_by("searches", labels, 2)
    by_key.observe_at("search", 1.5, labels_of(labels))
    by_key.incr_at("searches", labels_of(dict(reversed(labels.items()))), 2)
    by_dict.observe("unlabelled", 3.0)
    by_key.observe_at("unlabelled", 3.0, ())
    assert by_dict.snapshot() == by_key.snapshot()


def test_a_duration_counted_with_its_counters_at_once_counts_as_each_apart() -> None:
    apart, at_once = Metrics(), Metrics()
    timed, counted = labels_of({"tier": "near"}), labels_of({"outcome": "hit"})
    apart.observe("tier", 0.2, {"tier": "near"}, summary=False)
    apart.incr("hit_memory")
    apart.incr_by("searches", {"outcome": "hit"})
    at_once.observe_at(
        "tier", 0.2, timed, summary=False, count="hit_memory", count_at=("searches", counted)
    )
    assert apart.snapshot() == at_once.snapshot()
    assert at_once.count("hit_memory") == 1


def test_a_timing_keeps_a_uniform_sample_of_every_observation() -> None:
    random.seed(20260601)
    timing = Timing()
    total = 50 * _RESERVOIR
    for ms in range(total):
        timing.observe(float(ms))
    kept = sorted(timing._sample)
    assert len(kept) == _RESERVOIR and len(set(kept)) == _RESERVOIR
    assert (timing.count, timing.max_ms) == (total, total - 1)
    # Early, middle and late observations alike: each tenth of them holds a tenth of the sample.
    tenths = [
        sum(1 for ms in kept if k * total / 10 <= ms < (k + 1) * total / 10) for k in range(10)
    ]
    assert all(0.85 * _RESERVOIR / 10 <= n <= 1.15 * _RESERVOIR / 10 for n in tenths), tenths
    assert abs(timing.percentile(50) - total / 2) < 0.03 * total


def _dressed(result: CompsResult) -> CompsResult:
    """``result`` as a database answer after ``display_ttl``: no display data left."""
    listings = [x.model_copy(update={"extra": {}}) for x in result.listings]
    listings[0] = listings[0].model_copy(update={"extra": {"link": "https://kept/1"}})
    return result.model_copy(update={"display_complete": False, "listings": listings})


async def test_with_links_json_is_the_document_with_links_gives() -> None:
    market = FakeMarketplace(listings=20)
    fetchers = {"sold": market.sold, "active": market.active}
    async with ks.CompsStore(
        database_url="sqlite+aiosqlite://", mode="cache_only", fetchers=fetchers
    ) as store:
        sold = await store.comps.search(QUERY)
        active = await store.comps.search(QUERY, "active")
    odd = sold.model_copy(
        update={
            "listings": [
                _listing(
                    1, sold_date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
                ),
                _listing(
                    2,
                    sold_date=datetime(
                        2026, 1, 2, 3, 4, 5, 1, tzinfo=timezone(timedelta(hours=-5))
                    ),
                ),
                _listing(3, extra={"t": 'é \u2028 "q"', "n": [1, 2.25, {"x": None}]}),
                _listing(4, price=Decimal("99999999.99"), condition="PSA 10"),
            ]
        }
    )
    for result in (sold, active, _dressed(sold), odd, _dressed(odd)):
        expected = json.loads(json.dumps(with_links(result, LINK)))
        assert orjson.loads(with_links_json(result, LINK)) == expected
    # The result itself is left as it was: links are added to the document only.
    dressed = _dressed(sold)
    with_links_json(dressed, LINK)
    assert dressed.listings[1].extra == {}


def test_with_links_json_falls_back_on_what_orjson_cannot_write() -> None:
    huge = 2**70
    result = checked_result(
        query="q",
        card_identifier="q",
        search_type=ks.SearchType.ACTIVE,
        filters=ks.SearchFilters(),
        params={},
        listings=[_listing(1, extra={"huge": huge})],
        source=ks.Source.MEMORY,
        fetched_at=datetime(2026, 1, 1, tzinfo=UTC),
        cache_hit=True,
    )
    assert json.loads(with_links_json(result, LINK))["listings"][0]["extra"]["huge"] == huge
