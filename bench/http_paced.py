"""The whole app under HTTP load below saturation: users who wait between their requests.

The same two apps, mix and upstream as ``bench/http_load.py``, but each of wrk's 64
connections is a user who waits ``THINK_MS`` after an answer before asking again, so the
offered load is bounded by the users (at most 64 / 0.4 s = 160 requests/s) rather than by
the CPU. This is where a deployment runs: its cores are not all busy, the 300 ms upstream is
what a user waits for, and the fewer paid calls are what shows. ``http`` measures the other
end, both apps saturating the same 2 cores.
"""

from __future__ import annotations

import os

from bench import http_load
from bench.stats import Target

THINK_MS = int(os.environ.get("KUYA_BENCH_HTTP_THINK_MS", "400"))


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    """Both contenders with the same paced users; the targets named ``http-paced``."""
    print(
        "\n## http-paced: the example app below saturation, users waiting "
        f"{THINK_MS} ms between requests\n"
    )
    return await http_load.run_at(pg_url, redis_url, scale, think_ms=THINK_MS, label="http-paced")
