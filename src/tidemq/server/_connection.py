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

Bounded resources (docs/server.md, "Limits"): until its ``Hello`` is accepted a connection
may declare frames of at most 64 KiB, have at most ``max_hello_bytes`` waiting undecoded, and
must complete its Hello within ``handshake_timeout``; afterwards frames other than ``Publish``
may have at most ``max_request_bytes`` (refused from their header). A connection's frames wait unread in its decoder (and reading pauses, so
TCP pushes back on the peer) while any of these holds:

- its output — our queue plus the transport's buffer — is above ``write_high_water`` (the
  transport says so with ``pause_writing`` until it drained to ``write_low_water``); output that
  does not drain within ``write_timeout`` ends the connection (a slow consumer: its leases are
  released);
- ``max_inflight`` of its answers wait for an fsync;
- one of its requests runs in steps (:meth:`Connection.continue_soon`);
- (reading only) more than ``max_held_bytes`` of publishes are held by a full backlog.

A connection whose reading we paused is not judged by its silence (heartbeats); the rules
above end it instead.

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
import contextlib
import ipaddress
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

from .. import protocol as P
from ..broker import Broker, SyncToken
from ..errors import (
    AuthenticationFailed,
    BacklogFull,
    FrameTooLarge,
    InternalError,
    ProtocolError,
    StorageFailed,
    TideMQError,
    Timeout,
)
from ..security import FAILURE_DELAY_S, AuthExchange, Gate, Principal
from ._authz import authorize
from ._config import ServerConfig
from ._dispatch import HANDLERS, Blocked, Handler
from ._idlepoll import IdlePoll
from ._registry import Subscriptions

__all__ = ["Connection", "Services", "MakeDurable"]

log = logging.getLogger("tidemq.server")

SERVER_NAME = "tidemq"
CLOSE_GRACE = 2.0  # seconds a closed connection gets to take its last frames, then aborted

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
    # The server admitted this connection's peer address (max_connections_per_ip): called
    # once when the connection ends, with that address.
    leave: Callable[[str], None] = lambda ip: None
    # The users, tokens and permissions (docs/security.md); None: a server without users,
    # where nobody authenticates and every request is allowed (it listens on loopback only,
    # unless started with --insecure).
    gate: Gate | None = None
    # Errors answered to clients by catalogue code (the server's, shared by every port).
    errors: Counter[int] = field(default_factory=Counter)
    # The poll before the loop sleeps (spin_us): the connections' sockets are watched by it.
    idle: IdlePoll = field(default_factory=lambda: IdlePoll(0))


