"""The blocking client: ``tidemq.Client(url)``. Thread-safe: share one client between threads.

A thin face over the one client source, :class:`~tidemq.client._async.AsyncClient`: every
method runs the ``AsyncClient`` method of the same name through a runner (``_runner``) —
embedded URLs with no event loop at all, ``tidemq://`` by running the network transport's
loop in the caller's thread — so checks and behaviour are the async client's own. What only a
blocking client has is here: ``publish(..., wait=False)`` (``_nowait``), iteration, and the
callback :class:`Consumer`, whose workers are threads. ``tests/client/test_drift.py`` fails if
the two faces' methods or refusals drift apart.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal, overload

from .._spin import check_spin_us
from ..backends._capabilities import Capability
from ..broker._types import Delivery, GroupInfo, StartPosition, TopicInfo
from ..errors import Closed, InvalidArgument, TideMQError
from . import _common
from ._adapters import AsyncOverEmbedded
from ._async import AsyncClient, MessageFields, connect_backend
from ._embedded import EmbeddedTransport
from ._nowait import NowaitProducer
from ._runner import SPIN_US, InlineRunner, LoopRunner, new_loop
from ._transport import AsyncTransport

__all__ = ["Client", "Subscription", "Message", "Consumer", "open"]

log = logging.getLogger("tidemq.client")


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

    def __init__(self, client: Client, topic: str, group: str, settings: dict[str, Any],
                 prefetch: int) -> None:
        self._call = client._call
        self._s = client._ac._subscription(topic, group, settings, prefetch, face=self,
                                           message=Message)
        self.topic = topic
        self.group = group
        self._call(self._s.join)

    def receive(self, max_messages: int = 100, timeout: float = 1.0) -> list[Message]:
        """Up to ``max_messages`` messages, waiting at most ``timeout`` s for the first.
        Acks made since the last receive leave with it."""
        got: list[Message] = self._call(self._s.receive, max_messages, timeout)
        return got

    def __iter__(self) -> Iterator[Message]:
        while not self._s._closed:
            try:
                batch = self.receive(100, 1.0)
            except Closed:
                return
            yield from batch

    def ack(self, ids: Any, *, wait: bool = False) -> None:
        """Acknowledge one id/Message or a list of them (one call: the batched path).

        Over ``tidemq://`` an ack whose lease is surely still held returns at once and leaves,
        merged with others, with the next receive (or within a few milliseconds, or at
        ``flush``/``close``); ``wait=True`` (or a later :meth:`flush`) returns once the server
        applied it — durable under ``always`` — and raises what it refused. Embedded, an ack is
        applied and durable before it returns."""
        if wait:
            self._call(self._s.ack, ids, wait=True)
        else:
            self._call(self._s.ack, ids)

    def flush(self) -> None:
        """Return once every ack sent before this call is applied by the broker (and durable
        under ``always``); raise the first failure of an ack sent without waiting."""
        self._call(self._s.flush)

    def nack(self, ids: Any, delay: float | None = None) -> None:
        """Give back; ``delay=None`` applies the group's backoff, ``0`` makes it ready now."""
        self._call(self._s.nack, ids, delay)

    def extend(self, ids: Any, seconds: float) -> None:
        """Renew the leases: they end ``seconds`` from now."""
        self._call(self._s.extend, ids, seconds)

    def reject(self, ids: Any, reason: str = "rejected") -> None:
        """Dead-letter now, with ``reason`` in the dead letter's headers."""
        self._call(self._s.reject, ids, reason)

    def close(self) -> None:
        """Leave the group; this member's leases are released at once."""
        if not self._s._closed:
            self._call(self._s.close)

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
    to other members at once). The asyncio client's ``consume`` is the same with tasks.
    """

    def __init__(self, client: Client, topic: str, group: str, callback: Callable[[Message], Any],
                 workers: int, sub_options: dict[str, Any]) -> None:
        options = _common.consume_args(callback, workers, sub_options)
        self._callback = callback
        self._stop = threading.Event()
        self.processed = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._held: set[str] = set()  # ids received and not yet settled
        self._queue: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._sub = client.subscribe(topic, group, **options)
        self._extend_every = _common.lease_refresh(
            client.describe_group(topic, group).settings.ack_timeout)
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
    durable), ``tidemq://host:port`` (a server), ``nats://host:4222`` (NATS JetStream) or
    ``amqp://user:password@host`` (RabbitMQ) — see :meth:`capabilities` and
    ``docs/backends.md`` for what differs there. Blocking and thread-safe.

    ``loop`` (network URLs only): the event loop the network transport runs on, in the
    callers' threads — ``"asyncio"`` (default) or ``"uvloop"``. ``spin_us`` (network URLs,
    the asyncio loop): how long a call polls for its answer before it sleeps, 0 never
    (default ``_runner.SPIN_US``; see ``docs/architecture.md``)."""

    def __init__(self, url: str = "memory://", *, auto_create_topics: bool = True,
                 loop: str | None = None, spin_us: int | None = None,
                 **options: Any) -> None:
        ep = _common.parse_url(url)
        self.url = url
        self._nowait: NowaitProducer | None = None
        self._runner: LoopRunner | InlineRunner
        if ep.kind == "tidemq" or ep.url is not None:
            from ._tcp import TcpTransport

            spin = check_spin_us(SPIN_US if spin_us is None else spin_us)
            if loop == "uvloop" and spin_us:
                raise InvalidArgument("spin_us needs the asyncio loop: uvloop's selector "
                                      "cannot be polled from Python (use spin_us=0 or "
                                      "loop='asyncio')")
            runner = LoopRunner(new_loop(loop or "asyncio"), spin_us=spin)
            tcp: AsyncTransport
            try:
                if ep.url is not None:  # nats://, amqp://: another engine's backend
                    tcp = runner.run(connect_backend(ep.url, auto_create_topics, options))
                else:
                    tcp = runner.run(TcpTransport.connect(ep.host, ep.port,
                                                          **ep.tcp_options(options)))
            except BaseException:
                runner.close()
                raise
            # The runner's hooks into a network transport (any AsyncTransport may have them):
            # drop a connection an interrupt may have cut mid-frame, hold a caller's writes
            # until it waits (then write them) or leaves (then schedule them), end a loop run
            # in the iteration that read the answer.
            runner.on_interrupt = getattr(tcp, "abort_connection", None)
            runner.before_wait = getattr(tcp, "push_out", None)
            runner.on_call = getattr(tcp, "defer", None)
            runner.end_call = getattr(tcp, "end_deferred", None)
            if hasattr(tcp, "on_input"):
                tcp.on_input = runner.on_input
            self._nowait = NowaitProducer(runner, tcp.publish,
                                          plain_hint=isinstance(tcp, TcpTransport))
            self._runner = runner
            self._ac = AsyncClient._over(url, tcp)
        else:
            if loop is not None or spin_us is not None:
                raise InvalidArgument(f"{'loop' if loop is not None else 'spin_us'}= applies "
                                      "to network URLs (tidemq://, nats://, amqp://); an "
                                      "embedded client runs no event loop")
            inner = EmbeddedTransport(ep.path, auto_create_topics=auto_create_topics,
                                      **ep.embedded_options(options))
            self._runner = InlineRunner()
            self._ac = AsyncClient._over(url, AsyncOverEmbedded(inner, inline=True))
        self._call = self._runner.call
        self._consumers: list[Consumer] = []
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the consumers, send what is batched (waiting up to 10 s for confirmations),
        leave the groups and close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for c in self._consumers:
            c.stop()
        try:
            if self._nowait is not None:
                self._nowait.hand_off_all()
                self._call(self._close_network)
            else:
                self._call(self._ac.close)
        finally:
            if self._nowait is not None:
                self._nowait.fail_queued(Closed("the client was closed"))
            self._runner.close()

    def capabilities(self) -> dict[str, Capability]:
        """What each SPEC feature is on this client's backend: ``{feature: Capability(support,
        how)}`` with ``support`` ``"native"``, ``"emulated"`` (``how``: how, at what cost) or
        ``"unsupported"`` (``how``: why; using it raises ``Unsupported``). Everything is
        native on TideMQ's own transports; ``docs/backends.md`` has the tables of
        ``nats://`` and ``amqp://``."""
        return self._ac.capabilities()

    async def _close_network(self) -> None:
        assert self._nowait is not None
        await self._nowait.drained()
        await self._ac.close()

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
        info: TopicInfo = self._call(self._ac.create_topic, name, partitions, exist_ok=exist_ok,
                                     **config)
        return info

    def delete_topic(self, name: str) -> None:
        self._call(self._ac.delete_topic, name)

    def list_topics(self) -> list[TopicInfo]:
        topics: list[TopicInfo] = self._call(self._ac.list_topics)
        return topics

    def describe_topic(self, name: str) -> TopicInfo:
        info: TopicInfo = self._call(self._ac.describe_topic, name)
        return info

    def set_partitions(self, name: str, partitions: int) -> TopicInfo:
        """Grow the partition count (keys map differently from then on, as in Kafka)."""
        info: TopicInfo = self._call(self._ac.set_partitions, name, partitions)
        return info

    # -- publishing -------------------------------------------------------------------------

    @overload
    def publish(self, topic: str, body: bytes | str, *, key: str | bytes | None = ...,
                routing_key: str | None = ..., headers: dict[str, str] | None = ...,
                priority: int = ..., delay: float | None = ..., deliver_at: Any = ...,
                ttl: float | None = ..., dedup_id: str | None = ...,
                wait: Literal[True] = ...) -> str: ...

    @overload
    def publish(self, topic: str, body: bytes | str, *, key: str | bytes | None = ...,
                routing_key: str | None = ..., headers: dict[str, str] | None = ...,
                priority: int = ..., delay: float | None = ..., deliver_at: Any = ...,
                ttl: float | None = ..., dedup_id: str | None = ...,
                wait: Literal[False]) -> Future[str]: ...

    def publish(self, topic: str, body: bytes | str, *, key: str | bytes | None = None,
                routing_key: str | None = None, headers: dict[str, str] | None = None,
                priority: int = 0, delay: float | None = None, deliver_at: Any = None,
                ttl: float | None = None, dedup_id: str | None = None,
                wait: bool = True) -> str | Future[str]:
        """Store one message; returns its id once confirmed at the topic's durability.

        ``wait=False``: return at once with a ``concurrent.futures.Future`` of the id. Over
        ``tidemq://`` the message joins a batch that is sent when full, a couple of
        milliseconds after its first message, or at :meth:`flush` / :meth:`close`; embedded, the
        message is stored before the call returns and the future is already done. Bad
        arguments raise at once; the broker's refusals are set on the future."""
        if wait:
            mid: str = self._call(self._ac.publish, topic, body, key=key, routing_key=routing_key,
                                  headers=headers, priority=priority, delay=delay,
                                  deliver_at=deliver_at, ttl=ttl, dedup_id=dedup_id)
            return mid
        rec = _common.bare_record(body, key, routing_key, headers, priority, delay, deliver_at,
                                  ttl, dedup_id)
        bare = rec is not None
        if rec is None:
            rec = _common.make_record(body, key=key, routing_key=routing_key, headers=headers,
                                      priority=priority, delay=delay, deliver_at=deliver_at,
                                      ttl=ttl, dedup_id=dedup_id)
        if self._nowait is not None:
            if self._closed:
                raise Closed("this client is closed; open a new one")
            return self._nowait.add(topic, rec, bare)
        fut: Future[str] = Future()
        try:
            fut.set_result(self._call(self._ac._publish_one, topic, rec))
        except TideMQError as exc:
            fut.set_exception(exc)
        return fut

    def publish_batch(self, topic: str, items: Iterable[Any], *, key: str | bytes | None = None,
                      routing_key: str | None = None, headers: dict[str, str] | None = None,
                      priority: int = 0, delay: float | None = None, deliver_at: Any = None,
                      ttl: float | None = None) -> list[str]:
        """Store many messages (bodies, dicts or message objects); ids in order. Each
        partition's share is stored atomically. The keyword fields are defaults per item."""
        ids: list[str] = self._call(self._ac.publish_batch, topic, items, key=key,
                                    routing_key=routing_key, headers=headers, priority=priority,
                                    delay=delay, deliver_at=deliver_at, ttl=ttl)
        return ids

    def flush(self) -> None:
        """Return once every publish (``wait=False`` ones included) and every ack made before
        the call is answered by the broker (acks: applied, and durable under ``always``); raise
        the first failure of an ack sent without waiting, as ``Subscription.flush`` does.
        Publish failures are set on their futures."""
        if self._nowait is not None:
            self._nowait.hand_off_all()
            self._call(self._flush_network)
        else:
            self._call(self._ac.flush)

    async def _flush_network(self) -> None:
        assert self._nowait is not None
        await self._nowait.drained(timeout=self._ac_request_timeout())
        await self._ac.flush()

    def _ac_request_timeout(self) -> float:
        return float(getattr(self._ac._t, "request_timeout", 30.0))

    # -- groups -----------------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, *, mode: str | None = None,
                  filter: dict[str, Any] | None = None, start: StartPosition | None = None,
                  prefetch: int = 100, ack_timeout: float | None = None,
                  max_deliveries: int | None = None, backoff: Any = None,
                  dead_letter_topic: str | None = None,
                  message_ttl: float | None = None,
                  dead_letter_routing_key: str | None = None,
                  max_priority: int | None = None) -> Subscription:
        """Join ``group`` of ``topic`` (creating it with these settings if new). Settings left
        out are the group's; different ones raise GroupSettingsMismatch."""
        return Subscription(self, topic, group, dict(
            mode=mode, filter=filter, start=start, ack_timeout=ack_timeout,
            max_deliveries=max_deliveries, backoff=backoff, dead_letter_topic=dead_letter_topic,
            message_ttl=message_ttl, dead_letter_routing_key=dead_letter_routing_key,
            max_priority=max_priority),
            prefetch)

    def consume(self, topic: str, group: str, callback: Callable[[Message], Any], *,
                workers: int = 1, **subscribe_options: Any) -> Consumer:
        """Run ``callback`` for each message in ``workers`` background threads: ack on return,
        nack (group backoff) on exception. Returns the running :class:`Consumer`."""
        c = Consumer(self, topic, group, callback, workers, subscribe_options)
        self._consumers.append(c)
        return c

    def create_group(self, topic: str, group: str, **settings: Any) -> GroupInfo:
        info: GroupInfo = self._call(self._ac.create_group, topic, group, **settings)
        return info

    def update_group(self, topic: str, group: str, **settings: Any) -> GroupInfo:
        info: GroupInfo = self._call(self._ac.update_group, topic, group, **settings)
        return info

    def delete_group(self, topic: str, group: str) -> None:
        self._call(self._ac.delete_group, topic, group)

    def list_groups(self, topic: str) -> list[GroupInfo]:
        groups: list[GroupInfo] = self._call(self._ac.list_groups, topic)
        return groups

    def describe_group(self, topic: str, group: str) -> GroupInfo:
        info: GroupInfo = self._call(self._ac.describe_group, topic, group)
        return info

    def reset_group(self, topic: str, group: str, start: StartPosition) -> None:
        """Replay: move the group to ``start`` ("earliest", "latest", an offset,
        {partition: offset} or {"timestamp": epoch s}); in-flight leases are dropped."""
        self._call(self._ac.reset_group, topic, group, start)

    def redrive(self, topic: str, group: str, *, limit: int | None = None) -> int:
        """Hand ``group``'s dead letters back to it; returns how many moved."""
        moved: int = self._call(self._ac.redrive, topic, group, limit=limit)
        return moved


def open(path: str = "./tidemq-data", **options: Any) -> Client:  # noqa: A001 - SPEC name
    """``tidemq.open("./data")``: an embedded, durable client on a data folder."""
    return Client(path, **options)
