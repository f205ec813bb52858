"""``CompsStore``: opens the tiers, owns their lifecycles, and reports health and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from kuya_store import migrations
from kuya_store.accounts import Accounts
from kuya_store.analytics import Analytics
from kuya_store.backup import Backup
from kuya_store.budget import ApiBudget
from kuya_store.cards import Cards
from kuya_store.clock import Clock, utcnow
from kuya_store.collections import Collections
from kuya_store.db.engine import outage_as_unavailable
from kuya_store.db.maintenance import MaintenanceReport, maintain
from kuya_store.errors import InvalidInputError, KuyaStoreError, StorageUnavailableError
from kuya_store.fetching import Fetcher
from kuya_store.freshness import FreshnessPolicy, policy_for
from kuya_store.logs import get_logger
from kuya_store.metrics import Metrics
from kuya_store.models import Health, SearchType
from kuya_store.persistence import Database
from kuya_store.pricing import DefaultValuator, Valuator
from kuya_store.repository import CompsRepository
from kuya_store.settings import StoreSettings, redact_url
from kuya_store.tiers import HotTier
from kuya_store.tiers.display import display_store
from kuya_store.tiers.memory import MemoryTier
from kuya_store.tiers.near import NearCache

if TYPE_CHECKING:
    from kuya_store.tiers.coherence import InvalidationListener
    from kuya_store.tiers.journal import Journal
    from kuya_store.tiers.redis import RedisTier
from kuya_store.writer import WriteBehind

__all__ = ["CompsStore", "HealthStatus", "health_status"]

HealthStatus = Literal["healthy", "degraded", "unhealthy"]

_log = get_logger("kuya_store")
_DISCONNECT_GRACE = 2.0


def _settings(settings: StoreSettings | None, overrides: dict[str, Any]) -> StoreSettings:
    if settings is None:
        return StoreSettings(**overrides)
    if not overrides:
        return settings
    return StoreSettings(**{**settings.model_dump(), **overrides})


def _hot_tier(settings: StoreSettings, metrics: Metrics, clock: Clock) -> HotTier:
    if settings.redis_url is None:
        return MemoryTier(
            settings.memory_tier_size, clock, max_bytes=settings.memory_tier_max_bytes
        )
    try:
        from kuya_store.tiers.redis import RedisTier
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise KuyaStoreError(
            "redis_url is set but the Redis client is missing: pip install 'kuya-store[redis]'"
        ) from exc
    return RedisTier(settings, metrics)


def _near_cache(settings: StoreSettings, clock: Clock) -> NearCache | None:
    """The in-process copy in front of Redis (none without Redis, or when sized to nothing)."""
    if (
        settings.redis_url is None
        or settings.near_cache_size <= 0
        or settings.near_cache_max_bytes <= 0
        or settings.near_cache_ttl.total_seconds() <= 0
    ):
        return None
    memory = MemoryTier(settings.near_cache_size, clock, max_bytes=settings.near_cache_max_bytes)
    return NearCache(memory, settings.near_cache_ttl)


def _as_redis(hot: HotTier) -> RedisTier | None:
    if hot.name != "redis":  # without Redis the extra may not even be installed
        return None
    from kuya_store.tiers.redis import RedisTier

    return hot if isinstance(hot, RedisTier) else None


def _coherence(
    hot: HotTier, near: NearCache | None, settings: StoreSettings, metrics: Metrics
) -> InvalidationListener | None:
    """The listener that keeps the near-cache coherent, when there is one to keep so."""
    redis_tier = _as_redis(hot)
    if near is None or not settings.near_cache_coherence or redis_tier is None:
        return None
    from kuya_store.tiers.coherence import InvalidationListener

    listener = InvalidationListener(
        redis_tier.deployment, near, settings, metrics, on_fence=redis_tier.fence_heard
    )
    redis_tier.listener = listener
    return listener


def _journal(
    hot: HotTier, settings: StoreSettings, metrics: Metrics, database: Database | None
) -> Journal | None:
    """The write journal on the hot tier's Redis, when there is one and writes are kept."""
    redis_tier = _as_redis(hot)
    if redis_tier is None or database is None or not settings.durable_writes:
        return None
    from kuya_store.tiers.journal import Journal

    return Journal(redis_tier.client, settings, metrics)


