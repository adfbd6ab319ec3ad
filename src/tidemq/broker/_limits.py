"""Per-message limits (SPEC §2), checked before anything of a call is stored.

Defaults: body 1 MiB (the topic's ``max_message_bytes``), 64 headers, 16 KiB of headers (names
and values, UTF-8), key 4 KiB, routing key 255 characters, priority 0-9. Header names starting
with ``x-tidemq-id`` / ``x-tidemq-group`` are reserved for the broker (delayed-message ids and
redrive) and refused, so a producer cannot forge them.

The common case (plain bodies) is checked with a few C-level passes over the batch, not a Python
loop per record; only records that use keys, headers etc. get the detailed check.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from ..errors import InvalidArgument, MessageTooLarge
from ..storage import Record

__all__ = [
    "MAX_HEADERS", "MAX_HEADER_BYTES", "MAX_KEY_BYTES", "MAX_ROUTING_KEY",
    "RESERVED_HEADERS", "check_records", "check_lengths",
]

MAX_HEADERS = 64
MAX_HEADER_BYTES = 16 * 1024
MAX_KEY_BYTES = 4 * 1024
MAX_ROUTING_KEY = 255
ID_HEADER = "x-tidemq-id"
GROUP_HEADER = "x-tidemq-group"
RESERVED_HEADERS = frozenset({ID_HEADER, GROUP_HEADER})

_body = attrgetter("body")
_key = attrgetter("key")
_rk = attrgetter("routing_key")
_headers = attrgetter("headers")
_prio = attrgetter("priority")


def check_lengths(lengths: Sequence[int], max_message_bytes: int) -> None:
    """Raise :class:`MessageTooLarge` if a body is longer than ``max_message_bytes``."""
    if lengths and max(lengths) > max_message_bytes:
        i = next(i for i, n in enumerate(lengths) if n > max_message_bytes)
        raise MessageTooLarge(
            f"record {i}: body of {lengths[i]} bytes exceeds the topic's limit of "
            f"{max_message_bytes} bytes; split it or raise max_message_bytes"
        )


def check_records(records: Sequence[Record], max_message_bytes: int) -> None:
    """Check every limit of SPEC §2 on ``records``; raise before anything is stored."""
    if not records:
        raise InvalidArgument("publish needs at least one record")
    try:
        lengths = list(map(len, map(_body, records)))
    except (TypeError, AttributeError) as exc:
        raise InvalidArgument(f"records must be Record values with bytes bodies: {exc}") from exc
    check_lengths(lengths, max_message_bytes)
    prios = list(map(_prio, records))
    try:
        if min(prios) < 0 or max(prios) > 9:
            raise ValueError
    except (TypeError, ValueError):
        i = next(i for i, p in enumerate(prios) if not isinstance(p, int) or not 0 <= p <= 9)
        raise InvalidArgument(f"record {i}: priority must be an integer 0-9, got {prios[i]!r}") from None
    if any(map(_key, records)) or any(map(_rk, records)) or any(map(_headers, records)):
        for i, r in enumerate(records):
            _check_one(i, r)


def _check_one(i: int, r: Record) -> None:
    key = r.key
    if key is not None:
        if not isinstance(key, bytes):
            raise InvalidArgument(f"record {i}: key must be bytes (or a str the client encodes)")
        if len(key) > MAX_KEY_BYTES:
            raise MessageTooLarge(f"record {i}: key of {len(key)} bytes exceeds {MAX_KEY_BYTES}")
    rk = r.routing_key
    if rk is not None:
        if not isinstance(rk, str):
            raise InvalidArgument(f"record {i}: routing_key must be a str")
        if len(rk) > MAX_ROUTING_KEY:
            raise MessageTooLarge(
                f"record {i}: routing key of {len(rk)} characters exceeds {MAX_ROUTING_KEY}"
            )
    headers = r.headers
    if headers:
        if not isinstance(headers, dict):
            raise InvalidArgument(f"record {i}: headers must be a dict of str to str")
        if len(headers) > MAX_HEADERS:
            raise MessageTooLarge(f"record {i}: {len(headers)} headers exceed the limit of {MAX_HEADERS}")
        size = 0
        for k, v in headers.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidArgument(f"record {i}: header {k!r} must map a str to a str")
            if k in RESERVED_HEADERS:
                raise InvalidArgument(f"record {i}: header {k!r} is reserved for the broker")
            size += len(k.encode()) + len(v.encode())
        if size > MAX_HEADER_BYTES:
            raise MessageTooLarge(
                f"record {i}: headers of {size} bytes exceed the limit of {MAX_HEADER_BYTES}"
            )
