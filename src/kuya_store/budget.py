"""The API budget: upstream requests per search type per UTC day (and hour), never exceeded.

Every upstream request reserves its place before it is made. The count is shared by
every process of a deployment: in Redis (one script checks and increments, keys expire
with their period) when Redis is configured, else in the database (one conditional
upsert), else in this process. When the shared counter cannot be reached, the next one
down counts instead (the database, then this process), so serving goes on.

The counters below the one that decides are kept up to date too: a request Redis grants
is added to the database's count (and every grant to this process's), so a fallback
starts from what was spent, not from zero, and a Redis call that times out under load
cannot open a second budget. A request whose grant is in doubt (Redis timed out, perhaps
after counting it) is counted again below: the budget errs on the side of not paying.
Only while both Redis and the database are unreachable can processes together go over,
each by what the others spent in that time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from kuya_store.clock import Clock
from kuya_store.db.tables import ApiUsageRow, metadata
from kuya_store.metrics import Metrics
from kuya_store.models import SearchType
from kuya_store.settings import StoreSettings

__all__ = ["ApiBudget", "periods"]

_log = logging.getLogger("kuya_store.budget")
_usage = metadata.tables[ApiUsageRow.__tablename__]
_WARN_AT = 0.8

# KEYS: one counter per period; ARGV: n, then per key its limit and expiry (epoch ms).
# Takes n from every counter, or from none.
_RESERVE = """
local n = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
    local used = tonumber(redis.call("get", key) or "0")
    if used + n > tonumber(ARGV[2 * i]) then
        return -i
    end
end
local first = 0
for i, key in ipairs(KEYS) do
    local now = redis.call("incrby", key, n)
    redis.call("pexpireat", key, ARGV[2 * i + 1])
    if i == 1 then first = now end
end
return first
"""

# KEYS: counters Redis forgot; ARGV: per key the count it must hold at least, its expiry.
_RAISE = """
for i, key in ipairs(KEYS) do
    local wanted = tonumber(ARGV[2 * i - 1])
    if tonumber(redis.call("get", key) or "0") < wanted then
        redis.call("set", key, wanted)
        redis.call("pexpireat", key, ARGV[2 * i])
    end
