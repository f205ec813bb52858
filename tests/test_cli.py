"""The ``kuya-store`` command: migrations, health, the demo, and errors a person can act on."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from kuya_store.cli import main

SECRET = "cl1-Secret"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_db_commands_round_trip(runner: CliRunner, database_url: str) -> None:
    result = runner.invoke(main, ["db", "current", "--database-url", database_url])
    assert result.exit_code == 0, result.output
    assert "not migrated" in result.output
    result = runner.invoke(main, ["db", "upgrade", "--database-url", database_url])
    assert result.exit_code == 0, result.output
    assert "revision 0008" in result.output
    result = runner.invoke(main, ["db", "current", "--database-url", database_url])
    assert "up to date" in result.output
    result = runner.invoke(main, ["db", "downgrade", "base", "--database-url", database_url])
    assert result.exit_code == 0, result.output
    assert "revision None" in result.output


def test_database_url_from_environment(runner: CliRunner, sqlite_url: str) -> None:
    result = runner.invoke(main, ["db", "upgrade"], env={"KUYA_DATABASE_URL": sqlite_url})
    assert result.exit_code == 0, result.output


def test_bad_url_is_a_clear_error_without_the_password(runner: CliRunner) -> None:
    result = runner.invoke(main, ["db", "upgrade", "--database-url", f"mysql://u:{SECRET}@h/d"])
    assert result.exit_code == 2
    assert "database_url" in result.output
    assert "unsupported scheme" in result.output
    assert SECRET not in result.output


def test_unreachable_database_exit_code(runner: CliRunner) -> None:
    url = f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:1/nothing"
    result = runner.invoke(main, ["db", "current", "--database-url", url])
    assert result.exit_code == 1
    assert "cannot reach the database" in result.output
    assert SECRET not in result.output


def test_every_command_has_help(runner: CliRunner) -> None:
    for args in (
        ["--help"],
        ["db", "--help"],
        ["db", "upgrade", "--help"],
        ["demo", "--help"],
        ["health", "--help"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0
        assert "Usage" in result.output


def test_health_on_the_embedded_default(runner: CliRunner, sqlite_url: str) -> None:
    result = runner.invoke(main, ["health", "--database-url", sqlite_url])
    assert result.exit_code == 0, result.output
    assert '"status": "healthy"' in result.output


def test_demo_runs_offline_and_shows_each_tier(runner: CliRunner, sqlite_url: str) -> None:
    result = runner.invoke(main, ["demo", "--database-url", sqlite_url, "--latency", "0"])
    assert result.exit_code == 0, result.output
    for source in ("api", "memory", "database"):
        assert source in result.output
    assert "calls saved" in result.output


def _seed(url: str) -> None:
    import kuya_store as ks
    from kuya_store.demo import FakeMarketplace

    market = FakeMarketplace(listings=8)
    with ks.SyncCompsStore(database_url=url, fetchers={"sold": market.sold}) as store:
        store.create_schema()
        for card in ("1986 Fleer Michael Jordan #57", "2003 Topps Chrome LeBron James #111"):
            store.comps.search(card)
            store.comps.search(card)


def test_stats_export_import_and_purge(
    runner: CliRunner, database_url: str, tmp_path: Path
) -> None:
    _seed(database_url)
    stats = runner.invoke(main, ["stats", "--database-url", database_url])
    assert stats.exit_code == 0, stats.output
    assert "searches 4" in stats.output and "cache hit rate 50.0%" in stats.output

    csv_file = tmp_path / "prices.csv"
    exported = runner.invoke(
        main, ["export", "snapshots", str(csv_file), "--database-url", database_url]
    )
    assert exported.exit_code == 0, exported.output
    assert "2 snapshot(s) written" in exported.output
    assert csv_file.read_text().startswith("id,card_identifier,search_id,snapshot_date")

    imported = runner.invoke(
        main, ["import", "snapshots", str(csv_file), "--database-url", database_url]
    )
    assert imported.exit_code == 0, imported.output
    assert "2 row(s)" in imported.output

    bad = tmp_path / "bad.csv"
    rows = list(csv.reader(csv_file.read_text().splitlines()))
    rows[1][rows[0].index("market_value")] = "-5.00"
    with bad.open("w", newline="") as out:
        csv.writer(out).writerows(rows[:2])
    rejected = runner.invoke(
        main, ["import", "snapshots", str(bad), "--database-url", database_url]
    )
    assert rejected.exit_code == 2
    assert "line 2" in rejected.output and "market_value" in rejected.output

    refused = runner.invoke(
        main, ["purge-since", "2000-01-01", "--database-url", database_url], input="n\n"
    )
    assert refused.exit_code == 1  # asked, answered no: nothing deleted
    purged = runner.invoke(
        main, ["purge-since", "2000-01-01", "--yes", "--database-url", database_url]
    )
    assert purged.exit_code == 0, purged.output
    assert "deleted 4 search(es)" in purged.output and "2 snapshot(s)" in purged.output


def test_demo_writes_a_chart(runner: CliRunner, sqlite_url: str, tmp_path: Path) -> None:
    chart = tmp_path / "chart.svg"
    result = runner.invoke(
        main, ["demo", "--database-url", sqlite_url, "--latency", "0", "--chart", str(chart)]
    )
    assert result.exit_code == 0, result.output
    assert chart.read_text().startswith("<svg")
    assert "chart (1 day(s)) written" in result.output


def test_demo_never_writes_where_the_environment_points(
    runner: CliRunner,
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    import sqlalchemy as sa
    from redis import asyncio as aioredis
    from sqlalchemy.ext.asyncio import create_async_engine

    app_file = tmp_path / "app.db"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # A shell set up for the application: its database, its Redis.
    env = {
        "KUYA_DATABASE_URL": postgres_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{app_file}",
        "KUYA_REDIS_URL": redis_url,
        "REDIS_URL": redis_url,
        "KUYA_KEY_PREFIX": key_prefix,
    }
    result = runner.invoke(main, ["demo", "--latency", "0"], env=env)
    assert result.exit_code == 0, result.output
    assert "kuya-demo.db" in result.output
    assert (work / "kuya-demo.db").stat().st_size > 0
    assert not app_file.exists()

    async def untouched() -> tuple[int, list[bytes]]:
        engine = create_async_engine(postgres_url)
        try:
            async with engine.connect() as conn:
                tables = (
                    await conn.execute(
                        sa.text(
                            "SELECT count(*) FROM information_schema.tables"
                            " WHERE table_schema = 'public'"
                        )
                    )
                ).scalar_one()
        finally:
            await engine.dispose()
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{key_prefix}*")]
        finally:
            await client.aclose()
        return int(tables), keys

    assert asyncio.run(untouched()) == (0, [])
    # Told explicitly, it writes there.
    target = f"sqlite+aiosqlite:///{tmp_path / 'chosen.db'}"
    result = runner.invoke(main, ["demo", "--latency", "0", "--database-url", target], env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "chosen.db").exists()
