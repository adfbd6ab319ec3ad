"""``tidemq://host:port``: the network transport of ``Client`` / ``AsyncClient``.

One TCP connection, pipelined: every request carries a request id and its answer resolves the
matching future, so any number of requests are in flight at once. Writes made during one loop
iteration go out as one ``writelines`` call.

- **Producer** (``_tcp_producer``): per-partition batching with linger and max batch bytes; a
  future per caller; idempotent retries across reconnects (producer id + sequence numbers).
- **Consumer** (``_tcp_consumer``): server-pushed deliveries under credit; acks coalesced into
  ranges; credit returned as acks free it.
- **Reconnect**: when the connection breaks (EOF, socket error, or no frame from the server for
  three heartbeat intervals) the transport reconnects with exponential backoff (50 ms doubling to
  ``reconnect_max_delay``, with jitter), subscribes again and resends unconfirmed batches.
  Requests that were waiting for an answer other than publishes fail with ``ConnectionLost``
  (retriable): the transport cannot know whether the server applied them.

Thread safety: none; all methods run on the event loop that called :meth:`TcpTransport.connect`,
or, for the plain (non-async) methods, in a thread that holds the loop while it is not running:
the blocking ``Client`` runs this loop in its callers' threads, one at a time (``_runner``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import msgspec

from .. import protocol as P
from ..broker import Delivery, GroupInfo, GroupSettings, TopicConfig, TopicInfo
from ..broker._types import StartPosition  # not on the public broker surface (yet)
from ..errors import (
    AuthenticationFailed,
    Closed,
    ConnectionLost,
    InvalidArgument,
    ProtocolError,
    StaleLease,
    TideMQError,
    Timeout,
    TopicExists,
    UnknownTopic,
    UnsupportedVersion,
)
from ..storage import Record, encode_batch
from . import _common
from ._security import ClientSecurity, client_security, split_options
from ._tcp_consumer import ClientSubscription, ack_ranges
from ._tcp_producer import Producer, SealedBatch

__all__ = ["TcpTransport"]

log = logging.getLogger("tidemq.client")

T = TypeVar("T")
_METADATA_TTL = 30.0  # seconds a topic's partition count is trusted before a background refresh
_IGNORED = object()  # pending entry whose answer nobody awaits (pings)
# A fatal error with one of these codes ends the transport: reconnecting cannot help.
_FATAL_CODES = frozenset((UnsupportedVersion.code, AuthenticationFailed.code))


class _AckSent:
    """Pending entry of an ack frame sent without waiting: its answer goes to the
    subscription (``flush`` reports failures)."""

    __slots__ = ("sub",)

    def __init__(self, sub: ClientSubscription) -> None:
        self.sub = sub


class _Subscribing:
    """Pending entry of a Subscribe request."""

    __slots__ = ("fut", "sub")

    def __init__(self, fut: asyncio.Future[Any], sub: ClientSubscription) -> None:
        self.fut = fut
        self.sub = sub


_READ_BUFFER = 256 * 1024  # bytes one read may take (asyncio's own read size)


class _Wire(asyncio.BufferedProtocol):
    """One TCP connection; hands decoded frames to its transport.

    Reads go into one buffer of its own (``BufferedProtocol``): a plain ``Protocol`` gets a
    fresh 256 KiB ``bytes`` per read from asyncio, which glibc maps and unmaps each time
    (mmap + mremap + munmap and page faults per round trip, measured by strace here)."""

    def __init__(self, owner: TcpTransport, max_frame_size: int) -> None:
        self.owner = owner
        self._buffer = memoryview(bytearray(_READ_BUFFER))
        self.decoder = P.Decoder(max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.made: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        if not self.made.done():
            self.made.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes])  # the decoder copies what it keeps

    def data_received(self, data: bytes | memoryview) -> None:
        owner = self.owner
        owner.last_received = time.monotonic()
        try:
            self.decoder.feed(data)
            while (frame := self.decoder.next_frame()) is not P.NEED_DATA:
                owner._on_frame(frame)
        except ProtocolError as exc:
            log.warning("server sent a malformed frame (%s); reconnecting", exc.message)
            if self.transport is not None:
                self.transport.abort()
            return
        owner._flush()
        if owner.on_input is not None:
            owner.on_input()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.owner._on_lost(self, exc)

    async def shut(self, *, graceful: bool, timeout: float = 1.0) -> None:
        """Close the connection and wait until its socket is closed: a TLS close waits for
        the peer's close_notify, and a loop stopped before that would leak the socket. Past
        ``timeout`` (or when not ``graceful``) the connection is aborted."""
        t = self.transport
        if t is None:
            return
        if graceful:
            t.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.lost), timeout)
        if not self.lost.done():
            t.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.lost), timeout)


class TcpTransport:
    """An :class:`~tidemq.client._transport.AsyncTransport` over one TCP connection to a server."""

    def __init__(self, host: str, port: int, *, linger: float = 0.0002,
                 max_batch_bytes: int = 1024 * 1024, heartbeat: float = 5.0,
                 connect_timeout: float = 10.0, request_timeout: float = 30.0,
                 reconnect_max_delay: float = 2.0, max_frame_size: int = P.DEFAULT_MAX_FRAME_SIZE,
                 client_name: str = "", security: ClientSecurity | None = None) -> None:
        if heartbeat <= 0 or connect_timeout <= 0 or request_timeout <= 0:
            raise InvalidArgument("heartbeat, connect_timeout and request_timeout must be > 0")
        if max_batch_bytes > max_frame_size // 2:
            raise InvalidArgument("max_batch_bytes must be at most half of max_frame_size")
        self.host = host
        self.port = port
        self.security = security or ClientSecurity()
        self.scheme = "tidemqs" if self.security.ssl_context is not None else "tidemq"
        self.user = ""  # who the server says this session is ("" on a server without users)
        self._tcp_up = False  # a TCP (and TLS) connection was made once: for error messages
        self._last_wire: _Wire | None = None  # the newest connection, even once lost
        self._loop = asyncio.get_running_loop()
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.reconnect_max_delay = reconnect_max_delay
        self.max_frame_size = max_frame_size
        self.client_name = client_name
        self.client_id = f"{random.getrandbits(64):016x}"
        self._wire: _Wire | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._fatal: TideMQError | None = None
        self._next_rid = 0
        self._pending: dict[int, Any] = {}  # rid -> Future | SealedBatch | _IGNORED
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # A blocking caller holds the loop and writes what it queued (push_out) before it
        # waits or leaves (end_deferred): no end-of-iteration callbacks meanwhile.
        self.deferred = False
        self._dirty: set[ClientSubscription] = set()  # subscriptions with acks/credit to send
        self._subs: dict[str, ClientSubscription] = {}  # member handle -> subscription
        self._by_sub_id: dict[int, ClientSubscription] = {}  # server id (this session) -> sub
        self._next_member = 0
        self._meta: dict[str, tuple[int, float]] = {}  # topic -> (partitions, fetched at)
        self._meta_wait: dict[str, asyncio.Future[int]] = {}
        self.session_max_frame = max_frame_size
        self.last_received = time.monotonic()
        self._producer = Producer(self._loop, self._send_batch, linger=linger,
                                  max_batch_bytes=max_batch_bytes)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self.reconnects = 0  # statistics: successful reconnects
        # Called after each read is handled (the blocking client stops its loop run there
        # once what it waits for is done, instead of one loop iteration later).
        self.on_input: Callable[[], None] | None = None

    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int = 7600, *, tls: bool = False,
                      **options: Any) -> TcpTransport:
        """Connect and handshake; raises ``ConnectionLost`` if the server cannot be reached,
        ``AuthenticationFailed`` if it refuses the credentials. ``tls`` (a ``tidemqs://`` URL)
        and the security options are checked by ``_security.client_security``."""
        sec, rest = split_options(options)
        security = client_security(host, tls=tls, **sec)
        try:
            self = cls(host, port, security=security, **rest)
        except TypeError as exc:
            raise InvalidArgument(f"unknown tidemq:// client option: {exc}") from None
        url = f"{self.scheme}://{host}:{port}"
        try:
            await self._open()
        except ssl.SSLError as exc:
            await self._abort_wire()
            raise ConnectionLost(
                f"TLS handshake with {url} failed: {exc.reason or exc}. Is this a TLS port "
                "(the server needs --tls-cert), and does its certificate match tls_ca / "
                "ssl_context and the host name?") from None
        except (OSError, TimeoutError, ConnectionLost) as exc:
            await self._abort_wire()
            hint = ("is the server running ('tidemq serve')?" if not self._tcp_up else
                    "the server closed the connection during the handshake"
                    + ("; is it a TLS port (use tidemqs://)?" if not tls else
                       "; does it require a client certificate (tls_cert=)?"))
            raise ConnectionLost(f"cannot connect to {url}: {exc or type(exc).__name__}; "
                                 f"{hint}") from None
        except TideMQError:
            await self._abort_wire()
            raise
        self._spawn(self._heartbeat_loop())
        return self

    async def _abort_wire(self) -> None:
        self._closing = True
        if self._last_wire is not None:
            await self._last_wire.shut(graceful=False)

    # --- connection -------------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect, handshake, subscribe again, resend unconfirmed batches; then ready."""
        wire = _Wire(self, self.max_frame_size)
        ctx = self.security.ssl_context
        login = self.security.login()
        async with asyncio.timeout(self.connect_timeout):
            if ctx is None:
                await self._loop.create_connection(lambda: wire, self.host, self.port)
            else:
                await self._loop.create_connection(
                    lambda: wire, self.host, self.port, ssl=ctx, server_hostname=self.host,
                    ssl_handshake_timeout=self.connect_timeout)
            self._wire = self._last_wire = wire
            self._tcp_up = True
            self.last_received = time.monotonic()
            rid, fut = self._start(P.Hello(
                versions=list(P.SUPPORTED_VERSIONS), client_id=self.client_id,
                client_name=self.client_name, max_frame_size=self.max_frame_size,
                heartbeat_ms=int(self.heartbeat * 1000),
                auth_mechanism=None if login is None else login.mechanism,
                auth_data=None if login is None else login.first()))
            ok = await fut
            while isinstance(ok, P.AuthChallenge) and login is not None:
                fut = self._pending[rid] = self._loop.create_future()
                self._send(P.AuthResponse(request_id=rid, data=login.respond(ok.data)))
                ok = await fut
        if not isinstance(ok, P.HelloOk):
            raise ProtocolError(f"expected HelloOk, got {type(ok).__name__}")
        if login is not None:
            login.finish(ok.user, ok.auth_data)
        self.user = ok.user
        self.session_max_frame = ok.max_frame_size
        wire.decoder.max_frame_size = max(P.MIN_MAX_FRAME_SIZE, ok.max_frame_size)
        if ok.heartbeat_ms:
            self.heartbeat = min(self.heartbeat, ok.heartbeat_ms / 1000)
        for sub in list(self._subs.values()):
            if sub.closed:
                continue
            try:
                await self._open_subscription(sub)
            except TideMQError as exc:
                log.warning("could not subscribe %s/%s again: %s", sub.topic, sub.group, exc)
                self._end_sub(sub)
        self._producer.resend_all()
        self._flush()
        self._ready.set()

    async def _open_subscription(self, sub: ClientSubscription) -> None:
        settings = msgspec.to_builtins(sub.settings) if sub.settings is not None else {}
        rid = self._rid()
        fut: asyncio.Future[Any] = self._loop.create_future()
        # Deliveries may arrive in the same read as the SubscribeOk: the subscription must be
        # registered while that frame is handled, not when this coroutine resumes.
        self._pending[rid] = _Subscribing(fut, sub)
        self._send(P.Subscribe(request_id=rid, topic=sub.topic, group=sub.group,
                               settings=settings, prefetch=sub.prefetch))
        await fut

    def _on_lost(self, wire: _Wire, exc: Exception | None) -> None:
        if wire is not self._wire:
            return
        self._wire = None
        self._ready.clear()
        self._out = []
        self._producer.disconnected()
        lost = ConnectionLost(f"connection to {self.scheme}://{self.host}:{self.port} lost"
                              + (f": {exc}" if exc else ""))
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if isinstance(entry, _Subscribing):
                entry = entry.fut
            if isinstance(entry, asyncio.Future) and not entry.done():
                entry.set_exception(lost)
        self._by_sub_id.clear()
        stale = StaleLease("the connection was lost before the server answered these acks; "
                           "the messages may be delivered again (at-least-once)")
        for sub in self._subs.values():
            sub.acks_lost(stale)
            sub.session_lost()
        self._dirty.clear()
        if not self._closing and self._fatal is None and self._reconnecting is None:
            self._reconnecting = self._loop.create_task(self._reconnect())
        elif self._fatal is not None:  # refused for good (e.g. the user was deleted)
            self._producer.fail_all(self._fatal)

    async def _reconnect(self) -> None:
        delay = 0.05
        try:
            while not self._closing:
                await asyncio.sleep(delay * (0.5 + random.random()))
                try:
                    await self._open()
                except (OSError, TimeoutError, ConnectionLost) as exc:
                    log.info("reconnect to %s:%d failed: %s", self.host, self.port, exc)
                    if self._wire is not None and self._wire.transport is not None:
                        self._wire.transport.abort()
                    delay = min(delay * 2, self.reconnect_max_delay)
                    continue
                except TideMQError as exc:  # the server refuses us for good (version ...)
                    self._fatal = exc
                    self._producer.fail_all(exc)
                    return
                self.reconnects += 1
                log.info("reconnected to %s:%d", self.host, self.port)
                return
        finally:
            self._reconnecting = None

    async def _heartbeat_loop(self) -> None:
        """Ping a quiet server; a server silent for 3 heartbeats is dead: reconnect."""
        while not self._closing:
            await asyncio.sleep(self.heartbeat / 2)
            wire = self._wire
            if wire is None or wire.transport is None or not self._ready.is_set():
                continue
            silent = time.monotonic() - self.last_received
            if silent >= 3 * self.heartbeat:
                log.warning("no frame from %s:%d for %.1f s; reconnecting", self.host,
                            self.port, silent)
                wire.transport.abort()
            elif silent >= self.heartbeat:
                rid = self._rid()
                self._pending[rid] = _IGNORED
                self._send(P.Ping(request_id=rid))
                self._flush()

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- frames out -------------------------------------------------------------------------

    def _rid(self) -> int:
        rid = self._next_rid = (self._next_rid % 0xFFFF_FFFE) + 1
        return rid

    def _send(self, frame: Any) -> None:
        if self._dirty:  # acks queued before this frame go out before it
            self._drain_dirty()
        self._out += P.encode_buffers(frame, max_frame_size=self.session_max_frame)
        self._send_nothing()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._dirty:
            self._drain_dirty()
        out = self._out
        if not out:
            return
        self._out = []
        wire = self._wire
        if wire is not None and wire.transport is not None and not wire.transport.is_closing():
            wire.transport.writelines(out)

    def _drain_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for sub in dirty:
            self._flush_acks(sub)

    def _send_batch(self, batch: SealedBatch) -> None:
        rid = self._rid()
        batch.request_id = rid
        self._pending[rid] = batch
        self._send(P.Publish(request_id=rid, topic=batch.topic, partition=batch.partition,
                             batch=batch.payload))

    def _start(self, frame: Any) -> tuple[int, asyncio.Future[Any]]:
        """Send a request on the current connection; the future gets its answer frame."""
        rid = self._rid()
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = fut
        self._send(msgspec.structs.replace(frame, request_id=rid))
        return rid, fut

    async def _exchange(self, frame: Any) -> Any:
        return await self._start(frame)[1]

    async def _request(self, frame: Any) -> Any:
        """Wait for a ready connection (reconnecting), then :meth:`_exchange`."""
        self._check_open()
        if not self._ready.is_set():
            try:
                async with asyncio.timeout(self.request_timeout):
                    await self._ready.wait()
            except TimeoutError:
                raise ConnectionLost(
                    f"tidemq://{self.host}:{self.port} unreachable for {self.request_timeout} s"
                ) from None
            self._check_open()
        rid, fut = self._start(frame)
        try:
            async with asyncio.timeout(self.request_timeout):
                return await fut
        except TimeoutError:
            self._pending.pop(rid, None)
            raise Timeout(f"no answer to {type(frame).__name__} from tidemq://{self.host}:"
                          f"{self.port} within {self.request_timeout} s") from None

    def _check_open(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        if self._closing:
            raise Closed("the client is closed; open a new one")

    async def _result(self, frame: Any) -> Any:
        answer = await self._request(frame)
        return answer.value if isinstance(answer, P.Result) else answer

    # --- frames in --------------------------------------------------------------------------

    def _on_frame(self, frame: Any) -> None:
        kind = type(frame)
        if kind is P.Deliver:
            sub = self._by_sub_id.get(frame.subscription_id)
            if sub is not None:
                sub.deliver(frame)
            return
        if kind is P.Ping:
            self._send(P.Pong(request_id=frame.request_id))
            return
        if kind is P.GoAway:
            log.info("server %s:%d is going away: %s", self.host, self.port, frame.message)
            return
        if kind is P.SubscriptionEnded:
            sub = self._by_sub_id.pop(frame.subscription_id, None)
            if sub is not None:
                self._end_sub(sub)
            return
        entry = self._pending.pop(frame.request_id, None)
        if entry is None:
            if kind is P.Error:
                log.warning("server error: %s", frame.message)
                if frame.fatal and frame.code in _FATAL_CODES:
                    self._fatal = frame.to_exception()
            return
        if isinstance(entry, SealedBatch):
            if kind is P.PublishOk:
                self._producer.confirmed(entry, P.ok_ids(frame))
            elif kind is P.Error:
                self._producer.failed(entry, frame.to_exception())
            return
        if isinstance(entry, _Subscribing):
            if kind is P.SubscribeOk:
                entry.sub.opened(frame.subscription_id, frame.settings)
                self._by_sub_id[frame.subscription_id] = entry.sub
            entry = entry.fut
        elif type(entry) is _AckSent:
            err: BaseException | None = None
            if kind is P.Error:
                err = frame.to_exception()
            elif kind is P.AckOk and frame.failures:
                _, code, message = frame.failures[0]
                err = _error(code, message)
            entry.sub.ack_answered(frame.request_id, err)
            return
        elif entry is _IGNORED:
            if kind is P.Error:
                log.warning("request failed: %s", frame.message)
            elif kind is P.AckOk and frame.failures:
                log.warning("acks not applied: %s", frame.failures[:5])
            return
        if entry.done():
            return
        if kind is P.Error:
            exc = frame.to_exception()
            if frame.fatal and frame.code in _FATAL_CODES:
                self._fatal = exc
            entry.set_exception(exc)
        else:
            entry.set_result(frame)

    def _end_sub(self, sub: ClientSubscription) -> None:
        sub.closed = True
        if sub.waiter is not None and not sub.waiter.done():
            sub.waiter.set_result(None)

    # --- topics -----------------------------------------------------------------------------

    async def create_topic(self, name: str, config: TopicConfig, exist_ok: bool) -> TopicInfo:
        fields = msgspec.to_builtins(config)
        partitions = fields.pop("partitions")
        try:
            value = await self._result(P.CreateTopic(name=name, partitions=partitions,
                                                     config=fields))
        except TopicExists:
            if not exist_ok:
                raise
            return await self.describe_topic(name)
        info: TopicInfo = _convert(value, TopicInfo)
        self._meta[name] = (len(info.partitions), time.monotonic())
        return info

    async def delete_topic(self, name: str) -> None:
        await self._result(P.DeleteTopic(name=name))
        self._meta.pop(name, None)

    async def list_topics(self) -> list[TopicInfo]:
        topics: list[TopicInfo] = _convert(await self._result(P.ListTopics()), list[TopicInfo])
        return topics

    async def describe_topic(self, name: str) -> TopicInfo:
        info: TopicInfo = _convert(await self._result(P.DescribeTopic(name=name)), TopicInfo)
        self._meta[name] = (len(info.partitions), time.monotonic())
        return info

    async def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        info: TopicInfo = _convert(
            await self._result(P.SetPartitions(name=name, partitions=partitions)), TopicInfo)
        self._meta[name] = (len(info.partitions), time.monotonic())
        return info

    # --- publishing -------------------------------------------------------------------------

    async def publish(self, topic: str, records: Sequence[Record], *,
                      plain: bool = False) -> list[str]:
        """Queue ``records`` in the batching producer; returns their ids once confirmed.
        ``plain``: every record is a bare body (see ``Producer.add``)."""
        self._check_open()
        meta = self._meta.get(topic)
        if meta is None:
            partitions = await self._partitions(topic)
            if partitions == 0:  # no such topic yet: let the server create it and partition
                return await self._publish_unsequenced(topic, records)
        else:
            partitions = meta[0]
            if time.monotonic() - meta[1] > _METADATA_TTL and topic not in self._meta_wait:
                self._spawn(self._partitions(topic))  # refresh in the background
        plain = plain or type(records) is _common.PlainRecords
        return await self._producer.add(topic, partitions, records, plain=plain)

    def publish_one(self, topic: str, record: Record) -> asyncio.Future[str] | None:
        """The per-message fast path: a future for the id, or None when the topic's metadata
        is missing or stale (the caller then takes :meth:`publish`)."""
        self._check_open()
        meta = self._meta.get(topic)
        if meta is None or time.monotonic() - meta[1] > _METADATA_TTL:
            return None
        return self._producer.add_one(topic, meta[0], record)

    async def _partitions(self, topic: str) -> int:
        """The topic's partition count (0: the topic does not exist); one lookup at a time."""
        waiting = self._meta_wait.get(topic)
        if waiting is not None:
            return await asyncio.shield(waiting)
        fut: asyncio.Future[int] = self._loop.create_future()
        self._meta_wait[topic] = fut
        try:
            n = len((await self.describe_topic(topic)).partitions)
        except UnknownTopic:
            n = 0
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: other waiters re-raise it
            raise
        finally:
            self._meta_wait.pop(topic, None)
        fut.set_result(n)
        return n

    async def _publish_unsequenced(self, topic: str, records: Sequence[Record]) -> list[str]:
        ok = await self._request(P.Publish(topic=topic, partition=-1,
                                           batch=encode_batch(list(records))))
        self._meta.pop(topic, None)  # it exists now: learn its partitions next time
        return P.ok_ids(ok)

    # --- groups -----------------------------------------------------------------------------

    async def create_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        value = await self._result(P.Call(method="create_group", args={
            "topic": topic, "group": group, "settings": msgspec.to_builtins(settings)}))
        info: GroupInfo = _convert(value, GroupInfo)
        return info

    async def update_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        value = await self._result(P.Call(method="update_group", args={
            "topic": topic, "group": group, "settings": msgspec.to_builtins(settings)}))
        info: GroupInfo = _convert(value, GroupInfo)
        return info

    async def delete_group(self, topic: str, group: str) -> None:
        await self._result(P.Call(method="delete_group", args={"topic": topic, "group": group}))

    async def list_groups(self, topic: str) -> list[GroupInfo]:
        groups: list[GroupInfo] = _convert(await self._result(P.GroupList(topic=topic)),
                                           list[GroupInfo])
        return groups

    async def describe_group(self, topic: str, group: str) -> GroupInfo:
        info: GroupInfo = _convert(await self._result(P.GroupDescribe(topic=topic, group=group)),
                                   GroupInfo)
        return info

    async def reset_group(self, topic: str, group: str, start: StartPosition) -> None:
        await self._result(P.GroupReset(topic=topic, group=group, start=start))

    async def redrive(self, topic: str, group: str, limit: int | None) -> int:
        return int(await self._result(P.DlqRedrive(topic=topic, group=group, limit=limit)))

    # --- consuming --------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, settings: GroupSettings | None,
                        prefetch: int) -> str:
        self._check_open()
        self._next_member += 1
        member = f"tcp-{self._next_member}"
        sub = ClientSubscription(member, topic, group, settings, prefetch)
        if not self._ready.is_set():
            await self._request(P.Ping())  # waits for the connection
        await self._open_subscription(sub)
        self._subs[member] = sub
        return member

    def _sub(self, member: str) -> ClientSubscription:
        sub = self._subs.get(member)
        if sub is None:
            raise Closed(f"subscription {member!r} is closed")
        return sub

    async def receive(self, member: str, max_messages: int, timeout: float) -> list[Delivery]:
        sub = self._sub(member)
        if not sub.queue and timeout > 0 and not sub.closed:
            fut: asyncio.Future[None] = self._loop.create_future()
            sub.waiter = fut
            timer = self._loop.call_later(timeout, _wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
                sub.waiter = None
        if not sub.queue and sub.closed:
            self._subs.pop(member, None)
            raise Closed(f"subscription {member!r} was ended by the server (topic deleted?)")
        return sub.take(max_messages)

    def _flush_acks(self, sub: ClientSubscription) -> None:
        """Move the subscription's coalesced acks and freed credit into the output."""
        if sub.sub_id is None:
            sub.pending_acks.clear()
            sub.pending_credit = 0
            return
        if sub.pending_acks:
            rid = self._rid()
            self._pending[rid] = _AckSent(sub)
            sub.acks_out.add(rid)
            self._out += P.encode_buffers(P.Ack(request_id=rid, subscription_id=sub.sub_id,
                                                ranges=ack_ranges(sub.pending_acks)))
            sub.pending_acks = []
        if sub.pending_credit:
            self._out += P.encode_buffers(P.Credit(subscription_id=sub.sub_id,
                                                   n=sub.pending_credit))
            sub.pending_credit = 0

    def receive_nowait(self, member: str, max_messages: int) -> list[Delivery] | None:
        """Up to ``max_messages`` deliveries from the local buffer, or None when it is empty
        (then :meth:`receive` waits). Acks waiting to be sent leave now: the next receive
        flushes them, even when the loop does not run."""
        sub = self._sub(member)
        if not sub.queue:
            return None
        if self._dirty or self._out:
            self._flush()
        return sub.take(max_messages)

    def ack_start(self, member: str, ids: Sequence[str]) -> Awaitable[None] | None:
        """Ack ``ids``. While their leases are surely still held this returns None at once and
        the acks travel, merged into ranges, with the next write (the next receive, the
        client's short flush timer, a flush or close); otherwise (a lease near or past its
        expiry, a message taken back in an ordered mode, or ids of an earlier connection) it
        returns an awaitable of the server's verdict, which raises ``StaleLease`` if another
        member holds the message now."""
        sub = self._sub(member)
        refs, unknown, maybe_stale = sub.settle(ids)
        if not maybe_stale and not unknown:
            if refs:
                sub.pending_acks += refs
                if sub not in self._dirty:
                    self._dirty.add(sub)
                    self._send_nothing()
            return None
        return self._settle_now(sub, P.Ack(subscription_id=0, ranges=ack_ranges(refs),
                                           ids=unknown))

    async def ack(self, member: str, ids: Sequence[str]) -> None:
        """:meth:`ack_start`, awaited."""
        pending = self.ack_start(member, ids)
        if pending is not None:
            await pending

    async def flush(self, member: str) -> None:
        """Return once the server has answered every ack of this subscription sent before
        the call — applied, and durable under ``always`` — and raise the first failure of an
        ack sent without waiting (``StaleLease`` …), once. An ack still coalescing goes out now.
        """
        sub = self._sub(member)
        self._flush_acks(sub)
        self._send_nothing()
        if sub.acks_out:
            fut: asyncio.Future[None] = self._loop.create_future()
            sub.ack_waiters.append((set(sub.acks_out), fut))
            try:
                async with asyncio.timeout(self.request_timeout):
                    await fut
            except TimeoutError:
                raise Timeout(f"acks not answered by tidemq://{self.host}:{self.port} within "
                              f"{self.request_timeout} s") from None
        err, sub.ack_error = sub.ack_error, None
        if err is not None:
            raise err

    async def _settle_now(self, sub: ClientSubscription, frame: Any) -> None:
        """Send ``frame`` (after the acks queued before it) and raise what the server says."""
        if sub.sub_id is None:
            raise StaleLease("the connection was lost, and with it the leases of this "
                             "subscription; the messages will be delivered again")
        self._flush_acks(sub)
        answer = await self._exchange(msgspec.structs.replace(frame, subscription_id=sub.sub_id))
        if sub.pending_credit:
            self._dirty.add(sub)
            self._send_nothing()
        if isinstance(answer, P.AckOk) and answer.failures:
            _, code, message = answer.failures[0]
            raise _error(code, message)

    def _send_nothing(self) -> None:
        """Have what is queued written at the end of this loop iteration (or, deferred, by
        the caller's push_out / end_deferred)."""
        if not self._flush_scheduled and not self.deferred:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def nack(self, member: str, ids: Sequence[str], delay: float | None) -> None:
        sub = self._sub(member)
        held = sub.hold_back(ids)  # ordered modes: nothing behind the head until it comes again
        sub.settle(ids)
        try:
            await self._settle_now(sub, P.Nack(subscription_id=0, ids=list(ids), delay=delay))
        finally:
            sub.release(held)

    async def reject(self, member: str, ids: Sequence[str], reason: str) -> None:
        sub = self._sub(member)
        sub.settle(ids)
        await self._settle_now(sub, P.Reject(subscription_id=0, ids=list(ids), reason=reason))

    async def extend(self, member: str, ids: Sequence[str], seconds: float) -> None:
        sub = self._sub(member)
        await self._settle_now(sub, P.Extend(subscription_id=0, ids=list(ids), seconds=seconds))
        sub.extended(ids, seconds)

    async def unsubscribe(self, member: str) -> None:
        sub = self._subs.pop(member, None)
        if sub is None:
            return
        sub_id = sub.sub_id
        self._end_sub(sub)
        if sub_id is None or self._wire is None:
            return
        self._flush_acks(sub)
        self._by_sub_id.pop(sub_id, None)
        with contextlib.suppress(ConnectionLost):
            await self._exchange(P.CloseSubscription(subscription_id=sub_id))

    async def flush_all(self) -> None:
        """Send what is batched and return once every publish and ack made before the call is
        answered; raise the first ack failure of a subscription (as :meth:`flush`). Publish
        failures stay with their callers' futures."""
        self._check_open()
        self._producer.flush_now()
        waiting = self._producer.waiting()
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=self.request_timeout)
            if pending:
                raise Timeout(f"{len(pending)} publishes not confirmed by tidemq://{self.host}:"
                              f"{self.port} within {self.request_timeout} s")
        first: BaseException | None = None
        for member in list(self._subs):
            try:
                await self.flush(member)
            except (Closed, ConnectionLost):
                continue
            except TideMQError as exc:
                first = first or exc
        if first is not None:
            raise first

    def defer(self) -> None:
        """A blocking caller takes the loop: what it queues waits for its :meth:`push_out`
        or :meth:`end_deferred` instead of end-of-iteration callbacks."""
        self.deferred = self._producer.deferred = True

    def push_out(self) -> None:
        """Seal the batches due at the end of this loop iteration and write every frame
        waiting for it now: a blocking caller about to wait for an answer sends first."""
        self.deferred = self._producer.deferred = False
        self._producer.seal_due()
        if self._out or self._dirty:
            self._flush()

    def end_deferred(self) -> None:
        """A blocking caller leaves without waiting: what it queued is written at the end of
        the next loop iteration, as if it had not been deferred (acks keep coalescing)."""
        if not self.deferred:
            return
        self.deferred = self._producer.deferred = False
        self._producer.schedule_due()
        if self._out or self._dirty:
            self._send_nothing()

    def abort_connection(self) -> None:
        """Drop the connection at once (it reconnects): used when the blocking client's loop
        was interrupted at a point where a frame may have been half handled."""
        wire = self._wire
        if wire is not None and wire.transport is not None:
            wire.transport.abort()

    # --- closing ----------------------------------------------------------------------------

    async def close(self, timeout: float = 10.0) -> None:
        """Send what is batched, wait (up to ``timeout`` s) for its confirmations, release the
        subscriptions and close the connection."""
        if self._closing:
            return
        self._producer.flush_now()
        self._flush()
        deadline = time.monotonic() + timeout
        while self._producer.pending and time.monotonic() < deadline and self._fatal is None:
            await asyncio.sleep(0.002)
        for member in list(self._subs):
            with contextlib.suppress(TideMQError, TimeoutError):
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await self.unsubscribe(member)
        self._closing = True
        self._producer.fail_all(Closed("the client was closed before the server confirmed"))
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        for task in list(self._tasks):
            task.cancel()
        wire = self._wire
        if wire is not None and wire.transport is not None:
            self._flush()
            await wire.shut(graceful=True)
        self._wire = None

    # --- statistics -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ready.is_set()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _convert(value: Any, typ: Any) -> Any:
    try:
        return msgspec.convert(value, typ, strict=False)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"the server's answer does not match {typ}: {exc}") from None


def _error(code: int, message: str) -> TideMQError:
    from ..errors import for_code

    return for_code(code, message)


