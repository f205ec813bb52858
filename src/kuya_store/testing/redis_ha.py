"""Highly available Redis on loopback for the suite: Sentinel and Cluster, real servers.

- :class:`SentinelSet`: a master, a replica and three sentinels (about 3 s to settle);
  ``url`` is a ``redis+sentinel://`` URL, ``kill_master()`` SIGKILLs the master.
- :class:`ClusterSet`: three masters, with or without a replica each (about 2 s);
  ``url`` is a ``redis+cluster://`` URL, ``master_of(key)`` names the node owning a key.

Built on :mod:`redis_server` (the same ``redis-server`` binary, installed on demand); only
the standard library is used, so it runs before the project's dependencies are there.
"""

from __future__ import annotations

import binascii
import contextlib
import random
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Self

from kuya_store.testing.loopback import (
    HOST,
    START_TIMEOUT,
    Started,
    _log_tail,
    _mkdtemp,
    _wait_until,
    free_port,
)
from kuya_store.testing.redis_server import RedisServer

__all__ = ["ClusterSet", "RedisNode", "SentinelSet", "key_slot"]

SERVICE = "kuyamaster"
_SETTLE_TIMEOUT = 30.0


class RedisNode(RedisServer):
    """A ``redis-server`` started with extra options (a replica, a cluster node, a sentinel)."""

    def __init__(self, base_dir: Path, port: int, options: list[str], sentinel: bool = False):
        super().__init__(base_dir=base_dir, port=port)
        self.options = options
        self.sentinel = sentinel

    def _launch_args(self) -> list[str]:
        if not self.sentinel:
            return [*super()._launch_args(), *self.options]
        # A sentinel rewrites its configuration file, so it needs one of its own.
        conf = self.base_dir / "sentinel.conf"
        conf.write_text("\n".join(self.options) + "\n")
        return [str(conf), "--sentinel", *self._common_args()]

    def stop(self) -> None:
        if self.sentinel:
            self.kill()  # a sentinel has no SHUTDOWN NOSAVE to wait for
        else:
            super().stop()

    def call(self, *args: str) -> str:
        """Run one command with ``redis-cli`` and return its raw output."""
        done = subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout

    def info(self, section: str) -> dict[str, str]:
        """``INFO section`` (or ``CLUSTER INFO`` for ``"cluster"``) as a dict."""
        command = ["CLUSTER", "INFO"] if section == "cluster" else ["INFO", section]
        lines = self.call(*command).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def owns(self, key: str) -> bool:
        """Whether this cluster node serves ``key``'s slot, by its own account."""
        slot = key_slot(key)
        for line in self.call("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) < 3 or "myself" not in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return True
        return False


def _bus_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20_000, 40_000)
        if port not in taken and _bus_free(port) and _bus_free(port + 10_000):
            taken.add(port)
            return port
    raise RuntimeError("no free port pair for a cluster node")


class _NodeSet(Started):
    def __init__(self, prefix: str) -> None:
        self.base_dir = _mkdtemp(prefix)
        self.nodes: list[RedisNode] = []

    def _node(self, name: str, port: int, options: list[str], sentinel: bool = False) -> RedisNode:
        node = RedisNode(self.base_dir / name, port, options, sentinel)
        node.base_dir.mkdir(parents=True, exist_ok=True)
        self.nodes.append(node)
        return node

    def _settle(self, what: str, ready: object) -> None:
        if not _wait_until(ready, _SETTLE_TIMEOUT, interval=0.05):
            logs = "\n".join(f"{n!r}:\n{_log_tail(n.logfile, 10)}" for n in self.nodes)
            raise RuntimeError(f"{what} did not settle within {_SETTLE_TIMEOUT}s\n{logs}")

    def cleanup(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)


