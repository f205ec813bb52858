"""Processes on loopback for the harness: free ports, scratch directories, waiting, apt.

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
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["HOST", "START_TIMEOUT", "STOP_TIMEOUT", "free_port", "scratch_root"]

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
