"""AMQP message properties <-> TideMQ record fields.

A record's headers are strings; AMQP properties are typed (a field table may nest tables,
decimals, timestamps, byte strings). So the properties travel whole, encoded as AMQP encodes
them (pamqp's content-header encoding, base64), in the record header ``amqp.p``, and come back
unchanged on delivery. Beside it, each scalar entry of the ``headers`` table is copied as a
plain record header (so header filters — headers exchanges — and TideMQ's own consumers see
them); ``priority`` becomes the record's priority (0..9, higher values are 9) and
``expiration`` (ms) its time to live. A record published by a TideMQ client (no ``amqp.p``)
is delivered with its headers as the ``headers`` table.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from pamqp import commands, header

from ..broker._deadletters import DEATHS, MAX_DEATH_REASON, MAX_DEATHS, ORIGIN, deaths_of
from ..broker._limits import MAX_HEADERS
from ._errors import AmqpError
from ._model import QUEUE_TOPICS, exchange_topic, group_name, queue_topic

__all__ = ["PROPS_HEADER", "MAX_DELAY_MS", "REJECTED", "delay_ms", "to_record",
           "from_record", "raw_properties"]

PROPS_HEADER: Final = "amqp.p"
Properties = commands.Basic.Properties
_EMPTY: Final = Properties()
_COPIED_HEADERS: Final = MAX_HEADERS // 2
_MAX_COPIED_VALUE: Final = 1024
MAX_DELAY_MS: Final = 2**32 - 1  # the delayed-message plugin's longest x-delay (~49.7 days)
REJECTED: Final = "rejected by an AMQP consumer (requeue=false)"  # the broker's reject reason
_ORIGIN_TOPIC: Final = ORIGIN + "topic"  # set on the dead letters the broker writes
_MAX_TIME_MS: Final = 253_402_300_799_000  # 9999-12-31T23:59:59Z, datetime's last second
Names = Callable[[str, str], tuple[str, str]]  # (topic, group) -> (exchange, queue)


def to_record(props: Properties | None, raw: bytes | None = None) \
        -> tuple[dict[str, str] | None, int, int]:
    """``(record headers, priority, ttl µs)`` for a published message's properties; ``raw``:
    their encoding as received (flags and values), stored as it is."""
    if props is None:
        return None, 0, 0
    if raw is None:
        raw = header.ContentHeader(0, 0, props).marshal()[12:]
    if len(raw) <= 2 and not any(raw):  # no property set: the flags word only
        return None, 0, 0
    headers: dict[str, str] = {}
    table = props.headers
    if table:
        for k, v in list(table.items())[:_COPIED_HEADERS]:
            text = _scalar(v)
            # A dead letter's origin headers (a republished copy has them in its table) are
            # the broker's, for the dead letters it writes: not copied.
            if text is not None and k != PROPS_HEADER and len(text) <= _MAX_COPIED_VALUE \
                    and not str(k).startswith(ORIGIN):
                headers[str(k)] = text
    # "<n>:<base64>": n headers were copied beside it (a record with more has others, e.g.
    # a dead letter's, which delivery adds to the table).
    headers[PROPS_HEADER] = f"{len(headers)}:{base64.b64encode(raw).decode('ascii')}"
    if table and DEATHS not in headers:
        deaths = _deaths_from_x_death(table.get("x-death"))
        if deaths:  # a republished dead letter: its history goes on (as RabbitMQ's x-death)
            headers[DEATHS] = deaths
    priority = min(max(int(props.priority or 0), 0), 9)
    ttl_us = 0
    if props.expiration:
        try:
            ttl_us = max(int(props.expiration), 0) * 1000 or 1
        except ValueError:
            ttl_us = 0
    return headers, priority, ttl_us


def delay_ms(props: Properties | None) -> int:
    """The ``x-delay`` header (ms; the delayed-message exchange's) of a message, 0 when it has
    none or it is not positive; AmqpError 406 for a value that is not a whole number of ms
    from 0 to :data:`MAX_DELAY_MS` (an int, or a string of one)."""
    table = props.headers if props is not None else None
    if not table or "x-delay" not in table:
        return 0
    v = table["x-delay"]
    if isinstance(v, bytes | str):
        try:
            v = int(v)
        except ValueError:
            v = None
    if isinstance(v, bool) or not isinstance(v, int) or v > MAX_DELAY_MS:
        raise AmqpError(406, "PRECONDITION_FAILED - header 'x-delay' must be a whole number "
                             f"of milliseconds up to {MAX_DELAY_MS}, got {table['x-delay']!r}")
    return max(v, 0)


def _scalar(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int | float):
        return str(v)
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def raw_properties(headers: dict[str, str], priority: int, routing_key: str | None = None,
                   names: Names | None = None) -> bytes:
    """The encoded properties (flags and values) to deliver a record with: as published when
    the record has no other headers (no decoding), else :func:`from_record` encoded."""
    raw = headers.get(PROPS_HEADER) if headers else None
    if raw is not None:
        n, _, data = raw.partition(":")
        if n.isdigit() and len(headers) == int(n) + 1:
            try:
                return base64.b64decode(data)
            except (binascii.Error, ValueError):
                pass
    elif not headers and not priority:
        return b"\x00\x00"
    return bytes(from_record(headers, priority, routing_key, names).marshal())


# The broker's dead-letter reasons as RabbitMQ's x-death reasons (a consumer's reject and
# any other reason given to the broker's reject: "rejected").
_DEATH_REASONS: Final = {"expired": "expired", "max_deliveries": "delivery_limit"}
_BROKER_REASONS: Final = {"rejected": REJECTED, "expired": "expired",
                          "delivery_limit": "max_deliveries"}


def _deaths_from_x_death(x_death: Any) -> str | None:
    """An x-death list (a republished dead letter's) as the broker's dead-letter history
    (``x-tidemq-deaths``), so the next death counts on; None when it is not one. Entries that
    are not well formed are left out."""
    if not isinstance(x_death, list):
        return None
    out: list[list[Any]] = []
    for d in x_death[:MAX_DEATHS]:
        if not isinstance(d, dict):
            continue
        queue, exchange, reason = (_text(d.get(k)) for k in ("queue", "exchange", "reason"))
        count, at = d.get("count"), d.get("time")
        if queue is None or exchange is None or reason is None or isinstance(count, bool) \
                or not isinstance(count, int) or not 0 < count < 2**53:
            continue
        topic = queue_topic(queue) if exchange == "" else exchange_topic(exchange)
        if isinstance(at, datetime):
            first_ms = int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)
        else:
            first_ms = 0
        entry: list[Any] = [topic, group_name(queue),
                            _BROKER_REASONS.get(reason, reason)[:MAX_DEATH_REASON], count,
                            min(max(first_ms, 0), _MAX_TIME_MS)]
        extra: dict[str, Any] = {}
        expiration = _text(d.get("original-expiration"))
        if expiration is not None and expiration.isdigit() and len(expiration) <= 10:
            extra["ttl"] = int(expiration)
        keys = d.get("routing-keys")
        if isinstance(keys, list) and keys and (rk := _text(keys[0])) is not None:
            extra["rk"] = rk
        if extra:
            entry.append(extra)
        out.append(entry)
    return msgspec.json.encode(out).decode() if out else None


def _text(v: Any) -> str | None:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else None


def x_death(headers: dict[str, str], routing_key: str | None,
            names: Names | None = None) -> dict[str, Any]:
    """RabbitMQ's dead-letter headers (``x-death``, ``x-first-death-*``) built from the
    broker's dead-letter history (``x-tidemq-deaths``): one entry per queue, topic and reason,
    newest first, with its count — what a consumer that counts its retries reads. ``names``
    gives the exchange and queue of a (topic, group), for names that are not their topic's or
    group's (the catalogue's :meth:`~._model.Catalogue.death_names`)."""
    entries = []
    for topic, group, reason, count, first_ms, *more in deaths_of(headers):
        # what was so when it first died there: its own TTL, its routing key when the
        # queue's x-dead-letter-routing-key changed it
        extra = more[0] if more else {}
        exchange, queue = names(topic, group) if names is not None else (
            # a queue's own topic is what the default exchange publishes to
            "" if topic.startswith(QUEUE_TOPICS) else topic, group)
        entry = {
            "count": count, "reason": _DEATH_REASONS.get(reason, "rejected"), "queue": queue,
            "time": datetime.fromtimestamp(min(first_ms, _MAX_TIME_MS) // 1000, UTC),
            "exchange": exchange, "routing-keys": [extra.get("rk", routing_key or "")]}
        if "ttl" in extra:
            entry["original-expiration"] = str(extra["ttl"])
        entries.append(entry)
    if not entries:
        return {}
    first = entries[-1]
    return {"x-death": entries, "x-first-death-reason": first["reason"],
            "x-first-death-queue": first["queue"], "x-first-death-exchange": first["exchange"]}


def from_record(headers: dict[str, str], priority: int, routing_key: str | None = None,
                names: Names | None = None) -> Properties:
    """The properties to deliver a record with."""
    raw = headers.get(PROPS_HEADER) if headers else None
    props: Properties | None = None
    if raw is not None:
        try:
            ch = header.ContentHeader()
            ch.unmarshal(b"\x00\x3c\x00\x00" + bytes(8)
                         + base64.b64decode(raw.partition(":")[2]))
            props = ch.properties
        except (binascii.Error, ValueError, IndexError, TypeError):
            props = None
    if props is None:
        props = Properties()
        if priority:
            props.priority = priority
    elif props.expiration is not None and headers and _ORIGIN_TOPIC in headers:
        # A dead letter has no TTL: RabbitMQ drops its expiration (x-death keeps it).
        props.expiration = None
    if headers and (len(headers) > 1 or raw is None):
        table = dict(props.headers or {})
        for k, v in headers.items():
            if k != PROPS_HEADER and k != DEATHS and k not in table:
                table[k] = v
        if DEATHS in headers:
            table.update(x_death(headers, routing_key, names))
        props.headers = table
    return props
