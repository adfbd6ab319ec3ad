"""The blocking client: ``tidemq.Client(url)``. Thread-safe: share one client between threads."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from ..broker._types import Delivery, GroupInfo, GroupSettings, StartPosition, TopicInfo
from ..errors import Closed, InvalidArgument, TideMQError, UnknownGroup, UnknownTopic
from ..storage import Record
from . import _common
from ._embedded import EmbeddedTransport
from ._transport import SyncTransport

__all__ = ["Client", "Subscription", "Message", "Consumer", "open"]

log = logging.getLogger("tidemq.client")


def _ids(items: Any) -> list[str]:
    """Accept an id, a (Async)Message, or an iterable of either."""
    if isinstance(items, str):
        return [items]
    if isinstance(items, MessageFields):  # a Message or AsyncMessage
        return [items.id]
    try:
        out = [m.id if isinstance(m, MessageFields) else m for m in items]
    except TypeError:
        raise InvalidArgument("pass a message id, a Message, or a list of them") from None
    if not all(isinstance(i, str) for i in out):
        raise InvalidArgument("message ids are str")
    return out


class MessageFields:
    """The fields of a delivered message, shared by :class:`Message` and ``AsyncMessage``."""

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


class Message(MessageFields):
    """A delivered message. ``ack``/``nack``/``reject``/``extend`` act through its subscription."""

    __slots__ = ()

    def __init__(self, delivery: Delivery, sub: Subscription) -> None:
        self._d = delivery
        self._sub = sub

    def ack(self, *, wait: bool = False) -> None:
        self._sub.ack(self._d.id, wait=wait)

    def nack(self, delay: float | None = None) -> None:
        self._sub.nack(self._d.id, delay=delay)

    def reject(self, reason: str = "rejected") -> None:
        self._sub.reject(self._d.id, reason)

    def extend(self, seconds: float) -> None:
        self._sub.extend(self._d.id, seconds)


class Subscription:
    """One member of a consumer group. Iterate it, or call ``receive``. Thread-safe."""

    def __init__(self, transport: SyncTransport, topic: str, group: str, member: str) -> None:
        self._t = transport
        self.topic = topic
        self.group = group
        self._member = member
        self._closed = False

    def receive(self, max_messages: int = 100, timeout: float = 1.0) -> list[Message]:
        """Up to ``max_messages`` messages, waiting at most ``timeout`` s for the first."""
        if self._closed:
            raise Closed("this subscription is closed")
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise InvalidArgument("max_messages must be an int >= 1")
        got = self._t.receive(self._member, max_messages, float(timeout))
        return [Message(d, self) for d in got]

    def __iter__(self) -> Iterator[Message]:
        while not self._closed:
            try:
                batch = self.receive(100, 1.0)
            except Closed:
                return
            yield from batch

    def ack(self, ids: Any, *, wait: bool = False) -> None:
        """Acknowledge one id/Message or a list of them (one call: the batched path).

        Over ``tidemq://`` an ack whose lease is surely still held returns at once and travels
        with the next write; ``wait=True`` (or a later :meth:`flush`) returns once the server
        applied it — durable under ``always`` — and raises what it refused. Embedded, an ack is
        applied and durable before it returns."""
        self._t.ack(self._member, [ids] if type(ids) is str else _ids(ids))
        if wait:
            self._t.flush(self._member)

    def flush(self) -> None:
        """Return once every ack sent before this call is applied by the broker (and durable
        under ``always``); raise the first failure of an ack sent without waiting."""
        self._t.flush(self._member)

    def nack(self, ids: Any, delay: float | None = None) -> None:
        """Give back; ``delay=None`` applies the group's backoff, ``0`` makes it ready now."""
        if delay is not None:
            delay = _common._seconds("delay", delay)
        self._t.nack(self._member, _ids(ids), delay)

    def extend(self, ids: Any, seconds: float) -> None:
        self._t.extend(self._member, _ids(ids), _common._seconds("seconds", seconds, positive=True))

    def reject(self, ids: Any, reason: str = "rejected") -> None:
        """Dead-letter now, with ``reason`` in the dead letter's headers."""
        _common.reject_reason(reason)
        self._t.reject(self._member, _ids(ids), reason)

    def close(self) -> None:
        """Leave the group; this member's leases are released at once."""
        if not self._closed:
            self._closed = True
            self._t.unsubscribe(self._member)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Consumer:
    """Callback consumption in background threads (``Client.consume``).

    One group member (prefetch ``2 * workers`` unless given) feeds ``workers`` threads that
    call ``callback(message)`` in parallel; a return acks, an exception nacks with the group's
    backoff. A receiver thread takes every message the member is given into a local queue at
    once, and every message held — queued or running — has its lease extended every third of
    ``ack_timeout`` (one batched ``extend``), so slow work is not redelivered. ``stop()`` stops
    receiving, lets running callbacks finish and leaves the group (queued messages are released
    to other members at once).
    """

    def __init__(self, client: Client, topic: str, group: str, callback: Callable[[Message], Any],
                 workers: int, sub_options: dict[str, Any]) -> None:
        if not callable(callback):
            raise InvalidArgument("callback must be callable")
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024:
            raise InvalidArgument("workers must be an int from 1 to 1024")
        self._callback = callback
        self._stop = threading.Event()
        self.processed = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._held: set[str] = set()  # ids received and not yet settled
        self._queue: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        options = dict(sub_options)
        options.setdefault("prefetch", 2 * workers)
        self._sub = client.subscribe(topic, group, **options)
        self._extend_every = client.describe_group(topic, group).settings.ack_timeout / 3
        self._workers = [threading.Thread(target=self._work, daemon=True,
                                          name=f"tidemq-consume-{group}-{i}")
                         for i in range(workers)]
        self._helpers = [
            threading.Thread(target=self._receive_loop, daemon=True, name=f"tidemq-recv-{group}"),
            threading.Thread(target=self._keep_alive, daemon=True, name=f"tidemq-lease-{group}"),
        ]
        for t in (*self._workers, *self._helpers):
            t.start()

    def _receive_loop(self) -> None:
        sub = self._sub
        while not self._stop.is_set():
            try:
                batch = sub.receive(100, 0.2)  # the member's prefetch bounds what it is given
            except TideMQError:
                if self._stop.wait(0.2):
                    return
                continue
            with self._lock:
                self._held.update(m.id for m in batch)
            for msg in batch:
                self._queue.put(msg)

    def _keep_alive(self) -> None:
        while not self._stop.wait(self._extend_every):
            with self._lock:
                held = list(self._held)
            if held:
                try:
                    self._sub.extend(held, self._extend_every * 3)
                except TideMQError:
                    pass  # closed, or a lease already lost: its message comes again

    def _work(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None or self._stop.is_set():
                return
            try:
                self._callback(msg)
            except Exception:
                log.exception("callback failed for %s; nacked with the group's backoff", msg.id)
                ok = False
            else:
                ok = True
            try:
                msg.ack() if ok else msg.nack()
            except TideMQError:
                pass  # closed meanwhile, or the lease was lost: it comes again
            else:
                with self._lock:
                    if ok:
                        self.processed += 1
                    else:
                        self.failed += 1
            finally:
                with self._lock:
                    self._held.discard(msg.id)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop receiving, let running callbacks finish (up to ``timeout`` s), leave the group
        (anything not settled is released to other members at once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in (*self._helpers, *self._workers):
            t.join(max(0.0, deadline - time.monotonic()))
        try:
            self._sub.close()
        except Closed:
            pass

    def wait(self, timeout: float | None = None) -> None:
        """Block until ``stop`` is called (from another thread) or ``timeout`` passes."""
        self._stop.wait(timeout)

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Client:
    """One client for every URL (SPEC §8): ``memory://``, a path or ``file://PATH`` (embedded,
    durable), ``tidemq://host:port`` (a server). Blocking and thread-safe."""

    def __init__(self, url: str = "memory://", *, auto_create_topics: bool = True,
                 **options: Any) -> None:
        ep = _common.parse_url(url)
        self.url = url
        self._t: SyncTransport
        if ep.kind == "tidemq":
            from ._adapters import SyncOverAsync
            from ._tcp import TcpTransport

            tcp_options = ep.tcp_options(options)

            async def connect() -> Any:
                return await TcpTransport.connect(ep.host, ep.port, **tcp_options)

            self._t = SyncOverAsync(connect)  # type: ignore[assignment]
        else:
            self._t = EmbeddedTransport(ep.path, auto_create_topics=auto_create_topics,
                                        **ep.embedded_options(options))
        self._consumers: list[Consumer] = []
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for c in self._consumers:
            c.stop()
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- topics -----------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1, *, exist_ok: bool = False,
                     **config: Any) -> TopicInfo:
        """Create a topic. ``config``: durability, retention, retention_bytes, log_retention,
        max_message_bytes, dedup_window, backlog_limit, backlog_policy, segment_bytes ..."""
        return self._t.create_topic(name, _common.topic_config(partitions, config), exist_ok)

    def delete_topic(self, name: str) -> None:
        self._t.delete_topic(name)

    def list_topics(self) -> list[TopicInfo]:
        return self._t.list_topics()

    def describe_topic(self, name: str) -> TopicInfo:
        return self._t.describe_topic(name)

    def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        """Grow the partition count (keys map differently from then on, as in Kafka)."""
        return self._t.set_partitions(name, partitions)

    # -- publishing -------------------------------------------------------------------------

    def publish(self, topic: str, body: bytes | str, *, key: str | bytes | None = None,
                routing_key: str | None = None, headers: dict[str, str] | None = None,
                priority: int = 0, delay: float | None = None, deliver_at: Any = None,
                ttl: float | None = None, dedup_id: str | None = None) -> str:
        """Store one message; returns its id once confirmed at the topic's durability."""
        if (type(body) is bytes and key is None and routing_key is None and headers is None
                and type(priority) is int and priority == 0 and delay is None
                and deliver_at is None and ttl is None and dedup_id is None):
            # A bare body: nothing to validate, make_record would return just this.
            rec = Record(body)
        else:
            rec = _common.make_record(body, key=key, routing_key=routing_key, headers=headers,
                                      priority=priority, delay=delay, deliver_at=deliver_at,
                                      ttl=ttl, dedup_id=dedup_id)
        return self._t.publish(topic, [rec])[0]

    def publish_batch(self, topic: str, items: Iterable[Any], *, key: str | bytes | None = None,
                      routing_key: str | None = None, headers: dict[str, str] | None = None,
                      priority: int = 0, delay: float | None = None, deliver_at: Any = None,
                      ttl: float | None = None) -> list[str]:
        """Store many messages (bodies, dicts or message objects); ids in order. Each
        partition's share is stored atomically. The keyword fields are defaults per item."""
        defaults = {"key": key, "routing_key": routing_key, "headers": headers,
                    "priority": priority, "delay": delay, "deliver_at": deliver_at, "ttl": ttl}
        return self._t.publish(topic, _common.make_records(items, defaults))

    # -- groups -----------------------------------------------------------------------------

    def _settings_for(self, topic: str, group: str, explicit: dict[str, Any]) -> GroupSettings | None:
        if not explicit:
            return None
        try:
            base: GroupSettings | None = self._t.describe_group(topic, group).settings
        except (UnknownGroup, UnknownTopic):
            base = None
        return _common.merge_settings(base, explicit)

    def subscribe(self, topic: str, group: str, *, mode: str | None = None,
                  filter: dict[str, Any] | None = None, start: StartPosition | None = None,
                  prefetch: int = 100, ack_timeout: float | None = None,
                  max_deliveries: int | None = None, backoff: Any = None,
                  dead_letter_topic: str | None = None) -> Subscription:
        """Join ``group`` of ``topic`` (creating it with these settings if new). Settings left
        out are the group's; different ones raise GroupSettingsMismatch."""
        _common.prefetch(prefetch)
        _common.group_name(group)
        explicit = _common.group_settings(dict(
            mode=mode, filter=filter, start=start, ack_timeout=ack_timeout,
            max_deliveries=max_deliveries, backoff=backoff, dead_letter_topic=dead_letter_topic))
        settings = self._settings_for(topic, group, explicit)
        member = self._t.subscribe(topic, group, settings, prefetch)
        return Subscription(self._t, topic, group, member)

    def consume(self, topic: str, group: str, callback: Callable[[Message], Any], *,
                workers: int = 1, **subscribe_options: Any) -> Consumer:
        """Run ``callback`` for each message in ``workers`` background threads: ack on return,
        nack (group backoff) on exception. Returns the running :class:`Consumer`."""
        c = Consumer(self, topic, group, callback, workers, subscribe_options)
        self._consumers.append(c)
        return c

    def create_group(self, topic: str, group: str, **settings: Any) -> GroupInfo:
        return self._t.create_group(topic, group,
                                    _common.merge_settings(None, _common.group_settings(settings)))

    def update_group(self, topic: str, group: str, **settings: Any) -> GroupInfo:
        base = self._t.describe_group(topic, group).settings
        return self._t.update_group(
            topic, group, _common.merge_settings(base, _common.group_settings(settings)))

    def delete_group(self, topic: str, group: str) -> None:
        self._t.delete_group(topic, group)

    def list_groups(self, topic: str) -> list[GroupInfo]:
        return self._t.list_groups(topic)

    def describe_group(self, topic: str, group: str) -> GroupInfo:
        return self._t.describe_group(topic, group)

    def reset_group(self, topic: str, group: str, start: StartPosition) -> None:
        """Replay: move the group to ``start`` ("earliest", "latest", an offset,
        {partition: offset} or {"timestamp": epoch s}); in-flight leases are dropped."""
        self._t.reset_group(topic, group, start)

    def redrive(self, topic: str, group: str, *, limit: int | None = None) -> int:
        """Hand ``group``'s dead letters back to it; returns how many moved."""
        return self._t.redrive(topic, group, limit)


def open(path: str = "./tidemq-data", **options: Any) -> Client:  # noqa: A001 - SPEC name
    """``tidemq.open("./data")``: an embedded, durable client on a data folder."""
    return Client(path, **options)

