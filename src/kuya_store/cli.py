"""The ``kuya-store`` command: migrations, a demo, health checks."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kuya_store import migrations
from kuya_store.chart import render_price_chart
from kuya_store.errors import InvalidInputError, KuyaStoreError
from kuya_store.settings import StoreSettings, redact_url

__all__ = ["main"]

_T = TypeVar("_T")
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _settings(database_url: str | None, redis_url: str | None = None) -> StoreSettings:
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    if redis_url:
        overrides["redis_url"] = redis_url
    return StoreSettings(**overrides)


def _run(work: Callable[[], _T]) -> _T:
    """Run a command body; errors become a message and an exit code (2 bad input, 1 other)."""
    try:
        return work()
    except InvalidInputError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except KuyaStoreError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
    except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
        err.print(
            f"[bold red]error:[/] cannot reach the database: {type(exc).__name__}. "
            "Check the URL (--database-url or KUYA_DATABASE_URL) and that the server is up."
        )
        sys.exit(1)


def _aio(coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coro)


database_option = click.option(
    "--database-url",
    envvar=None,
    help="Database URL; defaults to KUYA_DATABASE_URL, DATABASE_URL, then ./kuya_comps.db.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kuya-store")
def main() -> None:
    """kuya-store: tiered store for trading-card price apps."""


@main.group()
def db() -> None:
    """Schema migrations (kuya-store's own Alembic history)."""


@db.command("upgrade")
@database_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(database_url: str | None, revision: str) -> None:
    """Migrate the database up to REVISION."""

    def work() -> None:
        settings = _settings(database_url)
        migrations.upgrade(settings.database_url, revision)
        now = migrations.current(settings.database_url)
        console.print(f"{redact_url(settings.database_url)} is at revision [bold]{now}[/]")

    _run(work)


@db.command("downgrade")
@database_option
@click.argument("revision")
def db_downgrade(database_url: str | None, revision: str) -> None:
    """Migrate the database down to REVISION ('base' removes every kuya-store table)."""

    def work() -> None:
        settings = _settings(database_url)
        migrations.downgrade(settings.database_url, revision)
        now = migrations.current(settings.database_url)
        console.print(f"{redact_url(settings.database_url)} is at revision [bold]{now}[/]")

    _run(work)


@db.command("current")
@database_option
def db_current(database_url: str | None) -> None:
    """Print the revision the database is at, and the newest one available."""

    def work() -> None:
        settings = _settings(database_url)
        now = migrations.current(settings.database_url)
        head = migrations.head()
        state = "up to date" if now == head else "needs 'kuya-store db upgrade'"
        console.print(f"current: {now or '(not migrated)'}  head: {head}  ({state})")

    _run(work)


@db.command("maintain")
@database_option
@click.option(
    "--search-log-retention",
    help="Drop search-log rows older than this (seconds or ISO 8601, e.g. P30D); "
    "defaults to KUYA_SEARCH_LOG_RETENTION, else keep all.",
)
@click.option(
    "--snapshot-retention",
    help="Drop price snapshots older than this; defaults to KUYA_SNAPSHOT_RETENTION, "
    "else keep all.",
)
def db_maintain(
    database_url: str | None, search_log_retention: str | None, snapshot_retention: str | None
) -> None:
    """Create partitions ahead, apply retention, refresh analytics views (run from cron)."""
    from kuya_store.store import CompsStore

    overrides: dict[str, Any] = {}
    if search_log_retention:
        overrides["search_log_retention"] = search_log_retention
    if snapshot_retention:
        overrides["snapshot_retention"] = snapshot_retention

    async def work() -> Any:
        settings = _settings(database_url)
        async with CompsStore(settings, **overrides) as store:
            return await store.maintain()

    report = _run(lambda: _aio(work()))
    console.print(
        f"created {len(report.created)} partition(s), dropped {len(report.dropped)}, "
        f"moved {report.moved_rows} row(s) out of default partitions, "
        f"deleted {report.deleted_rows} old row(s), "
        f"refreshed {len(report.views_refreshed)} view(s)"
        + (" (pg_partman keeps the partitions too)" if report.partman else "")
    )
    for name in report.created:
        console.print(f"  + {name}")
    for name in report.dropped:
        console.print(f"  - {name}")


@main.command()
@database_option
@click.option("--redis-url", help="Redis URL; defaults to KUYA_REDIS_URL, REDIS_URL, then memory.")
def health(database_url: str | None, redis_url: str | None) -> None:
    """Check that the database and Redis answer (exit 1 when nothing does)."""
    from kuya_store.store import CompsStore

    async def check() -> Any:
        async with CompsStore(_settings(database_url, redis_url)) as store:
            return await store.health()

    result = _run(lambda: _aio(check()))
    console.print_json(result.model_dump_json())
    if result.status == "unhealthy":
        sys.exit(1)


@main.command()
@click.option(
    "--database-url",
    envvar=None,
    help="Database URL for the demo data; defaults to ./kuya-demo.db (never the environment's).",
)
@click.option("--query", default="2023 Topps Chrome Victor Wembanyama #1", show_default=True)
@click.option("--latency", default=0.4, show_default=True, help="Simulated API latency (s).")
@click.option(
    "--chart",
    "chart_path",
    default="kuya-price-history.svg",
    show_default=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Where to write the card's price-history chart (SVG).",
)
def demo(database_url: str | None, query: str, latency: float, chart_path: Path) -> None:
    """Show each tier answering, with timings and the API calls saved (offline).

    Writes to ./kuya-demo.db unless --database-url is given; KUYA_* variables are ignored.
    """
    from kuya_store.demo import demo_settings

    _run(lambda: _aio(_demo(demo_settings(database_url), query, latency, chart_path)))


async def _demo(settings: StoreSettings, query: str, latency: float, chart_path: Path) -> None:
    from kuya_store.demo import FakeMarketplace
    from kuya_store.models import SearchFilters
    from kuya_store.store import CompsStore

    market = FakeMarketplace(latency=latency)
    fetchers = {"sold": market.sold, "active": market.active}
    console.print(f"[bold]kuya-store demo[/] on {redact_url(settings.database_url)}")
    await migrations.upgrade_async(settings.database_url)
    table = Table("step", "query", "source", "listings", "ms", "API calls")
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("first search", query, {}),
        ("same card, other spelling", query.lower().replace("#", "") + "  ", {}),
        ("raw copies only (filtered from the same fetch)", query, {"raw_only": True}),
        ("active listings", query, {"search_type": "active"}),
    ]

    async def run(store: CompsStore, label: str, text: str, options: dict[str, Any]) -> Any:
        kind = options.pop("search_type", "sold")
        started = time.perf_counter()
        result = await store.comps.search(text, kind, filters=SearchFilters(**options))
        elapsed = (time.perf_counter() - started) * 1000
        table.add_row(
            label,
            text.strip(),
            result.source.value,
            str(len(result.listings)),
            f"{elapsed:.1f}",
            str(market.call_count),
        )
        return result

    async with CompsStore(settings, fetchers=fetchers) as store:
        first = None
        for label, text, options in steps:
            result = await run(store, label, text, dict(options))
            first = first or result
        await store.flush()
        saved = store.metrics()["api_calls_saved"]
    async with CompsStore(settings, fetchers=fetchers) as store:
        await run(store, "after a restart (new process, empty memory)", query, {})
        saved += store.metrics()["api_calls_saved"]
        history = await store.analytics.price_history(query)
    await asyncio.to_thread(chart_path.write_text, render_price_chart(history))
    console.print(table)
    console.print(
        f"upstream API calls: [bold]{market.call_count}[/] for {len(steps) + 1} searches; "
        f"calls saved: [bold green]{saved}[/]"
    )
    if first is not None and first.snapshot is not None:
        snap = first.snapshot
        console.print(
            f"{snap.card_identifier}: market value {snap.market_value}, quick sale "
            f"{snap.quick_sale}, patient sale {snap.patient_sale} "
            f"(FMV {snap.fmv_low}..{snap.fmv_high}, {snap.sample_size} sales, "
            f"confidence {snap.volume_confidence})"
        )
    console.print(f"price-history chart ({len(history)} day(s)) written to [bold]{chart_path}[/]")
    await _print_counts(settings)


