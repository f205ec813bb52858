"""Valuation accuracy against a known truth: a synthetic market drawn from a seed.

Each card has a true value per grade (raw, PSA 9, PSA 10) today and a true trend. Its
sales are clean draws around the value of their day (log-normal noise), dated in sparse
bursts over 90 days, and contaminated the way real sold listings are:

* lots sold as one listing (most say so in the title, some do not);
* reprints and customs at a fraction of the price (most say so, some do not);
* best offers accepted below the asking price, recorded at the asking price;
* auctions with one or two bids that end low;
* a few prices ten times too high (a typo, the wrong card);
* for some cards no sale date at all (date text an API sent and nobody read), for the
  others a few missing dates.

Contenders, each given the listings of one grade exactly as a price app would hold them
(the titles of that grade; for raw, what ``raw_only`` keeps):

* kuya-store's ``DefaultValuator`` (a grade query for graded cards);
* plain baselines: median of all prices, mean, IQR-trimmed median (Tukey fences);
* an oracle that knows which sales are clean and the true trend: the geometric mean of the
  clean prices moved to today (the noise is log-normal, so this is the efficient estimate
  of the value), its band the 20th-80th percentiles of those prices.

Measured per grade: median and p90 absolute percentage error of ``market_value``, the
median signed error (bias), the share of cards whose true value lies inside
``fmv_low..fmv_high`` (coverage) and the band's median width relative to the truth.

Speed: the time of one valuation of 60, 180 and 1,000 sold listings (one fetch of several
grades and parallels), against the previous valuator on ``fractions.Fraction`` (kept as
the tests' oracle in ``tests/pricing/_reference_valuation.py``), in alternating rounds.
"""

from __future__ import annotations

import importlib.util
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.stats import Target
from kuya_store.models import Listing, SearchFilters
from kuya_store.pricing import DefaultValuator, apply_filters, normalize_card

SEED = 20261201
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAYS = 90
TREND_SD = 0.002  # log-value change per day, one standard deviation: about 6% a month
CARDS = 600
GRADES = ("raw", "PSA 9", "PSA 10")
PLAYERS = (
    "Victor Wembanyama",
    "Paul Skenes",
    "Caitlin Clark",
    "Elly De La Cruz",
    "Jackson Holliday",
    "CJ Stroud",
    "Connor Bedard",
    "Lamine Yamal",
)


@dataclass(frozen=True)
class Sale:
    """One sold listing and whether it is a clean sale of the card at its day's value."""

    listing: Listing
    clean: bool
    age_days: float


@dataclass
class Card:
    """A card's truth and its sold listings (all grades together, as one fetch returns)."""

    title: str
    truth: dict[str, float]
    slope: float  # log-value change per day (positive: rising)
    sales: dict[str, list[Sale]] = field(default_factory=dict)
    dated: bool = True


# ------------------------------------------------------------------------ the market


def _ages(rng: random.Random, n: int) -> list[float]:
    """Sparse, bursty sale ages: a few bursts (a card in the news) plus a thin spread."""
    centres = [rng.uniform(0, DAYS - 5) for _ in range(rng.randint(1, 4))]
    out = []
    for _ in range(n):
        if rng.random() < 0.25:
            out.append(rng.uniform(0, DAYS))
        else:
            out.append(min(DAYS, rng.choice(centres) + abs(rng.gauss(0, 2.5))))
    return out


def _count(rng: random.Random, grade: str) -> int:
    regime = rng.random()
    scale = {"raw": 1.0, "PSA 9": 0.5, "PSA 10": 0.6}[grade]
    if regime < 0.35:
        n = rng.randint(3, 8)
    elif regime < 0.75:
        n = rng.randint(9, 25)
    else:
        n = rng.randint(26, 80)
    return max(3, round(n * scale))


def _money(value: float) -> Decimal:
    return Decimal(str(round(min(max(value, 0.01), 99_999_999.0), 2))).quantize(Decimal("0.01"))


