"""CPU per request, one worker at a time: the model behind the whole-app benchmark's figures.

On cores that both apps keep busy, requests per second is the CPU the app gets divided by the
CPU one request costs. This measures that cost apart from the machine's load: each contender
runs as one uvicorn worker (no supervisor), the fake upstream answers, and a client keeps
8 requests in flight:

- misses: never-seen queries, each asked once (the worker fetches, and kuya-store persists,
  values and journals what it fetched);
- hits: the same paths again, in another order.

A worker's CPU is its own ``utime + stime`` from ``/proc`` (its background writes included:
the measurement waits until the worker is idle), PostgreSQL's and Redis's the sum over their
processes. Run with ``python -m bench --only http-cpu``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx

import kuya_store as ks
from bench.http_load import _drop_keys, _env, _get, _serving, scratch_database, search_means
from bench.stats import Target
from kuya_store.testing.servers import free_port

_TICK = os.sysconf("SC_CLK_TCK")
IN_FLIGHT = 8


def process_cpu(pid: int) -> float:
    """Seconds of CPU ``pid`` has used (user + system), 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(root: int) -> float:
    """Seconds of CPU used by ``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += process_cpu(pid)
        todo.extend(children.get(pid, ()))
    return total


def paths_for(count: int, seed: int) -> list[str]:
    """``count`` never-seen request paths: 75% sold, 25% active, a third with a filter."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    paths = []
    for index in range(count):
        route = "/comps" if rng.random() < 0.75 else "/active"
        extra = rng.choice(({}, {}, {"raw_only": "true"}))
        query = f"2024 Topps Chrome Rookie {tag} #{index}"
        paths.append(f"{route}?{urlencode({'query': query, **extra})}")
    return paths


