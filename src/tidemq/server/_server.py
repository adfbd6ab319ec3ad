"""The server process: one event loop that owns the broker and every connection.

What runs where:

- the event loop: decoding frames, every broker call (the broker is single-threaded by
  contract), pushing deliveries, heartbeats, and the driver's timer (:mod:`._driver`: armed at
  the broker's next deadline, never polling);
- one worker thread (:mod:`._driver`): every fsync — group commit for durability ``always``,
  the periodic ``sync_all`` for ``interval``, and snapshot writes.

Clocks are read here only: ``now_us`` (wall) and ``mono_us`` (monotonic) go into each broker call.

With ``http_port`` the same loop also serves the HTTP API, metrics and the admin page
(``tidemq.http``: aiohttp's ``AppRunner``/``TCPSite``), over the same broker, gate and TLS
certificate; the HTTP API holds one broker member per (topic, group) it receives through, whose
wake-ups the push pass hands to it (:attr:`Server.external_members`).

Connections are accepted by :class:`_Listener` (not ``loop.create_server``): it admits a peer
only under ``max_connections`` and ``max_connections_per_ip`` (others get a fatal ``Error``
frame and are closed at once, before any protocol object exists), and it survives running out
of file descriptors the same way on asyncio and uvloop: it logs that once a minute, stops
accepting for ``ACCEPT_RETRY`` s, keeps serving the connections it has, and accepts again when
descriptors are free. (uvloop's own server closes its listening socket for good when libuv
reports EMFILE past its reserve-descriptor trick; asyncio's logs a traceback every second.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import protocol as P
from ..broker import Broker
from ..driver import DriverConfig
from ..errors import AuthenticationFailed, ConnectionLost, InvalidArgument, TideMQError
from ..security import Gate
from ..storage import open_store
from ._config import ServerConfig
from ._connection import Connection, Services
from ._driver import LoopDriver
from ._fronts import Backend
from ._idlepoll import IdlePoll
from ._push import Subscription, delivery_bytes
from ._registry import Subscriptions
from ._tls import server_context

if TYPE_CHECKING:
    from ..amqp import AmqpFront
    from ..http import HttpApi

__all__ = ["Server", "now_us", "mono_us"]

log = logging.getLogger("tidemq.server")


def now_us() -> int:
    """Wall clock, µs since the epoch."""
    return time.time_ns() // 1000


def mono_us() -> int:
    """Monotonic clock, µs (leases and heartbeats)."""
    return time.monotonic_ns() // 1000


# Opens the broker and its store; the server closes both when it stops.
BrokerFactory = Callable[[ServerConfig], "Broker"]

USERS_POLL = 1.0  # seconds between checks of the users file for changes
ACCEPT_RETRY = 0.1  # seconds between accept attempts while out of file descriptors
ACCEPT_BATCH = 64  # connections accepted per readiness callback (others wait their turn)
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_STARVED_LOG_EVERY = 60.0  # seconds between "cannot accept" log lines


def default_broker_factory(config: ServerConfig) -> Broker:
    """Open the data folder named by ``config.data`` (``None``: an in-memory store)."""
    store = open_store(config.data)
    try:
        return Broker.open(store, now_us=now_us(), mono_us=mono_us(),
                           auto_create_topics=config.auto_create_topics)
    except BaseException:
        store.close()  # the data folder's lock too: a server started again can take it
        raise


class Server:
    """A TideMQ server on the running event loop.

    Usage (tests, embedding)::

        server = Server(ServerConfig(data=str(tmp_path), port=0))
        await server.start()          # opens the broker, binds; server.port is the bound port
        ...
        await server.stop()           # graceful: stop accepting, finish, sync, close the broker

    All methods must be called on the loop that called :meth:`start`.
    """

    def __init__(self, config: ServerConfig | None = None, *,
                 broker_factory: BrokerFactory | None = None) -> None:
        self.config = config or ServerConfig()
        self.config.validate()
        self._factory = broker_factory or default_broker_factory
        self._broker: Broker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: _Listener | None = None
        self._services: Services | None = None
        self.driver: LoopDriver | None = None
        self.connections: set[Connection] = set()
        # Admitted connections (made or being made) by peer address, and all together.
        self._per_ip: dict[str, int] = {}
        self._admitted = 0
        self._attaching: set[asyncio.Task[None]] = set()
        # Every open subscription, by member and by (connection, id); ending one unsubscribes.
        self.subscriptions = Subscriptions(self.end_member)
        self._wanting: set[str] = set()  # members to try pushing to on the next pass
        self._push_scheduled = False
        self._spin_scheduled = False  # _idle_spin is due at the next loop turn
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._stopped = asyncio.Event()
        # Security (docs/security.md): the users file's gate (None: no users) and the TLS
        # context new connections get (reload() replaces both; open connections keep theirs).
        self.gate: Gate | None = None
        self._tls: ssl.SSLContext | None = None
        # The HTTP API (http_port), its TLS context (reloaded in place on SIGHUP), and the
        # broker members it owns: member id -> wake-up callback (see _push_pass).
        self._http: HttpApi | None = None
        self._http_tls: ssl.SSLContext | None = None
        self.external_members: dict[str, Callable[[], None]] = {}
        # Errors answered to clients, by catalogue code, on every port (tidemq_errors_total).
        self.errors: Counter[int] = Counter()
        self._amqp: AmqpFront | None = None  # the AMQP 0-9-1 front (amqp_port), docs/amqp.md
        # The poll before the loop sleeps (spin_us; _idlepoll): after each push pass.
        self.idle = IdlePoll(self.config.spin_us)

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise InvalidArgument("the server is not started")
        return self._broker

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._listener is None or self._listener.closed:
            raise InvalidArgument("the server is not listening")
        return self._listener.port

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port (``http_port`` set), else None."""
        return None if self._http is None else self._http.port

    @property
    def amqp_port(self) -> int | None:
        """The bound AMQP port (``amqp_port`` set), else None."""
        return None if self._amqp is None else self._amqp.port

    @property
    def http(self) -> HttpApi | None:
        """The HTTP API, when ``http_port`` is set (tests and benchmarks)."""
        return self._http

    @property
    def admitted(self) -> int:
        """Connections admitted and not yet ended (``max_connections`` counts these)."""
        return self._admitted

    async def start(self) -> None:
        """Open the broker (recovering its store) and start listening."""
        self._loop = loop = asyncio.get_running_loop()
        cfg = self.config
        if cfg.users is not None:
            self.gate = Gate(cfg.users, now_s=time.time())
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            self._tls = server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        if cfg.exposed:
            log.warning("INSECURE: listening on %s with no users (--insecure): anyone who can "
                        "reach port %d may publish, consume and delete everything. Configure "
                        "--users (docs/security.md)", cfg.host, cfg.port)
        # Recovery reads the whole tail of every log: keep the loop responsive meanwhile.
        self._broker = await loop.run_in_executor(None, self._factory, self.config)
        self.driver = driver = LoopDriver(
            self._broker, loop,
            DriverConfig(sync_interval=self.config.sync_interval,
                         block_timeout=self.config.block_timeout),
            fsync_threads=self.config.fsync_threads, on_tick=self.want_push,
            input_waiting=self.idle.input_waiting,
            busy=lambda: self._push_scheduled or self._spin_scheduled)
        # All a connection may use of the server (it never sees the Server itself).
        self._services = Services(
            config=self.config, broker=self._broker, registry=self.subscriptions,
            now_us=now_us, mono_us=mono_us, make_durable=driver.after_sync,
            blocked=driver.core.blocked,
            want_push=self.want_push, connections=self.connections,
            stopping=lambda: self._stopping, leave=self._leave, gate=self.gate,
            errors=self.errors, idle=self.idle,
        )
        socks = await _bind(loop, self.config.host, self.config.port)
        self._listener = _Listener(loop, socks, self._accepted)
        self._listener.start()
        driver.start()
        if cfg.http_port is not None:
            try:
                await self._start_http(cfg.http_port)
            except BaseException:  # e.g. the port is taken: undo the start, then say why
                await self.stop()
                raise
        if cfg.amqp_port is not None:
            try:
                await self._start_amqp(cfg.amqp_port)
            except BaseException:
                await self.stop()
                raise
        self._tasks = [loop.create_task(self._heartbeat_loop(), name="tidemq-heartbeat")]
        if self.gate is not None:
            self._tasks.append(loop.create_task(self._watch_users(), name="tidemq-users"))
        log.info("tidemq server listening on %s:%d%s (data: %s; %s)", self.config.host,
                 self.port, " with TLS" if self._tls else "", self.config.data or "memory",
                 f"users from {cfg.users}" if cfg.users else "no users: no authentication")

    def _front_backend(self, tls: Callable[[], ssl.SSLContext | None]) -> Backend:
        """What a front (HTTP, AMQP) may use of this server; ``tls``: its current context."""
        assert self._broker is not None and self.driver is not None
        listener = self._listener
        return Backend(
            config=self.config, broker=self._broker, driver=self.driver, gate=self.gate,
            now_us=now_us, mono_us=mono_us, want_push=self.want_push,
            end_topic=self.subscriptions.end_topic, external_members=self.external_members,
            binary_connections=lambda: len(self.connections),
            listening=lambda: listener is not None and not listener.closed,
            stopping=lambda: self._stopping, tls=tls, errors=self.errors, idle=self.idle)

    async def _start_http(self, port: int) -> None:
        """Serve the HTTP API on ``host:port`` (same host, gate and certificate)."""
        from ..http import HttpApi

        cfg = self.config
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            self._http_tls = server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        self._http = HttpApi(self._front_backend(lambda: self._http_tls))
        try:
            await self._http.start(cfg.host, port)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror} (binding the HTTP API on "
                                     f"{cfg.host}:{port})") from None
        log.info("tidemq HTTP API on %s:%d%s", cfg.host, self._http.port,
                 " with TLS" if self._http_tls else "")

    async def _start_amqp(self, port: int) -> None:
        """Serve AMQP 0-9-1 on ``host:port`` (same host, gate, limits and certificate)."""
        from ..amqp import AmqpFront

        cfg = self.config
        self._amqp = AmqpFront(self._front_backend(lambda: self._tls))
        try:
            await self._amqp.start(cfg.host, port)
        except OSError as exc:
            self._amqp = None
            raise OSError(exc.errno, f"{exc.strerror} (binding the AMQP port on "
                                     f"{cfg.host}:{port})") from None
        log.info("tidemq AMQP 0-9-1 on %s:%d%s", cfg.host, self._amqp.port,
                 " with TLS" if self._tls else "")

    async def serve_forever(self) -> None:
        """Wait until :meth:`stop` has finished."""
        await self._stopped.wait()

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting; tell clients (GoAway); let requests in flight
        finish (their fsyncs included) for up to ``shutdown_grace`` s; release every lease;
        sync and close the broker. Idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        if self._listener is not None:
            self._listener.close()
        for task in list(self._attaching):
            task.cancel()
        for conn in list(self.connections):
            conn.go_away()
        if self._http is not None:  # its requests in flight finish; its leases are released
            await self._http.stop()
        if self._amqp is not None:  # connection.close to every peer; leases released
            await self._amqp.stop()
        if self.driver is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.driver.drain(), self.config.shutdown_grace)
        for conn in list(self.connections):
            conn.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.driver is not None:
            try:
                await self.driver.close()  # sync, last snapshot and close, on the worker
            except Exception:
                log.exception("closing the broker failed")
        if self._broker is not None:
            try:  # the server opened the store (its factory): release the data folder
                self._broker.store.close()
            except Exception:
                log.exception("closing the store failed")
        self.idle.close()
        self._stopped.set()
        log.info("tidemq server stopped")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- admission ---------------------------------------------------------------------------

    def _admission(self, ip: str) -> TideMQError | None:
        """Why a new connection from ``ip`` is refused, or None to admit it."""
        cfg = self.config
        if self._admitted >= cfg.max_connections:
            return ConnectionLost(
                f"the server has {self._admitted} connections, its limit (max_connections); "
                "retry later")
        if self._per_ip.get(ip, 0) >= cfg.max_connections_per_ip:
            return ConnectionLost(
                f"{ip} has {cfg.max_connections_per_ip} connections to this server, the most "
                "one address may have (max_connections_per_ip); close some, retry later")
        return None

    def _accepted(self, sock: socket.socket, ip: str) -> None:
        """A connection was accepted: admit it (make its protocol) or refuse it."""
        refusal: TideMQError | None = ConnectionLost("the server is shutting down")
        if not self._stopping:
            refusal = self._admission(ip)
        if refusal is not None:
            log.debug("refusing a connection from %s: %s", ip, refusal.message)
            _refuse(sock, refusal)
            return
        assert self._loop is not None and self._services is not None
        self._admitted += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        conn = Connection(self._services, ip)
        task = self._loop.create_task(self._attach(conn, sock))
        self._attaching.add(task)
        task.add_done_callback(self._attaching.discard)

    async def _attach(self, conn: Connection, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            if self._tls is None:
                await self._loop.connect_accepted_socket(lambda: conn, sock)
            else:  # the TLS handshake counts against the connection's handshake_timeout
                await self._loop.connect_accepted_socket(
                    lambda: conn, sock, ssl=self._tls,
                    ssl_handshake_timeout=self.config.handshake_timeout)
        except BaseException as exc:  # cancelled at shutdown, or the socket died at once
            if conn.transport is not None:
                with contextlib.suppress(Exception):
                    conn.abort()
            else:
                sock.close()
                conn.release()  # never made: give its admission back
            if isinstance(exc, (ssl.SSLError, TimeoutError, ConnectionError)):
                log.info("TLS handshake with %s failed: %s", conn.peer_ip, exc)
            elif not isinstance(exc, (OSError, asyncio.CancelledError)):
                log.exception("setting up a connection failed")

    def _leave(self, ip: str) -> None:
        """A connection admitted under ``ip`` ended."""
        self._admitted -= 1
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    # --- clocks and members -----------------------------------------------------------------

    now_us = staticmethod(now_us)
    mono_us = staticmethod(mono_us)

    @property
    def members(self) -> Mapping[str, Subscription]:
        """Broker member id -> open subscription (a read-only view of the registry)."""
        return self.subscriptions.members

    def end_member(self, member: str) -> None:
        """Unsubscribe ``member`` now: its leases are released and others may get them. The
        registry calls this once the member's subscription has left it."""
        if self._broker is None:
            return
        try:
            self._broker.unsubscribe(member, now_us=now_us(), mono_us=mono_us())
        except Exception:  # already gone (topic deleted): nothing left to release
            log.debug("unsubscribe %s failed", member, exc_info=True)
        self.want_push()

    # --- pushing deliveries -----------------------------------------------------------------

    def want_push(self, member: str | None = None) -> None:
        """Ask for a push pass soon (after the current batch of input is handled).

        ``member`` names a member whose credit or writability just changed; members the broker
        reports through ``wakeups()`` are added by the pass itself.
        """
        if member is not None:
            self._wanting.add(member)
        if not self._push_scheduled and self._loop is not None:
            self._push_scheduled = True
            self._loop.call_soon(self._push_pass)

    def _push_pass(self) -> None:
        """One fair round: each member that may have work gets at most ``push_batch`` messages.

        A member is skipped while it has no credit or its connection's write buffer is above the
        high-water mark; its credit frame or the buffer draining puts it back (``want_push``).
        So a slow consumer slows itself only.
        """
        self._push_scheduled = False
        self._push_round()
        if not self._spin_scheduled and self._loop is not None:
            # Poll for input before the loop sleeps — after whatever this turn scheduled
            # (connections' flushes, AMQP pumps: call_soon is first in, first out), or they
            # would wait out the spin.
            self._spin_scheduled = True
            self._loop.call_soon(self._idle_spin)

    def _idle_spin(self) -> None:
        self._spin_scheduled = False
        driver = self.driver
        if not self._push_scheduled and driver is not None and driver.commits.idle:
            self.idle.run()  # nothing due at once: poll for input before the loop sleeps

    def _push_round(self) -> None:
        broker = self._broker
        if broker is None or self._stopping or self.driver is None:
            return
        # Every input pass ends here: the calls it made (and the fetches below, on the next
        # pass) may have created timed work due before the driver's timer.
        self.driver.after_calls()
        wanting = self._wanting
        wanting |= broker.wakeups()
        if not wanting:
            return
        self._wanting = set()
        again = False
        now, mono = now_us(), mono_us()
        members = self.subscriptions.members
        external = self.external_members
        pushed: list[Any] = []
        for member in wanting:
            sub = members.get(member)
            if sub is None:
                wake = external.get(member)  # an HTTP member: its long polls fetch themselves
                if wake is not None:
                    wake()
                continue
            if sub.credit <= 0 or not sub.conn.ready_for_push():
                continue
            credit = sub.credit
            try:
                more = self._push_member(broker, sub, now, mono)
            except Exception:  # a member that vanished under us: nothing to push
                log.exception("fetch for member %s failed", member)
                continue
            if sub.credit != credit:
                pushed.append(sub.conn)
            if more:  # maybe more ready: come back after the others had a turn
                self._wanting.add(member)
                again = True
        # What this pass pushed leaves now, not one loop iteration later (the connection's
        # own flush was scheduled for the next iteration): one wake-up less per delivery.
        for conn in pushed:
            flush = getattr(conn, "flush_now", None)
            if flush is not None:
                flush()
        if again:
            self.want_push()

    def _push_member(self, broker: Broker, sub: Subscription, now: int, mono: int) -> bool:
        """One push step for ``sub``: at most ``push_batch`` messages and about ``push_bytes``
        of them (each fetch is sized on the member's recent message sizes, so a step may pass
        ``push_bytes`` by one fetch when messages suddenly grow). Returns whether more may be
        ready (the step stopped at a limit, not for lack of messages)."""
        cfg = self.config
        left = min(sub.credit, cfg.push_batch)
        budget = cfg.push_bytes
        got: list[Any] = []
        exhausted = False
        while left > 0 and budget > 0:
            # The first fetch of a subscription takes one message: its size sizes the next.
            k = min(left, max(1, budget // sub.size_hint)) if sub.size_hint else 1
            deliveries = broker.fetch(sub.member, k, now_us=now, mono_us=mono)
            if deliveries:
                got += deliveries
                left -= len(deliveries)
                nbytes = delivery_bytes(deliveries)
                budget -= nbytes
                # Grow at once, shrink by halves: a mix of sizes is sized on the large ones.
                sub.size_hint = max(nbytes // len(deliveries), sub.size_hint // 2)
            if len(deliveries) < k:
                exhausted = True
                break
        if got:
            too_large = sub.push(got)
            if too_large:
                self._undeliverable(broker, sub, too_large, now, mono)
        return bool(got) and not exhausted

    def _undeliverable(self, broker: Broker, sub: Subscription, deliveries: list[Any],
                       now: int, mono: int) -> None:
        """Messages too large for the member's session frame limit (a topic whose
        ``max_message_bytes`` is near or above it): nacked, so a member with a larger limit
        may take them; after ``max_deliveries`` they are dead letters."""
        log.warning("%d message(s) of %s too large for a Deliver frame of at most %d bytes; "
                    "nacked (the client should raise max_frame_size)", len(deliveries),
                    sub.topic, sub.conn.max_frame_size)
        try:
            broker.nack(sub.member, [d.id for d in deliveries], None, now_us=now, mono_us=mono)
        except TideMQError:
            log.debug("nack of undeliverable messages failed", exc_info=True)

    # --- security -----------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the users file and the TLS certificate again (SIGHUP). New connections get the
        new certificate; open ones keep their session. Sessions of users deleted or tokens
        revoked are closed; changed permissions apply to each session's next request. A file
        that cannot be read leaves the old settings in force (logged)."""
        cfg = self.config
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            try:
                self._tls = server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
                log.info("reloaded the TLS certificate from %s", cfg.tls_cert)
            except TideMQError as exc:
                log.error("keeping the old TLS certificate: %s", exc.message)
            else:
                # The HTTP site keeps its context object: load the new chain into it (it just
                # loaded cleanly into a fresh context, so this does not fail half-way).
                if self._http_tls is not None:
                    try:
                        self._http_tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
                    except (OSError, ssl.SSLError) as exc:
                        log.error("HTTP API keeps the old TLS certificate: %s", exc)
        if self.gate is not None:
            self._reload_users(force=True)

    def _reload_users(self, *, force: bool = False) -> None:
        gate = self.gate
        assert gate is not None
        try:
            changed = gate.reload(time.time(), force=force)
        except TideMQError as exc:
            log.error("keeping the old users: %s", exc.message)
            return
        if changed:
            log.info("reloaded users from %s", self.config.users)
        self._end_invalid_sessions(all_sessions=changed)

    def _end_invalid_sessions(self, *, all_sessions: bool) -> None:
        """Close sessions whose user is gone or whose token was revoked or expired (token
        sessions are checked every time: a token expires without the file changing)."""
        gate = self.gate
        assert gate is not None
        now = time.time()
        for conn in list(self.connections):
            p = conn.principal
            if p is None or not (all_sessions or p.token_id is not None):
                continue
            if not gate.still_valid(p, now):
                log.info("closing %s: user %r was deleted or its token revoked or expired",
                         conn.peer, p.user)
                conn.fail(AuthenticationFailed(
                    f"the session of {p.user!r} ended: the user was deleted, or the token it "
                    "logged in with was revoked or expired"))

    async def _watch_users(self) -> None:
        """Reload the users file when it changes (checked every ``USERS_POLL`` s: a stat)."""
        while True:
            await asyncio.sleep(USERS_POLL)
            self._reload_users()

    # --- timers -----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Ping idle connections; drop those silent for ``heartbeat_timeout``.

        A connection is declared dead, and its members' leases released, at the first of: EOF or
        a socket error (at once), or ``heartbeat_timeout`` s without any frame from the peer
        (checked every ``heartbeat_interval / 2``)."""
        cfg = self.config
        step = cfg.heartbeat_interval / 2
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_heartbeat(now, cfg.heartbeat_interval, cfg.heartbeat_timeout)


# --- accepting connections -----------------------------------------------------------------


async def _bind(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address the name resolves to), non-blocking.
    Raises ``OSError`` naming the address when one cannot be bound."""
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, kind, proto, _, addr in infos:
            if addr in seen:
                continue
            seen.add(addr)
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise OSError(exc.errno, f"{exc.strerror} (binding {host}:{port})") from None
            sock.listen(512)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _refuse(sock: socket.socket, exc: TideMQError) -> None:
    """Tell a refused peer why (a fatal Error frame, if the socket takes it now), then close."""
    try:
        sock.setblocking(False)
        sock.send(P.encode(P.Error.from_exception(exc, 0, fatal=True)))
    except OSError:
        pass
    finally:
        sock.close()


class _Listener:
    """Accepts connections on ``socks`` and hands each to ``on_accept(sock, peer_ip)``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, socks: list[socket.socket],
                 on_accept: Callable[[socket.socket, str], None]) -> None:
        self._loop = loop
        self.sockets = socks
        self._on_accept = on_accept
        self.port = int(socks[0].getsockname()[1])
        self._retries: dict[int, asyncio.TimerHandle] = {}
        self._last_starved_log = -_STARVED_LOG_EVERY
        self._starved_count = 0
        self.closed = False

    def start(self) -> None:
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._ready, sock)

    def _ready(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._starved(sock, exc)
                else:
                    log.warning("accepting a connection failed: %s", exc)
                return
            ip = addr[0] if isinstance(addr, tuple) else str(addr)
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            self._on_accept(conn, ip)

    def _starved(self, sock: socket.socket, exc: OSError) -> None:
        """Out of descriptors (or buffers): pause accepting on ``sock`` for ACCEPT_RETRY s,
        logging it at most once a minute. Connections already open go on being served."""
        self._starved_count += 1
        now = time.monotonic()
        if now - self._last_starved_log >= _STARVED_LOG_EVERY:
            self._last_starved_log = now
            log.error("cannot accept connections: %s (%d time(s) since the last report); "
                      "serving the open ones and retrying every %.1f s; raise the open-file "
                      "limit (ulimit -n) or lower max_connections", exc.strerror,
                      self._starved_count, ACCEPT_RETRY)
            self._starved_count = 0
        fd = sock.fileno()
        self._loop.remove_reader(fd)
        self._retries[fd] = self._loop.call_later(ACCEPT_RETRY, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        self._retries.pop(sock.fileno(), None)
        if not self.closed:
            self._loop.add_reader(sock.fileno(), self._ready, sock)

    def close(self) -> None:
        """Stop accepting and close the listening sockets. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for timer in self._retries.values():
            timer.cancel()
        self._retries.clear()
        for sock in self.sockets:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
            sock.close()
