"""API-cost replay with ground truth: what each cache spends upstream, and what its answers
miss, against a simulated marketplace whose every sale is known.

``market.py`` is the marketplace, ``workload.py`` the searches, ``quality.py`` the judge,
``baselines.py`` the caches modelled in pure Python (no cache, the plan's Redis-only cache,
kuya-store's rules one at a time), ``kuya.py`` the real store, ``report.py`` the run.
"""

from bench.replay.report import run

__all__ = ["run"]
