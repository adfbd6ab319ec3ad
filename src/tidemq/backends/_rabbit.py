"""``amqp://``: the TideMQ client API on RabbitMQ (an ``AsyncTransport``), with aiormq.

Layout (names in ``_rabbit_codec``): a topic is a durable topic exchange ``P.T.I``; the publisher
picks the partition (xxh3 of the key, SPEC §2) and puts it as the first word of the routing key.
A group is one quorum queue per partition, ``P.T.I.G.p``, bound with ``p.<pattern>`` for each
routing pattern of its filter, with ``x-delivery-limit`` and an at-least-once dead-letter
exchange ``P.T.I.G.dlx`` (fanout) that feeds the group's own dead-letter queue ``P.T.I.G.dead``
(for redrive) and the dead-letter topic's exchange. Ordered groups' queues have
``x-single-active-consumer``. Topic and group records (partition count, incarnation, settings)
live in the metadata stream ``P.meta`` (``_rabbit_meta``).

Why aiormq rather than aio-pika: the backend needs the raw protocol (delivery tags, basic.nack,
basic.get, exchange-to-exchange bindings, confirms as frames) and its own error translation;
aio-pika's robust objects re-declare and re-consume behind the caller's back, which would hide
exactly the failures this backend must report, and cost a layer on the hot path.

**Read-back.** RabbitMQ cannot return a queue's arguments over AMQP (that needs the management
plugin, which is not enabled on the machines). What it does: it refuses arguments a queue type
does not support (``x-max-priority`` on quorum queues) and compares a re-declare's arguments with
the queue's for every argument it knows, so a second client (or a changed setting) that asks for
something else gets ``PRECONDITION_FAILED``. The backend uses only arguments RabbitMQ 3.10 knows
(it would silently accept unknown ones, like ``x-consumer-timeout`` before 3.12), re-declares
every queue it creates once more and checks it exists (passive declare). Bindings cannot be read
back at all.

Thread safety: none; every method runs on the event loop that called :func:`connect_amqp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import aiormq
import msgspec
from aiormq.abc import AbstractChannel, AbstractConnection

from ..broker._deadletters import origin_of, redriven_record
from ..broker._filters import compile_filter
from ..broker._hashing import partition_for_key
from ..broker._ids import make_id, parse_id
from ..broker._limits import GROUP_HEADER, check_prefetch, check_records
from ..broker._names import (
    dead_letter_name,
    topic_key,
    validate_group_name,
    validate_topic_name,
)
from ..broker._types import (
    MAX_PARTITIONS,
    Delivery,
    GroupInfo,
    GroupPartitionInfo,
    GroupSettings,
    PartitionInfo,
    StartPosition,
    TopicConfig,
    TopicInfo,
    check_start,
)
from ..errors import (
    Closed,
    ConnectionLost,
    GroupSettingsMismatch,
    InvalidArgument,
    InvalidPartitionCount,
    TideMQError,
    Timeout,
    TopicExists,
    UnknownGroup,
    UnknownTopic,
    Unsupported,
)
from ..storage import Record
from ._capabilities import Capability, parse_version
from ._nats_names import check_prefix
from ._rabbit_capabilities import AMQP_MIN_VERSION, amqp_capabilities
from ._rabbit_codec import WAIT_HEADER, binding_keys, decode, encode, routing_key_for, token
from ._rabbit_meta import MetaLog
from ._reads import heap_reads

if TYPE_CHECKING:
    from ._rabbit_member import Member

__all__ = ["RabbitTransport", "connect_amqp", "Topic"]

log = logging.getLogger("tidemq.amqp")

T = TypeVar("T")
MARKER: Final = "x-tidemq-marker"  # a log stream's marker message (replay stops there)
# A replay from a time also reads what was stamped up to this much earlier (and filters it
# out): publishers' clocks may differ by that much.
_REPLAY_SLACK_US: Final = 1_000_000
_OPTIONS: Final = frozenset({"prefix", "request_timeout", "auto_create_topics",
                             "ignore_priority", "wait_queue_expires", "connect_timeout",
                             "reconnect_timeout"})


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def quantize_ms(seconds: float) -> int:
    """A delay as whole milliseconds, rounded UP to 3 significant digits (so a delay is never
    short, at most 1% long, and the number of wait queues stays small)."""
    ms = max(1, math.ceil(seconds * 1000))
    digits = len(str(ms))
    if digits <= 3:
        return ms
    step = 10 ** (digits - 3)
    return int(-(-ms // step) * step)


class Topic(msgspec.Struct, frozen=True):
    """A topic as its metadata record says."""

    name: str
    incarnation: int
    partitions: int
    config: TopicConfig
    token: str
    exchange: str  # P.T.I

    def queue(self, group: str, p: int) -> str:
        return f"{self.exchange}.{token(group)}.{p}"

    def dlx(self, group: str) -> str:
        return f"{self.exchange}.{token(group)}.dlx"

    def dead_queue(self, group: str) -> str:
        return f"{self.exchange}.{token(group)}.dead"

    @property
    def log(self) -> str:
        """The stream queue of a log_retention topic: every message, for the retention."""
        return f"{self.exchange}.log"

    @property
    def unrouted(self) -> str:
        """The alternate exchange and the queue behind it: messages no group's binding took."""
        return f"{self.exchange}.unrouted"


async def connect_amqp(url: str = "amqp://guest:guest@127.0.0.1:5672/",
                       **options: Any) -> RabbitTransport:
    """Connect to RabbitMQ and return the ``amqp://`` transport.

    ``url``: ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS), as aiormq reads
    it (query options such as ``heartbeat`` pass through). Options (keyword):

    - ``prefix`` (``"tidemq"``): first word of every exchange and queue this backend creates;
      deployments sharing a vhost use different ones.
    - ``request_timeout`` (10 s): each declare, bind and publish confirm.
    - ``auto_create_topics`` (True): publish/subscribe create unknown topics.
    - ``ignore_priority`` (False): priority > 0 is Unsupported; True stores it, FIFO order.
    - ``wait_queue_expires`` (600 s): how long an unused wait queue (delays) outlives its delay.
    - ``connect_timeout`` (10 s): one connection attempt.
    - ``reconnect_timeout`` (30 s): how long an operation that finds the connection lost tries
      to connect again (each host of the URL in turn) before raising ``ConnectionLost``.

    Several hosts (a cluster): ``amqp://user:pw@h1:5672,h2:5672,h3:5672/vhost``; the first
    that answers is used, and the others on reconnect.

    Raises ``ConnectionLost`` if no server answers, ``Unsupported`` if the server is older than
    RabbitMQ 3.10, ``InvalidArgument`` for an unknown option.
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise InvalidArgument(f"unknown amqp:// option(s) {sorted(unknown)}; known: "
                              f"{sorted(_OPTIONS)}")
    urls = host_urls(url)
    connect_timeout = float(options.pop("connect_timeout", 10.0))
    conn = await connect_any(urls, connect_timeout)
    transport = RabbitTransport(conn, urls=urls, connect_timeout=connect_timeout, **options)
    try:
        await transport._start()
    except BaseException:
        with contextlib.suppress(Exception):
            await conn.close()
        raise
    return transport


def host_urls(url: str) -> list[str]:
    """One URL per host of ``amqp://creds@h1:p1,h2:p2/vhost?query``."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("amqp", "amqps"):
        raise InvalidArgument(f"an amqp:// URL is expected, not {_redact(url)!r}")
    creds, _, hosts = parts.netloc.rpartition("@")
    out = []
    for host in (hosts.split(",") if hosts else ["127.0.0.1"]):
        netloc = f"{creds}@{host}" if creds else host
        out.append(parts._replace(netloc=netloc).geturl())
    return out


