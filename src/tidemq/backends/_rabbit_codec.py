"""A TideMQ record as an AMQP 0-9-1 message, and back; names on RabbitMQ.

**Message.** The body is the body. ``message_id`` is the TideMQ id, ``delivery_mode`` 2
(persistent), ``expiration`` the TTL of an immediate message (RabbitMQ dead-letters it as
``expired``). Everything else a record carries (key, routing key, user headers, priority, due
time, TTL, publish time, and the delivery count a delayed copy carries) travels in one AMQP header,
``x-tidemq-meta``, as JSON: one header keeps user headers apart from RabbitMQ's own (``x-death``,
``x-delivery-count``, ``x-first-death-*``). A message without it (published by a plain AMQP
client) is a bare body whose string-valued, non-``x-`` headers become the user headers.

**Dead letters RabbitMQ made** (``x-delivery-limit`` reached, TTL expired) carry ``x-death`` but
no TideMQ origin headers: :func:`decode` adds SPEC's ``x-tidemq-origin-*`` headers from the
``message_id`` (topic, partition, offset, id) and ``x-first-death-queue`` / ``-reason``.

**Names** (``P`` the connection prefix, ``T`` the escaped topic key, ``I`` the incarnation,
``G`` the escaped group name, ``p`` a partition): topic exchange ``P.T.I``; group queue
``P.T.I.G.p``; the group's dead-letter fanout exchange ``P.T.I.G.dlx`` and dead-letter queue
``P.T.I.G.dead``; wait queues ``P.wait.<ms>.<target>``; metadata stream ``P.meta``. Tokens are
the NATS backend's escapes (``[A-Za-z0-9-]`` kept, ``_XX`` per byte otherwise, long ones cut and
hashed), so a name is at most ~240 bytes, within AMQP's 255.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final, NamedTuple

import xxhash

from ..broker._deadletters import (
    H_COUNT,
    H_GROUP,
    H_ID,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
    ORIGIN,
)
from ..broker._ids import parse_id
from ..errors import UnknownMessage
from ..storage import Record
from ._nats_names import escape, shorten
from ._recmeta import record_meta

__all__ = ["META", "WAIT_HEADER", "encode", "Decoded", "decode", "token", "routing_key_for",
           "binding_keys", "REASONS"]

META: Final = "x-tidemq-meta"
WAIT_HEADER: Final = "x-tidemq-wait"
TOKEN_MAX: Final = 60
# RabbitMQ's x-death reasons as SPEC's dead-letter reasons.
REASONS: Final = {"delivery_limit": "max_deliveries", "expired": "expired",
                  "rejected": "rejected", "maxlen": "overflow"}


def token(name: str) -> str:
    """A name as a word of a queue or exchange name (no dots, at most 60 characters)."""
    return shorten(escape(name), TOKEN_MAX)


def is_wait_queue(name: str) -> bool:
    """``P.wait.<ms>.<target>``: a target has at least 3 words, a group queue has 5 in all."""
    words = name.split(".")
    return len(words) >= 6 and words[1] == "wait" and words[2].isdigit()


def routing_key_for(partition: int, routing_key: str | None) -> str:
    """The AMQP routing key of a message of ``partition``: ``p`` then its routing words."""
    return f"{partition}.{routing_key}" if routing_key else str(partition)


def binding_keys(partition: int, partitions: int, patterns: list[str] | None) -> list[str]:
    """The binding keys of a group queue: ``p.<pattern>`` per pattern (``p.#`` without a
    filter; ``p`` for ``""``, the empty routing key); a one-partition topic binds
    ``*.<pattern>`` so that dead letters, which keep their origin partition's word, reach it."""
    first = "*" if partitions == 1 else str(partition)
    if not patterns:
        return [f"{first}.#"]
    return [f"{first}.{p}" if p else first for p in patterns]


