"""The whole app under HTTP load: the FastAPI example on kuya-store against the Redis-only route.

Each contender is a FastAPI app on ``uvicorn --workers 4`` in front of one fake marketplace
API (``bench/fake_upstream.py``: 300 ms a call, every call counted):

- kuya-store: ``examples/fastapi_app.py`` in ``read_through`` mode on the run's PostgreSQL
  and Redis, configured by ``KUYA_*`` variables, its fetcher calling the API over HTTP
  (``bench/kuya_app.py``); every search is logged to PostgreSQL;
- Redis-only: the route the plan's app has today (``bench/redis_only_app.py``): the response
  JSON under an md5 of every parameter, 30 min sold / 5 min active, a miss calls the API.

``wrk`` drives both with one list of request paths (a bounded Zipf mix of 2,000 cards plus
never-seen queries, sold and active, some with filters), the same connections and duration;
a warm-up run comes first and is reported apart. The contenders run one after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from urllib.parse import parse_qs, urlencode
from urllib.request import Request, urlopen

import asyncpg
import redis.asyncio as aioredis

import kuya_store as ks
from bench.servers import drop_database
from bench.stats import Target
from kuya_store.testing.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_name("wrk_mix.lua")
WORKERS = 4
# uvicorn's default loop for both apps: uvloop, which uvicorn[standard] installs, as a
# deployment runs it. KUYA_BENCH_HTTP_LOOP=asyncio measures the standard library's loop.
LOOP = os.environ.get("KUYA_BENCH_HTTP_LOOP", "auto")
CONNECTIONS = 64
THREADS = 2
DISTINCT = 2_000
ZIPF_S = 1.1
NEW_SHARE = 0.05
SOLD_SHARE = 0.75
# Filter combinations as a card page asks them: most searches plain, some narrowed.
FILTERS: tuple[tuple[dict[str, str], float], ...] = (
    ({}, 0.70),
    ({"raw_only": "true"}, 0.12),
    ({"base_only": "true"}, 0.09),
    ({"exclude_auto": "true"}, 0.09),
)
_PLAYERS = (
    "Victor Wembanyama", "Shohei Ohtani", "Patrick Mahomes", "Luka Doncic", "Caitlin Clark",
    "Mike Trout", "Connor Bedard", "Jayden Daniels", "Anthony Edwards", "Julio Rodriguez",
    "Elly De La Cruz", "Ja Morant", "Justin Herbert", "Bobby Witt Jr", "Chet Holmgren",
    "Paul Skenes", "CJ Stroud", "Gunnar Henderson", "Paolo Banchero", "Bo Nix",
    "Jackson Holliday", "Brock Purdy", "Corbin Carroll", "Scottie Barnes", "Jalen Hurts",
    "Adley Rutschman", "Cade Cunningham", "Joe Burrow", "Ronald Acuna Jr", "Tyrese Haliburton",
    "Wander Franco", "Josh Allen", "Fernando Tatis Jr", "LaMelo Ball", "Justin Jefferson",
    "Juan Soto", "Zion Williamson", "Lamar Jackson", "Vladimir Guerrero Jr", "Trae Young",
)  # fmt: skip
_SETS = ("Topps Chrome", "Panini Prizm", "Bowman Chrome", "Donruss Optic", "Topps Update")


@dataclass(frozen=True)
class Load:
    """What ``wrk`` measured in one run (latencies in milliseconds)."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def answered(self) -> int:
        """Requests answered with a 2xx (wrk counts 4xx and 5xx as status errors)."""
        return self.requests - self.non_2xx


@dataclass(frozen=True)
class Outcome:
    """One contender's run: the warm-up, the measured run, and what each paid upstream."""

    name: str
    warmup: Load
    load: Load
    warmup_calls: int
    calls: int

    @property
    def served(self) -> int:
        """Requests of the sequence this contender got through, warm-up included."""
        return self.warmup.requests + self.load.requests

    @property
    def calls_per_1k(self) -> float:
        return 1000 * self.calls / self.load.requests if self.load.requests else 0.0


# --- the workload -------------------------------------------------------------------------


