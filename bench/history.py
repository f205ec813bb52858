"""``store.analytics.price_history(card)`` of one card among 1,000,000 daily snapshots.

10,000 cards x 100 days are loaded server-side (``INSERT .. SELECT FROM generate_series``),
in day order as a live system would write them (one card's rows spread over the table),
with the JSON parallel and grading analyses a real snapshot carries. Then ``ANALYZE``, and
random cards are read through kuya-store and through raw asyncpg ``fetch`` of the same SQL,
alternating which goes first.
"""

from __future__ import annotations

import random
import time

import asyncpg
import orjson

import kuya_store as ks
from bench.stats import Target, ms_line, pct

SQL = "SELECT * FROM price_snapshots WHERE card_identifier = $1 ORDER BY snapshot_date"
TARGET_MS = 5.0
TARGET_RATIO = 1.5
"""``price_history`` at p50 against the raw asyncpg fetch of the same rows."""
LOAD = """
INSERT INTO price_snapshots (
    card_identifier, snapshot_date, fmv_low, fmv_high, market_value, quick_sale,
    patient_sale, sample_size, min_price, max_price, avg_price, volume_confidence,
    parallel_analysis, grading_analysis
)
SELECT
    'prospect-' || c, DATE '2026-01-01' + d, v * 0.85, v * 1.15, v, v * 0.9, v * 1.08,
    20 + (c + d) % 30, v * 0.6, v * 4, v * 1.4, 'high',
    jsonb_build_object(
        'base', jsonb_build_object('count', 30, 'median', v::text, 'premium_pct', '0.0'),
        'silver prizm', jsonb_build_object('count', 2, 'median', (v * 2)::text,
                                           'premium_pct', '100.0')
    ),
    jsonb_build_object(
        'raw', jsonb_build_object('count', 25, 'median', v::text, 'premium_pct', '0.0'),
        'PSA 10', jsonb_build_object('count', 3, 'median', (v * 3)::text,
                                     'premium_pct', '200.0')
    )
FROM generate_series(0, $2 - 1) AS d,
     generate_series(0, $1 - 1) AS c,
     LATERAL (SELECT round((5 + (c % 9500) / 100.0 + d * 0.05)::numeric, 2) AS v) AS price
"""


async def run(pg_url: str, redis_url: str, scale: float) -> list[Target]:
    # A smoke run (scale < 1) loads 3% of the table: the ratio, not the size, is checked.
    cards, days = (10_000, 100) if scale >= 1 else (300, 100)
    lookups = max(100, int(500 * scale)) if scale >= 1 else 50
    print(f"\n## price history: one card among {cards * days:,} snapshots ({lookups} random cards)")
    assert ks.normalize_card("prospect-123") == "prospect-123"
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    await ks.migrations.downgrade_async(pg_url, "base")
    await ks.migrations.upgrade_async(pg_url)
    async with ks.CompsStore(database_url=pg_url) as store:
        conn = await asyncpg.connect(dsn)
        try:
            started = time.perf_counter()
            await conn.execute(LOAD.replace("$1", str(cards)).replace("$2", str(days)))
            await conn.execute("ANALYZE price_snapshots")
            loaded = await conn.fetchval("SELECT count(*) FROM price_snapshots")
            print(f"loaded {loaded:,} rows and analyzed in {time.perf_counter() - started:.1f} s")
            rng = random.Random(7)
            picks = [f"prospect-{rng.randrange(cards)}" for _ in range(lookups)]

            async def ours(card: str) -> int:
                return len(await store.analytics.price_history(card))

            async def raw(card: str) -> int:
                return len(await conn.fetch(SQL, card))

            async def decoded(card: str) -> int:
                # What an app must add to the raw fetch to use the analyses: asyncpg hands
                # JSONB over as text.
                rows = await conn.fetch(SQL, card)
                for row in rows:
                    for column in ("parallel_analysis", "grading_analysis"):
                        if row[column] is not None:
                            orjson.loads(row[column])
                return len(rows)

            for card in picks[:50]:  # warm-up: pool, prepared statements, buffer cache
                assert await ours(card) == days
                assert await raw(card) == days
            times: dict[str, list[float]] = {"ours": [], "raw": [], "decoded": []}
            contenders = [("ours", ours), ("raw", raw), ("decoded", decoded)]
            for i, card in enumerate(picks):
                order = contenders[i % 3 :] + contenders[: i % 3]  # each goes first in turn
                for name, work in order:
                    begun = time.perf_counter()
                    assert await work(card) == days
                    times[name].append((time.perf_counter() - begun) * 1000)
        finally:
            await conn.close()
    await ks.migrations.downgrade_async(pg_url, "base")
    print(ms_line("asyncpg fetch of the same SQL (baseline)", times["raw"]))
    print(ms_line("asyncpg fetch + orjson of the two JSONB columns", times["decoded"]))
    print(ms_line("kuya-store analytics.price_history()", times["ours"]))
    p50 = pct(times["ours"], 50)
    ratio = p50 / pct(times["raw"], 50)
    print(
        f"ratio (p50): price_history()/asyncpg fetch = {ratio:.2f}x; "
        f"p99 {pct(times['ours'], 99) / pct(times['raw'], 99):.2f}x; "
        f"against fetch + JSON decode {p50 / pct(times['decoded'], 50):.2f}x"
    )
    return [
        Target(
            "price_history vs raw asyncpg fetch of the same rows, p50",
            f"<= {TARGET_RATIO}x",
            f"{ratio:.2f}x ({p50:.2f} vs {pct(times['raw'], 50):.2f} ms; "
            f"{p50 / pct(times['decoded'], 50):.2f}x fetch + JSON decode)",
            ratio <= TARGET_RATIO,
        ),
        Target(
            "history of 1 card among 1M snapshots, p50",
            f"<= {TARGET_MS:.0f} ms",
            f"{p50:.2f} ms (p99 {pct(times['ours'], 99):.2f} ms)",
            p50 <= TARGET_MS,
        ),
    ]