def encode(rec: Record, message_id: str, timestamp_us: int, *, count: int = 0,
           expiration: bool = True) -> tuple[bytes, dict[str, Any]]:
    """(body, properties as ``aiormq.spec.Basic.Properties`` keywords)."""
    fields = record_meta(rec)
    if not fields and not count and type(timestamp_us) is int:
        raw = f'{{"ts":{timestamp_us}}}'  # a bare body: json.dumps's text, written out
    else:
        meta: dict[str, Any] = {"ts": timestamp_us, **fields}
        if count:
            meta["c"] = count
        raw = json.dumps(meta, separators=(",", ":"), ensure_ascii=False)
    props: dict[str, Any] = {"message_id": message_id, "delivery_mode": 2,
                             "headers": {META: raw}}
    if rec.ttl_us and not rec.deliver_at_us and expiration:
        props["expiration"] = str(max(1, (rec.ttl_us + 999) // 1000))
    return rec.body, props


class Decoded(NamedTuple):
    record: Record
    message_id: str | None
    timestamp_us: int
    base_count: int  # deliveries before this copy (a delayed nack's copy carries it)
    server_count: int  # x-delivery-count: returns of this copy to its queue
    death_queue: str | None  # the queue a dead letter RabbitMQ made came from (x-death)
    death_reason: str | None  # why it was dead-lettered there


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def decode(body: bytes, properties: Any) -> Decoded:
    """A delivered AMQP message as a record (see the module docstring)."""
    amqp: dict[str, Any] = dict(getattr(properties, "headers", None) or {})
    raw = amqp.get(META)
    mid = getattr(properties, "message_id", None)
    if len(amqp) == 1 and type(raw) is str and raw[:6] == '{"ts":' and raw[-1:] == "}" \
            and type(mid) is str:
        digits = raw[6:-1]  # a bare body's meta (encode writes it out), a first delivery
        if digits.isdecimal() and digits.isascii() and (digits[0] != "0" or digits == "0"):
            return Decoded(Record(body), mid, int(digits), 0, 0, None, None)  # JSON's int
    xdc = amqp.get("x-delivery-count")
    server_count = int(xdc) if isinstance(xdc, int) else 0
    death_queue = death_reason = None
    deaths = amqp.get("x-death")
    if isinstance(deaths, list):  # most recent first; a wait queue's hop is no death
        for entry in deaths:
            if not isinstance(entry, dict):
                continue
            q = _text(entry.get("queue", ""))
            if not is_wait_queue(q):
                death_queue, death_reason = q, _text(entry.get("reason", ""))
                break
    meta: dict[str, Any] = {}
    if raw is not None:
        try:
            parsed = json.loads(_text(raw))
            if isinstance(parsed, dict):
                meta = parsed
        except ValueError:
            meta = {}
    try:
        key = base64.b64decode(meta["k"]) if "k" in meta else None
        headers = meta.get("h") or {}
        if not isinstance(headers, dict):
            headers = {}
        headers = {str(k): str(v) for k, v in headers.items()}
        if raw is None:  # a plain AMQP client's message: its own headers
            headers = {str(k): _text(v) for k, v in amqp.items()
                       if not str(k).startswith("x-") and isinstance(v, str | bytes | int)}
        rk = meta.get("r")
        rec = Record(body, key, rk if isinstance(rk, str) else None, headers or None,
                     int(meta.get("p", 0)), int(meta.get("a", 0)), int(meta.get("t", 0)), None)
        ts = int(meta.get("ts", 0))
        base = int(meta.get("c", 0))
    except (ValueError, TypeError):
        rec, ts, base = Record(body), 0, 0
    return Decoded(rec, _text(mid) if mid is not None else None, ts, base, server_count,
                   death_queue, death_reason)


def with_origin(d: Decoded, group_of_queue: dict[str, tuple[str, int]],
                max_deliveries: dict[str, int]) -> Record:
    """The record of a dead letter RabbitMQ made, with SPEC's origin headers added (a record
    that has them already, or is no dead letter, is returned as it is).

    ``group_of_queue``: queue name -> (group, partition) as the metadata says;
    ``max_deliveries``: group queue name -> the group's max_deliveries.
    """
    rec = d.record
    if d.death_queue is None or (rec.headers and H_TOPIC in rec.headers):
        return rec
    headers = {k: v for k, v in (rec.headers or {}).items() if not k.startswith(ORIGIN)}
    group, part = group_of_queue.get(d.death_queue, (d.death_queue, 0))
    if d.message_id is not None:
        try:
            ref = parse_id(d.message_id)
            headers[H_TOPIC] = ref.topic
            headers[H_PARTITION] = str(ref.partition)
            headers[H_OFFSET] = str(ref.offset)
            headers[H_ID] = d.message_id
        except UnknownMessage:
            headers[H_PARTITION] = str(part)
    headers[H_GROUP] = group
    reason = REASONS.get(d.death_reason or "", d.death_reason or "dead_lettered")
    count = d.base_count
    if reason == "max_deliveries":
        count = max(count, max_deliveries.get(d.death_queue, count))
    headers[H_COUNT] = str(count)
    headers[H_REASON] = reason
    return Record(rec.body, rec.key, rec.routing_key, headers, rec.priority, 0, 0, None)


def offset_of(message_id: str | None, extra: str) -> int:
    """A 63-bit offset for a message whose id is not one of this topic's (a dead letter, a
    plain AMQP client's message): a hash of what names it."""
    return xxhash.xxh3_64_intdigest(f"{message_id}|{extra}".encode()) >> 1
