"""A throw-away ``redis-server`` on loopback, and its installation on demand.

Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from pathlib import Path
from typing import Self

from kuya_store.testing.loopback import (
    HOST,
    START_TIMEOUT,
    Daemon,
    _log_tail,
    _port_open,
    _program,
    _wait_until,
)

__all__ = ["RedisServer", "ensure_redis_installed"]


def ensure_redis_installed() -> str:
    """Return the path of ``redis-server``, installing it with apt when missing (root only)."""
    return _program("redis-server")


class RedisServer(Daemon):
    """A throw-away ``redis-server`` bound to 127.0.0.1 with persistence disabled."""

    _PIDFILE = "redis.pid"
    _LOGFILE = "redis.log"

    def __init__(self, base_dir: Path | None = None, port: int | None = None) -> None:
        super().__init__("kuya-redis-", base_dir, port)
        self._executable: str | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}/0"

    # -- lifecycle

    def start(self) -> Self:
        """Start and wait for PING; a no-op if this server is already up."""
        if self._alive() and self.is_running():
            return self
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(self._START_ATTEMPTS):
            if _port_open(self._port):
                # Something else owns the port; a PING there would be answered by a stranger.
                if self._next_port(attempt):
                    continue
                raise RuntimeError(f"port {self._port} is already in use")
            self._launch()
            if _wait_until(self.is_running, START_TIMEOUT):
                # Only the first successful start may pick a port; restarts must keep it.
                self._auto_port = False
                return self
            self.kill()
            if not _port_open(self._port) and self._next_port(attempt):
                continue
            break
        raise RuntimeError(
            f"redis-server did not answer PING on port {self._port} within {START_TIMEOUT}s; "
            f"log tail:\n{_log_tail(self.logfile)}"
        )

    def _launch(self) -> None:
        self._executable = self._executable or ensure_redis_installed()
        self.pidfile.unlink(missing_ok=True)
        self._daemonize([self._executable, *self._launch_args()])

    def _launch_args(self) -> list[str]:
        """The command line after the executable: a data node that never persists."""
        return [*self._common_args(), "--save", "", "--appendonly", "no"]

    def _common_args(self) -> list[str]:
        """Options every ``redis-server`` of the harness runs with: loopback, daemon, own files."""
        return [
            "--bind",
            HOST,
            "--port",
            str(self._port),
            "--daemonize",
            "yes",
            "--dir",
            str(self.base_dir),
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.logfile),
        ]

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
            if not self._closed():
                self.kill()
                return
        elif self._alive():
            # Alive but not answering PING: hung, so only a signal will do.
            self.kill()
            return
        self.pidfile.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; returns once the port refuses connections."""
        if self._alive() and not self._signal(signal.SIGKILL):
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
        self._remove_scratch()

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
