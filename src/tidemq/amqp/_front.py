"""The AMQP listener: a thin asyncio protocol around :class:`~._session.Session`, and the
registries sessions share (consumers by queue, exclusive owners, queue expiry).

Limits of the binary port apply here with the same settings (docs/server.md, "Limits"):
``max_connections`` and ``max_connections_per_ip`` (counted for this port), a complete
handshake (protocol header to ``connection.open``) within ``handshake_timeout``, frames up to
``max_hello_bytes`` before ``tune-ok`` and up to the negotiated ``frame_max`` (at most
``max_frame_bytes``) after, output buffered up to ``write_high_water`` (then nothing more is
delivered and input is not read until it drains below ``write_low_water``), and a peer whose
output stays above the mark for ``write_timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from ..errors import TideMQError
from ..server._fronts import Backend
from ._channel import Consumer
from ._errors import AmqpError
from ._model import Catalogue, Queue
from ._session import Session

__all__ = ["AmqpFront"]

log = logging.getLogger("tidemq.amqp")

CLOSE_OK_WAIT = 1.0  # seconds we wait for close-ok after connection.close
EXPIRE_EVERY = 0.05  # seconds between head-expiry passes (queues with x-message-ttl or a DLX)


class AmqpFront:
    """AMQP 0-9-1 over the server's broker (see docs/amqp.md). Loop-bound."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.catalogue = Catalogue(backend)
        self._server: asyncio.AbstractServer | None = None
        self.sessions: set[Session] = set()
        self._protocols: set[_Protocol] = set()
        self._per_ip: dict[str, int] = {}
        # queue name -> its consumers, in the order they came (a dict as an ordered set)
        self.consumers: dict[str, dict[Consumer, None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self.catalogue.load()
        self._server = await loop.create_server(lambda: _Protocol(self), host, port,
                                                ssl=self.backend.tls(), reuse_address=True,
                                                backlog=512)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._timer = loop.create_task(self._tick(), name="tidemq-amqp-heartbeats")
        self._expiry = loop.create_task(self._expire_heads(), name="tidemq-amqp-ttl")

    async def stop(self) -> None:
        """Stop accepting; close every connection (320 CONNECTION_FORCED): leases released."""
        if self._server is not None:
            self._server.close()
        for p in list(self._protocols):
            s = p.session
            if s is not None and s.state not in ("closing", "closed"):
                s.connection_error(AmqpError(320, "CONNECTION_FORCED - broker shutdown",
                                             connection=True))
            p.abort_soon()
        for task in (self._timer, self._expiry):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.sleep(0)
        for p in list(self._protocols):
            p.abort()

    # --- helpers for sessions ----------------------------------------------------------------

    def call_soon(self, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.call_soon(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.call_later(delay, fn)

    def in_thread(self, fn: Callable[[], None],
                  done: Callable[[BaseException | None], None]) -> None:
        assert self._loop is not None
        fut = self._loop.run_in_executor(None, fn)

        def finished(f: asyncio.Future[None]) -> None:
            done(None if f.cancelled() else f.exception())

        fut.add_done_callback(finished)

    def close_later(self, s: Session) -> None:
        assert self._loop is not None
        self._loop.call_later(CLOSE_OK_WAIT, s.end)

    def opened(self, s: Session) -> None:
        pass

    def closed(self, s: Session) -> None:
        self.sessions.discard(s)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for p in list(self._protocols):
                p.check(now)

    async def _expire_heads(self) -> None:
        """Every EXPIRE_EVERY s: the queues with x-message-ttl or a dead-letter exchange
        dead-letter what expired at their head, read or not (RabbitMQ's head expiry; a retry
        queue without consumers then cycles its messages back)."""
        b = self.backend
        while True:
            await asyncio.sleep(EXPIRE_EVERY)
            expired = 0
            for q in [q for q in self.catalogue.queues.values() if q.expires_head]:
                for _, topic in q.sources():
                    try:
                        expired += b.broker.expire_head(topic, q.group, now_us=b.now_us())
                    except TideMQError:  # its topic or group went meanwhile
                        continue
            if expired:
                b.want_push()

    # --- queues and consumers ----------------------------------------------------------------

    def check_owner(self, s: Session, q: Queue) -> None:
        if q.exclusive and q.owner is not None and q.owner != s.id:
            raise AmqpError(405, f"RESOURCE_LOCKED - cannot obtain exclusive access to locked "
                                 f"queue '{q.name}' in vhost '/'")

    def drop_exclusive(self, s: Session) -> None:
        for q in [q for q in self.catalogue.queues.values() if q.exclusive and q.owner == s.id]:
            self.delete_queue(q)

    def delete_queue(self, q: Queue) -> int:
        for c in self._consumers_of(q):
            c.session.cancelled_by_server(c)
        self.consumers.pop(q.name, None)
        return self.catalogue.delete_queue(q)

    def _consumers_of(self, q: Queue) -> list[Consumer]:
        return list(self.consumers.get(q.name, ()))

    def consumer_added(self, c: Consumer) -> None:
        q = c.queue
        self.consumers.setdefault(q.name, {})[c] = None
        q.consumers += 1
        q.had_consumer = True
        if q.expiry is not None:
            q.expiry.cancel()
            q.expiry = None

    def consumer_removed(self, c: Consumer) -> None:
        q = c.queue
        group = self.consumers.get(q.name)
        if group is not None:
            group.pop(c, None)
            if q.single_active and not c.standby and group:
                # The active consumer went: the one that waited longest takes over (its
                # session may be another connection's).
                nxt = next(iter(group))
                nxt.session.activate(nxt)
                nxt.session.want_pump(nxt)
        q.consumers = max(0, q.consumers - 1)
        if q.consumers == 0 and self.catalogue.queues.get(q.name) is q:
            if q.auto_delete and q.had_consumer:
                self.delete_queue(q)
            else:
                self.touch(q)

    def touch(self, q: Queue) -> None:
        """(Re)arm the queue's x-expires timer while it has no consumer."""
        ttl = q.arguments.get("x-expires")
        if not ttl or self._loop is None:
            return
        if q.expiry is not None:
            q.expiry.cancel()
            q.expiry = None
        if q.consumers == 0:
            q.expiry = self._loop.call_later(ttl / 1000, self._expire, q)

    def _expire(self, q: Queue) -> None:
        q.expiry = None
        if self.catalogue.queues.get(q.name) is q and q.consumers == 0:
            log.info("AMQP queue %r expired (x-expires)", q.name)
            self.delete_queue(q)

    def source_added(self, q: Queue, exchange: str) -> None:
        for c in self._consumers_of(q):
            if not c.standby:
                c.session.add_member(c, exchange)

    def source_removed(self, q: Queue, exchange: str) -> None:
        for c in self._consumers_of(q):
            if not c.standby:
                c.session.remove_member(c, exchange)

    # --- admission ---------------------------------------------------------------------------

    def admit(self, ip: str) -> bool:
        cfg = self.backend.config
        if len(self._protocols) >= cfg.max_connections \
                or self._per_ip.get(ip, 0) >= cfg.max_connections_per_ip \
                or self.backend.stopping():
            return False
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return True

    def leave(self, ip: str) -> None:
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)


class _Protocol(asyncio.Protocol):
    """Bytes to and from one session; handshake deadline; write-buffer flow control."""

    def __init__(self, front: AmqpFront) -> None:
        self.front = front
        self.session: Session | None = None
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.started = time.monotonic()
        self.paused_since: float | None = None
        self.admitted = False
        self.idle_fd = -1  # the socket as the server's idle poll watches it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport = transport
        peer: Any = transport.get_extra_info("peername")
        self.ip = peer[0] if isinstance(peer, tuple) else str(peer)
        if not self.front.admit(self.ip):
            log.info("refusing an AMQP connection from %s: connection limits", self.ip)
            transport.abort()
            return
        self.admitted = True
        cfg = self.front.backend.config
        transport.set_write_buffer_limits(cfg.write_high_water, cfg.write_low_water)
        try:
            loopback = ipaddress.ip_address(self.ip).is_loopback
        except ValueError:
            loopback = False
        self.session = Session(self.front, self.ip, transport.write, self.abort_soon,
                               loopback=loopback)
        self.session.reading = self._reading
        self.front.sessions.add(self.session)
        self.front._protocols.add(self)
        self.idle_fd = self.front.backend.idle.add(self, transport)

    def data_received(self, data: bytes) -> None:
        s = self.session
        if s is None:
            return
        s.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.front.leave(self.ip)
        self.front._protocols.discard(self)
        self.front.backend.idle.remove(self, self.idle_fd)
        if self.session is not None:
            self.session.end()

    def _reading(self, on: bool) -> None:
        """The session holds a publish (backlog full) or takes input again."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if on and self.paused_since is None:
            t.resume_reading()
        elif not on:
            t.pause_reading()

    def pause_writing(self) -> None:
        self.paused_since = time.monotonic()
        if self.session is not None:
            self.session.writable = False
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused_since = None
        held = self.session is not None and self.session._held_since is not None
        if self.transport is not None and not self.transport.is_closing() and not held:
            self.transport.resume_reading()
        if self.session is not None:
            self.session.resume()

    def check(self, now: float) -> None:
        s = self.session
        cfg = self.front.backend.config
        if s is None:
            return
        if s.state not in ("open", "closing", "closed") \
                and now - self.started > cfg.handshake_timeout:
            log.info("AMQP connection from %s: no connection.open within %.1f s; closing",
                     self.ip, cfg.handshake_timeout)
            s.end()
            return
        if self.paused_since is not None and now - self.paused_since > cfg.write_timeout:
            log.info("AMQP connection from %s reads too slowly; closing", self.ip)
            s.end()
            return
        s.check_heartbeat(now)

    def abort_soon(self) -> None:
        """Close once what is buffered was written (transport.close flushes)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
