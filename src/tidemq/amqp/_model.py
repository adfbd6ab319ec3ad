"""AMQP's model on TideMQ's (SPEC §5, docs/amqp.md): exchanges, queues and bindings.

- an **exchange** is a topic (named as the exchange when that is a valid topic name);
- a **queue** is a group: on its own topic (``amqp.q.<queue>``, where the default exchange
  puts what is published to the queue's name) and on the topic of each exchange it is bound to;
- a **binding** is that group's filter: the queue's binding keys to one exchange ORed as
  routing-key patterns (AMQP topic patterns are TideMQ's), none for fanout, header conditions
  for a headers exchange. A group made by a binding starts at the topic's end, so a queue sees
  only what is published after it was bound, as in RabbitMQ.

The catalogue (exchange types, queue flags and arguments, bindings) is kept as one JSON
document in the broker's metadata store (atomic write). Queues that do not outlive their
declarer (exclusive, auto-delete, non-durable) are in it too, so that after a restart their
groups and topics are found and deleted, as RabbitMQ forgets them.

Everything here runs on the server's event loop and calls the broker synchronously.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

import msgspec

from ..broker import Backoff, GroupSettings
from ..broker._filters import Filter, compile_filter
from ..broker._matcher import check_pattern
from ..broker._names import MAX_GROUP_NAME, topic_key
from ..broker._types import MAX_ACK_TIMEOUT, MAX_DELIVERIES
from ..errors import InvalidFilter, TideMQError, UnknownGroup, UnknownTopic
from ..server._fronts import Backend
from ..storage import MetaStore
from ._errors import AmqpError

__all__ = ["Catalogue", "Exchange", "Queue", "EXCHANGE_TYPES", "EXCHANGE_ARGUMENTS", "DELAYED",
           "QUEUE_ARGUMENTS"]

log = logging.getLogger("tidemq.amqp")

META_NAME: Final = "amqp-catalogue.json"
EXCHANGE_TYPES: Final = ("direct", "topic", "fanout", "headers")
# The delayed-message exchange of RabbitMQ's plugin (rabbitmq-delayed-message-exchange): it
# routes as its x-delayed-type and holds a message with an ``x-delay`` header (ms) that long —
# TideMQ's own delays (the record's deliver_at) underneath.
DELAYED: Final = "x-delayed-message"
EXCHANGE_ARGUMENTS: Final = ("alternate-exchange", "x-delayed-type")
MAX_ALTERNATES: Final = 8  # alternate exchanges followed for one publish (a chain, no loop)
QUEUE_ARGUMENTS: Final = frozenset({
    "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-message-ttl", "x-max-priority",
    "x-delivery-limit", "x-queue-type", "x-expires", "x-single-active-consumer",
    "x-queue-mode",
})
QUEUE_MODES: Final = ("default", "lazy")  # both are what a TideMQ queue is: kept in its log
QUEUE_TYPES: Final = ("classic", "quorum")  # a TideMQ queue is durable at its topic's level
MAX_PRIORITY_ARG: Final = 255  # RabbitMQ's largest x-max-priority
PREDECLARED: Final = {"amq.direct": "direct", "amq.topic": "topic", "amq.fanout": "fanout",
                      "amq.headers": "headers", "amq.match": "headers"}
_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_MAX_NAME: Final = 150  # room for the "amqp.q." prefix and ".dlq" within a topic name
QUEUE_TOPICS: Final = "amqp.q."  # a queue's own topic: QUEUE_TOPICS + its name (or hash)
# The front's own topics (queues' and hashed exchanges'): no exchange may be named into them.
_RESERVED_TOPICS: Final = (QUEUE_TOPICS, "amqp.x.")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:20]


# Both are asked per published message (the route's topic, the publish permission): their
# answers are kept, a bounded number, since a name's topic never changes.
@lru_cache(maxsize=4096)
def exchange_topic(name: str) -> str:
    """The topic of exchange ``name``: the name itself when it is a valid topic name."""
    if len(name) <= _MAX_NAME and _TOPIC_NAME.fullmatch(name):
        return name
    return f"amqp.x.h{_digest(name)}"


@lru_cache(maxsize=4096)
def queue_topic(name: str) -> str:
    """The queue's own topic (what the default exchange routes to it)."""
    if len(name) <= _MAX_NAME and _TOPIC_NAME.fullmatch(name):
        return QUEUE_TOPICS + name
    return f"{QUEUE_TOPICS}h{_digest(name)}"


