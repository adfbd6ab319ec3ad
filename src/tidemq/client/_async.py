"""The asyncio client: ``tidemq.AsyncClient(url)``. Use it from one event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable
from types import TracebackType
from typing import Any

from ..broker._types import Delivery, GroupInfo, GroupSettings, StartPosition, TopicInfo
from ..errors import Closed, InvalidArgument, TideMQError, UnknownGroup, UnknownTopic
from . import _common
from ._client import MessageFields, _ids
from ._transport import AsyncTransport

__all__ = ["AsyncClient", "AsyncSubscription", "AsyncMessage"]

log = logging.getLogger("tidemq.client")


class AsyncMessage(MessageFields):
    """A delivered message; ``await msg.ack()`` and friends act through its subscription."""

    __slots__ = ()

    def __init__(self, delivery: Delivery, sub: AsyncSubscription) -> None:
        self._d = delivery
        self._sub = sub

    async def ack(self, *, wait: bool = False) -> None:
        await self._sub.ack(self._d.id, wait=wait)

    async def nack(self, delay: float | None = None) -> None:
        await self._sub.nack(self._d.id, delay=delay)

    async def reject(self, reason: str = "rejected") -> None:
        await self._sub.reject(self._d.id, reason)

    async def extend(self, seconds: float) -> None:
        await self._sub.extend(self._d.id, seconds)


class AsyncSubscription:
    """A group member. ``async for msg in sub``, ``await sub.receive()``; joins the group on
    first use (or ``await mq.subscribe(...)`` to join at once)."""

    def __init__(self, client: AsyncClient, topic: str, group: str,
                 explicit: dict[str, Any], prefetch: int) -> None:
        self._client = client
        self.topic = topic
        self.group = group
        self._explicit = explicit
        self._prefetch = prefetch
        self._member: str | None = None
        self._closed = False

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

    async def receive(self, max_messages: int = 100, timeout: float = 1.0) -> list[AsyncMessage]:
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise InvalidArgument("max_messages must be an int >= 1")
        member = await self._join()
        got = await self._client._t.receive(member, max_messages, float(timeout))
        return [AsyncMessage(d, self) for d in got]

    async def __aiter__(self) -> AsyncIterator[AsyncMessage]:
        while not self._closed:
            try:
                batch = await self.receive(100, 1.0)
            except Closed:
                return
            for m in batch:
                yield m

    async def ack(self, ids: Any, *, wait: bool = False) -> None:
        """As :meth:`tidemq.Subscription.ack`."""
        member = await self._join()
        await self._client._t.ack(member, _ids(ids))
        if wait:
            await self._client._t.flush(member)

    async def flush(self) -> None:
        """As :meth:`tidemq.Subscription.flush`."""
        await self._client._t.flush(await self._join())

    async def nack(self, ids: Any, delay: float | None = None) -> None:
        if delay is not None:
            delay = _common._seconds("delay", delay)
        await self._client._t.nack(await self._join(), _ids(ids), delay)

    async def extend(self, ids: Any, seconds: float) -> None:
        await self._client._t.extend(await self._join(), _ids(ids),
                                     _common._seconds("seconds", seconds, positive=True))

    async def reject(self, ids: Any, reason: str = "rejected") -> None:
        """Dead-letter now, with ``reason`` in the dead letter's headers."""
        _common.reject_reason(reason)
        await self._client._t.reject(await self._join(), _ids(ids), reason)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._member is not None:
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

    @property
    def _t(self) -> AsyncTransport:
        if self._transport is None:
            raise Closed("the client is not connected: use 'async with AsyncClient(...)' "
                         "or 'await client.connect()'")
        return self._transport

    async def connect(self) -> AsyncClient:
        if self._transport is None:
            if self._ep.kind == "tidemq":
                from ._tcp import TcpTransport
                self._transport = await TcpTransport.connect(
                    self._ep.host, self._ep.port, **self._ep.tcp_options(self._options))
            else:
                from ._adapters import AsyncOverEmbedded
                from ._embedded import EmbeddedTransport
                inner = await asyncio.to_thread(EmbeddedTransport, self._ep.path,
                                                auto_create_topics=self._auto,
                                                **self._ep.embedded_options(self._options))
                self._transport = AsyncOverEmbedded(inner)
        return self

    async def close(self) -> None:
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
        return await self._t.create_topic(name, _common.topic_config(partitions, config), exist_ok)

    async def delete_topic(self, name: str) -> None:
        await self._t.delete_topic(name)

    async def list_topics(self) -> list[TopicInfo]:
        return await self._t.list_topics()

    async def describe_topic(self, name: str) -> TopicInfo:
        return await self._t.describe_topic(name)

    async def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        return await self._t.set_partitions(name, partitions)

    # -- publishing -------------------------------------------------------------------------

    def publish(self, topic: str, body: bytes | str, *, key: str | bytes | None = None,
                routing_key: str | None = None, headers: dict[str, str] | None = None,
                priority: int = 0, delay: float | None = None, deliver_at: Any = None,
                ttl: float | None = None, dedup_id: str | None = None) -> Awaitable[str]:
        """Store one message: ``await`` it for the id once confirmed. Bad input raises at once.

        A plain function returning an awaitable, not a coroutine: over the network the
        awaitable is the producer's own future, so thousands of pipelined calls
        (``asyncio.gather``) cost one future each, not a coroutine and a task each.
        """
        rec = _common.make_record(body, key=key, routing_key=routing_key, headers=headers,
                                  priority=priority, delay=delay, deliver_at=deliver_at, ttl=ttl,
                                  dedup_id=dedup_id)
        fast = getattr(self._t, "publish_one", None)
        if fast is not None:
            fut: Awaitable[str] | None = fast(topic, rec)
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
        defaults = {"key": key, "routing_key": routing_key, "headers": headers,
                    "priority": priority, "delay": delay, "deliver_at": deliver_at, "ttl": ttl}
        return await self._t.publish(topic, _common.make_records(items, defaults))

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
                  dead_letter_topic: str | None = None) -> AsyncSubscription:
        """A subscription; ``async for`` it directly, or ``await`` it to join now."""
        _common.prefetch(prefetch)
        _common.group_name(group)
        explicit = _common.group_settings(dict(
            mode=mode, filter=filter, start=start, ack_timeout=ack_timeout,
            max_deliveries=max_deliveries, backoff=backoff, dead_letter_topic=dead_letter_topic))
        return AsyncSubscription(self, topic, group, explicit, prefetch)

    async def consume(self, topic: str, group: str,
                      callback: Callable[[AsyncMessage], Awaitable[Any]], *, workers: int = 1,
                      **subscribe_options: Any) -> list[asyncio.Task[None]]:
        """Run ``await callback(msg)`` for each message in ``workers`` tasks at once: ack on
        return, nack (group backoff) on exception. One group member (prefetch ``2 * workers``
        unless given) feeds them; every message it holds has its lease extended every third of
        ``ack_timeout`` while it waits or runs. The tasks end when the client closes (or are
        cancelled); the member then leaves the group."""
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024:
            raise InvalidArgument("workers must be an int from 1 to 1024")
        options = dict(subscribe_options)
        options.setdefault("prefetch", 2 * workers)
        sub = await self.subscribe(topic, group, **options)
        extend_every = (await self.describe_group(topic, group)).settings.ack_timeout / 3
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
        await self._t.reset_group(topic, group, start)

    async def redrive(self, topic: str, group: str, *, limit: int | None = None) -> int:
        return await self._t.redrive(topic, group, limit)