def _sales(rng: random.Random, card: Card, grade: str, sigma: float, start: int) -> list[Sale]:
    value = card.truth[grade]
    title = card.title if grade == "raw" else f"{card.title} {grade}"
    out: list[Sale] = []
    for i, age in enumerate(_ages(rng, _count(rng, grade))):
        day_value = value * math.exp(-card.slope * age)
        price = day_value * math.exp(rng.gauss(0, sigma))
        text, clean, kind, bids = title, True, "buy_it_now", None
        roll = rng.random()
        if rng.random() < 0.5:
            kind, bids = "auction", min(40, int(rng.expovariate(1 / 6)) + 1)
            if bids <= 2:  # too few bidders: the auction ends low
                price, clean = day_value * rng.uniform(0.55, 0.9), False
        elif rng.random() < 0.2:  # best offer accepted, recorded at the asking price
            price, clean = price / rng.uniform(0.75, 0.95), False
        if roll < 0.06:
            size = rng.randint(2, 5)
            marked = rng.random() < 0.8
            text = f"Lot of {size} {title}" if marked else f"{title} + bonus cards"
            price, clean = day_value * size * rng.uniform(0.6, 0.9), False
        elif roll < 0.10:
            marked = rng.random() < 0.75
            text = (
                f"{title} {rng.choice(['Reprint', 'RP', 'Custom Art Card'])}" if marked else title
            )
            price, clean = value * rng.uniform(0.03, 0.2), False
        elif roll < 0.115:
            price, clean = price * 10, False
        when = NOW - timedelta(days=age)
        sold_date = when if card.dated and rng.random() > 0.1 else None
        listing = Listing(
            item_id=f"{start + i}",
            title=text,
            price=_money(price),
            listing_type=kind,  # type: ignore[arg-type]
            bids=bids,
            sold=True,
            sold_date=sold_date,
        )
        out.append(Sale(listing, clean, age))
    return out


def market(cards: int, seed: int = SEED) -> list[Card]:
    """The synthetic market: ``cards`` cards with their truths and sales."""
    rng = random.Random(seed)
    out = []
    for c in range(cards):
        raw = min(5000.0, math.exp(rng.gauss(math.log(40), 1.0)))
        truth = {
            "raw": raw,
            "PSA 9": raw * rng.uniform(1.6, 2.6),
            "PSA 10": raw * rng.uniform(3.0, 8.0),
        }
        title = f"2023 Topps Chrome {rng.choice(PLAYERS)} #{c + 1} RC"
        card = Card(title, truth, slope=rng.gauss(0, TREND_SD), dated=rng.random() > 0.3)
        sigma = rng.uniform(0.10, 0.25)
        for g, grade in enumerate(GRADES):
            card.sales[grade] = _sales(rng, card, grade, sigma, start=(c * 3 + g) * 1000)
        out.append(card)
    return out


# ----------------------------------------------------------------------- contenders

Estimate = tuple[float, float, float] | None  # market value, band low, band high


def _listings_for(card: Card, grade: str) -> list[Listing]:
    everything = [s.listing for sales in card.sales.values() for s in sales]
    if grade == "raw":
        return apply_filters(everything, SearchFilters(raw_only=True))
    return [s.listing for s in card.sales[grade]]


def _query(card: Card, grade: str) -> str:
    return card.title if grade == "raw" else f"{card.title} {grade}"


def _fetched(card: Card, grade: str) -> list[Listing]:
    """What kuya-store values: one fetch holds every grade; raw is what ``raw_only`` keeps,
    a graded card is a grade query over the whole fetch."""
    if grade == "raw":
        return _listings_for(card, grade)
    return [s.listing for sales in card.sales.values() for s in sales]


def kuya(valuator: DefaultValuator, *, grade_query: bool = True) -> Callable[[Card, str], Estimate]:
    """kuya-store's valuation; ``grade_query=False`` names no grade (the previous release
    valued a graded query over every grade's sales)."""

    def estimate(card: Card, grade: str) -> Estimate:
        query = _query(card, grade) if grade_query else card.title
        snap = valuator.value(
            normalize_card(query),
            _fetched(card, grade),
            snapshot_date=date(2026, 3, 1),
            now=NOW,
        )
        if snap.market_value is None or snap.fmv_low is None or snap.fmv_high is None:
            return None
        return float(snap.market_value), float(snap.fmv_low), float(snap.fmv_high)

    return estimate


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def _band(prices: Sequence[float], centre: float) -> Estimate:
    return centre, _quantile(prices, 0.2), _quantile(prices, 0.8)


def plain_median(card: Card, grade: str) -> Estimate:
    prices = [float(x.price) for x in _listings_for(card, grade)]
    return _band(prices, statistics.median(prices)) if len(prices) >= 3 else None


def plain_mean(card: Card, grade: str) -> Estimate:
    prices = [float(x.price) for x in _listings_for(card, grade)]
    return _band(prices, statistics.fmean(prices)) if len(prices) >= 3 else None


def iqr_median(card: Card, grade: str) -> Estimate:
    prices = [float(x.price) for x in _listings_for(card, grade)]
    if len(prices) < 3:
        return None
    q1, q3 = _quantile(prices, 0.25), _quantile(prices, 0.75)
    kept = [p for p in prices if q1 - 1.5 * (q3 - q1) <= p <= q3 + 1.5 * (q3 - q1)] or prices
    return _band(kept, statistics.median(kept))


def oracle(card: Card, grade: str) -> Estimate:
    moved = [float(s.listing.price) * math.exp(card.slope * s.age_days) for s in card.sales[grade]]
    moved = [p for p, s in zip(moved, card.sales[grade], strict=True) if s.clean]
    if not moved:
        return None
    centre = math.exp(statistics.fmean(math.log(p) for p in moved))
    return _band(moved, centre)


