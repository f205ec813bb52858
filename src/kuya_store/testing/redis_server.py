"""A throw-away ``redis-server`` on loopback, and its installation on demand.

Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Self

from kuya_store.testing.loopback import (
    HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Started,
    _apt_install,
    _log_tail,
    _mkdtemp,
    _pid_alive,
    _port_open,
    _read_pid,
    _wait_until,
    free_port,
)

__all__ = ["RedisServer", "ensure_redis_installed"]


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


class RedisServer(Started):
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
        self._daemonize(cmd)

    def _daemonize(self, cmd: list[str]) -> None:
        """Run a ``redis-server`` command line that forks into the background; fail loudly."""
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

    def __repr__(self) -> str:
        return f"RedisServer(port={self._port}, base_dir={str(self.base_dir)!r})"
