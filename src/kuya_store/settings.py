"""Every knob of a store: from arguments, ``KUYA_*`` variables, ``DATABASE_URL``/``REDIS_URL``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    ByteSize,
    Field,
    ImportString,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from kuya_store.errors import InvalidInputError
from kuya_store.tiers.redis_urls import (
    REDIS_SCHEMES,
    RedisTarget,
    parse_redis_url,
    redact_redis_url,
)

__all__ = ["DEFAULT_DATABASE_URL", "Mode", "StoreSettings", "pgbouncer_requested", "redact_url"]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./kuya_comps.db"

Mode = Literal["cache_only", "dual_write", "read_through"]
"""Rollout mode, after the migration plan's phases: cache only, dual-write, read-through."""

_DRIVERS = {
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "sqlite": "sqlite+aiosqlite",
}


def redact_url(url: str | None) -> str | None:
    """A URL fit for logs and messages: the password, if any, replaced by ``***``."""
    if url is None:
        return None
    try:
        if url.split(":", 1)[0].lower() in REDIS_SCHEMES:
            return redact_redis_url(url)
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Unparseable: show the scheme only, since anything after it could be a secret.
        return url.split(":", 1)[0] + ":<unparseable>"


_SECRET_MIN_LENGTH = 32  # 128 bits of hex at least; secrets.token_hex(32) gives 64

_YES = frozenset({"1", "true", "yes", "on"})
_NO = frozenset({"0", "false", "no", "off"})


def pgbouncer_requested(url: URL) -> bool:
    """Whether a database URL asks for PgBouncer mode with ``?pgbouncer=true``.

    Raises:
        ValueError: the parameter is there but is not a boolean word.
    """
    value = url.query.get("pgbouncer")
    if value is None:
        return False
    word = (value[-1] if isinstance(value, tuple) else value).strip().lower()
    if word not in _YES | _NO:
        raise ValueError(f"has pgbouncer={word!r}; use pgbouncer=true or pgbouncer=false")
    return word in _YES


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be a positive duration")
    return value