# ---------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Score:
    """Accuracy of one contender on one grade."""

    n: int
    median_ape: float
    p90_ape: float
    bias: float
    coverage: float
    width: float


def score(
    cards: Sequence[Card], grade: str, contender: Callable[[Card, str], Estimate]
) -> Score | None:
    errors, signed, inside, widths = [], [], [], []
    for card in cards:
        got = contender(card, grade)
        if got is None:
            continue
        truth = card.truth[grade]
        value, low, high = got
        errors.append(abs(value / truth - 1))
        signed.append(value / truth - 1)
        inside.append(low <= truth <= high)
        widths.append((high - low) / truth)
    if not errors:
        return None
    return Score(
        n=len(errors),
        median_ape=statistics.median(errors),
        p90_ape=_quantile(errors, 0.9),
        bias=statistics.median(signed),
        coverage=sum(inside) / len(inside),
        width=statistics.median(widths),
    )


def _line(name: str, s: Score | None) -> str:
    if s is None:
        return f"{name:<34} (no estimate)"
    return (
        f"{name:<34} {s.n:5d} {s.median_ape:8.1%} {s.p90_ape:8.1%} {s.bias:+8.1%} "
        f"{s.coverage:8.1%} {s.width:8.1%}"
    )


CONTENDERS: dict[str, Callable[[Card, str], Estimate]] = {
    "kuya-store DefaultValuator": kuya(DefaultValuator()),
    "previous release's DefaultValuator": kuya(DefaultValuator(min_bids=0), grade_query=False),
    "baseline: median of all prices": plain_median,
    "baseline: mean": plain_mean,
    "baseline: IQR-trimmed median": iqr_median,
    "oracle (clean sales, true trend)": oracle,
}


def table(cards: Sequence[Card]) -> dict[str, dict[str, Score | None]]:
    """Every contender's score per grade (and on raw cards with and without dates)."""
    out: dict[str, dict[str, Score | None]] = {}
    dated = [c for c in cards if c.dated]
    undated = [c for c in cards if not c.dated]
    for name, contender in CONTENDERS.items():
        row = {grade: score(cards, grade, contender) for grade in GRADES}
        row["raw, dated"] = score(dated, "raw", contender)
        row["raw, undated"] = score(undated, "raw", contender)
        out[name] = row
    return out


def by_confidence(cards: Sequence[Card], grade: str = "raw") -> dict[str, list[float]]:
    """kuya-store's absolute errors grouped by the snapshot's ``volume_confidence``."""
    valuator = DefaultValuator()
    out: dict[str, list[float]] = {}
    for card in cards:
        snap = valuator.value(
            normalize_card(_query(card, grade)),
            _fetched(card, grade),
            snapshot_date=date(2026, 3, 1),
            now=NOW,
        )
        if snap.market_value is not None and snap.volume_confidence is not None:
            error = abs(float(snap.market_value) / card.truth[grade] - 1)
            out.setdefault(snap.volume_confidence, []).append(error)
    return out


def _targets(results: dict[str, dict[str, Score | None]], grade: str) -> list[Target]:
    ours = results["kuya-store DefaultValuator"][grade]
    best = [
        s
        for name, row in results.items()
        if name.startswith("baseline") and (s := row[grade]) is not None
    ]
    limit = results["oracle (clean sales, true trend)"][grade]
    assert ours is not None
    assert best
    assert limit is not None
    best_median = min(s.median_ape for s in best)
    best_p90 = min(s.p90_ape for s in best)
    previous = results["previous release's DefaultValuator"][grade]
    today_width = None if previous is None else previous.width
    return [
        Target(
            f"valuation {grade}: median error vs best baseline / oracle",
            "<= 0.8x and <= 1.25x",
            f"{ours.median_ape / best_median:.2f}x / {ours.median_ape / limit.median_ape:.2f}x "
            f"({ours.median_ape:.1%} vs {best_median:.1%} / {limit.median_ape:.1%})",
            ours.median_ape <= 0.8 * best_median and ours.median_ape <= 1.25 * limit.median_ape,
        ),
        Target(
            f"valuation {grade}: p90 error vs best baseline / oracle",
            "<= 0.8x and <= 1.25x",
            f"{ours.p90_ape / best_p90:.2f}x / {ours.p90_ape / limit.p90_ape:.2f}x "
            f"({ours.p90_ape:.1%} vs {best_p90:.1%} / {limit.p90_ape:.1%})",
            ours.p90_ape <= 0.8 * best_p90 and ours.p90_ape <= 1.25 * limit.p90_ape,
        ),
        Target(
            f"valuation {grade}: bias", "|bias| <= 1%", f"{ours.bias:+.1%}", abs(ours.bias) <= 0.01
        ),
        Target(
            f"valuation {grade}: band coverage (width)",
            "75-90%, width <= previous" + (f" ({today_width:.1%})" if today_width else ""),
            f"{ours.coverage:.1%} ({ours.width:.1%})",
            0.75 <= ours.coverage <= 0.90 and (today_width is None or ours.width <= today_width),
        ),
    ]