def group_name(queue: str) -> str:
    return queue if len(queue) <= MAX_GROUP_NAME else f"amqp-{_digest(queue)}"


MAX_GROUP_NAME_HASHED: Final = len(group_name("q" * (MAX_GROUP_NAME + 1)))


@dataclass
class Exchange:
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def topic(self) -> str:
        return exchange_topic(self.name)

    @property
    def kind(self) -> str:
        """How it routes: its type, or a delayed-message exchange's x-delayed-type."""
        return str(self.arguments["x-delayed-type"]) if self.type == DELAYED else self.type


@dataclass
class Queue:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    # exchange name -> binding keys (or, for a headers exchange, a JSON of the header args)
    bindings: dict[str, list[str]] = field(default_factory=dict)
    owner: int | None = None  # the exclusive queue's connection (not stored)
    consumers: int = 0  # consumers open on it (not stored)
    had_consumer: bool = False  # auto-delete happens once the last one left
    expiry: Any = None  # the x-expires timer handle (not stored)

    @property
    def topic(self) -> str:
        return queue_topic(self.name)

    @property
    def group(self) -> str:
        return group_name(self.name)

    @property
    def message_ttl(self) -> float | None:
        """x-message-ttl as the groups' ``message_ttl`` (s; 0 ms is 1 µs: expired at once),
        None without."""
        ttl = self.arguments.get("x-message-ttl")
        return None if ttl is None else int(ttl) / 1000 or 1e-6

    @property
    def max_priority(self) -> int:
        """The groups' ``max_priority``: x-max-priority (TideMQ tells 0..9 apart), 0 without
        it — a RabbitMQ queue without x-max-priority delivers in publish order."""
        return min(int(self.arguments.get("x-max-priority", 0)), 9)

    @property
    def expires_head(self) -> bool:
        """Whether the front expires the queue's head by itself: it has x-message-ttl, or a
        dead-letter exchange that a message's own ``expiration`` would send it to."""
        args = self.arguments
        return "x-message-ttl" in args or "x-dead-letter-exchange" in args

    @property
    def dead_letters(self) -> tuple[str, str | None] | None:
        """``(topic, routing key)`` the queue's dead letters go to: x-dead-letter-exchange's
        topic — for the default exchange ``""``, the own topic of the queue named by
        x-dead-letter-routing-key — with that routing key (None: their own); None without a
        dead-letter exchange (the broker's ``<topic>.dlq``)."""
        args = self.arguments
        dlx = args.get("x-dead-letter-exchange")
        if dlx is None:
            return None
        rk = args.get("x-dead-letter-routing-key")
        return (queue_topic(rk) if dlx == "" else exchange_topic(dlx)), rk

    @property
    def single_active(self) -> bool:
        """x-single-active-consumer: one consumer gets the messages, the others wait."""
        return bool(self.arguments.get("x-single-active-consumer"))

    @property
    def transient(self) -> bool:
        return self.exclusive or self.auto_delete or not self.durable

    def sources(self) -> list[tuple[str, str]]:
        """(exchange name, topic) of every topic the queue's group reads: its own first."""
        return [("", self.topic), *((x, exchange_topic(x)) for x in self.bindings)]


def _same_topic(kind: str, name: str, other: str) -> AmqpError:
    return AmqpError(406, f"PRECONDITION_FAILED - {kind} '{name}' cannot be declared: {kind} "
                          f"'{other}' exists, and names that differ only in case would share "
                          "one TideMQ topic (topic names are case-insensitive)")


class _Doc(msgspec.Struct):
    exchanges: list[dict[str, Any]] = []
    queues: list[dict[str, Any]] = []


