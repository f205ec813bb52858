"""Chaos soak: 4 worker processes under a Zipf load while a controller breaks things.

``python -m bench.soak [--seconds 240] [--seed 14] [--workers 4]``

A controller, at random moments drawn from the seed, SIGKILLs a worker (and starts it
again), kills and restarts Redis (no persistence: its data goes), and stops and starts
PostgreSQL. Loopback only, bounded in time. At the end, from the database and from the
fetcher's own call log: answered searches vs search rows, fetched results vs persisted
results, duplicate rows, failed calls (each with its error), and upstream calls beyond
one per result and freshness window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import kuya_store as ks
from kuya_store.testing.servers import HOST, PostgresServer, RedisServer

CARDS = 400
FRESH = timedelta(seconds=20)  # short windows, so the soak keeps paying for data
LISTINGS = 6


class _PersistentRedis(RedisServer):
    """A Redis that logs every write to its append-only file before answering it."""

    def _launch(self) -> None:
        assert self._executable is not None
        self.pidfile.unlink(missing_ok=True)
        subprocess.run(
            [
                self._executable,
                *("--bind", HOST, "--port", str(self.port), "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always", "--daemonize", "yes"),
                *("--dir", str(self.base_dir), "--pidfile", str(self.pidfile)),
                *("--logfile", str(self.logfile)),
            ],
            capture_output=True,
            check=True,
            stdin=subprocess.DEVNULL,
        )


def _lines(path: str) -> list[dict[str, Any]]:
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _append(path: Path, line: str) -> None:
    # One write per line on an O_APPEND file: lines of several processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def _worker(args: dict[str, Any]) -> None:
    """One app instance: Zipf searches until the stop file appears, each outcome logged."""
    rng = random.Random(args["seed"])
    weights = [1 / (rank + 1) for rank in range(CARDS)]
    calls = Path(args["calls"])
    answered = Path(args["answered"])

    async def fetch(request: ks.FetchRequest) -> ks.FetchResult:
        await asyncio.sleep(rng.uniform(0.01, 0.05))
        card = request.query
        result = ks.FetchResult(
            listings=[
                ks.Listing(
                    item_id=f"{card}-{i}".replace(" ", "_")[:50],
                    title=f"{card} #{i}",
                    price=f"{10 + i}.50",
                    sold=True,
                )
                for i in range(LISTINGS)
            ]
        )
        _append(calls, json.dumps({"card": card, "at": time.time(), "pid": os.getpid()}) + "\n")
        return result

    async with ks.CompsStore(
        database_url=args["database_url"],
        redis_url=args["redis_url"],
        key_prefix="soak",
        fetchers={"sold": fetch},
        sold_fresh_for=FRESH,
        sold_max_fresh_for=FRESH,
        freshness_policy="fixed",
        sold_ttl=FRESH,
        breaker_reset_after=0.5,
        redis_socket_timeout=0.5,
        db_command_timeout=2,
        db_connect_timeout=1,
    ) as store:
        while not _exists(args["stop"]):
            card = f"soak card {rng.choices(range(CARDS), weights)[0]}"
            _append(answered, '{"start": 1}\n')
            try:
                await store.comps.search(card)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
                _append(answered, json.dumps({"error": error}) + "\n")
            else:
                _append(answered, "{}\n")
            await asyncio.sleep(rng.uniform(0.0, 0.02))


def _start(args: dict[str, Any], slot: int, generation: int) -> subprocess.Popen[bytes]:
    payload = {**args, "seed": args["seed"] * 1000 + slot * 100 + generation}
    with open(Path(args["logs"]) / f"worker-{slot}-{generation}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--worker", json.dumps(payload)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def _scalar(url: str, sql: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(sa.text(sql))).scalar_one())
    finally:
        await engine.dispose()


def _beyond_ideal(calls: list[dict[str, Any]]) -> int:
    """Calls for a card within the freshness window of its previous call (by any worker)."""
    last: dict[str, float] = {}
    extra = 0
    for call in sorted(calls, key=lambda c: c["at"]):
        before = last.get(call["card"])
        if before is not None and call["at"] - before < FRESH.total_seconds():
            extra += 1
        else:
            last[call["card"]] = call["at"]
    return extra


async def soak(seconds: float, seed: int, workers: int, persistent: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="kuya-soak-"))
    events: list[str] = []
    with PostgresServer() as pg, _PersistentRedis() if persistent else RedisServer() as redis:
        await ks.migrations.upgrade_async(pg.url)
        args = {
            "database_url": pg.url,
            "redis_url": redis.url,
            "calls": str(work / "calls.jsonl"),
            "answered": str(work / "answered.jsonl"),
            "stop": str(work / "stop"),
            "logs": str(work),
            "seed": seed,
        }
        generations = [0] * workers
        procs = [_start(args, slot, 0) for slot in range(workers)]
        started = time.monotonic()
        kills = redis_restarts = pg_restarts = 0
        while time.monotonic() - started < seconds:
            await asyncio.sleep(rng.uniform(4, 12))
            action = rng.choice(["kill", "kill", "redis", "postgres"])
            at = time.monotonic() - started
            if action == "kill":
                slot = rng.randrange(workers)
                procs[slot].send_signal(signal.SIGKILL)
                procs[slot].wait()
                kills += 1
                await asyncio.sleep(rng.uniform(0.2, 2))
                generations[slot] += 1
                procs[slot] = _start(args, slot, generations[slot])
                events.append(f"{at:6.1f} s  SIGKILL worker {slot}, restarted")
            elif action == "redis":
                redis.kill()
                await asyncio.sleep(rng.uniform(0.5, 3))
                redis.restart()
                redis_restarts += 1
                kept = "with its append-only file" if persistent else "empty"
                events.append(f"{at:6.1f} s  Redis killed, restarted {kept}")
            else:
                down = rng.uniform(1, 5)
                pg.stop()
                await asyncio.sleep(down)
                pg.start()
                pg_restarts += 1
                events.append(f"{at:6.1f} s  PostgreSQL stopped for {down:.1f} s")
        # Stop: the workers close (flush) on their own; the last ones standing write it all.
        _append(Path(args["stop"]), "stop\n")
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        settle = time.monotonic()
        # What a killed worker left pending on the stream is taken by the next worker.
        async with ks.CompsStore(
            database_url=pg.url, redis_url=redis.url, key_prefix="soak"
        ) as recovery:
            expected = sum(not o for o in _lines(args["answered"]))
            for _ in range(300):
                if await _scalar(pg.url, "SELECT count(*) FROM searches") >= expected:
                    break
                await asyncio.sleep(0.2)
            await recovery.flush(timeout=60)
            journal = recovery.metrics()["journal"]
        settled_in = time.monotonic() - settle
        outcomes = _lines(args["answered"])
        calls = _lines(args["calls"])
        errors = Counter(o["error"] for o in outcomes if "error" in o)
        starts = sum("start" in o for o in outcomes)
        answered = sum(not o for o in outcomes)
        rows = await _scalar(pg.url, "SELECT count(*) FROM searches")
        fetched_rows = await _scalar(pg.url, "SELECT count(*) FROM searches WHERE NOT cache_hit")
        duplicates = await _scalar(
            pg.url, "SELECT count(*) - count(DISTINCT record_key) FROM searches"
        )
    return {
        "seconds": seconds,
        "seed": seed,
        "workers": workers,
        "redis_persistence": persistent,
        "kills": kills,
        "redis_restarts": redis_restarts,
        "postgres_restarts": pg_restarts,
        "answered": answered,
        "failed": dict(errors),
        # Killed between starting and logging its outcome: its row may or may not exist.
        "in_flight_at_kills": starts - answered - sum(errors.values()),
        "search_rows": rows,
        "lost_search_rows": max(0, answered - rows),
        "fetcher_calls": len(calls),
        "fetched_rows": fetched_rows,
        "lost_fetched_results": max(0, len(calls) - fetched_rows),
        "duplicates": duplicates,
        "beyond_ideal_calls": _beyond_ideal(calls),
        "settled_in_s": round(settled_in, 1),
        "trimmed_unacked": journal["trimmed_unacked"],
        "events": events,
        "work_dir": str(work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--redis-persistence",
        action="store_true",
        help="run Redis with appendonly yes, appendfsync always (a SIGKILL keeps its data)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_worker(json.loads(options.worker)))
        return
    report = asyncio.run(
        soak(options.seconds, options.seed, options.workers, options.redis_persistence)
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