class StoreSettings(BaseSettings):
    """Configuration of a :class:`~kuya_store.CompsStore`; defaults follow the migration plan.

    With nothing set, the store runs embedded: SQLite at ``./kuya_comps.db`` and the
    in-process memory hot tier. Durations accept seconds (``1800``) or ISO 8601 (``PT30M``).
    """

    model_config = SettingsConfigDict(
        env_prefix="KUYA_",
        extra="forbid",
        populate_by_name=True,
        validate_default=True,
        frozen=True,
    )

    # Where data lives.
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices("KUYA_DATABASE_URL", "DATABASE_URL"),
        repr=False,
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("KUYA_REDIS_URL", "REDIS_URL"),
        repr=False,
    )
    mode: Mode = "read_through"
    valuator: ImportString[Any] | None = None
    """A ``Valuator`` class or factory as ``"package.module:Name"``; ``None`` is the default."""
    filter_upstream: bool = False
    """Send ``SearchFilters`` upstream (and key results by them) instead of filtering titles."""
    key_prefix: str = Field("kuya", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")

    # Hot tier TTLs (the migration plan's Redis cache: sold 30 min, active 5 min).
    sold_ttl: timedelta = timedelta(minutes=30)
    active_ttl: timedelta = timedelta(minutes=5)
    # Database freshness: how old a stored fetch may be and still answer (the plan's Phase 3).
    sold_fresh_for: timedelta = timedelta(minutes=30)
    active_fresh_for: timedelta = timedelta(minutes=5)
    # How long a sold result answers: "sale_rate" sets each card's window from how often it
    # sells, from ``sold_min_fresh_for`` (a card that keeps selling) to ``sold_max_fresh_for``
    # (one that never does); "fixed" keeps ``sold_fresh_for``.
    freshness_policy: Literal["fixed", "sale_rate"] = "sale_rate"
    sold_min_fresh_for: timedelta = timedelta(minutes=10)
    """The shortest window of the sale-rate policy: a card that sells every few minutes is
    asked again this often, so its answers miss no more sales than a 30-minute cache keyed
    by every parameter (whose answers are mostly fresh fetches)."""
    sold_max_fresh_for: timedelta = timedelta(hours=24)
    expected_new_sales: float = Field(0.25, gt=0, le=100)
    """How many sales a sold answer may be missing, on average, before it is asked again."""
    # Paged fetchers: pages asked for a full fetch when ``params`` says nothing.
    default_pages: int = Field(1, ge=1, le=100)
    # The API budget: upstream requests per search type per UTC day (and hour); None: none.
    api_budget: int | None = Field(None, ge=0)
    api_budget_hourly: int | None = Field(None, ge=0)
    # When a cached listing is due for a refresh (``listing_cache.ttl``).
    listing_refresh_after: timedelta = timedelta(hours=24)
    # Display data (``Listing.extra``) kept by listing beyond its result's hot-tier entry,
    # so a database answer shows it again; set it to what the marketplace terms allow.
    display_ttl: timedelta = timedelta(hours=6)
    # Oldest stored result that may be served as ``source="stale"`` when the fetcher fails.
    max_stale: timedelta = timedelta(days=7)

    # In-process near-cache in front of Redis, and the memory hot tier without Redis.
    near_cache_ttl: timedelta = timedelta(seconds=5)
    """How long a near-cache entry lives while it is not kept coherent through Redis."""
    near_cache_size: int = Field(10_000, ge=0)
    near_cache_max_bytes: ByteSize = Field(ByteSize(128 * 2**20), ge=0)
    """About how much memory the near-cache may take (``"128MiB"``, or bytes)."""
    near_cache_coherence: bool = True
    """Keep every worker's near-cache coherent through Redis ``CLIENT TRACKING``."""
    memory_tier_size: int = Field(10_000, ge=1)
    memory_tier_max_bytes: ByteSize = Field(ByteSize(256 * 2**20), ge=1)
    """About how much memory the memory hot tier may take (``"256MiB"``, or bytes)."""

    # Database connections.
    pool_size: int = Field(5, ge=1, le=1000)
    max_overflow: int = Field(10, ge=0, le=1000)
    pool_timeout: timedelta = timedelta(seconds=10)
    pool_recycle: timedelta = timedelta(minutes=30)
    pool_check_window: timedelta = timedelta(seconds=1)
    """A read takes a connection a read used this recently without checking it first (0: never)."""
    statement_cache_size: int = Field(500, ge=0)
    db_connect_timeout: timedelta = timedelta(seconds=5)
    db_command_timeout: timedelta = timedelta(seconds=30)
    sqlite_busy_timeout: timedelta = timedelta(seconds=5)
    slow_query_threshold: timedelta = timedelta(milliseconds=200)
    echo_sql: bool = False

    # Scaling the persistent tier out (docs/scaling.md).
    pgbouncer: bool = False
    """Connections go through PgBouncer in transaction mode (also ``?pgbouncer=true`` on a URL)."""
    replica_urls: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    """Streaming replicas that answer reads; ``KUYA_REPLICA_URLS`` takes them comma-separated."""
    max_replica_lag: timedelta = timedelta(seconds=5)
    """How far behind the primary a replica may be and still answer a read."""
    search_log_retention: timedelta | None = None
    """``maintain()`` drops search-log partitions older than this; ``None`` keeps them all."""
    snapshot_retention: timedelta | None = None
    """``maintain()`` drops price-snapshot partitions older than this; ``None`` keeps them all."""

    # Redis connections and circuit breaker.
    redis_socket_timeout: timedelta = timedelta(milliseconds=250)
    redis_connect_timeout: timedelta = timedelta(milliseconds=500)
    redis_max_connections: int = Field(50, ge=1)
    redis_pool_timeout: timedelta = timedelta(seconds=1)
    breaker_failure_threshold: int = Field(3, ge=1)
    breaker_reset_after: timedelta = timedelta(seconds=5)
    hot_tier_secret: SecretStr | None = Field(None, repr=False)
    """Seals the values and journal entries written to Redis, so every process holding it
    reads the others' back without validating them again; ``None``: each process trusts
    only its own writes (``KUYA_HOT_TIER_SECRET``, at least 32 characters; docs/tiers.md)."""

    # Fetcher calls.
    fetch_timeout: timedelta = timedelta(seconds=30)
    fetch_attempts: int = Field(3, ge=1, le=20)
    fetch_backoff: timedelta = timedelta(milliseconds=200)
    single_flight_lock_ttl: timedelta = timedelta(seconds=10)
    """How long a dead lock holder blocks others; a live holder extends it every third."""
    single_flight_wait: timedelta | None = None
    """How long a process waits for another's fetch; ``None``: the longest a fetch can take."""
    fetch_failure_notice: timedelta = timedelta(seconds=2)
    """How long a failed fetch's lock tells the processes waiting on it to give up."""

    # Search log written behind requests.
    write_buffer_size: int = Field(10_000, ge=1)
    write_batch_size: int = Field(500, ge=1, le=10_000)
    write_flush_interval: timedelta = timedelta(milliseconds=250)
    db_retry_attempts: int = Field(3, ge=1, le=20)
    flush_timeout: timedelta = timedelta(seconds=30)
    """How long ``flush()`` and ``close()`` wait for the buffer when not given a timeout."""

    # The write journal on Redis (docs/resilience.md, "The durable write path").
    durable_writes: bool = True
    """With Redis: each record is on a Redis Stream before ``search()`` returns."""
    journal_max_length: int = Field(100_000, ge=100, le=100_000_000)
    """Entries the stream keeps (``MAXLEN ~``); what it trims unwritten is counted."""
    journal_claim_idle: timedelta = timedelta(seconds=10)
    """How long a worker's unwritten entries wait before the others take them over."""

    @field_validator(
        "sold_ttl",
        "active_ttl",
        "sold_fresh_for",
        "sold_min_fresh_for",
        "sold_max_fresh_for",
        "active_fresh_for",
        "listing_refresh_after",
        "max_stale",
        "display_ttl",
        "pool_timeout",
        "pool_recycle",
        "db_connect_timeout",
        "db_command_timeout",
        "sqlite_busy_timeout",
        "slow_query_threshold",
        "redis_socket_timeout",
        "redis_connect_timeout",
        "redis_pool_timeout",
        "breaker_reset_after",
        "fetch_timeout",
        "fetch_backoff",
        "single_flight_lock_ttl",
        "fetch_failure_notice",
        "write_flush_interval",
        "flush_timeout",
        "max_replica_lag",
        "journal_claim_idle",
    )
    @classmethod
    def _check_positive(cls, value: timedelta) -> timedelta:
        return _positive(value)

    @field_validator("single_flight_wait", "search_log_retention", "snapshot_retention")
    @classmethod
    def _check_optional_positive(cls, value: timedelta | None) -> timedelta | None:
        return None if value is None else _positive(value)

    @model_validator(mode="after")
    def _check_fetch_timing(self) -> Self:
        # Settings that only work together: a waiter that gives up while the holder is
        # still within its attempts pays a second time; a lock that expires between two
        # extensions lets another process in.
        longest = self.longest_fetch
        if self.single_flight_wait is not None and self.single_flight_wait < longest:
            raise ValueError(
                f"single_flight_wait: must be at least {longest.total_seconds():g}s, the "
                "longest a fetch can take (fetch_attempts x fetch_timeout plus backoff)"
            )
        if self.journal_claim_idle < 2 * self.write_flush_interval:
            raise ValueError(
                "journal_claim_idle: must be at least 2 x write_flush_interval, so a live "
                "worker's entries are not taken from it between two of its reads"
            )
        if self.sold_max_fresh_for < self.sold_fresh_for:
            raise ValueError("sold_max_fresh_for: must not be shorter than sold_fresh_for")
        if self.sold_max_fresh_for < self.sold_min_fresh_for:
            raise ValueError("sold_max_fresh_for: must not be shorter than sold_min_fresh_for")
        if self.single_flight_lock_ttl < 3 * self.redis_socket_timeout:
            raise ValueError(
                "single_flight_lock_ttl: must be at least 3 x redis_socket_timeout "
                f"({3 * self.redis_socket_timeout.total_seconds():g}s), so an extension "
                "always lands before the lock expires"
            )
        return self

    @model_validator(mode="after")
    def _check_replicas(self) -> Self:
        if self.replica_urls and self.is_sqlite:
            raise ValueError("replica_urls: replicas need a PostgreSQL primary, not SQLite")
        return self

    @field_validator("near_cache_ttl", "pool_check_window")
    @classmethod
    def _check_near_ttl(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _check_database_url(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be a non-empty URL string")
        try:
            url = make_url(value.strip())
        except (ArgumentError, ValueError):
            raise ValueError(
                "is not a valid database URL; expected e.g. "
                "'sqlite+aiosqlite:///./kuya_comps.db' or 'postgresql+asyncpg://user:pw@host/db'"
            ) from None
        driver = _DRIVERS.get(url.drivername)
        if driver is None:
            raise ValueError(
                f"has unsupported scheme {url.drivername!r}; "
                "use 'postgresql+asyncpg://' or 'sqlite+aiosqlite://'"
            )
        url = url.set(drivername=driver)
        if driver.startswith("postgresql") and not url.database:
            raise ValueError("names no database; add '/dbname' to the URL")
        if pgbouncer_requested(url) and not driver.startswith("postgresql"):
            raise ValueError("asks for pgbouncer, which only fronts PostgreSQL")
        return url.render_as_string(hide_password=False)

    @field_validator("replica_urls", mode="before")
    @classmethod
    def _check_replica_urls(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError("must be a list of URLs or a comma-separated string")
        urls = [cls._check_database_url(url) for url in value]
        if any(not url.startswith("postgresql") for url in urls):
            raise ValueError("must be PostgreSQL URLs: SQLite has no replicas")
        return urls

    @field_validator("hot_tier_secret", mode="before")
    @classmethod
    def _check_hot_tier_secret(cls, value: Any) -> Any:
        # The reasons never quote the value: it is a secret, even when it is a bad one.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if len(value) < _SECRET_MIN_LENGTH:
            raise ValueError(
                f"must be at least {_SECRET_MIN_LENGTH} characters "
                "(python -c 'import secrets; print(secrets.token_hex(32))' makes one)"
            )
        if value != value.strip():
            raise ValueError("must not begin or end with whitespace")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text") from None
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _check_redis_url(cls, value: Any) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise ValueError("must be a URL string or None")
        value = value.strip()
        parse_redis_url(value)  # says what is wrong, without the password
        return str(value)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            error = InvalidInputError.from_validation_error(exc)
            # A rule over several settings names the one to change in its message.
            name, _, reason = error.reason.partition(": ")
            if error.field == "input" and name in type(self).model_fields:
                error = InvalidInputError(name, reason)
            raise error from None

    def __repr_args__(self) -> Any:
        yield "database_url", redact_url(self.database_url)
        yield "redis_url", redact_url(self.redis_url)
        yield "replica_urls", [redact_url(url) for url in self.replica_urls]
        yield from super().__repr_args__()

    @property
    def database(self) -> URL:
        """The database URL as a SQLAlchemy ``URL`` (its repr hides the password)."""
        return make_url(self.database_url)

    @property
    def redis_target(self) -> RedisTarget | None:
        """What ``redis_url`` names: one Redis, a Sentinel-managed master or a Cluster."""
        return None if self.redis_url is None else parse_redis_url(self.redis_url)

    @property
    def is_sqlite(self) -> bool:
        """True when the persistent tier is SQLite."""
        return self.database_url.startswith("sqlite")

    @property
    def longest_fetch(self) -> timedelta:
        """The longest one fetch can take: every attempt timing out, plus the backoff."""
        attempts = self.fetch_attempts
        return attempts * self.fetch_timeout + (attempts - 1) * 16 * self.fetch_backoff

    @property
    def flight_wait(self) -> timedelta:
        """How long a process waits for another process's fetch of the same result."""
        if self.single_flight_wait is not None:
            return self.single_flight_wait
        return self.longest_fetch + timedelta(seconds=1)

    def hot_ttl(self, search_type: str) -> timedelta:
        """How long the hot tier keeps a result of this search type."""
        return self.sold_ttl if search_type == "sold" else self.active_ttl

    def fresh_for(self, search_type: str) -> timedelta:
        """How old a stored fetch of this search type may be and still answer."""
        return self.sold_fresh_for if search_type == "sold" else self.active_fresh_for
