"""Run every benchmark and print a report: ``python -m bench [--quick]``.

Every figure is a ratio against a baseline measured in the same run, on the same servers.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys

from bench import hot_path, persist
from bench.servers import real_servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    print(
        f"# kuya-store benchmarks: Python {platform.python_version()} on {platform.machine()}, "
        f"{platform.system()}"
    )
    with real_servers() as (pg_url, redis_url):
        asyncio.run(hot_path.run(pg_url, redis_url, scale))
        asyncio.run(persist.run(pg_url, scale))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
