"""Run the replay and print it: the contenders side by side, kuya-store's rules one at a
time (modelled), the cost-quality curve of its freshness settings, and the targets."""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import kuya_store as ks
from bench.replay import kuya
from bench.replay.baselines import (
    MINUTE,
    NO_CACHE,
    REDIS_ONLY,
    TODAY,
    Rules,
    Run,
    combined,
    simulate,
)
from bench.replay.ideal import PerCard, simulate_per_card
from bench.replay.market import DAY, PAGE_SIZE, SEED, Market
from bench.replay.quality import Judge, Truth
from bench.replay.workload import SOLD_SHARE, TERMS_SHARE, ZIPF_S, workload
from bench.stats import Target

TARGET = 0.20
# The store's database file goes to memory where there is one: on disk, the replay would
# time fsync rather than the store.
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None
SOLD, ACTIVE = (ks.SearchType.SOLD,), (ks.SearchType.ACTIVE,)
# kuya-store's rules with paged fetchers, as the contract describes them (modelled).
PAGED = Rules(
    fold_filters="complete", fold_terms="complete", persist=True, early_stop=True, incremental=True
)


@dataclass(frozen=True, slots=True)
class Size:
    """How big a replay is."""

    searches: int
    cards: int
    days: float
    samples: int  # sold answers whose market_value error is measured

    @classmethod
    def of(cls, scale: float) -> Size:
        if scale < 1:
            return cls(searches=100, cards=50, days=2, samples=80)
        return cls(searches=3_000, cards=150, days=3, samples=1_000)


@dataclass(frozen=True, slots=True)
class Row:
    """One contender's figures."""

    name: str
    run: Run
    quality: dict[str, float]


class _Replay:
    """One workload, its ground truth and the sample, shared by every contender."""

    def __init__(self, size: Size) -> None:
        self.work = workload(size.searches, cards=size.cards, days=size.days)
        self.market = Market(cards=size.cards, days=size.days)
        self.truth = Truth(self.market)
        sold = [i for i, s in enumerate(self.work.searches) if s.kind is ks.SearchType.SOLD]
        chosen = random.Random(f"{SEED}:sample").sample(sold, min(size.samples, len(sold)))
        self.sample = frozenset(chosen)

    def model(self, name: str, rules: Rules) -> Row:
        judge = Judge(self.truth, self.sample)
        return Row(name, simulate(rules, self.work, self.truth, judge), judge.quality.line())

    def per_card(self, name: str, sold: PerCard, active: Rules | PerCard) -> Row:
        judge = Judge(self.truth, self.sample)
        spent = simulate_per_card(sold, self.work, self.truth, judge, SOLD)
        if isinstance(active, PerCard):
            rest = simulate_per_card(active, self.work, self.truth, judge, ACTIVE)
        else:
            rest = simulate(active, self.work, self.truth, judge, ACTIVE)
        return Row(name, combined(spent, rest), judge.quality.line())

    async def store(self, name: str, settings: dict[str, Any]) -> tuple[Row, kuya.StoreRun]:
        judge = Judge(self.truth, self.sample)
        with tempfile.TemporaryDirectory(prefix="kuya-replay-", dir=_SCRATCH) as scratch:
            url = f"sqlite+aiosqlite:///{Path(scratch) / 'replay.db'}"
            done = await kuya.replay(self.work, self.market, judge, url, settings)
        return Row(name, done.run, judge.quality.line()), done


def _freshness() -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """The default freshness, described, and the other settings the real store runs."""
    if kuya.settings_exist(["freshness_policy", "expected_new_sales"]):
        defaults = ks.StoreSettings(database_url="sqlite+aiosqlite://")
        policy = defaults.freshness_policy
        wanted = defaults.expected_new_sales
        points: list[tuple[str, dict[str, Any]]] = [
            ("kuya-store, fixed: sold 30 min, active 5 min", {"freshness_policy": "fixed"}),
        ]
        if policy == "sale_rate" and kuya.settings_exist(["sold_min_fresh_for"]):
            floor = defaults.sold_min_fresh_for.total_seconds() / 60
            points.append(
                (
                    f"kuya-store, sale_rate {wanted:g}, floor 30 min",
                    {"sold_min_fresh_for": timedelta(minutes=30)},
                )
            )
            return f"sale_rate {wanted:g}, floor {floor:g} min", points
        more = 4 * wanted if policy == "sale_rate" else 0.5
        points.append(
            (
                f"kuya-store, sale_rate, expected_new_sales={more:g}",
                {"freshness_policy": "sale_rate", "expected_new_sales": more},
            )
        )
        return f"{policy}, expected_new_sales={wanted:g}", points
    return "fixed: sold 30 min, active 5 min", [
        ("kuya-store, fixed: sold 24 h", {"sold_fresh_for": timedelta(hours=24)})
    ]


