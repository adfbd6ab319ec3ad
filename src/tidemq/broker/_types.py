"""Value types shared by the broker core, its drivers and the client layer."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ..errors import InvalidArgument

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
# Each partition is a folder and open files: a bound keeps one request from exhausting them.
MAX_PARTITIONS = 1024


class Backoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exponential, capped backoff applied to ``nack(delay=None)``: seconds before redelivery."""

    initial: float = 1.0
    multiplier: float = 2.0
    max: float = 60.0

    def delay(self, delivery_count: int) -> float:
        """Backoff after the ``delivery_count``-th delivery failed (1-based)."""
        n = max(delivery_count, 1) - 1
        return float(min(self.max, self.initial * self.multiplier**n))

    def validate(self) -> None:
        if self.initial < 0 or self.max < 0 or self.multiplier < 1:
            raise InvalidArgument("backoff needs initial >= 0, max >= 0 and multiplier >= 1")


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
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise InvalidArgument(f"partitions must be from 1 to {MAX_PARTITIONS}")
        if self.durability not in ("always", "interval", "never"):
            raise InvalidArgument("durability must be 'always', 'interval' or 'never'")
        if self.backlog_policy not in ("block", "reject"):
            raise InvalidArgument("backlog_policy must be 'block' or 'reject'")
        if self.sync_interval <= 0 or self.dedup_window < 0 or self.max_message_bytes < 1:
            raise InvalidArgument("sync_interval must be > 0, dedup_window >= 0, max_message_bytes >= 1")
        if self.segment_bytes < 4096:
            raise InvalidArgument("segment_bytes must be >= 4096")


class GroupSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A consumer group's settings, fixed by its first subscribe (SPEC §3)."""

    mode: Mode = "shared"
    filter: dict[str, Any] | None = None
    start: StartPosition = "earliest"
    ack_timeout: float = 30.0
    max_deliveries: int = 5
    backoff: Backoff = Backoff()
    dead_letter_topic: str | None = None  # None: "<topic>.dlq"

    def validate(self) -> None:
        if self.mode not in ("shared", "ordered", "key_ordered"):
            raise InvalidArgument("mode must be 'shared', 'ordered' or 'key_ordered'")
        if self.ack_timeout <= 0:
            raise InvalidArgument("ack_timeout must be > 0 seconds")
        if self.max_deliveries < 1:
            raise InvalidArgument("max_deliveries must be >= 1")
        self.backoff.validate()


class Delivery(msgspec.Struct, frozen=True):
    """One message leased to one group member."""

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
