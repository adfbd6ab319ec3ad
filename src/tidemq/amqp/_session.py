"""One AMQP 0-9-1 connection as a session object: bytes in, broker calls, bytes out.

The session never touches a socket: :meth:`Session.feed` takes what the peer sent, and every
answer goes through the ``write`` callable it was given (buffered, flushed once per input pass
or push step). The asyncio protocol in :mod:`._front` is a thin shell around it; the things
that take time — a password's key derivation, a publish's fsync before its confirm — come
back through callbacks on the loop.

Connection states: ``header`` (waiting for ``AMQP0091``) -> ``start`` (Start sent, waiting for
Start-Ok) -> ``auth`` (checking the password) -> ``tune`` -> ``open`` (Open received) ->
``closing`` (Close sent: only Close-Ok counts) -> ``closed``.

Publishing (:mod:`._publishing`) and consuming (:mod:`._delivering`) are mixins of the
session, kept apart so that each module can be read in one sitting.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pamqp import commands as C
from pamqp import decode
from pamqp.base import Frame as Method

from ..errors import AuthenticationFailed, TideMQError
from ..security import Principal
from ..storage import Record
from ._channel import Channel, Consumer
from ._delivering import Delivering
from ._errors import REPLY_TEXT, AmqpError, from_tidemq
from ._frames import HEARTBEAT, Body, FrameError, FrameReader, Header, encode_method
from ._model import Queue, check_queue_arguments, queue_topic
from ._publishing import Publishing

if TYPE_CHECKING:
    from ._front import AmqpFront

__all__ = ["Session", "PRODUCT"]

log = logging.getLogger("tidemq.amqp")

PRODUCT: Final = "TideMQ"
CHANNEL_MAX: Final = 2047
FRAME_MAX: Final = 131072  # RabbitMQ's default; the config's max_frame_bytes caps it
HEARTBEAT_S: Final = 60
_ids = itertools.count(1)


class Session(Publishing, Delivering):
    """One AMQP connection (see the module docstring). Runs on the server's loop."""

    def __init__(self, front: AmqpFront, peer_ip: str, write: Callable[[bytes], None],
                 close: Callable[[], None], *, loopback: bool) -> None:
        self.id = next(_ids)
        self.front = front
        self.b = front.backend
        self.catalogue = front.catalogue
        self.peer_ip = peer_ip
        self.loopback = loopback
        self._write = write
        self._close_transport = close
        self.state = "header"
        cfg = self.b.config
        self.reader = FrameReader(cfg.max_hello_bytes)
        self.frame_max = min(FRAME_MAX, cfg.max_frame_bytes)
        self.heartbeat = 0
        self.channel_max = CHANNEL_MAX
        self.channels: dict[int, Channel] = {}
        self.principal: Principal | None = None
        self.user = ""
        self.out: list[bytes] = []
        self.writable = True
        self.last_read = self.last_write = time.monotonic()
        self._pump_soon: set[Consumer] = set()
        # basic.ack'ed message ids by broker member, applied together (Delivering._flush_acks)
        self._acks: dict[str, list[str]] = {}
        self._pump_scheduled = False
        # Routed publishes not yet stored: (topic, channel, confirm seq or 0, record); see
        # _store_publishes. While a topic's backlog is full (policy block) they are held
        # (_held_since: since when, mono µs) and no more input is handled.
        self._outbox: list[tuple[str, Channel, int, Record]] = []
        self._held_since: int | None = None
        self._blocked_since: int | None = None
        self._singles = 0  # publishes to store one at a time (a batch was refused)
        self._early: tuple[int, Any] | None = None  # a frame that came while held
        self.reading: Callable[[bool], None] = lambda on: None  # the shell's pause/resume

    # --- output ------------------------------------------------------------------------------

    def send(self, channel: int, method: Method) -> None:
        self.out.append(encode_method(channel, method))

    def flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            self.last_write = time.monotonic()
            self._write(data)

    # --- input -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Handle what the peer sent; answers are written before this returns (except those
        that wait: auth, confirms)."""
        self.last_read = time.monotonic()
        if self.state == "closed":
            return
        self.reader.feed(data)
        try:
            if self._early is not None and self._held_since is None:
                channel, frame = self._early
                self._early = None
                self._frame(channel, frame)
            while self.state != "closed" and self._held_since is None:
                got = self.reader.next_frame()
                if got is False:
                    break
                if got is True:
                    self._start()
                    continue
                assert not isinstance(got, bool)
                channel, frame = got
                self._frame(channel, frame)
        except FrameError as exc:
            if not self.reader.header_seen:
                self.bad_header()
                return
            self.connection_error(AmqpError(exc.code, f"{REPLY_TEXT.get(exc.code, '')} - "
                                                      f"{exc.text}", connection=True))
        except AmqpError as exc:
            self.connection_error(exc)
        if self._outbox and self.state == "open":
            self._store_publishes()
        if self._acks:
            self._flush_acks()
        self._pump_now()
        self.flush()

    def bad_header(self) -> None:
        """The peer did not open with AMQP 0-9-1's header: tell it ours, then hang up."""
        self._write(b"AMQP\x00\x00\x09\x01")
        self.end()

    def _frame(self, channel: int, frame: Any) -> None:
        if frame is None:  # heartbeat
            return
        if self.state == "closing":
            if isinstance(frame, C.Connection.CloseOk | C.Connection.Close):
                if isinstance(frame, C.Connection.Close):
                    self.send(0, C.Connection.CloseOk())
                    self.flush()
                self.end()
            return
        if self._acks and not isinstance(frame, C.Basic.Ack):
            self._flush_acks()  # what was acked before is acked before this
        if self._outbox and isinstance(frame, Method) and not isinstance(frame, C.Basic.Publish):
            self._store_publishes()  # what was published before is stored before this
            if self._held_since is not None:
                self._early = (channel, frame)
                return
        if channel == 0:
            if not isinstance(frame, Method):
                raise AmqpError(505, "UNEXPECTED_FRAME - content on channel 0")
            self._connection_method(frame)
            return
        if self.state != "open":
            raise AmqpError(504, "CHANNEL_ERROR - channel before connection.open")
        ch = self.channels.get(channel)
        if ch is None:
            if isinstance(frame, C.Channel.Open):
                if channel > self.channel_max:
                    raise AmqpError(504, f"CHANNEL_ERROR - channel {channel} > channel_max")
                self.channels[channel] = Channel(channel)
                self.send(channel, C.Channel.OpenOk())
                return
            raise AmqpError(504, f"CHANNEL_ERROR - expected 'channel.open' on channel "
                                 f"{channel}")
        if ch.closing:
            if isinstance(frame, C.Channel.CloseOk | C.Channel.Close):
                if isinstance(frame, C.Channel.Close):
                    self.send(channel, C.Channel.CloseOk())
                self.channels.pop(channel, None)
            return
        try:
            if isinstance(frame, Header):
                self._content_header(ch, frame)
            elif isinstance(frame, Body):
                self._content_body(ch, frame.data)
            else:
                if ch.pending is not None:
                    raise AmqpError(505, "UNEXPECTED_FRAME - expected content, got "
                                         f"'{frame.name}'", connection=True)
                self._channel_method(ch, frame)
        except AmqpError as exc:
            if exc.connection:
                raise
            self.channel_error(ch, exc, frame)
        except TideMQError as exc:
            self.b.errors[exc.code] += 1  # tidemq_errors_total, shared with the other ports
            err = from_tidemq(exc)
            if err.connection:
                raise err from None
            self.channel_error(ch, err, frame)

    # --- connection --------------------------------------------------------------------------

    def _start(self) -> None:
        self.state = "start"
        self.send(0, C.Connection.Start(
            version_major=0, version_minor=9,
            server_properties={
                "product": PRODUCT, "version": _version(), "platform": "Python",
                "information": "TideMQ's AMQP 0-9-1 front (docs/amqp.md)",
                "capabilities": {"publisher_confirms": True, "exchange_exchange_bindings":
                                 False, "basic.nack": True, "consumer_cancel_notify": True,
                                 "connection.blocked": False, "consumer_priorities": False,
                                 "authentication_failure_close": True,
                                 "per_consumer_qos": True, "direct_reply_to": False}},
            mechanisms="PLAIN AMQPLAIN", locales="en_US"))

    def _connection_method(self, m: Method) -> None:
        if isinstance(m, C.Connection.StartOk) and self.state == "start":
            self.state = "auth"
            self._authenticate(m)
        elif isinstance(m, C.Connection.TuneOk) and self.state == "tune":
            fm = m.frame_max or self.frame_max
            if fm < 4096:
                raise AmqpError(530, "NOT_ALLOWED - frame_max below 4096", connection=True)
            self.frame_max = min(fm, self.frame_max)
            self.channel_max = min(m.channel_max or CHANNEL_MAX, CHANNEL_MAX)
            self.heartbeat = m.heartbeat
            self.reader.frame_max = self.frame_max
            self.state = "tuned"
        elif isinstance(m, C.Connection.Open) and self.state == "tuned":
            if m.virtual_host not in ("/", ""):
                raise AmqpError(530, f"NOT_ALLOWED - vhost '{m.virtual_host}' not found "
                                     "(TideMQ has one: '/')", connection=True)
            self.state = "open"
            self.front.opened(self)
            self.send(0, C.Connection.OpenOk())
        elif isinstance(m, C.Connection.Close):
            self.send(0, C.Connection.CloseOk())
            self.flush()
            self.end()
        elif isinstance(m, C.Connection.CloseOk):
            self.end()
        else:
            raise AmqpError(503, f"COMMAND_INVALID - unexpected '{m.name}' in state "
                                 f"{self.state}", connection=True)

    def _authenticate(self, m: C.Connection.StartOk) -> None:
        try:
            user, password = _credentials(m.mechanism, m.response)
        except ValueError as exc:
            raise AmqpError(403, f"ACCESS_REFUSED - {exc}", connection=True) from None
        gate = self.b.gate
        if gate is None:
            if user == "guest" and password == "guest" and self.loopback:
                self._authenticated(None, user)
                return
            raise AmqpError(403, "ACCESS_REFUSED - Login was refused using authentication "
                                 f"mechanism {m.mechanism}: without a users file only "
                                 "guest/guest from loopback may connect", connection=True)
        try:
            check = gate.begin_password(user, password, peer_addr=self.peer_ip,
                                        now_s=time.time())
        except TideMQError as exc:
            raise AmqpError(403, f"ACCESS_REFUSED - {exc}", connection=True) from None
        if check.principal is not None:
            self._authenticated(check.principal, user)
            return

        def finished(exc: BaseException | None) -> None:
            if self.state != "auth":
                return
            try:
                if exc is not None:
                    raise exc
                principal = check.finish(time.time())
            except (AuthenticationFailed, TideMQError) as err:
                self.connection_error(AmqpError(403, f"ACCESS_REFUSED - {err}",
                                                connection=True))
            else:
                self._authenticated(principal, user)
            self.flush()

        self.front.in_thread(check.derive, finished)

    def _authenticated(self, principal: Principal | None, user: str) -> None:
        self.principal = principal
        self.user = user
        self.state = "tune"
        self.send(0, C.Connection.Tune(channel_max=CHANNEL_MAX, frame_max=self.frame_max,
                                       heartbeat=HEARTBEAT_S))

    def connection_error(self, exc: AmqpError, method: Method | None = None) -> None:
        """Send connection.close and wait (a little) for close-ok; nothing else counts."""
        if self.state in ("closing", "closed"):
            return
        if self.state in ("header", "start", "auth", "tune"):
            log.info("AMQP connection from %s refused: %s", self.peer_ip, exc.text)
        cls_id, meth_id = _ids_of(method)
        self.send(0, C.Connection.Close(reply_code=exc.code, reply_text=exc.text,
                                        class_id=cls_id, method_id=meth_id))
        self.flush()
        self.state = "closing"
        self._release()
        self.front.close_later(self)

    def channel_error(self, ch: Channel, exc: AmqpError, method: Any = None) -> None:
        cls_id, meth_id = _ids_of(method if isinstance(method, Method) else None)
        self.send(ch.number, C.Channel.Close(reply_code=exc.code, reply_text=exc.text,
                                             class_id=cls_id, method_id=meth_id))
        self._close_channel(ch)
        ch.closing = True

    def end(self) -> None:
        """The connection is over (closed by either side, or lost)."""
        if self.state == "closed":
            return
        self.state = "closed"
        self._release()
        self.front.closed(self)
        self._close_transport()

    def _release(self) -> None:
        for ch in list(self.channels.values()):
            self._close_channel(ch)
        self.front.drop_exclusive(self)

    # --- channels ----------------------------------------------------------------------------

    def _channel_method(self, ch: Channel, m: Method) -> None:
        handler = _HANDLERS.get(type(m))
        if handler is None:
            raise AmqpError(540, f"NOT_IMPLEMENTED - '{m.name}' is not supported by TideMQ",
                            connection=False)
        handler(self, ch, m)

    def _close_channel(self, ch: Channel) -> None:
        """Cancel its consumers and leave their groups: what it held unacked is delivered
        again (as RabbitMQ requeues it)."""
        for consumer in list(ch.consumers.values()):
            self._cancel(ch, consumer, closing=True)
        for u in ch.unacked.values():  # of consumers cancelled earlier, still settling
            c = u.consumer
            if c is not None and c.members:
                self._leave(c)
        for members in ch.getters.values():
            for mid, _ in members:
                self._unsubscribe(mid)
        ch.getters.clear()
        ch.unacked.clear()
        ch.pending = None

    def _unsubscribe(self, member: str) -> None:
        if self._acks:
            self._flush_acks()  # what the client acked stays acked when the member leaves
        self.b.external_members.pop(member, None)
        try:
            self.b.broker.unsubscribe(member, now_us=self.b.now_us(), mono_us=self.b.mono_us())
        except TideMQError:
            pass
        self.b.want_push()

    def may(self, op: str, kind: str, name: str) -> None:
        if self.principal is None or self.b.gate is None:
            return
        if not self.b.gate.allows(self.principal, op, kind, name):
            raise AmqpError(403, f"ACCESS_REFUSED - user '{self.user}' may not {op} {kind} "
                                 f"'{name}'")

    # --- channel class -----------------------------------------------------------------------

    def _channel_close(self, ch: Channel, m: C.Channel.Close) -> None:
        self._close_channel(ch)
        self.channels.pop(ch.number, None)
        self.send(ch.number, C.Channel.CloseOk())

    def _channel_flow(self, ch: Channel, m: C.Channel.Flow) -> None:
        ch.active = bool(m.active)
        self.send(ch.number, C.Channel.FlowOk(active=ch.active))
        if ch.active:
            self._pump_soon.update(ch.consumers.values())

    def _noop(self, ch: Channel, m: Method) -> None:
        pass

    # --- exchanges ---------------------------------------------------------------------------

    def _exchange_declare(self, ch: Channel, m: C.Exchange.Declare) -> None:
        _check_name(m.exchange, "exchange")
        if not m.passive:
            have = self.catalogue.exchanges.get(m.exchange)
            if have is None or have.type != m.exchange_type:
                self.may("admin", "topic", _topic_of_exchange(m.exchange))
        self.catalogue.declare_exchange(m.exchange, m.exchange_type, passive=m.passive,
                                        durable=m.durable, auto_delete=m.auto_delete,
                                        internal=m.internal,
                                        arguments=dict(m.arguments or {}))
        if not m.nowait:
            self.send(ch.number, C.Exchange.DeclareOk())

    def _exchange_delete(self, ch: Channel, m: C.Exchange.Delete) -> None:
        ex = self.catalogue.exchanges.get(m.exchange)
        if ex is not None:
            self.may("admin", "topic", ex.topic)
            for q in [q for q in self.catalogue.queues.values() if ex.name in q.bindings]:
                self._drop_source(q, ex.name)
            self.catalogue.delete_exchange(m.exchange, if_unused=m.if_unused)
        if not m.nowait:
            self.send(ch.number, C.Exchange.DeleteOk())

    # --- queues ------------------------------------------------------------------------------

    def _queue_declare(self, ch: Channel, m: C.Queue.Declare) -> None:
        name = m.queue
        _check_name(name, "queue")
        cat = self.catalogue
        if name == "":
            name = "amq.gen-" + secrets.token_urlsafe(16)
        q = cat.queues.get(name)
        if m.passive:
            if q is None:
                raise AmqpError(404, f"NOT_FOUND - no queue '{name}' in vhost '/'")
            self.front.check_owner(self, q)
        else:
            if name.startswith("amq.") and not name.startswith("amq.gen-"):
                raise AmqpError(403, f"ACCESS_REFUSED - queue name '{name}' contains reserved "
                                     "prefix 'amq.*'")
            args = check_queue_arguments(name, dict(m.arguments or {}))
            self.may("consume", "group", name)
            self.may("consume", "topic", queue_topic(name))
            dead = Queue(name, arguments=args).dead_letters
            if dead is not None:
                self.may("publish", "topic", dead[0])
            if q is not None:
                self.front.check_owner(self, q)
                if q.durable != m.durable or q.exclusive != m.exclusive \
                        or q.auto_delete != m.auto_delete or q.arguments != args:
                    raise AmqpError(406, f"PRECONDITION_FAILED - inequivalent arg for queue "
                                         f"'{name}' in vhost '/' (durable, exclusive, "
                                         "auto_delete or arguments differ)")
            else:
                q = cat.declare_queue(Queue(name, m.durable, m.exclusive, m.auto_delete, args,
                                            owner=self.id if m.exclusive else None))
        self.front.touch(q)
        if not m.nowait:
            self.send(ch.number, C.Queue.DeclareOk(queue=name,
                                                   message_count=cat.message_count(q),
                                                   consumer_count=q.consumers))

    def _queue(self, name: str) -> Queue:
        q = self.catalogue.queue(name)
        self.front.check_owner(self, q)
        return q

    def _queue_bind(self, ch: Channel, m: C.Queue.Bind) -> None:
        q = self._queue(m.queue)
        ex = self.catalogue.exchange(m.exchange)
        if ex.name == "":
            raise AmqpError(403, "ACCESS_REFUSED - operation not permitted on the default "
                                 "exchange")
        self.may("consume", "group", q.name)
        self.may("consume", "topic", ex.topic)
        if self.catalogue.bind(q, ex, m.routing_key, dict(m.arguments or {})) \
                and len(q.bindings[ex.name]) == 1:
            self.front.source_added(q, ex.name)
        if not m.nowait:
            self.send(ch.number, C.Queue.BindOk())

    def _queue_unbind(self, ch: Channel, m: C.Queue.Unbind) -> None:
        q = self._queue(m.queue)
        ex = self.catalogue.exchange(m.exchange)
        self.may("consume", "group", q.name)
        if self.catalogue.unbind(q, ex, m.routing_key, dict(m.arguments or {})):
            self.front.source_removed(q, ex.name)
        self.send(ch.number, C.Queue.UnbindOk())

    def _queue_purge(self, ch: Channel, m: C.Queue.Purge) -> None:
        q = self._queue(m.queue)
        self.may("admin", "group", q.name)
        n = self.catalogue.purge(q)
        if not m.nowait:
            self.send(ch.number, C.Queue.PurgeOk(message_count=n))

    def _queue_delete(self, ch: Channel, m: C.Queue.Delete) -> None:
        q = self.catalogue.queues.get(m.queue)
        n = 0
        if q is not None:
            self.front.check_owner(self, q)
            self.may("admin", "group", q.name)
            if m.if_unused and q.consumers:
                raise AmqpError(406, f"PRECONDITION_FAILED - queue '{q.name}' in use")
            if m.if_empty and self.catalogue.message_count(q):
                raise AmqpError(406, f"PRECONDITION_FAILED - queue '{q.name}' not empty")
            n = self.front.delete_queue(q)
        if not m.nowait:
            self.send(ch.number, C.Queue.DeleteOk(message_count=n))

    def _drop_source(self, q: Queue, exchange: str) -> None:
        self.front.source_removed(q, exchange)

    # --- timers ------------------------------------------------------------------------------

    def check_heartbeat(self, now: float) -> None:
        """Send a heartbeat after heartbeat/2 s of our silence; hang up after two heartbeat
        intervals of the peer's."""
        hb = self.heartbeat
        if not hb or self.state != "open":
            return
        if now - self.last_read > 2 * hb:
            log.info("AMQP connection from %s missed heartbeats; closing", self.peer_ip)
            self.end()
            return
        if now - self.last_write >= hb / 2:
            self.out.append(HEARTBEAT)
            self.flush()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tidemq")
    except Exception:
        return "0"


