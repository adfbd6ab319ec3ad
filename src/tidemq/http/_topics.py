"""Handlers of the topic routes: list, create/grow, describe, delete, publish, browse.

Each handler is a few broker calls on the server's loop. Writes answer once durable at the
topic's level (``Backend.durable``), like the binary protocol's ``after_sync``.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
from aiohttp import web

from ..broker import TopicConfig, TopicInfo
from ..broker._limits import check_records
from ..broker._names import validate_topic_name
from ..broker._stats import browse, public_headers
from ..client._common import make_record
from ..errors import BacklogFull, InvalidArgument, TideMQError, TopicExists, UnknownTopic
from ..storage import Record
from ._authz import OPS
from ._problem import decode_bytes, encode_bytes, json_response, problem, read_json
from ._types import (
    BrowsedMessage,
    BrowseOut,
    MessageIn,
    PartitionOut,
    Published,
    PublishIn,
    PublishOut,
    TopicListOut,
    TopicOut,
    TopicSettingsIn,
)

if TYPE_CHECKING:
    from ._app import HttpApi

__all__ = ["list_topics", "put_topic", "get_topic", "delete_topic", "publish", "browse_messages",
           "MAX_PUBLISH", "MAX_BROWSE", "topic_out", "query_int"]

MAX_PUBLISH: Final = 10_000  # messages one publish request may carry
MAX_BROWSE: Final = 1000
_PUBLISH_BODY: Any = PublishIn | list[MessageIn]  # {"messages": [...]} or the bare list


def topic_out(info: TopicInfo) -> TopicOut:
    parts = [PartitionOut(p.partition, p.start_offset, p.end_offset) for p in info.partitions]
    return TopicOut(name=info.name, partitions=parts, config=info.config, groups=info.groups,
                    delayed=info.delayed,
                    messages=sum(p.end_offset - p.start_offset for p in info.partitions))


def query_int(request: web.Request, name: str, default: int | None, lo: int,
              hi: int | None = None) -> int | None:
    """The query parameter ``name`` as an int in [lo, hi], ``default`` when absent."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"query parameter {name} must be an integer, got {text[:40]!r}") \
            from None
    if value < lo or (hi is not None and value > hi):
        bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise InvalidArgument(f"query parameter {name} must be {bound}, got {value}")
    return value


async def list_topics(api: HttpApi, request: web.Request) -> web.StreamResponse:
    who = api.access(request)
    topics = [topic_out(t) for t in api.broker.list_topics()
              if any(who.may(op, "topic", t.name) for op in OPS)]
    return json_response(TopicListOut(topics=topics))


async def put_topic(api: HttpApi, request: web.Request) -> web.StreamResponse:
    name = request.match_info["topic"]
    body = await read_json(request, TopicSettingsIn)
    given = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
    broker, now = api.broker, api.backend.now_us()
    try:
        info = broker.describe_topic(name)
    except UnknownTopic:
        try:
            config = msgspec.convert(given, TopicConfig)
        except msgspec.ValidationError as exc:
            raise InvalidArgument(f"bad topic settings: {exc}") from None
        config.validate()
        info = broker.create_topic(name, config, now_us=now)
        return json_response(topic_out(info), status=201)
    want = given.pop("partitions", None)
    current = msgspec.structs.asdict(info.config)
    differ = sorted(k for k, v in given.items() if current.get(k) != v)
    if differ:
        raise TopicExists(f"topic {info.name!r} exists with other {', '.join(differ)}; only "
                          "partitions can change (grow) on an existing topic")
    if want is not None and want != len(info.partitions):
        info = broker.set_partitions(name, want, now_us=now)
    return json_response(topic_out(info))


async def get_topic(api: HttpApi, request: web.Request) -> web.StreamResponse:
    return json_response(topic_out(api.broker.describe_topic(request.match_info["topic"])))


async def delete_topic(api: HttpApi, request: web.Request) -> web.StreamResponse:
    name = request.match_info["topic"]
    info = api.broker.describe_topic(name)
    api.broker.delete_topic(name, now_us=api.backend.now_us())
    api.backend.end_topic(info.name)
    api.consumers.forget_topic(info.name)
    api.dead_letters.forget(info.name)
    api.backend.want_push()
    return web.Response(status=204)


# --- publish ----------------------------------------------------------------------------------


def _record(m: MessageIn) -> Record:
    body = decode_bytes(m.payload, m.encoding, "payload")
    key = None if m.key is None else decode_bytes(m.key, m.key_encoding, "key")
    return make_record(body, key=key, routing_key=m.routing_key, headers=m.headers,
                       priority=m.priority, delay=m.delay, ttl=m.ttl, dedup_id=m.dedup_id)


