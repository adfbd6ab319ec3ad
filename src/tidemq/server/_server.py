"""The server process: one event loop that owns the broker and every connection.

What runs where:

- the event loop: decoding frames, every broker call (the broker is single-threaded by
  contract), pushing deliveries, heartbeats, and the driver's timer (:mod:`._driver`: armed at
  the broker's next deadline, never polling);
- one worker thread (:mod:`._driver`): every fsync — group commit for durability ``always``,
  the periodic ``sync_all`` for ``interval``, and snapshot writes.

Clocks are read here only: ``now_us`` (wall) and ``mono_us`` (monotonic) go into each broker call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..broker import Broker
from ..driver import DriverConfig
from ..errors import InvalidArgument
from ..storage import open_store
from ._config import ServerConfig
from ._connection import Connection, Services
from ._driver import LoopDriver
from ._push import Subscription
from ._registry import Subscriptions

__all__ = ["Server", "now_us", "mono_us"]

log = logging.getLogger("tidemq.server")


def now_us() -> int:
    """Wall clock, µs since the epoch."""
    return time.time_ns() // 1000


def mono_us() -> int:
    """Monotonic clock, µs (leases and heartbeats)."""
    return time.monotonic_ns() // 1000


BrokerFactory = Callable[[ServerConfig], "Broker"]


def default_broker_factory(config: ServerConfig) -> Broker:
    """Open the data folder named by ``config.data`` (``None``: an in-memory store)."""
    store = open_store(config.data)
    return Broker.open(store, now_us=now_us(), mono_us=mono_us(),
                       auto_create_topics=config.auto_create_topics)


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
        self._listener: asyncio.Server | None = None
        self.driver: LoopDriver | None = None
        self.connections: set[Connection] = set()
        # Every open subscription, by member and by (connection, id); ending one unsubscribes.
        self.subscriptions = Subscriptions(self.end_member)
        self._wanting: set[str] = set()  # members to try pushing to on the next pass
        self._push_scheduled = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._stopped = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise InvalidArgument("the server is not started")
        return self._broker

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._listener is None or not self._listener.sockets:
            raise InvalidArgument("the server is not listening")
        return int(self._listener.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Open the broker (recovering its store) and start listening."""
        self._loop = loop = asyncio.get_running_loop()
        # Recovery reads the whole tail of every log: keep the loop responsive meanwhile.
        self._broker = await loop.run_in_executor(None, self._factory, self.config)
        self.driver = driver = LoopDriver(
            self._broker, loop,
            DriverConfig(sync_interval=self.config.sync_interval,
                         block_timeout=self.config.block_timeout),
            fsync_threads=self.config.fsync_threads, on_tick=self.want_push)
        # All a connection may use of the server (it never sees the Server itself).
        services = Services(
            config=self.config, broker=self._broker, registry=self.subscriptions,
            now_us=now_us, mono_us=mono_us, make_durable=driver.after_sync,
            blocked=driver.core.blocked,
            want_push=self.want_push, connections=self.connections,
            stopping=lambda: self._stopping,
        )
        self._listener = await loop.create_server(
            lambda: Connection(services), self.config.host, self.config.port,
            reuse_address=True, backlog=512,
        )
        driver.start()
        self._tasks = [loop.create_task(self._heartbeat_loop(), name="tidemq-heartbeat")]
        log.info("tidemq server listening on %s:%d (data: %s)", self.config.host, self.port,
                 self.config.data or "memory")

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
        for conn in list(self.connections):
            conn.go_away()
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
        if self._listener is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listener.wait_closed(), 1.0)
        if self.driver is not None:
            try:
                await self.driver.close()  # sync, last snapshot and close, on the worker
            except Exception:
                log.exception("closing the broker failed")
        self._stopped.set()
        log.info("tidemq server stopped")

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

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
        limit = self.config.push_batch
        members = self.subscriptions.members
        for member in wanting:
            sub = members.get(member)
            if sub is None or sub.credit <= 0 or not sub.conn.writable:
                continue
            n = min(sub.credit, limit)
            try:
                deliveries = broker.fetch(member, n, now_us=now, mono_us=mono)
            except Exception:  # a member that vanished under us: nothing to push
                log.exception("fetch for member %s failed", member)
                continue
            if deliveries:
                sub.push(deliveries)
                if len(deliveries) == n:  # maybe more ready: come back after others had a turn
                    self._wanting.add(member)
                    again = True
        if again:
            self.want_push()

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
