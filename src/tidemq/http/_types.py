"""The HTTP API's request and response bodies, as msgspec types.

Requests are decoded into these types (unknown fields refused, every field type-checked by
msgspec, then range-checked by the same functions the clients and the broker use), responses
are encoded from them, and the OpenAPI document's schemas are generated from them
(:mod:`._openapi`), so the document cannot say one thing while the code does another.

Conventions: times are seconds since the epoch (``float``), durations seconds; bodies and keys
travel as ``{"payload": ..., "encoding": "utf8" | "base64"}`` (``key`` / ``key_encoding``): a
response uses ``utf8`` when the bytes are valid UTF-8, else ``base64``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ..broker import Backoff, GroupSettings, TopicConfig

__all__ = [
    "Encoding", "Problem", "MessageIn", "PublishIn", "Published", "PublishOut",
    "PartitionOut", "TopicSettingsIn", "TopicOut", "TopicListOut", "GroupSettingsIn",
    "GroupPartitionOut", "GroupOut", "GroupListOut", "ResetIn", "BrowsedMessage", "BrowseOut",
    "ReceiveIn", "ReceivedMessage", "ReceiveOut", "AckIn", "NackIn", "RejectIn", "ExtendIn",
    "Settled", "SettleOut", "DlqOut", "DeadLetterOut", "DlqListOut", "RedriveIn", "Redriven", "RedriveOut",
    "HealthOut", "Check", "ReadyOut", "Sample", "StatsOut", "Backoff", "GroupSettings",
    "TopicConfig",
]

Encoding = Literal["utf8", "base64"]


class _In(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are refused (a typo is an error, not ignored)."""


class _Out(msgspec.Struct, kw_only=True):
    """A response body."""


class Problem(_Out, omit_defaults=True):
    """An error (RFC 9457 ``application/problem+json``): ``code`` and ``title`` are the error
    catalogue's (``tidemq.errors``), ``status`` its HTTP status, ``detail`` what went wrong and
    what to do."""

    type: str
    title: str
    status: int
    detail: str
    code: int
    retriable: bool = False
    instance: str | None = None


# --- publishing -------------------------------------------------------------------------------


class MessageIn(_In):
    """One message to publish. ``delay`` and ``ttl`` are seconds; ``priority`` 0-9."""

    payload: str
    encoding: Encoding = "utf8"
    key: str | None = None
    key_encoding: Encoding = "utf8"
    routing_key: str | None = None
    headers: dict[str, str] | None = None
    priority: int = 0
    delay: float | None = None
    ttl: float | None = None
    dedup_id: str | None = None


class PublishIn(_In):
    """Messages to publish (the body may also be the bare list)."""

    messages: list[MessageIn]


class Published(_Out, omit_defaults=True):
    """The outcome of one message of a publish, by its index in the request: its id, or why
    it was not stored."""

    index: int
    id: str | None = None
    error: Problem | None = None


class PublishOut(_Out):
    topic: str
    published: int
    failed: int
    results: list[Published]


# --- topics -----------------------------------------------------------------------------------


class PartitionOut(_Out):
    partition: int
    start_offset: int
    end_offset: int


class TopicSettingsIn(_In):
    """``PUT /api/v1/topics/{topic}``: settings of a new topic (omitted: the default). For an
    existing topic only ``partitions`` may change (grow); other settings given must equal the
    topic's."""

    partitions: int | None = None
    durability: Literal["always", "interval", "never"] | None = None
    sync_interval: float | None = None
    retention: float | None = None
    retention_bytes: int | None = None
    log_retention: bool | None = None
    max_message_bytes: int | None = None
    dedup_window: float | None = None
    backlog_limit: int | None = None
    backlog_policy: Literal["block", "reject"] | None = None
    segment_bytes: int | None = None


class TopicOut(_Out):
    name: str
    partitions: list[PartitionOut]
    config: TopicConfig
    groups: list[str]
    delayed: int
    messages: int  # retained messages, all partitions


class TopicListOut(_Out):
    topics: list[TopicOut]


# --- groups -----------------------------------------------------------------------------------


class GroupSettingsIn(_In):
    """``PUT .../groups/{group}``: the group's settings (omitted: the default). An existing
    group is updated to exactly these settings."""

    mode: Literal["shared", "ordered", "key_ordered"] | None = None
    filter: dict[str, Any] | None = None
    start: str | int | dict[str, Any] | None = None
    ack_timeout: float | None = None
    max_deliveries: int | None = None
    backoff: Backoff | None = None
    dead_letter_topic: str | None = None
    message_ttl: float | None = None
    dead_letter_routing_key: str | None = None
    max_priority: int | None = None


class GroupPartitionOut(_Out):
    partition: int
    committed: int  # every offset below is done for the group
    end_offset: int
    lag: int  # messages at or after `committed` not yet done
    lag_seconds: float  # age of the oldest message not done (0: none)
    in_flight: int


class GroupOut(_Out):
    topic: str
    name: str
    settings: GroupSettings
    members: int
    lag: int
    lag_seconds: float
    in_flight: int
    delayed: int  # nacked messages waiting for their backoff
    delivered: int  # since the server started
    redelivered: int
    dead_lettered: int
    partitions: list[GroupPartitionOut]


