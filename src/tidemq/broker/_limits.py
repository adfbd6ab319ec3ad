"""Limits on what callers may ask of the broker (SPEC §2, §9), checked before anything changes.

Per message, before anything of a call is stored: body 1 MiB (the topic's
``max_message_bytes``), 64 headers, 16 KiB of headers (names and values, UTF-8), key 4 KiB,
routing key 255 characters and 128 words, priority 0-9. Header names starting
with ``x-tidemq-id`` / ``x-tidemq-group`` are reserved for the broker (delayed-message ids and
redrive) and refused, so a producer cannot forge them.

The common case (plain bodies) is checked with a few C-level passes over the batch, not a Python
loop per record; only records that use keys, headers etc. get the detailed check.

Per call and per broker (no per-message cost): at most :data:`MAX_TOPICS` topics (dead-letter
topics included) and :data:`MAX_GROUPS_PER_TOPIC` groups per topic; prefetch 1 to
:data:`MAX_PREFETCH`; a nack delay of at most :data:`MAX_NACK_DELAY` seconds; a lease
extension of at most :data:`MAX_EXTEND` seconds; a reject reason of at most
:data:`MAX_REASON` characters. Each broken limit is an ``InvalidArgument`` that names it.
Group-setting and topic-config bounds live with their types (``_types``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from ..errors import InvalidArgument, MessageTooLarge
from ..storage import Record

__all__ = [
    "MAX_HEADERS", "MAX_HEADER_BYTES", "MAX_KEY_BYTES", "MAX_ROUTING_KEY", "MAX_ROUTING_WORDS",
    "MAX_TOPICS", "MAX_GROUPS_PER_TOPIC", "MAX_PREFETCH", "MAX_NACK_DELAY", "MAX_EXTEND",
    "MAX_REASON", "RESERVED_HEADERS", "check_records", "check_record", "check_lengths",
    "check_prefetch",
    "check_nack_delay", "check_extend", "check_reason",
]

MAX_HEADERS = 64
MAX_HEADER_BYTES = 16 * 1024
MAX_KEY_BYTES = 4 * 1024
MAX_ROUTING_KEY = 255
MAX_ROUTING_WORDS = 128  # = _matcher.MAX_KEY_WORDS; 255 characters of dots would be 256 words
MAX_TOPICS = 10_000
MAX_GROUPS_PER_TOPIC = 1_000
MAX_PREFETCH = 10_000
MAX_NACK_DELAY = 24 * 3600.0
MAX_EXTEND = 12 * 3600.0  # as the longest ack_timeout
MAX_REASON = 1_024
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
            check_record(i, r)


def check_record(i: int, r: Record) -> None:
    """The key, routing key and header limits of SPEC §2 on record ``i``."""
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
        if rk.count(".") >= MAX_ROUTING_WORDS:
            raise MessageTooLarge(
                f"record {i}: routing key of {rk.count('.') + 1} words exceeds {MAX_ROUTING_WORDS}"
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


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number of seconds, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise InvalidArgument(f"{name} must be a finite number of seconds, got {value!r}")
    return v


def check_prefetch(prefetch: object) -> int:
    """``prefetch`` if it is an int from 1 to :data:`MAX_PREFETCH`, else InvalidArgument."""
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or not 1 <= prefetch <= MAX_PREFETCH:
        raise InvalidArgument(
            f"prefetch must be an int from 1 to {MAX_PREFETCH}, got {prefetch!r}; a larger "
            "prefetch only weakens priorities and load balancing")
    return prefetch


def check_nack_delay(delay: object) -> float | None:
    """A nack delay: None (the group's backoff) or seconds in [0, :data:`MAX_NACK_DELAY`]."""
    if delay is None:
        return None
    v = _number("nack delay", delay)
    if not 0 <= v <= MAX_NACK_DELAY:
        raise InvalidArgument(
            f"nack delay must be from 0 to {MAX_NACK_DELAY:.0f} seconds (24 h) or None for the "
            f"group's backoff, got {delay!r}; for longer waits publish again with a delay")
    return v


def check_extend(seconds: object) -> float:
    """A lease extension: seconds in (0, :data:`MAX_EXTEND`]."""
    v = _number("extend seconds", seconds)
    if not 0 < v <= MAX_EXTEND:
        raise InvalidArgument(
            f"extend needs seconds > 0 and at most {MAX_EXTEND:.0f} (12 h), got {seconds!r}; "
            "extend again before the lease ends for longer work")
    return v


def check_reason(reason: object) -> str:
    """A reject reason: a str of at most :data:`MAX_REASON` characters."""
    if not isinstance(reason, str):
        raise InvalidArgument(f"a reject reason must be a str, not {type(reason).__name__}")
    if len(reason) > MAX_REASON:
        raise InvalidArgument(
            f"a reject reason has {len(reason)} characters; use at most {MAX_REASON}")
    return reason