class SentinelSet(_NodeSet):
    """One master, ``replicas`` replicas and three sentinels watching them."""

    def __init__(self, replicas: int = 1) -> None:
        super().__init__("kuya-sentinel-")
        data = ["--repl-diskless-sync-delay", "0"]
        self.master = self._node("master", free_port(), data)
        self.replicas = [
            self._node(f"replica{i}", free_port(), [*data, "--replicaof", HOST, "0"])
            for i in range(replicas)
        ]
        self.sentinels = [self._node(f"sentinel{i}", free_port(), [], True) for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> Self:
        for replica in self.replicas:
            replica.options[-1] = str(self.master.port)
        for sentinel in self.sentinels:
            sentinel.options = [
                f"sentinel monitor {SERVICE} {HOST} {self.master.port} 2",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 3000",
            ]
        for node in self.nodes:
            node.start()
        self._settle("the sentinel set", self._settled)
        return self

    def _settled(self) -> bool:
        if any(r.info("replication").get("master_link_status") != "up" for r in self.replicas):
            return False
        for sentinel in self.sentinels:
            reply = sentinel.call("SENTINEL", "MASTER", SERVICE).split()
            state = dict(zip(reply[::2], reply[1::2], strict=False))
            if state.get("num-other-sentinels") != str(len(self.sentinels) - 1):
                return False
            if state.get("num-slaves") != str(len(self.replicas)):
                return False
        return True

    def current_master(self) -> RedisNode:
        """The data node the sentinels name as master now."""
        reply = self.sentinels[0].call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE).split()
        port = int(reply[1])
        return next(node for node in [self.master, *self.replicas] if node.port == port)

    def kill_master(self) -> RedisNode:
        """SIGKILL the current master, as a crash would; returns it."""
        master = self.current_master()
        master.kill()
        return master


class ClusterSet(_NodeSet):
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        super().__init__("kuya-cluster-")
        self.replicas_per_master = replicas
        taken: set[int] = set()
        for i in range(masters * (1 + replicas)):
            port = _cluster_port(taken)
            options = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.base_dir / f"node{i}" / "nodes.conf"),
                "--cluster-node-timeout",
                "1000",
                # A master down without a replica fails its own slots, not the cluster.
                "--cluster-require-full-coverage",
                "no",
                "--cluster-replica-validity-factor",
                "0",
                "--repl-diskless-sync-delay",
                "0",
            ]
            self._node(f"node{i}", port, options)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes[:3])

    def start(self) -> Self:
        for node in self.nodes:
            node.start()
        addresses = [f"{HOST}:{n.port}" for n in self.nodes]
        replicas = ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        done = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, *replicas],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT * 3,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        self._settle("the cluster", self._settled)
        return self

    def _live_nodes(self) -> list[RedisNode]:
        return [n for n in self.nodes if n._alive()]

    def _settled(self) -> bool:
        for node in self._live_nodes():
            if node.info("cluster").get("cluster_state") != "ok":
                return False
            replication = node.info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def masters(self) -> list[RedisNode]:
        """The live nodes that serve slots as masters now."""
        return [n for n in self._live_nodes() if n.info("replication").get("role") == "master"]

    def master_of(self, key: str) -> RedisNode:
        """The live master that owns ``key``'s slot now."""
        for node in self.masters():
            if node.owns(key):
                return node
        raise LookupError(f"no live master owns slot {key_slot(key)}")

    def wait_until_serving(self, key: str, timeout: float = _SETTLE_TIMEOUT) -> RedisNode:
        """Wait until a live master owns ``key``'s slot again (after a failover)."""

        def owned() -> bool:
            with contextlib.suppress(LookupError, IndexError, ValueError):
                return self.master_of(key).info("replication").get("role") == "master"
            return False

        if not _wait_until(owned, timeout, interval=0.05):
            raise RuntimeError(f"no master took over {key!r} within {timeout}s")
        return self.master_of(key)


def key_slot(key: str) -> int:
    """The Cluster slot of ``key``: CRC16 (XMODEM) of its hash tag, or of the whole key."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % 16384
