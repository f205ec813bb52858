"""Scale-out PostgreSQL servers for the suite: a streaming replica, PgBouncer, pg_partman.

All on loopback, started like ``pg_server.py`` starts PostgreSQL (as the ``postgres`` user when
running as root), installed with apt when missing. Only the standard library is used.

- :class:`StreamingPair`: a primary and a hot standby made with ``pg_basebackup``; replay
  can be paused (lag) and the standby stopped and started.
- :class:`PgBouncer`: transaction pooling in front of any PostgreSQL, password auth.
- :func:`ensure_partman_installed` and :func:`install_partman`: the pg_partman extension.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Self

from kuya_store.testing.loopback import (
    HOST,
    START_TIMEOUT,
    Daemon,
    Started,
    _apt_install,
    _is_root,
    _program,
    _wait_until,
)
from kuya_store.testing.pg_server import PostgresServer
from kuya_store.testing.pg_tools import SUPERUSER, _as_postgres, _quote_ident, _quote_literal, _run

__all__ = [
    "PgBouncer",
    "StandbyServer",
    "StreamingPair",
    "ensure_partman_installed",
    "ensure_pgbouncer_installed",
    "install_partman",
]

REPLICATION_USER = "repl"
REPLICATION_PASSWORD = "kuya-repl-pw"


def ensure_pgbouncer_installed() -> str:
    """The path of ``pgbouncer``, installing the Debian package when missing (root only)."""
    return _program("pgbouncer")


def ensure_partman_installed(bin_dir: Path) -> None:
    """Install pg_partman for the PostgreSQL version of ``bin_dir`` when it is missing."""
    version = bin_dir.parent.name
    control = Path(f"/usr/share/postgresql/{version}/extension/pg_partman.control")
    if not control.is_file():
        _apt_install(f"postgresql-{version}-partman")
    if not control.is_file():
        raise RuntimeError(f"pg_partman for PostgreSQL {version} not found after installing it")


def install_partman(server: PostgresServer, database: str) -> None:
    """``CREATE EXTENSION pg_partman`` in ``database`` (superuser), usable by the login role."""
    ensure_partman_installed(server.bin_dir)
    role = _quote_ident(server.user)
    server.psql(
        "CREATE SCHEMA IF NOT EXISTS partman; "
        "CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman; "
        f"GRANT ALL ON SCHEMA partman TO {role}; "
        f"GRANT ALL ON ALL TABLES IN SCHEMA partman TO {role}; "
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA partman TO {role}; "
        f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA partman TO {role}; "
        f"GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA partman TO {role};",
        database=database,
    )


# --------------------------------------------------------------------------- replica


class StandbyServer(PostgresServer):
    """A hot standby of ``primary``: its data directory comes from ``pg_basebackup -R``."""

    def __init__(self, primary: PostgresServer) -> None:
        super().__init__(
            user=primary.user,
            password=primary.password,
            database=primary.database,
        )
        self.primary = primary

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        args = [
            str(self.bin_dir / "pg_basebackup"),
            "-h",
            HOST,
            "-p",
            str(self.primary.port),
            "-U",
            REPLICATION_USER,
            "-D",
            str(self.data_dir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ]
        _run(args, as_owner=True, env={"PGPASSWORD": REPLICATION_PASSWORD})

    def _ensure_role_and_database(self) -> None:
        """Nothing to create: the role and databases replicate from the primary."""

    def pause_replay(self) -> None:
        """Stop applying WAL: the standby falls behind while the primary writes."""
        self.psql("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.psql("SELECT pg_wal_replay_resume()")

    def wait_caught_up(self, timeout: float = 10.0) -> None:
        """Wait until the standby has replayed everything the primary has written so far."""
        target = self.primary.psql("SELECT pg_current_wal_lsn()")
        sql = f"SELECT pg_last_wal_replay_lsn() >= {_quote_literal(target)}::pg_lsn"
        if not _wait_until(lambda: self.psql(sql) == "t", timeout, interval=0.02):
            raise RuntimeError(f"standby did not reach {target} within {timeout}s")


class StreamingPair(Started):
    """A primary and one streaming hot standby on loopback (about 1.5 s to start)."""

    def __init__(self) -> None:
        self.primary = PostgresServer()
        self.replica = StandbyServer(self.primary)

    def start(self) -> Self:
        self.primary.start()
        self.primary.psql(
            "DO $kuya$ BEGIN "
            f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATION_USER}') THEN "
            f"CREATE ROLE {REPLICATION_USER} LOGIN REPLICATION "
            f"PASSWORD {_quote_literal(REPLICATION_PASSWORD)}; "
            "END IF; END $kuya$;"
        )
        self.replica.start()
        return self

    def create_database(self, name: str) -> tuple[str, str]:
        """A database on the primary; returns its primary and replica URLs once it replicated."""
        url = self.primary.create_database(name)
        self.replica.wait_caught_up()
        return url, self.replica.url_for(name)

    def cleanup(self) -> None:
        self.replica.cleanup()
        self.primary.cleanup()


# --------------------------------------------------------------------------- PgBouncer


class PgBouncer(Daemon):
    """PgBouncer in transaction pooling mode in front of one PostgreSQL (any database).

    Args:
        pool_size: server connections per database and user; small, so that many client
            transactions share few server connections, as in production.
    """

    _PIDFILE = "pgbouncer.pid"
    _LOGFILE = "pgbouncer.log"

    def __init__(
        self,
        server_host: str,
        server_port: int,
        user: str,
        password: str,
        pool_size: int = 10,
    ) -> None:
        super().__init__("kuya-pgb-")
        self.server_host = server_host
        self.server_port = server_port
        self.user = user
        self.password = password
        self.pool_size = pool_size
        self._executable: str | None = None

    @property
    def ini(self) -> Path:
        return self.base_dir / "pgbouncer.ini"

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}:{self.password}@{HOST}:{self.port}/{database}"

    def _write_config(self) -> None:
        def quoted(text: str) -> str:
            return '"' + text.replace('"', '""') + '"'

        (self.base_dir / "users.txt").write_text(f"{quoted(self.user)} {quoted(self.password)}\n")
        self.ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self.server_host} port={self.server_port}",
                    "[pgbouncer]",
                    f"listen_addr = {HOST}",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = scram-sha-256",
                    f"auth_file = {self.base_dir / 'users.txt'}",
                    "pool_mode = transaction",
                    f"default_pool_size = {self.pool_size}",
                    "max_client_conn = 2000",
                    "server_reset_query = DEALLOCATE ALL",
                    "server_reset_query_always = 1",
                    "ignore_startup_parameters = extra_float_digits",
                    f"logfile = {self.logfile}",
                    f"pidfile = {self.pidfile}",
                    "",
                ]
            )
        )
        if _is_root():
            import pwd

            entry = pwd.getpwnam(SUPERUSER)
            for path in (self.base_dir, self.ini, self.base_dir / "users.txt"):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> Self:
        if self.is_running():
            return self
        self._executable = self._executable or ensure_pgbouncer_installed()
        self._write_config()
        args = _as_postgres([self._executable, "-d", "-q", str(self.ini)])  # not as root
        result = subprocess.run(
            args, cwd="/", capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0 or not _wait_until(self.is_running, START_TIMEOUT):
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(shlex.quote(a) for a in args)} did not start: "
                f"{result.stdout}{result.stderr}\n{log[-2000:]}"
            )
        return self

    def stop(self) -> None:
        if self._alive() and not self._signal(signal.SIGTERM):
            self._signal(signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        self._remove_scratch()

    def __repr__(self) -> str:
        return f"PgBouncer(port={self.port}, server={self.server_host}:{self.server_port})"