async def publish(api: HttpApi, request: web.Request) -> web.StreamResponse:
    """Publish a list of messages: each is checked alone (one bad message does not refuse
    the others), the good ones are stored together (each partition's share one atomic
    batch), and the answer comes once they are durable at the topic's level. 200 with a
    result per message when any was stored; when none was, the first error as a problem
    (its status), with the per-message results in ``results``."""
    name = request.match_info["topic"]
    body: PublishIn | list[MessageIn] = await read_json(request, _PUBLISH_BODY)
    messages = body.messages if isinstance(body, PublishIn) else body
    if not 1 <= len(messages) <= MAX_PUBLISH:
        raise InvalidArgument(f"a publish carries 1 to {MAX_PUBLISH} messages, "
                              f"got {len(messages)}")
    b = api.backend
    broker = b.broker
    try:
        info = broker.describe_topic(name)
        topic, max_bytes = info.name, info.config.max_message_bytes
    except UnknownTopic:
        if not b.config.auto_create_topics:
            raise
        validate_topic_name(name)
        topic, max_bytes = name, TopicConfig().max_message_bytes
    results: list[Published] = []
    records: list[Record] = []
    index: list[int] = []
    for i, m in enumerate(messages):
        try:
            rec = _record(m)
            check_records([rec], max_bytes)
        except TideMQError as exc:
            results.append(Published(index=i, error=problem(exc)))
            continue
        results.append(Published(index=i))
        records.append(rec)
        index.append(i)
    if records:
        try:
            ids = await _store(api, topic, records)
        except TideMQError as exc:
            err = problem(exc)
            for i in index:
                results[i] = Published(index=i, error=err)
        else:
            for i, mid in zip(index, ids, strict=True):
                results[i] = Published(index=i, id=mid)
    failed = sum(1 for r in results if r.error is not None)
    out = PublishOut(topic=topic, published=len(results) - failed, failed=failed,
                     results=results)
    if failed == len(results):
        first = next(r.error for r in results if r.error is not None)
        doc = msgspec.to_builtins(first)
        doc["instance"] = request.path
        doc["results"] = msgspec.to_builtins(results)
        return web.Response(status=first.status, body=msgspec.json.encode(doc),
                            content_type="application/problem+json")
    return json_response(out)


async def _store(api: HttpApi, topic: str, records: list[Record]) -> list[str]:
    """broker.publish, waiting (as the binary protocol does) while a ``block`` topic is at its
    backlog limit, then until durable."""
    b = api.backend
    since = b.mono_us()
    while True:
        try:
            result = b.broker.publish(topic, records, now_us=b.now_us())
            break
        except BacklogFull as exc:
            wait = b.driver.core.blocked(topic, exc, since, b.mono_us())  # raises: give up
            await asyncio.sleep(wait)
        finally:
            b.want_push()
    await b.durable(result.token)
    return result.ids


# --- browse -----------------------------------------------------------------------------------


def _time_param(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time with a zone."""
    try:
        value = float(text)
    except ValueError:
        value = _iso_time(text)
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"from_time must be a finite time >= 0, got {text[:40]!r}")
    return value


def _iso_time(text: str) -> float:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument("from_time must be epoch seconds or an ISO 8601 time, "
                              f"got {text[:40]!r}") from None
    if when.tzinfo is None:
        raise InvalidArgument("from_time needs a time zone (e.g. 2025-01-01T00:00:00Z)")
    return when.timestamp()


def message_fields(body: bytes, key: bytes | None) -> dict[str, Any]:
    payload, encoding = encode_bytes(body)
    out: dict[str, Any] = {"payload": payload, "encoding": encoding}
    if key is not None:
        out["key"], out["key_encoding"] = encode_bytes(key)
    return out


async def browse_messages(api: HttpApi, request: web.Request) -> web.StreamResponse:
    """Messages of one partition from an offset or a time, without side effects: no group,
    lease or cursor changes."""
    name = request.match_info["topic"]
    try:
        partition = int(request.match_info["partition"])
    except ValueError:
        raise InvalidArgument("the partition in the path must be an integer") from None
    from_offset = query_int(request, "from_offset", None, 0)
    text = request.query.get("from_time")
    from_time_us = None if not text else int(_time_param(text) * 1_000_000)
    limit = query_int(request, "limit", 100, 1, MAX_BROWSE)
    assert limit is not None
    info = api.broker.describe_topic(name)
    got, next_offset = browse(api.broker, name, partition, from_offset=from_offset,
                              from_time_us=from_time_us, limit=limit)
    messages = [
        BrowsedMessage(id=m.id, partition=m.partition, offset=m.offset,
                       timestamp=m.timestamp_us / 1e6, routing_key=m.record.routing_key,
                       headers=public_headers(m.record.headers), priority=m.record.priority,
                       **message_fields(m.record.body, m.record.key))
        for m in got
    ]
    return json_response(BrowseOut(topic=info.name, partition=partition, messages=messages,
                                   next_offset=next_offset))
