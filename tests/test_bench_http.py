"""The HTTP load benchmark: its workload, wrk's script and output, the comparison, a quick run."""

from __future__ import annotations

import http.server
import math
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from bench import http_load, http_paced
from bench.http_load import Load, Outcome


def _load(requests: int = 1000, seconds: float = 10.0, p99: float = 300.0, **kw: int) -> Load:
    return Load(
        requests=requests,
        seconds=seconds,
        p50_ms=5.0,
        p90_ms=50.0,
        p99_ms=p99,
        max_ms=900.0,
        non_2xx=kw.get("non_2xx", 0),
        socket_errors=kw.get("socket_errors", 0),
    )


def _outcome(name: str, load: Load, calls: int) -> Outcome:
    return Outcome(name, warmup=_load(100), load=load, warmup_calls=50, calls=calls)


# --- the workload -------------------------------------------------------------------------


def test_card_names_are_distinct_and_bounded() -> None:
    names = http_load.card_names(2000)
    assert len(set(names)) == 2000
    with pytest.raises(ValueError, match="count"):
        http_load.card_names(2001)
    with pytest.raises(ValueError, match="count"):
        http_load.card_names(0)


def test_zipf_paths_are_the_same_sequence_for_the_same_seed() -> None:
    first = http_load.zipf_paths(5000, seed=3)
    assert first == http_load.zipf_paths(5000, seed=3)
    assert first != http_load.zipf_paths(5000, seed=4)


def _queries(paths: list[str]) -> list[str]:
    return [parse_qs(urlsplit(p).query)["query"][0] for p in paths]


def test_zipf_paths_follow_rank_popularity_within_the_bound() -> None:
    paths = http_load.zipf_paths(60_000, distinct=500, s=1.1, new_share=0.0, seed=1)
    counts = Counter(_queries(paths))
    assert set(counts) <= set(http_load.card_names(500))
    ranked = [n for _, n in counts.most_common()]
    # The most asked card gets about 1/H share, H the generalized harmonic number.
    harmonic = sum(1 / k**1.1 for k in range(1, 501))
    assert ranked[0] / len(paths) == pytest.approx(1 / harmonic, rel=0.1)
    assert ranked[0] > 1.8 * ranked[1] > ranked[9]


def test_never_seen_queries_are_asked_once_each_at_their_share() -> None:
    paths = http_load.zipf_paths(20_000, new_share=0.1, seed=2)
    known = set(http_load.card_names())
    new = [q for q in _queries(paths) if q not in known]
    assert len(new) == len(set(new))
    assert len(new) / len(paths) == pytest.approx(0.1, abs=0.01)


def test_paths_mix_sold_and_active_and_the_filters() -> None:
    paths = http_load.zipf_paths(20_000, seed=5)
    sold = sum(p.startswith("/comps?") for p in paths) / len(paths)
    assert sold == pytest.approx(http_load.SOLD_SHARE, abs=0.02)
    assert all(p.startswith(("/comps?", "/active?")) for p in paths)
    plain = sum(len(parse_qs(urlsplit(p).query)) == 1 for p in paths) / len(paths)
    assert plain == pytest.approx(http_load.FILTERS[0][1], abs=0.02)


def test_top_share() -> None:
    assert http_load.top_share(["a", "a", "b", "c"], 1) == 0.5
    assert http_load.top_share([], 3) == 0.0


# --- wrk's output and the comparison --------------------------------------------------------

WRK_STDOUT = """\
Running 8s test @ http://127.0.0.1:40123
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    40.12ms   80.01ms   1.20s    93.00%
  3000 requests in 8.00s, 45.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:    375.00
KUYA_WRK {"requests": 3000, "duration_us": 8000000, "bytes": 47185920, "connect": 0, \
"read": 1, "write": 0, "status": 3, "timeout": 2, "p50_us": 4500, "p90_us": 90000, \
"p99_us": 320000, "max_us": 1200000, "mean_us": 40120.5}
"""


def test_parse_wrk_reads_the_scripts_line() -> None:
    load = http_load.parse_wrk(WRK_STDOUT)
    assert load == Load(3000, 8.0, 4.5, 90.0, 320.0, 1200.0, non_2xx=3, socket_errors=3)
    assert load.rps == 375.0
    assert load.answered == 2997


def test_parse_wrk_without_the_line_says_so() -> None:
    with pytest.raises(ValueError, match="KUYA_WRK"):
        http_load.parse_wrk("Running 8s test\nRequests/sec: 1.0\n")


def test_ratio_edges() -> None:
    assert http_load.ratio(2.0, 4.0) == 0.5
    assert http_load.ratio(0.0, 0.0) == 1.0
    assert math.isinf(http_load.ratio(1.0, 0.0))


def test_calls_are_compared_per_request_served() -> None:
    # Twice the requests for the same calls is half the calls per request.
    kuya = _outcome("kuya-store", _load(2000), calls=100)
    baseline = _outcome("Redis-only route", _load(1000), calls=100)
    r = http_load.ratios(kuya, baseline)
    assert r["rps"] == 2.0
    assert r["calls_per_request"] == 0.5


def test_fetches_needed_counts_filter_combinations_only_when_keyed_by_them() -> None:
    paths = [
        "/comps?query=A",
        "/comps?query=A&raw_only=true",
        "/comps?query=A",
        "/active?query=A",
        "/comps?query=B&base_only=true",
    ]
    assert http_load.fetches_needed(paths, keyed_by_filters=True) == 4
    assert http_load.fetches_needed(paths, keyed_by_filters=False) == 3
    assert http_load.fetches_needed([], keyed_by_filters=False) == 0


