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
:meth:`Connection.release` unsubscribes each of its members at once, which releases their
leases: the messages become ready for other members immediately, not after ``ack_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .. import protocol as P
from ..errors import BacklogFull, InternalError, ProtocolError, TideMQError, UnsupportedVersion
from ._dispatch import HANDLERS, Blocked
from ._push import Subscription

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["Connection", "Subscription"]

log = logging.getLogger("tidemq.server")

PROTOCOL_VERSION = 1
BLOCK_RETRY = 0.02  # seconds between retries of a publish blocked by a full backlog
HELD_LIMIT = 8 * 1024 * 1024  # bytes of held publishes before we stop reading the connection
SERVER_NAME = "tidemq"


class Connection(asyncio.Protocol):
    """The server side of one TCP connection. Lives on the server's event loop only."""

    def __init__(self, server: Server) -> None:
        self.server = server
        cfg = server.config
        self.decoder = P.Decoder(max_frame_size=cfg.max_frame_bytes)
        self.max_frame_size = cfg.max_frame_bytes
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.ready = False  # Hello received and answered
        self.closed = False
        self.writable = True  # False while the transport's buffer is above the high-water mark
        self.subs: dict[int, Subscription] = {}
        self._next_sub = 1
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.last_received = time.monotonic()
        self.last_sent = self.last_received
        self._ping_id = 0
        # Publishes held by a full backlog (policy 'block'), oldest first.
        self._held: deque[Any] = deque()
        self._held_bytes = 0
        self._blocked_since = 0.0
        self._retry_pending = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = t = cast(asyncio.Transport, transport)
        cfg = self.server.config
        t.set_write_buffer_limits(high=cfg.write_high_water, low=cfg.write_low_water)
        peer = t.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self.server._stopping:
            t.abort()
            return
        self.server.connections.add(self)

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
        self.server.want_push()

    def _hold(self, frame: Any) -> None:
        """Queue a publish behind a blocked one. Past ``HELD_LIMIT`` bytes held, stop reading
        the connection: TCP then pushes back on the producer."""
        self._held.append(frame)
        self._held_bytes += len(frame.batch)
        if self._held_bytes > HELD_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def _park(self, frame: Any) -> None:
        """Backlog full under policy 'block': keep ``frame`` first in line and retry it every
        ``BLOCK_RETRY`` s, for at most ``block_timeout`` s."""
        if not self._held:
            self._blocked_since = time.monotonic()
        if not self._retry_pending:
            self._retry_pending = True
            asyncio.get_running_loop().call_later(BLOCK_RETRY, self._retry_held)
        self._held.appendleft(frame)
        self._held_bytes += len(frame.batch)

    def _retry_held(self) -> None:
        self._retry_pending = False
        held = self._held
        if self.closed or not held:
            return
        timed_out = time.monotonic() - self._blocked_since > self.server.config.block_timeout
        while held:
            frame = held.popleft()
            self._held_bytes -= len(frame.batch)
            if timed_out:
                self.send_error(frame.request_id, BacklogFull(
                    f"topic {frame.topic!r} stayed at its backlog limit for "
                    f"{self.server.config.block_timeout:.0f} s; consume, or raise backlog_limit"))
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
        for sub in self.subs.values():
            self.server.want_push(sub.member)

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
        handler: Callable[[Connection, Any], None] | None = HANDLERS.get(type(frame))
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
        if PROTOCOL_VERSION not in hello.versions:
            self.fail(UnsupportedVersion(
                f"this server speaks protocol version {PROTOCOL_VERSION}; the client offered "
                f"{list(hello.versions)}: upgrade one of them"), request_id=hello.request_id)
            return
        # The session limit is the smaller of both peers' limits (floor: the protocol minimum).
        limit = max(P.MIN_MAX_FRAME_SIZE, min(self.max_frame_size, hello.max_frame_size))
        self.max_frame_size = limit
        self.decoder.max_frame_size = limit
        ours = int(self.server.config.heartbeat_interval * 1000)
        beat = min(ours, hello.heartbeat_ms) if hello.heartbeat_ms else ours
        self.ready = True
        self.send(P.HelloOk(request_id=hello.request_id, version=PROTOCOL_VERSION,
                            server_name=SERVER_NAME, max_frame_size=limit, heartbeat_ms=beat))

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
        self.send_error(request_id, exc, fatal=True)
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
        self.server.connections.discard(self)
        subs, self.subs = self.subs, {}
        for sub in subs.values():
            self.server.end_member(sub.member)

    # --- subscriptions ----------------------------------------------------------------------

    def add_subscription(self, member: str, topic: str, incarnation: int, prefetch: int) -> Subscription:
        sub_id = self._next_sub
        self._next_sub += 1
        sub = Subscription(self, sub_id, member, topic, incarnation, prefetch)
        self.subs[sub_id] = sub
        self.server.members[member] = sub
        return sub

    def subscription(self, sub_id: int) -> Subscription:
        sub = self.subs.get(sub_id)
        if sub is None:
            from ..errors import InvalidArgument

            raise InvalidArgument(f"subscription {sub_id} is not open on this connection")
        return sub