def _credentials(mechanism: str, response: Any) -> tuple[str, str]:
    data = response.encode("utf-8") if isinstance(response, str) else bytes(response or b"")
    if mechanism == "PLAIN":
        parts = data.split(b"\x00")
        if len(parts) != 3:
            raise ValueError("malformed PLAIN response")
        return parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
    if mechanism == "AMQPLAIN":
        try:
            _, table = decode.field_table(struct.pack(">I", len(data)) + data)
        except (ValueError, struct.error, IndexError) as exc:
            raise ValueError(f"malformed AMQPLAIN response: {exc}") from None
        user, password = table.get("LOGIN", ""), table.get("PASSWORD", "")
        if isinstance(user, bytes):
            user = user.decode("utf-8", "replace")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        return str(user), str(password)
    raise ValueError(f"unknown login mechanism {mechanism!r} (PLAIN or AMQPLAIN)")


def _ids_of(m: Method | None) -> tuple[int, int]:
    if m is None:
        return 0, 0
    index = getattr(m, "index", 0) or 0
    return index >> 16, index & 0xFFFF


def _check_name(name: str, what: str) -> None:
    if len(name) > 255:
        raise AmqpError(406, f"PRECONDITION_FAILED - {what} name longer than 255 characters")
    from pamqp.constants import DOMAIN_REGEX

    if not DOMAIN_REGEX["queue-name"].fullmatch(name):
        raise AmqpError(406, f"PRECONDITION_FAILED - {what} name {name!r} has characters "
                             "TideMQ does not take (letters, digits and -_.:@#,/+ and space)")