def test_targets_met_and_missed() -> None:
    # 1,300 requests served; the route keyed by every parameter needs one call per path.
    paths = [f"/comps?query=card{i % 700}&raw_only=true" for i in range(2000)]
    baseline = _outcome("Redis-only route", _load(1000, p99=300.0), calls=400)
    good = _outcome("kuya-store", _load(1200, p99=290.0), calls=100)
    assert all(t.met for t in http_load.targets(good, baseline, logged=1300, paths=paths))
    slow = _outcome("kuya-store", _load(900, p99=400.0, non_2xx=1), calls=700)
    met = {t.name: t.met for t in http_load.targets(slow, baseline, 998, paths)}
    # 750 paid >= the 700 the first 1,000 requests need; 998 rows for 100 + 899 answered.
    assert not any(met.values()), met


def test_search_means_read_one_workers_histogram() -> None:
    text = (
        "# TYPE kuya_store_search_duration_seconds histogram\n"
        'kuya_store_search_duration_seconds_bucket{le="0.005",search_type="sold",source="memory"}'
        " 9.0\n"
        'kuya_store_search_duration_seconds_count{search_type="sold",source="memory"} 10.0\n'
        'kuya_store_search_duration_seconds_sum{search_type="sold",source="memory"} 0.02\n'
        'kuya_store_search_duration_seconds_count{search_type="active",source="memory"} 10.0\n'
        'kuya_store_search_duration_seconds_sum{search_type="active",source="memory"} 0.04\n'
        'kuya_store_search_duration_seconds_count{search_type="sold",source="api"} 2.0\n'
        'kuya_store_search_duration_seconds_sum{search_type="sold",source="api"} 0.7\n'
    )
    means = http_load.search_means(text)
    assert means["memory"] == (20, pytest.approx(3.0))
    assert means["api"] == (2, pytest.approx(350.0))


# --- wrk's script against a real server -----------------------------------------------------


@pytest.fixture
def wrk() -> str:
    try:
        return http_load.wrk_binary()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"wrk unavailable: {exc}")


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # wrk resets its connections when its time is up

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_wrk_script_walks_the_paths_in_order_from_start(
    wrk: str, recording_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, seen = recording_server
    paths = [f"/p/{i}" for i in range(100_000)]
    listed = tmp_path / "paths.txt"
    listed.write_text("\n".join(paths) + "\n")
    argv = [wrk, "-t", "2", "-c", "2", "-d", "1s", "-s", str(http_load.LUA), base]
    done = subprocess.run(
        [*argv, "--", str(listed), "500", "2"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    load = http_load.parse_wrk(done.stdout)
    assert load.requests > 0
    assert load.non_2xx == 0
    asked = [int(p.rsplit("/", 1)[1]) for p in seen]
    assert len(set(asked)) == len(asked)
    # Each thread asks start*threads + its id, then every threads-th path, so together they
    # walk the list from 1000 on. wrk checks the script with one request() of thread 0 (path
    # 1000, never sent); the threads need not keep pace with each other.
    odd = sorted(i for i in asked if i % 2)
    even = sorted(i for i in asked if not i % 2)
    assert odd == list(range(1001, 1001 + 2 * len(odd), 2))
    assert even == list(range(1002, 1002 + 2 * len(even), 2))


def test_wrk_script_waits_the_think_time_between_a_users_requests(
    wrk: str, recording_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, seen = recording_server
    listed = tmp_path / "paths.txt"
    listed.write_text("\n".join(f"/p/{i}" for i in range(10_000)) + "\n")
    argv = [wrk, "-t", "2", "-c", "2", "-d", "2s", "-s", str(http_load.LUA), base]
    args = ["--", str(listed), "0", "2"]
    paced = subprocess.run([*argv, *args, "250"], capture_output=True, text=True, timeout=60)
    assert paced.returncode == 0, paced.stderr
    load = http_load.parse_wrk(paced.stdout)
    # Two users, each asking at most once per 250 ms for 2 s: 16 requests at most.
    assert 2 <= load.requests <= 18, load
    assert len(seen) <= 20
    # Without the wait the same users ask again as soon as they are answered (this server
    # takes about 40 ms an answer: its header and body go out as separate segments).
    closed = subprocess.run([*argv, *args, "0"], capture_output=True, text=True, timeout=60)
    assert http_load.parse_wrk(closed.stdout).requests > 3 * load.requests


# --- the whole benchmark, shortened ---------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.skipif(shutil.which("wrk") is None and shutil.which("apt-get") is None, reason="wrk")
@pytest.mark.parametrize(
    ("section", "label", "users"),
    [
        (http_load.run, "http", "wrk -t 2 -c 64, "),
        (http_paced.run, "http-paced", f"each waiting {http_paced.THINK_MS} ms after an answer"),
    ],
)
async def test_quick_run_end_to_end(
    postgres_url: str,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    section: Any,
    label: str,
    users: str,
) -> None:
    pytest.importorskip("uvicorn")
    found = await section(postgres_url, redis_url, 0.1)
    out = capsys.readouterr().out
    for part in (
        users,
        "### measured run",
        "### warm-up",
        "### kuya-store / Redis-only",
        "### search log",
        "### inside one kuya-store worker",
    ):
        assert part in out
    assert "| Redis-only route |" in out and "| kuya-store |" in out
    names = [t.name for t in found]
    assert len(names) == 5 and all(n.startswith(f"{label}: ") for n in names)
    logged = next(t for t in found if "search log" in t.name)
    assert logged.met, logged.measured  # every answered search reached PostgreSQL
