"""The session's consumers, deliveries and settlements (a mixin of :class:`~._session.Session`).

Each consumer holds one broker member per topic its queue reads (the queue's own topic and
one per bound exchange). The server's push pass hands those members' wake-ups here
(``Backend.external_members``), as it does for the HTTP API; a wake-up fetches up to the
consumer's credit (``basic.qos``) and writes ``basic.deliver`` frames while the connection's
output is below its high-water mark.

Refills are batched: while a consumer still holds deliveries, the credit its acks free is
fetched once it reaches a quarter of its prefetch (``Consumer.refill_at``), or
:data:`REFILL_WAIT` after it was first held back — not one fetch per ``basic.ack`` (a
one-message fetch costs about as much as a 25-message one). A consumer that acks as it goes
still has three quarters of its prefetch in hand; one that waits for more before it acks
gets them at most :data:`REFILL_WAIT` late.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

from pamqp import commands as C
from pamqp.base import Frame as Method

from ..broker import Delivery
from ..broker._limits import MAX_PREFETCH
from ..errors import TideMQError, UnknownMessage
from ._channel import Channel, Consumer, Unacked
from ._errors import AmqpError
from ._frames import encode_content_raw, encode_deliver
from ._model import Queue
from ._props import REJECTED, raw_properties

if TYPE_CHECKING:
    from ..server._fronts import Backend
    from ._front import AmqpFront
    from ._model import Catalogue

__all__ = ["Delivering", "CONSUMER_ARGUMENTS", "MAX_CONSUMERS_PER_CHANNEL", "REFILL_WAIT"]

log = logging.getLogger("tidemq.amqp")

MAX_CONSUMERS_PER_CHANNEL = 1000
REFILL_WAIT = 0.001  # s: the longest freed credit is held back for a batched refill
# basic.consume arguments: x-cancel-on-ha-failover asks to be cancelled when a mirrored
# queue fails over, which a TideMQ queue never does. Any other (x-priority, x-stream-offset …)
# would change what the consumer gets: refused (406), not ignored.
CONSUMER_ARGUMENTS = ("x-cancel-on-ha-failover",)


class Delivering:
    """basic.qos / consume / cancel / get / ack / nack / reject / recover, and pushing."""

    if TYPE_CHECKING:  # what the mixin uses of the Session (``_session.py``)
        b: Backend
        catalogue: Catalogue
        front: AmqpFront
        out: list[bytes]
        frame_max: int
        state: str
        channels: dict[int, Channel]
        writable: bool
        _pump_soon: set[Consumer]
        _pump_scheduled: bool
        _acks: dict[str, list[str]]

        def send(self, channel: int, method: Method) -> None: ...
        def flush(self) -> None: ...
        def may(self, op: str, kind: str, name: str) -> None: ...
        def _queue(self, name: str) -> Queue: ...
        def _unsubscribe(self, member: str) -> None: ...

    # --- basic: consumers --------------------------------------------------------------------

    def _basic_qos(self, ch: Channel, m: C.Basic.Qos) -> None:
        if m.prefetch_size:  # a byte limit on what is in flight: RabbitMQ refuses it too
            raise AmqpError(540, f"NOT_IMPLEMENTED - prefetch_size!=0 ({m.prefetch_size})",
                            connection=True)
        if m.prefetch_count > MAX_PREFETCH:
            raise AmqpError(406, f"PRECONDITION_FAILED - prefetch_count above {MAX_PREFETCH}")
        if m.global_:
            ch.global_prefetch = m.prefetch_count
        else:
            ch.prefetch = m.prefetch_count
        self.send(ch.number, C.Basic.QosOk())
        self._pump_soon.update(ch.consumers.values())

    def _basic_consume(self, ch: Channel, m: C.Basic.Consume) -> None:
        q = self._queue(m.queue)
        self.may("consume", "group", q.name)
        tag = m.consumer_tag or f"amq.ctag-{secrets.token_urlsafe(16)}"
        if tag in ch.consumers:
            raise AmqpError(530, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'",
                            connection=True)
        if len(ch.consumers) >= MAX_CONSUMERS_PER_CHANNEL:
            raise AmqpError(406, f"PRECONDITION_FAILED - at most {MAX_CONSUMERS_PER_CHANNEL} "
                                 "consumers per channel")
        for k in m.arguments or {}:
            if k not in CONSUMER_ARGUMENTS:
                raise AmqpError(406, f"PRECONDITION_FAILED - consumer argument {k!r} is not "
                                     f"supported (supported: {', '.join(CONSUMER_ARGUMENTS)})")
        others = self.front.consumers.get(q.name)
        if others and (m.exclusive or any(c.exclusive for c in others)):
            raise AmqpError(403, f"ACCESS_REFUSED - queue '{q.name}' in vhost '/' in "
                                 "exclusive use")
        consumer = Consumer(self, ch, tag, q, bool(m.no_ack), ch.prefetch, bool(m.exclusive))
        for _, topic in q.sources():
            self.may("consume", "topic", topic)
        if q.single_active and others:
            consumer.standby = True  # the queue has its active consumer
        else:
            self.activate(consumer)
        ch.consumers[tag] = consumer
        self.front.consumer_added(consumer)
        if not m.nowait:
            self.send(ch.number, C.Basic.ConsumeOk(consumer_tag=tag))
        self._pump_soon.add(consumer)

    def activate(self, consumer: Consumer) -> None:
        """Join the groups of every topic the consumer's queue reads (the caller pumps)."""
        consumer.standby = False
        for exchange, _ in consumer.queue.sources():
            self.add_member(consumer, exchange)

    def add_member(self, consumer: Consumer, exchange: str) -> None:
        b = self.b
        q = consumer.queue
        topic = q.topic if exchange == "" else self.catalogue.exchange(exchange).topic
        prefetch = MAX_PREFETCH if consumer.no_ack or not consumer.prefetch \
            else consumer.prefetch
        mid = b.broker.subscribe(topic, q.group, None, prefetch=prefetch, now_us=b.now_us(),
                                 mono_us=b.mono_us())
        consumer.members.append((mid, exchange))
        b.external_members[mid] = lambda: self.want_pump(consumer)
        b.want_push()

    def remove_member(self, consumer: Consumer, exchange: str) -> None:
        """The queue no longer reads ``exchange``'s topic (its group there was deleted)."""
        keep = []
        for mid, x in consumer.members:
            if x == exchange:
                self.b.external_members.pop(mid, None)
                for tag, u in list(consumer.channel.unacked.items()):
                    if u.member == mid:
                        del consumer.channel.unacked[tag]
                        consumer.unacked -= 1
            else:
                keep.append((mid, x))
        consumer.members = keep

    def _basic_cancel(self, ch: Channel, m: C.Basic.Cancel) -> None:
        consumer = ch.consumers.get(m.consumer_tag or "")
        if consumer is not None:
            self._cancel(ch, consumer)
        if not m.nowait:
            self.send(ch.number, C.Basic.CancelOk(consumer_tag=m.consumer_tag))

    def _cancel(self, ch: Channel, consumer: Consumer, *, closing: bool = False) -> None:
        """Stop the consumer; its unacked deliveries stay ackable until the channel closes
        (``closing``: now; its members leave their groups and what they held is delivered
        again)."""
        ch.consumers.pop(consumer.tag, None)
        for mid, _ in consumer.members:
            self.b.external_members.pop(mid, None)
        if closing or consumer.unacked <= 0:
            self._leave(consumer)
        else:  # leave once the last of its deliveries is settled
            consumer.prefetch = -1
        self._pump_soon.discard(consumer)
        self.front.consumer_removed(consumer)

    def _leave(self, consumer: Consumer) -> None:
        for mid, _ in consumer.members:
            self._unsubscribe(mid)
        consumer.members = []

    def cancelled_by_server(self, consumer: Consumer) -> None:
        """The queue was deleted: tell the client (consumer_cancel_notify)."""
        ch = consumer.channel
        if ch.consumers.get(consumer.tag) is consumer:
            ch.consumers.pop(consumer.tag, None)
            for mid, _ in consumer.members:  # gone with the queue's groups
                self.b.external_members.pop(mid, None)
            consumer.members = []
            if self.state == "open" and not ch.closing:
                self.send(ch.number, C.Basic.Cancel(consumer_tag=consumer.tag, nowait=True))
                self.flush()

    # --- pushing -----------------------------------------------------------------------------

    def want_pump(self, consumer: Consumer) -> None:
        self._pump_soon.add(consumer)
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.front.call_soon(self._pump_now)

    def resume(self) -> None:
        self.writable = True
        for ch in self.channels.values():
            self._pump_soon.update(ch.consumers.values())
        self._pump_now()

    def _pump_now(self) -> None:
        self._pump_scheduled = False
        if not self._pump_soon:
            return
        todo, self._pump_soon = self._pump_soon, set()
        again = False
        for consumer in todo:
            if self.writable and self.state == "open":
                try:
                    again |= self._pump(consumer)
                except TideMQError:
                    log.debug("fetch for consumer %s failed", consumer.tag, exc_info=True)
        self.flush()
        if again:
            for consumer in todo:
                self.want_pump(consumer)

    def _refill(self, consumer: Consumer) -> None:
        consumer.refill_timer = False
        consumer.refill_now = True
        self.want_pump(consumer)

    def _credit(self, consumer: Consumer) -> int:
        ch = consumer.channel
        if ch.consumers.get(consumer.tag) is not consumer or not ch.active or ch.closing:
            return 0
        push_batch: int = self.b.config.push_batch
        credit = push_batch
        if not consumer.no_ack:
            if consumer.prefetch:
                credit = min(credit, consumer.prefetch - consumer.unacked)
            if ch.global_prefetch:
                credit = min(credit, ch.global_prefetch - len(ch.unacked))
        return credit

    def _pump(self, consumer: Consumer) -> bool:
        """Deliver what the consumer may take now; True when more may be ready."""
        credit = self._credit(consumer)
        if credit <= 0 or not consumer.members:
            return False
        if consumer.refill_now:
            consumer.refill_now = False
        elif credit < consumer.refill_at and consumer.unacked > 0:
            if not consumer.refill_timer:  # batch the refill (see the module doc)
                consumer.refill_timer = True
                self.front.call_later(REFILL_WAIT, lambda: self._refill(consumer))
            return False
        b = self.b
        now, mono = b.now_us(), b.mono_us()
        members = consumer.members
        n = len(members)
        full = False
        for i in range(n):
            mid, exchange = members[(consumer.turn + i) % n]
            if credit <= 0:
                full = True
                break
            try:
                got = b.broker.fetch(mid, credit, now_us=now, mono_us=mono)
            except UnknownMessage:
                continue
            if not got:
                continue
            credit -= len(got)
            self._deliver(consumer, mid, exchange, got)
        consumer.turn += 1
        b.want_push()
        return full or credit <= 0 and self._credit(consumer) > 0

    def _deliver(self, consumer: Consumer, member: str, exchange: str,
                 got: list[Delivery]) -> None:
        ch = consumer.channel
        out = self.out
        fm = self.frame_max
        tag_ = consumer.tag
        ctag = tag_.encode()
        xname = exchange.encode()
        names = self.catalogue.death_names
        for d in got:
            tag = ch.next_tag
            ch.next_tag += 1
            out.append(encode_deliver(ch.number, ctag, tag, d.delivery_count > 1, xname,
                                      (d.routing_key or "").encode(),
                                      raw_properties(d.headers, d.priority, d.routing_key,
                                                     names), d.body, fm))
            if not consumer.no_ack:
                ch.unacked[tag] = Unacked(member, d.id, consumer)
        if consumer.no_ack:
            b = self.b
            b.broker.ack(member, [d.id for d in got], now_us=b.now_us(), mono_us=b.mono_us())
        else:
            consumer.unacked += len(got)

    # --- basic: settling ---------------------------------------------------------------------

    def _settle(self, ch: Channel, tag: int, multiple: bool, how: str) -> None:
        if multiple:
            tags = [t for t in ch.unacked if t <= tag] if tag else list(ch.unacked)
        else:
            if tag not in ch.unacked:
                raise AmqpError(406, f"PRECONDITION_FAILED - unknown delivery tag {tag}")
            tags = [tag]
        by_member: dict[str, list[str]] = {}
        leaving: list[Consumer] = []
        for t in tags:
            u = ch.unacked.pop(t)
            by_member.setdefault(u.member, []).append(u.message_id)
            c = u.consumer
            if c is not None:
                c.unacked -= 1
                if c.prefetch < 0:
                    if c.unacked <= 0 and c not in leaving:
                        leaving.append(c)  # cancelled: leave once this is settled
                else:
                    self._pump_soon.add(c)
        if ch.global_prefetch:
            self._pump_soon.update(ch.consumers.values())
        b = self.b
        if how == "ack":  # applied with the rest of this read's acks (_flush_acks)
            acks = self._acks
            for member, ids in by_member.items():
                acks.setdefault(member, []).extend(ids)
            by_member = {}
        for member, ids in by_member.items():
            now, mono = b.now_us(), b.mono_us()
            try:
                if how == "requeue":
                    b.broker.nack(member, ids, 0.0, now_us=now, mono_us=mono)
                else:
                    b.broker.reject(member, ids, REJECTED,
                                    now_us=now, mono_us=mono)
            except UnknownMessage:  # the member left (queue unbound or deleted)
                pass
        for c in leaving:
            self._leave(c)
        b.want_push()

    def _flush_acks(self) -> None:
        """Apply the acks gathered since the last call: one broker call per member for all
        the ``basic.ack`` frames of a read (a client acking each message sends many), before
        anything else of the session touches the broker's view of them."""
        acks, self._acks = self._acks, {}
        b = self.b
        for member, ids in acks.items():
            try:
                b.broker.ack(member, ids, now_us=b.now_us(), mono_us=b.mono_us())
            except UnknownMessage:  # the member left (queue unbound or deleted)
                pass
        b.want_push()

    def _basic_ack(self, ch: Channel, m: C.Basic.Ack) -> None:
        self._settle(ch, m.delivery_tag, m.multiple, "ack")

    def _basic_nack(self, ch: Channel, m: C.Basic.Nack) -> None:
        self._settle(ch, m.delivery_tag, m.multiple, "requeue" if m.requeue else "reject")

    def _basic_reject(self, ch: Channel, m: C.Basic.Reject) -> None:
        self._settle(ch, m.delivery_tag or 0, False, "requeue" if m.requeue else "reject")

    def _basic_recover(self, ch: Channel, m: Method) -> None:
        if ch.unacked:
            self._settle(ch, 0, True, "requeue")
        if isinstance(m, C.Basic.Recover):
            self.send(ch.number, C.Basic.RecoverOk())

    # --- basic: get --------------------------------------------------------------------------

    def _basic_get(self, ch: Channel, m: C.Basic.Get) -> None:
        q = self._queue(m.queue)
        self.may("consume", "group", q.name)
        b = self.b
        members = ch.getters.get(q.name)
        if members is None:
            members = []
            for exchange, topic in q.sources():
                self.may("consume", "topic", topic)
                members.append((b.broker.subscribe(topic, q.group, None, prefetch=MAX_PREFETCH,
                                                   now_us=b.now_us(), mono_us=b.mono_us()),
                                exchange))
            ch.getters[q.name] = members
        self.front.touch(q)
        for mid, exchange in members:
            try:
                got = b.broker.fetch(mid, 1, now_us=b.now_us(), mono_us=b.mono_us())
            except UnknownMessage:
                continue
            if got:
                d = got[0]
                tag = ch.next_tag
                ch.next_tag += 1
                self.send(ch.number, C.Basic.GetOk(
                    delivery_tag=tag, redelivered=d.delivery_count > 1, exchange=exchange,
                    routing_key=d.routing_key or "",
                    message_count=self.catalogue.message_count(q)))
                self.out.append(encode_content_raw(
                    ch.number, raw_properties(d.headers, d.priority, d.routing_key,
                                              self.catalogue.death_names), d.body,
                    self.frame_max))
                if m.no_ack:
                    b.broker.ack(mid, [d.id], now_us=b.now_us(), mono_us=b.mono_us())
                else:
                    ch.unacked[tag] = Unacked(mid, d.id, None)
                b.want_push()
                return
        self.send(ch.number, C.Basic.GetEmpty())
