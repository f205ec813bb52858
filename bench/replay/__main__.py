"""The replay's pure-Python models alone, at any size: ``python -m bench.replay [N CARDS DAYS]``.

No store runs, so a workload far larger than the benchmark's (default: 50,000 searches on
3,000 cards over 5 days) shows in a minute or two whether its conclusions hold at more
traffic.
"""

from __future__ import annotations

import sys
import time

from bench.replay.report import models_only


def main() -> None:
    given, defaults = sys.argv[1:4], ["50000", "3000", "5"]
    searches, cards, days = given + defaults[len(given) :]
    started = time.perf_counter()
    models_only(int(searches), int(cards), float(days))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
