"""Value types shared by the broker core, its drivers and the client layer.

``validate()`` on each settings type checks every field a user (or the wire) can set: numbers
must be finite and within the bounds below, names and filters well formed and within their
limits (docs/semantics.md, "Limits"). The broker validates whatever reaches it; the clients
validate the same way before sending.
"""

from __future__ import annotations

import math
from typing import Any, Final, Literal

import msgspec

from ..errors import InvalidArgument, InvalidTopicName
from ._filters import check_filter
from ._limits import MAX_ROUTING_KEY, MAX_ROUTING_WORDS
from ._names import validate_topic_name

__all__ = [
    "Backoff",
    "TopicConfig",
    "GroupSettings",
    "Delivery",
    "PartitionInfo",
    "GroupPartitionInfo",
    "TopicInfo",
    "GroupInfo",
    "Durability",
    "Mode",
    "StartPosition",
]

Durability = Literal["always", "interval", "never"]
Mode = Literal["shared", "ordered", "key_ordered"]
# "earliest" | "latest" | an offset for every partition | {partition: offset} | {"timestamp": epoch s}
StartPosition = str | int | dict[Any, Any]

MiB = 1024 * 1024
GiB = 1024 * MiB
HOUR: Final = 3600.0
DAY: Final = 24 * HOUR
# Each partition is a folder and open files: a bound keeps one request from exhausting them.
MAX_PARTITIONS = 1024
MAX_ACK_TIMEOUT: Final = 12 * HOUR
MAX_DELIVERIES: Final = 1000
MAX_BACKOFF: Final = DAY  # initial and max
MAX_BACKOFF_MULTIPLIER: Final = 100.0
MAX_SYNC_INTERVAL: Final = 60.0
MAX_DEDUP_WINDOW: Final = 7 * DAY
MAX_MESSAGE_TTL: Final = 3650 * DAY
MAX_MESSAGE_BYTES: Final = 64 * MiB
MIN_SEGMENT_BYTES: Final = 4096
MAX_SEGMENT_BYTES: Final = 2 * GiB


def _int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, not {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise InvalidArgument(f"{name} must be {bound}, got {value}")
    return value


def _seconds(name: str, value: object, lo: float, hi: float | None, *, lo_open: bool) -> float:
    """A finite number of seconds in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number of seconds, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        bound = f"{low} and <= {hi:g}" if hi is not None else low
        raise InvalidArgument(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return v


def check_start(start: object) -> None:
    """Raise InvalidArgument unless ``start`` is a well-formed start position (SPEC §3); the
    offsets are clamped to the logs when the group is created or reset."""
    if start in ("earliest", "latest"):
        return
    if isinstance(start, int) and not isinstance(start, bool):
        return
    if isinstance(start, dict):
        if set(start) == {"timestamp"}:
            _seconds("start timestamp", start["timestamp"], 0.0, None, lo_open=False)
            return
        if len(start) > MAX_PARTITIONS:
            raise InvalidArgument(f"start names {len(start)} partitions; at most {MAX_PARTITIONS}")
        for p, o in start.items():
            if not ((isinstance(p, int) and not isinstance(p, bool))
                    or (isinstance(p, str) and p.isdigit() and len(p) <= 10)) \
                    or isinstance(o, bool) or not isinstance(o, int):
                raise InvalidArgument(
                    f"start {{{p!r}: {o!r}}}: use {{partition: offset}} with int partitions and "
                    "offsets, or {'timestamp': epoch_seconds}")
        return
    raise InvalidArgument(
        f"start {start!r} must be 'earliest', 'latest', an offset, {{partition: offset}} "
        "or {'timestamp': epoch_seconds}")


class Backoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exponential, capped backoff applied to ``nack(delay=None)``: seconds before redelivery."""

    initial: float = 1.0
    multiplier: float = 2.0
    max: float = 60.0

    def delay(self, delivery_count: int) -> float:
        """Backoff after the ``delivery_count``-th delivery failed (1-based)."""
        n = max(delivery_count, 1) - 1
        try:
            return float(min(self.max, self.initial * self.multiplier**n))
        except OverflowError:  # multiplier ** n beyond a float: long past the cap
            return float(self.max)

    def validate(self) -> None:
        """Finite ``initial`` and ``max`` in [0, 24 h], ``multiplier`` in [1, 100]."""
        _seconds("backoff initial", self.initial, 0.0, MAX_BACKOFF, lo_open=False)
        _seconds("backoff max", self.max, 0.0, MAX_BACKOFF, lo_open=False)
        m = self.multiplier
        if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m) \
                or not 1 <= m <= MAX_BACKOFF_MULTIPLIER:
            raise InvalidArgument(
                f"backoff multiplier must be a finite number from 1 to "
                f"{MAX_BACKOFF_MULTIPLIER:g}, got {m!r}")


class TopicConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-topic settings. Durations are seconds."""

    partitions: int = 1
    durability: Durability = "interval"
    sync_interval: float = 0.1
    retention: float | None = None
    retention_bytes: int | None = None
    log_retention: bool = False  # True: pure log retention, no veto by groups (Kafka)
    max_message_bytes: int = MiB
    dedup_window: float = 300.0
    backlog_limit: int | None = None  # messages not yet delivered to some group
    backlog_policy: Literal["block", "reject"] = "block"
    segment_bytes: int = 128 * MiB

    def validate(self) -> None:
        """Every field within its bounds (docs/semantics.md, "Limits"); InvalidArgument naming
        the field otherwise."""
        _int("partitions", self.partitions, 1, MAX_PARTITIONS)
        if self.durability not in ("always", "interval", "never"):
            raise InvalidArgument("durability must be 'always', 'interval' or 'never'")
        if self.backlog_policy not in ("block", "reject"):
            raise InvalidArgument("backlog_policy must be 'block' or 'reject'")
        if not isinstance(self.log_retention, bool):
            raise InvalidArgument("log_retention must be true or false")
        _seconds("sync_interval", self.sync_interval, 0.0, MAX_SYNC_INTERVAL, lo_open=True)
        _seconds("dedup_window", self.dedup_window, 0.0, MAX_DEDUP_WINDOW, lo_open=False)
        if self.retention is not None:
            _seconds("retention", self.retention, 0.0, None, lo_open=True)
        if self.retention_bytes is not None:
            _int("retention_bytes", self.retention_bytes, 0)
        _int("max_message_bytes", self.max_message_bytes, 1, MAX_MESSAGE_BYTES)
        _int("segment_bytes", self.segment_bytes, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
        if self.backlog_limit is not None:
            _int("backlog_limit", self.backlog_limit, 1)


class GroupSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A consumer group's settings, fixed by its first subscribe (SPEC §3)."""

    mode: Mode = "shared"
    filter: dict[str, Any] | None = None
    start: StartPosition = "earliest"
    ack_timeout: float = 30.0
    max_deliveries: int = 5
    backoff: Backoff = Backoff()
    dead_letter_topic: str | None = None  # None: "<topic>.dlq"
    # A TTL (s) for every message as this group sees it, besides the message's own (the
    # shorter counts): expired ones are dead letters of this group only (an AMQP queue's
    # x-message-ttl). None: messages live by their own TTL.
    message_ttl: float | None = None
    # The routing key the group's dead letters get (None: their own), for the consumers of the
    # dead-letter topic that filter on it (an AMQP queue's x-dead-letter-routing-key).
    dead_letter_routing_key: str | None = None
    # The highest priority the group tells apart (shared mode): a message's priority counts as
    # min(priority, max_priority); 0 delivers in publish order (an AMQP queue without
    # x-max-priority). None: all of 0..9.
    max_priority: int | None = None

    def ttl_us(self, own_us: int) -> int:
        """A message's TTL in this group, µs (0: none): ``own_us`` (the record's) or
        ``message_ttl``, the shorter."""
        ttl = self.message_ttl
        if not ttl:
            return own_us
        group = max(round(ttl * 1_000_000), 1)
        return group if not own_us or group < own_us else own_us

    def validate(self) -> None:
        """Every setting within its bounds, the filter well formed and within its limits, the
        dead-letter topic a valid topic name: InvalidArgument (InvalidFilter,
        InvalidTopicName) naming the setting otherwise. Nothing else about a group can fail
        later because of its settings."""
        if self.mode not in ("shared", "ordered", "key_ordered"):
            raise InvalidArgument("mode must be 'shared', 'ordered' or 'key_ordered'")
        _seconds("ack_timeout", self.ack_timeout, 0.0, MAX_ACK_TIMEOUT, lo_open=True)
        _int("max_deliveries", self.max_deliveries, 1, MAX_DELIVERIES)
        if not isinstance(self.backoff, Backoff):
            raise InvalidArgument("backoff must be a Backoff(initial, multiplier, max)")
        self.backoff.validate()
        check_start(self.start)
        check_filter(self.filter)
        if self.message_ttl is not None:
            _seconds("message_ttl", self.message_ttl, 0.0, MAX_MESSAGE_TTL, lo_open=True)
        if self.max_priority is not None:
            _int("max_priority", self.max_priority, 0, 9)
        rk = self.dead_letter_routing_key
        if rk is not None and (not isinstance(rk, str) or len(rk) > MAX_ROUTING_KEY
                               or rk.count(".") >= MAX_ROUTING_WORDS):
            raise InvalidArgument(
                f"dead_letter_routing_key must be a routing key (a str of at most "
                f"{MAX_ROUTING_KEY} characters and {MAX_ROUTING_WORDS} words), got {rk!r:.60}")
        if self.dead_letter_topic is not None:
            try:
                validate_topic_name(self.dead_letter_topic)
            except InvalidTopicName as exc:
                raise InvalidTopicName(f"dead_letter_topic: {exc}") from None


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """One message leased to one group member. Not tracked by the garbage collector (it
    holds no container that could reach back to it; see ``storage.Record``)."""

    id: str
    topic: str
    partition: int
    offset: int
    timestamp_us: int
    body: bytes
    key: bytes | None = None
    routing_key: str | None = None
    headers: dict[str, str] = {}
    priority: int = 0
    delivery_count: int = 1


class PartitionInfo(msgspec.Struct, frozen=True):
    partition: int
    start_offset: int
    end_offset: int


class GroupPartitionInfo(msgspec.Struct, frozen=True):
    partition: int
    committed: int  # every offset below is done for this group
    lag: int  # messages at or after `committed` not yet done
    in_flight: int


class GroupInfo(msgspec.Struct, frozen=True):
    topic: str
    name: str
    settings: GroupSettings
    members: list[str]
    partitions: list[GroupPartitionInfo]
    lag: int
    in_flight: int
    delayed: int = 0  # nacked messages waiting for their backoff


class TopicInfo(msgspec.Struct, frozen=True):
    name: str
    incarnation: int
    config: TopicConfig
    partitions: list[PartitionInfo]
    groups: list[str]
    delayed: int = 0  # messages waiting in the delay store
