"""The asyncio client, ``tidemq.AsyncClient(url)`` — and the one source of the client's logic.

Every operation is written here once: argument checks (``_common``), the transport call, and
what comes around it (a group's settings merged before a subscribe, an ack then a flush ...).
The blocking :class:`tidemq.Client` (``_client``) is a thin face that runs these same methods
through a runner (``_runner``) instead of awaiting them, so the two cannot drift; a test
(``tests/client/test_drift.py``) compares their signatures and their refusals.

The per-message operations (``publish``, ``receive``, ``ack`` ...) are plain functions that
return an awaitable, not coroutines: when the work is done without waiting they return
:class:`~tidemq.client._transport.Done`, which the blocking client reads without running an
event loop, and over the network ``publish`` returns the producer's own future (thousands of
pipelined calls cost one future each, not a coroutine and a task each).

Use an ``AsyncClient`` from one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from types import TracebackType
from typing import Any

from ..backends._capabilities import Capability
from ..broker._types import Delivery, GroupInfo, GroupSettings, StartPosition, TopicInfo
from ..errors import Closed, TideMQError, UnknownGroup, UnknownTopic
from . import _common
from ._transport import DONE, AsyncTransport, Done

__all__ = ["AsyncClient", "AsyncSubscription", "AsyncMessage", "MessageFields"]

log = logging.getLogger("tidemq.client")


async def connect_backend(url: str, auto_create_topics: bool,
                          options: dict[str, Any]) -> AsyncTransport:
    """The transport of a ``nats://`` or ``amqp://`` URL (``tidemq.backends.connect``)."""
    from ..backends import connect

    opts = dict(options)
    if not auto_create_topics:  # the backends' default is True, as the clients'
        opts["auto_create_topics"] = False
    return await connect(url, **opts)


def capabilities_of(transport: Any) -> dict[str, Capability]:
    """A transport's capability table: a backend's own, else every feature native."""
    table = getattr(transport, "capabilities", None)
    if table is not None:
        return dict(table())
    from ..backends import native_capabilities

    return native_capabilities()


class MessageFields:
    """The fields of a delivered message, shared by ``Message`` and :class:`AsyncMessage`."""

    __slots__ = ("_d", "_sub")

    _d: Delivery

    id = property(lambda self: self._d.id, doc="the message id (opaque str)")
    topic = property(lambda self: self._d.topic)
    partition = property(lambda self: self._d.partition)
    offset = property(lambda self: self._d.offset)
    body = property(lambda self: self._d.body)
    key = property(lambda self: self._d.key)
    routing_key = property(lambda self: self._d.routing_key)
    headers = property(lambda self: self._d.headers)
    priority = property(lambda self: self._d.priority)
    delivery_count = property(lambda self: self._d.delivery_count)
    timestamp = property(lambda self: self._d.timestamp_us / 1e6, doc="publish time, epoch s")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.id!r}, body={self.body[:40]!r}, "
                f"delivery_count={self.delivery_count})")


class AsyncMessage(MessageFields):
    """A delivered message; ``await msg.ack()`` and friends act through its subscription."""

    __slots__ = ()

    def __init__(self, delivery: Delivery, sub: AsyncSubscription) -> None:
        self._d = delivery
        self._sub = sub

    def ack(self, *, wait: bool = False) -> Awaitable[None]:
        return self._sub.ack(self._d.id, wait=wait)

    def nack(self, delay: float | None = None) -> Awaitable[None]:
        return self._sub.nack(self._d.id, delay=delay)

    def reject(self, reason: str = "rejected") -> Awaitable[None]:
        return self._sub.reject(self._d.id, reason)

    def extend(self, seconds: float) -> Awaitable[None]:
        return self._sub.extend(self._d.id, seconds)