def _pct(value: float) -> str:
    return f"{value:.1f}%"


def _table(rows: list[Row], baseline: Run, marks: dict[str, str] | None = None) -> None:
    print(
        "| contender | requests (sold + active) | vs Redis-only | fetches | missing mean | p95 "
        "| answers missing any | late (rate x age) / cut off | mv error median | p95 | age (min) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for row in rows:
        q, spent = row.quality, row.run
        name = row.name + (marks or {}).get(row.name, "")
        print(
            f"| {name} | {spent.requests:,} ({spent.sold:,} + {spent.requests - spent.sold:,}) "
            f"| {spent.requests / baseline.requests:.3f} | {spent.fetches:,} "
            f"| {q['missing_mean']:.3f} | {q['missing_p95']:.0f} | {q['missing_share']:.1%} "
            f"| {q['late_mean']:.3f} ({q['predicted_late_mean']:.3f}) / {q['cut_mean']:.3f} "
            f"| {_pct(q['error_median'])} "
            f"| {_pct(q['error_p95'])} | {q['sold_age_min']:.1f} |"
        )


def _describe(replay: _Replay, size: Size) -> None:
    work, market = replay.work, replay.market
    rates = sorted(market.rates)
    end = work.days * DAY
    sales = sum(sum(1 for t in market.book(c).sale_at if t < end) for c in range(work.cards))
    print(
        f"\n## API-cost replay with ground truth: {len(work.searches):,} searches over "
        f"{work.days:g} days, {work.cards:,} cards (Zipf s={ZIPF_S}; "
        f"{work.distinct_cards:,} searched), {SOLD_SHARE:.0%} sold, filters on half the "
        f"searches ({TERMS_SHARE:.0%} of those as minus-terms), pages 1-3, "
        f"{len(work.restarts)} restarts (seed {SEED})"
    )
    print(
        f"market: {sales:,} sales listed when the replay ends (90 days of history), "
        f"{PAGE_SIZE} a page; sale rates a day: top card {market.rates[0]:.1f}, "
        f"median {statistics.median(rates):.2f}, "
        f"{sum(1 for r in rates if r < 1) / len(rates):.0%} of cards under one a day"
    )
    print(
        f"fetchers: {'paged (ks.paged)' if kuya.paged() else 'whole-result (every page at once)'}"
        f"; market_value error measured on {len(replay.sample):,} sampled sold answers"
    )


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    size = Size.of(scale)
    replay = _Replay(size)
    _describe(replay, size)
    default, points = _freshness()
    redis = replay.model("(b) Redis-only (all params in the key, 30/5 min)", REDIS_ONLY)
    none = replay.model("(a) no cache", NO_CACHE)
    started = time.perf_counter()
    ours, done = await replay.store(f"(c) kuya-store ({default})", {})
    print(f"kuya-store replay: {done.elapsed:.0f} s; answers by tier: {done.tiers}")
    if kuya.paged():
        print(
            f"answers marked complete: {done.complete_answers:,} of {len(replay.work.searches):,}"
        )
    print()
    _table([none, redis, ours], redis.run)
    if not kuya.paged():
        _check(replay.model("model", TODAY), ours)
    _ladder(replay, redis)
    curve = [ours]
    if scale >= 1:
        for label, settings in points:
            row, _ = await replay.store(label, settings)
            curve.append(row)
            if not kuya.paged() and "sold_fresh_for" in settings:
                window = settings["sold_fresh_for"].total_seconds()
                _check(replay.model("model", replace(TODAY, sold_for=window)), row)
    print("\nCost-quality curve of kuya-store's freshness settings, measured (real store):\n")
    _table([redis, *curve], redis.run, {ours.name: " **(default)**"})
    print(f"({time.perf_counter() - started:.0f} s of kuya-store runs)")
    _curve(replay, redis)
    return _targets(ours, redis)


def models_only(searches: int, cards: int, days: float, samples: int = 2_000) -> None:
    """Print the modelled tables (no store) for a workload of this size."""
    size = Size(searches=searches, cards=cards, days=days, samples=samples)
    replay = _Replay(size)
    _describe(replay, size)
    redis = replay.model("(b) Redis-only (all params in the key, 30/5 min)", REDIS_ONLY)
    _ladder(replay, redis)
    _curve(replay, redis)


def _check(model: Row, measured: Row) -> None:
    keys = ("missing_mean", "missing_p95", "error_p95", "active_missing_mean")
    same = model.run == measured.run and all(
        round(model.quality[k], 9) == round(measured.quality[k], 9) for k in keys
    )
    print(
        f"\nThe pure-Python model of the same rules predicts {model.run.requests:,} requests "
        f"and {model.quality['missing_mean']:.3f} missing sales per answer for "
        f"{measured.name}: {'exactly what the store did' if same else 'NOT what the store did'}."
    )


def _ladder(replay: _Replay, redis: Row) -> None:
    """kuya-store's rules one at a time, and what the targets would take (models)."""
    folded = Rules(fold_filters="complete", fold_terms="complete", early_stop=True)
    rated = replace(PAGED, new_sales=0.25, sold_for=10 * MINUTE)  # the default policy
    wider = replace(rated, share_forms=True, fold_pages=True)
    rows = [
        replay.model("today's rules: filters folded, kept, fixed 30/5 min", TODAY),
        replay.model("Redis-only + stop at the last page", Rules(early_stop=True)),
        replay.model("+ filters and minus-terms from complete results", folded),
        replay.model("+ kept across restarts", replace(folded, persist=True)),
        replay.model("+ incremental sold refresh", PAGED),
        replay.model("+ sale-rate freshness (0.25 new sales, 10 min to 24 h)", rated),
        replay.model("+ filters and minus-terms share a result; fewer pages from more", wider),
        replay.per_card("+ one refresh per card for all its variants (sold)", PerCard(), wider),
        replay.per_card("+ the same for active, ends known", PerCard(), PerCard()),
        replay.per_card("+ active answered 30 min", PerCard(), PerCard(active_for=30 * MINUTE)),
        replay.model("never refresh (the floor: first fetches only)", _forever(wider)),
    ]
    print("\nkuya-store's rules one at a time, modelled in pure Python on the same replay:\n")
    _table([redis, *rows], redis.run)
    without = [
        ("without stopping at the last page", replace(rated, early_stop=False)),
        (
            "without answers from complete results",
            replace(rated, fold_filters="never", fold_terms="never"),
        ),
        ("without keeping results across restarts", replace(rated, persist=False)),
        ("without incremental sold refresh", replace(rated, incremental=False)),
        (
            "without sale-rate freshness (fixed 30 min)",
            replace(rated, new_sales=None, sold_for=30 * MINUTE),
        ),
    ]
    print("\nEach rule taken out of the modelled paged rules (sale-rate 0.25, 10 min to 24 h):\n")
    _table(
        [redis, replay.model("all of them", rated)]
        + [replay.model(name, rules) for name, rules in without],
        redis.run,
    )


def _forever(rules: Rules) -> Rules:
    return replace(rules, new_sales=None, sold_for=1e12, active_for=1e12)


def _curve(replay: _Replay, redis: Row) -> None:
    """The cost-quality curve of the freshness settings, modelled (many more points)."""
    rows = [
        replay.model(f"fixed: sold {label}", replace(TODAY, sold_for=hours * 3600))
        for label, hours in (("30 min", 0.5), ("2 h", 2), ("6 h", 6), ("24 h", 24))
    ]
    for lower in (30, 10):
        for new_sales in (0.1, 0.25, 0.5, 1.0, 2.0):
            rules = replace(PAGED, new_sales=new_sales, sold_for=lower * MINUTE)
            rows.append(replay.model(f"sale_rate {new_sales:g}, {lower} min to 24 h", rules))
    print(
        "\nThe same curve modelled in pure Python (fixed: today's rules with longer sold "
        "windows; sale_rate: paged rules with expected_new_sales, clamped):\n"
    )
    _table([redis, *rows], redis.run)


def _targets(ours: Row, redis: Row) -> list[Target]:
    ratio = ours.run.requests / redis.run.requests
    mine, theirs = ours.quality, redis.quality
    return [
        Target(
            "replay: upstream requests vs Redis-only",
            f"<= {TARGET:.2f}x",
            f"{ratio:.3f}x ({ours.run.requests:,} vs {redis.run.requests:,})",
            ratio <= TARGET,
        ),
        Target(
            "replay: mean missing sales per sold answer",
            "<= Redis-only's",
            f"{mine['missing_mean']:.3f} vs {theirs['missing_mean']:.3f}",
            mine["missing_mean"] <= theirs["missing_mean"],
        ),
        Target(
            "replay: p95 market_value error",
            "<= Redis-only's",
            f"{_pct(mine['error_p95'])} vs {_pct(theirs['error_p95'])}",
            mine["error_p95"] <= theirs["error_p95"],
        ),
    ]
