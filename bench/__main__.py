"""Run the benchmarks and print a report: ``python -m bench [--quick] [--only NAME[,NAME]]``.

Every figure is a ratio against a baseline measured in the same run, on the same servers
(real PostgreSQL and Redis: from ``KUYA_BENCH_POSTGRES_URL`` / ``KUYA_BENCH_REDIS_URL``,
else started on loopback for the run and stopped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench import (
    budget,
    coherence,
    ha,
    history,
    hot_path,
    http_cpu,
    http_load,
    http_paced,
    journal,
    memory,
    near_cache,
    persist,
    replay,
    replicas,
    scale,
    stampede,
    upsert,
    valuation,
)
from bench.servers import real_servers
from bench.stats import Target, targets_table


@dataclass(frozen=True)
class Benchmark:
    run: Callable[[str, str, float], Awaitable[list[Target]]]
    needs_servers: bool = True


BENCHMARKS = {
    "hot": Benchmark(hot_path.run),
    "near": Benchmark(near_cache.run),
    "persist": Benchmark(persist.run),
    "upsert": Benchmark(upsert.run),
    "history": Benchmark(history.run),
    "stampede": Benchmark(stampede.run),
    "budget": Benchmark(budget.run),
    "coherence": Benchmark(coherence.run),
    "ha": Benchmark(ha.run),
    "memory": Benchmark(memory.run, needs_servers=False),
    "replay": Benchmark(replay.run, needs_servers=False),
    "valuation": Benchmark(valuation.run, needs_servers=False),
    "scale": Benchmark(scale.run),
    "replicas": Benchmark(replicas.run),
    "journal": Benchmark(journal.run),
    "http": Benchmark(http_load.run),
    "http-paced": Benchmark(http_paced.run),
    "http-cpu": Benchmark(http_cpu.run),
}


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(BENCHMARKS)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument(
        "--only",
        type=_names,
        default=list(BENCHMARKS),
        metavar="NAME[,NAME]",
        help=f"run only these: {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    print(
        f"# kuya-store benchmarks: Python {platform.python_version()} on {platform.machine()}, "
        f"{platform.system()}{' (quick)' if args.quick else ''}"
    )
    chosen = {name: BENCHMARKS[name] for name in args.only}
    targets: list[Target] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pg_url = redis_url = ""
        if any(b.needs_servers for b in chosen.values()):
            pg_url, redis_url = stack.enter_context(real_servers())
        for name, benchmark in chosen.items():
            begun = time.perf_counter()
            targets += asyncio.run(benchmark.run(pg_url, redis_url, scale))
            print(f"({name}: {time.perf_counter() - begun:.0f} s)")
            sys.stdout.flush()
    print(f"\n## targets{' (quick run: indicative only)' if args.quick else ''}\n")
    print(targets_table(targets))
    met = sum(t.met for t in targets)
    print(f"\n{met} of {len(targets)} targets met; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
