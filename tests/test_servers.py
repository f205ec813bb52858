"""The server harness itself: real Redis and PostgreSQL processes on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuya_store.testing.servers import PostgresServer, RedisServer, free_port

try:
    import asyncpg
except ImportError:  # pragma: no cover - the dev environment ships asyncpg
    asyncpg = None


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def _redis(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(command)
        return sock.recv(4096)


class AuthFailed(Exception):
    pass


def _query(pg: PostgresServer, sql: str, *, password: str | None = None, db: str | None = None):
    """Run ``sql`` as the login role over TCP with password auth; return the first value."""
    password = pg.password if password is None else password
    database = pg.database if db is None else db
    if asyncpg is not None:

        async def run() -> object:
            try:
                conn = await asyncpg.connect(
                    host="127.0.0.1",
                    port=pg.port,
                    user=pg.user,
                    password=password,
                    database=database,
                    timeout=5,
                )
            except asyncpg.InvalidPasswordError as exc:
                raise AuthFailed(str(exc)) from exc
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()

        return asyncio.run(run())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    result = subprocess.run(
        [
            str(pg.bin_dir / "psql"),
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            f"host=127.0.0.1 port={pg.port} user={pg.user} dbname={database}",
            "-c",
            sql,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if "password authentication failed" in result.stderr:
        raise AuthFailed(result.stderr)
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip()
    return int(out) if out.lstrip("-").isdigit() else out


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.redis
def test_redis_answers_ping(redis_server: RedisServer) -> None:
    assert redis_server.is_running()
    assert _redis(redis_server.port, b"PING\r\n") == b"+PONG\r\n"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


@pytest.mark.redis
def test_redis_kill_then_restart_on_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    assert _redis(port, b"SET harness-key 1\r\n") == b"+OK\r\n"

    redis_server.kill()
    assert not redis_server.is_running()
    assert _refused(port)

    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.is_running()
    # Persistence is off, so a restart always comes back empty.
    assert _redis(port, b"GET harness-key\r\n") == b"$-1\r\n"


def test_redis_context_manager_cleans_up(tmp_path: Path) -> None:
    port = free_port()
    with RedisServer(port=port) as server:
        base_dir = server.base_dir
        assert server.port == port
        assert server.is_running()
    assert _refused(port)
    assert not base_dir.exists()


def test_redis_start_refuses_busy_explicit_port() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = RedisServer(port=port)
        try:
            with pytest.raises(RuntimeError, match="already in use"):
                server.start()
        finally:
            shutil.rmtree(server.base_dir, ignore_errors=True)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.mark.postgres
def test_postgres_urls_and_tcp(pg_server: PostgresServer) -> None:
    port = pg_server.port
    assert pg_server.is_running()
    assert not _refused(port)
    assert pg_server.url == f"postgresql+asyncpg://kuya:kuya-test-pw@127.0.0.1:{port}/kuya_test"
    assert pg_server.dsn == f"postgresql://kuya:kuya-test-pw@127.0.0.1:{port}/kuya_test"
    assert (pg_server.bin_dir / "pg_dump").is_file()


@pytest.mark.postgres
def test_postgres_password_is_enforced(pg_server: PostgresServer) -> None:
    with pytest.raises(AuthFailed):
        _query(pg_server, "SELECT 1", password="not-the-password")
    assert _query(pg_server, "SELECT current_user") == "kuya"


@pytest.mark.postgres
def test_postgres_restart_keeps_data(pg_server: PostgresServer) -> None:
    port = pg_server.port
    _query(pg_server, "CREATE TABLE harness_restart AS SELECT 42 AS answer")

    pg_server.restart()

    assert pg_server.port == port
    assert _query(pg_server, "SELECT answer FROM harness_restart") == 42


@pytest.mark.postgres
def test_postgres_kill_and_recover(pg_server: PostgresServer) -> None:
    _query(pg_server, "CREATE TABLE harness_crash AS SELECT 7 AS answer")

    pg_server.kill()
    assert not pg_server.is_running()
    assert _refused(pg_server.port)

    pg_server.restart()
    assert _query(pg_server, "SELECT answer FROM harness_crash") == 7


@pytest.mark.postgres
def test_postgres_create_database(pg_server: PostgresServer) -> None:
    url = pg_server.create_database("kuya_harness_copy")
    assert url == pg_server.url_for("kuya_harness_copy")
    assert url.endswith(f":{pg_server.port}/kuya_harness_copy")
    # Idempotent, and owned by the login role so restores into it need no superuser.
    assert pg_server.create_database("kuya_harness_copy") == url
    assert _query(pg_server, "SELECT current_database()", db="kuya_harness_copy") == (
        "kuya_harness_copy"
    )
    _query(pg_server, "CREATE TABLE owned_here (id int)", db="kuya_harness_copy")


@pytest.mark.postgres
def test_postgres_in_caller_owned_dir(tmp_path: Path) -> None:
    base_dir = tmp_path / "pg"
    with PostgresServer(base_dir=base_dir) as server:
        assert server.data_dir.parent == base_dir
        assert _query(server, "SELECT 1") == 1
    assert _refused(server.port)
    # A caller-supplied directory is left for its owner to remove.
    assert base_dir.exists()
