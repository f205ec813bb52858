"""Keeping every worker's near-cache coherent: Redis ``CLIENT TRACKING`` in ``BCAST`` mode.

Each worker holds one connection per server that takes writes (the server, the Sentinel
master, or each Cluster primary). On it, it subscribes to ``__redis__:invalidate`` and
asks Redis to redirect there the names of every key changed under the value and fence
prefixes (``kuya:v1:r:``, ``kuya:v1:g:``), by anyone. A value that changes drops this
worker's copy of it; a fence (an ``invalidate()`` anywhere) drops every variant of the
card; ``FLUSHDB`` drops everything.

Except a worker's own write: the script writing a value also sets and deletes a witness
key (``kuya:v1:r:#<write>:{card}:...``, under the value prefix and in the card's slot),
and Redis sends every key a script touched in one message. A value whose only witnesses
are this worker's writes in flight is its echo, and the copy of that write stays
(:class:`~kuya_store.tiers.near.EchoLedger`). Redis merges the changes of a key made in
one pass of its event loop into one message; another worker's write merged with ours
brings its own witness (or none), so it still evicts.

Messages are handled in the connection's ``data_received``, as soon as the event loop
reads them, before any task that the same loop iteration wakes: a request that reaches a
worker after another worker's ``invalidate()`` returned finds the copy already gone.

A lost connection empties the near-cache at once (what changed meanwhile is unknown) and
puts it back on short TTLs until the listener is connected again; so does a connection
that stops answering its heartbeat, or a change of master. The connection speaks RESP2
through ``hiredis`` (Redis 6 or newer), whatever protocol the data client uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import hiredis

from kuya_store.keys import ResultIdentity, changed_key, tracked_prefixes, witness_key
from kuya_store.logs import get_logger
from kuya_store.metrics import Metrics
from kuya_store.settings import StoreSettings
from kuya_store.tiers.near import NearCache
from kuya_store.tiers.redis_clients import Address, RedisDeployment

__all__ = ["InvalidationListener"]

_log = get_logger("kuya_store.coherence")
_CHANNEL = b"__redis__:invalidate"
_HEARTBEAT = 1.0
# A pong later than this means a dead or wedged connection; generous, since a busy event
# loop reads late, and a false alarm costs a flush.
_PONG_TIMEOUT = 3.0
_REFUSED_RETRY = 30.0
_FAILURES = (OSError, TimeoutError, ConnectionError, hiredis.ProtocolError)


class _Refused(ConnectionError):
    """Redis answered the handshake with an error (wrong password, no CLIENT TRACKING)."""


def _command(*args: str | bytes | int) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class _Tracking(asyncio.Protocol):
    """One tracking connection: handshake replies in order, then invalidation messages."""

    def __init__(self, on_keys: Callable[[list[bytes] | None], None]) -> None:
        self._on_keys = on_keys
        self._reader = hiredis.Reader()
        self._replies: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_lost: Callable[[], None] | None = None
        self.ping_sent: float | None = None
        self.client_id: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, whatever the loop: uvloop's is not an ``asyncio.Transport``.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                if reply[1] == _CHANNEL:
                    self._on_keys(reply[2])
            elif isinstance(reply, list) and reply and reply[0] == b"pong":
                self.ping_sent = None
            elif self._replies:
                waiter = self._replies.popleft()
                if not waiter.done():
                    waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        for waiter in self._replies:
            if not waiter.done():
                waiter.set_exception(ConnectionError("the tracking connection closed"))
        self._replies.clear()
        if not self.lost.done():
            self.lost.set_result(None)
        if self.on_lost is not None:
            self.on_lost()

    async def call(self, *args: str | bytes | int) -> Any:
        assert self._transport is not None
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies.append(waiter)
        self._transport.write(_command(*args))
        reply = await waiter
        if isinstance(reply, hiredis.ReplyError):
            raise _Refused(f"{args[0]!s} refused: {reply}")
        return reply

    def ping(self) -> None:
        if self._transport is not None and self.ping_sent is None:
            self.ping_sent = time.monotonic()
            self._transport.write(_command("PING"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _ssl_context(options: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_cert_reqs", "").lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class InvalidationListener:
    """Hears every change of hot-tier values and fences, and tells the near-cache.

    ``on_fence(card_key, fence_key)`` is told of each fence heard, so the store can
    learn the moment of an invalidation made by another worker.
    """

    def __init__(
        self,
        deployment: RedisDeployment,
        near: NearCache,
        settings: StoreSettings,
        metrics: Metrics,
        on_fence: Callable[[str, str], None] | None = None,
    ) -> None:
        self._deployment = deployment
        self._on_fence = on_fence
        self._near = near
        self._metrics = metrics
        self._prefix = settings.key_prefix
        self._values = tracked_prefixes(settings.key_prefix)[0]
        self._witnesses = f"{self._values}#"
        self._timeout = max(
            settings.redis_connect_timeout.total_seconds(),
            4 * settings.redis_socket_timeout.total_seconds(),
        )
        self._connections: list[_Tracking] = []
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Connect in the background (and reconnect, for as long as the store is open)."""
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._run(), name="kuya-invalidation-listener")

    @property
    def connected(self) -> bool:
        return self._near.coherent

    # -- invalidate() as a barrier ----------------------------------------------------

    def expect(self, key: str) -> asyncio.Future[None] | None:
        """A future resolved when a change of ``key`` is heard (``None`` if not listening)."""
        if not self._near.coherent:
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        return waiter

    async def wait(self, waiter: asyncio.Future[None], timeout: float) -> bool:
        """Wait for an expected change; ``False`` if it was not heard within ``timeout``."""
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except TimeoutError:
            self._metrics.incr("invalidations_unheard")
            return False
        finally:
            self.forget(waiter)

    def forget(self, waiter: asyncio.Future[None]) -> None:
        """Stop expecting a change (heard or not): the waiter is dropped."""
        waiter.cancel()
        for key, waiting in list(self._waiters.items()):
            if waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[key]

    def _release_waiters(self, key: str | None = None) -> None:
        doomed = self._waiters.pop(key, []) if key is not None else self._all_waiters()
        for waiter in doomed:
            if not waiter.done():
                waiter.set_result(None)

    def _all_waiters(self) -> list[asyncio.Future[None]]:
        waiting = [w for ws in self._waiters.values() for w in ws]
        self._waiters.clear()
        return waiting

    # -- this worker's own writes -----------------------------------------------------

    def expect_echo(self, identity: ResultIdentity, key: str, fetched_at: datetime) -> str:
        """The witness key to touch with a write of value ``key``.

        A write this worker will not recognise as its echo (not listening now, or too many
        in flight) still names itself, anonymously: a message that merges it with another
        worker's echo then shows that worker a witness not of its own.
        """
        name = None
        if self._near.coherent:
            name = self._near.echoes.expect(identity.card_key, identity.result_key, fetched_at)
        return witness_key(self._prefix, key, name)

    def settle_echo(self, identity: ResultIdentity, witness: str, written: bool) -> None:
        """The write named by ``witness`` came back, written or not (refused, failed)."""
        name = witness[len(self._witnesses) :].partition(":")[0]
        self._near.settled(name, identity.card_key, identity.result_key, written)

    # -- messages ---------------------------------------------------------------------

    def _heard(self, keys: list[bytes] | None) -> None:
        if keys is None:  # FLUSHDB / FLUSHALL: every key is gone
            self._near.flush()
            self._release_waiters()
            return
        witnessed: dict[str, list[str]] = {}
        changed: list[str] = []
        for raw in keys:
            key = raw.decode(errors="replace")
            if key.startswith(self._witnesses):
                name, _, rest = key[len(self._witnesses) :].partition(":")
                value = self._values + rest
                if value not in witnessed:
                    witnessed[value] = []
                    changed.append(value)  # its value is in the message too, or ought to be
                witnessed[value].append(name)
            else:
                changed.append(key)
        for key in dict.fromkeys(changed):
            parts = changed_key(self._prefix, key)
            if parts is not None:
                kind, card_key, result_key = parts
                if kind == "r" and result_key is not None:
                    self._near.value_changed(card_key, result_key, witnessed.get(key, []))
                else:
                    self._near.changed(card_key, None)
                if kind == "g" and self._on_fence is not None:
                    self._on_fence(card_key, key)
            if key in self._waiters:
                self._release_waiters(key)

    def _lost(self, connection: _Tracking) -> None:
        if connection in self._connections:
            # At once, in the callback: until now every change was heard; from now on not.
            self._connections = []
            self._near.heard_everything(False)
            self._release_waiters()
            self._metrics.incr("coherence_drops")

    # -- connecting -------------------------------------------------------------------

    async def _open(self, address: Address) -> _Tracking:
        loop = asyncio.get_running_loop()
        target = self._deployment.target
        options = dict(target.options)
        async with asyncio.timeout(self._timeout):
            if isinstance(address, str):
                _, protocol = await loop.create_unix_connection(
                    lambda: _Tracking(self._heard), address
                )
            else:
                host, port = address
                context = _ssl_context(options) if target.tls else None
                _, protocol = await loop.create_connection(
                    lambda: _Tracking(self._heard), host, port, ssl=context
                )
            try:
                password = target.password or options.get("password")
                username = target.username or options.get("username")
                if password:
                    await protocol.call("AUTH", *([username] if username else []), password)
                await protocol.call("CLIENT", "SETNAME", "kuya-invalidations")
                client_id = protocol.client_id = await protocol.call("CLIENT", "ID")
                prefixes = [arg for p in tracked_prefixes(self._prefix) for arg in ("PREFIX", p)]
                await protocol.call(
                    "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", *prefixes
                )
                await protocol.call("SUBSCRIBE", _CHANNEL)
            except BaseException:
                protocol.close()
                raise
        return protocol

    async def _run(self) -> None:
        delay = 0.05
        while not self._closing:
            opened: list[_Tracking] = []
            try:
                addresses = await asyncio.wait_for(self._deployment.masters(), self._timeout)
                if not addresses:
                    raise ConnectionError("no server takes writes yet")
                for address in addresses:
                    opened.append(await self._open(address))
            except Exception as exc:
                for connection in opened:
                    connection.close()
                self._metrics.incr("coherence_connect_failures")
                if isinstance(exc, _Refused):
                    # Not a passing outage (no CLIENT TRACKING before Redis 6, an ACL):
                    # say so, and ask seldom.
                    _log.warning("near-caches stay on short TTLs: %s", exc)
                    delay = _REFUSED_RETRY
                else:
                    _log.debug("invalidation listener could not connect: %r", exc)
                await self._deployment.refresh()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0) if delay < _REFUSED_RETRY else delay
                continue
            delay = 0.05
            for connection in opened:
                connection.on_lost = lambda c=connection: self._lost(c)
            if any(c.lost.done() for c in opened):
                continue
            self._connections = opened
            self._near.heard_everything(True)
            self._metrics.incr("coherence_connects")
            try:
                await self._watch(opened, addresses)
            finally:
                if opened:
                    self._lost(opened[0])
                for connection in opened:
                    connection.close()

    async def _watch(self, connections: list[_Tracking], addresses: list[Address]) -> None:
        """Return when a connection is lost or silent, or the servers taking writes change."""
        lost = [c.lost for c in connections]
        while not self._closing:
            done, _ = await asyncio.wait(lost, timeout=_HEARTBEAT, return_when="FIRST_COMPLETED")
            if done or self._connections is not connections:
                return
            now = time.monotonic()
            for connection in connections:
                sent = connection.ping_sent
                if sent is not None and now - sent > max(self._timeout, _PONG_TIMEOUT):
                    _log.info("invalidation listener: a connection stopped answering")
                    return
                connection.ping()
            if self._deployment.kind != "single":
                with contextlib.suppress(Exception):
                    current = await asyncio.wait_for(self._deployment.masters(), self._timeout)
                    if sorted(current, key=str) != sorted(addresses, key=str):
                        _log.info("invalidation listener: the servers taking writes changed")
                        return

    async def close(self) -> None:
        self._closing = True
        for connection in self._connections:
            connection.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._near.heard_everything(False)
        self._release_waiters()
