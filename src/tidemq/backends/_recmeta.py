"""A record's fields beside its body, as the backends carry them in one JSON header
(``Tidemq-Meta`` on NATS and on RabbitMQ): short keys, only the fields that are set."""

from __future__ import annotations

import base64
from typing import Any

from ..storage import Record

__all__ = ["record_meta"]


def record_meta(rec: Record) -> dict[str, Any]:
    """``rec``'s key (base64), routing key, headers, priority, delivery time and TTL, each
    under its one-letter name when set; {} for a bare body."""
    meta: dict[str, Any] = {}
    if rec.key is not None:
        meta["k"] = base64.b64encode(rec.key).decode()
    if rec.routing_key is not None:
        meta["r"] = rec.routing_key
    if rec.headers:
        meta["h"] = rec.headers
    if rec.priority:
        meta["p"] = rec.priority
    if rec.deliver_at_us:
        meta["a"] = rec.deliver_at_us
    if rec.ttl_us:
        meta["t"] = rec.ttl_us
    return meta
