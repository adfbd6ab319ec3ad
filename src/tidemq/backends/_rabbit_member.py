"""One group member on RabbitMQ: consumers, leases, acks, delays and dead letters.

**Consuming.** One channel per member and one consumer per partition queue, each with
``basic.qos`` ``ceil(prefetch / partitions)`` (quorum queues have no global QoS), pushing into the
member's per-partition buffers.

**Admission** (in :meth:`Member.receive`), per message, before the user sees it: the group filter
(header conditions are client-side; routing patterns are bindings already), a due time still in
the future (clock skew: held back), TTL (dead letter ``expired``), and the delivery count
(``x-delivery-count`` + the count a delayed copy carries + local redeliveries) beyond
``max_deliveries`` (dead letter ``max_deliveries``).

**Dead letters** are published by the member to the group's dead-letter exchange (which feeds the
group's ``.dead`` queue and the dead-letter topic) with SPEC's headers, confirmed, then the
original is acked. The queue's ``x-delivery-limit`` is the backstop for a crash in between.

**Leases** are the member's: at ``ack_timeout`` (or the end of an ``extend``) a shared group's
message is returned with ``basic.nack(requeue)``; an ack of it later raises ``StaleLease``.

**Ordered groups** (single active consumer per partition queue): a nack or an expired lease
puts the message and every later one the member holds of that partition back at the front of
the partition's buffer, blocked until the delay has passed, and counts one more delivery for
each: head-of-line (SPEC §3) without returning anything to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final

import aiormq
from aiormq.abc import AbstractChannel, DeliveredMessage

from ..broker._deadletters import dead_letter_records
from ..broker._filters import compile_filter
from ..broker._groupcore import DeadLetter
from ..broker._ids import make_id, parse_id
from ..broker._limits import GROUP_HEADER
from ..broker._names import dead_letter_name, topic_key
from ..broker._types import Delivery, GroupSettings
from ..errors import Closed, ConnectionLost, StaleLease, TideMQError, UnknownMessage
from ..storage import Record
from ._arrival import wait_arrival, wake
from ._rabbit_codec import WAIT_HEADER, decode, encode, offset_of, routing_key_for, with_origin

if TYPE_CHECKING:
    from ._rabbit import RabbitTransport, Topic

__all__ = ["Member"]

log = logging.getLogger("tidemq.amqp")

_EARLY_US: Final = 2_000  # a due time this close counts as due


class Entry:
    """A message the server delivered to this member, not yet handed out (or handed back)."""

    __slots__ = ("msg", "partition", "seq", "extra", "arrived")

    def __init__(self, msg: DeliveredMessage, partition: int, seq: int, extra: int) -> None:
        self.msg = msg
        self.partition = partition
        self.seq = seq  # arrival order on the member's channel
        self.extra = extra  # local redeliveries (ordered groups)
        self.arrived = time.monotonic()

    @property
    def tag(self) -> int:
        tag = self.msg.delivery_tag
        assert tag is not None
        return tag


class Held:
    """A message handed to the user and not yet settled."""

    __slots__ = ("entry", "id", "offset", "count", "record", "timestamp_us", "deadline")

    def __init__(self, entry: Entry, mid: str, offset: int, count: int, record: Record,
                 timestamp_us: int, deadline: float) -> None:
        self.entry = entry
        self.id = mid
        self.offset = offset
        self.count = count
        self.record = record
        self.timestamp_us = timestamp_us
        self.deadline = deadline

    @property
    def partition(self) -> int:
        return self.entry.partition

    @property
    def tag(self) -> int:
        return self.entry.tag


async def _nothing() -> None:
    """The task aiormq runs for a delivery already handled (:meth:`Member._direct`)."""


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Member:
    """A subscription of one group on one client (see the module docstring)."""

    def __init__(self, transport: RabbitTransport, tm: Topic, group: str,
                 settings: GroupSettings, prefetch: int, member_id: str) -> None:
        self.t = transport
        self.tm = tm
        self.group = group
        self.settings = settings
        self.prefetch = prefetch
        self.id = member_id
        self.filter = compile_filter(settings.filter, group=group)
        self.dlq = dead_letter_name(tm.name, settings.dead_letter_topic)
        self.ordered = settings.mode != "shared"
        self.per_consumer = max(1, math.ceil(prefetch / tm.partitions))
        self.buffers: list[deque[Entry]] = [deque() for _ in range(tm.partitions)]
        self.blocked: list[float] = [0.0] * tm.partitions  # monotonic: partition waits
        self.later: list[tuple[float, Entry]] = []  # shared: due times still ahead (skew)
        self.held: dict[str, Held] = {}
        self.late: dict[str, None] = {}  # ids whose lease ran out here
        self.acks: list[asyncio.Future[None]] = []
        # delivery tags being settled by a nack, dead letter or filter ack right now: a
        # multiple ack must not cover them (see :meth:`_covers`)
        self.settling: set[int] = set()
        self.waiter: asyncio.Future[None] | None = None  # a receive waiting for an arrival
        self.wake_keeper = asyncio.Event()
        self.keeper_due: float | None = None  # when the keeper wakes next (None: not timed)
        self.ch: AbstractChannel | None = None
        self.consumers: list[str] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self._seq = itertools.count()
        self._rr = 0
        self._deaths: tuple[dict[str, tuple[str, int]], dict[str, int]] | None = None
        self._record_key = f"t.{tm.token}"
        self._record: Any = None  # the topic record _grow looked at last
        self.closed = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self._consume()
        self.tasks.append(asyncio.ensure_future(self._keeper()))

    async def restart(self) -> None:
        """After a lost connection or channel: what the member held or had buffered went back
        to the queues (an ack of it raises StaleLease); consume again."""
        for h in self.held.values():
            self.late[h.id] = None
        self.held.clear()
        for b in self.buffers:
            b.clear()
        self.later.clear()
        self.blocked = [0.0] * len(self.buffers)
        self.acks = []
        self.settling.clear()
        self.consumers = []
        if self.ch is not None and not self.ch.is_closed:
            with contextlib.suppress(Exception):
                await self.ch.close()
        await self._consume()
        self._arrived()

    async def ensure(self) -> None:
        """Consume again if the channel (or the connection) was lost; follow partition
        growth (the metadata stream is followed live)."""
        if self.closed:
            return
        if self.ch is not None and not self.ch.is_closed:
            await self._grow()
            return
        conn = self.t.conn
        if conn.is_closed or self.t.meta.failed is not None:
            await self.t.connection()  # re-subscribes every member, this one included
        if self.ch is None or self.ch.is_closed:
            await self.restart()

    async def _grow(self) -> None:
        got = self.t.meta.get(self._record_key)
        if got is None or got is self._record:
            return  # (each receive asks: the record unchanged is one lookup)
        tm = self.t._topic_of(got)
        self._record = got
        if tm.incarnation != self.tm.incarnation or tm.partitions <= self.tm.partitions:
            return
        old = self.tm.partitions
        self.tm = tm
        self.buffers.extend(deque() for _ in range(old, tm.partitions))
        self.blocked.extend(0.0 for _ in range(old, tm.partitions))
        await self._consume(range(old, tm.partitions))

    async def _consume(self, partitions: range | None = None) -> None:
        t = self.t
        try:
            if partitions is None:
                self.ch = await (await t.connection()).channel()
                await self.ch.basic_qos(prefetch_count=self.per_consumer)
            assert self.ch is not None
            for p in partitions if partitions is not None else range(self.tm.partitions):
                ok = await self.ch.basic_consume(self.tm.queue(self.group, p),
                                                 self._callback(p))
                assert ok.consumer_tag is not None
                self.consumers.append(ok.consumer_tag)
                # aiormq calls a consumer's callback where it reads the delivery and runs the
                # coroutine it returns as a task of its own: with the callback's work done in
                # that call (_direct), the delivery is in the buffer and the waiting receive
                # woken one loop iteration sooner (e2e latency). Deliveries read before the
                # swap went through the task; they run before any read after it.
                consumers = getattr(self.ch, "consumers", None)
                if isinstance(consumers, dict) and ok.consumer_tag in consumers:
                    consumers[ok.consumer_tag] = self._direct(p)
        except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
            from ._rabbit import translate

            raise translate(exc, f"subscribing to {self.group!r}") from None

    def _callback(self, p: int) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        async def on_message(msg: DeliveredMessage) -> None:
            self._take_delivery(p, msg)

        return on_message

    def _direct(self, p: int) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        """The callback of :meth:`_callback`, run where aiormq reads the delivery."""
        def on_message(msg: DeliveredMessage) -> Coroutine[Any, Any, None]:
            self._take_delivery(p, msg)
            return _nothing()

        return on_message

    def _take_delivery(self, p: int, msg: DeliveredMessage) -> None:
        """Into partition ``p``'s buffer, waking a waiting receive. Never raises: called in
        aiormq's channel reader (:meth:`_direct`), an exception would end it."""
        try:
            if not self.closed:
                self.buffers[p].append(Entry(msg, p, next(self._seq), 0))
                self._arrived()
        except Exception:
            log.exception("member %s: a delivery could not be taken", self.id)

    def _arrived(self) -> None:
        """Something to look at in the buffers: wake a waiting :meth:`receive` directly (its
        future resolved here, so it runs in the next loop iteration; an ``Event`` waited on
        with ``wait_for`` costs a task and two more iterations: latency)."""
        wake(self.waiter)

    async def close(self) -> None:
        """Cancel the consumers and close the channel: the server requeues every message the
        member held or had buffered (SPEC §3: closing releases the leases at once)."""
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.flush()
        if self.ch is not None and not self.ch.is_closed:
            with contextlib.suppress(Exception):
                await self.ch.close()
        self.held.clear()
        for b in self.buffers:
            b.clear()

    def settings_changed(self, settings: GroupSettings) -> None:
        self.settings = settings
        self.filter = compile_filter(settings.filter, group=self.group)
        self.dlq = dead_letter_name(self.tm.name, settings.dead_letter_topic)

    def _check(self) -> AbstractChannel:
        if self.closed:
            raise Closed("this subscription is closed")
        if self.ch is None or self.ch.is_closed:
            raise ConnectionLost(f"the channel of member {self.id!r} is closed (connection "
                                 "lost, or the server's consumer_timeout); subscribe again")
        return self.ch

    # -- receiving --------------------------------------------------------------------------

    def _next(self, now: float) -> Entry | None:
        if self.later and self.later[0][0] <= now:
            return self.later.pop(0)[1]
        n = len(self.buffers)
        for i in range(n):
            p = (self._rr + i) % n
            if self.buffers[p] and self.blocked[p] <= now:
                self._rr = p + 1
                return self.buffers[p].popleft()
        return None

    def _wake_at(self) -> float | None:
        times = [b for p, b in enumerate(self.blocked) if self.buffers[p] and b]
        if self.later:
            times.append(self.later[0][0])
        return min(times) if times else None

    async def receive(self, max_messages: int, timeout: float) -> list[Delivery]:
        if self.closed:
            raise Closed("this subscription is closed")
        await self.ensure()
        self._check()
        deadline = time.monotonic() + timeout
        out: list[Delivery] = []
        while True:
            now = time.monotonic()
            while len(out) < max_messages:
                e = self._next(now)
                if e is None:
                    break
                d = await self._admit(e)
                if d is not None:
                    out.append(d)
            if out:
                # The keeper sleeps until the earliest lease it knows of ends: wake it only
                # when these leases (ack_timeout from now or later) may end before that.
                due = self.keeper_due
                if due is None or now + self.settings.ack_timeout < due:
                    self.wake_keeper.set()
                return out
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return out
            wake_at = self._wake_at()
            if wake_at is not None:
                remaining = min(remaining, max(0.0, wake_at - now))
            await wait_arrival(self, asyncio.get_running_loop(), remaining)
            if self.closed:
                raise Closed("this subscription is closed")
            await self.ensure()

    def _deaths_map(self) -> tuple[dict[str, tuple[str, int]], dict[str, int]]:
        if self._deaths is None:
            self._deaths = self.t.group_of_queue()
        return self._deaths

    def _identify(self, e: Entry, message_id: str | None, death_queue: str | None) -> str:
        tm = self.tm
        if message_id is not None and death_queue is None:
            try:
                ref = parse_id(message_id)
                if topic_key(ref.topic) == topic_key(tm.name) \
                        and ref.incarnation == tm.incarnation:
                    return message_id
            except UnknownMessage:
                pass
        extra = death_queue if death_queue is not None else \
            f"{self.id}:{e.seq}" if message_id is None else ""
        return make_id(tm.name, tm.incarnation, e.partition, offset_of(message_id, extra))

    async def _admit(self, e: Entry) -> Delivery | None:
        s = self.settings
        ch = self._check()
        msg = e.msg
        d = decode(msg.body, msg.header.properties)
        rec = d.record
        if d.death_queue is not None:
            if self._deaths is None or d.death_queue not in self._deaths[0]:
                self._deaths = None
            names, limits = self._deaths_map()
            rec = with_origin(d, names, limits)
        mid = self._identify(e, d.message_id, d.death_queue)
        offset = parse_id(mid).offset
        headers = rec.headers or {}
        if (not self.filter.trivial or GROUP_HEADER in headers) \
                and not self.filter.matches(rec.routing_key, headers):
            self.settling.add(e.tag)
            try:
                await ch.basic_ack(e.tag)  # filtered out: as if acknowledged (SPEC §5)
            finally:
                self.settling.discard(e.tag)
            return None
        now_us = time.time_ns() // 1000
        if rec.deliver_at_us and rec.deliver_at_us > now_us + _EARLY_US:
            ready = time.monotonic() + (rec.deliver_at_us - now_us) / 1e6
            if self.ordered:
                self.buffers[e.partition].appendleft(e)
                self.blocked[e.partition] = ready
            else:
                self.later.append((ready, e))
                self.later.sort(key=lambda x: x[0])
            return None
        count = d.base_count + d.server_count + 1 + e.extra
        ttl = s.ttl_us(rec.ttl_us)
        if ttl and now_us > max(d.timestamp_us, rec.deliver_at_us) + ttl:
            await self._dead_letter(e, mid, offset, rec, count - 1, "expired")
            return None
        if count > s.max_deliveries:
            await self._dead_letter(e, mid, offset, rec, count - 1, "max_deliveries")
            return None
        self.held[mid] = Held(e, mid, offset, count, rec, d.timestamp_us,
                              time.monotonic() + s.ack_timeout)
        self.late.pop(mid, None)
        shown = headers
        if GROUP_HEADER in shown:
            shown = {k: v for k, v in shown.items() if k != GROUP_HEADER}
        return Delivery(mid, self.tm.name, e.partition, offset, d.timestamp_us, rec.body,
                        rec.key, rec.routing_key, shown, rec.priority, count)

    async def _dead_letter(self, e: Entry, mid: str, offset: int, rec: Record, count: int,
                           reason: str) -> None:
        """Publish the dead letter to the group's dead-letter exchange, wait for the confirm,
        then ack the original (see the module docstring)."""
        t = self.t
        letter = dead_letter_records(self.tm.name, self.group,
                                     [DeadLetter(rec, e.partition, offset, count, reason)],
                                     [mid], time.time_ns() // 1000,
                                     self.settings.dead_letter_routing_key)[0]
        self.settling.add(e.tag)
        try:
            try:
                dlq = await t.topic(self.dlq)
                dl_id = make_id(dlq.name, dlq.incarnation, 0, t.next_offset())
            except TideMQError:
                dl_id = make_id(self.dlq, 0, 0, t.next_offset())
            body, props = encode(letter, dl_id, time.time_ns() // 1000)
            send = await t.publish_raw(self.tm.dlx(self.group),
                                       routing_key_for(e.partition, letter.routing_key), body,
                                       props)
            await t.confirmed([send], f"dead-lettering {mid!r}")
            await self._check().basic_ack(e.tag)
        finally:
            self.settling.discard(e.tag)

    # -- settling ---------------------------------------------------------------------------

    def _take(self, ids: Sequence[str]) -> list[Held]:
        self._check()
        out: list[Held] = []
        for mid in ids:
            h = self.held.pop(mid, None)
            if h is None:
                parse_id(mid)  # a malformed id raises UnknownMessage itself
                if mid in self.late and mid in self.t.acked:
                    continue  # acked by another member of this client since: idempotent
                for got in out:  # nothing of this call changes
                    self.held[got.id] = got
                if mid in self.late:
                    raise StaleLease(f"the lease on {mid!r} ran out, or the message was taken "
                                     "back behind a failed one (ordered groups), and it will "
                                     "be delivered again; nothing changed")
                raise UnknownMessage(f"message {mid!r} is not held by this subscription "
                                     "(already settled, or its lease ended)")
            out.append(h)
        return out

    def ack(self, ids: Sequence[str]) -> Awaitable[None]:
        """Take the messages now (raising at once for an id not held) and send the acks (a
        task on the transport's loop: called outside it, by the blocking client, the acks
        leave when the loop next runs); the task ends when they are written.
        :meth:`flush` waits for all of them and raises the first failure."""
        held = self._take(ids)
        ch = self._check()
        acked = self.t.acked
        for h in held:
            acked[h.id] = None
        while len(acked) > 10_000:
            del acked[next(iter(acked))]

        top = max((h.tag for h in held), default=0)
        multiple = len(held) > 1 and self._covers(top)

        async def send() -> None:
            try:
                if multiple:  # one frame for the whole batch
                    await ch.basic_ack(top, multiple=True)
                    return
                last = len(held) - 1
                for i, h in enumerate(held):  # frames in order; wait for the last one only
                    await ch.basic_ack(h.tag, wait=i == last)
            except (aiormq.exceptions.AMQPError, ConnectionError,
                    aiormq.exceptions.ChannelInvalidStateError) as exc:
                raise ConnectionLost(f"acks of member {self.id!r} were not sent ({exc!r}); "
                                     "the messages will be delivered again") from None

        fut = self.t.loop.create_task(send())
        fut.add_done_callback(_retrieved)
        self.acks.append(fut)
        if len(self.acks) > 64:
            self.acks = [a for a in self.acks if not a.done() or a.exception() is not None]
        return fut

    def _covers(self, top: int) -> bool:
        """Whether ``basic.ack(top, multiple=True)`` acks nothing but what is being acked: no
        delivery tag up to ``top`` is still held, buffered or being settled otherwise."""
        if any(t <= top for t in self.settling):
            return False
        if any(h.tag <= top for h in self.held.values()):
            return False
        if any(e.tag <= top for _, e in self.later):
            return False
        return not any(b and min(e.tag for e in b) <= top for b in self.buffers)

    async def flush(self) -> None:
        """Every ack sent before this call was processed by the channel: a synchronous
        ``basic.qos`` after them is answered only then."""
        acks, self.acks = self.acks, []
        first: BaseException | None = None
        for a in acks:
            try:
                await a
            except TideMQError as exc:
                first = first or exc
        if first is not None:
            raise first
        if self.ch is not None and not self.ch.is_closed:
            try:
                await asyncio.wait_for(self.ch.basic_qos(prefetch_count=self.per_consumer),
                                       self.t.timeout)
            except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
                raise ConnectionLost(f"acks of member {self.id!r} were not confirmed "
                                     f"({exc!r}); the messages may be delivered again") \
                    from None

    def _hand_back(self, h: Held, delay: float) -> None:
        """Ordered groups: ``h`` and every later message held of its partition go back to
        the front of the partition's buffer, in order, blocked for ``delay``; one more
        delivery is counted for each."""
        p = h.partition
        back = [x for x in self.held.values() if x.partition == p and x.entry.seq > h.entry.seq]
        for x in back:
            del self.held[x.id]
            self.late[x.id] = None  # acking it before its turn would break the order
        for x in sorted([h, *back], key=lambda x: x.entry.seq, reverse=True):
            x.entry.extra += 1
            self.buffers[p].appendleft(x.entry)
        self.blocked[p] = time.monotonic() + max(0.0, delay)
        self._arrived()

    async def nack(self, ids: Sequence[str], delay: float | None) -> None:
        t = self.t
        for h in self._take(ids):
            if h.count >= self.settings.max_deliveries:
                await self._dead_letter(h.entry, h.id, h.offset, h.record, h.count,
                                        "max_deliveries")
                continue
            d = self.settings.backoff.delay(h.count) if delay is None else delay
            if self.ordered:
                self._hand_back(h, d)
                continue
            ch = self._check()
            self.settling.add(h.tag)
            try:
                if d <= 0:
                    await ch.basic_nack(h.tag, requeue=True)
                    continue
                from ._rabbit import quantize_ms

                queue = self.tm.queue(self.group, h.partition)
                wq = await t.wait_queue(quantize_ms(d), queue, to_exchange=False)
                body, props = encode(h.record, h.id, h.timestamp_us, count=h.count,
                                     expiration=False)
                props["headers"][WAIT_HEADER] = wq
                send = await t.publish_raw(t.wait_exchange, queue, body, props)
                await t.confirmed([send], f"delaying {h.id!r}")
                await ch.basic_ack(h.tag)
            finally:
                self.settling.discard(h.tag)

    async def reject(self, ids: Sequence[str], reason: str) -> None:
        for h in self._take(ids):
            await self._dead_letter(h.entry, h.id, h.offset, h.record, h.count, reason)

    async def extend(self, ids: Sequence[str], seconds: float) -> None:
        """Move the leases of the held ones among ``ids``; then raise for the first that is
        not held (so one settled id in a batch does not cost the others their extension)."""
        self._check()
        now = time.monotonic()
        missing = None
        for mid in ids:
            h = self.held.get(mid)
            if h is None:
                missing = missing or mid
                continue
            h.deadline = now + seconds
        self.wake_keeper.set()
        if missing is not None:
            parse_id(missing)
            if missing in self.late:
                raise StaleLease(f"the lease on {missing!r} ran out before the extension")
            raise UnknownMessage(f"message {missing!r} is not held by this subscription")

    async def _expire(self) -> None:
        now = time.monotonic()
        gone = [h for h in self.held.values() if h.deadline <= now]
        for h in sorted(gone, key=lambda x: x.entry.seq):
            if h.id not in self.held:
                continue  # handed back with an earlier one
            self.late[h.id] = None
            if self.ordered:
                del self.held[h.id]
                self._hand_back(h, 0.0)
            else:
                del self.held[h.id]
                ch = self.ch
                if ch is not None and not ch.is_closed:
                    self.settling.add(h.tag)
                    try:
                        await ch.basic_nack(h.tag, requeue=True)
                    finally:
                        self.settling.discard(h.tag)
        while len(self.late) > 4 * self.prefetch + 1000:
            del self.late[next(iter(self.late))]

    async def _keeper(self) -> None:
        """Return messages whose lease ran out; sleeps until the next deadline. (Stops at
        ``closed`` too: Python 3.11's wait_for can lose the cancel of close().)"""
        while not self.closed:
            try:
                await self._expire()
            except Exception as exc:  # never let the keeper die
                log.warning("member %s: returning expired leases failed (%r)", self.id, exc)
            self.wake_keeper.clear()
            due = min((h.deadline for h in self.held.values()), default=None)
            self.keeper_due = due
            wait = None if due is None else max(0.01, due - time.monotonic())
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self.wake_keeper.wait(), wait)
