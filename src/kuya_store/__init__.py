"""kuya-store: a tiered store for trading-card price apps.

Redis (or in-process memory) in front, PostgreSQL or SQLite behind, and the paid
marketplace API last: every search answered by the cheapest tier that holds a fresh
result, every result kept for history and analytics.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from kuya_store import migrations
from kuya_store.accounts import Accounts, SavedSearch, User
from kuya_store.alerts import Alert
from kuya_store.analytics import (
    Analytics,
    DailySearches,
    PriceTrend,
    SearchStats,
    TopSearch,
    TrendPoint,
)
from kuya_store.backup import Backup, ImportReport, PurgeReport
from kuya_store.cards import CardMatch, Cards
from kuya_store.chart import render_price_chart
from kuya_store.clock import ManualClock
from kuya_store.collections import (
    Binder,
    CollectedCard,
    Collections,
    CollectionSummary,
    CollectionValue,
    RevalueReport,
)
from kuya_store.db.maintenance import MaintenanceReport
from kuya_store.errors import (
    BudgetExhaustedError,
    FetcherError,
    InvalidInputError,
    KuyaStoreError,
    NotFoundError,
    PermanentFetchError,
    StorageUnavailableError,
    StoreClosedError,
    TransientFetchError,
)
from kuya_store.fetching import Fetcher
from kuya_store.freshness import FixedFreshness, FreshnessPolicy, SaleRateFreshness
from kuya_store.models import (
    CompsResult,
    FetchRequest,
    FetchResult,
    FetchStats,
    Health,
    Invalidation,
    Listing,
    PriceSnapshot,
    SearchFilters,
    SearchType,
    Source,
)
from kuya_store.paging import PagedFetcher, paged
from kuya_store.pricing import (
    DefaultValuator,
    GradeOutcome,
    GradingOutlook,
    TitleInfo,
    Valuator,
    grading_outlook,
    normalize_card,
    parse_sold_date,
    parse_title,
)
from kuya_store.repository import CompsRepository
from kuya_store.settings import StoreSettings
from kuya_store.store import CompsStore
from kuya_store.sync import SyncCompsStore

try:
    __version__ = version("kuya-store")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Accounts",
    "Alert",
    "Analytics",
    "Backup",
    "Binder",
    "BudgetExhaustedError",
    "CardMatch",
    "Cards",
    "CollectedCard",
    "CollectionSummary",
    "CollectionValue",
    "Collections",
    "CompsRepository",
    "CompsResult",
    "CompsStore",
    "DailySearches",
    "DefaultValuator",
    "FetchRequest",
    "FetchResult",
    "FetchStats",
    "Fetcher",
    "FetcherError",
    "FixedFreshness",
    "FreshnessPolicy",
    "GradeOutcome",
    "GradingOutlook",
    "Health",
    "ImportReport",
    "InvalidInputError",
    "Invalidation",
    "KuyaStoreError",
    "Listing",
    "MaintenanceReport",
    "ManualClock",
    "NotFoundError",
    "PagedFetcher",
    "PermanentFetchError",
    "PriceSnapshot",
    "PriceTrend",
    "PurgeReport",
    "RevalueReport",
    "SaleRateFreshness",
    "SavedSearch",
    "SearchFilters",
    "SearchStats",
    "SearchType",
    "Source",
    "StorageUnavailableError",
    "StoreClosedError",
    "StoreSettings",
    "SyncCompsStore",
    "TitleInfo",
    "TopSearch",
    "TransientFetchError",
    "TrendPoint",
    "User",
    "Valuator",
    "__version__",
    "grading_outlook",
    "migrations",
    "normalize_card",
    "paged",
    "parse_sold_date",
    "parse_title",
    "render_price_chart",
]
