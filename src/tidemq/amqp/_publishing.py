"""The session's publishing: content assembly, routing, batched storing, confirms (a mixin
of :class:`~._session.Session`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pamqp import commands as C
from pamqp.base import Frame as Method

from ..broker import SyncToken
from ..errors import BacklogFull, TideMQError
from ..storage import Record
from ._channel import Channel, Pending
from ._errors import AmqpError, from_tidemq
from ._frames import Header, encode_confirm, encode_content_raw
from ._model import DELAYED, Exchange, Queue, queue_topic
from ._props import delay_ms, to_record

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..server._fronts import Backend
    from ._front import AmqpFront
    from ._model import Catalogue

__all__ = ["Publishing"]

log = logging.getLogger("tidemq.amqp")


class Publishing:
    """basic.publish (with its content), confirm.select, basic.return; see _store_publishes."""

    if TYPE_CHECKING:  # what the mixin uses of the Session (``_session.py``)
        b: Backend
        catalogue: Catalogue
        front: AmqpFront
        out: list[bytes]
        frame_max: int
        state: str
        channels: dict[int, Channel]
        _outbox: list[tuple[str, Channel, int, Record]]
        _held_since: int | None
        _blocked_since: int | None
        _singles: int
        reading: Callable[[bool], None]

        def send(self, channel: int, method: Method) -> None: ...
        def flush(self) -> None: ...
        def may(self, op: str, kind: str, name: str) -> None: ...
        def channel_error(self, ch: Channel, exc: AmqpError, method: Any = None) -> None: ...
        def connection_error(self, exc: AmqpError, method: Method | None = None) -> None: ...
        def feed(self, data: bytes) -> None: ...

    # --- basic: publish ----------------------------------------------------------------------

    def _basic_publish(self, ch: Channel, m: C.Basic.Publish) -> None:
        ch.pending = Pending(m)
        if ch.confirm:
            ch.publish_seq += 1
        if m.immediate:
            raise AmqpError(540, "NOT_IMPLEMENTED - immediate=true", connection=True)
        ex = self.catalogue.exchange(m.exchange) if m.exchange else None
        if ex is not None and ex.internal:
            raise AmqpError(403, f"ACCESS_REFUSED - cannot publish to internal exchange "
                                 f"'{ex.name}'")
        self.may("publish", "topic", ex.topic if ex is not None else queue_topic(m.routing_key))

    def _content_header(self, ch: Channel, frame: Header) -> None:
        h = frame.decoded
        p = ch.pending
        if p is None or p.size >= 0:
            raise AmqpError(505, "UNEXPECTED_FRAME - content header without basic.publish",
                            connection=True)
        limit: int = self.b.config.max_frame_bytes
        if h.body_size > limit:
            ch.pending = None
            raise AmqpError(406, f"PRECONDITION_FAILED - message size {h.body_size} is larger "
                                 f"than the configured max size {limit}")
        # Content being assembled on all channels together: at most max_held_bytes (or one
        # largest message), so 2047 channels cannot each announce max_frame_bytes.
        held = sum(c.pending.size for c in self.channels.values()
                   if c.pending is not None and c.pending.size > 0)
        room = max(self.b.config.max_held_bytes, limit)
        if held + h.body_size > room:
            ch.pending = None
            raise AmqpError(406, f"PRECONDITION_FAILED - {held + h.body_size} bytes of content "
                                 f"in flight on this connection, above {room} (max_held_bytes); "
                                 "publish large messages one at a time")
        p.size = h.body_size
        p.props = h.properties
        p.raw = frame.raw_properties
        if p.size == 0:
            ch.pending = None
            self._publish(ch, p, b"")

    def _content_body(self, ch: Channel, data: bytes) -> None:
        p = ch.pending
        if p is None or p.size < 0:
            raise AmqpError(505, "UNEXPECTED_FRAME - content body without a header",
                            connection=True)
        p.chunks.append(data)
        p.got += len(data)
        if p.got > p.size:
            raise AmqpError(501, "FRAME_ERROR - more body than the header announced",
                            connection=True)
        if p.got == p.size:
            ch.pending = None
            self._publish(ch, p, p.chunks[0] if len(p.chunks) == 1 else b"".join(p.chunks))

    def _publish(self, ch: Channel, p: Pending, body: bytes) -> None:
        """Route a complete publish; what routes somewhere joins the outbox."""
        m = p.method
        seq = ch.publish_seq
        cat = self.catalogue
        rk = m.routing_key or ""
        headers, priority, ttl_us = to_record(p.props, p.raw)
        deliver_at = 0
        if m.exchange == "":
            q = cat.queues.get(rk)
            targets: list[Queue] = [] if q is None else [q]
            topic = "" if q is None else q.topic
        else:
            ex: Exchange = cat.exchange(m.exchange)
            delay = delay_ms(p.props) if ex.type == DELAYED else 0
            if delay:
                # Held by the broker's delay store and appended to the exchange's topic when
                # due: the queues bound then get it (as the plugin routes at the end of the
                # delay), so it is stored whether or not a queue is bound now.
                deliver_at = self.b.now_us() + delay * 1000
                targets, topic = cat.route(ex, rk, headers), ex.topic
            else:
                at, targets = cat.route_on(ex, rk, headers)
                topic = at.topic
                if at is not ex:  # an alternate exchange's
                    self.may("publish", "topic", topic)
        if not targets and not deliver_at:
            if m.mandatory:
                self.send(ch.number, C.Basic.Return(reply_code=312, reply_text="NO_ROUTE",
                                                    exchange=m.exchange, routing_key=rk))
                self.out.append(encode_content_raw(ch.number, p.raw or b"\x00\x00", body,
                                                   self.frame_max))
            if ch.confirm:
                self._confirm(ch, [seq], True)
            return
        record = Record(body, None, rk or None, headers, priority, deliver_at, ttl_us)
        self._outbox.append((topic, ch, seq if ch.confirm else 0, record))

    # Publishes are stored in batches: those that arrive together (one read of the socket)
    # and go to one topic are one broker.publish call, one batch in the log and one durability
    # point — a pipelining publisher (aio-pika, kombu) pays the per-call cost once per read.
    # The outbox is stored before any other method is handled, so every other operation (a
    # get, a declare's count, a purge) sees every publish made before it.

    def _store_publishes(self) -> None:
        """Store the outbox: runs of consecutive publishes to one topic, one call each. Stops
        (holding the rest, not reading) while a topic's backlog is full under policy block."""
        box = self._outbox
        b = self.b
        while box and self._held_since is None:
            topic = box[0][0]
            n = 1
            if not self._singles:
                while n < len(box) and box[n][0] == topic:
                    n += 1
            run = box[:n]
            try:
                result = b.broker.publish(topic, [o[3] for o in run], now_us=b.now_us())
            except BacklogFull as exc:
                mono = b.mono_us()
                since = self._blocked_since or mono
                try:
                    wait = b.driver.core.blocked(topic, exc, since, mono)
                except BacklogFull as final:  # policy reject, or waited block_timeout
                    self._blocked_since = None
                    self._refuse(run, final)
                    del box[:n]
                    continue
                self._blocked_since = since
                self._held_since = since
                self.reading(False)
                self.front.call_later(wait, self._retry)
                return
            except TideMQError as exc:
                if n > 1:  # one of them is refused (too large ...): one at a time
                    self._singles = n
                    continue
                self._refuse(run, exc)
            else:
                self._blocked_since = None
                self._confirm_when_durable(run, result.token)
            finally:
                b.want_push()
            del box[:n]
            if self._singles:
                self._singles -= 1

    def _refuse(self, run: list[tuple[str, Channel, int, Record]], exc: TideMQError) -> None:
        """Publishes the broker refused: nacked under confirms; else a message too large
        closes its channel (406, as RabbitMQ), a full backlog drops it (reject-publish)."""
        log.info("AMQP publish to %s refused: %s", run[0][0], exc)
        for _, ch, seq, _ in run:
            if seq:
                self._confirm(ch, [seq], False)
            elif not isinstance(exc, BacklogFull) and not ch.closing \
                    and self.channels.get(ch.number) is ch:
                self.channel_error(ch, from_tidemq(exc))

    def _retry(self) -> None:
        """The held publishes may fit now: try again, then read what arrived meanwhile."""
        self._held_since = None
        if self.state != "open":
            return
        self._store_publishes()
        if self._held_since is None:
            self.reading(True)
            self.feed(b"")
        self.flush()

    def _confirm_when_durable(self, run: list[tuple[str, Channel, int, Record]],
                              token: SyncToken) -> None:
        confirms: dict[Channel, list[int]] = {}
        for _, ch, seq, _ in run:
            if seq:
                confirms.setdefault(ch, []).append(seq)
        if not confirms:
            return

        def done(exc: BaseException | None) -> None:
            if self.state != "open":
                return
            for ch, seqs in confirms.items():
                if self.channels.get(ch.number) is ch and not ch.closing:
                    self._confirm(ch, seqs, exc is None)
            self.flush()

        if not self.b.broker.needs_sync(token):
            for ch, seqs in confirms.items():
                self._confirm(ch, seqs, True)
            return
        self.b.driver.after_sync(token, done)

    def _confirm(self, ch: Channel, seqs: list[int], ok: bool) -> None:
        """Confirm (or, not ``ok``, nack) the channel's publishes ``seqs`` (ascending): one
        ``basic.ack`` with ``multiple`` when they are the next ones in a row after every tag
        already confirmed (a pipelining publisher's batch: one frame for all, as RabbitMQ
        does), else one frame each."""
        low = ch.confirmed_to
        if ok and seqs[0] == low + 1 and seqs[-1] - seqs[0] == len(seqs) - 1:
            self.out.append(encode_confirm(ch.number, seqs[-1], len(seqs) > 1))
            low = seqs[-1]
        else:
            for seq in seqs:
                self.out.append(encode_confirm(ch.number, seq, False, ok))
            ch.confirmed_above.update(seqs)
        above = ch.confirmed_above
        while low + 1 in above:
            low += 1
            above.discard(low)
        ch.confirmed_to = low

    def _confirm_select(self, ch: Channel, m: C.Confirm.Select) -> None:
        ch.confirm = True
        if not m.nowait:
            self.send(ch.number, C.Confirm.SelectOk())