class _HeapReads(aiormq.connection.TCPTransportFactory):
    """aiormq's plain TCP connection, reading at most READ_SIZE at a time (``_reads``)."""

    async def create(self, url: Any, **kwargs: Any) -> tuple[asyncio.StreamReader,
                                                               asyncio.StreamWriter]:
        reader, writer = await super().create(url, **kwargs)
        heap_reads(writer.transport)
        return reader, writer


async def connect_any(urls: list[str], timeout: float) -> AbstractConnection:
    """A connection to the first of ``urls`` that answers."""
    errors = []
    for url in urls:
        try:
            opts: dict[str, Any] = {}
            if urlsplit(url).scheme.lower() == "amqp":  # amqps: aiormq's TLS factory
                opts["transport_factory"] = _HeapReads()
            conn: AbstractConnection = await asyncio.wait_for(aiormq.connect(url, **opts),
                                                              timeout)
            return conn
        except Exception as exc:
            errors.append(f"{_redact(url)}: {exc!r}")
    raise ConnectionLost(f"cannot connect to RabbitMQ ({'; '.join(errors)}); is "
                         "rabbitmq-server running?")


def translate(exc: BaseException, what: str) -> TideMQError:
    """A TideMQ error for an aiormq exception raised while doing ``what``."""
    if isinstance(exc, TideMQError):
        return exc
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return Timeout(f"{what}: RabbitMQ did not answer in time; retry")
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return GroupSettingsMismatch(f"{what}: RabbitMQ refused it ({exc}); the queue exists "
                                     "with other arguments (other group settings)")
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return UnknownTopic(f"{what}: {exc}")
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return TideMQError(f"{what}: access refused by RabbitMQ ({exc})")
    if isinstance(exc, aiormq.exceptions.AMQPError | ConnectionError | OSError
                  | aiormq.exceptions.ChannelInvalidStateError):
        return ConnectionLost(f"{what}: {exc!r}; the next call connects again")
    raise exc