def check_exchange_arguments(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments an exchange keeps, or AmqpError 406 naming the problem."""
    out: dict[str, Any] = {}
    for k, v in args.items():
        if k not in EXCHANGE_ARGUMENTS:
            raise AmqpError(406, f"PRECONDITION_FAILED - exchange argument {k!r} is not "
                                 f"supported (supported: {', '.join(EXCHANGE_ARGUMENTS)})")
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if not isinstance(v, str) or not v:
            raise AmqpError(406, f"PRECONDITION_FAILED - exchange argument {k!r} must be a "
                                 f"non-empty string, got {v!r}")
        out[k] = v
    delayed_type = out.get("x-delayed-type")
    if kind == DELAYED:
        if delayed_type not in EXCHANGE_TYPES:
            raise AmqpError(406, f"PRECONDITION_FAILED - a {DELAYED} exchange needs argument "
                                 f"'x-delayed-type' naming how it routes (one of "
                                 f"{', '.join(EXCHANGE_TYPES)}), got {delayed_type!r}")
    elif delayed_type is not None:
        raise AmqpError(406, f"PRECONDITION_FAILED - argument 'x-delayed-type' is for "
                             f"exchanges of type {DELAYED}")
    return out


def check_queue_arguments(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """The x-arguments queue ``name`` keeps (ints and strings), or AmqpError 406 naming the
    problem (540 for dead-lettering through the default exchange by each message's own
    routing key)."""
    out: dict[str, Any] = {}
    for k, v in (args or {}).items():
        if k not in QUEUE_ARGUMENTS:
            raise AmqpError(406, f"PRECONDITION_FAILED - queue argument {k!r} is not supported "
                                 f"(supported: {', '.join(sorted(QUEUE_ARGUMENTS))})")
        if k == "x-single-active-consumer":
            if not isinstance(v, bool):
                raise AmqpError(406, f"PRECONDITION_FAILED - invalid arg {k!r}: {v!r} "
                                     "(a boolean)")
            out[k] = v
        elif k in ("x-message-ttl", "x-max-priority", "x-delivery-limit", "x-expires"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 \
                    or (k == "x-expires" and v == 0):
                raise AmqpError(406, f"PRECONDITION_FAILED - invalid arg {k!r}: {v!r}")
            if k == "x-max-priority" and v > MAX_PRIORITY_ARG:
                raise AmqpError(406, f"PRECONDITION_FAILED - invalid arg {k!r}: {v!r} "
                                     f"(at most {MAX_PRIORITY_ARG})")
            if k == "x-delivery-limit":
                v = min(v, MAX_DELIVERIES - 1)
            out[k] = int(v)
        else:
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            if not isinstance(v, str) or (k == "x-queue-mode" and v not in QUEUE_MODES):
                raise AmqpError(406, f"PRECONDITION_FAILED - invalid arg {k!r}: {v!r}")
            if k == "x-queue-type" and v not in QUEUE_TYPES:
                if v == "stream":  # every consumer reads all of it from an offset: not a queue
                    raise AmqpError(540, "NOT_IMPLEMENTED - x-queue-type 'stream' (a log each "
                                         "consumer reads whole): use a queue per reader, or "
                                         "TideMQ groups on a topic")
                raise AmqpError(406, f"PRECONDITION_FAILED - invalid arg {k!r}: {v!r} "
                                     f"(one of {', '.join(QUEUE_TYPES)})")
            out[k] = v
    dlx, dlrk = out.get("x-dead-letter-exchange"), out.get("x-dead-letter-routing-key")
    if dlrk is not None and dlx is None:
        raise AmqpError(406, f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' "
                             f"for queue '{name}' in vhost '/': routing_key_but_no_dlx_defined")
    if dlx == "" and dlrk is None:
        raise AmqpError(540, "NOT_IMPLEMENTED - dead-lettering through the default exchange "
                             "needs 'x-dead-letter-routing-key' (the queue to go to): TideMQ "
                             "sends a queue's dead letters to one place")
    if dlx == "" and dlrk == name:
        raise AmqpError(406, f"PRECONDITION_FAILED - queue '{name}' would dead-letter into "
                             "itself (x-dead-letter-exchange '' and x-dead-letter-routing-key "
                             "its own name)")
    return out


class Catalogue:
    """Exchanges, queues and bindings, kept in step with the broker's topics and groups."""

    def __init__(self, backend: Backend) -> None:
        self._b = backend
        self.exchanges: dict[str, Exchange] = {
            n: Exchange(n, t) for n, t in PREDECLARED.items()}
        self.queues: dict[str, Queue] = {}
        # Topic names are case-insensitive (broker/_names.py): two exchanges, or two queues,
        # whose names differ only in case would share one topic — each would get the other's
        # messages and deleting one would delete the other's. The names by topic key refuse
        # the second one (406).
        self._exchange_keys: dict[str, str] = {
            topic_key(exchange_topic(n)): n for n in self.exchanges}
        self._queue_keys: dict[str, str] = {}
        self._routes: dict[str, list[tuple[Queue, Filter | None]]] = {}
        self._meta: MetaStore = backend.broker.meta

    # --- persistence -------------------------------------------------------------------------

    def load(self) -> None:
        """Read the catalogue; forget (and delete the groups of) queues that did not outlive
        the server run that declared them."""
        raw = self._meta.get(META_NAME)
        if raw is None:
            return
        try:
            doc = msgspec.json.decode(raw, type=_Doc)
        except msgspec.DecodeError:
            log.error("ignoring an unreadable AMQP catalogue (%s)", META_NAME)
            return
        for x in doc.exchanges:
            ex = Exchange(x["name"], x["type"], bool(x.get("durable", True)),
                          bool(x.get("auto_delete", False)), bool(x.get("internal", False)),
                          dict(x.get("arguments", {})))
            if ex.durable:
                self.exchanges[ex.name] = ex
                self._exchange_keys[topic_key(ex.topic)] = ex.name
        stale = []
        for q in doc.queues:
            queue = Queue(q["name"], bool(q.get("durable", True)), bool(q.get("exclusive")),
                          bool(q.get("auto_delete")), dict(q.get("arguments", {})),
                          {k: list(v) for k, v in q.get("bindings", {}).items()})
            if queue.transient:
                stale.append(queue)
            else:
                self.queues[queue.name] = queue
                self._queue_keys[topic_key(queue.topic)] = queue.name
        for queue in stale:
            self._drop_groups(queue)
        if stale:
            self.save()
        self._routes.clear()
        for queue in self.queues.values():
            self._upgrade(queue)

    def _upgrade(self, q: Queue) -> None:
        """Give the queue's groups the settings that catalogues written before them lack:
        x-message-ttl as ``message_ttl`` (it was put in each record the queue got instead),
        x-max-priority as ``max_priority`` (every group told 0..9 apart)."""
        b = self._b
        for _, topic in q.sources():
            try:
                s = b.broker.describe_group(topic, q.group).settings
            except TideMQError:
                continue
            want = msgspec.structs.replace(s, message_ttl=q.message_ttl,
                                           max_priority=q.max_priority)
            if want != s:
                b.broker.update_group(topic, q.group, want, now_us=b.now_us(),
                                      mono_us=b.mono_us())

    def save(self) -> None:
        doc = _Doc(
            exchanges=[{"name": x.name, "type": x.type, "durable": x.durable,
                        "auto_delete": x.auto_delete, "internal": x.internal,
                        "arguments": x.arguments}
                       for x in self.exchanges.values() if x.name not in PREDECLARED],
            queues=[{"name": q.name, "durable": q.durable, "exclusive": q.exclusive,
                     "auto_delete": q.auto_delete, "arguments": q.arguments,
                     "bindings": q.bindings} for q in self.queues.values()])
        self._meta.put(META_NAME, msgspec.json.encode(doc))

    # --- exchanges ---------------------------------------------------------------------------

    def exchange(self, name: str) -> Exchange:
        ex = self.exchanges.get(name)
        if ex is None:
            raise AmqpError(404, f"NOT_FOUND - no exchange '{name}' in vhost '/'")
        return ex

    def declare_exchange(self, name: str, kind: str, *, passive: bool, durable: bool,
                         auto_delete: bool, internal: bool,
                         arguments: dict[str, Any] | None = None) -> Exchange:
        if passive:
            return self.exchange(name)
        if name == "" or name.startswith("amq.") and name not in self.exchanges:
            raise AmqpError(403, f"ACCESS_REFUSED - exchange name '{name}' contains reserved "
                                 "prefix 'amq.*'")
        if name.lower().startswith(_RESERVED_TOPICS):
            raise AmqpError(403, f"ACCESS_REFUSED - exchange name '{name}' contains reserved "
                                 "prefix 'amqp.q.' or 'amqp.x.' (the AMQP front's own topics)")
        if kind not in EXCHANGE_TYPES and kind != DELAYED:
            raise AmqpError(503, f"COMMAND_INVALID - unknown exchange type '{kind}' "
                                 f"(supported: {', '.join(EXCHANGE_TYPES)}, {DELAYED})",
                            connection=True)
        args = check_exchange_arguments(kind, arguments or {})
        ex = self.exchanges.get(name)
        if ex is not None:
            if ex.type != kind or (ex.durable != durable and name not in PREDECLARED):
                raise AmqpError(406, f"PRECONDITION_FAILED - inequivalent arg 'type' or "
                                     f"'durable' for exchange '{name}' in vhost '/': received "
                                     f"'{kind}' but current is '{ex.type}'")
            if ex.arguments != args:
                raise AmqpError(406, f"PRECONDITION_FAILED - inequivalent arguments for "
                                     f"exchange '{name}' in vhost '/': received {args} but "
                                     f"current is {ex.arguments}")
            return ex
        topic = exchange_topic(name)
        key = topic_key(topic)
        other = self._exchange_keys.get(key)
        if other is not None:
            raise _same_topic("exchange", name, other)
        if kind == DELAYED:  # what it holds is stored before any queue may be bound
            b = self._b
            b.broker.create_topic(topic, None, now_us=b.now_us(), exist_ok=True)
        ex = self.exchanges[name] = Exchange(name, kind, durable, auto_delete, internal, args)
        self._exchange_keys[key] = name
        self.save()
        return ex

    def delete_exchange(self, name: str, *, if_unused: bool) -> None:
        ex = self.exchange(name)
        if name in PREDECLARED:
            raise AmqpError(403, f"ACCESS_REFUSED - cannot delete exchange '{name}'")
        bound = [q for q in self.queues.values() if name in q.bindings]
        if if_unused and bound:
            raise AmqpError(406, f"PRECONDITION_FAILED - exchange '{name}' in use")
        for q in bound:
            del q.bindings[name]
            self._routes.pop(name, None)
        del self.exchanges[name]
        self._exchange_keys.pop(topic_key(ex.topic), None)
        b = self._b
        try:
            b.broker.delete_topic(ex.topic, now_us=b.now_us())
            b.end_topic(ex.topic)
        except UnknownTopic:
            pass
        self._routes.pop(name, None)
        self.save()

    # --- queues ------------------------------------------------------------------------------

    def queue(self, name: str) -> Queue:
        q = self.queues.get(name)
        if q is None:
            raise AmqpError(404, f"NOT_FOUND - no queue '{name}' in vhost '/'")
        return q

    def settings(self, q: Queue, filter_: dict[str, Any] | None, start: str) -> GroupSettings:
        limit = q.arguments.get("x-delivery-limit")
        dead = q.dead_letters
        return GroupSettings(
            mode="shared", filter=filter_, start=start, ack_timeout=MAX_ACK_TIMEOUT,
            max_deliveries=MAX_DELIVERIES if limit is None else limit + 1,
            backoff=Backoff(0.0, 1.0, 0.0),
            dead_letter_topic=None if dead is None else dead[0],
            dead_letter_routing_key=None if dead is None else dead[1],
            message_ttl=q.message_ttl, max_priority=q.max_priority)

    def declare_queue(self, q: Queue) -> Queue:
        """Create the queue's topic and group (or find them)."""
        key = topic_key(q.topic)
        other = self._queue_keys.get(key)
        if other is not None and other != q.name:
            raise _same_topic("queue", q.name, other)
        b = self._b
        now = b.now_us()
        b.broker.create_topic(q.topic, None, now_us=now, exist_ok=True)
        try:
            b.broker.create_group(q.topic, q.group, self.settings(q, None, "earliest"),
                                  now_us=now)
        except TideMQError as exc:
            if type(exc).__name__ != "GroupSettingsMismatch":
                raise
            b.broker.update_group(q.topic, q.group, self.settings(q, None, "earliest"),
                                  now_us=now, mono_us=b.mono_us())
        self.queues[q.name] = q
        self._queue_keys[key] = q.name
        self.save()
        return q

    def delete_queue(self, q: Queue) -> int:
        """Delete the queue's groups and its topic; returns the messages it held."""
        count = self.message_count(q)
        if self.queues.pop(q.name, None) is not None:
            self._queue_keys.pop(topic_key(q.topic), None)
        if q.expiry is not None:
            q.expiry.cancel()
        self._drop_groups(q)
        for x in q.bindings:
            self._routes.pop(x, None)
        self.save()
        return count

    def _drop_groups(self, q: Queue) -> None:
        b = self._b
        now = b.now_us()
        for x, topic in q.sources():
            try:
                if x == "":
                    b.broker.delete_topic(topic, now_us=now)
                    b.end_topic(topic)
                else:
                    b.broker.delete_group(topic, q.group, now_us=now)
            except (UnknownTopic, UnknownGroup):
                pass
            except TideMQError as exc:
                log.warning("deleting queue %r: %s", q.name, exc)

    def message_count(self, q: Queue) -> int:
        n = 0
        for _, topic in q.sources():
            try:
                info = self._b.broker.describe_group(topic, q.group)
            except TideMQError:
                continue
            n += max(0, info.lag - info.in_flight)
        return n

    def purge(self, q: Queue) -> int:
        b = self._b
        n = self.message_count(q)
        for _, topic in q.sources():
            try:
                b.broker.reset_group(topic, q.group, "latest", now_us=b.now_us())
            except TideMQError:
                pass
        return n

    # --- bindings ----------------------------------------------------------------------------

    def bind(self, q: Queue, ex: Exchange, key: str, args: dict[str, Any]) -> bool:
        """Add a binding; True when it is new (the queue then reads one more topic, or its
        filter there changed)."""
        entry = _binding_entry(ex, key, args)
        keys = q.bindings.get(ex.name)
        if keys is not None and entry in keys:
            return False
        new = [*(keys or []), entry]
        spec = _filter_of(ex, new)
        b = self._b
        now = b.now_us()
        b.broker.create_topic(ex.topic, None, now_us=now, exist_ok=True)
        if keys is None:
            try:
                b.broker.create_group(ex.topic, q.group, self.settings(q, spec, "latest"),
                                      now_us=now)
            except TideMQError as exc:
                if type(exc).__name__ != "GroupSettingsMismatch":
                    raise
                keys = []  # left by an earlier run: take it over with these settings
        if keys is not None:
            b.broker.update_group(ex.topic, q.group, self.settings(q, spec, "latest"),
                                  now_us=now, mono_us=b.mono_us())
        q.bindings[ex.name] = new
        self._routes.pop(ex.name, None)
        self.save()
        return True

    def unbind(self, q: Queue, ex: Exchange, key: str, args: dict[str, Any]) -> bool:
        """Remove a binding; True when the queue no longer reads the exchange's topic."""
        entry = _binding_entry(ex, key, args)
        keys = q.bindings.get(ex.name)
        if keys is None or entry not in keys:
            return False
        keys = [k for k in keys if k != entry]
        b = self._b
        self._routes.pop(ex.name, None)
        if not keys:
            del q.bindings[ex.name]
            try:
                b.broker.delete_group(ex.topic, q.group, now_us=b.now_us())
            except (UnknownTopic, UnknownGroup):
                pass
            self.save()
            return True
        q.bindings[ex.name] = keys
        b.broker.update_group(ex.topic, q.group, self.settings(q, _filter_of(ex, keys),
                                                               "latest"),
                              now_us=b.now_us(), mono_us=b.mono_us())
        self.save()
        return False

    def death_names(self, topic: str, group: str) -> tuple[str, str]:
        """The exchange and queue names a death in ``group`` of ``topic`` shows in x-death:
        "" for a queue's own topic (the default exchange), the exchange whose topic it is (a
        name that is not a topic name has a hashed one), the queue whose group it is (names
        over 200 characters have a hashed one); the topic and group themselves when no
        exchange or queue has them now."""
        if topic.startswith(QUEUE_TOPICS):
            exchange = ""
        else:
            exchange = self._exchange_keys.get(topic_key(topic), topic)
        queue = group
        if len(group) == MAX_GROUP_NAME_HASHED and group.startswith("amqp-"):
            queue = next((q.name for q in self.queues.values() if q.group == group), group)
        return exchange, queue

    def routes(self, ex: Exchange) -> list[tuple[Queue, Filter | None]]:
        """The queues bound to ``ex`` with their compiled filters (cached)."""
        hit = self._routes.get(ex.name)
        if hit is None:
            hit = []
            for q in self.queues.values():
                keys = q.bindings.get(ex.name)
                if keys:
                    spec = _filter_of(ex, keys)
                    hit.append((q, None if spec is None else compile_filter(spec)))
            self._routes[ex.name] = hit
        return hit

    def route(self, ex: Exchange, routing_key: str, headers: dict[str, str] | None) \
            -> list[Queue]:
        return [q for q, f in self.routes(ex) if f is None or f.matches(routing_key, headers)]

    def route_on(self, ex: Exchange, routing_key: str, headers: dict[str, str] | None) \
            -> tuple[Exchange, list[Queue]]:
        """Where a message published to ``ex`` goes: ``ex`` and its queues, or, when none
        takes it, the first of its alternate exchanges (``alternate-exchange``, followed as a
        chain, at most :data:`MAX_ALTERNATES`, none twice) that has one; ``(ex, [])`` when no
        exchange of the chain has one (the chain's missing exchanges end it, as RabbitMQ)."""
        targets = self.route(ex, routing_key, headers)
        at, seen = ex, {ex.name}
        while not targets and len(seen) <= MAX_ALTERNATES:
            alt = self.exchanges.get(at.arguments.get("alternate-exchange", ""))
            if alt is None or alt.name in seen:
                break
            seen.add(alt.name)
            targets = self.route(alt, routing_key, headers)
            at = alt
        return (at, targets) if targets else (ex, [])


def _binding_entry(ex: Exchange, key: str, args: dict[str, Any]) -> str:
    if ex.kind == "fanout":
        return ""
    if ex.kind == "headers":
        conds = {str(k): _header_text(v) for k, v in (args or {}).items()
                 if not str(k).startswith("x-")}
        match = args.get("x-match", "all") if args else "all"
        if isinstance(match, bytes):
            match = match.decode()
        if match not in ("all", "any"):
            raise AmqpError(406, "PRECONDITION_FAILED - x-match must be 'all' or 'any'")
        if match == "any" and len(conds) > 1:
            raise AmqpError(540, "NOT_IMPLEMENTED - a headers binding with x-match 'any' and "
                                 "more than one header (TideMQ filters AND their headers)")
        return msgspec.json.encode(conds).decode()
    if ex.kind == "direct" or key == "":
        return key  # matched as it is ({"exact": key}; a topic binding "" takes the key "")
    try:
        check_pattern(key)
    except InvalidFilter as exc:
        words = key.split(".")
        if "*" not in words and "#" not in words:
            return key  # no wildcard word ('a*' is a plain word in RabbitMQ): as it is
        raise AmqpError(406, f"PRECONDITION_FAILED - binding key {key!r}: {exc}") from None
    return key


def _header_text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _filter_of(ex: Exchange, keys: list[str]) -> dict[str, Any] | None:
    if ex.kind == "fanout":
        return None
    if ex.kind == "headers":
        if len(set(keys)) > 1:
            raise AmqpError(540, "NOT_IMPLEMENTED - more than one headers binding between "
                                 "one queue and one exchange")
        conds = msgspec.json.decode(keys[0].encode())
        return {"headers": {k: [v] for k, v in conds.items()}} if conds else None
    return {"routing_key": [
        _exact(k) if ex.kind == "direct" or _plain_key(k) else k for k in dict.fromkeys(keys)]}


def _plain_key(key: str) -> bool:
    """A topic binding key that is no pattern (see _binding_entry): "" or a key with a word
    that has '*' or '#' beside other characters and no wildcard word."""
    words = key.split(".")
    return key == "" or ("*" not in words and "#" not in words and ("*" in key or "#" in key))


def _exact(key: str) -> dict[str, str]:
    return {"exact": key}
