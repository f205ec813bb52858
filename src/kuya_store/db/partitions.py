"""Which partitions the search log and the price snapshots have, need and may lose.

On PostgreSQL ``searches`` is range-partitioned by ``created_at`` into UTC days and
``price_snapshots`` by ``snapshot_date`` into months, each with a ``DEFAULT`` partition
that catches a row no partition covers (a row is never refused for its date). Partitions
are named as pg_partman names them (``searches_p2026_12_01``, ``price_snapshots_p2026_12``),
so either can keep them. This module is plain code over dates: what to create ahead, which
rows of the default partition to move out, which partitions retention drops; the SQL that
carries it out is generated here too, and run by ``db/maintenance.py`` and the migration.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

__all__ = [
    "PARTITIONED",
    "SEARCHES",
    "SNAPSHOTS",
    "Partition",
    "PartitionPlan",
    "PartitionSpec",
    "plan_partitions",
    "retention_cutoff",
]

Interval = Literal["day", "month"]


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    """How one table is partitioned."""

    table: str
    column: str
    interval: Interval
    premake: int
    """How many intervals after the current one always have a partition."""
    timestamp: bool
    """The column is a ``timestamptz`` (bounds are UTC midnights), else a ``date``."""

    @property
    def default(self) -> str:
        return f"{self.table}_default"

    @property
    def partman_interval(self) -> str:
        return "daily" if self.interval == "day" else "monthly"

    def start_of(self, day: date) -> date:
        """The first day of the partition that holds ``day``."""
        return day if self.interval == "day" else day.replace(day=1)

    def after(self, start: date) -> date:
        """The first day after the partition that starts on ``start``."""
        if self.interval == "day":
            return start + timedelta(days=1)
        return date(start.year + start.month // 12, start.month % 12 + 1, 1)

    def name(self, start: date) -> str:
        suffix = f"{start:%Y_%m_%d}" if self.interval == "day" else f"{start:%Y_%m}"
        return f"{self.table}_p{suffix}"

    def parse(self, name: str) -> Partition | None:
        """The partition a table name stands for; ``None`` for any other table."""
        pattern = r"(\d{4})_(\d{2})_(\d{2})" if self.interval == "day" else r"(\d{4})_(\d{2})"
        match = re.fullmatch(rf"{re.escape(self.table)}_p{pattern}", name)
        if match is None:
            return None
        parts = [int(p) for p in match.groups()]
        try:
            start = date(parts[0], parts[1], parts[2] if len(parts) == 3 else 1)
        except ValueError:
            return None
        return self.partition(start)

    def partition(self, day: date) -> Partition:
        start = self.start_of(day)
        return Partition(self.name(start), start, self.after(start))

    def bound(self, day: date) -> str:
        """A partition bound as SQL: a UTC midnight, or a date."""
        return f"'{day.isoformat()} 00:00:00+00'" if self.timestamp else f"'{day.isoformat()}'"

    def create_sql(self, partition: Partition) -> str:
        return (
            f"CREATE TABLE {partition.name} PARTITION OF {self.table} "
            f"FOR VALUES FROM ({self.bound(partition.start)}) TO ({self.bound(partition.end)})"
        )

    def in_range_sql(self, partition: Partition) -> str:
        """The condition a row of ``partition`` meets."""
        return (
            f"{self.column} >= {self.bound(partition.start)} "
            f"AND {self.column} < {self.bound(partition.end)}"
        )

    def day_sql(self) -> str:
        """The UTC day of a row, as SQL."""
        return f"({self.column} AT TIME ZONE 'UTC')::date" if self.timestamp else self.column


SEARCHES = PartitionSpec("searches", "created_at", "day", premake=7, timestamp=True)
SNAPSHOTS = PartitionSpec("price_snapshots", "snapshot_date", "month", premake=3, timestamp=False)
PARTITIONED = (SEARCHES, SNAPSHOTS)


@dataclass(frozen=True, slots=True, order=True)
class Partition:
    """One range partition: rows with ``start <= day < end``."""

    name: str
    start: date
    end: date


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    """What maintenance does to one table."""

    create: tuple[Partition, ...]
    """Missing partitions: the current one, those ahead, and those rows in the default need."""
    drop: tuple[Partition, ...]
    """Partitions wholly older than the retention."""


def retention_cutoff(now: datetime, retention: timedelta | None) -> date | None:
    """The first UTC day retention keeps (whole days only); ``None`` keeps everything."""
    if retention is None:
        return None
    return (now - retention).date()


def plan_partitions(
    spec: PartitionSpec,
    existing: Iterable[str],
    now: datetime,
    retention: timedelta | None,
    default_days: Iterable[date] = (),
) -> PartitionPlan:
    """What to create and drop so the table has its partitions and keeps its retention.

    Args:
        existing: names of the table's partitions; names of another form are left alone.
        now: the current moment (UTC).
        default_days: days of the rows in the default partition, which each get theirs.
    """
    have = {p.start: p for p in (spec.parse(name) for name in existing) if p is not None}
    cutoff = retention_cutoff(now, retention)
    wanted: set[date] = set()
    start = spec.start_of(now.date())
    for _ in range(spec.premake + 1):
        wanted.add(start)
        start = spec.after(start)
    wanted.update(spec.start_of(day) for day in default_days)
    create = sorted(spec.partition(s) for s in wanted - have.keys())
    drop = sorted(p for p in have.values() if cutoff is not None and p.end <= cutoff)
    # Rows of a day retention no longer keeps do not get a partition made only to be dropped.
    create = [p for p in create if cutoff is None or p.end > cutoff]
    return PartitionPlan(create=tuple(create), drop=tuple(drop))