class AsyncSubscription:
    """A group member. ``async for msg in sub``, ``await sub.receive()``; joins the group on
    first use (or ``await mq.subscribe(...)`` to join at once).

    ``face`` and ``message``: the blocking ``Subscription`` that runs this one, and the
    message type it hands out (``Message``); by default this subscription and AsyncMessage.
    """

    def __init__(self, client: AsyncClient, topic: str, group: str,
                 explicit: dict[str, Any], prefetch: int, *, face: Any = None,
                 message: Callable[[Delivery, Any], Any] = AsyncMessage) -> None:
        self._client = client
        self.topic = topic
        self.group = group
        self._explicit = explicit
        self._prefetch = prefetch
        self._member: str | None = None
        self._closed = False
        self._face = self if face is None else face
        self._message = message

    def join(self) -> Awaitable[str]:
        """Join the group now (the first use joins otherwise); the member handle."""
        if self._member is not None and not self._closed:
            return Done(self._member)
        return self._join()

    async def _join(self) -> str:
        if self._closed:
            raise Closed("this subscription is closed")
        if self._member is None:
            settings = await self._client._settings_for(self.topic, self.group, self._explicit)
            self._member = await self._client._t.subscribe(self.topic, self.group, settings,
                                                           self._prefetch)
        return self._member

    def __await__(self) -> Generator[Any, None, AsyncSubscription]:
        async def join() -> AsyncSubscription:
            await self._join()
            return self

        return join().__await__()

    def receive(self, max_messages: int = 100, timeout: float = 1.0) -> Awaitable[list[Any]]:
        """Up to ``max_messages`` messages, waiting at most ``timeout`` s for the first."""
        n, wait = _common.receive_args(max_messages, timeout)
        member = self._member
        if member is not None and not self._closed:
            got = self._client._t.receive_nowait(member, n)
            if got:
                message, face = self._message, self._face
                return Done([message(d, face) for d in got])
        return self._receive(n, wait)

    async def _receive(self, n: int, timeout: float) -> list[Any]:
        member = await self._join()
        got = await self._client._t.receive(member, n, timeout)
        message, face = self._message, self._face
        return [message(d, face) for d in got]

    async def __aiter__(self) -> AsyncIterator[AsyncMessage]:
        while not self._closed:
            try:
                batch = await self.receive(100, 1.0)
            except Closed:
                return
            for m in batch:
                yield m

    def ack(self, ids: Any, *, wait: bool = False) -> Awaitable[None]:
        """Acknowledge one id/message or a list of them (one call: the batched path).

        Over ``tidemq://`` an ack whose lease is surely still held completes at once and
        travels with the next write; ``wait=True`` (or a later :meth:`flush`) completes once
        the server applied it — durable under ``always`` — and raises what it refused.
        Embedded, an ack is applied and durable before it completes."""
        ids = [ids] if type(ids) is str else _common.ids(ids)
        member = self._member
        if member is not None and not wait and not self._closed:
            pending = self._client._t.ack_start(member, ids)
            return DONE if pending is None else pending
        return self._ack(ids, wait)

    async def _ack(self, ids: list[str], wait: bool) -> None:
        member = await self._join()
        pending = self._client._t.ack_start(member, ids)
        if pending is not None:
            await pending
        if wait:
            await self._client._t.flush(member)

    async def flush(self) -> None:
        """Return once every ack sent before this call is applied by the broker (and durable
        under ``always``); raise the first failure of an ack sent without waiting."""
        await self._client._t.flush(await self._join())

    async def nack(self, ids: Any, delay: float | None = None) -> None:
        """Give back; ``delay=None`` applies the group's backoff, ``0`` makes it ready now."""
        if delay is not None:
            delay = _common._seconds("delay", delay)
        await self._client._t.nack(await self._join(), _common.ids(ids), delay)

    async def extend(self, ids: Any, seconds: float) -> None:
        """Renew the leases: they end ``seconds`` from now."""
        await self._client._t.extend(await self._join(), _common.ids(ids),
                                     _common._seconds("seconds", seconds, positive=True))

    async def reject(self, ids: Any, reason: str = "rejected") -> None:
        """Dead-letter now, with ``reason`` in the dead letter's headers."""
        _common.reject_reason(reason)
        await self._client._t.reject(await self._join(), _common.ids(ids), reason)

    async def close(self) -> None:
        """Leave the group; this member's leases are released at once."""
        if not self._closed:
            self._closed = True
            if self._member is not None and self._client._transport is not None:
                await self._client._t.unsubscribe(self._member)

    async def __aenter__(self) -> AsyncSubscription:
        await self._join()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncClient:
    """The asyncio twin of :class:`tidemq.Client`: same URLs, same methods, awaited.

    ``async with AsyncClient(url) as mq`` connects; or ``await mq.connect()``.
    """

    def __init__(self, url: str = "memory://", *, auto_create_topics: bool = True,
                 **options: Any) -> None:
        self.url = url
        self._ep = _common.parse_url(url)
        self._options = options
        self._auto = auto_create_topics
        self._transport: AsyncTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def _over(cls, url: str, transport: AsyncTransport) -> AsyncClient:
        """A client already connected through ``transport`` (the blocking client's core)."""
        self = cls.__new__(cls)
        self.url = url
        self._ep = _common.parse_url(url)
        self._options = {}
        self._auto = True
        self._transport = transport
        self._tasks = []
        return self

    @property
    def _t(self) -> AsyncTransport:
        if self._transport is None:
            raise Closed("the client is not connected (closed, or never connected: use "
                         "'async with AsyncClient(...)' or 'await client.connect()')")
        return self._transport

    async def connect(self) -> AsyncClient:
        if self._transport is None:
            if self._ep.kind == "tidemq":
                from ._tcp import TcpTransport
                self._transport = await TcpTransport.connect(
                    self._ep.host, self._ep.port, **self._ep.tcp_options(self._options))
            elif self._ep.url is not None:  # nats://, amqp://: another engine's backend
                self._transport = await connect_backend(self._ep.url, self._auto,
                                                        self._options)
            else:
                from ._adapters import AsyncOverEmbedded
                from ._embedded import EmbeddedTransport
                inner = await asyncio.to_thread(EmbeddedTransport, self._ep.path,
                                                auto_create_topics=self._auto,
                                                **self._ep.embedded_options(self._options))
                self._transport = AsyncOverEmbedded(inner)
        return self

    def capabilities(self) -> dict[str, Capability]:
        """What each SPEC feature is on this client's backend: ``{feature: Capability(support,
        how)}`` with ``support`` ``"native"``, ``"emulated"`` (``how``: how, at what cost) or
        ``"unsupported"`` (``how``: why; using it raises ``Unsupported``). Everything is
        native on TideMQ's own transports; ``docs/backends.md`` has the tables of
        ``nats://`` and ``amqp://``."""
        return capabilities_of(self._t)

    async def close(self) -> None:
        """Send what is batched, release the subscriptions and close the connection."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, TideMQError):
                pass
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.close()

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- topics -----------------------------------------------------------------------------

    async def create_topic(self, name: str, partitions: int = 1, *, exist_ok: bool = False,
                           **config: Any) -> TopicInfo:
        """Create a topic. ``config``: durability, retention, retention_bytes, log_retention,
        max_message_bytes, dedup_window, backlog_limit, backlog_policy, segment_bytes ..."""
        return await self._t.create_topic(name, _common.topic_config(partitions, config), exist_ok)

    async def delete_topic(self, name: str) -> None:
        await self._t.delete_topic(name)

    async def list_topics(self) -> list[TopicInfo]:
        return await self._t.list_topics()

    async def describe_topic(self, name: str) -> TopicInfo:
        return await self._t.describe_topic(name)

    async def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        """Grow the partition count (keys map differently from then on, as in Kafka)."""
        return await self._t.set_partitions(name, partitions)

    # -- publishing -------------------------------------------------------------------------

    def publish(self, topic: str, body: bytes | str, *, key: str | bytes | None = None,
                routing_key: str | None = None, headers: dict[str, str] | None = None,
                priority: int = 0, delay: float | None = None, deliver_at: Any = None,
                ttl: float | None = None, dedup_id: str | None = None) -> Awaitable[str]:
        """Store one message: ``await`` it for the id once confirmed at the topic's
        durability. Bad input raises at once. Over the network the awaitable is the batching
        producer's future, so ``asyncio.gather`` of many calls pipelines them."""
        rec = _common.make_record(body, key=key, routing_key=routing_key, headers=headers,
                                  priority=priority, delay=delay, deliver_at=deliver_at, ttl=ttl,
                                  dedup_id=dedup_id)
        fut = self._t.publish_one(topic, rec)
        if fut is not None:
            return fut
        return self._publish_one(topic, rec)

    async def _publish_one(self, topic: str, rec: Any) -> str:
        return (await self._t.publish(topic, [rec]))[0]

    async def publish_batch(self, topic: str, items: Iterable[Any], *,
                            key: str | bytes | None = None, routing_key: str | None = None,
                            headers: dict[str, str] | None = None, priority: int = 0,
                            delay: float | None = None, deliver_at: Any = None,
                            ttl: float | None = None) -> list[str]:
        """Store many messages (bodies, dicts or message objects); ids in order. Each
        partition's share is stored atomically. The keyword fields are defaults per item."""
        defaults = {"key": key, "routing_key": routing_key, "headers": headers,
                    "priority": priority, "delay": delay, "deliver_at": deliver_at, "ttl": ttl}
        return await self._t.publish(topic, _common.make_records(items, defaults))

    async def flush(self) -> None:
        """Return once every publish and every ack made before the call is answered by the
        broker (acks: applied, and durable under ``always``); raise the first failure of an ack
        sent without waiting, as ``Subscription.flush`` does. Publish failures are raised by
        the publishes themselves."""
        await self._t.flush_all()

    # -- groups -----------------------------------------------------------------------------

    async def _settings_for(self, topic: str, group: str,
                            explicit: dict[str, Any]) -> GroupSettings | None:
        if not explicit:
            return None
        try:
            base: GroupSettings | None = (await self._t.describe_group(topic, group)).settings
        except (UnknownGroup, UnknownTopic):
            base = None
        return _common.merge_settings(base, explicit)

    def subscribe(self, topic: str, group: str, *, mode: str | None = None,
                  filter: dict[str, Any] | None = None, start: StartPosition | None = None,
                  prefetch: int = 100, ack_timeout: float | None = None,
                  max_deliveries: int | None = None, backoff: Any = None,
                  dead_letter_topic: str | None = None,
                  message_ttl: float | None = None,
                  dead_letter_routing_key: str | None = None,
                  max_priority: int | None = None) -> AsyncSubscription:
        """A member of ``group`` of ``topic`` (creating the group with these settings if new;
        settings left out are the group's, different ones raise GroupSettingsMismatch).
        ``async for`` it directly, or ``await`` it to join now."""
        return self._subscription(topic, group, dict(
            mode=mode, filter=filter, start=start, ack_timeout=ack_timeout,
            max_deliveries=max_deliveries, backoff=backoff, dead_letter_topic=dead_letter_topic,
            message_ttl=message_ttl, dead_letter_routing_key=dead_letter_routing_key,
            max_priority=max_priority),
            prefetch)

    def _subscription(self, topic: str, group: str, settings: dict[str, Any], prefetch: int,
                      **face: Any) -> AsyncSubscription:
        _common.prefetch(prefetch)
        _common.group_name(group)
        return AsyncSubscription(self, topic, group, _common.group_settings(settings), prefetch,
                                 **face)

    async def consume(self, topic: str, group: str,
                      callback: Callable[[AsyncMessage], Awaitable[Any]], *, workers: int = 1,
                      **subscribe_options: Any) -> list[asyncio.Task[None]]:
        """Run ``await callback(msg)`` for each message in ``workers`` tasks at once: ack on
        return, nack (group backoff) on exception. One group member (prefetch ``2 * workers``
        unless given) feeds them; every message it holds has its lease extended every third of
        ``ack_timeout`` while it waits or runs. The tasks end when the client closes (or are
        cancelled); the member then leaves the group."""
        options = _common.consume_args(callback, workers, subscribe_options)
        sub = await self.subscribe(topic, group, **options)
        extend_every = _common.lease_refresh(
            (await self.describe_group(topic, group)).settings.ack_timeout)
        # Unbounded: the member's prefetch bounds what it is given, and every message taken
        # here is in `held`, whose leases keep_alive extends.
        queue: asyncio.Queue[AsyncMessage] = asyncio.Queue()
        held: set[str] = set()

        async def feed() -> None:
            try:
                async for msg in sub:
                    held.add(msg.id)
                    await queue.put(msg)
            finally:
                if self._transport is not None:
                    await sub.close()

        async def work() -> None:
            while True:
                msg = await queue.get()
                try:
                    await callback(msg)
                    ok = True
                except Exception:
                    log.exception("callback failed for %s; nacked", msg.id)
                    ok = False
                try:
                    await (msg.ack() if ok else msg.nack())
                except TideMQError:
                    pass  # closed meanwhile, or the lease was lost: it comes again
                finally:
                    held.discard(msg.id)

        async def keep_alive() -> None:
            while True:
                await asyncio.sleep(extend_every)
                if held:
                    try:
                        await sub.extend(list(held), extend_every * 3)
                    except TideMQError:
                        pass

        tasks = [asyncio.create_task(feed()), asyncio.create_task(keep_alive())]
        tasks += [asyncio.create_task(work()) for _ in range(workers)]
        self._tasks.extend(tasks)
        return tasks

    async def create_group(self, topic: str, group: str, **settings: Any) -> GroupInfo:
        return await self._t.create_group(
            topic, group, _common.merge_settings(None, _common.group_settings(settings)))

    async def update_group(self, topic: str, group: str, **settings: Any) -> GroupInfo:
        base = (await self._t.describe_group(topic, group)).settings
        return await self._t.update_group(
            topic, group, _common.merge_settings(base, _common.group_settings(settings)))

    async def delete_group(self, topic: str, group: str) -> None:
        await self._t.delete_group(topic, group)

    async def list_groups(self, topic: str) -> list[GroupInfo]:
        return await self._t.list_groups(topic)

    async def describe_group(self, topic: str, group: str) -> GroupInfo:
        return await self._t.describe_group(topic, group)

    async def reset_group(self, topic: str, group: str, start: StartPosition) -> None:
        """Replay: move the group to ``start`` ("earliest", "latest", an offset,
        {partition: offset} or {"timestamp": epoch s}); in-flight leases are dropped."""
        await self._t.reset_group(topic, group, start)

    async def redrive(self, topic: str, group: str, *, limit: int | None = None) -> int:
        """Hand ``group``'s dead letters back to it; returns how many moved."""
        return await self._t.redrive(topic, group, limit)