def _claim_interval(settings: StoreSettings) -> float:
    """Look for idle entries twice per idle time: one waits at most 1.5 x the setting."""
    return max(settings.journal_claim_idle.total_seconds() / 2, 0.1)


def _valuator(settings: StoreSettings) -> Valuator:
    if settings.valuator is None:
        return DefaultValuator()
    try:
        made = settings.valuator() if callable(settings.valuator) else settings.valuator
    except TypeError:
        made = None
    if not callable(getattr(made, "value", None)):
        raise InvalidInputError("valuator", "must name a Valuator class or factory")
    return made  # type: ignore[no-any-return]


def health_status(
    *,
    redis: bool | None,
    database: bool | None,
    memory_tier: bool,
    reads_database: bool,
    fetcher: bool,
) -> HealthStatus:
    """Whether a store can answer, from which of its parts are configured and up.

    "healthy": every configured part is up. "degraded": something is down but searches
    still get answers, from a tier that is up or, for misses, from a fetcher. "unhealthy":
    nothing can answer. The table of cases is in ``docs/operations.md``.

    Args:
        redis: Redis answers; ``None`` when no Redis is configured.
        database: the database answers; ``None`` when there is none (``cache_only``).
        memory_tier: the hot tier is the in-process memory one, which is always up.
        reads_database: searches read the database (``read_through``), so it can answer.
        fetcher: a fetcher is registered, so misses can be answered.
    """
    if all(up for up in (redis, database) if up is not None):
        return "healthy"
    answers = memory_tier or bool(redis) or (reads_database and bool(database)) or fetcher
    return "degraded" if answers else "unhealthy"