class RabbitTransport:
    """An ``AsyncTransport`` on RabbitMQ. See the module docstring and :func:`connect_amqp`."""

    def __init__(self, conn: AbstractConnection, *, prefix: str = "tidemq",
                 request_timeout: float = 10.0, auto_create_topics: bool = True,
                 ignore_priority: bool = False, wait_queue_expires: float = 600.0,
                 urls: list[str] | None = None, connect_timeout: float = 10.0,
                 reconnect_timeout: float = 30.0) -> None:
        try:
            check_prefix(prefix)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        for name, value in (("request_timeout", request_timeout),
                            ("wait_queue_expires", wait_queue_expires)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise InvalidArgument(f"{name} must be a number of seconds > 0, got {value!r}")
        self.conn = conn
        # The loop everything runs on. The blocking Client calls the plain methods
        # (ack_start ...) from its caller's thread with the loop held but not running, so
        # tasks are made on this loop explicitly, never on "the current" one.
        self.loop = asyncio.get_running_loop()
        self.urls = urls or []
        self.connect_timeout = float(connect_timeout)
        self.reconnect_timeout = float(reconnect_timeout)
        self._reconnecting: asyncio.Lock | None = None
        self.reconnects = 0
        props = conn.server_properties or {}
        v = props.get("version", "0")
        self.server_version = v.decode() if isinstance(v, bytes) else str(v)
        self.prefix = prefix
        self.timeout = float(request_timeout)
        self.auto_create = auto_create_topics
        self.ignore_priority = ignore_priority
        self.wait_expires_ms = int(wait_queue_expires * 1000)
        self.meta = MetaLog(conn, f"{prefix}.meta", self.timeout)
        self.wait_exchange = f"{prefix}.wait"
        self.client_id = random.getrandbits(31)
        self._seq = itertools.count(1)
        self._member_seq = itertools.count(1)
        self._rr = 0
        self._pub: AbstractChannel | None = None
        self._admin: AbstractChannel | None = None
        self._declared: set[str] = set()  # exchanges declared by this client
        self._waits: dict[str, float] = {}  # wait queue -> monotonic time declared
        self.members: dict[str, Member] = {}
        # _topic_of's results by the record they came from (kept, so its id stays unique)
        self._topics: dict[int, tuple[Any, Topic]] = {}
        self._topic_keys: dict[str, str] = {}  # topic name as used -> its record's key
        self.acked: dict[str, None] = {}  # ids its members acked lately (idempotent late acks)
        self.created: set[tuple[str, str]] = set()  # ("queue"|"exchange", name), for tests
        self._closed = False

    async def _start(self) -> None:
        if parse_version(self.server_version) < AMQP_MIN_VERSION:
            raise Unsupported(f"the amqp:// backend needs RabbitMQ 3.10 or newer; this server "
                              f"is {self.server_version}")
        try:
            await self.meta.start()
            ch = await self.admin()
            await ch.exchange_declare(self.wait_exchange, exchange_type="headers", durable=True)
        except aiormq.exceptions.AMQPError as exc:
            raise translate(exc, "starting the amqp:// backend") from exc

    # -- plumbing ---------------------------------------------------------------------------

    def capabilities(self) -> dict[str, Capability]:
        """This backend's capability table for the connected server."""
        return amqp_capabilities(self.server_version)

    def unsupported(self, feature: str, why: str) -> Unsupported:
        return Unsupported(f"{feature} is not supported by the amqp:// backend on RabbitMQ "
                           f"{self.server_version}: {why}")

    def check_open(self) -> None:
        if self._closed:
            raise Closed("this amqp:// client is closed")

    async def connection(self) -> AbstractConnection:
        """The open connection; a lost one is replaced first (see :meth:`_reconnect`)."""
        self.check_open()
        if self.conn.is_closed or self.meta.failed is not None:
            await self._reconnect()
        return self.conn

    async def _reconnect(self) -> None:
        """Connect again (each host in turn, for up to ``reconnect_timeout``), follow the
        metadata stream again and re-subscribe every member: what the members held went back
        to the queues with the old connection, so acking it raises StaleLease; publishes
        whose confirm was lost were not retried (the caller got ConnectionLost)."""
        if self._reconnecting is None:
            self._reconnecting = asyncio.Lock()
        async with self._reconnecting:
            if not self.conn.is_closed and self.meta.failed is None:
                return
            deadline = time.monotonic() + self.reconnect_timeout
            delay = 0.1
            while True:
                self.check_open()
                try:
                    conn = await connect_any(self.urls, self.connect_timeout)
                    break
                except ConnectionLost:
                    if time.monotonic() + delay > deadline or not self.urls:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            old_meta = self.meta
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = conn
            self._pub = self._admin = None
            self._declared.clear()
            self._waits.clear()
            self.meta = MetaLog(conn, old_meta.queue, self.timeout)
            try:
                await self.meta.start()
            except aiormq.exceptions.AMQPError as exc:
                raise translate(exc, "following the metadata stream again") from None
            self.reconnects += 1
            log.info("amqp:// reconnected (%d)", self.reconnects)
            for member in list(self.members.values()):
                await member.restart()

    async def admin(self) -> AbstractChannel:
        """The channel for declares; a refused declare closes a channel, so it is reopened."""
        conn = await self.connection()
        if self._admin is None or self._admin.is_closed:
            self._admin = await conn.channel()
        return self._admin

    async def pub(self) -> AbstractChannel:
        conn = await self.connection()
        if self._pub is None or self._pub.is_closed:
            self._pub = await conn.channel(publisher_confirms=True)
        return self._pub

    async def call(self, what: str, fn: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """``fn(admin channel)`` with the errors translated."""
        ch = await self.admin()
        try:
            return await asyncio.wait_for(fn(ch), self.timeout)
        except (aiormq.exceptions.AMQPError, TimeoutError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError) as exc:
            raise translate(exc, what) from None

    async def declare_queue(self, name: str, arguments: dict[str, Any], feature: str) -> None:
        """Declare a durable queue, re-declare it (RabbitMQ compares the arguments it knows) and
        check it exists; ``Unsupported`` if the server refuses an argument."""
        ch = await self.admin()
        try:
            await asyncio.wait_for(ch.queue_declare(name, durable=True, arguments=arguments),
                                   self.timeout)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            text = str(exc)
            if "invalid arg" in text:
                raise self.unsupported(feature, text) from None
            raise GroupSettingsMismatch(f"queue {name!r} exists with other arguments: {text}; "
                                        "the group exists with other settings (update_group, "
                                        "or delete the group)") from None
        except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise translate(exc, f"declaring queue {name!r}") from None
        self.created.add(("queue", name))
        try:
            await asyncio.wait_for(ch.queue_declare(name, durable=True, arguments=arguments),
                                   self.timeout)
        except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise translate(exc, f"re-declaring queue {name!r}") from None
        await self.passive(name)

    async def bind(self, queue: str, exchange: str, key: str, *, unbind: bool = False) -> None:
        ch = await self.admin()
        try:
            if unbind:
                await asyncio.wait_for(ch.queue_unbind(queue, exchange, routing_key=key),
                                       self.timeout)
            else:
                await asyncio.wait_for(ch.queue_bind(queue, exchange, routing_key=key),
                                       self.timeout)
        except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise translate(exc, f"binding {queue!r} to {exchange!r} with {key!r}") from None

    async def delete_queue(self, queue: str) -> None:
        ch = await self.admin()
        try:
            await asyncio.wait_for(ch.queue_delete(queue), self.timeout)
        except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise translate(exc, f"deleting queue {queue!r}") from None
        self.created.discard(("queue", queue))

    async def passive(self, queue: str) -> Any:
        """The declare-ok of an existing queue (message and consumer counts)."""
        ch = await self.admin()
        try:
            return await asyncio.wait_for(ch.queue_declare(queue, passive=True), self.timeout)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise UnknownGroup(f"queue {queue!r} is missing; delete the group and subscribe "
                               "again") from None
        except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise translate(exc, f"reading queue {queue!r}") from None

    async def declare_exchange(self, name: str, kind: str,
                               arguments: dict[str, Any] | None = None) -> None:
        if name in self._declared:
            return
        await self.call(f"declaring exchange {name!r}",
                        lambda c: c.exchange_declare(name, exchange_type=kind, durable=True,
                                                     arguments=arguments))
        self._declared.add(name)
        self.created.add(("exchange", name))

    async def publish_raw(self, exchange: str, routing_key: str, body: bytes,
                          props: dict[str, Any]) -> Awaitable[Any]:
        """Send one message on the confirm channel; returns an awaitable of its confirm (sent
        in call order: the channel's lock is FIFO)."""
        ch = await self.pub()
        # aiormq's own timeout (no wait_for task around it: one task per message, and
        # aiormq rolls a cancelled publish back only in the task that made it)
        fut = asyncio.ensure_future(ch.basic_publish(
            body, exchange=exchange, routing_key=routing_key,
            properties=aiormq.spec.Basic.Properties(**props), timeout=self.timeout))
        fut.add_done_callback(_seen)
        return fut

    async def confirmed(self, sends: list[Awaitable[Any]], what: str) -> None:
        results = await asyncio.gather(*sends, return_exceptions=True)
        for res in results:
            _verdict(res, what)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for member in list(self.members.values()):
            with contextlib.suppress(Exception):
                await member.close()
        self.members.clear()
        await self.meta.close()
        with contextlib.suppress(Exception):
            await self.conn.close()

    # -- topics -----------------------------------------------------------------------------

    def _topic_of(self, got: tuple[Any, int]) -> Topic:
        """A topic from its record; the incarnation is the revision of the record's creation
        (kept in the record once it is updated). Remembered per record: a publish or receive
        asks for it every time, and a changed record is a new object."""
        hit = self._topics.get(id(got))
        if hit is not None and hit[0] is got:
            return hit[1]
        tm = self._parse_topic(got)
        if len(self._topics) >= 1024:
            self._topics.clear()
        self._topics[id(got)] = (got, tm)
        return tm

    def _parse_topic(self, got: tuple[Any, int]) -> Topic:
        d, rev = got
        inc = int(d.get("incarnation", rev))
        config = msgspec.convert(d["config"], TopicConfig)
        tok = token(topic_key(d["name"]))
        return Topic(d["name"], inc, int(d["partitions"]), config, tok,
                     f"{self.prefix}.{tok}.{inc}")

    def _config_check(self, config: TopicConfig) -> None:
        if config.backlog_limit is not None:
            raise self.unsupported(
                "backlog_limit", "x-max-length counts each group queue separately; a "
                "publish would fail after some groups stored it")

    async def topic(self, name: str, *, create: bool = False, fresh: bool = False) -> Topic:
        """The topic's record (the metadata stream is followed live; ``fresh`` syncs it
        first); with ``create`` an unknown topic is created with the default config."""
        await self.connection()
        validate_topic_name(name, derived=True)
        if fresh:
            await self.meta.sync()
        key = self._topic_keys.get(name) if type(name) is str else None
        if key is None:
            key = f"t.{token(topic_key(name))}"
            if len(self._topic_keys) >= 1024:
                self._topic_keys.clear()
            self._topic_keys[name] = key
        got = self.meta.get(key)
        if got is None:
            if not create:
                raise UnknownTopic(f"topic {name!r} does not exist; create it first")
            validate_topic_name(name)
            with contextlib.suppress(TopicExists):
                await self._create(name, TopicConfig())
            got = self.meta.get(f"t.{token(topic_key(name))}")
            if got is None:
                raise UnknownTopic(f"topic {name!r} was deleted while being created; retry")
        tm = self._topic_of(got)
        await self.declare_topic(tm)
        return tm

    async def declare_topic(self, tm: Topic) -> None:
        """The topic exchange and what keeps messages no group has taken yet.

        Default (queue semantics): an alternate exchange and the quorum queue behind it, where
        a message no group's binding takes (no group yet, or none whose filter matches) waits,
        for the topic's retention, until a group created with start='earliest' takes it.
        ``log_retention=True`` (Kafka semantics): a stream queue ``P.T.I.log`` bound with
        ``#`` keeps every message for the retention; a new group copies from it (earliest, or
        from a time)."""
        if tm.exchange in self._declared:
            return
        c = tm.config
        if c.log_retention:
            args: dict[str, Any] = {"x-queue-type": "stream"}
            if c.retention is not None:
                args["x-max-age"] = f"{max(1, math.ceil(c.retention))}s"
            if c.retention_bytes is not None:
                args["x-max-length-bytes"] = c.retention_bytes
            await self.declare_queue(tm.log, args, "log retention (stream queue)")
            await self.declare_exchange(tm.exchange, "topic")
            await self.bind(tm.log, tm.exchange, "#")
            return
        args = {"x-queue-type": "quorum"}
        if c.retention is not None:
            args["x-message-ttl"] = max(1, int(c.retention * 1000))
        if c.retention_bytes is not None:
            args["x-max-length-bytes"] = c.retention_bytes
        await self.declare_exchange(tm.unrouted, "fanout")
        await self.declare_queue(tm.unrouted, args, "retention (messages without a group)")
        await self.bind(tm.unrouted, tm.unrouted, "")
        await self.declare_exchange(tm.exchange, "topic", {"alternate-exchange": tm.unrouted})

    async def _create(self, name: str, config: TopicConfig) -> Topic:
        key = f"t.{token(topic_key(name))}"
        rev = await self.meta.create(key, {"name": name, "partitions": config.partitions,
                                           "config": msgspec.to_builtins(config)})
        if rev is None:
            raise TopicExists(f"topic {name!r} already exists")
        got = self.meta.get(key)
        assert got is not None
        tm = self._topic_of(got)
        await self.declare_topic(tm)
        return tm

    async def create_topic(self, name: str, config: TopicConfig, exist_ok: bool) -> TopicInfo:
        self.check_open()
        validate_topic_name(name)
        config.validate()
        self._config_check(config)
        try:
            await self._create(name, config)
        except TopicExists:
            if not exist_ok:
                raise
        return await self.describe_topic(name)

    async def delete_topic(self, name: str) -> None:
        tm = await self.topic(name, fresh=True)
        for key in self.meta.keys(f"g.{tm.token}"):
            got = self.meta.get(key)
            if got is not None:
                await self._drop_group(tm, got[0]["group"])
        await self.meta.delete(f"t.{tm.token}")
        await self.call(f"deleting exchange {tm.exchange!r}",
                        lambda c: c.exchange_delete(tm.exchange))
        await self.delete_queue(tm.unrouted)
        await self.delete_queue(tm.log)
        await self.call(f"deleting exchange {tm.unrouted!r}",
                        lambda c: c.exchange_delete(tm.unrouted))
        self._declared.discard(tm.exchange)
        self._declared.discard(tm.unrouted)

    async def list_topics(self) -> list[TopicInfo]:
        await self.meta.sync()
        out = []
        for key in self.meta.keys("t"):
            got = self.meta.get(key)
            if got is not None:
                with contextlib.suppress(UnknownTopic):
                    out.append(await self.describe_topic(got[0]["name"]))
        return sorted(out, key=lambda t: topic_key(t.name))

    async def describe_topic(self, name: str) -> TopicInfo:
        tm = await self.topic(name, fresh=True)
        groups = [g[0]["group"] for k in self.meta.keys(f"g.{tm.token}")
                  if (g := self.meta.get(k)) is not None]
        # Offsets are not log positions here (capabilities: partitions): 0 for each.
        parts = [PartitionInfo(p, 0, 0) for p in range(tm.partitions)]
        return TopicInfo(tm.name, tm.incarnation, tm.config, parts, sorted(groups))

    async def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        """Grow the topic: every group gets its queues for the new partitions (bound) before
        the record says the new count, so no publisher routes to a partition without them; a
        one-partition topic's queues are rebound from ``*.x`` to ``0.x`` first."""
        tm = await self.topic(name, fresh=True)
        if isinstance(partitions, bool) or not isinstance(partitions, int) \
                or partitions < tm.partitions:
            raise InvalidPartitionCount(f"topic {tm.name!r} has {tm.partitions} partitions; the "
                                        f"count may only grow (asked {partitions})")
        if partitions > MAX_PARTITIONS:
            raise InvalidPartitionCount(f"at most {MAX_PARTITIONS} partitions "
                                        f"(asked {partitions})")
        if partitions == tm.partitions:
            return await self.describe_topic(name)
        for other in self._groups():
            if topic_key(dead_letter_name(other[0].name, other[2].dead_letter_topic)) \
                    == topic_key(tm.name):
                raise self.unsupported(
                    f"set_partitions of {tm.name!r}", f"it is the dead-letter topic of group "
                    f"{other[1]!r} of {other[0].name!r}; dead letters keep their origin "
                    "partition's routing word, so a dead-letter topic has one partition")
        key = f"t.{tm.token}"
        got = self.meta.get(key)
        if got is None:
            raise UnknownTopic(f"topic {name!r} was deleted")
        grown = msgspec.structs.replace(
            tm, partitions=partitions,
            config=msgspec.structs.replace(tm.config, partitions=partitions))
        for gkey in self.meta.keys(f"g.{tm.token}"):
            g = self.meta.get(gkey)
            if g is None:
                continue
            group = g[0]["group"]
            s = msgspec.convert(g[0]["settings"], GroupSettings)
            pats = self._patterns(s)
            args = self.queue_args(tm, group, s)
            if tm.partitions == 1:
                q = tm.queue(group, 0)
                for k in binding_keys(0, partitions, pats):
                    await self.bind(q, tm.exchange, k)
                for k in binding_keys(0, 1, pats):
                    await self.bind(q, tm.exchange, k, unbind=True)
            for p in range(tm.partitions, partitions):
                q = tm.queue(group, p)
                await self.declare_queue(q, args, "groups (quorum queues)")
                for k in binding_keys(p, partitions, pats):
                    await self.bind(q, tm.exchange, k)
        record = dict(got[0])
        record["incarnation"] = tm.incarnation
        record["partitions"] = partitions
        record["config"] = msgspec.to_builtins(grown.config)
        if await self.meta.put(key, record, last=got[1]) is None:
            raise TideMQError(f"topic {name!r} changed while adding partitions; retry")
        return await self.describe_topic(name)

    def _groups(self) -> list[tuple[Topic, str, GroupSettings]]:
        """Every group in the metadata, with its topic and settings."""
        out = []
        for tkey in self.meta.keys("t"):
            got = self.meta.get(tkey)
            if got is None:
                continue
            tm = self._topic_of(got)
            for gkey in self.meta.keys(f"g.{tm.token}"):
                g = self.meta.get(gkey)
                if g is not None:
                    out.append((tm, g[0]["group"],
                                msgspec.convert(g[0]["settings"], GroupSettings)))
        return out

    # -- publishing -------------------------------------------------------------------------

    def next_offset(self) -> int:
        return (self.client_id << 32) | (next(self._seq) & 0xFFFFFFFF)

    async def wait_queue(self, ms: int, target: str, *, to_exchange: bool) -> str:
        """The wait queue holding messages ``ms`` before dead-lettering them to ``target`` (a
        topic exchange, keeping the routing key, or a queue through the default exchange);
        re-declared often enough that x-expires never drops one with messages in it."""
        name = f"{self.prefix}.wait.{ms}.{target}"
        now = time.monotonic()
        at = self._waits.get(name)
        if at is not None and now - at < self.wait_expires_ms / 2000:
            return name
        args: dict[str, Any] = {
            "x-queue-type": "quorum", "x-message-ttl": ms,
            "x-expires": ms + self.wait_expires_ms,
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish",
        }
        if to_exchange:
            args["x-dead-letter-exchange"] = target
        else:
            args["x-dead-letter-exchange"] = ""
            args["x-dead-letter-routing-key"] = target
        await self.declare_queue(name, args, "delay")
        await self.call(f"binding wait queue {name!r}", lambda c: c.queue_bind(
            name, self.wait_exchange, routing_key="",
            arguments={"x-match": "all", WAIT_HEADER: name}))
        self._waits[name] = now
        return name

    async def publish(self, topic: str, records: Sequence[Record]) -> list[str]:
        tm = await self.topic(topic, create=self.auto_create)
        return await self._publish(tm, records)

    def publish_one(self, topic: str, record: Record) -> Awaitable[str] | None:
        """The per-message path: for a topic this client has used (its record unchanged, its
        exchange declared) and a record without a delay, one coroutine that publishes on the
        confirm channel and waits for the confirm in the caller's task, as aio-pika's
        ``exchange.publish`` does (no task, no gather); else None, and the client takes
        :meth:`publish`."""
        if self._closed or record.deliver_at_us or type(topic) is not str:
            return None
        key = self._topic_keys.get(topic)
        ch = self._pub
        if key is None or ch is None or ch.is_closed or self.conn.is_closed \
                or self.meta.failed is not None:
            return None
        got = self.meta.get(key)
        if got is None:
            return None
        tm = self._topic_of(got)
        if tm.exchange not in self._declared:
            return None
        return self._publish_one(tm, ch, record)

    async def _publish_one(self, tm: Topic, ch: AbstractChannel, r: Record) -> str:
        self._check_records(tm, (r,))
        n = tm.partitions
        p = partition_for_key(r.key, n) if r.key is not None else self._rr % n
        self._rr += 1
        mid = make_id(tm.name, tm.incarnation, p, self.next_offset())
        body, props = encode(r, mid, time.time_ns() // 1000)
        what = f"publishing to {tm.name!r}"
        try:
            res = await ch.basic_publish(
                body, exchange=tm.exchange, routing_key=routing_key_for(p, r.routing_key),
                properties=aiormq.spec.Basic.Properties(**props), timeout=self.timeout)
        except Exception as exc:
            raise translate(exc, what) from None
        _verdict(res, what)
        return mid

    async def flush_all(self) -> None:
        for member in list(self.members.values()):
            await member.flush()

    def _check_records(self, tm: Topic, records: Sequence[Record]) -> None:
        check_records(records, tm.config.max_message_bytes)
        for r in records:
            if r.priority and not self.ignore_priority:
                raise self.unsupported(
                    "priority", "quorum queues refuse x-max-priority; publish with priority "
                    "0, or connect with ignore_priority=True to store priorities without "
                    "ordering by them")
            if r.dedup_id is not None:
                raise self.unsupported("dedup_id", "RabbitMQ has no publish deduplication "
                                       "without a plugin")
            if r.routing_key is not None and len(r.routing_key.encode()) > 250:
                raise self.unsupported(
                    "routing keys longer than 250 bytes", "AMQP routing keys are at most 255 "
                    "bytes, and the backend puts the partition number in front")

    async def _publish(self, tm: Topic, records: Sequence[Record]) -> list[str]:
        self._check_records(tm, records)
        n = tm.partitions
        sticky = self._rr % n
        self._rr += 1
        now_us = time.time_ns() // 1000
        ids: list[str] = []
        sends: list[Awaitable[Any]] = []
        for r in records:
            p = partition_for_key(r.key, n) if r.key is not None else sticky
            mid = make_id(tm.name, tm.incarnation, p, self.next_offset())
            ids.append(mid)
            rk = routing_key_for(p, r.routing_key)
            body, props = encode(r, mid, now_us)
            delay_us = r.deliver_at_us - now_us if r.deliver_at_us else 0
            if delay_us > 0:
                wq = await self.wait_queue(quantize_ms(delay_us / 1e6), tm.exchange,
                                           to_exchange=True)
                props["headers"][WAIT_HEADER] = wq
                sends.append(await self.publish_raw(self.wait_exchange, rk, body, props))
            else:
                sends.append(await self.publish_raw(tm.exchange, rk, body, props))
        await self.confirmed(sends, f"publishing to {tm.name!r}")
        return ids

    # -- groups -----------------------------------------------------------------------------

    def _group_key(self, tm: Topic, group: str) -> str:
        return f"g.{tm.token}.{token(group)}"

    def group_settings(self, tm: Topic, group: str) -> GroupSettings | None:
        got = self.meta.get(self._group_key(tm, group))
        if got is None:
            return None
        return msgspec.convert(got[0]["settings"], GroupSettings)

    def queue_args(self, tm: Topic, group: str, s: GroupSettings) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-delivery-limit": s.max_deliveries,
            "x-dead-letter-exchange": tm.dlx(group),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        if s.mode != "shared":
            args["x-single-active-consumer"] = True
        if s.dead_letter_routing_key is not None:
            # RabbitMQ's own dead letters (x-delivery-limit) get it too; the dead-letter topic
            # has one partition, which binds *.<pattern>: any partition word reaches it.
            args["x-dead-letter-routing-key"] = routing_key_for(0, s.dead_letter_routing_key)
        return args

    def _check_group(self, tm: Topic, s: GroupSettings) -> None:
        s.validate()
        compile_filter(s.filter)
        by_time = isinstance(s.start, dict) and set(s.start) == {"timestamp"}
        if by_time and not tm.config.log_retention:
            raise self.unsupported(f"start position {s.start!r} (replay_time)",
                                   "only a topic created with log_retention=True keeps a log "
                                   "(a stream queue) to start from a time")
        if s.start not in ("earliest", "latest") and not by_time:
            raise self.unsupported(f"start position {s.start!r} (replay_offset)",
                                   "offsets here are publish numbers, not positions in a log; "
                                   "start from 'earliest', 'latest' or a time "
                                   "(log_retention topics)")
        dlq = dead_letter_name(tm.name, s.dead_letter_topic)
        if topic_key(dlq) == topic_key(tm.name):
            raise InvalidArgument(f"dead_letter_topic {dlq!r} is the group's own topic; name "
                                  "another topic")

    @staticmethod
    def _patterns(s: GroupSettings) -> list[str] | None:
        """The filter's routing patterns as binding patterns; an exact key ({"exact": k}) is
        ``k`` read as a pattern, which takes at least what it names (its '*' and '#' words
        more: the member's filter drops those), ``""`` the empty key (binding_keys)."""
        pats = (s.filter or {}).get("routing_key")
        if pats is None:
            return None
        if isinstance(pats, str):
            return [pats]
        return [p if isinstance(p, str) else p["exact"] for p in pats]

    async def _dead_letter_topic(self, tm: Topic, s: GroupSettings) -> Topic:
        name = dead_letter_name(tm.name, s.dead_letter_topic)
        try:
            dlq = await self.topic(name)
        except UnknownTopic:
            config = msgspec.structs.replace(tm.config, partitions=1, backlog_limit=None)
            with contextlib.suppress(TopicExists):
                await self._create(name, config)
            dlq = await self.topic(name)
        if dlq.partitions != 1:
            raise self.unsupported(
                f"dead-letter topic {name!r} with {dlq.partitions} partitions",
                "dead letters keep their origin partition's routing word; the backend routes "
                "them to a one-partition dead-letter topic only")
        return dlq

    async def _declare_group(self, tm: Topic, group: str, s: GroupSettings) -> None:
        """Exchanges, queues and bindings of a group (idempotent)."""
        dlq = await self._dead_letter_topic(tm, s)
        dlx = tm.dlx(group)
        await self.declare_exchange(dlx, "fanout")
        dead = tm.dead_queue(group)
        await self.declare_queue(dead, {"x-queue-type": "quorum"}, "dead letters")
        await self.call("binding the dead-letter queue",
                        lambda c: c.queue_bind(dead, dlx, routing_key=""))
        await self.call("binding the dead-letter topic", lambda c: c.exchange_bind(
            destination=dlq.exchange, source=dlx, routing_key=""))
        args = self.queue_args(tm, group, s)
        feature = "ordered mode (x-single-active-consumer)" if s.mode != "shared" \
            else "groups (quorum queues)"
        for p in range(tm.partitions):
            q = tm.queue(group, p)
            await self.declare_queue(q, args, feature)
            for key in binding_keys(p, tm.partitions, self._patterns(s)):
                await self.bind(q, tm.exchange, key)

    async def ensure_group(self, tm: Topic, group: str,
                           settings: GroupSettings | None) -> GroupSettings:
        have = self.group_settings(tm, group)
        if have is None:
            await self.meta.sync()
            have = self.group_settings(tm, group)
        if have is not None:
            if settings is not None and _plain(settings) != _plain(have):
                raise GroupSettingsMismatch(f"group {group!r} of {tm.name!r} exists with other "
                                            "settings; use update_group")
            return have
        s = settings or GroupSettings()
        self._check_group(tm, s)
        await self._declare_group(tm, group, s)
        rev = await self.meta.create(self._group_key(tm, group), {
            "topic": tm.name, "group": group, "settings": msgspec.to_builtins(s)})
        if rev is None:
            return await self.ensure_group(tm, group, settings)  # lost a race: compare
        if tm.config.log_retention and s.start != "latest":
            await self._replay(tm, group, s)
        elif s.start == "earliest":
            await self._take_unrouted(tm, group, s)
        return s

    async def _replay(self, tm: Topic, group: str, s: GroupSettings) -> int:
        """Copy the log stream into a new group's queues (its bindings are in place, so what
        is published from now on reaches them anyway): from the first message (earliest) or
        from ``start['timestamp']``, up to a marker appended after the bindings. A message
        published while the bindings were made may be in both: delivered twice (at-least-once),
        and the copies come after what arrived meanwhile."""
        flt = compile_filter(s.filter, group=group)
        since_us = 0
        offset: Any = "first"
        if isinstance(s.start, dict):
            since_us = int(float(s.start["timestamp"]) * 1_000_000)
            offset = await self._log_offset(tm, since_us - _REPLAY_SLACK_US)
        marker = f"{self.client_id:08x}-{next(self._seq)}"
        ch = await (await self.connection()).channel()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sends: list[Awaitable[Any]] = []
        copied = 0

        async def on_message(msg: aiormq.abc.DeliveredMessage) -> None:
            nonlocal copied
            if done.done():
                return
            try:
                headers = msg.header.properties.headers or {}
                if MARKER in headers:
                    if headers[MARKER] == marker:
                        done.set_result(None)
                elif msg.header is not None:
                    d = decode(msg.body, msg.header.properties)
                    rk = msg.routing_key or ""
                    first = rk.split(".", 1)[0]
                    part = int(first) if first.isdigit() and int(first) < tm.partitions else 0
                    if d.timestamp_us >= since_us and flt.matches(d.record.routing_key,
                                                                  d.record.headers or {}):
                        sends.append(await self.publish_raw(
                            "", tm.queue(group, part), msg.body,
                            _props(msg.header.properties)))
                        copied += 1
                if msg.delivery_tag is not None:
                    await ch.basic_ack(msg.delivery_tag)
            except Exception as exc:  # reported by the waiting caller
                if not done.done():
                    done.set_exception(exc)

        try:
            await ch.basic_qos(prefetch_count=1000)
            await ch.basic_consume(tm.log, on_message,
                                   arguments={"x-stream-offset": offset})
            # The marker goes in once the reader is attached, so it lies at or after where
            # the reader starts: a timestamp offset looked up while a just-written marker was
            # not yet committed could start past it, and the replay waited for it forever
            # (seen once in CI).
            send = await self.publish_raw("", tm.log, b"", {"headers": {MARKER: marker},
                                                            "delivery_mode": 2})
            await self.confirmed([send], f"marking the log of {tm.name!r}")
            await done
            await self.confirmed(sends, f"copying the log of {tm.name!r} to {group!r}")
        except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
            raise translate(exc, f"replaying the log of {tm.name!r}") from None
        finally:
            with contextlib.suppress(Exception):
                await ch.close()
        return copied

    async def _log_offset(self, tm: Topic, target_us: int) -> Any:
        """Where a replay from ``target_us`` reads the log from: the numeric offset of a
        message stamped before it (or ``"first"``), found by bisecting the log's offsets on
        the publishers' timestamps, which the replay's filter reads too. Not a timestamp
        ``x-stream-offset``: that one reads RabbitMQ's clock (it stamps stream chunks), and a
        server whose clock is behind the client's — an Erlang VM keeps the offset its clock
        had when it started; 4 s on a development machine — would start the replay after
        messages it must copy. About log2(log length) one-message reads."""
        ch = await (await self.connection()).channel()
        try:
            await ch.basic_qos(prefetch_count=1)
            first = await self._peek(ch, tm.log, "first")
            if first is None or first[1] is None or first[1] >= target_us:
                return "first"
            lo = first[0]  # a message stamped before the target
            last = await self._peek(ch, tm.log, "last")  # the last chunk's first message
            if last is None or last[0] <= lo:
                return lo
            if last[1] is not None and last[1] < target_us:
                return last[0]
            hi = last[0]  # the first message at or after hi is stamped at or after target
            while hi - lo > 1:
                mid = (lo + hi) // 2
                got = await self._peek(ch, tm.log, mid)
                if got is None or got[1] is None or got[1] >= target_us or got[0] >= hi:
                    hi = mid
                else:
                    lo = got[0]
            return lo
        except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
            raise translate(exc, f"searching the log of {tm.name!r}") from None
        finally:
            with contextlib.suppress(Exception):
                await ch.close()

    async def _peek(self, ch: AbstractChannel, log: str,
                    offset: Any) -> tuple[int, int | None] | None:
        """(offset, publisher's timestamp in µs, None for a replay marker) of the first
        message of stream ``log`` at ``offset`` (an ``x-stream-offset``); None if none
        comes within the request timeout."""
        got: asyncio.Future[aiormq.abc.DeliveredMessage] = \
            asyncio.get_running_loop().create_future()

        async def on_message(msg: aiormq.abc.DeliveredMessage) -> None:
            if not got.done():
                got.set_result(msg)

        ok = await ch.basic_consume(log, on_message, arguments={"x-stream-offset": offset})
        try:
            msg = await asyncio.wait_for(got, self.timeout)
        except TimeoutError:
            return None
        finally:
            if ok.consumer_tag is not None:
                await ch.basic_cancel(ok.consumer_tag)
        headers = msg.header.properties.headers or {}
        at = int(headers.get("x-stream-offset", 0))  # type: ignore[arg-type]
        if MARKER in headers:
            return at, None
        return at, decode(msg.body, msg.header.properties).timestamp_us

    async def _take_unrouted(self, tm: Topic, group: str, s: GroupSettings) -> int:
        """Move the messages waiting in the topic's unrouted queue that ``group``'s filter
        matches into its queues (the others go back, at the end); each is confirmed before it
        is acked there (a crash in between leaves a copy in both: at-least-once)."""
        flt = compile_filter(s.filter, group=group)
        ok = await self.passive(tm.unrouted)
        waiting = int(getattr(ok, "message_count", 0) or 0)
        if not waiting:
            return 0
        ch = await (await self.connection()).channel()
        moved = 0
        try:
            for _ in range(waiting):
                try:
                    got = await asyncio.wait_for(ch.basic_get(tm.unrouted, no_ack=False),
                                                 self.timeout)
                except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
                    raise translate(exc, f"reading {tm.unrouted!r}") from None
                if got.delivery_tag is None or got.header is None:
                    break
                rk = got.routing_key or ""
                first = rk.split(".", 1)[0]
                part = int(first) if first.isdigit() and int(first) < tm.partitions else 0
                d = decode(got.body, got.header.properties)
                props = _props(got.header.properties)
                if flt.matches(d.record.routing_key, d.record.headers or {}):
                    send = await self.publish_raw("", tm.queue(group, part), got.body, props)
                    moved += 1
                else:
                    send = await self.publish_raw(tm.unrouted, rk, got.body, props)
                await self.confirmed([send], f"moving waiting messages to {group!r}")
                await ch.basic_ack(got.delivery_tag)
        finally:
            with contextlib.suppress(Exception):
                await ch.close()
        return moved

    async def create_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        validate_group_name(group)
        tm = await self.topic(topic)
        await self.ensure_group(tm, group, settings)
        return await self.describe_group(topic, group)

    async def update_group(self, topic: str, group: str, settings: GroupSettings) -> GroupInfo:
        tm = await self.topic(topic, fresh=True)
        key = self._group_key(tm, group)
        got = self.meta.get(key)
        if got is None:
            raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
        old = msgspec.convert(got[0]["settings"], GroupSettings)
        self._check_group(tm, settings)
        for what in ("mode", "max_deliveries", "dead_letter_topic", "dead_letter_routing_key"):
            if getattr(old, what) != getattr(settings, what):
                raise self.unsupported(f"update_group changing {what}",
                                       "it is a queue argument, which RabbitMQ cannot change; "
                                       "delete the group and create it again")
        old_p, new_p = self._patterns(old), self._patterns(settings)
        if old_p != new_p:
            for p in range(tm.partitions):
                q = tm.queue(group, p)
                olds = binding_keys(p, tm.partitions, old_p)
                news = binding_keys(p, tm.partitions, new_p)
                for k in news:
                    await self.bind(q, tm.exchange, k)
                for k in olds:
                    if k not in news:
                        await self.bind(q, tm.exchange, k, unbind=True)
        if await self.meta.put(key, {"topic": tm.name, "group": group,
                                     "settings": msgspec.to_builtins(settings)},
                               last=got[1]) is None:
            raise TideMQError(f"group {group!r} changed meanwhile; retry update_group")
        for m in self.members.values():
            if m.tm.exchange == tm.exchange and m.group == group:
                m.settings_changed(settings)
        return await self.describe_group(topic, group)

    async def _drop_group(self, tm: Topic, group: str) -> None:
        for m in [m for m in self.members.values()
                  if m.tm.exchange == tm.exchange and m.group == group]:
            await m.close()
            self.members.pop(m.id, None)
        await self.meta.delete(self._group_key(tm, group))
        for p in range(tm.partitions):
            await self.delete_queue(tm.queue(group, p))
        await self.delete_queue(tm.dead_queue(group))
        await self.call("deleting the dead-letter exchange",
                        lambda c: c.exchange_delete(tm.dlx(group)))
        self._declared.discard(tm.dlx(group))

    async def delete_group(self, topic: str, group: str) -> None:
        tm = await self.topic(topic, fresh=True)
        if self.group_settings(tm, group) is None:
            raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
        await self._drop_group(tm, group)

    async def list_groups(self, topic: str) -> list[GroupInfo]:
        tm = await self.topic(topic, fresh=True)
        out = []
        for key in self.meta.keys(f"g.{tm.token}"):
            got = self.meta.get(key)
            if got is not None:
                with contextlib.suppress(UnknownGroup):
                    out.append(await self.describe_group(topic, got[0]["group"]))
        return sorted(out, key=lambda g: g.name)

    async def describe_group(self, topic: str, group: str) -> GroupInfo:
        """Lag is each queue's ready count (declare-ok); in_flight is what this client's
        members hold (other clients' unacked messages cannot be read over AMQP); members are
        this client's (listing consumers needs the management plugin)."""
        tm = await self.topic(topic, fresh=True)
        s = self.group_settings(tm, group)
        if s is None:
            raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
        mine = [m for m in self.members.values()
                if m.tm.exchange == tm.exchange and m.group == group]
        parts = []
        for p in range(tm.partitions):
            ok = await self.passive(tm.queue(group, p))
            held = sum(1 for m in mine for h in m.held.values() if h.partition == p)
            ready = int(getattr(ok, "message_count", 0) or 0)
            parts.append(GroupPartitionInfo(p, 0, ready + held, held))
        return GroupInfo(tm.name, group, s, sorted(m.id for m in mine), parts,
                         sum(x.lag for x in parts), sum(x.in_flight for x in parts))

    async def reset_group(self, topic: str, group: str, start: StartPosition) -> None:
        check_start(start)
        tm = await self.topic(topic, fresh=True)
        """To 'latest': purge the group's queues (what members hold stays theirs). On a
        log_retention topic also to 'earliest' or a time: purge, then copy from the log."""
        s = self.group_settings(tm, group)
        if s is None:
            raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
        by_time = isinstance(start, dict) and set(start) == {"timestamp"}
        if start != "latest" and not (tm.config.log_retention
                                      and (start == "earliest" or by_time)):
            raise self.unsupported(
                f"reset_group to {start!r}", "a queue cannot be rewound: reset to 'latest' "
                "(purge), or on a topic created with log_retention=True to 'earliest' or a "
                "time (copied from its log); offsets are not log positions here")
        ch = await self.admin()
        for p in range(tm.partitions):
            q = tm.queue(group, p)
            try:
                await asyncio.wait_for(ch.queue_purge(q), self.timeout)
            except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
                raise translate(exc, f"purging {q!r}") from None
        if start != "latest":
            await self._replay(tm, group, msgspec.structs.replace(s, start=start))

    async def redrive(self, topic: str, group: str, limit: int | None) -> int:
        """Move the group's dead letters (its ``.dead`` queue) back to its own queues."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise InvalidArgument(f"redrive limit must be None or an int >= 0, got {limit!r}")
        tm = await self.topic(topic, fresh=True)
        s = self.group_settings(tm, group)
        if s is None:
            raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
        dead = tm.dead_queue(group)
        ch = await (await self.connection()).channel()
        moved = 0
        try:
            while limit is None or moved < limit:
                try:
                    got = await asyncio.wait_for(ch.basic_get(dead, no_ack=False), self.timeout)
                except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
                    raise translate(exc, f"reading dead letters of {group!r}") from None
                if got.delivery_tag is None or got.header is None:
                    break
                d = decode(got.body, got.header.properties)
                rec = d.record
                org = origin_of(rec)
                mid = (rec.headers or {}).get("x-tidemq-origin-id") or d.message_id
                if org is not None:
                    _, rec = redriven_record(rec, group)
                    rec = msgspec.structs.replace(rec, headers={
                        k: v for k, v in (rec.headers or {}).items() if k != GROUP_HEADER}
                        or None)
                try:
                    ref = parse_id(mid or "")
                    part = ref.partition if 0 <= ref.partition < tm.partitions else 0
                    if topic_key(ref.topic) != topic_key(tm.name) \
                            or ref.incarnation != tm.incarnation:
                        mid = make_id(tm.name, tm.incarnation, part, self.next_offset())
                except TideMQError:
                    part = 0
                    mid = make_id(tm.name, tm.incarnation, 0, self.next_offset())
                assert mid is not None
                body, props = encode(rec, mid, d.timestamp_us or time.time_ns() // 1000)
                send = await self.publish_raw("", tm.queue(group, part), body, props)
                await self.confirmed([send], f"redriving to {group!r}")
                await ch.basic_ack(got.delivery_tag)
                moved += 1
        finally:
            with contextlib.suppress(Exception):
                await ch.close()
        return moved

    # -- consuming (``_rabbit_member``) --------------------------------------------------------

    def group_of_queue(self) -> tuple[dict[str, tuple[str, int]], dict[str, int]]:
        """queue name -> (group, partition) and -> max_deliveries, from the metadata."""
        names: dict[str, tuple[str, int]] = {}
        limits: dict[str, int] = {}
        for tkey in self.meta.keys("t"):
            got = self.meta.get(tkey)
            if got is None:
                continue
            tm = self._topic_of(got)
            for gkey in self.meta.keys(f"g.{tm.token}"):
                g = self.meta.get(gkey)
                if g is None:
                    continue
                group = g[0]["group"]
                md = int(g[0]["settings"].get("max_deliveries", 5))
                for p in range(tm.partitions):
                    names[tm.queue(group, p)] = (group, p)
                    limits[tm.queue(group, p)] = md
        return names, limits

    async def subscribe(self, topic: str, group: str, settings: GroupSettings | None,
                        prefetch: int) -> str:
        from ._rabbit_member import Member

        check_prefetch(prefetch)
        validate_group_name(group)
        if settings is not None:
            settings.validate()
        tm = await self.topic(topic, create=self.auto_create)
        s = await self.ensure_group(tm, group, settings)
        mid = f"{group}#{self.client_id:08x}-{next(self._member_seq)}"
        member = Member(self, tm, group, s, prefetch, mid)
        self.members[mid] = member
        try:
            await member.start()
        except BaseException:
            self.members.pop(mid, None)
            await member.close()
            raise
        return mid

    def member(self, member: str) -> Member:
        m = self.members.get(member)
        if m is None:
            self.check_open()
            raise Closed(f"member {member!r} is not subscribed (unsubscribed or closed)")
        return m

    async def receive(self, member: str, max_messages: int,
                      timeout: float) -> list[Delivery]:
        return await self.member(member).receive(max_messages, timeout)

    def receive_nowait(self, member: str, max_messages: int) -> list[Delivery] | None:
        return None

    async def ack(self, member: str, ids: Sequence[str]) -> None:
        """Send the acks; :meth:`flush` waits until the channel has processed them."""
        self.member(member).ack(ids)

    def ack_start(self, member: str, ids: Sequence[str]) -> Awaitable[None] | None:
        """Send the acks (raising at once for an id not held) and return None: like an ack
        over ``tidemq://``, it leaves with the next write, and :meth:`flush` waits until the
        channel has processed it and raises a failure. (Returning the send instead made every
        ``await sub.ack(...)`` wait for the frame to be written and drained before the
        consumer could receive again: e2e latency.)"""
        self.member(member).ack(ids)
        return None

    async def flush(self, member: str) -> None:
        await self.member(member).flush()

    async def nack(self, member: str, ids: Sequence[str], delay: float | None) -> None:
        await self.member(member).nack(ids, delay)

    async def extend(self, member: str, ids: Sequence[str], seconds: float) -> None:
        await self.member(member).extend(ids, seconds)

    async def reject(self, member: str, ids: Sequence[str], reason: str) -> None:
        await self.member(member).reject(ids, reason)

    async def unsubscribe(self, member: str) -> None:
        m = self.members.pop(member, None)
        if m is not None:
            await m.close()


def _verdict(res: Any, what: str) -> None:
    """Raise what a publish's outcome (a confirm frame, or an exception) says went wrong."""
    if isinstance(res, BaseException):
        raise translate(res, what)
    if isinstance(res, aiormq.spec.Basic.Nack):
        raise TideMQError(f"{what}: RabbitMQ refused the message (basic.nack: a queue is full "
                          "or unavailable); nothing after it was confirmed")


def _seen(fut: asyncio.Future[Any]) -> None:
    # A confirm nobody awaits any more (its batch failed earlier) is not logged by asyncio.
    if not fut.cancelled():
        fut.exception()


def _props(p: Any) -> dict[str, Any]:
    """The properties of a received message, to publish it again as it was."""
    out: dict[str, Any] = {}
    for name in ("content_type", "content_encoding", "headers", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                 "message_type", "user_id", "app_id"):
        value = getattr(p, name, None)
        if value is not None:
            out[name] = value
    return out


def _plain(s: GroupSettings) -> Any:
    """Settings as stored (JSON): ``{0: 5}`` and ``{"0": 5}`` are the same start."""
    import json

    return json.loads(json.dumps(msgspec.to_builtins(s)))


if TYPE_CHECKING:
    from ..client._transport import AsyncTransport

    def _conforms(t: RabbitTransport) -> AsyncTransport:  # mypy checks the protocol here
        return t