async def _drive(base: str, paths: list[str]) -> int:
    """Ask every path with ``IN_FLIGHT`` in flight; return how many failed."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)
    failed = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failed
        while not queue.empty():
            response = await client.get(queue.get_nowait())
            failed += response.status_code != 200

    async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(IN_FLIGHT)))
    return failed


@dataclass(frozen=True)
class Cost:
    """Milliseconds of CPU per request, in the worker and in the servers."""

    worker_ms: float
    servers_ms: float
    failed: int


async def _idle(pid: int, settle: float = 0.6) -> None:
    """Wait until ``pid`` has used next to no CPU for ``settle`` seconds (its writes done)."""
    deadline = time.monotonic() + 60
    last = tree_cpu(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(settle)
        now = tree_cpu(pid)
        if now - last < 0.01:
            return
        last = now


async def _cost(base: str, pid: int, servers: list[int], paths: list[str]) -> Cost:
    await _idle(pid)
    worker0, servers0 = tree_cpu(pid), sum(tree_cpu(p) for p in servers)
    failed = await _drive(base, paths)
    await _idle(pid)
    worker1, servers1 = tree_cpu(pid), sum(tree_cpu(p) for p in servers)
    n = len(paths)
    return Cost(1000 * (worker1 - worker0) / n, 1000 * (servers1 - servers0) / n, failed)


def server_pids(pg_url: str, redis_url: str) -> list[int]:
    """The PostgreSQL postmaster's and the Redis server's process ids, where they are local."""
    pids = []
    for url in (pg_url, redis_url):
        with contextlib.suppress(RuntimeError, ValueError):
            pids.append(listener_pid(urlsplit(url).port or 0))
    return pids


async def _measure(
    name: str, app: str, env: dict[str, str], servers: list[int], count: int, logs: Path
) -> tuple[Cost, Cost]:
    port = free_port()
    with _serving(app, port, _env(env), 1, logs) as base:
        pid = listener_pid(port)  # one worker: uvicorn serves in the process it started
        await _drive(base, paths_for(16, seed=1))  # first requests: imports, pools, scripts
        misses = paths_for(count, seed=2)
        with _profiled(pid, f"{name}-miss"):
            miss = await _cost(base, pid, servers, misses)
        repeats = misses * 3
        random.Random(3).shuffle(repeats)
        with _profiled(pid, f"{name}-hit"):
            hit = await _cost(base, pid, servers, repeats)
        if name == "kuya-store":
            exposition = (await asyncio.to_thread(_get, f"{base}/metrics")).decode()
            means = search_means(exposition)
            answered = ", ".join(f"{source or '?'} {n}" for source, (n, _) in means.items())
            print(f"kuya-store searches answered by: {answered}")
    print(
        f"{name:<18} miss {miss.worker_ms:6.2f} ms worker + {miss.servers_ms:5.2f} ms servers"
        f"   hit {hit.worker_ms:6.2f} ms worker + {hit.servers_ms:5.2f} ms servers"
        f"   ({miss.failed + hit.failed} failed)"
    )
    return miss, hit


@contextlib.contextmanager
def _profiled(pid: int, label: str) -> Iterator[None]:
    """With ``KUYA_BENCH_PROFILE=DIR``, py-spy's raw samples of ``pid`` into ``DIR/label.txt``."""
    folder = os.environ.get("KUYA_BENCH_PROFILE")
    if not folder:
        yield
        return
    out = Path(folder) / f"{label.replace(' ', '_')}.txt"
    argv = ["py-spy", "record", "-r", "250", "-f", "raw", "-o", str(out), "--pid", str(pid)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(timeout=30)


def listener_pid(port: int) -> int:
    """The process listening on ``port`` (from ``/proc/net/tcp`` and the sockets' inodes)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(entry.name)
    raise RuntimeError(f"no process listens on port {port}")


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    """Measure both apps' CPU per miss and per hit; print them and their ratios."""
    print("\n## http-cpu: CPU per request, one worker, kuya-store against the Redis-only route\n")
    count = 24 if scale < 1.0 else 240
    prefix = f"bc{uuid.uuid4().hex[:6]}"
    async with scratch_database(pg_url, f"bench_cpu_{prefix}") as db_url:
        await ks.migrations.upgrade_async(db_url)
        servers = server_pids(pg_url, redis_url)
        with tempfile.TemporaryDirectory(prefix="kuya-cpu-") as scratch:
            logs = Path(scratch)
            up_env = _env({"BENCH_UPSTREAM_LATENCY": "0.3"})
            try:
                with _serving("bench.fake_upstream:create", free_port(), up_env, 1, logs) as up:
                    base_env = {"BENCH_UPSTREAM_URL": up}
                    ro = await _measure(
                        "Redis-only route",
                        "bench.redis_only_app:create",
                        {**base_env, "BENCH_REDIS_URL": redis_url, "BENCH_KEY_PREFIX": prefix},
                        servers,
                        count,
                        logs,
                    )
                    kuya_env = {
                        **base_env,
                        "KUYA_DATABASE_URL": db_url,
                        "KUYA_REDIS_URL": redis_url,
                        "KUYA_KEY_PREFIX": f"{prefix}-ks",
                        "KUYA_MODE": "read_through",
                        "KUYA_HOT_TIER_SECRET": secrets.token_hex(32),
                    }
                    kuya = await _measure(
                        "kuya-store", "bench.kuya_app:create", kuya_env, servers, count, logs
                    )
            finally:
                await _drop_keys(redis_url, prefix)
    out = []
    for label, theirs, ours in (("miss", ro[0], kuya[0]), ("hit", ro[1], kuya[1])):
        ratio = ours.worker_ms / theirs.worker_ms if theirs.worker_ms else float("inf")
        print(f"{label}: kuya-store worker CPU {ratio:.2f}x the Redis-only route's")
        out.append(
            Target(
                f"http-cpu: worker CPU per {label} vs Redis-only route",
                "<= 1.0x",
                f"{ratio:.2f}x ({ours.worker_ms:.2f} vs {theirs.worker_ms:.2f} ms)",
                ratio <= 1.0,
            )
        )
    return out