# ------------------------------------------------------------------------------ speed

SPEED_SIZES = (60, 180, 1000)
_REFERENCE = Path(__file__).parents[1] / "tests" / "pricing" / "_reference_valuation.py"


def _reference() -> ModuleType:
    """The previous valuator, loaded from the tests' oracle file."""
    spec = importlib.util.spec_from_file_location("_reference_valuation", _REFERENCE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _one_fetch(cards: Sequence[Card], n: int) -> list[Listing]:
    """``n`` sold listings of every grade, as one broad fetch returns them."""
    out = [s.listing for card in cards for sales in card.sales.values() for s in sales]
    assert len(out) >= n, "market too small"
    return out[:n]


def _per_call_ms(value: Callable[[], object], calls: int) -> float:
    # CPU time of this process: pure computation, so time spent waiting for a core on a
    # shared machine is not charged to whichever contender happened to be running
    started = time.process_time()
    for _ in range(calls):
        value()
    return (time.process_time() - started) / calls * 1e3


def speed(scale: float) -> list[Target]:
    """Time per valuation, previous (``Fraction``) against today's valuator."""
    reference = _reference()
    rounds = 3 if scale < 1 else 9
    cards = market(60)
    identifier = normalize_card(cards[0].title)
    print(
        "\n## Valuation speed: one valuation of n sold listings, previous valuator "
        f"(fractions.Fraction) against today's (integers), CPU time per valuation, median of "
        f"{rounds} alternating rounds"
    )
    print(f"{'listings':>8} {'previous':>12} {'today':>12} {'speed-up':>9}  same snapshot")
    targets = []
    for n in SPEED_SIZES:
        listings = _one_fetch(cards, n)
        contenders: dict[str, Any] = {
            "previous": reference.ReferenceValuator(),
            "today": DefaultValuator(),
        }
        snaps = {
            name: v.value(identifier, listings, snapshot_date=date(2026, 3, 1), now=NOW)
            for name, v in contenders.items()
        }
        same = snaps["previous"].model_dump(mode="json") == snaps["today"].model_dump(mode="json")
        calls = max(2, int(3000 * scale) // n)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(rounds):
            for name, v in contenders.items():
                times[name].append(
                    _per_call_ms(
                        lambda v=v, batch=listings: v.value(
                            identifier, batch, snapshot_date=date(2026, 3, 1), now=NOW
                        ),
                        calls,
                    )
                )
        old, new = statistics.median(times["previous"]), statistics.median(times["today"])
        print(f"{n:>8} {old:>9.2f} ms {new:>9.2f} ms {old / new:>8.1f}x  {'yes' if same else 'NO'}")
        targets.append(
            Target(
                f"valuation of {n} listings: today against the previous valuator",
                ">= 10x faster, same snapshot",
                f"{old / new:.1f}x ({new:.2f} ms against {old:.2f} ms), "
                f"{'same' if same else 'DIFFERENT'} snapshot",
                old / new >= 10 and same,
            )
        )
    return targets


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    fast = speed(scale)
    n = max(60, int(CARDS * scale))
    started = time.perf_counter()
    cards = market(n)
    sales = sum(len(s) for c in cards for s in c.sales.values())
    print(
        f"\n## Valuation accuracy: {n} synthetic cards x {len(GRADES)} grades, {sales:,} sold "
        f"listings (seed {SEED}); {sum(not c.dated for c in cards)} cards without sale dates"
    )
    results = table(cards)
    columns = ("cards", "med err", "p90 err", "bias", "covers", "width")
    header = f"{'':<34} {columns[0]:>5} " + " ".join(f"{c:>8}" for c in columns[1:])
    for grade in (*GRADES, "raw, dated", "raw, undated"):
        print(f"\n{grade}\n{header}")
        for name, row in results.items():
            print(_line(name, row[grade]))
    print(
        "\nraw cards by kuya-store's volume_confidence\n"
        f"{'':<34} {columns[0]:>5} {columns[1]:>8} {columns[2]:>8}"
    )
    for label, errors in sorted(by_confidence(cards).items()):
        print(
            f"{label:<34} {len(errors):5d} {statistics.median(errors):8.1%} "
            f"{_quantile(errors, 0.9):8.1%}"
        )
    print(f"(valuation: {time.perf_counter() - started:.1f} s)")
    return fast + [t for grade in GRADES for t in _targets(results, grade)]
