"""Request handlers: one function per client frame type, each a few broker calls.

Each handler runs on the event loop inside ``Connection.data_received``; a ``TideMQError`` it
raises becomes an ``Error`` frame answering that request (see ``_connection``). Writes whose
topic has durability ``always`` are answered only after the group-commit worker fsynced them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .. import protocol as P
from ..broker._ids import parse_id
from ..broker._types import GroupSettings, TopicConfig
from ..errors import BacklogFull, InvalidArgument, TideMQError, Unsupported
from ..storage import verify

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["HANDLERS", "Blocked"]


class Blocked(Exception):
    """A publish hit a full backlog on a topic whose policy is ``block``: retry it later."""

Handler = Callable[["Connection", Any], None]
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
    try:
        return msgspec.convert(value, typ)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"bad {what}: {exc}") from None


def _after_sync(conn: Connection, token: Any, answer: Callable[[], Any]) -> None:
    """Send ``answer()`` now, or once ``token`` is durable when its topic needs that."""
    server = conn.server
    if not server.broker.needs_sync(token):
        conn.send(answer())
        return
    rid = getattr(answer, "request_id", 0)

    def done(exc: BaseException | None) -> None:
        if exc is None:
            conn.send(answer())
        elif isinstance(exc, TideMQError):
            conn.send_error(rid, exc)
        else:
            from ..errors import StorageFailed

            conn.send_error(rid, StorageFailed(f"fsync failed: {exc}"))

    assert server.committer is not None
    server.committer.submit(token, done)


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
def _ping(conn: Connection, f: P.Ping) -> None:
    conn.send(P.Pong(request_id=f.request_id))


@_handles(P.Pong)
def _pong(conn: Connection, f: P.Pong) -> None:
    pass  # receiving it already refreshed the connection's liveness


@_handles(P.Error)
def _peer_error(conn: Connection, f: P.Error) -> None:
    if f.fatal:
        conn.close()


# --- publishing -------------------------------------------------------------------------------


@_handles(P.Publish)
def _publish(conn: Connection, f: P.Publish) -> None:
    server = conn.server
    broker = server.broker
    now = server.now_us()
    try:
        result, partition = _append(server, f, now)
    except BacklogFull:
        if broker.describe_topic(f.topic).config.backlog_policy == "block":
            raise Blocked from None
        raise
    ids = result.ids
    rid = f.request_id

    def ok() -> P.PublishOk:
        first = parse_id(ids[0]).offset if ids else 0
        last = parse_id(ids[-1]).offset if ids else -1
        return P.PublishOk(request_id=rid, partition=partition, base_offset=first,
                           last_offset=last, ids=ids)

    _after_sync(conn, result.token, _Answer(rid, ok))


def _append(server: Any, f: P.Publish, now: int) -> tuple[Any, int]:
    broker = server.broker
    if f.partition < 0:
        # No partition chosen by the client: decode and let the broker partition by key.
        records = verify(f.batch).records()  # raises CorruptRecord / InvalidArgument
        return broker.publish(f.topic, records, now_us=now), -1
    return broker.publish_encoded(f.topic, f.partition, f.batch, now_us=now), f.partition


# --- consuming --------------------------------------------------------------------------------


@_handles(P.Subscribe)
def _subscribe(conn: Connection, f: P.Subscribe) -> None:
    server = conn.server
    broker = server.broker
    settings = _convert(f.settings, GroupSettings, "group settings") if f.settings else None
    if settings is not None:
        settings.validate()
    if f.prefetch < 1:
        raise InvalidArgument("prefetch must be >= 1")
    member = broker.subscribe(f.topic, f.group, settings, prefetch=f.prefetch,
                              now_us=server.now_us(), mono_us=server.mono_us())
    info = broker.describe_topic(f.topic)
    group = broker.describe_group(f.topic, f.group)
    sub = conn.add_subscription(member, info.name, info.incarnation, f.prefetch)
    conn.send(P.SubscribeOk(request_id=f.request_id, subscription_id=sub.sub_id,
                            settings=_builtins(group.settings)))
    server.want_push(member)


@_handles(P.Credit)
def _credit(conn: Connection, f: P.Credit) -> None:
    sub = conn.subs.get(f.subscription_id)
    if sub is None:
        return  # credit for a subscription just closed: harmless, nothing to answer
    # Never more outstanding credit than prefetch: a confused client cannot inflate it.
    sub.credit = min(sub.credit + f.n, sub.prefetch)
    conn.server.want_push(sub.member)


def _settle(conn: Connection, rid: int, token: Any, settled: int) -> None:
    _after_sync(conn, token, _Answer(rid, lambda: P.AckOk(request_id=rid, settled=settled)))


@_handles(P.Ack)
def _ack(conn: Connection, f: P.Ack) -> None:
    sub = conn.subscription(f.subscription_id)
    ids = sub.ids_for_ranges(f.ranges) if f.ranges else []
    if f.ids:
        ids += f.ids
    server = conn.server
    token = server.broker.ack(sub.member, ids, now_us=server.now_us(), mono_us=server.mono_us())
    _settle(conn, f.request_id, token, len(ids))


@_handles(P.Nack)
def _nack(conn: Connection, f: P.Nack) -> None:
    sub = conn.subscription(f.subscription_id)
    server = conn.server
    token = server.broker.nack(sub.member, f.ids, f.delay, now_us=server.now_us(),
                               mono_us=server.mono_us())
    _settle(conn, f.request_id, token, len(f.ids))


@_handles(P.Reject)
def _reject(conn: Connection, f: P.Reject) -> None:
    sub = conn.subscription(f.subscription_id)
    server = conn.server
    token = server.broker.reject(sub.member, f.ids, f.reason, now_us=server.now_us(),
                                 mono_us=server.mono_us())
    _settle(conn, f.request_id, token, len(f.ids))


@_handles(P.Extend)
def _extend(conn: Connection, f: P.Extend) -> None:
    sub = conn.subscription(f.subscription_id)
    server = conn.server
    token = server.broker.extend(sub.member, f.ids, f.seconds, mono_us=server.mono_us(),
                                 now_us=server.now_us())
    _settle(conn, f.request_id, token, len(f.ids))


@_handles(P.CloseSubscription)
def _close_sub(conn: Connection, f: P.CloseSubscription) -> None:
    sub = conn.subs.pop(f.subscription_id, None)
    if sub is not None:
        conn.server.end_member(sub.member)
    conn.send(P.Result(request_id=f.request_id))


# --- admin ------------------------------------------------------------------------------------


def _result(conn: Connection, rid: int, value: Any = None) -> None:
    conn.send(P.Result(request_id=rid, value=_builtins(value)))


@_handles(P.CreateTopic)
def _create_topic(conn: Connection, f: P.CreateTopic) -> None:
    config = _convert({**f.config, "partitions": f.partitions}, TopicConfig, "topic config")
    config.validate()
    info = conn.server.broker.create_topic(f.name, config, now_us=conn.server.now_us())
    _result(conn, f.request_id, info)


@_handles(P.DeleteTopic)
def _delete_topic(conn: Connection, f: P.DeleteTopic) -> None:
    server = conn.server
    server.broker.delete_topic(f.name, now_us=server.now_us())
    server.end_topic(f.name)
    _result(conn, f.request_id)


@_handles(P.ListTopics)
def _list_topics(conn: Connection, f: P.ListTopics) -> None:
    _result(conn, f.request_id, conn.server.broker.list_topics())


@_handles(P.DescribeTopic)
def _describe_topic(conn: Connection, f: P.DescribeTopic) -> None:
    _result(conn, f.request_id, conn.server.broker.describe_topic(f.name))


@_handles(P.SetPartitions)
def _set_partitions(conn: Connection, f: P.SetPartitions) -> None:
    server = conn.server
    _result(conn, f.request_id,
            server.broker.set_partitions(f.name, f.partitions, now_us=server.now_us()))


@_handles(P.GroupList)
def _group_list(conn: Connection, f: P.GroupList) -> None:
    _result(conn, f.request_id, conn.server.broker.list_groups(f.topic))


@_handles(P.GroupDescribe)
def _group_describe(conn: Connection, f: P.GroupDescribe) -> None:
    _result(conn, f.request_id, conn.server.broker.describe_group(f.topic, f.group))


@_handles(P.GroupReset)
def _group_reset(conn: Connection, f: P.GroupReset) -> None:
    server = conn.server
    token = server.broker.reset_group(f.topic, f.group, f.start, now_us=server.now_us())
    rid = f.request_id
    _after_sync(conn, token, _Answer(rid, lambda: P.Result(request_id=rid)))


@_handles(P.DlqRedrive)
def _dlq_redrive(conn: Connection, f: P.DlqRedrive) -> None:
    if f.filter:
        raise Unsupported("redrive by filter is not supported by this server yet; omit the filter")
    server = conn.server
    n = server.broker.redrive(f.topic, f.group, limit=f.limit, now_us=server.now_us())
    _result(conn, f.request_id, n)


@_handles(P.DlqList)
def _dlq_list(conn: Connection, f: P.DlqList) -> None:
    raise Unsupported("listing dead letters over the wire is not supported yet; consume "
                      "the '<topic>.dlq' topic instead")


def _call_create_group(conn: Connection, args: dict[str, Any]) -> Any:
    server = conn.server
    settings = _convert(args.get("settings") or {}, GroupSettings, "group settings")
    settings.validate()
    return server.broker.create_group(args["topic"], args["group"], settings,
                                      now_us=server.now_us())


def _call_update_group(conn: Connection, args: dict[str, Any]) -> Any:
    server = conn.server
    settings = _convert(args.get("settings") or {}, GroupSettings, "group settings")
    settings.validate()
    server.broker.update_group(args["topic"], args["group"], settings, now_us=server.now_us())
    return server.broker.describe_group(args["topic"], args["group"])


def _call_delete_group(conn: Connection, args: dict[str, Any]) -> Any:
    conn.server.broker.delete_group(args["topic"], args["group"])
    return None


_CALLS: dict[str, Callable[[Connection, dict[str, Any]], Any]] = {
    "create_group": _call_create_group,
    "update_group": _call_update_group,
    "delete_group": _call_delete_group,
}


@_handles(P.Call)
def _call(conn: Connection, f: P.Call) -> None:
    fn = _CALLS.get(f.method)
    if fn is None:
        raise Unsupported(f"unknown admin call {f.method!r}; this server knows {sorted(_CALLS)}")
    try:
        value = fn(conn, f.args)
    except KeyError as exc:
        raise InvalidArgument(f"{f.method} needs argument {exc.args[0]!r}") from None
    _result(conn, f.request_id, value)