class GroupListOut(_Out):
    groups: list[GroupOut]


class ResetIn(_In):
    """``start``: ``"earliest"``, ``"latest"``, an offset for every partition,
    ``{"<partition>": offset, ...}`` or ``{"timestamp": epoch_seconds}``."""

    start: str | int | dict[str, Any]


# --- browsing ---------------------------------------------------------------------------------


class BrowsedMessage(_Out, omit_defaults=True):
    id: str
    partition: int
    offset: int
    timestamp: float
    payload: str
    encoding: Encoding
    key: str | None = None
    key_encoding: Encoding | None = None
    routing_key: str | None = None
    headers: dict[str, str] = {}
    priority: int = 0


class BrowseOut(_Out):
    topic: str
    partition: int
    messages: list[BrowsedMessage]
    next_offset: int  # continue with from_offset=next_offset


# --- receiving and settling -------------------------------------------------------------------


class ReceiveIn(_In):
    """Lease up to ``max_messages`` (1-1000); wait up to ``wait`` seconds for the first one
    (long poll, at most the server's ``http_max_wait``); ``lease`` seconds instead of the
    group's ``ack_timeout`` (at most 12 h)."""

    max_messages: int = 10
    wait: float = 0.0
    lease: float | None = None


class ReceivedMessage(_Out, omit_defaults=True):
    receipt: str  # opaque: settle the message with it
    id: str
    partition: int
    offset: int
    timestamp: float
    delivery_count: int
    lease_expires_at: float
    payload: str
    encoding: Encoding
    key: str | None = None
    key_encoding: Encoding | None = None
    routing_key: str | None = None
    headers: dict[str, str] = {}
    priority: int = 0


class ReceiveOut(_Out):
    messages: list[ReceivedMessage]


class AckIn(_In):
    receipts: list[str]


class NackIn(_In):
    """``delay``: seconds before redelivery (omitted: the group's backoff)."""

    receipts: list[str]
    delay: float | None = None


class RejectIn(_In):
    """Dead-letter the messages now; ``reason`` (at most 1,024 characters) is recorded."""

    receipts: list[str]
    reason: str = ""


class ExtendIn(_In):
    """Renew the leases to end ``seconds`` from now (at most 12 h)."""

    receipts: list[str]
    seconds: float


class Settled(_Out, omit_defaults=True):
    receipt: str
    ok: bool
    error: Problem | None = None


class SettleOut(_Out):
    settled: int
    failed: int
    results: list[Settled]


# --- dead letters -----------------------------------------------------------------------------


class DlqOut(_Out):
    topic: str
    group: str
    dead_letter_topic: str | None  # None: no dead letter was ever written
    count: int
    oldest_age_seconds: float | None
    reasons: dict[str, int]
    complete: bool  # False: counted a part (the scan resumes on the next call)


class DeadLetterOut(_Out, omit_defaults=True):
    id: str  # in the dead-letter topic
    origin_id: str  # in the group's topic
    reason: str
    delivery_count: int
    dead_lettered_at: float
    origin_partition: int
    origin_offset: int
    payload: str
    encoding: Encoding
    key: str | None = None
    key_encoding: Encoding | None = None
    routing_key: str | None = None
    headers: dict[str, str] = {}
    priority: int = 0


class DlqListOut(_Out):
    messages: list[DeadLetterOut]
    next: str | None  # pass as `after` for the next page; None: none left now


class RedriveIn(_In):
    """Move the group's dead letters back (only that group sees them again): the ones named by
    ``ids`` (their ``id`` in the dead-letter listing, at most 1,000), or oldest first all of
    them or the first ``limit``; at most ``rate`` per second. ``ids`` goes with neither
    ``limit`` nor ``rate``."""

    limit: int | None = None
    rate: float | None = None
    ids: list[str] | None = None


class Redriven(_Out, omit_defaults=True):
    """What became of one id of a redrive by ids."""

    id: str
    ok: bool
    error: Problem | None = None


class RedriveOut(_Out, omit_defaults=True):
    moved: int
    remaining: int  # dead letters of the group left (see `complete`)
    complete: bool  # False: stopped at the time limit of one request, or a partial count
    results: list[Redriven] | None = None  # a redrive by ids: one per id, in order


# --- health, readiness, overview --------------------------------------------------------------


class HealthOut(_Out):
    status: str


class Check(_Out):
    name: str
    ok: bool
    detail: str


class ReadyOut(_Out):
    ready: bool
    checks: list[Check]


class Sample(_Out):
    """Rates over one sampling interval of the overview ring."""

    at: float
    published_per_s: float
    delivered_per_s: float
    acked_per_s: float
    dead_lettered_per_s: float


class StatsOut(_Out):
    version: str
    uptime_seconds: float
    connections: dict[str, int]
    storage_bytes: int
    disk_free_bytes: int | None
    fsync_p99_seconds: float | None  # over the ring's window
    topics: int
    groups: int
    window_seconds: float
    samples: list[Sample]
