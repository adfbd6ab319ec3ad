"""A TideMQ record as a NATS message, and back.

The body is the payload. Everything else a record carries (key, routing key, user headers,
priority, due time, TTL) travels in one header, ``Tidemq-Meta``, as ASCII JSON: NATS headers are
HTTP-like lines, so a user header value with a line break, a non-ASCII name or surrounding
spaces would not survive as a header of its own; JSON escapes all of it. The routing key is also
in the subject (escaped) for subject filters. ``Nats-Msg-Id`` carries the dedup id.
A message without ``Tidemq-Meta`` (published by a plain NATS client) is a bare body.
"""

from __future__ import annotations

import base64
import json
from typing import Final, NamedTuple

from ..storage import Record
from ._recmeta import record_meta

__all__ = ["META", "MSG_ID", "encode_meta", "Decoded", "decode_meta"]

META: Final = "Tidemq-Meta"
MSG_ID: Final = "Nats-Msg-Id"


def encode_meta(rec: Record) -> str | None:
    """The ``Tidemq-Meta`` value for ``rec``, or None when it has nothing but a body."""
    meta = record_meta(rec)
    if not meta:
        return None
    return json.dumps(meta, separators=(",", ":"))


class Decoded(NamedTuple):
    key: bytes | None
    routing_key: str | None
    headers: dict[str, str]
    priority: int
    deliver_at_us: int
    ttl_us: int


_PLAIN: Final = Decoded(None, None, {}, 0, 0, 0)


def decode_meta(value: str | None) -> Decoded:
    """The fields of a ``Tidemq-Meta`` value; a missing or damaged one is a bare body."""
    if not value:
        return _PLAIN
    try:
        meta = json.loads(value)
        key = base64.b64decode(meta["k"]) if "k" in meta else None
        headers = meta.get("h") or {}
        if not isinstance(headers, dict):
            headers = {}
        return Decoded(key, meta.get("r"), {str(k): str(v) for k, v in headers.items()},
                       int(meta.get("p", 0)), int(meta.get("a", 0)), int(meta.get("t", 0)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return _PLAIN


def to_record(body: bytes, d: Decoded) -> Record:
    return Record(body, d.key, d.routing_key, d.headers or None, d.priority, d.deliver_at_us,
                  d.ttl_us, None)
