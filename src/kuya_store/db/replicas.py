"""Read replicas: which streaming replica answers a read, and when the primary must.

A replica answers only while it is known to be within ``max_replica_lag`` of the primary:
its lag plus the age of that measurement (the replica may have stopped replaying right
after it was measured). A replica that has replayed the primary's current WAL position,
read just before, is not behind at that moment; one that has not is as far behind as its
last replayed transaction is old. It is measured again when the last measurement is a
quarter of the bound old, by the read that notices, one probe at a time. A replica that
fails a probe or a read counts a failure on its own circuit breaker; while the breaker is
open the replica is skipped. Whatever a replica cannot answer, the primary does, so a
replica never makes a read fail.

The choice is :func:`choose_replica`, plain code over values, tested without servers.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kuya_store.breaker import CircuitBreaker
from kuya_store.logs import get_logger
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings, redact_url

__all__ = ["Candidate", "Replica", "ReplicaSet", "choose_replica", "probe_due"]

_log = get_logger("kuya_store.replicas")
PRIMARY_LSN_SQL = sa.text("SELECT pg_current_wal_lsn()::text")
# Whether the replica has replayed a primary position, and how old its last replayed
# transaction is. A server that is not in recovery is a primary (promoted, or named by
# mistake): never behind.
REPLICA_SQL = sa.text(
    "SELECT NOT pg_is_in_recovery() "
    "OR pg_last_wal_replay_lsn() >= CAST(CAST(:lsn AS text) AS pg_lsn), "
    "EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())"
)
_NO_POSITION = "0/0"
_PROBE_TIMEOUT = 1.0
_UNKNOWN_LAG = 1e9


@dataclass(frozen=True, slots=True)
class Candidate:
    """What is known of one replica when a read needs one."""

    allowed: bool
    """Its breaker lets a call through."""
    lag: float | None
    """Seconds behind the primary at the last measurement; ``None``: never measured."""
    measured_at: float | None
    """When (monotonic seconds) it was measured."""


def within_bound(candidate: Candidate, now: float, max_lag: float) -> bool:
    """Whether the replica is surely no more than ``max_lag`` seconds behind now."""
    if candidate.lag is None or candidate.measured_at is None:
        return False
    return candidate.lag + (now - candidate.measured_at) <= max_lag


def choose_replica(
    candidates: Sequence[Candidate], now: float, max_lag: float, turn: int
) -> int | None:
    """The index of the replica that answers this read, or ``None`` for the primary.

    Replicas take turns (``turn`` counts reads) among those whose breaker allows a call
    and whose lag is within the bound.
    """
    eligible = [i for i, c in enumerate(candidates) if c.allowed and within_bound(c, now, max_lag)]
    if not eligible:
        return None
    return eligible[turn % len(eligible)]


def probe_due(candidate: Candidate, now: float, max_lag: float) -> bool:
    """Whether the replica's lag should be measured again before it answers more reads."""
    if candidate.measured_at is None or candidate.lag is None:
        return True
    return now - candidate.measured_at >= max_lag / 4


class Replica:
    """One replica: its engine, its breaker and what was last measured of its lag."""

    def __init__(self, url: str, engine: AsyncEngine, breaker: CircuitBreaker) -> None:
        self.name = redact_url(url) or ""
        self.engine = engine
        self.breaker = breaker
        self.lag: float | None = None
        self.measured_at: float | None = None
        self.reads = 0
        self.errors = 0
        self._probing = asyncio.Lock()

    def candidate(self) -> Candidate:
        return Candidate(self.breaker.state != "open", self.lag, self.measured_at)

    async def probe(
        self, primary_lsn: str | None, asked_at: float, monotonic: Callable[[], float]
    ) -> None:
        """Measure the lag; a replica that does not answer counts a breaker failure.

        Args:
            primary_lsn: the primary's WAL position read at ``asked_at``; ``None`` when the
                primary did not answer (then only the replay timestamp tells).
        """
        if self._probing.locked():
            return  # another read is measuring it already
        async with self._probing:
            if not self.breaker.allow():
                return
            try:
                async with asyncio.timeout(_PROBE_TIMEOUT), self.engine.connect() as conn:
                    row = (
                        await conn.execute(REPLICA_SQL, {"lsn": primary_lsn or _NO_POSITION})
                    ).one()
            except Exception as exc:
                _log.warning("replica %s did not answer: %s", self.name, type(exc).__name__)
                self.errors += 1
                self.breaker.failure()
                self.lag = self.measured_at = None
                return
            except BaseException:
                self.breaker.release()
                raise
            self.breaker.success()
            caught_up, replay_age = row
            if caught_up and primary_lsn is not None:
                self.lag, self.measured_at = 0.0, asked_at
            else:
                age = _UNKNOWN_LAG if replay_age is None else max(0.0, float(replay_age))
                self.lag, self.measured_at = age, monotonic()

    def stats(self, now: float) -> dict[str, Any]:
        age = None if self.measured_at is None else round(now - self.measured_at, 3)
        return {
            "url": self.name,
            "breaker": self.breaker.state,
            "lag_s": self.lag,
            "measured_s_ago": age,
            "reads": self.reads,
            "errors": self.errors,
        }


class ReplicaSet:
    """The configured replicas, each with its own engine and breaker."""

    def __init__(
        self,
        settings: StoreSettings,
        metrics: Metrics,
        primary: AsyncEngine,
        make_engine: Callable[[str], AsyncEngine],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._primary = primary
        self._metrics = metrics
        self._max_lag = settings.max_replica_lag.total_seconds()
        self._monotonic = monotonic
        self._turns = itertools.count()
        self.replicas = [
            Replica(
                url,
                make_engine(url),
                CircuitBreaker(
                    settings.breaker_failure_threshold,
                    settings.breaker_reset_after.total_seconds(),
                    monotonic=monotonic,
                    on_open=lambda: metrics.incr("replica_breaker_opens"),
                ),
            )
            for url in settings.replica_urls
        ]

    async def pick(self) -> Replica | None:
        """The replica that answers the next read, measuring lags that are due; or none."""
        now = self._monotonic()
        due = [
            r
            for r in self.replicas
            if r.breaker.state != "open" and probe_due(r.candidate(), now, self._max_lag)
        ]
        if due:
            asked_at = self._monotonic()
            lsn = await self._primary_lsn()
            await asyncio.gather(*(r.probe(lsn, asked_at, self._monotonic) for r in due))
            now = self._monotonic()
        index = choose_replica(
            [r.candidate() for r in self.replicas], now, self._max_lag, next(self._turns)
        )
        if index is None:
            self._metrics.incr("replica_skipped")
            return None
        return self.replicas[index]

    async def _primary_lsn(self) -> str | None:
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT), self._primary.connect() as conn:
                return str((await conn.execute(PRIMARY_LSN_SQL)).scalar_one())
        except Exception:
            return None  # the primary is down: replicas may still answer, by their age

    def failed(self, replica: Replica) -> None:
        """A read on ``replica`` failed: count it on its breaker (the primary answers)."""
        replica.errors += 1
        replica.breaker.failure()
        replica.lag = replica.measured_at = None  # measured again before it answers again
        self._metrics.incr("replica_errors")

    def answered(self, replica: Replica) -> None:
        replica.reads += 1
        self._metrics.incr("replica_reads")

    def stats(self) -> list[dict[str, Any]]:
        now = self._monotonic()
        return [r.stats(now) for r in self.replicas]

    async def close(self) -> None:
        await asyncio.gather(*(r.engine.dispose() for r in self.replicas))
