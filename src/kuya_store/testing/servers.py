"""Real PostgreSQL and Redis servers on loopback, for the test suite and for local work.

Importable (``from kuya_store.testing.servers import PostgresServer, RedisServer``) and
runnable from a source checkout::

    python src/kuya_store/testing/servers.py start --state-dir .services   # writes .services/env
    python src/kuya_store/testing/servers.py stop --state-dir .services

Each server kind has a module of its own (:mod:`~kuya_store.testing.pg_server`,
:mod:`~kuya_store.testing.redis_server`, on :mod:`~kuya_store.testing.loopback`); this one
gathers them and keeps the state of the servers the command line started.

Only the standard library is used so the harness works before the project's own
dependencies are installed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:
    # Run as a file, perhaps before the project's dependencies are installed: the sibling
    # modules load as the package's without running kuya_store/__init__.py, which needs them.
    import types

    _here = Path(__file__).resolve().parent
    for _name, _path in (("kuya_store", _here.parent), ("kuya_store.testing", _here)):
        _package = types.ModuleType(_name)
        _package.__path__ = [str(_path)]
        sys.modules.setdefault(_name, _package)

from kuya_store.testing.loopback import (
    HOST,
    START_TIMEOUT,
    STOP_TIMEOUT,
    _pid_alive,
    free_port,
    scratch_root,
)
from kuya_store.testing.pg_server import PostgresServer, ensure_postgres_installed
from kuya_store.testing.redis_server import RedisServer, ensure_redis_installed

__all__ = [
    "HOST",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "PostgresServer",
    "RedisServer",
    "ensure_postgres_installed",
    "ensure_redis_installed",
    "free_port",
    "scratch_root",
]


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