def card_names(count: int = DISTINCT) -> list[str]:
    """``count`` distinct card queries (up to 2,000): year, set, player, card number."""
    if not 0 < count <= len(_PLAYERS) * len(_SETS) * 10:
        raise ValueError(f"count must be 1..{len(_PLAYERS) * len(_SETS) * 10}")
    names = []
    for index in range(count):
        player = _PLAYERS[index % len(_PLAYERS)]
        card_set = _SETS[index // len(_PLAYERS) % len(_SETS)]
        year = 2015 + index // (len(_PLAYERS) * len(_SETS))
        names.append(f"{year} {card_set} {player} #{1 + index * 37 % 300}")
    return names


def zipf_paths(
    count: int,
    *,
    distinct: int = DISTINCT,
    s: float = ZIPF_S,
    new_share: float = NEW_SHARE,
    sold_share: float = SOLD_SHARE,
    seed: int = 14,
) -> list[str]:
    """Request paths: cards of Zipf(``s``) popularity, bounded, plus never-seen queries.

    The ``k``-th most popular card is asked ``1/k**s`` as often as the first; a share
    ``new_share`` of the requests ask a query nobody asked before (each one once).
    """
    rng = random.Random(seed)
    names = card_names(distinct)
    rng.shuffle(names)  # popularity independent of the naming order
    weights = list(accumulate(1 / rank**s for rank in range(1, distinct + 1)))
    filter_weights = list(accumulate(weight for _, weight in FILTERS))
    paths = []
    for index in range(count):
        if rng.random() < new_share:
            query = f"2025 Topps Now Prospect Debut #{index}"
        else:
            query = names[min(bisect_left(weights, rng.random() * weights[-1]), distinct - 1)]
        route = "/comps" if rng.random() < sold_share else "/active"
        picked = bisect_left(filter_weights, rng.random() * filter_weights[-1])
        extra = FILTERS[min(picked, len(FILTERS) - 1)][0]
        paths.append(f"{route}?{urlencode({'query': query, **extra})}")
    return paths


def fetches_needed(paths: list[str], *, keyed_by_filters: bool) -> int:
    """The fewest upstream calls ``paths`` can cost within one TTL: one per distinct key.

    The Redis-only route keys by every parameter, so each filter combination is a fetch of
    its own; kuya-store keys by query and search type and filters the titles it has.
    """
    if keyed_by_filters:
        return len(set(paths))
    return len({(p.partition("?")[0], parse_qs(p.partition("?")[2])["query"][0]) for p in paths})


def top_share(paths: list[str], top: int) -> float:
    """The share of requests that ask one of the ``top`` most asked paths."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path] = counts.get(path, 0) + 1
    return sum(sorted(counts.values(), reverse=True)[:top]) / len(paths) if paths else 0.0


# --- the load generator's output and the comparison ------------------------------------------

MARKER = "KUYA_WRK "


def parse_wrk(stdout: str) -> Load:
    """The measurement ``bench/wrk_mix.lua`` prints when wrk is done."""
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            raw = json.loads(line[len(MARKER) :])
            return Load(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
                non_2xx=raw["status"],
                socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
            )
    raise ValueError(f"no {MARKER.strip()} line in wrk's output:\n{stdout[-2000:]}")


def ratio(ours: float, theirs: float) -> float:
    """``ours / theirs``; infinite when theirs is zero and ours is not, 1 when both are."""
    if theirs == 0:
        return 1.0 if ours == 0 else float("inf")
    return ours / theirs


def ratios(kuya: Outcome, baseline: Outcome) -> dict[str, float]:
    """kuya-store over Redis-only for each figure (upstream calls per request served)."""
    return {
        "rps": ratio(kuya.load.rps, baseline.load.rps),
        "p50": ratio(kuya.load.p50_ms, baseline.load.p50_ms),
        "p99": ratio(kuya.load.p99_ms, baseline.load.p99_ms),
        "calls_per_request": ratio(kuya.calls_per_1k, baseline.calls_per_1k),
    }


def targets(
    kuya: Outcome, baseline: Outcome, logged: int, paths: list[str], label: str = "http"
) -> list[Target]:
    """The targets: throughput and p99 at least the Redis-only route's, fewer paid calls,
    every answered search in the log.

    Paid calls are compared on the same requests: what kuya-store paid for the part of the
    sequence it got through against the fewest calls the Redis-only route needs for it
    (a contender that gets further meets more never-seen queries).
    """
    r = ratios(kuya, baseline)
    answered = kuya.warmup.answered + kuya.load.answered
    paid = kuya.warmup_calls + kuya.calls
    floor = fetches_needed(paths[: kuya.served], keyed_by_filters=True)
    return [
        Target(
            f"{label}: requests/s, app on kuya-store vs Redis-only route",
            ">= 1.0x",
            f"{r['rps']:.2f}x ({kuya.load.rps:.0f} vs {baseline.load.rps:.0f})",
            r["rps"] >= 1.0,
        ),
        Target(
            f"{label}: p99 latency vs Redis-only route",
            "<= 1.0x",
            f"{r['p99']:.2f}x ({kuya.load.p99_ms:.0f} vs {baseline.load.p99_ms:.0f} ms)",
            r["p99"] <= 1.0,
        ),
        Target(
            f"{label}: upstream calls for the same requests vs Redis-only route",
            "< its fewest",
            f"{paid:,} paid vs >= {floor:,} for the first {kuya.served:,} requests",
            paid < floor,
        ),
        Target(
            f"{label}: searches in the PostgreSQL search log",
            ">= answered requests",
            f"{logged:,} rows for {answered:,} answered",
            logged >= answered,
        ),
        Target(
            f"{label}: non-2xx and socket errors (kuya-store)",
            "0",
            f"{kuya.load.non_2xx + kuya.warmup.non_2xx} non-2xx, "
            f"{kuya.load.socket_errors + kuya.warmup.socket_errors} socket",
            kuya.load.non_2xx + kuya.warmup.non_2xx == 0
            and kuya.load.socket_errors + kuya.warmup.socket_errors == 0,
        ),
    ]


def table(outcomes: list[Outcome]) -> str:
    """The markdown table of the measured runs."""
    rows = [
        "| contender | requests | requests/s | p50 ms | p90 ms | p99 ms | max ms "
        "| upstream calls | calls / 1,000 req | non-2xx | socket errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        load = o.load
        rows.append(
            f"| {o.name} | {load.requests:,} | {load.rps:,.0f} | {load.p50_ms:.1f} "
            f"| {load.p90_ms:.1f} | {load.p99_ms:.1f} | {load.max_ms:.0f} | {o.calls:,} "
            f"| {o.calls_per_1k:.1f} | {load.non_2xx} | {load.socket_errors} |"
        )
    return "\n".join(rows)


# --- processes ------------------------------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    """This environment less any store settings, plus ``extra``; the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUYA_", "BENCH_"))}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # A deployment imports compiled bytecode; compiling every module in each of the workers
    # at start-up would add many seconds of CPU to the shared cores.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "kuya-bench-pycache"))
    return {**env, **extra}


_STARTED = "Application startup complete."


def _get(url: str, timeout: float = 5.0, method: str = "GET") -> bytes:
    with urlopen(Request(url, method=method), timeout=timeout) as response:
        body: bytes = response.read()
        return body


@contextlib.contextmanager
def _serving(
    app: str, port: int, env: dict[str, str], workers: int, logs: Path, timeout: float = 180.0
) -> Iterator[str]:
    """``uvicorn --factory APP`` on ``port`` in its own process group, up until the block ends.

    Stopping sends SIGTERM to the group (each worker shuts its app down, the store flushing
    its writes), then SIGKILL whatever is left after 30 s.
    """
    log = logs / f"{app.rsplit(':', 1)[0].rsplit('.', 1)[-1]}-{port}.log"
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", app, "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--loop", LOOP, "--log-level", "info",
        "--no-access-log", "--timeout-graceful-shutdown", "20",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        # Up means every worker has run its lifespan: a worker still importing would take
        # its share of the connections late and its start-up CPU into the measurement.
        deadline = time.monotonic() + timeout
        while log.read_text(errors="replace").count(_STARTED) < workers:
            if proc.poll() is not None:
                raise RuntimeError(f"{app} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app} not up in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        # The first request may wait on a loaded machine: asked again until the deadline.
        while True:
            try:
                _get(f"{base}/health/live", timeout=10.0)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
        yield base
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    # Workers outliving their master would keep the port and the cores.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def wrk_binary() -> str:
    """``wrk``'s path, installed from Debian's packages when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("the http benchmark needs wrk: apt-get install wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        update = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"]
        subprocess.run(update, env=env, capture_output=True, timeout=600, check=False)
        subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)
    return shutil.which("wrk") or "wrk"


def _wrk(wrk: str, base: str, paths: Path, start: int, seconds: float, think_ms: int) -> Load:
    argv = [
        wrk, "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", f"{seconds:.0f}s",
        "--timeout", "30s", "-s", str(LUA), base, "--", str(paths), str(start), str(THREADS),
        str(think_ms),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return parse_wrk(done.stdout)


def _calls(upstream: str) -> int:
    counted: int = json.loads(_get(f"{upstream}/calls"))["calls"]
    return counted


@dataclass(frozen=True)
class _Plan:
    wrk: str
    paths: Path
    warmup_s: float
    measure_s: float
    workers: int
    logs: Path
    think_ms: int


def _contend(
    plan: _Plan, name: str, app: str, env: dict[str, str], upstream: str
) -> tuple[Outcome, bytes]:
    """Warm one contender up, measure it, and return its outcome and one worker's metrics."""
    port = free_port()
    with _serving(app, port, _env(env), plan.workers, plan.logs) as base:
        _get(f"{upstream}/reset", method="POST")
        warm = _wrk(plan.wrk, base, plan.paths, 0, plan.warmup_s, plan.think_ms)
        warm_calls = _calls(upstream)
        start = -(-warm.requests // THREADS)
        load = _wrk(plan.wrk, base, plan.paths, start, plan.measure_s, plan.think_ms)
        calls = _calls(upstream) - warm_calls
        metrics = b""
        if name == "kuya-store":
            with contextlib.suppress(OSError):
                metrics = _get(f"{base}/metrics", timeout=10.0)
    return Outcome(name, warm, load, warm_calls, calls), metrics


# --- one worker's own figures ---------------------------------------------------------------


def search_means(exposition: str) -> dict[str, tuple[int, float]]:
    """``source -> (searches, mean ms)`` of ``search()`` from one worker's Prometheus text."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for line in exposition.splitlines():
        if not line.startswith("kuya_store_search_duration_seconds_"):
            continue
        name, _, value = line.rpartition(" ")
        source = name.split('source="', 1)[-1].split('"', 1)[0] if "source=" in name else ""
        if name.startswith("kuya_store_search_duration_seconds_sum"):
            sums[source] = sums.get(source, 0.0) + float(value)
        elif name.startswith("kuya_store_search_duration_seconds_count"):
            counts[source] = counts.get(source, 0) + round(float(value))
    return {s: (n, 1000 * sums.get(s, 0.0) / n) for s, n in sorted(counts.items()) if n}


# --- the run --------------------------------------------------------------------------------


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({model or platform.machine()}), load average {load}"


def _versions(wrk: str) -> str:
    import fastapi
    import uvicorn

    shown = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    wrk_version = (shown.stdout or shown.stderr).split("\n", 1)[0].split(" [", 1)[0]
    return (
        f"Python {platform.python_version()}, uvicorn {uvicorn.__version__}, "
        f"FastAPI {fastapi.__version__}, {wrk_version}"
    )


def _measure(plan: _Plan, pg_url: str, redis_url: str, prefix: str) -> tuple[list[Outcome], bytes]:
    upstream_port = free_port()
    upstream_env = _env({"BENCH_UPSTREAM_LATENCY": "0.3"})
    with _serving("bench.fake_upstream:create", upstream_port, upstream_env, 1, plan.logs) as up:
        baseline, _ = _contend(
            plan,
            "Redis-only route",
            "bench.redis_only_app:create",
            {
                "BENCH_REDIS_URL": redis_url,
                "BENCH_UPSTREAM_URL": up,
                "BENCH_KEY_PREFIX": f"{prefix}-ro",
            },
            up,
        )
        kuya, metrics = _contend(
            plan,
            "kuya-store",
            "bench.kuya_app:create",
            {
                "KUYA_DATABASE_URL": pg_url,
                "KUYA_REDIS_URL": redis_url,
                "KUYA_KEY_PREFIX": f"{prefix}-ks",
                "KUYA_MODE": "read_through",
                # One secret for the fleet, as a deployment of several workers sets it: each
                # worker reads the others' Redis values back without validating them again.
                "KUYA_HOT_TIER_SECRET": secrets.token_hex(32),
                "BENCH_UPSTREAM_URL": up,
            },
            up,
        )
    return [baseline, kuya], metrics


@contextlib.asynccontextmanager
async def scratch_database(pg_url: str, name: str) -> AsyncIterator[str]:
    """A database of its own on the run's server, for one benchmark; dropped afterwards."""
    admin = await asyncpg.connect(_dsn(pg_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield pg_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with contextlib.suppress(asyncpg.PostgresError):
            await drop_database(admin, name)
        await admin.close()


async def _drop_keys(redis_url: str, prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        batch = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(batch), 500):
            await client.delete(*batch[start : start + 500])
    finally:
        await client.aclose()


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    """Both contenders under a closed loop of 64 connections: as fast as the apps answer."""
    print("\n## http: the example app under load, kuya-store against the Redis-only route\n")
    return await run_at(pg_url, redis_url, scale, think_ms=0, label="http")


async def run_at(
    pg_url: str, redis_url: str, scale: float, *, think_ms: int, label: str
) -> list[Target]:
    """Run both contenders, print the report, return the targets named after ``label``."""
    wrk = await asyncio.to_thread(wrk_binary)
    prefix = f"bh{uuid.uuid4().hex[:6]}"
    async with scratch_database(pg_url, f"bench_http_{prefix}") as db_url:
        with tempfile.TemporaryDirectory(prefix="kuya-http-") as scratch:
            try:
                outcomes, metrics, logged, paths = await _run_in(
                    wrk, Path(scratch), db_url, redis_url, prefix, scale < 1.0, think_ms
                )
            finally:
                await _drop_keys(redis_url, prefix)
    baseline, kuya = outcomes
    _print_report(outcomes, kuya, baseline, metrics, logged, paths)
    return targets(kuya, baseline, logged, paths, label)


async def _run_in(
    wrk: str,
    scratch: Path,
    db_url: str,
    redis_url: str,
    prefix: str,
    quick: bool,
    think_ms: int,
) -> tuple[list[Outcome], bytes, int, list[str]]:
    await ks.migrations.upgrade_async(db_url)
    # More paths than either contender can ask in the time, so none wraps around.
    warmup_s, measure_s = (1.0, 3.0) if quick else (20.0, 40.0)
    workers = 1 if quick else WORKERS  # a smoke run spends less of its minute starting up
    paths = zipf_paths(60_000 if quick else 200_000)
    paths_file = scratch / "paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    print(f"machine: {_machine()}; measured on a shared, loaded machine")
    print(f"versions: {await asyncio.to_thread(_versions, wrk)}")
    users = f", each waiting {think_ms} ms after an answer" if think_ms else ""
    print(
        f"setup: each app on uvicorn --workers {workers} --loop {LOOP}, one after the other; "
        f"wrk -t {THREADS} -c {CONNECTIONS}{users}, {warmup_s:.0f} s warm-up (reported apart) "
        f"then {measure_s:.0f} s measured; upstream 300 ms a call; everything shares the same "
        "cores"
    )
    print(
        f"mix: {DISTINCT:,} cards, Zipf s={ZIPF_S} (top 20 paths {top_share(paths, 20):.0%} of "
        f"requests), {NEW_SHARE:.0%} never-seen queries, {SOLD_SHARE:.0%} sold, "
        f"{1 - FILTERS[0][1]:.0%} with a filter"
    )
    plan = _Plan(wrk, paths_file, warmup_s, measure_s, workers, scratch, think_ms)
    outcomes, metrics = await asyncio.to_thread(_measure, plan, db_url, redis_url, prefix)
    conn = await asyncpg.connect(_dsn(db_url))
    try:
        logged = await conn.fetchval("SELECT count(*) FROM searches")
    finally:
        await conn.close()
    return outcomes, metrics, int(logged), paths


def _print_report(
    outcomes: list[Outcome],
    kuya: Outcome,
    baseline: Outcome,
    metrics: bytes,
    logged: int,
    paths: list[str],
) -> None:
    print("\n### measured run\n")
    print(table(outcomes))
    print("\n### warm-up (not in the figures above)\n")
    for o in outcomes:
        w = o.warmup
        print(
            f"{o.name:<18} {w.requests:>7,} requests in {w.seconds:4.1f} s ({w.rps:6,.0f}/s), "
            f"p99 {w.p99_ms:7.1f} ms, {o.warmup_calls:,} upstream calls, {w.non_2xx} non-2xx"
        )
    print("\n### kuya-store / Redis-only\n")
    r = ratios(kuya, baseline)
    print(
        f"requests/s {r['rps']:.2f}x, p50 {r['p50']:.2f}x, p99 {r['p99']:.2f}x, "
        f"upstream calls per request {r['calls_per_request']:.2f}x"
    )
    print("\n### upstream calls on the same requests\n")
    for o in outcomes:
        prefix = paths[: o.served]
        print(
            f"{o.name:<18} paid {o.warmup_calls + o.calls:>6,} for the first {o.served:>7,} "
            f"requests; fewest possible: {fetches_needed(prefix, keyed_by_filters=True):,} "
            f"keyed by every parameter, {fetches_needed(prefix, keyed_by_filters=False):,} "
            f"by query and type"
        )
    print("\n### search log\n")
    answered = kuya.warmup.answered + kuya.load.answered
    print(f"{logged:,} rows in PostgreSQL's searches for {answered:,} answered requests")
    print("\n### inside one kuya-store worker (its /metrics, whole run)\n")
    means = search_means(metrics.decode(errors="replace"))
    if not means:
        print("(no metrics read)")
    for source, (count, mean) in means.items():
        print(f"search() answered by {source:<9} {count:>7,} searches, mean {mean:7.2f} ms")