def _topic_of_exchange(name: str) -> str:
    from ._model import exchange_topic

    return exchange_topic(name)


_HANDLERS: dict[type, Callable[[Session, Channel, Any], None]] = {
    C.Channel.Close: Session._channel_close,
    C.Channel.Flow: Session._channel_flow,
    C.Channel.FlowOk: Session._noop,
    C.Exchange.Declare: Session._exchange_declare,
    C.Exchange.Delete: Session._exchange_delete,
    C.Queue.Declare: Session._queue_declare,
    C.Queue.Bind: Session._queue_bind,
    C.Queue.Unbind: Session._queue_unbind,
    C.Queue.Purge: Session._queue_purge,
    C.Queue.Delete: Session._queue_delete,
    C.Basic.Qos: Session._basic_qos,
    C.Basic.Consume: Session._basic_consume,
    C.Basic.Cancel: Session._basic_cancel,
    C.Basic.Publish: Session._basic_publish,
    C.Basic.Get: Session._basic_get,
    C.Basic.Ack: Session._basic_ack,
    C.Basic.Nack: Session._basic_nack,
    C.Basic.Reject: Session._basic_reject,
    C.Basic.Recover: Session._basic_recover,
    C.Basic.RecoverAsync: Session._basic_recover,
    C.Confirm.Select: Session._confirm_select,
}
