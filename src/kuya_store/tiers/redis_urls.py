"""Redis URLs: one Redis, a Sentinel-managed master, or a Cluster (pure code, no I/O).

- ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS), ``unix:///path``:
  one server, as redis-py reads them;
- ``redis+sentinel://[user:password@]host1:port1,host2:port2/service[/db]``: the
  master that the sentinels name for ``service``, followed through failovers; the
  credentials are the data nodes' (the sentinels are asked without any);
- ``redis+cluster://[user:password@]host1:port1,host2:port2``: a Redis Cluster, found
  from any of the nodes given (database 0 only, as Cluster has no other).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["REDIS_SCHEMES", "RedisTarget", "parse_redis_url", "redact_redis_url"]

Kind = Literal["single", "sentinel", "cluster"]

_KINDS: dict[str, Kind] = {
    "redis": "single",
    "rediss": "single",
    "unix": "single",
    "redis+sentinel": "sentinel",
    "redis+cluster": "cluster",
}
REDIS_SCHEMES = frozenset(_KINDS)
_DEFAULT_PORT = {"single": 6379, "sentinel": 26379, "cluster": 6379}
_SERVICE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SECRET_OPTIONS = frozenset({"password"})


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names: the kind of deployment, its nodes and credentials."""

    kind: Kind
    url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    """One server's address; the sentinels; or the cluster nodes to start from."""
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    socket_path: str | None = None
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def _split_netloc(netloc: str) -> tuple[str, str | None, str | None]:
    """Host list, user name and password of a netloc (credentials percent-decoded)."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return netloc, None, None
    user, colon, password = userinfo.partition(":")
    return hosts, unquote(user) or None, unquote(password) if colon else None


def _parse_host(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"has a malformed IPv6 host {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError("names no host; expected e.g. 'redis://127.0.0.1:6379/0'")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("is not a valid Redis URL (bad host or port)")
    return host, int(port_text)


def _parse_db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError("has a database number that is not a non-negative integer")
    return int(text)


def parse_redis_url(url: str) -> RedisTarget:
    """What ``url`` names, or ``ValueError`` saying what is wrong with it (without secrets)."""
    scheme, sep, _ = url.partition("://")
    kind = _KINDS.get(scheme.lower()) if sep else None
    if kind is None:
        shown = scheme if sep else url.split(":", 1)[0]
        raise ValueError(
            f"has unsupported scheme {shown!r}; use 'redis://', 'rediss://', 'unix://', "
            "'redis+sentinel://' or 'redis+cluster://'"
        )
    parts = urlsplit(url)
    options = tuple(parse_qsl(parts.query))
    hosts, username, password = _split_netloc(parts.netloc)
    if scheme == "unix":
        if not parts.path:
            raise ValueError("names no socket path; expected e.g. 'unix:///run/redis.sock'")
        return RedisTarget(
            "single", url, (), None, 0, username, password, False, parts.path, options
        )
    default_port = _DEFAULT_PORT[kind]
    nodes = tuple(_parse_host(h.strip(), default_port) for h in hosts.split(","))
    path = parts.path.strip("/")
    if kind == "single":
        if len(nodes) != 1:
            raise ValueError("names several hosts; use 'redis+sentinel://' or 'redis+cluster://'")
        db = _parse_db(path)
        return RedisTarget(
            kind, url, nodes, None, db, username, password, scheme == "rediss", None, options
        )
    if kind == "sentinel":
        service, _, db_text = path.partition("/")
        if not _SERVICE.match(service):
            raise ValueError(
                "names no master service; expected e.g. "
                "'redis+sentinel://h1:26379,h2:26379/mymaster/0'"
            )
        return RedisTarget(
            kind, url, nodes, service, _parse_db(db_text), username, password, False, None, options
        )
    if path not in ("", "0"):
        raise ValueError("names a database other than 0, which Redis Cluster does not have")
    return RedisTarget(kind, url, nodes, None, 0, username, password, False, None, options)


def redact_redis_url(url: str) -> str:
    """The URL with its password (in the credentials or a ``password=`` option) as ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.split(":", 1)[0] + ":<unparseable>"
    netloc, slash, tail = rest.partition("/")
    if "/" not in rest and "?" in netloc:
        netloc, _, query = netloc.partition("?")
        slash, tail = "", f"?{query}"
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    path, question, query = tail.partition("?")
    if question:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(
            f"{k}{eq}{'***' if k.lower() in _SECRET_OPTIONS and eq else v}" for k, eq, v in pairs
        )
    return f"{scheme}://{netloc}{slash}{path}{question}{query}"
