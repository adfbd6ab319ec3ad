"""Value types and the ``PartitionLog`` protocol shared by the file log and its memory twin."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from tidemq.errors import InvalidArgument
from tidemq.storage._format import BatchView, Record

__all__ = [
    "Durability",
    "OnCorruption",
    "LogConfig",
    "AppendResult",
    "RecoveryReport",
    "CorruptionEvent",
    "LogStatistics",
    "PartitionLog",
]

Durability = Literal["always", "interval", "never"]
OnCorruption = Literal["skip", "fail"]

_MiB = 1 << 20
_DAY_MS = 24 * 3600 * 1000
# Positions inside a segment are stored as u32 in the index files; a segment may overshoot
# segment_bytes by at most one batch, so 2 GiB keeps every batch start below 4 GiB.
_MAX_SEGMENT_BYTES = 2 << 30


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How one partition log rolls, retains and syncs. Checked on construction (InvalidArgument).

    ``durability`` is advisory for the driver: the log itself never syncs on its own (D5).
    The log honours one part of it: a ``never`` log fsyncs nothing when it is opened (new
    folders, recovery's cut), leaving that to its first ``sync`` or ``close``.
    ``checkpoint_bytes`` bounds crash recovery: a checkpoint is written by ``sync`` whenever
    that many bytes were synced since the last one (and whenever a segment rolled), so after a
    crash only the bytes after the last checkpoint are scanned.
    """

    segment_bytes: int = 128 * _MiB
    segment_ms: int = 7 * _DAY_MS
    retention_ms: int | None = None
    retention_bytes: int | None = None
    durability: Durability = "interval"
    index_interval_bytes: int = 4096
    on_corruption: OnCorruption = "skip"
    checkpoint_bytes: int = 64 * _MiB

    def __post_init__(self) -> None:
        if not 64 <= self.segment_bytes <= _MAX_SEGMENT_BYTES:
            raise InvalidArgument(
                f"segment_bytes must be in [64, {_MAX_SEGMENT_BYTES}], got {self.segment_bytes}"
            )
        if self.segment_ms <= 0:
            raise InvalidArgument(f"segment_ms must be > 0, got {self.segment_ms}")
        if self.retention_ms is not None and self.retention_ms < 0:
            raise InvalidArgument(f"retention_ms must be >= 0 or None, got {self.retention_ms}")
        if self.retention_bytes is not None and self.retention_bytes < 0:
            raise InvalidArgument(
                f"retention_bytes must be >= 0 or None, got {self.retention_bytes}"
            )
        if self.durability not in ("always", "interval", "never"):
            raise InvalidArgument(
                f"durability must be 'always', 'interval' or 'never', got {self.durability!r}"
            )
        if self.index_interval_bytes < 1:
            raise InvalidArgument(
                f"index_interval_bytes must be >= 1, got {self.index_interval_bytes}"
            )
        if self.on_corruption not in ("skip", "fail"):
            raise InvalidArgument(
                f"on_corruption must be 'skip' or 'fail', got {self.on_corruption!r}"
            )
        if self.checkpoint_bytes < 1:
            raise InvalidArgument(f"checkpoint_bytes must be >= 1, got {self.checkpoint_bytes}")


class AppendResult(NamedTuple):
    """Where an appended batch landed.

    ``position`` is the sync token: pass it to ``sync`` to make this batch (and everything
    before it) durable. Positions grow with every append (it is the log's end offset after the
    batch), so a larger position covers a smaller one.
    """

    base_offset: int
    last_offset: int
    position: int


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What opening a log found and did. A clean open has ``clean=True`` and nothing cut.

    ``bytes_truncated`` counts bytes cut from the tail (torn or corrupt batches and whole
    segments after them); ``first_lost_offset`` is the first offset that is gone (``None`` if
    nothing was cut); ``segments_touched`` are the base offsets of segments truncated or
    deleted; ``scanned_bytes`` what recovery read and verified; ``reason`` why it cut.
    """

    clean: bool = True
    scanned_bytes: int = 0
    bytes_truncated: int = 0
    first_lost_offset: int | None = None
    segments_touched: tuple[int, ...] = ()
    indexes_rebuilt: tuple[int, ...] = ()
    reason: str | None = None

    @property
    def truncated(self) -> bool:
        return self.bytes_truncated > 0 or bool(self.segments_touched)


@dataclass(frozen=True, slots=True)
class CorruptionEvent:
    """A damaged batch that ``read`` found in a segment and skipped (never served)."""

    segment: int
    position: int
    bytes_skipped: int
    first_offset: int
    reason: str


@dataclass(frozen=True, slots=True)
class LogStatistics:
    """A snapshot of a log's counters (trio's ``statistics()``)."""

    start_offset: int
    end_offset: int
    synced_position: int
    segments: int
    size_bytes: int
    appends: int
    fsyncs: int
    checkpoints: int
    corruptions: int
    failed: bool
    corruption_events: tuple[CorruptionEvent, ...] = field(default=())


@runtime_checkable
class PartitionLog(Protocol):
    """One partition's append-only log (``FileLog`` on disk, ``MemoryLog`` in memory).

    Thread safety: every member except ``sync`` (and the read-only properties) must be called
    from one thread at a time, the driver's; ``sync`` may run concurrently in another thread
    and concurrent ``sync`` calls share one fsync (group commit).
    """

    @property
    def config(self) -> LogConfig: ...

    @property
    def durability(self) -> Durability: ...

    @property
    def start_offset(self) -> int: ...

    @property
    def end_offset(self) -> int: ...

    @property
    def synced_position(self) -> int: ...

    @property
    def needs_sync(self) -> bool: ...

    @property
    def failed(self) -> bool: ...

    @property
    def recovery(self) -> RecoveryReport: ...

    @property
    def priority_free_from(self) -> int:
        """An offset from which no batch up to ``end_offset`` carries a priority (its
        ``max_priority`` is 0): known for what this log object appended; what was in the log
        when it opened counts as unknown (then it is ``end_offset`` at open). A reader that
        looks ahead for priorities need not read past it."""
        ...

    def append(self, batch: bytes | bytearray | memoryview, now_us: int, *,
               verified: BatchView | None = None) -> AppendResult: ...

    def append_records(
        self,
        records: Sequence[Record],
        now_us: int,
        *,
        producer_id: int = -1,
        producer_epoch: int = 0,
        base_sequence: int = -1,
    ) -> AppendResult: ...

    def sync(self, position: int | None = None) -> None: ...

    def read(
        self, offset: int, max_records: int = 1000, max_bytes: int = 1 << 20
    ) -> list[BatchView]: ...

    def offset_for_time(self, ts_us: int) -> int | None: ...

    def apply_retention(self, now_us: int, keep_from: int | None = None) -> int: ...

    def statistics(self) -> LogStatistics: ...

    def close(self) -> None: ...
