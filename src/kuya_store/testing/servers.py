"""Real PostgreSQL and Redis servers on loopback, for the test suite and for local work.

Importable (``from kuya_store.testing.servers import PostgresServer, RedisServer``) and
runnable from a source checkout::

    python src/kuya_store/testing/servers.py start --state-dir .services   # writes .services/env
    python src/kuya_store/testing/servers.py stop --state-dir .services

Only the standard library is used so the harness works before the project's own
dependencies are installed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ensure_postgres_installed",
    "ensure_redis_installed",
    "free_port",
    "scratch_root",
]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# Leaves room for "/.s.PGSQL.65535" inside the 107-byte sun_path limit.
MAX_SOCKET_DIR_LEN = 80


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def scratch_root() -> str:
    """Directory for server files: ``$KUYA_TEST_TMPDIR``, else /dev/shm, else the temp dir.

    A cluster is ~1000 small files; on a disk mounted with ``discard`` creating them takes
    about a second, on tmpfs a few milliseconds.
    """
    override = os.environ.get("KUYA_TEST_TMPDIR")
    if override:
        Path(override).mkdir(parents=True, exist_ok=True)
        return override
    shm = "/dev/shm"
    with contextlib.suppress(OSError):
        usable = os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK)
        if usable and shutil.disk_usage(shm).free > 1 << 30:
            return shm
    return tempfile.gettempdir()


def _mkdtemp(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_until(predicate: Any, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    # A killed daemon is re-parented to PID 1, which may reap it late; a zombie holds no
    # sockets or locks, so it counts as dead here.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rsplit(")", 1)[-1].split()[0] != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().splitlines()[0].strip()
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def _clean_env() -> dict[str, str]:
    # Stray PG* variables (PGHOST, PGPASSWORD, PGSERVICE, ...) would redirect or alter
    # the client tools; a fixed C locale keeps initdb deterministic.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def _apt_install(package: str) -> None:
    if not _is_root() or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"{package} is not installed and cannot be installed automatically "
            "(needs root and apt-get); install it with your package manager"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Waiting on the dpkg lock lets parallel test processes install concurrently.
    install = [
        "apt-get",
        "-o",
        "DPkg::Lock::Timeout=300",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        package,
    ]
    first = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if first.returncode == 0:
        return
    # Fresh images ship without package lists, so the first attempt usually fails.
    update = subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    second = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if second.returncode != 0:
        raise RuntimeError(
            f"apt-get install {package} failed:\n{update.stderr[-2000:]}\n{second.stderr[-2000:]}"
        )


def ensure_redis_installed() -> str:
    """Return the path of ``redis-server``, installing it with apt when missing (root only)."""

    def find() -> str | None:
        found = shutil.which("redis-server")
        if found:
            return found
        for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
            if os.access(candidate, os.X_OK):
                return candidate
        return None

    path = find()
    if path is None:
        _apt_install("redis-server")
        path = find()
    if path is None:
        raise RuntimeError("redis-server not found after installing the redis-server package")
    return path


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


# --------------------------------------------------------------------------- Redis


class RedisServer:
    """A throw-away ``redis-server`` bound to 127.0.0.1 with persistence disabled."""

    def __init__(self, base_dir: Path | None = None, port: int | None = None) -> None:
        self._owns_base = base_dir is None
        self.base_dir = _mkdtemp("kuya-redis-") if base_dir is None else Path(base_dir)
        self._auto_port = port is None
        self._port = free_port() if port is None else port
        self._executable: str | None = None

    # -- properties

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}/0"

    @property
    def pidfile(self) -> Path:
        return self.base_dir / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.base_dir / "redis.log"

    @property
    def pid(self) -> int | None:
        return _read_pid(self.pidfile)

    # -- lifecycle

    def start(self) -> Self:
        """Start and wait for PING; a no-op if this server is already up."""
        if self.pid is not None and _pid_alive(self.pid) and self.is_running():
            return self
        self._executable = self._executable or ensure_redis_installed()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            if _port_open(self._port):
                # Something else owns the port; a PING there would be answered by a stranger.
                if attempt + 1 < attempts:
                    self._port = free_port()
                    continue
                raise RuntimeError(f"port {self._port} is already in use")
            self._launch()
            if _wait_until(self.is_running, START_TIMEOUT):
                # Only the first successful start may pick a port; restarts must keep it.
                self._auto_port = False
                return self
            self.kill()
            if attempt + 1 < attempts and not _port_open(self._port):
                self._port = free_port()
                continue
            break
        raise RuntimeError(
            f"redis-server did not answer PING on port {self._port} within {START_TIMEOUT}s; "
            f"log tail:\n{_log_tail(self.logfile)}"
        )

    def _launch(self) -> None:
        assert self._executable is not None
        self.pidfile.unlink(missing_ok=True)
        cmd = [
            self._executable,
            "--bind",
            HOST,
            "--port",
            str(self._port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--dir",
            str(self.base_dir),
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.logfile),
        ]
        result = subprocess.run(
            cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-server failed to start (exit {result.returncode}): "
                f"{result.stdout}{result.stderr}\n{_log_tail(self.logfile)}"
            )

    def stop(self) -> None:
        """Shut down without saving; SIGKILL if it does not let go of the port in time."""
        if self.is_running():
            with contextlib.suppress(OSError):
                self._command(b"SHUTDOWN NOSAVE\r\n", expect_close=True)
            if not _wait_until(lambda: not _port_open(self._port), STOP_TIMEOUT):
                self.kill()
                return
        elif self.pid is not None and _pid_alive(self.pid):
            # Alive but not answering PING: hung, so only a signal will do.
            self.kill()
            return
        self.pidfile.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; returns once the port refuses connections."""
        pid = self.pid
        if pid is not None and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not _wait_until(lambda: not _port_open(self._port), STOP_TIMEOUT):
                raise RuntimeError(f"redis-server on port {self._port} did not die")
        self.pidfile.unlink(missing_ok=True)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port with an empty dataset."""
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        try:
            reply = self._command(b"PING\r\n")
        except OSError:
            return False
        return reply.startswith(b"+PONG")

    def cleanup(self) -> None:
        """Stop the server and remove its directory if this object created it."""
        self.stop()
        if self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- raw protocol

    def _command(self, payload: bytes, expect_close: bool = False) -> bytes:
        with socket.create_connection((HOST, self._port), timeout=0.5) as sock:
            sock.sendall(payload)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except (TimeoutError, ConnectionResetError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                if not expect_close and chunk.endswith(b"\r\n"):
                    break
            return b"".join(chunks)

    # -- context manager

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"RedisServer(port={self._port}, base_dir={str(self.base_dir)!r})"


# --------------------------------------------------------------------------- PostgreSQL


class PostgresServer:
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"PostgresServer(port={self._port}, base_dir={str(self.base_dir)!r})"


# --------------------------------------------------------------------------- script mode


def _state_path(state_dir: Path) -> Path:
    return state_dir / "state.json"


def _load_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(_state_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _servers_from_state(state: dict[str, Any]) -> tuple[PostgresServer, RedisServer]:
    pg_state = state["postgres"]
    pg = PostgresServer(
        base_dir=Path(pg_state["base_dir"]),
        port=pg_state["port"],
        user=pg_state["user"],
        password=pg_state["password"],
        database=pg_state["database"],
    )
    pg._owns_base = True
    pg._socket_dir = Path(pg_state["socket_dir"])
    pg._owns_socket_dir = pg_state.get("owns_socket_dir", False)
    pg._bin_dir = Path(pg_state["bin_dir"])
    redis_state = state["redis"]
    redis = RedisServer(base_dir=Path(redis_state["base_dir"]), port=redis_state["port"])
    redis._owns_base = True
    return pg, redis


def _state_of(pg: PostgresServer, redis: RedisServer) -> dict[str, Any]:
    return {
        "postgres": {
            "port": pg.port,
            "base_dir": str(pg.base_dir),
            "data_dir": str(pg.data_dir),
            "socket_dir": str(pg.socket_dir),
            "owns_socket_dir": pg._owns_socket_dir,
            "bin_dir": str(pg.bin_dir),
            "log": str(pg.logfile),
            "pid": pg.pid,
            "user": pg.user,
            "password": pg.password,
            "database": pg.database,
        },
        "redis": {
            "port": redis.port,
            "base_dir": str(redis.base_dir),
            "log": str(redis.logfile),
            "pid": redis.pid,
        },
    }


def _ours_and_alive(server: PostgresServer | RedisServer) -> bool:
    pid = server.pid
    return pid is not None and _pid_alive(pid) and server.is_running()


def _env_lines(pg: PostgresServer, redis: RedisServer) -> list[str]:
    return [
        f"export KUYA_TEST_POSTGRES_URL={shlex.quote(pg.url)}",
        f"export KUYA_TEST_POSTGRES_DSN={shlex.quote(pg.dsn)}",
        f"export KUYA_TEST_REDIS_URL={shlex.quote(redis.url)}",
    ]


def _cmd_start(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(state_dir)
    if state is not None:
        pg, redis = _servers_from_state(state)
        if _ours_and_alive(pg) and _ours_and_alive(redis):
            print(f"# reusing servers recorded in {_state_path(state_dir)}", file=sys.stderr)
        else:
            for server in (pg, redis):
                if server.base_dir.exists():
                    server.cleanup()
            state = None
    if state is None:
        # Server dirs live under scratch_root() rather than state_dir: the server user
        # must be able to traverse every ancestor, which e.g. /root does not allow.
        pg = PostgresServer()
        redis = RedisServer()
        try:
            pg.start()
            redis.start()
        except BaseException:
            pg.cleanup()
            redis.cleanup()
            raise
    lines = _env_lines(pg, redis)
    _state_path(state_dir).write_text(json.dumps(_state_of(pg, redis), indent=2) + "\n")
    (state_dir / "env").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cmd_stop(state_dir: Path) -> int:
    state = _load_state(state_dir)
    if state is None:
        print(f"# no servers recorded in {state_dir}", file=sys.stderr)
        return 0
    pg, redis = _servers_from_state(state)
    errors = []
    for server in (redis, pg):
        if not server.base_dir.exists():
            # Gone with a reboot or a tmp cleaner; whatever owns the port now is not ours.
            continue
        try:
            server.cleanup()
        except Exception as exc:
            errors.append(f"{server!r}: {exc}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    _state_path(state_dir).unlink(missing_ok=True)
    (state_dir / "env").unlink(missing_ok=True)
    print(f"# stopped postgres on {pg.port} and redis on {redis.port}", file=sys.stderr)
    return 0


def _cmd_status(state_dir: Path) -> int:
    state = _load_state(state_dir)
    if state is None:
        print("not started")
        return 1
    pg, redis = _servers_from_state(state)
    pg_up, redis_up = pg.is_running(), redis.is_running()
    print(f"postgres port {pg.port}: {'up' if pg_up else 'down'}")
    print(f"redis    port {redis.port}: {'up' if redis_up else 'down'}")
    return 0 if pg_up and redis_up else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run PostgreSQL and Redis for kuya-store tests.")
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(__file__).resolve().parent.parent / ".services",
        help="where state.json and env are kept (default: <repo>/.services)",
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    commands = {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}
    return commands[args.command](state_dir)


if __name__ == "__main__":
    sys.exit(main())
