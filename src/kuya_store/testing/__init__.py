"""Testing an app that embeds kuya-store: a pytest plugin and real servers on loopback.

Installed with the ``testing`` extra (``pip install "kuya-store[testing]"``), the plugin
(:mod:`kuya_store.testing.plugin`) is registered through pytest's ``pytest11`` entry point,
so its fixtures are there without a line of ``conftest.py``:

- ``kuya_store``: an open store on the embedded default (a SQLite file of the test's own,
  the in-process hot tier), on a manual clock (``kuya_clock``), fetching from a fake
  marketplace whose calls are counted (``kuya_market``);
- ``kuya_app``: a FastAPI app's test client whose ``kuya_store.integrations.fastapi``
  lifespan opens that kind of store instead of the one it is configured with;
- real servers, started once per session: ``kuya_postgres_url`` (a fresh database per
  test), ``kuya_redis_url``, ``kuya_pgbouncer``, ``kuya_streaming_pair``,
  ``kuya_redis_sentinel_url`` and ``kuya_redis_cluster_url``. They come from
  testcontainers when a Docker engine answers, else from the same loopback harness the
  project's own suite uses (:mod:`kuya_store.testing.servers`, which gathers
  :mod:`kuya_store.testing.pg_server` and :mod:`kuya_store.testing.redis_server`;
  :mod:`kuya_store.testing.pg_cluster`, :mod:`kuya_store.testing.redis_ha`).
"""

from __future__ import annotations

__all__: list[str] = []
