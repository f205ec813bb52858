"""The Redis client for a URL: one server, a Sentinel-managed master, or a Cluster.

Whichever it is, the hot tier sees one ``redis.asyncio`` client with the same commands
and scripts; what differs (where writes land, which node owns a key) is answered here.

- Sentinel: every new connection asks the sentinels for the current master, and a
  connection still open to a demoted master is dropped on its first refused write, so
  the tier, its locks and every counter follow the master through a failover.
- Cluster: keys are tagged by card (:mod:`kuya_store.keys`), so each script runs on one
  node; a node that is down fails only the cards it owns, and the tier keeps a breaker
  per node.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from kuya_store.settings import StoreSettings
from kuya_store.tiers.redis_urls import RedisTarget

__all__ = ["Address", "RedisDeployment"]

Address = tuple[str, int] | str
"""Where a server listens: host and port, or a Unix socket path."""

_Client = aioredis.Redis | RedisCluster


class RedisDeployment:
    """The client of one ``redis_url``, and what the tier must know about its servers."""

    def __init__(self, settings: StoreSettings) -> None:
        target = settings.redis_target
        assert target is not None
        self.target: RedisTarget = target
        self.kind = target.kind
        timeouts: dict[str, Any] = {
            "socket_timeout": settings.redis_socket_timeout.total_seconds(),
            "socket_connect_timeout": settings.redis_connect_timeout.total_seconds(),
        }
        self._sentinel: Sentinel | None = None
        # Sentinel and Cluster pools fail at once when every connection is taken, which
        # would look like an outage to the breaker: a burst waits here instead.
        self.slots: asyncio.Semaphore | None = None
        self.client: _Client
        if target.kind == "single":
            # A burst larger than the pool waits for a free connection instead of failing,
            # which would look like a Redis outage and open the breaker.
            pool = aioredis.BlockingConnectionPool.from_url(
                target.url,
                max_connections=settings.redis_max_connections,
                timeout=settings.redis_pool_timeout.total_seconds(),
                retry_on_timeout=False,
                **timeouts,
            )
            self.client = aioredis.Redis.from_pool(pool)
            return
        self.slots = asyncio.Semaphore(settings.redis_max_connections)
        if target.kind == "sentinel":
            assert target.service is not None
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(target.nodes), sentinel_kwargs=dict(timeouts)
            )
            self.client = self._sentinel.master_for(
                target.service,
                db=target.db,
                username=target.username,
                password=target.password,
                max_connections=settings.redis_max_connections,
                retry_on_timeout=False,
                **timeouts,
            )
            return
        self.client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            max_connections=settings.redis_max_connections,
            # One retry, at once, after the client re-reads the slot map: enough to follow
            # a failover that is over; one still under way is the breaker's to skip.
            retry=Retry(NoBackoff(), 1),
            require_full_coverage=False,
            **timeouts,
        )

    def node_of(self, key: str) -> str:
        """The node that owns ``key`` (``""`` unless a Cluster: there is one place only)."""
        if not isinstance(self.client, RedisCluster):
            return ""
        try:
            node = self.client.get_node_from_key(key)
        except Exception:  # slot map not read yet, or the slot is not covered
            return ""
        return node.name if node is not None else ""

    async def masters(self) -> list[Address]:
        """Where writes land now: the one server, the current master, or each primary."""
        target = self.target
        if target.kind == "single":
            if target.socket_path is not None:
                return [target.socket_path]
            return [target.nodes[0]]
        if self._sentinel is not None:
            assert target.service is not None
            host, port = await self._sentinel.discover_master(target.service)
            return [(str(host), int(port))]
        assert isinstance(self.client, RedisCluster)
        if not self.client.get_primaries():
            await self.client.initialize()
        return sorted((node.host, int(node.port)) for node in self.client.get_primaries())

    async def refresh(self) -> None:
        """Read a Cluster's slot map again (after a node stopped answering)."""
        if isinstance(self.client, RedisCluster):
            with contextlib.suppress(Exception):
                await self.client.nodes_manager.initialize()

    async def ping(self) -> bool:
        """Whether every server that holds data answers."""
        if isinstance(self.client, RedisCluster):
            answer = await self.client.ping(target_nodes=RedisCluster.PRIMARIES)
            if isinstance(answer, dict):
                return all(bool(value) for value in answer.values())
            return bool(answer)
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()
