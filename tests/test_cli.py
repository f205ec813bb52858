"""The ``kuya-store`` command: migrations, health, the demo, and errors a person can act on."""

from __future__ import annotations

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
    assert "revision 0002" in result.output
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
