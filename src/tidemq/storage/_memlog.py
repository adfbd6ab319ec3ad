"""``MemoryLog``: the memory twin of ``FileLog`` — same interface, same semantics, no disk.

Segments, rolling, retention, timestamps and read bounds behave exactly as in the file log
(they share ``_policy``), so the one test suite runs against both. ``sync`` is a no-op that
still honours the closed state; nothing survives the process.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tidemq.errors import Closed, InvalidArgument
from tidemq.storage._format import (
    BatchView,
    Record,
    encode_batch,
    stamp,
    verify,
    verify_for_append,
)
from tidemq.storage._policy import SegmentInfo, retention_victims, should_roll
from tidemq.storage._types import (
    AppendResult,
    Durability,
    LogConfig,
    LogStatistics,
    RecoveryReport,
)

__all__ = ["MemoryLog"]


@dataclass(slots=True)
class _MemSegment:
    base_offset: int
    batches: list[bytes] = field(default_factory=list)
    bases: list[int] = field(default_factory=list)  # base offset of each batch, for bisect
    size: int = 0
    first_ts: int = -1
    max_ts: int = -1


class MemoryLog:
    """A partition log held in memory. Thread safety as ``PartitionLog`` states."""

    def __init__(self, config: LogConfig | None = None, *, start_offset: int = 0) -> None:
        self._config = config or LogConfig()
        self._segments = [_MemSegment(start_offset)]
        self._end_offset = start_offset
        self._prio_free_from = start_offset
        self._last_ts = -1
        self._closed = False
        self._appends = 0

    @property
    def config(self) -> LogConfig:
        return self._config

    @config.setter
    def config(self, config: LogConfig) -> None:
        self._config = config

    @property
    def durability(self) -> Durability:
        return self._config.durability

    @property
    def start_offset(self) -> int:
        return self._segments[0].base_offset

    @property
    def end_offset(self) -> int:
        return self._end_offset

    @property
    def priority_free_from(self) -> int:
        return self._prio_free_from

    @property
    def synced_position(self) -> int:
        return self._end_offset

    @property
    def needs_sync(self) -> bool:
        return False

    @property
    def failed(self) -> bool:
        return False

    @property
    def recovery(self) -> RecoveryReport:
        return RecoveryReport()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("memory log is closed")

    def append(self, batch: bytes | bytearray | memoryview, now_us: int, *,
               verified: BatchView | None = None) -> AppendResult:
        """As ``FileLog.append``: verified, stamped with base offset and a non-decreasing time."""
        self._check_open()
        view = verify_for_append(batch, verified)
        active = self._segments[-1]
        first_ts = active.first_ts if active.first_ts >= 0 else None
        if should_roll(self._config, active.size, first_ts, view.size, now_us):
            active = _MemSegment(self._end_offset)
            self._segments.append(active)
        base = self._end_offset
        ts = now_us if now_us > self._last_ts else self._last_ts
        stored = bytearray(batch)
        stamp(stored, base, ts)
        active.batches.append(bytes(stored))
        active.bases.append(base)
        active.size += view.size
        if active.first_ts < 0:
            active.first_ts = ts
        active.max_ts = ts
        self._end_offset = base + view.count
        if view.max_priority:
            self._prio_free_from = self._end_offset
        self._last_ts = ts
        self._appends += 1
        return AppendResult(base, self._end_offset - 1, self._end_offset)

    def append_records(
        self,
        records: Sequence[Record],
        now_us: int,
        *,
        producer_id: int = -1,
        producer_epoch: int = 0,
        base_sequence: int = -1,
    ) -> AppendResult:
        return self.append(
            encode_batch(
                records,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                base_sequence=base_sequence,
            ),
            now_us,
        )

    def sync(self, position: int | None = None) -> None:
        """Nothing to make durable; raises ``Closed`` after ``close`` like the file log."""
        if self._closed and (position is None or position > self._end_offset):
            raise Closed("memory log is closed")

    def read(
        self, offset: int, max_records: int = 1000, max_bytes: int = 1 << 20
    ) -> list[BatchView]:
        """As ``FileLog.read`` (each batch verified again: the twin keeps the same costs honest)."""
        self._check_open()
        if max_records < 1 or max_bytes < 1:
            raise InvalidArgument("max_records and max_bytes must be >= 1")
        out: list[BatchView] = []
        offset = max(offset, self.start_offset)
        if offset >= self._end_offset:
            return out
        for batch in self._batches_from(offset):
            if out and batch.size > max_bytes:
                break
            out.append(batch)
            max_records -= batch.count
            max_bytes -= batch.size
            if max_records <= 0 or max_bytes <= 0:
                break
        return out

    def _batches_from(self, offset: int) -> Iterator[BatchView]:
        segs = self._segments
        i = bisect_right([s.base_offset for s in segs], offset) - 1
        for k, seg in enumerate(segs[i:]):
            j = max(bisect_right(seg.bases, offset) - 1, 0) if k == 0 else 0
            for raw in seg.batches[j:]:
                yield verify(raw)

    def offset_for_time(self, ts_us: int) -> int | None:
        self._check_open()
        for seg in self._segments:
            if seg.max_ts >= ts_us:
                for raw in seg.batches:
                    view = verify(raw)
                    if view.max_timestamp_us >= ts_us:
                        return view.base_offset
        return None

    def apply_retention(self, now_us: int, keep_from: int | None = None) -> int:
        self._check_open()
        segs = self._segments
        infos = (
            SegmentInfo(segs[k].base_offset, segs[k + 1].base_offset, segs[k].size, segs[k].max_ts)
            for k in range(len(segs) - 1)
        )
        victims = retention_victims(
            self._config, infos, sum(s.size for s in segs), now_us, keep_from
        )
        del segs[:victims]
        return victims

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            start_offset=self.start_offset,
            end_offset=self._end_offset,
            synced_position=self._end_offset,
            segments=len(self._segments),
            size_bytes=sum(s.size for s in self._segments),
            appends=self._appends,
            fsyncs=0,
            checkpoints=0,
            corruptions=0,
            failed=False,
        )

    def close(self) -> None:
        self._closed = True

    def _reopen(self) -> None:
        # A store hands a closed memory log out again with its data, like reopening a file log.
        self._closed = False

    def __enter__(self) -> MemoryLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
