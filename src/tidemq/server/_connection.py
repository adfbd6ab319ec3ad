"""One client connection: bytes in -> frames -> broker calls -> frames -> bytes out.

Built on ``asyncio.Protocol`` (callbacks, no task per connection): ``data_received`` decodes
every whole frame that arrived and handles it at once; what a pass produces is written with
one ``transport.writelines`` per loop iteration (``_flush``), so a pipelined burst of requests
costs a few syscalls, not one per frame.

Failure rules (SPEC §9):

- a malformed frame (the decoder raises ``ProtocolError``/``FrameTooLarge``) or a frame that
  breaks the session rules (no ``Hello`` first): a fatal ``Error`` frame, then this connection
  is closed; other connections do not notice;
- a request the broker refuses: an ``Error`` frame with the request's id; the connection goes on;
- a bug (any other exception): logged, answered as ``InternalError``; the connection goes on.

Leases: when the connection ends — EOF, a socket error, heartbeat silence or server shutdown —
:meth:`Connection.release` unsubscribes each of its members at once (through the server's
subscription registry), which releases their leases: the messages become ready for other members
immediately, not after ``ack_timeout``.

A connection is a session (h11 style): it sees only what the server lends it in
:class:`Services` — never the ``Server`` — and is itself the narrow ``_dispatch.Context`` its
request handlers get. The import order is one-way: ``_push`` → ``_registry`` → ``_dispatch`` →
``_connection`` → ``_server``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from .. import protocol as P
from ..broker import Broker, SyncToken
from ..errors import BacklogFull, InternalError, ProtocolError, StorageFailed, TideMQError
from ._config import ServerConfig
from ._dispatch import HANDLERS, Blocked, Handler
from ._registry import Subscriptions

__all__ = ["Connection", "Services", "MakeDurable"]

log = logging.getLogger("tidemq.server")

HELD_LIMIT = 8 * 1024 * 1024  # bytes of held publishes before we stop reading the connection
SERVER_NAME = "tidemq"

#: ``make_durable(token, done)``: make ``token`` durable off the loop, then call ``done(None)``
#: (or ``done(exc)``) on the loop. The server decides how (today: its group committer).
MakeDurable = Callable[[SyncToken, Callable[[BaseException | None], None]], None]


@dataclass(frozen=True, slots=True)
class Services:
    """What the server lends each connection, and all a connection may use of it."""

    config: ServerConfig
    broker: Broker
    registry: Subscriptions
    now_us: Callable[[], int]  # wall clock, µs since the epoch
    mono_us: Callable[[], int]  # monotonic clock, µs
    make_durable: MakeDurable
    want_push: Callable[[str | None], None]  # push pass soon; a member's credit/writability changed
    connections: set[Connection]  # the live connections: a connection adds and removes itself
    stopping: Callable[[], bool]  # True once shutdown began: refuse new connections
    # DriverCore.blocked: seconds to wait before retrying a publish blocked by a full backlog,
    # or BacklogFull once it waited block_timeout (the same rule as embedded).
    blocked: Callable[[str, BacklogFull, int, int], float]


class Connection(asyncio.Protocol):
    """The server side of one TCP connection. Lives on the server's event loop only."""

    def __init__(self, services: Services) -> None:
        self._services = services
        cfg = services.config
        self.config = cfg
        # The handlers' Context (see _dispatch): plain attributes, so a request costs no
        # extra call to reach them.
        self.broker = services.broker
        self.registry = services.registry
        self.now_us = services.now_us
        self.mono_us = services.mono_us
        self.want_push = services.want_push
        self.decoder = P.Decoder(max_frame_size=cfg.max_frame_bytes)
        self.max_frame_size = cfg.max_frame_bytes
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.ready = False  # Hello received and answered
        self.closed = False
        self.writable = True  # False while the transport's buffer is above the high-water mark
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.last_received = time.monotonic()
        self.last_sent = self.last_received
        self._ping_id = 0
        # Publishes held by a full backlog (policy 'block'), oldest first.
        self._held: deque[Any] = deque()
        self._held_bytes = 0
        self._blocked_since = 0  # mono µs
        self._retry_pending = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = t = cast(asyncio.Transport, transport)
        cfg = self.config
        t.set_write_buffer_limits(high=cfg.write_high_water, low=cfg.write_low_water)
        peer = t.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self._services.stopping():
            t.abort()
            return
        self._services.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        decoder = self.decoder
        try:
            decoder.feed(data)
        except ProtocolError as exc:
            self.fail(exc)
            return
        self._process()

    def _process(self) -> None:
        """Handle every whole frame buffered. While publishes are held by a full backlog, later
        publishes queue behind them (their order is kept); other frames — acks above all, which
        are what frees the backlog — are handled at once."""
        decoder = self.decoder
        held = self._held
        try:
            while not self.closed:
                frame = decoder.next_frame()
                if frame is P.NEED_DATA:
                    break
                if held and type(frame) is P.Publish:
                    self._hold(frame)
                else:
                    self._handle(frame)
        except ProtocolError as exc:  # the stream cannot be resynchronised: end this connection
            log.info("closing %s: %s", self.peer, exc.message)
            self.fail(exc)
            return
        if self._out:
            self._flush()
        self.want_push(None)

    def _hold(self, frame: Any) -> None:
        """Queue a publish behind a blocked one. Past ``HELD_LIMIT`` bytes held, stop reading
        the connection: TCP then pushes back on the producer."""
        self._held.append(frame)
        self._held_bytes += len(frame.batch)
        if self._held_bytes > HELD_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def _park(self, frame: Any) -> None:
        """Backlog full under policy 'block': keep ``frame`` first in line and retry it every
        few ms, as the driver core says, for at most ``block_timeout`` s."""
        if not self._held:
            self._blocked_since = self.mono_us()
        if not self._retry_pending:
            self._retry_pending = True
            try:
                wait = self._services.blocked(frame.topic, BacklogFull("backlog full"),
                                              self._blocked_since, self.mono_us())
            except BacklogFull:
                wait = 0.0  # timed out: the retry answers it
            asyncio.get_running_loop().call_later(wait, self._retry_held)
        self._held.appendleft(frame)
        self._held_bytes += len(frame.batch)

    def _retry_held(self) -> None:
        self._retry_pending = False
        held = self._held
        if self.closed or not held:
            return
        timed_out: BacklogFull | None = None
        try:
            self._services.blocked(held[0].topic, BacklogFull("backlog full"),
                                   self._blocked_since, self.mono_us())
        except BacklogFull as exc:
            timed_out = exc
        while held:
            frame = held.popleft()
            self._held_bytes -= len(frame.batch)
            if timed_out is not None:
                self.send_error(frame.request_id, timed_out)
                continue
            self._handle(frame)  # may park it again (then it is first in line again)
            if held and held[0] is frame:
                break
        if not held:
            self._held_bytes = 0
            if self.transport is not None and self.writable:
                self.transport.resume_reading()
            self._process()  # frames left in the decoder while reading was paused
        elif self._out:
            self._flush()

    def eof_received(self) -> bool | None:
        self.release()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()

    def pause_writing(self) -> None:
        # The peer reads slower than we write: stop pushing to it, and stop reading its
        # requests so their answers cannot pile up either (TCP pushes back on the peer).
        self.writable = False
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable = True
        if self.transport is not None and not self.closed and self._held_bytes <= HELD_LIMIT:
            self.transport.resume_reading()
        for sub in self.registry.of_connection(self):
            self.want_push(sub.member)

    # --- frames out -------------------------------------------------------------------------

    def send(self, frame: Any) -> None:
        """Queue ``frame`` for the next flush (same loop iteration). Dropped once closed."""
        if self.closed:
            return
        try:
            self._out += P.encode_buffers(frame, max_frame_size=self.max_frame_size)
        except TideMQError as exc:
            # An answer too large for the session (a huge describe): say so instead.
            rid = getattr(frame, "request_id", 0)
            self._out += P.encode_buffers(P.Error.from_exception(exc, rid))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_error(self, request_id: int, exc: TideMQError, *, fatal: bool = False) -> None:
        self.send(P.Error.from_exception(exc, request_id, fatal=fatal))

    def after_sync(self, token: SyncToken, answer: Callable[[], Any]) -> None:
        """Send ``answer()`` now, or once ``token`` is durable when its topic needs that (the
        server's ``make_durable`` decides how). A failed sync answers with the error instead;
        ``answer`` may carry the ``request_id`` that error answers."""
        if not self.broker.needs_sync(token):
            self.send(answer())
            return
        rid = getattr(answer, "request_id", 0)

        def done(exc: BaseException | None) -> None:
            if exc is None:
                self.send(answer())
            elif isinstance(exc, TideMQError):
                self.send_error(rid, exc)
            else:
                self.send_error(rid, StorageFailed(f"fsync failed: {exc}"))

        self._services.make_durable(token, done)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        if self.transport is not None and not self.closed:
            self.transport.writelines(out)
            self.last_sent = time.monotonic()

    # --- frames in --------------------------------------------------------------------------

    def _handle(self, frame: Any) -> None:
        rid = frame.request_id
        if not self.ready:
            if isinstance(frame, P.Hello):
                self._hello(frame)
                return
            raise ProtocolError(f"the first frame must be Hello, got {type(frame).__name__}")
        handler: Handler | None = HANDLERS.get(type(frame))
        if handler is None:
            self.send_error(rid, ProtocolError(
                f"{type(frame).__name__} is not a request a client may send"))
            return
        try:
            handler(self, frame)
        except Blocked:
            self._park(frame)
        except TideMQError as exc:
            self.send_error(rid, exc)
        except Exception as exc:  # a bug: report it, keep the connection
            log.exception("request %s from %s failed", type(frame).__name__, self.peer)
            self.send_error(rid, InternalError(f"{type(exc).__name__}: {exc}"))

    def _hello(self, hello: P.Hello) -> None:
        # The session terms are the protocol package's rules (one implementation). A client
        # frame limit below the protocol floor is raised to it, as this server always did.
        answer = P.accept_hello(hello, server_name=SERVER_NAME,
                                max_frame_size=self.max_frame_size,
                                heartbeat_ms=int(self.config.heartbeat_interval * 1000),
                                raise_small_frame_limit=True)
        if isinstance(answer, P.Error):  # no common version: fatal, then close
            self._fail_with(answer)
            return
        self.max_frame_size = self.decoder.max_frame_size = answer.max_frame_size
        self.ready = True
        self.send(answer)

    # --- heartbeats and ending --------------------------------------------------------------

    def check_heartbeat(self, now: float, interval: float, timeout: float) -> None:
        """Called every ``interval/2`` s: ping a quiet peer, drop a silent one."""
        if self.closed:
            return
        silent = now - self.last_received
        if silent >= timeout:
            log.info("closing %s: no frame for %.1f s (heartbeat timeout)", self.peer, silent)
            self.abort()
        elif silent >= interval:
            self._ping_id = (self._ping_id % 0x7FFF_FFFF) + 1
            self.send(P.Ping(request_id=self._ping_id))

    def go_away(self) -> None:
        """Shutdown: tell the client to reconnect elsewhere / later; in-flight answers follow."""
        self.send(P.GoAway(code=0, message="server shutting down"))

    def fail(self, exc: TideMQError, *, request_id: int = 0) -> None:
        """Send a fatal error, then close this connection (its buffered answers first)."""
        self._fail_with(P.Error.from_exception(exc, request_id, fatal=True))

    def _fail_with(self, error: P.Error) -> None:
        self.send(error)
        self._flush()
        self.close()

    def close(self) -> None:
        """Flush, release every lease, close the socket."""
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()
        self.release()

    def abort(self) -> None:
        """Drop the connection without flushing (the peer is gone) and release its leases."""
        if self.transport is not None:
            self.transport.abort()
        self.release()

    def release(self) -> None:
        """Unsubscribe every member of this connection (leases released now). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._out = []
        self._services.connections.discard(self)
        self.registry.close_connection(self)