async def _print_counts(settings: StoreSettings) -> None:
    from kuya_store.db.engine import create_engine

    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            counts = []
            for name in ("searches", "listing_cache", "search_results", "price_snapshots"):
                total = (await conn.execute(sa.text(f"SELECT count(*) FROM {name}"))).scalar_one()
                counts.append(f"{name}={total}")
    finally:
        await engine.dispose()
    console.print("database now holds: " + ", ".join(counts))


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


@main.command()
@database_option
@click.option("--since", type=click.DateTime(), help="Only searches after this UTC moment.")
def stats(database_url: str | None, since: datetime | None) -> None:
    """Search statistics and the most searched cards."""
    from kuya_store.store import CompsStore

    async def collect() -> Any:
        async with CompsStore(_settings(database_url)) as store:
            moment = since.replace(tzinfo=UTC) if since is not None else None
            return (
                await store.analytics.search_stats(moment),
                await store.analytics.top_searches(10, moment),
            )

    summary, top = _run(lambda: _aio(collect()))
    console.print(
        f"searches {summary.total}, cache hit rate {summary.cache_hit_rate:.1%}, "
        f"API calls {summary.api_calls}, API calls saved {summary.api_calls_saved}, "
        f"p50 {summary.p50_ms} ms, p95 {summary.p95_ms} ms"
    )
    table = Table("card", "searches", "cache hits", "last searched (UTC)")
    for row in top:
        table.add_row(
            row.query,
            str(row.searches),
            str(row.cache_hits),
            f"{row.last_searched_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@main.group("export")
def export_group() -> None:
    """Export data (the plan's "critical data only" backup)."""


@export_group.command("snapshots")
@database_option
@click.argument("file", type=click.Path(dir_okay=False, writable=True, path_type=Path))
def export_snapshots(database_url: str | None, file: Path) -> None:
    """Write every price snapshot to FILE as CSV (as psql's COPY .. CSV HEADER would)."""
    from kuya_store.store import CompsStore

    async def work() -> int:
        async with CompsStore(_settings(database_url)) as store:
            total = await store.backup.count_snapshots()
            with _progress() as bar:
                task = bar.add_task("exporting snapshots", total=total)
                count = await store.backup.export_snapshots_csv(
                    file, progress=lambda n: bar.update(task, completed=n)
                )
                bar.update(task, completed=count)
            return count

    count = _run(lambda: _aio(work()))
    console.print(f"{count} snapshot(s) written to {file}")


@main.group("import")
def import_group() -> None:
    """Import data exported by 'kuya-store export' or psql COPY."""


@import_group.command("snapshots")
@database_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_snapshots(database_url: str | None, file: Path) -> None:
    """Upsert the price snapshots of a CSV FILE; all rows or none."""
    from kuya_store.store import CompsStore

    async def work() -> Any:
        lines = max(sum(1 for _ in file.open("rb")) - 1, 0)
        async with CompsStore(_settings(database_url)) as store:
            with _progress() as bar:
                task = bar.add_task("importing snapshots", total=lines)
                return await store.backup.import_snapshots_csv(
                    file, progress=lambda n: bar.update(task, completed=n)
                )

    report = _run(lambda: _aio(work()))
    console.print(f"{report.rows} row(s): {report.inserted} inserted, {report.updated} updated")


@main.command("purge-since")
@database_option
@click.argument("moment", type=click.DateTime())
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_since(database_url: str | None, moment: datetime, yes: bool) -> None:
    """Delete the searches and snapshots created after MOMENT (UTC): a partial rollback."""
    from kuya_store.store import CompsStore

    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    if not yes:
        click.confirm(
            f"Delete every search and price snapshot created after {aware.isoformat()}?",
            abort=True,
        )

    async def work() -> Any:
        async with CompsStore(_settings(database_url)) as store:
            return await store.backup.purge_since(aware)

    report = _run(lambda: _aio(work()))
    console.print(
        f"deleted {report.searches} search(es), {report.search_results} link(s), "
        f"{report.snapshots} snapshot(s)"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
