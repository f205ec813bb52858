"""A private PostgreSQL cluster on loopback, and its installation on demand.

Only the standard library is used.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
from pathlib import Path
from typing import Self

from kuya_store.testing.loopback import (
    HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Started,
    _apt_install,
    _is_root,
    _log_tail,
    _mkdtemp,
    _pid_alive,
    _port_open,
    _read_pid,
    _wait_until,
    free_port,
)

__all__ = ["PostgresServer", "ensure_postgres_installed"]

# Leaves room for "/.s.PGSQL.65535" inside the 107-byte sun_path limit.
MAX_SOCKET_DIR_LEN = 80


def _clean_env() -> dict[str, str]:
    # Stray PG* variables (PGHOST, PGPASSWORD, PGSERVICE, ...) would redirect or alter
    # the client tools; a fixed C locale keeps initdb deterministic.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _find_postgres_bin() -> Path | None:
    def version_key(path: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in path.parent.name.split("."))
        except ValueError:
            return (0,)

    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()]
    if debian:
        return max(debian, key=version_key)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    return None


def ensure_postgres_installed() -> Path:
    """Return the PostgreSQL server bin dir (newest version), installing it with apt if needed."""
    bin_dir = _find_postgres_bin()
    if bin_dir is None:
        _apt_install("postgresql")
        bin_dir = _find_postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    return bin_dir


# initdb takes about a second while copying a fresh cluster takes a few milliseconds, so
# each process runs initdb once per PostgreSQL version and copies the result.
_TEMPLATES: dict[Path, Path] = {}


@atexit.register
def _remove_templates() -> None:
    for template in _TEMPLATES.values():
        shutil.rmtree(template.parent, ignore_errors=True)
    _TEMPLATES.clear()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresServer(Started):
    """A private PostgreSQL cluster on 127.0.0.1 with password auth over TCP.

    fsync and full-page writes are off for speed. Committed data still survives ``kill()``
    followed by ``restart()``: it is in the OS page cache, which outlives the server.
    """

    SUPERUSER = "postgres"

    def __init__(
        self,
        base_dir: Path | None = None,
        port: int | None = None,
        user: str = "kuya",
        password: str = "kuya-test-pw",
        database: str = "kuya_test",
    ) -> None:
        self._owns_base = base_dir is None
        self.base_dir = _mkdtemp("kuya-pg-") if base_dir is None else Path(base_dir)
        self._auto_port = port is None
        self._port = free_port() if port is None else port
        self.user = user
        self.password = password
        self.database = database
        self._bin_dir: Path | None = None
        self._socket_dir: Path | None = None
        self._owns_socket_dir = False

    # -- properties

    @property
    def port(self) -> int:
        return self._port

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_postgres_installed()
        return self._bin_dir

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def logfile(self) -> Path:
        return self.base_dir / "postgres.log"

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

    @property
    def pid(self) -> int | None:
        return _read_pid(self.data_dir / "postmaster.pid")

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}:{self.password}@{HOST}:{self._port}/{database}"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{HOST}:{self._port}/{database}"

    # -- running binaries

    def _as_postgres(self, args: list[str]) -> list[str]:
        # initdb, pg_ctl and postgres refuse to run as root.
        if not _is_root():
            return args
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", self.SUPERUSER, "--", *args]

    def _run(
        self, args: list[str], *, as_owner: bool, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd = self._as_postgres(args) if as_owner else args
        # cwd "/" because runuser keeps the caller's cwd, which postgres may not be able to read.
        result = subprocess.run(
            cmd,
            cwd="/",
            env=_clean_env(),
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(shlex.quote(a) for a in args)} failed "
                f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result

    def _prepare_dirs(self) -> None:
        for path in (self.base_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            self._hand_over(path)

    def _hand_over(self, path: Path) -> None:
        """Make ``path`` usable by the server user when running as root."""
        if not _is_root():
            return
        entry = pwd.getpwnam(self.SUPERUSER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, 0o755)
        # The server user must be able to walk down to its directories; grant search
        # (not read) permission on ancestors that lack it, e.g. private pytest temp roots.
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").is_file():
            return
        template = _TEMPLATES.get(self.bin_dir)
        if template is None or not (template / "PG_VERSION").is_file():
            holder = _mkdtemp("kuya-pg-template-")
            self._hand_over(holder)
            template = holder / "data"
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "--no-sync",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    self.SUPERUSER,
                    "-D",
                    str(template),
                ],
                as_owner=True,
            )
            _TEMPLATES[self.bin_dir] = template
        self._run(["cp", "-a", str(template), str(self.data_dir)], as_owner=True)

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
        result = self._run(
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
        if self.is_running() and self.pid is not None and _pid_alive(self.pid):
            return self
        self._prepare_dirs()
        self._initdb()
        self._clear_stale_pidfile()
        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            if _port_open(self._port):
                if attempt + 1 < attempts:
                    self._port = free_port()
                    continue
                raise RuntimeError(f"port {self._port} is already in use")
            if self._pg_ctl_start():
                break
            # Another process may have grabbed the auto-picked port in the meantime.
            if attempt + 1 < attempts and _port_open(self._port):
                self._port = free_port()
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
        pid = self.pid
        if pid is None or not _pid_alive(pid):
            self._clear_stale_pidfile()
            return
        result = self._run(
            [str(self.bin_dir / "pg_ctl"), "-w", "-D", str(self.data_dir), "-m", "fast", "stop"],
            as_owner=True,
            check=False,
        )
        if result.returncode != 0 or not _wait_until(
            lambda: not _port_open(self._port), STOP_TIMEOUT
        ):
            self.kill()

    def kill(self) -> None:
        """Crash the server (immediate shutdown, no checkpoint); the port stops accepting."""
        pid = self.pid
        if pid is None or not _pid_alive(pid):
            self._clear_stale_pidfile()
            return
        self._run(
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
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not _wait_until(lambda: not _port_open(self._port), STOP_TIMEOUT):
            raise RuntimeError(f"PostgreSQL on port {self._port} did not die")
        self._clear_stale_pidfile()

    def restart(self) -> Self:
        """Stop (if running) and start on the same port with the same data directory."""
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        return _port_open(self._port)

    def cleanup(self) -> None:
        """Stop the server and remove the directories this object created."""
        if self.data_dir.is_dir():
            self.stop()
        if self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        if self._owns_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _clear_stale_pidfile(self) -> None:
        # After a SIGKILL the postmaster may linger as an unreaped zombie; postgres would
        # then mistake the stale lock file for a live server and refuse to start.
        pidfile = self.data_dir / "postmaster.pid"
        pid = _read_pid(pidfile)
        if pid is not None and not _pid_alive(pid):
            pidfile.unlink(missing_ok=True)

    # -- SQL as superuser over the Unix socket (local auth is trust)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser and return psql's unaligned, tuples-only output."""
        result = self._run(
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

    # -- context manager

    def __repr__(self) -> str:
        return f"PostgresServer(port={self._port}, base_dir={str(self.base_dir)!r})"
