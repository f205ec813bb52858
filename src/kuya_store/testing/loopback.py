"""Processes on loopback for the harness: free ports, scratch directories, waiting, apt,
and the base of every server process (:class:`Daemon`).

Shared by every server kind (:mod:`~kuya_store.testing.pg_server`,
:mod:`~kuya_store.testing.redis_server`, :mod:`~kuya_store.testing.pg_cluster`,
:mod:`~kuya_store.testing.redis_ha`). Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "HOST",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "Daemon",
    "Started",
    "free_port",
    "scratch_root",
]

_T = TypeVar("_T")

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


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


def _installed(find: Callable[[], _T | None], package: str, what: str) -> _T:
    """What ``find`` finds, installing the apt ``package`` first when it finds nothing."""
    found = find()
    if found is None:
        _apt_install(package)
        found = find()
    if found is None:
        raise RuntimeError(f"{what} not found after installing the {package} package")
    return found


def _program(name: str) -> str:
    """The path of program ``name``, installing the apt package of that name if missing."""

    def find() -> str | None:
        found = shutil.which(name)
        if found:
            return found
        for candidate in (f"/usr/bin/{name}", f"/usr/sbin/{name}"):
            if os.access(candidate, os.X_OK):
                return candidate
        return None

    return _installed(find, name, name)


class Started:
    """A server, or a set of them, as a ``with`` block: started on entering, cleaned up on
    leaving, and cleaned up too when the start fails (``__exit__`` would not run then)."""

    def start(self) -> Self:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class Daemon(Started):
    """A server process on a loopback port with a scratch directory of its own.

    Args:
        prefix: name prefix of the scratch directory made when ``base_dir`` is not given
            (that one is removed again by :meth:`_remove_scratch`).
        port: a fixed port; without one a free port is picked, and a start that finds it
            taken meanwhile may pick another (:meth:`_next_port`).
    """

    _PIDFILE = "server.pid"
    _LOGFILE = "server.log"
    _START_ATTEMPTS = 3

    def __init__(self, prefix: str, base_dir: Path | None = None, port: int | None = None) -> None:
        self._owns_base = base_dir is None
        self.base_dir = _mkdtemp(prefix) if base_dir is None else Path(base_dir)
        self._auto_port = port is None
        self._port = free_port() if port is None else port

    @property
    def port(self) -> int:
        return self._port

    @property
    def pidfile(self) -> Path:
        return self.base_dir / self._PIDFILE

    @property
    def logfile(self) -> Path:
        return self.base_dir / self._LOGFILE

    @property
    def pid(self) -> int | None:
        return _read_pid(self.pidfile)

    def _alive(self) -> bool:
        """Whether the process its pidfile names is alive (answering or not)."""
        pid = self.pid
        return pid is not None and _pid_alive(pid)

    def is_running(self) -> bool:
        """Whether the port accepts connections."""
        return _port_open(self._port)

    def _closed(self) -> bool:
        """Wait for the port to refuse connections; whether it did within the stop timeout."""
        return _wait_until(lambda: not _port_open(self._port), STOP_TIMEOUT)

    def _signal(self, signum: int, pid: int | None = None) -> bool:
        """Send ``signum`` to ``pid`` (default: the pidfile's) if alive, then :meth:`_closed`."""
        pid = self.pid if pid is None else pid
        if pid is not None and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return self._closed()

    def _next_port(self, attempt: int) -> bool:
        """Move to a fresh port for another start attempt, if the port was picked here."""
        if self._auto_port and attempt + 1 < self._START_ATTEMPTS:
            self._port = free_port()
            return True
        return False

    def _remove_scratch(self) -> None:
        if self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self._port}, base_dir={str(self.base_dir)!r})"
