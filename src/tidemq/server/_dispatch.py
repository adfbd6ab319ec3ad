"""Request handlers: one function per client frame type, each a few broker calls.

A handler gets the frame and a narrow :class:`Context` — the broker, the clocks, a way to
answer, the durability hook, the subscription registry and the push scheduler — never the
server or the connection object as such (h11 style: a session is frames in, broker calls,
frames out). Each runs on the event loop inside ``Connection.data_received``; a
``TideMQError`` it raises becomes an ``Error`` frame answering that request (see
``_connection``). Writes whose topic has durability ``always`` are answered only once the
server made them durable (:meth:`Context.after_sync`).

Bounded work per request (docs/server.md, "Limits"): no handler spends more than a few ms of
the loop on one step. Settlement requests (``Ack`` ranges, ``Nack``/``Extend``/``Reject`` id
lists) may name at most :meth:`Subscription.ack_limit` messages and are applied
``settle_step`` ids per loop iteration; ``DlqRedrive`` moves ``redrive_batch`` dead letters per
iteration. Meanwhile the connection handles none of its later frames, so its requests keep
their order (:meth:`Context.continue_soon`). Numbers from the wire are checked to be finite
before the broker sees them, so a NaN or an infinity is an ``InvalidArgument``, never an
``InternalError``.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import msgspec

from .. import protocol as P
from ..broker import Broker, GroupSettings, PublishResult, SyncToken, TopicConfig, parse_id
from ..errors import BacklogFull, InvalidArgument, TideMQError, Unsupported
from ..storage import verify
from ._authz import OPS as _OPS
from ._config import ServerConfig
from ._push import DELIVER_OVERHEAD, Subscription
from ._registry import Subscriptions

__all__ = ["HANDLERS", "Blocked", "Context", "Handler"]

log = logging.getLogger("tidemq.server")


class Blocked(Exception):
    """A publish hit a full backlog on a topic whose policy is ``block``: retry it later."""


class Context(Protocol):
    """What a handler may use: one connection's session (``Connection`` is one).

    It is also the connection's key in the registry (``ctx.registry.get(ctx, sub_id)``) and the
    peer its subscriptions push to (``_push.Peer``: ``max_frame_size``, ``ready_for_push``).
    """

    @property
    def broker(self) -> Broker: ...

    @property
    def registry(self) -> Subscriptions: ...

    @property
    def config(self) -> ServerConfig: ...

    @property
    def max_frame_size(self) -> int:
        """The session's frame limit (the smaller of both peers')."""

    def ready_for_push(self) -> bool:
        """True if the connection takes more output now (see ``_push.Peer``)."""

    def now_us(self) -> int:
        """Wall clock, µs since the epoch."""

    def mono_us(self) -> int:
        """Monotonic clock, µs."""

    def send(self, frame: Any) -> None:
        """Queue ``frame`` for this connection (dropped once it is closed)."""

    def send_error(self, request_id: int, exc: TideMQError) -> None:
        """Answer ``request_id`` with an ``Error`` frame for ``exc``."""

    def after_sync(self, token: SyncToken, answer: Callable[[], Any]) -> None:
        """Send ``answer()`` now, or once ``token`` is durable when its topic needs that."""

    def want_push(self, member: str | None, /) -> None:
        """Ask for a push pass soon; ``member``'s credit or writability just changed."""

    def close(self) -> None:
        """Flush, release every lease of this connection, close it."""

    def may(self, op: str, kind: str, name: str, /) -> bool:
        """Whether the session's user may ``op`` (publish, consume, admin) the resource
        ``kind:name`` (always True on a server without users). The frame itself was checked
        before its handler ran (``_authz``); handlers use this to filter what they list."""

    def continue_soon(self, request_id: int, step: Callable[[], bool], /) -> None:
        """Call ``step`` on the next loop iteration, and again on later ones until it returns
        True (it has answered ``request_id``). Until then the connection handles none of its
        later frames. A ``TideMQError`` raised by ``step`` answers ``request_id`` and ends it."""


Handler = Callable[[Context, Any], None]
HANDLERS: dict[type[Any], Handler] = {}


