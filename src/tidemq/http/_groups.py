"""Handlers of the group routes: groups, receive and settle, dead letters and redrive."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

import msgspec
from aiohttp import web

from ..broker import GroupInfo, GroupSettings
from ..broker._stats import dead_letters, oldest_unfinished_us, public_headers
from ..errors import InvalidArgument, UnknownGroup
from ._problem import json_response, problem, read_json
from ._topics import message_fields, query_int
from ._types import (
    AckIn,
    DeadLetterOut,
    DlqListOut,
    DlqOut,
    ExtendIn,
    GroupListOut,
    GroupOut,
    GroupPartitionOut,
    GroupSettingsIn,
    NackIn,
    ReceivedMessage,
    ReceiveIn,
    ReceiveOut,
    RedriveIn,
    Redriven,
    RedriveOut,
    RejectIn,
    ResetIn,
    Settled,
    SettleOut,
)

if TYPE_CHECKING:
    from ._app import HttpApi

__all__ = ["list_groups", "put_group", "get_group", "delete_group", "reset_group", "receive",
           "ack", "nack", "reject", "extend", "dlq_summary", "dlq_messages", "dlq_redrive",
           "group_out"]

MAX_DLQ_LIST: Final = 1000
REDRIVE_SECONDS: Final = 30.0  # one redrive request moves for at most this long (with a rate)


def group_out(api: HttpApi, g: GroupInfo, stamps: list[int | None], now_us: int,
              ends: dict[int, int]) -> GroupOut:
    """A group's state, with lag in seconds from the stored timestamps ``stamps`` (per
    partition: the oldest message not done, None when none); ``ends``: partition -> end."""
    parts = []
    for p in g.partitions:
        ts = stamps[p.partition] if p.partition < len(stamps) else None
        parts.append(GroupPartitionOut(
            partition=p.partition, committed=p.committed, end_offset=ends.get(p.partition, 0),
            lag=p.lag, lag_seconds=_age(ts, now_us), in_flight=p.in_flight))
    stats = api.broker.stats
    key = (g.topic, g.name)
    redelivered = sum(n for k, n in stats.redelivered.items() if k[:2] == key)
    dead = sum(n for k, n in stats.dead_lettered.items() if k[:2] == key)
    return GroupOut(topic=g.topic, name=g.name, settings=g.settings, members=len(g.members),
                    lag=g.lag, lag_seconds=max((p.lag_seconds for p in parts), default=0.0),
                    in_flight=g.in_flight, delayed=g.delayed,
                    delivered=stats.delivered.get(key, 0), redelivered=redelivered,
                    dead_lettered=dead, partitions=parts)


def _age(ts_us: int | None, now_us: int) -> float:
    return 0.0 if ts_us is None else max(0.0, (now_us - ts_us) / 1e6)


def _ends(api: HttpApi, topic: str) -> dict[int, int]:
    return {p.partition: p.end_offset for p in api.broker.describe_topic(topic).partitions}


def _describe(api: HttpApi, topic: str, group: str) -> GroupOut:
    g = api.broker.describe_group(topic, group)
    stamps = oldest_unfinished_us(api.broker, topic).get(g.name, [])
    return group_out(api, g, stamps, api.backend.now_us(), _ends(api, topic))


async def list_groups(api: HttpApi, request: web.Request) -> web.StreamResponse:
    topic = request.match_info["topic"]
    groups = api.broker.list_groups(topic)
    stamps = oldest_unfinished_us(api.broker, topic)
    now, ends = api.backend.now_us(), _ends(api, topic)
    return json_response(GroupListOut(
        groups=[group_out(api, g, stamps.get(g.name, []), now, ends) for g in groups]))


async def put_group(api: HttpApi, request: web.Request) -> web.StreamResponse:
    """Create the group with these settings, or update an existing one to them."""
    topic, group = request.match_info["topic"], request.match_info["group"]
    body = await read_json(request, GroupSettingsIn)
    given = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
    try:
        settings = msgspec.convert(given, GroupSettings)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"bad group settings: {exc}") from None
    settings.validate()
    b = api.backend
    broker = b.broker
    try:
        current = broker.describe_group(topic, group)
    except UnknownGroup:
        current = None
    if current is None:
        broker.create_group(topic, group, settings, now_us=b.now_us())
        status = 201
    else:
        if current.settings != settings:
            broker.update_group(topic, group, settings, now_us=b.now_us(), mono_us=b.mono_us())
        status = 200
    b.want_push()
    await b.durable(broker.barrier(topic))  # a group made under 'always' survives a power cut
    return json_response(_describe(api, topic, group), status=status)


async def get_group(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return json_response(_describe(api, request.match_info["topic"], request.match_info["group"]))


async def delete_group(api: HttpApi, request: web.Request) -> web.StreamResponse:
    topic, group = request.match_info["topic"], request.match_info["group"]
    b = api.backend
    b.broker.delete_group(topic, group, now_us=b.now_us())
    api.consumers.forget_group(topic, group)
    api.dead_letters.forget(topic, group)
    b.want_push()
    await b.durable(b.broker.barrier(topic))
    return web.Response(status=204)


async def reset_group(api: HttpApi, request: web.Request) -> web.StreamResponse:
    topic, group = request.match_info["topic"], request.match_info["group"]
    body = await read_json(request, ResetIn)
    b = api.backend
    b.broker.reset_group(topic, group, body.start, now_us=b.now_us())
    b.want_push()
    await b.durable(b.broker.barrier(topic))
    return json_response(_describe(api, topic, group))


# --- receive and settle -----------------------------------------------------------------------


async def receive(api: HttpApi, request: web.Request) -> web.StreamResponse:
    topic, group = request.match_info["topic"], request.match_info["group"]
    body = await read_json(request, ReceiveIn)
    got = await api.consumers.receive(topic, group, body.max_messages, body.wait, body.lease)
    messages = [
        ReceivedMessage(receipt=receipt, id=d.id, partition=d.partition, offset=d.offset,
                        timestamp=d.timestamp_us / 1e6, delivery_count=d.delivery_count,
                        lease_expires_at=expires, routing_key=d.routing_key,
                        headers=public_headers(d.headers), priority=d.priority,
                        **message_fields(d.body, d.key))
        for d, receipt, expires in got
    ]
    return json_response(ReceiveOut(messages=messages))


async def _settle(api: HttpApi, request: web.Request, op: str,
                  body: AckIn | NackIn | RejectIn | ExtendIn) -> web.StreamResponse:
    topic, group = request.match_info["topic"], request.match_info["group"]
    kwargs: dict[str, object] = {}
    if isinstance(body, NackIn):
        kwargs["delay"] = body.delay
    elif isinstance(body, RejectIn):
        kwargs["reason"] = body.reason
    elif isinstance(body, ExtendIn):
        kwargs["seconds"] = body.seconds
    errors = await api.consumers.settle(topic, group, op, body.receipts, **kwargs)  # type: ignore[arg-type]
    results = [Settled(receipt=r, ok=e is None, error=None if e is None else problem(e))
               for r, e in zip(body.receipts, errors, strict=True)]
    failed = sum(1 for e in errors if e is not None)
    return json_response(SettleOut(settled=len(results) - failed, failed=failed,
                                   results=results))


async def ack(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return await _settle(api, request, "ack", await read_json(request, AckIn))


async def nack(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return await _settle(api, request, "nack", await read_json(request, NackIn))


async def reject(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return await _settle(api, request, "reject", await read_json(request, RejectIn))


async def extend(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return await _settle(api, request, "extend", await read_json(request, ExtendIn))


# --- dead letters -----------------------------------------------------------------------------


def _dlq(api: HttpApi, topic: str, group: str) -> DlqOut:
    g = api.broker.describe_group(topic, group)
    s = api.dead_letters.summary(api.broker, topic, group)
    now = time.time()
    return DlqOut(topic=g.topic, group=g.name, dead_letter_topic=s.topic or None, count=s.count,
                  oldest_age_seconds=None if s.oldest_us is None
                  else max(0.0, now - s.oldest_us / 1e6),
                  reasons=dict(s.reasons), complete=s.complete)


async def dlq_summary(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return json_response(_dlq(api, request.match_info["topic"], request.match_info["group"]))


def _position(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    p, sep, o = text.partition(":")
    if not sep or not p.isdigit() or not o.isdigit() or len(text) > 40:
        raise InvalidArgument("after must be the 'next' of an earlier answer (PARTITION:OFFSET)")
    return int(p), int(o)


async def dlq_messages(api: HttpApi, request: web.Request) -> web.StreamResponse:
    topic, group = request.match_info["topic"], request.match_info["group"]
    limit = query_int(request, "limit", 100, 1, MAX_DLQ_LIST)
    assert limit is not None
    after = _position(request.query.get("after"))
    got, nxt = dead_letters(api.broker, topic, group, after=after, limit=limit)
    messages = [
        DeadLetterOut(id=e.id, origin_id=e.origin_id, reason=e.reason,
                      delivery_count=e.delivery_count, dead_lettered_at=e.dead_lettered_us / 1e6,
                      origin_partition=e.origin_partition, origin_offset=e.origin_offset,
                      routing_key=e.record.routing_key, headers=public_headers(e.record.headers),
                      priority=e.record.priority, **message_fields(e.record.body, e.record.key))
        for e in got
    ]
    return json_response(DlqListOut(messages=messages,
                                    next=None if nxt is None else f"{nxt[0]}:{nxt[1]}"))


async def dlq_redrive(api: HttpApi, request: web.Request) -> web.StreamResponse:
    """Move the group's dead letters back, ``redrive_batch`` per loop iteration (or at
    ``rate`` per second), for at most :data:`REDRIVE_SECONDS` per request."""
    topic, group = request.match_info["topic"], request.match_info["group"]
    body = await read_json(request, RedriveIn)
    if body.ids is not None:
        return await _redrive_ids(api, topic, group, body)
    limit, rate = body.limit, body.rate
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must be >= 0, got {limit}")
    if rate is not None and not 0 < rate <= 1e9:
        raise InvalidArgument(f"rate must be a number of messages per second > 0, got {rate!r}")
    b = api.backend
    broker = b.broker
    broker.describe_group(topic, group)  # UnknownTopic / UnknownGroup before anything
    batch = b.config.redrive_batch
    step = batch if rate is None else max(1, min(batch, int(rate / 10)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REDRIVE_SECONDS
    moved = 0
    timed_out = False
    while True:
        want = step if limit is None else min(step, limit - moved)
        if want <= 0:
            break
        n = broker.redrive(topic, group, limit=want, now_us=b.now_us(), max_batch=batch)
        moved += n
        b.want_push()
        if n < want:
            break
        if loop.time() >= deadline:
            timed_out = True
            break
        await asyncio.sleep(0 if rate is None else n / rate)  # other requests run meanwhile
    await b.durable(broker.barrier(topic))
    left = api.dead_letters.summary(broker, topic, group)
    return json_response(RedriveOut(moved=moved, remaining=left.count,
                                    complete=left.complete and not timed_out))


async def _redrive_ids(api: HttpApi, topic: str, group: str, body: RedriveIn) -> web.Response:
    """Move the dead letters named by ``body.ids``; one result per id (a stale or foreign id
    is an error of its own, the others still move)."""
    if body.limit is not None or body.rate is not None:
        raise InvalidArgument("ids goes with neither limit nor rate: give the ids, or limit "
                              "and rate without ids")
    b = api.backend
    broker = b.broker
    errors = broker.redrive_ids(topic, group, body.ids or [], now_us=b.now_us())
    b.want_push()
    await b.durable(broker.barrier(topic))
    results = [Redriven(id=i, ok=e is None, error=None if e is None else problem(e))
               for i, e in zip(body.ids or [], errors, strict=True)]
    left = api.dead_letters.summary(broker, topic, group)
    return json_response(RedriveOut(moved=sum(1 for e in errors if e is None),
                                    remaining=left.count, complete=left.complete,
                                    results=results))
