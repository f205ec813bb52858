"""Answer quality against the ground truth at the moment of each answer.

A *missing sale* is one that a fresh full fetch of the same query, filters and pages would
have returned at that moment, but the answer does not. It is *late* when it sold after the
answer's data was fetched (the answer's age), and *cut off* when it had sold before (the
answer held too few listings: a filter applied to a result the page limit had cut short).
The *market_value error* compares the answer's ``market_value`` with the one that the same
valuator (``ks.DefaultValuator()``) gives the fresh full fetch's listings, in percent of the
latter; valuing 180 listings costs milliseconds, so it is measured on a fixed sample of the
sold searches, the same sample for every contender.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import kuya_store as ks
from bench.replay.market import DAY, EPOCH, PAGE_SIZE, Market, Window
from bench.replay.titles import VARIANTS, excluded
from bench.replay.workload import Search
from bench.stats import pct

MarketValue = Callable[[], Decimal | None]
_LATER = EPOCH + timedelta(days=3650)  # after every sale of any replay


class Truth:
    """What a fresh full fetch returns, and its valuation: shared by every contender."""

    def __init__(self, market: Market) -> None:
        self.market = market
        self._valuator = ks.DefaultValuator()
        self._values: dict[tuple[object, ...], Decimal | None] = {}
        self._shares: dict[object, float] = {}

    def window(self, search: Search, at: float | None = None) -> Window:
        """The fresh full fetch of ``search`` at ``at`` (default: the search's moment)."""
        kind = self.market.sold if search.kind is ks.SearchType.SOLD else self.market.active
        return kind(search.card, search.terms, search.pages, search.at if at is None else at)

    def market_value(self, window: Window) -> Decimal | None:
        """``market_value`` of a window's sales."""
        return self.value(window.key, window.ids)

    def value(self, key: tuple[object, ...], ids: Collection[int]) -> Decimal | None:
        """``market_value`` of exactly these sales, memoised by ``key``.

        The value depends on the sales alone, not on the moment of valuing (once every
        sale is in the past): recency weights count from the newest sale.
        """
        if key not in self._values:
            listings = [self.market.listing(i) for i in ids]
            snapshot = self._valuator.value(
                "card", listings, snapshot_date=_LATER.date(), now=_LATER
            )
            self._values[key] = snapshot.market_value
        return self._values[key]

    def match_rate(self, search: Search) -> float:
        """Expected sales a day of the card that pass the search's exclusions."""
        share = self._shares.get(search.terms)
        if share is None:
            kept = [v.weight for v in VARIANTS if not excluded(v.words, search.terms)]
            share = self._shares[search.terms] = sum(kept) / sum(v.weight for v in VARIANTS)
        return self.market.rates[search.card] * share


def _error(answer: Decimal | None, truth: Decimal | None) -> float:
    """Absolute error in percent of the truth; a value missing on one side only is 100%."""
    if truth is None or answer is None:
        return 0.0 if truth is answer else 100.0
    return 0.0 if answer == truth else float(abs(answer - truth) / truth * 100)


@dataclass
class Quality:
    """What one contender's answers got wrong, summed over the replay."""

    missing: list[int] = field(default_factory=list)  # per sold answer
    late: int = 0
    cut: int = 0
    predicted_late: float = 0.0  # sale rate x age, summed
    errors: list[float] = field(default_factory=list)  # per sampled sold answer, percent
    sold_age: float = 0.0  # seconds, summed
    active_missing: list[int] = field(default_factory=list)
    active_gone: int = 0  # listings shown that a fresh fetch no longer returns

    def line(self) -> dict[str, float]:
        """The summary figures."""
        n = max(1, len(self.missing))
        return {
            "missing_mean": statistics.fmean(self.missing) if self.missing else 0.0,
            "missing_p95": pct([float(m) for m in self.missing], 95) if self.missing else 0.0,
            "missing_share": sum(1 for m in self.missing if m) / n,
            "late_mean": self.late / n,
            "cut_mean": self.cut / n,
            "predicted_late_mean": self.predicted_late / n,
            "error_median": statistics.median(self.errors) if self.errors else 0.0,
            "error_p95": pct(self.errors, 95) if self.errors else 0.0,
            "error_samples": float(len(self.errors)),
            "sold_age_min": self.sold_age / n / 60,
            "active_missing_mean": (
                statistics.fmean(self.active_missing) if self.active_missing else 0.0
            ),
            "active_gone_mean": self.active_gone / max(1, len(self.active_missing)),
        }


class Judge:
    """Scores every answer of one contender against the truth at the answer's moment."""

    def __init__(self, truth: Truth, sample: Collection[int]) -> None:
        self.truth = truth
        self.sample = sample
        self.quality = Quality()

    def answer(
        self,
        index: int,
        search: Search,
        ids: Collection[int],
        fetched_at: float,
        market_value: MarketValue,
    ) -> None:
        """Score the answer to search number ``index``: these listing ids, fetched then."""
        window = self.truth.window(search)
        q = self.quality
        if search.kind is ks.SearchType.ACTIVE:
            q.active_missing.append(sum(1 for i in window.ids if i not in ids))
            shown = set(window.ids)
            q.active_gone += sum(1 for i in ids if i not in shown)
            return
        age = max(0.0, search.at - fetched_at)
        missing = [i for i in window.ids if i not in ids]
        late = sum(1 for i in missing if self.truth.market.sold_at(i) > fetched_at)
        q.missing.append(len(missing))
        q.late += late
        q.cut += len(missing) - late
        q.sold_age += age
        rate = self.truth.match_rate(search)
        q.predicted_late += min(rate * age / DAY, search.pages * PAGE_SIZE)
        if index in self.sample:
            if not missing and len(ids) == len(window.ids):
                q.errors.append(0.0)  # the very listings of the truth: the very valuation
            else:
                q.errors.append(_error(market_value(), self.truth.market_value(window)))