class Connection(asyncio.Protocol):
    """The server side of one TCP connection. Lives on the server's event loop only.

    ``peer_ip`` is the address the server counted the connection under when it admitted it
    (``Services.leave`` gets it back when the connection ends)."""

    def __init__(self, services: Services, peer_ip: str = "?") -> None:
        self._services = services
        self._accepted_at = time.monotonic()  # the handshake deadline counts from here
        cfg = services.config
        self.config = cfg
        # The handlers' Context (see _dispatch): plain attributes, so a request costs no
        # extra call to reach them.
        self.broker = services.broker
        self.registry = services.registry
        self.now_us = services.now_us
        self.mono_us = services.mono_us
        self.want_push = services.want_push
        # Until the Hello is accepted only the protocol's smallest frame limit applies, and at
        # most max_hello_bytes may wait undecoded (data_received): a slow-loris peer cannot
        # make us buffer more. The session's limits apply from then on (_hello).
        self.decoder = P.Decoder(max_frame_size=P.MIN_MAX_FRAME_SIZE,
                                 large_frame_types=(P.Publish,))
        self.max_frame_size = cfg.max_frame_bytes
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.peer_ip = peer_ip
        self._counted = True  # Services.leave not called yet
        self._idle_fd = -1  # the socket as the idle poll watches it (Services.idle)
        self.ready = False  # Hello received and answered
        # Authentication (servers with users): the mechanism's exchange while it runs, then
        # who this session is. Permission answers are cached until the users file changes.
        self.principal: Principal | None = None
        self._auth: AuthExchange | None = None
        self._hello_ok: P.HelloOk | None = None
        self._perm_cache: dict[tuple[str, str, str], bool] = {}
        self._perm_gen = -1
        self.tls = False
        self.cert_names: list[str] = []
        self.closed = False
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._high = cfg.write_high_water
        self._flush_scheduled = False
        self._stalled = False  # the transport's buffer is above the high-water mark
        self._stall_timer: asyncio.TimerHandle | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._push_waiting = False  # a push skipped us for lack of room: offer it again
        self._reading = True
        self._processing = False
        self._busy = False  # a request runs in steps: later frames wait (continue_soon)
        self._inflight = 0  # answers waiting for an fsync
        self._max_inflight = cfg.max_inflight
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
            self.abort()
            return
        ssl_object = t.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.tls = True
            self.cert_names = cert_names(ssl_object.getpeercert())
        self._services.connections.add(self)
        self._idle_fd = self._services.idle.add(self, t)
        # One deadline for the TLS handshake (done before this call) and the Hello together.
        left = cfg.handshake_timeout - (time.monotonic() - self._accepted_at)
        self._handshake_timer = asyncio.get_running_loop().call_later(
            max(0.0, left), self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        decoder = self.decoder
        try:
            decoder.feed(data)
        except ProtocolError as exc:
            self.fail(exc)
            return
        self._process()
        if not self.ready and decoder.buffered > self.config.max_hello_bytes and not self.closed:
            self.fail(FrameTooLarge(
                f"more than {self.config.max_hello_bytes} bytes before a complete Hello; a "
                "client sends Hello first and waits for HelloOk"))

    def _process(self) -> None:
        """Handle the frames buffered, in order, until none is whole or the connection must
        wait (see the module docstring). While publishes are held by a full backlog, later
        publishes queue behind them (their order is kept); other frames — acks above all, which
        are what frees the backlog — are handled at once."""
        if self._processing:  # a callback fired by a frame being handled: that loop goes on
            return
        self._processing = True
        # What the frames answer leaves in one write at the end of this pass, not from a
        # flush callback scheduled by each send (one loop callback fewer per request).
        flush_was_scheduled = self._flush_scheduled
        self._flush_scheduled = True
        decoder = self.decoder
        held = self._held
        high = self._high
        try:
            while not self.closed:
                if self._busy or self._stalled or self._inflight >= self._max_inflight:
                    break
                frame = decoder.next_frame()
                if frame is P.NEED_DATA:
                    break
                if held and type(frame) is P.Publish:
                    self._hold(frame)
                else:
                    self._handle(frame)
                if self._out_bytes > high:
                    self._flush()  # hands it to the transport, which may stall (pause_writing)
        except ProtocolError as exc:  # the stream cannot be resynchronised: end this connection
            log.info("closing %s: %s", self.peer, exc.message)
            self.fail(exc)
            return
        finally:
            self._processing = False
        if self._out:
            self._flush()
        else:
            self._flush_scheduled = flush_was_scheduled
        self._update_reading()
        self.want_push(None)

    def _update_reading(self) -> None:
        """Read from the socket only while frames read could be handled (TCP pushes back on
        the peer otherwise: its frames cannot pile up in our buffers)."""
        t = self.transport
        if t is None or self.closed:
            return
        want = not (self._busy or self._stalled or self._inflight >= self._max_inflight
                    or self._held_bytes > self.config.max_held_bytes)
        if want == self._reading:
            return
        self._reading = want
        if want:
            t.resume_reading()
            self.last_received = time.monotonic()  # its silence was ours: a fresh window
        else:
            t.pause_reading()

    def _unblocked(self) -> None:
        """Something that held this connection's input back may have ended: go on."""
        if not self.closed:
            self._process()

    def _hold(self, frame: Any) -> None:
        """Queue a publish behind a blocked one. Past ``max_held_bytes`` held, stop reading
        the connection: TCP then pushes back on the producer."""
        self._held.append(frame)
        self._held_bytes += len(frame.batch)
        self._update_reading()

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
            self._unblocked()  # frames left in the decoder while reading was paused
        elif self._out:
            self._flush()

    def eof_received(self) -> bool | None:
        self.release()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.release()

    def pause_writing(self) -> None:
        # The peer reads slower than we write: push nothing more to it, and handle none of its
        # requests, so their answers cannot pile up either. If it does not drain within
        # write_timeout it is a slow consumer and is dropped (its leases released).
        self._stalled = True
        self._update_reading()
        if self._stall_timer is None and not self.closed:
            self._stall_timer = asyncio.get_running_loop().call_later(
                self.config.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._stalled = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self.closed:
            return
        for sub in self.registry.of_connection(self):
            self.want_push(sub.member)
        self._push_waiting = False
        self._unblocked()

    def _write_timed_out(self) -> None:
        self._stall_timer = None
        if self.closed or not self._stalled:
            return
        log.info("closing %s: its output stayed above %d bytes for %.1f s (a slow consumer; "
                 "write_timeout)", self.peer, self._high, self.config.write_timeout)
        self.abort()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self.ready or self.closed:
            return
        timeout = self.config.handshake_timeout
        log.info("closing %s: no Hello within %.1f s (handshake_timeout)", self.peer, timeout)
        self.fail(Timeout(f"no complete Hello within {timeout:g} s of connecting; a client "
                          "sends Hello first, at once"))

    # --- frames out -------------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """True while this connection's output is below the high-water mark."""
        return not self._stalled and self._out_bytes < self._high

    def ready_for_push(self) -> bool:
        """:attr:`writable`; if not, the connection's members are offered a push again once its
        output drained (``Peer`` of ``_push``)."""
        if not self._stalled and self._out_bytes < self._high:
            return True
        self._push_waiting = True
        return False

    def send(self, frame: Any) -> None:
        """Queue ``frame`` for the next flush (same loop iteration). Dropped once closed."""
        if self.closed:
            return
        try:
            parts = P.encode_buffers(frame, max_frame_size=self.max_frame_size)
        except TideMQError as exc:
            rid = getattr(frame, "request_id", 0)
            if not rid:  # a push: nothing to answer (the push splits to fit: a bug)
                log.error("cannot send %s to %s: %s", type(frame).__name__, self.peer, exc)
                return
            # An answer too large for the session (a huge describe): say so instead.
            parts = P.encode_buffers(P.Error.from_exception(exc, rid))
        self._out += parts
        self._out_bytes += sum(map(len, parts))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def send_error(self, request_id: int, exc: TideMQError, *, fatal: bool = False) -> None:
        self._services.errors[exc.code] += 1
        self.send(P.Error.from_exception(exc, request_id, fatal=fatal))

    def after_sync(self, token: SyncToken, answer: Callable[[], Any]) -> None:
        """Send ``answer()`` now, or once ``token`` is durable when its topic needs that (the
        server's ``make_durable`` decides how). A failed sync answers with the error instead;
        ``answer`` may carry the ``request_id`` that error answers. At most ``max_inflight``
        answers of a connection wait so; then its input waits too."""
        if not self.broker.needs_sync(token):
            self.send(answer())
            return
        rid = getattr(answer, "request_id", 0)
        self._inflight += 1

        def done(exc: BaseException | None) -> None:
            self._inflight -= 1
            if exc is None:
                self.send(answer())
            elif isinstance(exc, TideMQError):
                self.send_error(rid, exc)
            else:
                self.send_error(rid, StorageFailed(f"fsync failed: {exc}"))
            if self._inflight == self._max_inflight - 1:
                self._unblocked()

        self._services.make_durable(token, done)

    def continue_soon(self, request_id: int, step: Callable[[], bool]) -> None:
        """Run ``step`` on the next loop iteration, and again until it returns True; later
        frames of this connection wait meanwhile (``_dispatch.Context.continue_soon``)."""
        self._busy = True
        asyncio.get_running_loop().call_soon(self._run_step, request_id, step)

    def _run_step(self, request_id: int, step: Callable[[], bool]) -> None:
        if self.closed:
            self._busy = False
            return
        try:
            done = step()
        except TideMQError as exc:
            self.send_error(request_id, exc)
            done = True
        except Exception as exc:  # a bug: report it, keep the connection
            log.exception("a request step for %s failed", self.peer)
            self.send_error(request_id, InternalError(f"{type(exc).__name__}: {exc}"))
            done = True
        if not done:
            asyncio.get_running_loop().call_soon(self._run_step, request_id, step)
            return
        self._busy = False
        self._unblocked()

    def flush_now(self) -> None:
        """Hand what is queued to the transport now instead of at the scheduled flush (the
        server's push pass: its ``Deliver`` frames leave in the pass's loop iteration)."""
        if self._out:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        self._out_bytes = 0
        if self.transport is not None and not self.closed:
            self.transport.writelines(out)  # may call pause_writing
            self.last_sent = time.monotonic()
            if self._push_waiting and not self._stalled:
                self._push_waiting = False
                for sub in self.registry.of_connection(self):
                    self.want_push(sub.member)

    # --- frames in --------------------------------------------------------------------------

    def _handle(self, frame: Any) -> None:
        rid = frame.request_id
        if not self.ready:
            if self._auth is not None and isinstance(frame, P.AuthResponse):
                self._auth_response(frame)
                return
            if isinstance(frame, P.Hello) and self._hello_ok is None:
                self._hello(frame)
                return
            raise ProtocolError(f"the first frame must be Hello (then AuthResponse when "
                                f"challenged), got {type(frame).__name__}")
        handler: Handler | None = HANDLERS.get(type(frame))
        if handler is None:
            self.send_error(rid, ProtocolError(
                f"{type(frame).__name__} is not a request a client may send"))
            return
        try:
            if self.principal is not None:
                authorize(self, frame)
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
        self._hello_ok = answer
        gate = self._services.gate
        if gate is None:
            if hello.auth_mechanism is not None:
                self._auth_failed(AuthenticationFailed(
                    "this server has no users, so it authenticates nobody; connect without "
                    "credentials (or configure users on the server: --users)"), delay=False)
                return
            self._ready(answer)
            return
        try:
            exchange = gate.start(hello.auth_mechanism, hello.auth_data, peer_addr=self.peer_ip,
                                  loopback=_is_loopback(self.peer_ip), tls=self.tls,
                                  peer_cert_names=self.cert_names, now_s=time.time())
        except AuthenticationFailed as exc:
            self._auth_failed(exc)
            return
        except TideMQError as exc:  # Unsupported (SCRAM channel binding ...), InvalidArgument
            self._auth_failed(AuthenticationFailed(exc.message))
            return
        self._auth_step(exchange)

    def _auth_response(self, frame: P.AuthResponse) -> None:
        exchange = self._auth
        assert exchange is not None
        try:
            exchange.respond(frame.data, time.time())
        except TideMQError as exc:
            self._auth_failed(exc if isinstance(exc, AuthenticationFailed)
                              else AuthenticationFailed(exc.message))
            return
        self._auth_step(exchange)

    def _auth_step(self, exchange: AuthExchange) -> None:
        """Send the mechanism's next challenge, or finish the handshake as its principal."""
        hello_ok = self._hello_ok
        assert hello_ok is not None
        if exchange.principal is None:
            self._auth = exchange
            self.send(P.AuthChallenge(request_id=hello_ok.request_id,
                                      data=exchange.challenge or b""))
            return
        self._auth = None
        self.principal = exchange.principal
        log.info("%s authenticated as %r (%s)", self.peer, exchange.principal.user,
                 exchange.principal.mechanism)
        self._ready(msgspec.structs.replace(hello_ok, user=exchange.principal.user,
                                            auth_data=exchange.server_data))

    def _auth_failed(self, exc: AuthenticationFailed, *, delay: bool = True) -> None:
        """Refuse the handshake: read nothing more, wait ``FAILURE_DELAY_S`` (a guesser gets
        few tries per connection-second, and every failure takes as long), then a fatal error."""
        hello_ok = self._hello_ok
        rid = hello_ok.request_id if hello_ok is not None else 0
        log.info("authentication of %s failed: %s", self.peer, exc.message)
        self._auth = None
        self._busy = True  # no more frames of this connection are handled
        self._update_reading()
        if delay:
            asyncio.get_running_loop().call_later(FAILURE_DELAY_S, self._fail_late, exc, rid)
        else:
            self.fail(exc, request_id=rid)

    def _fail_late(self, exc: TideMQError, rid: int) -> None:
        if not self.closed:
            self.fail(exc, request_id=rid)

    def _ready(self, answer: P.HelloOk) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        session = answer.max_frame_size
        self.max_frame_size = self.decoder.max_frame_size = session
        self.decoder.max_control_frame_size = min(session, self.config.max_request_bytes)
        self.ready = True
        self.send(answer)

    # --- permissions (_authz.Authorizable) ----------------------------------------------------

    @property
    def user(self) -> str:
        return self.principal.user if self.principal is not None else ""

    def may(self, op: str, kind: str, name: str) -> bool:
        principal = self.principal
        if principal is None:
            return True
        gate = self._services.gate
        assert gate is not None
        cache = self._perm_cache
        if self._perm_gen != gate.generation:  # the users file changed: ask again
            cache.clear()
            self._perm_gen = gate.generation
        key = (op, kind, name)
        allowed = cache.get(key)
        if allowed is None:
            allowed = gate.allows(principal, op, kind, name)
            if len(cache) < 4096:
                cache[key] = allowed
        return allowed

    def subscription_of(self, sub_id: int) -> tuple[str, str] | None:
        sub = self.registry.get(self, sub_id)
        return None if sub is None else (sub.topic, sub.group)

    # --- heartbeats and ending --------------------------------------------------------------

    def check_heartbeat(self, now: float, interval: float, timeout: float) -> None:
        """Called every ``interval/2`` s: ping a quiet peer, drop a silent one. A connection
        before its Hello (handshake_timeout) or whose reading we paused (write_timeout ...) is
        judged by those rules instead."""
        if self.closed or not self.ready or not self._reading:
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
        """Flush, release every lease, close the socket. A peer that does not take the last
        frames within ``CLOSE_GRACE`` s is cut off."""
        t = self.transport
        if t is not None and not self.closed:
            self._flush()
            t.close()
            if t.get_write_buffer_size():
                asyncio.get_running_loop().call_later(CLOSE_GRACE, _abort_quietly, t)
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
        self._out_bytes = 0
        for timer in (self._handshake_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._handshake_timer = self._stall_timer = None
        self._held.clear()
        self._held_bytes = 0
        self._services.connections.discard(self)
        self._services.idle.remove(self, self._idle_fd)
        if self._counted:
            self._counted = False
            self._services.leave(self.peer_ip)
        self.registry.close_connection(self)


def _is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def cert_names(cert: Any) -> list[str]:
    """The names a verified client certificate carries, for ``EXTERNAL``: its subject's common
    names, then its subjectAltName DNS, email and URI entries (``ssl.getpeercert()`` layout)."""
    if not cert:
        return []
    names: list[str] = []
    for rdn in cert.get("subject", ()):
        names += [value for key, value in rdn if key == "commonName"]
    names += [value for kind, value in cert.get("subjectAltName", ())
              if kind in ("DNS", "email", "URI")]
    return names


def _abort_quietly(transport: asyncio.Transport) -> None:
    with contextlib.suppress(Exception):
        transport.abort()