end
return 0
"""


def periods(
    moment: datetime, daily: int | None, hourly: int | None
) -> list[tuple[str, int, datetime]]:
    """The budget periods a request at ``moment`` counts against: (name, limit, end)."""
    moment = moment.astimezone(UTC)
    out = []
    if daily is not None:
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        out.append((start.strftime("%Y-%m-%d"), daily, start + timedelta(days=1)))
    if hourly is not None:
        start = moment.replace(minute=0, second=0, microsecond=0)
        out.append((start.strftime("%Y-%m-%dT%H"), hourly, start + timedelta(hours=1)))
    return out


class ApiBudget:
    """Reserves upstream requests against ``api_budget`` / ``api_budget_hourly``."""

    def __init__(
        self,
        settings: StoreSettings,
        clock: Clock,
        metrics: Metrics,
        *,
        redis: Any = None,
        engine: AsyncEngine | None = None,
    ) -> None:
        self._daily = settings.api_budget
        self._hourly = settings.api_budget_hourly
        self._clock = clock
        self._metrics = metrics
        self._prefix = settings.key_prefix
        self._redis = redis
        self._engine = engine
        self._script = redis.register_script(_RESERVE) if redis is not None else None
        self._raise_script = redis.register_script(_RAISE) if redis is not None else None
        self._local: dict[tuple[str, str], int] = {}
        self._used: dict[tuple[str, str], tuple[int, int]] = {}
        self._warned: set[tuple[str, str]] = set()

    def _key(self, kind: SearchType, period: str) -> str:
        # One hash tag per search type: a request's periods share a Cluster slot.
        return f"{self._prefix}:b:{{{kind.value}}}:{period}"

    @property
    def enabled(self) -> bool:
        """Whether any budget is set."""
        return self._daily is not None or self._hourly is not None

    async def reserve(self, kind: SearchType, n: int = 1) -> bool:
        """Take ``n`` requests from every period's budget; ``False`` (nothing taken) if spent."""
        if not self.enabled or n <= 0:
            return True
        spans = periods(self._clock(), self._daily, self._hourly)
        granted = await self._reserve(kind, n, spans)
        if granted:
            for name, limit, _ in spans:
                self._note(kind, name, limit, n)
        else:
            self._metrics.incr(f"budget_refused_{kind.value}")
        return granted

    async def _reserve(
        self, kind: SearchType, n: int, spans: list[tuple[str, int, datetime]]
    ) -> bool:
        if self._script is not None:
            keys = [self._key(kind, name) for name, _, _ in spans]
            args: list[int] = [n]
            for _, limit, end in spans:
                args += [limit, int(end.timestamp() * 1000)]
            try:
                granted = int(await self._script(keys=keys, args=args)) > 0
            except Exception:  # Redis unreachable: the database counts instead
                self._metrics.incr("budget_fallbacks")
            else:
                return granted and await self._mirror(kind, n, spans)
        if self._engine is not None:
            try:
                granted = await self._reserve_in_database(kind, n, spans)
            except Exception:
                self._metrics.incr("budget_fallbacks")
            else:
                if granted:
                    self._count_here(kind, n, spans)
                return granted
        return self._reserve_here(kind, n, spans)

    async def _mirror(
        self, kind: SearchType, n: int, spans: list[tuple[str, int, datetime]]
    ) -> bool:
        """Add a request Redis granted to the counters below it (a fallback starts there).

        A database count past the limit means Redis forgot what was spent (a restart
        without persistence): the request is refused after all, and Redis is raised to the
        database's count, so no second budget is spent. ``False`` when refused.
        """
        self._count_here(kind, n, spans)
        if self._engine is None:
            return True
        try:
            totals = await self._add_in_database(kind, n, spans, conditional=False)
        except Exception:  # the database's count falls behind; Redis still decides
            self._metrics.incr("budget_mirror_failures")
            return True
        behind = [
            (span, used) for span, used in zip(spans, totals or [], strict=False) if used > span[1]
        ]
        if not behind:
            return True
        self._metrics.incr("budget_redis_forgot")
        if self._raise_script is not None:
            keys = [self._key(kind, name) for (name, _, _), _ in behind]
            args: list[int] = []
            for (_, _, end), used in behind:
                args += [used, int(end.timestamp() * 1000)]
            try:
                await self._raise_script(keys=keys, args=args)
            except Exception:
                self._metrics.incr("budget_mirror_failures")
        return False

    async def _reserve_in_database(
        self, kind: SearchType, n: int, spans: list[tuple[str, int, datetime]]
    ) -> bool:
        return await self._add_in_database(kind, n, spans, conditional=True) is not None

    async def _add_in_database(
        self,
        kind: SearchType,
        n: int,
        spans: list[tuple[str, int, datetime]],
        *,
        conditional: bool,
    ) -> list[int] | None:
        """Add ``n`` to the database's counts; with ``conditional``, only within every limit.

        Returns the new counts, or ``None`` (nothing added) when a limit refused.
        """
        assert self._engine is not None
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        totals: list[int] = []
        async with self._engine.begin() as conn:
            for name, limit, _ in spans:
                if conditional and n > limit:
                    await conn.rollback()
                    return None
                values = insert(_usage).values(period=name, search_type=kind.value, used=n)
                statement = values.on_conflict_do_update(
                    index_elements=[_usage.c.period, _usage.c.search_type],
                    set_={"used": _usage.c.used + n},
                    where=(_usage.c.used + n <= limit) if conditional else None,
                ).returning(_usage.c.used)
                row = (await conn.execute(statement)).first()
                if row is None:
                    await conn.rollback()
                    return None
                totals.append(int(row[0]))
        return totals

    def _count_here(self, kind: SearchType, n: int, spans: list[tuple[str, int, datetime]]) -> None:
        for name, _, _ in spans:
            key = (kind.value, name)
            self._local[key] = self._local.get(key, 0) + n

    def _reserve_here(
        self, kind: SearchType, n: int, spans: list[tuple[str, int, datetime]]
    ) -> bool:
        keys = [(kind.value, name) for name, _, _ in spans]
        limits = [limit for _, limit, _ in spans]
        if any(self._local.get(k, 0) + n > cap for k, cap in zip(keys, limits, strict=True)):
            return False
        self._count_here(kind, n, spans)
        return True

    def _note(self, kind: SearchType, period: str, limit: int, n: int) -> None:
        key = (kind.value, period)
        used = self._used.get(key, (0, limit))[0] + n
        self._used[key] = (used, limit)
        if used >= _WARN_AT * limit and key not in self._warned:
            self._warned.add(key)
            _log.warning(
                "API budget of %r searches for %s is %d%% spent (%d of %d requests)",
                kind.value,
                period,
                100 * used // max(limit, 1),
                used,
                limit,
            )

    def usage(self) -> dict[str, Any]:
        """What this process has reserved in the current periods, per search type."""
        now = self._clock()
        current = {name for name, _, _ in periods(now, self._daily, self._hourly)}
        out: dict[str, Any] = {"daily_limit": self._daily, "hourly_limit": self._hourly}
        for (kind, period), (used, limit) in sorted(self._used.items()):
            if period in current:
                out.setdefault(kind, {})[period] = {"used_here": used, "limit": limit}
        return out

    async def spent(self, kind: SearchType) -> dict[str, int]:
        """Requests used in the current periods, as the shared counter says (for dashboards)."""
        spans = periods(self._clock(), self._daily, self._hourly)
        out: dict[str, int] = {}
        for name, _, _ in spans:
            out[name] = await self._read(kind, name)
        return out

    async def _read(self, kind: SearchType, period: str) -> int:
        if self._redis is not None:
            try:
                raw = await self._redis.get(self._key(kind, period))
                return int(raw or 0)
            except Exception:
                pass
        if self._engine is not None:
            try:
                async with self._engine.connect() as conn:
                    value = await conn.scalar(
                        sa.select(_usage.c.used).where(
                            _usage.c.period == period, _usage.c.search_type == kind.value
                        )
                    )
                return int(value or 0)
            except Exception:
                pass
        return self._local.get((kind.value, period), 0)