class CompsStore:
    """A tiered store for card searches: hot tier, database and fetchers.

    Use it as ``async with CompsStore(...) as store:``, or call :meth:`start` and
    :meth:`close` from a framework's own lifespan. Keyword arguments other than
    ``fetchers``, ``clock`` and ``valuator`` (an object, or an import path like the
    setting) override :class:`StoreSettings` fields.
    """

    def __init__(
        self,
        settings: StoreSettings | None = None,
        *,
        fetchers: Mapping[SearchType, Fetcher] | Mapping[str, Fetcher] | None = None,
        clock: Clock | None = None,
        valuator: Valuator | str | None = None,
        freshness: FreshnessPolicy | None = None,
        **overrides: Any,
    ) -> None:
        if isinstance(valuator, str):  # an import path: the ``valuator`` setting
            overrides["valuator"], valuator = valuator, None
        self.settings = _settings(settings, overrides)
        self._clock = clock or utcnow
        self._metrics = Metrics()
        self._hot = _hot_tier(self.settings, self._metrics, self._clock)
        self._near = _near_cache(self.settings, self._clock)
        # Without Redis, display data waits in process memory, a quarter of the tier's bound.
        self._display = display_store(
            _as_redis(self._hot),
            self.settings.key_prefix,
            self.settings.memory_tier_max_bytes // 4,
            self._clock,
            self._metrics,
        )
        chosen_valuator = valuator or _valuator(self.settings)
        self._database = (
            Database(self.settings, self._metrics, chosen_valuator)
            if self.settings.mode != "cache_only"
            else None
        )
        journal = _journal(self._hot, self.settings, self._metrics, self._database)
        self._writer = (
            WriteBehind(
                self._database,
                self._metrics,
                capacity=self.settings.write_buffer_size,
                batch_size=self.settings.write_batch_size,
                interval=self.settings.write_flush_interval.total_seconds(),
                attempts=self.settings.db_retry_attempts,
                pause=min(self.settings.breaker_reset_after.total_seconds(), 2.0),
                timeout=self.settings.flush_timeout.total_seconds(),
                journal=journal,
                claim_every=_claim_interval(self.settings),
                durable_wait=max(3 * self.settings.redis_socket_timeout.total_seconds(), 1.0),
            )
            if self._database is not None
            else None
        )
        self.comps = CompsRepository(
            settings=self.settings,
            clock=self._clock,
            metrics=self._metrics,
            hot=self._hot,
            near=self._near,
            database=self._database,
            writer=self._writer,
            fetchers={SearchType(k): v for k, v in (fetchers or {}).items()},
            valuator=chosen_valuator,
            policy=freshness or policy_for(self.settings),
            budget=ApiBudget(
                self.settings,
                self._clock,
                self._metrics,
                redis=getattr(self._hot, "client", None),
                engine=self._database.engine if self._database is not None else None,
            ),
            display=self._display,
        )
        self._listener = _coherence(self._hot, self._near, self.settings, self._metrics)
        redis_tier = _as_redis(self._hot)
        if redis_tier is not None:
            # Another worker's invalidation, learnt when heard or when it refuses a write.
            redis_tier.on_fenced = self.comps.learn_fence
        engine = self._database.engine if self._database is not None else None
        # The reader chooses a replica for each read; without replicas, the features read
        # on the primary themselves (on the driver's pooled connection where they may).
        database = self._database
        reader = database.read if database is not None and database.replicas.replicas else None
        self.analytics = Analytics(engine, self._clock, reader)
        self.accounts = Accounts(engine, self._clock, self.comps)
        self.backup = Backup(engine, self._clock)
        self.collections = Collections(
            engine, self._clock, self.comps, lambda: self._metrics.count("api_calls")
        )
        self.cards = Cards(engine, self._clock, reader)
        self._database_size: int | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"CompsStore(database_url={redact_url(self.settings.database_url)!r}, "
            f"redis_url={redact_url(self.settings.redis_url)!r}, mode={self.settings.mode!r})"
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the background writer. Connections open lazily, so a down server never blocks."""
        if self._writer is not None:
            self._writer.start()
        if self._listener is not None:
            self._listener.start()

    async def close(self, timeout: float | None = None) -> None:
        """Persist everything buffered, then disconnect; bounded even while the database is down.

        Waits at most ``timeout`` seconds (default: the ``flush_timeout`` setting) for the
        buffer; what it could not write is logged and counted in ``writes.dropped``.
        """
        if self._closed:
            return
        self._closed = True
        # Searches under way and their fetches land first: what they paid for is kept.
        budget = self.settings.flush_timeout.total_seconds() if timeout is None else timeout
        await self.comps.close(budget / 2)
        if self._writer is not None:
            await self._writer.close(timeout)
        await self._display.close()
        for part in (self._hot, self._near, self._database):
            if part is not None:
                await self._disconnect(part)
        self.accounts.close()

    async def _disconnect(self, part: HotTier | NearCache | Database) -> None:
        # A server that stopped answering must not hold close() up past a short grace.
        try:
            async with asyncio.timeout(_DISCONNECT_GRACE):
                await part.close()
        except TimeoutError:
            _log.warning(
                "gave up disconnecting %s after %.0f s", type(part).__name__, _DISCONNECT_GRACE
            )

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every buffered write is persisted; ``False`` if the wait ran out.

        Waits at most ``timeout`` seconds (default: the ``flush_timeout`` setting); what is
        left stays buffered, is logged, and is counted in ``writes.pending``.
        """
        if self._writer is None:
            return True
        return await self._writer.flush(timeout)

    async def create_schema(self) -> None:
        """Migrate the database to the newest revision (a development convenience)."""
        if self._database is not None:
            await migrations.upgrade_async(self._database.engine)
        else:
            await migrations.upgrade_async(self.settings.database_url)

    async def maintain(self) -> MaintenanceReport:
        """Create partitions ahead, apply the retention settings, refresh analytics views.

        Run it on a schedule, every few minutes (``kuya-store db maintain`` from cron):
        ``docs/scaling.md`` says what each step does on PostgreSQL and on SQLite.
        """
        if self._database is None:
            raise StorageUnavailableError(
                "maintenance needs the database, which cache_only never uses"
            )
        with outage_as_unavailable("maintenance needs the database"):
            return await maintain(self._database.engine, self.settings, self._clock())

    async def ping_redis(self) -> bool:
        """True when Redis answers PING; ``False`` when it does not or none is configured."""
        return self.settings.redis_url is not None and await self._hot.ping()

    async def ping_database(self) -> bool:
        """True when the database answers; ``False`` when down or unused (``cache_only``)."""
        return self._database is not None and await self._database.ping()

    async def database_size(self) -> int | None:
        """Bytes the database takes (``None`` if unused or down); remembered for ``metrics()``."""
        if self._database is None:
            return None
        try:
            self._database_size = await self._database.size_bytes()
        except Exception:
            return None
        return self._database_size

    async def health(self) -> Health:
        """Readiness: whether the store can answer, and with everything it was configured with."""
        redis_ok = await self.ping_redis()
        database_ok = await self.ping_database()
        status = health_status(
            redis=redis_ok if self.settings.redis_url is not None else None,
            database=database_ok if self._database is not None else None,
            memory_tier=self.settings.redis_url is None,
            reads_database=bool(self.comps.describe()["reads_database"]),
            fetcher=bool(self.comps.describe()["fetchers"]),
        )
        return Health(status=status, redis=redis_ok, database=database_ok)

    def _near_metrics(self, c: dict[str, int]) -> dict[str, Any]:
        near = self._near
        memory = near.memory if near is not None else None
        return {
            "entries": len(memory) if memory is not None else 0,
            "bytes": memory.bytes if memory is not None else 0,
            "evictions": memory.evictions if memory is not None else 0,
            "coherent": near is not None and near.coherent,
            "fills_refused": near.refused_fills if near is not None else 0,
            "flushes": near.flushes if near is not None else 0,
        }

    def _journal_metrics(self, c: dict[str, int]) -> dict[str, Any]:
        """The write journal: what went to it, what fell back, and the stream as last read."""
        journal = self._writer.journal if self._writer is not None else None
        stats = dict(journal.stats) if journal is not None else {}
        return {
            "enabled": journal is not None,
            "consumer": journal.consumer if journal is not None else None,
            "appended": c.get("journal_appended", 0),
            "round_trips": c.get("journal_round_trips", 0),
            "fallbacks": c.get("journal_fallbacks", 0),
            "acked": c.get("journal_acked", 0),
            "claimed": c.get("journal_claimed", 0),
            "held": c.get("journal_held", 0),
            "trusted": c.get("journal_trusted", 0),
            "decoded": c.get("journal_decoded", 0),
            "replayed": c.get("writes_replayed", 0),
            "corrupt": c.get("journal_corrupt", 0),
            "rebuffered": c.get("journal_rebuffered", 0),
            "left_on_close": c.get("journal_left", 0),
            "errors": c.get("journal_errors", 0),
            "slow": c.get("journal_slow", 0),
            "length": stats.get("length"),
            "lag": stats.get("lag"),
            "pending": stats.get("pending"),
            "trimmed_unacked": stats.get("trimmed_unacked"),
        }

    def metrics(self) -> dict[str, Any]:
        """Counters and timings as a plain dict (tier hits, API calls and calls saved, ...)."""
        snap = self._metrics.snapshot()
        c = snap["counters"]
        t = snap["timings"]
        hits = {name: c.get(f"hit_{name}", 0) for name in ("memory", "redis", "database", "stale")}
        return {
            "mode": self.settings.mode,
            "hot_tier": self._hot.name,
            "searches": c.get("searches", 0),
            "tier_hits": hits,
            "misses": c.get("misses", 0),
            "api_calls": c.get("api_calls", 0),
            "api_errors": c.get("api_errors", 0),
            "api_calls_saved": c.get("api_calls_saved", 0),
            "api_retries": c.get("api_retries", 0),
            "single_flight_waits": c.get("single_flight_waits", 0),
            "lock_waits": c.get("lock_waits", 0),
            "lock_wait_timeouts": c.get("lock_wait_timeouts", 0),
            "corrupt_entries": c.get("corrupt_entries", 0),
            "redis": {
                "errors": c.get("redis_errors", 0),
                "skipped": c.get("redis_skipped", 0),
                "breaker_opens": c.get("redis_breaker_opens", 0),
                "fences_unreplicated": c.get("fences_unreplicated", 0),
                "trusted_decodes": c.get("hot_decodes_trusted", 0),
                "validated_decodes": c.get("hot_decodes_validated", 0),
            },
            "coherence": {
                "connects": c.get("coherence_connects", 0),
                "drops": c.get("coherence_drops", 0),
                "connect_failures": c.get("coherence_connect_failures", 0),
                "invalidations_unheard": c.get("invalidations_unheard", 0),
            },
            "near_cache": self._near_metrics(c),
            "writes": {
                "pending": self._writer.pending if self._writer is not None else 0,
                "capacity": self.settings.write_buffer_size if self._writer is not None else 0,
                "written": c.get("writes_written", 0),
                "dropped": c.get("writes_dropped", 0),
                "rejected": c.get("writes_rejected", 0),
                "user_unknown": c.get("writes_user_unknown", 0),
                "refused_closed": c.get("writes_refused_closed", 0),
                "retries": c.get("write_retries", 0),
                "recoveries": c.get("write_recoveries", 0),
            },
            "journal": self._journal_metrics(c),
            "database": {
                "read_errors": c.get("db_read_errors", 0),
                "reads_skipped": c.get("db_read_skipped", 0),
                "breaker_opens": c.get("db_breaker_opens", 0),
                "slow_queries": c.get("db_slow_queries", 0),
                "slow_query_threshold_ms": self.settings.slow_query_threshold.total_seconds()
                * 1000,
                "queries": t.get("db_query", {"count": 0}),
                "pool": self._database.pool_stats() if self._database is not None else {},
                "replicas": self._database.replicas.stats() if self._database is not None else [],
                "replica_reads": c.get("replica_reads", 0),
                "replica_skipped": c.get("replica_skipped", 0),
                "replica_errors": c.get("replica_errors", 0),
                "replica_confirmed_on_primary": c.get("replica_confirmed_on_primary", 0),
                "size_bytes": self._database_size,
            },
            "budget": {
                **self.comps.budget.usage(),
                "refused": {
                    kind.value: c.get(f"budget_refused_{kind.value}", 0) for kind in SearchType
                },
                "fallbacks": c.get("budget_fallbacks", 0),
            },
            "display": {
                "kept": c.get("display_kept", 0),
                "found": c.get("display_found", 0),
                "missing": c.get("display_missing", 0),
                "corrupt": c.get("display_corrupt", 0),
                "unreachable": c.get("display_unreachable", 0),
            },
            "incremental_refreshes": c.get("incremental_refreshes", 0),
            "narrowed_fetches": c.get("narrowed_fetches", 0),
            "latency": {
                "search": t.get("search", {"count": 0}),
                "fetch": t.get("fetch", {"count": 0}),
            },
            # By label (search_type, source, outcome, tier): what Prometheus exposes.
            "labelled": snap["labelled"],
            "histograms": snap["histograms"],
        }
