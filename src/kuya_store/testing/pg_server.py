"""A private PostgreSQL cluster on loopback: started, stopped, crashed, and given SQL.

The programs it runs come from :mod:`~kuya_store.testing.pg_tools` (installed on demand).
Only the standard library is used.
"""

from __future__ import annotations

import shlex
import shutil
import signal
from pathlib import Path
from typing import Self

from kuya_store.testing.loopback import (
    HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Daemon,
    _log_tail,
    _mkdtemp,
    _pid_alive,
    _port_open,
    _wait_until,
)
from kuya_store.testing.pg_tools import (
    SUPERUSER,
    _hand_over,
    _initdb,
    _quote_ident,
    _quote_literal,
    _run,
    ensure_postgres_installed,
)

__all__ = ["PostgresServer", "ensure_postgres_installed"]

# Leaves room for "/.s.PGSQL.65535" inside the 107-byte sun_path limit.
MAX_SOCKET_DIR_LEN = 80


class PostgresServer(Daemon):
    """A private PostgreSQL cluster on 127.0.0.1 with password auth over TCP.

    fsync and full-page writes are off for speed. Committed data still survives ``kill()``
    followed by ``restart()``: it is in the OS page cache, which outlives the server.
    """

    SUPERUSER = SUPERUSER
    _LOGFILE = "postgres.log"

    def __init__(
        self,
        base_dir: Path | None = None,
        port: int | None = None,
        user: str = "kuya",
        password: str = "kuya-test-pw",
        database: str = "kuya_test",
    ) -> None:
        super().__init__("kuya-pg-", base_dir, port)
        self.user = user
        self.password = password
        self.database = database
        self._bin_dir: Path | None = None
        self._socket_dir: Path | None = None
        self._owns_socket_dir = False

    # -- properties

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_postgres_installed()
        return self._bin_dir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "postmaster.pid"

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            candidate = self.base_dir / "sock"
            if len(str(candidate)) <= MAX_SOCKET_DIR_LEN:
                self._socket_dir = candidate
            else:
                self._socket_dir = _mkdtemp("kuya-pgs-")
                self._owns_socket_dir = True
        return self._socket_dir

    @property
    def url(self) -> str:
        """SQLAlchemy URL (``postgresql+asyncpg://``) of the main test database."""
        return self.url_for(self.database)

    @property
    def dsn(self) -> str:
        """asyncpg / libpq DSN (``postgresql://``) of the main test database."""
        return self.dsn_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}:{self.password}@{HOST}:{self._port}/{database}"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{HOST}:{self._port}/{database}"

    # -- files

    def _prepare_dirs(self) -> None:
        for path in (self.base_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            _hand_over(path)

    def _initdb(self) -> None:
        if not (self.data_dir / "PG_VERSION").is_file():
            _initdb(self.bin_dir, self.data_dir)

    def _pg_ctl_start(self) -> bool:
        options = " ".join(
            [
                f"-p {self._port}",
                f"-k {shlex.quote(str(self.socket_dir))}",
                f"-c listen_addresses={HOST}",
                # fsync=off still hands WAL to the OS at commit, so a killed server loses
                # nothing; synchronous_commit=off would keep commits in shared memory for up
                # to wal_writer_delay and kill() would silently drop them.
                "-c fsync=off",
                "-c full_page_writes=off",
            ]
        )
        result = _run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-w",
                "-t",
                str(int(START_TIMEOUT * 3)),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.logfile),
                "-o",
                options,
                "start",
            ],
            as_owner=True,
            check=False,
        )
        return result.returncode == 0

    # -- lifecycle

    def start(self) -> Self:
        """initdb on first use, start the server, and ensure the login role and database."""
        if self.is_running() and self._alive():
            return self
        self._prepare_dirs()
        self._initdb()
        self._clear_stale_pidfile()
        for attempt in range(self._START_ATTEMPTS):
            if _port_open(self._port):
                if self._next_port(attempt):
                    continue
                raise RuntimeError(f"port {self._port} is already in use")
            if self._pg_ctl_start():
                break
            # Another process may have grabbed the auto-picked port in the meantime.
            if _port_open(self._port) and self._next_port(attempt):
                continue
            raise RuntimeError(
                f"PostgreSQL failed to start on port {self._port}; log tail:\n"
                f"{_log_tail(self.logfile)}"
            )
        if not _wait_until(self.is_running, START_TIMEOUT):
            raise RuntimeError(
                f"PostgreSQL started but port {self._port} does not accept connections; "
                f"log tail:\n{_log_tail(self.logfile)}"
            )
        self._auto_port = False
        self._ensure_role_and_database()
        return self

    def stop(self) -> None:
        """Fast shutdown (clean checkpoint); data stays for the next start."""
        if not self._alive():
            self._clear_stale_pidfile()
            return
        result = _run(
            [str(self.bin_dir / "pg_ctl"), "-w", "-D", str(self.data_dir), "-m", "fast", "stop"],
            as_owner=True,
            check=False,
        )
        if result.returncode != 0 or not self._closed():
            self.kill()

    def kill(self) -> None:
        """Crash the server (immediate shutdown, no checkpoint); the port stops accepting."""
        pid = self.pid
        if pid is None or not _pid_alive(pid):
            self._clear_stale_pidfile()
            return
        _run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-w",
                "-t",
                str(int(STOP_TIMEOUT)),
                "-D",
                str(self.data_dir),
                "-m",
                "immediate",
                "stop",
            ],
            as_owner=True,
            check=False,
        )
        # pg_ctl may have removed the pidfile of a postmaster that still lingers.
        if not self._signal(signal.SIGKILL, pid):
            raise RuntimeError(f"PostgreSQL on port {self._port} did not die")
        self._clear_stale_pidfile()

    def restart(self) -> Self:
        """Stop (if running) and start on the same port with the same data directory."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the server and remove the directories this object created."""
        if self.data_dir.is_dir():
            self.stop()
        self._remove_scratch()
        if self._owns_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _clear_stale_pidfile(self) -> None:
        # After a SIGKILL the postmaster may linger as an unreaped zombie; postgres would
        # then mistake the stale lock file for a live server and refuse to start.
        pid = self.pid
        if pid is not None and not _pid_alive(pid):
            self.pidfile.unlink(missing_ok=True)

    # -- SQL as superuser over the Unix socket (local auth is trust)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser and return psql's unaligned, tuples-only output."""
        result = _run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self._port),
                "-U",
                self.SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            as_owner=False,
        )
        return result.stdout.strip()

    def _ensure_role_and_database(self) -> None:
        role = _quote_ident(self.user)
        password = _quote_literal(self.password)
        self.psql(
            "DO $kuya$ BEGIN "
            f"IF EXISTS (SELECT FROM pg_roles WHERE rolname = {_quote_literal(self.user)}) THEN "
            f"ALTER ROLE {role} WITH LOGIN CREATEDB PASSWORD {password}; "
            f"ELSE CREATE ROLE {role} WITH LOGIN CREATEDB PASSWORD {password}; "
            "END IF; END $kuya$;"
        )
        self.create_database(self.database)

    def create_database(self, name: str) -> str:
        """Create database ``name`` owned by the login role (if missing); return its URL."""
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = {_quote_literal(name)}")
        if exists != "1":
            self.psql(f"CREATE DATABASE {_quote_ident(name)} OWNER {_quote_ident(self.user)}")
        return self.url_for(name)