def _handles(*types: type[Any]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for t in types:
            HANDLERS[t] = fn
        return fn
    return register


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _convert(value: Any, typ: type[Any], what: str) -> Any:
    _finite(value, what)
    try:
        return msgspec.convert(value, typ)
    except (msgspec.ValidationError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(f"bad {what}: {exc}") from None


def _finite(value: Any, what: str) -> Any:
    """``value`` if no float in it (a number, or maps and lists of them, as msgpack decodes
    them) is NaN or infinite; else ``InvalidArgument``. The walk is bounded by the frame size."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is float:
            if not math.isfinite(v):
                raise InvalidArgument(f"{what}: numbers must be finite, got {v!r}")
        elif type(v) is dict:
            stack += v.keys()
            stack += v.values()
        elif type(v) is list or type(v) is tuple:
            stack += v
    return value


def _str_arg(args: dict[str, Any], name: str, method: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise InvalidArgument(f"{method} needs argument {name!r} as a string")
    return value


class _Answer:
    """A deferred answer frame (built after the fsync, so it is built once)."""

    __slots__ = ("request_id", "make")

    def __init__(self, request_id: int, make: Callable[[], Any]) -> None:
        self.request_id = request_id
        self.make = make

    def __call__(self) -> Any:
        return self.make()


# --- session ----------------------------------------------------------------------------------


@_handles(P.Ping)
def _ping(ctx: Context, f: P.Ping) -> None:
    ctx.send(P.Pong(request_id=f.request_id))


@_handles(P.Pong)
def _pong(ctx: Context, f: P.Pong) -> None:
    pass  # receiving it already refreshed the connection's liveness


@_handles(P.Error)
def _peer_error(ctx: Context, f: P.Error) -> None:
    if f.fatal:
        ctx.close()


# --- publishing -------------------------------------------------------------------------------


@_handles(P.Publish)
def _publish(ctx: Context, f: P.Publish) -> None:
    broker = ctx.broker
    now = ctx.now_us()
    try:
        result, partition = _append(broker, f, now)
    except BacklogFull:
        if broker.describe_topic(f.topic).config.backlog_policy == "block":
            raise Blocked from None
        raise
    rid = f.request_id

    def ok() -> P.PublishOk:
        if result.prefix:  # consecutive offsets of one partition: the prefix, not the ids
            return P.PublishOk(request_id=rid, partition=partition, base_offset=result.first,
                               last_offset=result.first + result.count - 1,
                               id_prefix=result.prefix)
        ids = result.ids
        first = parse_id(ids[0]).offset if ids else 0
        last = parse_id(ids[-1]).offset if ids else -1
        return P.PublishOk(request_id=rid, partition=partition, base_offset=first,
                           last_offset=last, ids=ids)

    ctx.after_sync(result.token, _Answer(rid, ok))


def _append(broker: Broker, f: P.Publish, now: int) -> tuple[PublishResult, int]:
    if f.partition < 0:
        # No partition chosen by the client: decode and let the broker partition by key.
        records = verify(f.batch).records()  # raises CorruptRecord / InvalidArgument
        return broker.publish(f.topic, records, now_us=now), -1
    return broker.publish_encoded(f.topic, f.partition, f.batch, now_us=now), f.partition


# --- consuming --------------------------------------------------------------------------------


@_handles(P.Subscribe)
def _subscribe(ctx: Context, f: P.Subscribe) -> None:
    broker = ctx.broker
    settings = _convert(f.settings, GroupSettings, "group settings") if f.settings else None
    if settings is not None:
        settings.validate()
    if f.prefetch < 1:
        raise InvalidArgument("prefetch must be >= 1")
    most = ctx.config.max_subscriptions_per_connection
    if ctx.registry.count(ctx) >= most:
        raise InvalidArgument(
            f"this connection has {most} subscriptions open, the most allowed "
            "(max_subscriptions_per_connection); close some, or open another connection")
    member = broker.subscribe(f.topic, f.group, settings, prefetch=f.prefetch,
                              now_us=ctx.now_us(), mono_us=ctx.mono_us())
    info = broker.describe_topic(f.topic)
    if info.config.max_message_bytes + DELIVER_OVERHEAD > ctx.max_frame_size:
        # Not refused: most topics never hold a message near their limit. One that does not
        # fit a Deliver frame of this session is nacked by the push (others may take it).
        log.warning("subscription to %r: messages of up to %d bytes may not fit this session's "
                    "frame limit of %d bytes; raise the client's max_frame_size", info.name,
                    info.config.max_message_bytes, ctx.max_frame_size)
    group = broker.describe_group(f.topic, f.group)
    sub = ctx.registry.open(ctx, member, info.name, info.incarnation, f.prefetch, f.group)
    # Answer once the group's state is durable at the topic's level (a group created under
    # 'always' must survive a power cut right after the answer); no credit until then, so no
    # delivery overtakes the answer.
    sub.credit = 0
    rid = f.request_id

    def ok() -> P.SubscribeOk:
        sub.credit = f.prefetch
        ctx.want_push(member)
        return P.SubscribeOk(request_id=rid, subscription_id=sub.sub_id,
                             settings=_builtins(group.settings))

    ctx.after_sync(broker.barrier(f.topic), _Answer(rid, ok))


@_handles(P.Credit)
def _credit(ctx: Context, f: P.Credit) -> None:
    sub = ctx.registry.get(ctx, f.subscription_id)
    if sub is None:
        return  # credit for a subscription just closed: harmless, nothing to answer
    # Never more outstanding credit than prefetch: a confused client cannot inflate it.
    sub.credit = min(sub.credit + f.n, sub.prefetch)
    ctx.want_push(sub.member)


def _settle(ctx: Context, rid: int, token: SyncToken, settled: int) -> None:
    ctx.after_sync(token, _Answer(rid, lambda: P.AckOk(request_id=rid, settled=settled)))


def _check_count(sub: Subscription, ctx: Context, n: int, what: str) -> None:
    limit = sub.ack_limit(ctx.config.max_ack_messages)
    if n > limit:
        raise InvalidArgument(
            f"one {what} may name at most {limit} messages on this subscription (10 x prefetch, "
            f"at most max_ack_messages), got {n}; split it")


def _chunks(ids: list[str], step: int) -> Iterator[list[str]]:
    for i in range(0, len(ids), step):
        yield ids[i:i + step]


def _settle_steps(ctx: Context, rid: int, chunks: Iterator[list[str]],
                  apply: Callable[[list[str]], SyncToken]) -> None:
    """Apply ``chunks`` of ids one per loop iteration, then answer with their merged token.
    A chunk that fails answers with its error; the chunks before it stay applied (each
    settlement is idempotent, so the client may simply retry)."""
    token = SyncToken()
    settled = 0

    def step() -> bool:
        nonlocal token, settled
        ids = next(chunks, None)
        if ids is None:
            _settle(ctx, rid, token, settled)
            return True
        token = token.merge(apply(ids))
        settled += len(ids)
        return False

    if not step():
        ctx.continue_soon(rid, step)


@_handles(P.Ack)
def _ack(ctx: Context, f: P.Ack) -> None:
    sub = ctx.registry.require(ctx, f.subscription_id)
    ranges = f.ranges
    # Each range names at least one message: a frame of many ranges fails before any sum.
    _check_count(sub, ctx, len(ranges) + len(f.ids), "Ack")
    total = len(f.ids)
    if ranges:
        total += sum(last - first for _, first, last in ranges) + len(ranges)
        _check_count(sub, ctx, total, "Ack")
    broker, member = ctx.broker, sub.member
    step = ctx.config.settle_step
    if total <= step:  # the common case: one broker call, now
        if ranges and not f.ids and all(p != P.WIRE_DELAY_PARTITION for p, _, _ in ranges):
            # Ranges of the topic's partitions only (the client's usual ack): no ids made.
            token = broker.ack_ranges(member, ranges, now_us=ctx.now_us(), mono_us=ctx.mono_us())
            _settle(ctx, f.request_id, token, total)
            return
        ids = next(sub.iter_ids(ranges, step), []) if ranges else []
        if f.ids:
            ids += f.ids
        token = broker.ack(member, ids, now_us=ctx.now_us(), mono_us=ctx.mono_us())
        _settle(ctx, f.request_id, token, len(ids))
        return
    _settle_steps(ctx, f.request_id,
                  itertools.chain(sub.iter_ids(ranges, step), _chunks(f.ids, step)),
                  lambda ids: broker.ack(member, ids, now_us=ctx.now_us(), mono_us=ctx.mono_us()))


def _settle_ids(ctx: Context, f: Any, what: str, apply: Callable[[str, list[str]], SyncToken]) -> None:
    """Nack, Extend and Reject: ``apply(member, ids)`` in steps of ``settle_step`` ids."""
    sub = ctx.registry.require(ctx, f.subscription_id)
    _check_count(sub, ctx, len(f.ids), what)
    member = sub.member
    step = ctx.config.settle_step
    if len(f.ids) <= step:
        _settle(ctx, f.request_id, apply(member, f.ids), len(f.ids))
        return
    _settle_steps(ctx, f.request_id, _chunks(f.ids, step), lambda ids: apply(member, ids))


@_handles(P.Nack)
def _nack(ctx: Context, f: P.Nack) -> None:
    if f.delay is not None:
        _finite(f.delay, "nack delay")
    _settle_ids(ctx, f, "Nack", lambda member, ids: ctx.broker.nack(
        member, ids, f.delay, now_us=ctx.now_us(), mono_us=ctx.mono_us()))


@_handles(P.Reject)
def _reject(ctx: Context, f: P.Reject) -> None:
    _settle_ids(ctx, f, "Reject", lambda member, ids: ctx.broker.reject(
        member, ids, f.reason, now_us=ctx.now_us(), mono_us=ctx.mono_us()))


@_handles(P.Extend)
def _extend(ctx: Context, f: P.Extend) -> None:
    _finite(f.seconds, "extend seconds")
    _settle_ids(ctx, f, "Extend", lambda member, ids: ctx.broker.extend(
        member, ids, f.seconds, mono_us=ctx.mono_us(), now_us=ctx.now_us()))


@_handles(P.CloseSubscription)
def _close_sub(ctx: Context, f: P.CloseSubscription) -> None:
    ctx.registry.close(ctx, f.subscription_id)  # its member's leases are released now
    ctx.send(P.Result(request_id=f.request_id))


# --- admin ------------------------------------------------------------------------------------


def _result(ctx: Context, rid: int, value: Any = None) -> None:
    ctx.send(P.Result(request_id=rid, value=_builtins(value)))


@_handles(P.CreateTopic)
def _create_topic(ctx: Context, f: P.CreateTopic) -> None:
    config = _convert({**f.config, "partitions": f.partitions}, TopicConfig, "topic config")
    config.validate()
    info = ctx.broker.create_topic(f.name, config, now_us=ctx.now_us())
    _result(ctx, f.request_id, info)


@_handles(P.DeleteTopic)
def _delete_topic(ctx: Context, f: P.DeleteTopic) -> None:
    ctx.broker.delete_topic(f.name, now_us=ctx.now_us())
    ctx.registry.end_topic(f.name)
    _result(ctx, f.request_id)


@_handles(P.ListTopics)
def _list_topics(ctx: Context, f: P.ListTopics) -> None:
    topics = ctx.broker.list_topics()
    visible = [t for t in topics if any(ctx.may(op, "topic", t.name) for op in _OPS)]
    _result(ctx, f.request_id, visible)


@_handles(P.DescribeTopic)
def _describe_topic(ctx: Context, f: P.DescribeTopic) -> None:
    _result(ctx, f.request_id, ctx.broker.describe_topic(f.name))


@_handles(P.SetPartitions)
def _set_partitions(ctx: Context, f: P.SetPartitions) -> None:
    _result(ctx, f.request_id,
            ctx.broker.set_partitions(f.name, f.partitions, now_us=ctx.now_us()))


@_handles(P.GroupList)
def _group_list(ctx: Context, f: P.GroupList) -> None:
    _result(ctx, f.request_id, ctx.broker.list_groups(f.topic))


@_handles(P.GroupDescribe)
def _group_describe(ctx: Context, f: P.GroupDescribe) -> None:
    _result(ctx, f.request_id, ctx.broker.describe_group(f.topic, f.group))


@_handles(P.GroupReset)
def _group_reset(ctx: Context, f: P.GroupReset) -> None:
    ctx.broker.reset_group(f.topic, f.group, _finite(f.start, "start"), now_us=ctx.now_us())
    rid = f.request_id
    ctx.after_sync(ctx.broker.barrier(f.topic), _Answer(rid, lambda: P.Result(request_id=rid)))


@_handles(P.DlqRedrive)
def _dlq_redrive(ctx: Context, f: P.DlqRedrive) -> None:
    if f.filter:
        raise Unsupported("redrive by filter is not supported by this server yet; omit the filter")
    broker, rid, limit = ctx.broker, f.request_id, f.limit
    batch = ctx.config.redrive_batch
    batched = _takes_max_batch(type(broker).__qualname__, type(broker).redrive)
    moved = 0

    def step() -> bool:
        nonlocal moved
        if not batched:  # a broker that moves everything in one call
            moved = broker.redrive(f.topic, f.group, limit=limit, now_us=ctx.now_us())
            _result(ctx, rid, moved)
            return True
        want = batch if limit is None else min(batch, limit - moved)
        n = broker.redrive(f.topic, f.group, limit=want, now_us=ctx.now_us(),
                           max_batch=batch) if want > 0 else 0
        moved += n
        if n < want or want == 0 or (limit is not None and moved >= limit):
            _result(ctx, rid, moved)
            return True
        return False

    if not step():
        ctx.continue_soon(rid, step)


@functools.cache
def _takes_max_batch(name: str, redrive: Callable[..., int]) -> bool:
    """Whether ``redrive`` (of broker class ``name``) moves at most ``max_batch`` dead letters
    per call (newer brokers); older ones move everything in one call."""
    try:
        return "max_batch" in inspect.signature(redrive).parameters
    except (TypeError, ValueError):
        return False


@_handles(P.DlqList)
def _dlq_list(ctx: Context, f: P.DlqList) -> None:
    raise Unsupported("listing dead letters over the wire is not supported yet; consume "
                      "the '<topic>.dlq' topic instead")


def _call_create_group(ctx: Context, args: dict[str, Any]) -> Any:
    topic, group = _str_arg(args, "topic", "create_group"), _str_arg(args, "group", "create_group")
    settings = _convert(args.get("settings") or {}, GroupSettings, "group settings")
    settings.validate()
    return ctx.broker.create_group(topic, group, settings, now_us=ctx.now_us())


def _call_update_group(ctx: Context, args: dict[str, Any]) -> Any:
    topic, group = _str_arg(args, "topic", "update_group"), _str_arg(args, "group", "update_group")
    settings = _convert(args.get("settings") or {}, GroupSettings, "group settings")
    settings.validate()
    ctx.broker.update_group(topic, group, settings, now_us=ctx.now_us(), mono_us=ctx.mono_us())
    return ctx.broker.describe_group(topic, group)


def _call_delete_group(ctx: Context, args: dict[str, Any]) -> Any:
    topic, group = _str_arg(args, "topic", "delete_group"), _str_arg(args, "group", "delete_group")
    ctx.broker.delete_group(topic, group, now_us=ctx.now_us())
    return None


_CALLS: dict[str, Callable[[Context, dict[str, Any]], Any]] = {
    "create_group": _call_create_group,
    "update_group": _call_update_group,
    "delete_group": _call_delete_group,
}


@_handles(P.Call)
def _call(ctx: Context, f: P.Call) -> None:
    fn = _CALLS.get(f.method)
    if fn is None:
        raise Unsupported(f"unknown admin call {f.method!r}; this server knows {sorted(_CALLS)}")
    value = fn(ctx, f.args)
    topic = f.args["topic"]  # checked by fn
    rid = f.request_id
    # Group changes answer once durable at the topic's level (see _subscribe).
    ctx.after_sync(ctx.broker.barrier(topic),
                   _Answer(rid, lambda: P.Result(request_id=rid, value=_builtins(value))))
