"""Sparse offset index and time index of one segment: derived data, never trusted (D4).

Both live in memory as compact arrays and on disk as two files next to the segment,
``<base>.index`` and ``<base>.timeindex``. Each file states the segment length it covers and a
CRC32C over its content; ``load`` accepts a file only if it is intact, belongs to this segment
and covers no more than the segment holds (a longer cover means the segment was cut: stale).
A shorter cover is a valid prefix that the caller extends by scanning the rest. Anything else
is rebuilt from the segment itself.

File layout (little-endian)::

    magic            4s   b"TQOI" (offset index) / b"TQTI" (time index)
    version          u8   1
    reserved         3x
    base_offset      i64  the segment's base offset
    covered          u64  segment bytes these entries describe
    next_offset      i64  offset after the last batch in the covered bytes
    first_ts_us      i64  timestamp of the segment's first batch (-1: none)
    max_ts_us        i64  largest batch timestamp in the covered bytes (-1: none)
    count            u32  entries
    crc              u32  CRC32C of everything before it plus the entries
    entries: .index     rel_offset u32[count], position u32[count]
             .timeindex timestamp  i64[count], rel_offset u32[count]
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from typing import Final

from crc32c import crc32c

from tidemq.storage._atomic import atomic_write

__all__ = ["SegmentIndex"]

_HEAD: Final = struct.Struct("<4sB3xqQqqqI")
_CRC: Final = struct.Struct("<I")
_VERSION: Final = 1
_OFFSET_MAGIC: Final = b"TQOI"
_TIME_MAGIC: Final = b"TQTI"
_SWAP: Final = sys.byteorder != "little"


def _le(col: array[int]) -> bytes:
    if _SWAP:
        col = array(col.typecode, col)
        col.byteswap()
    return col.tobytes()


def _from_le(typecode: str, data: bytes) -> array[int]:
    col = array(typecode, data)
    if _SWAP:
        col.byteswap()
    return col


class SegmentIndex:
    """Entries for every batch that starts at least ``interval`` bytes after the previous entry.

    The first batch of a segment is always indexed. Because the log keeps batch timestamps
    non-decreasing, one set of entry points serves both offset and time lookups.
    """

    __slots__ = (
        "base_offset",
        "interval",
        "rel_offsets",
        "positions",
        "timestamps",
        "covered",
        "next_offset",
        "first_ts",
        "max_ts",
        "_next_entry_at",
    )

    def __init__(self, base_offset: int, interval: int) -> None:
        self.base_offset = base_offset
        self.interval = interval
        self.rel_offsets = array("I")
        self.positions = array("I")
        self.timestamps = array("q")
        self.covered = 0
        self.next_offset = base_offset
        self.first_ts = -1
        self.max_ts = -1
        self._next_entry_at = 0

    def __len__(self) -> int:
        return len(self.positions)

    def add(self, base_offset: int, next_offset: int, position: int, size: int, ts: int) -> None:
        """Record the batch [base_offset, next_offset) of ``size`` bytes at ``position``."""
        if position >= self._next_entry_at:
            self.rel_offsets.append(base_offset - self.base_offset)
            self.positions.append(position)
            self.timestamps.append(ts)
            self._next_entry_at = position + self.interval
        if self.first_ts < 0:
            self.first_ts = ts
        self.covered = position + size
        self.next_offset = next_offset
        if ts > self.max_ts:
            self.max_ts = ts

    def lookup(self, offset: int) -> tuple[int, int]:
        """(position, offset) of the last indexed batch starting at or before ``offset``."""
        i = bisect_right(self.rel_offsets, offset - self.base_offset) - 1
        if i < 0:
            return 0, self.base_offset
        return self.positions[i], self.base_offset + self.rel_offsets[i]

    def lookup_time(self, ts_us: int) -> tuple[int, int]:
        """(position, offset) of the last indexed batch with timestamp < ``ts_us``."""
        i = bisect_left(self.timestamps, ts_us) - 1
        if i < 0:
            return 0, self.base_offset
        return self.positions[i], self.base_offset + self.rel_offsets[i]

    def next_entry_after(self, position: int) -> int | None:
        """Position of the first entry strictly after ``position`` (to skip damage)."""
        i = bisect_right(self.positions, position)
        return self.positions[i] if i < len(self.positions) else None

    def snapshot(self, covered: int, next_offset: int, max_ts: int) -> SegmentIndex:
        """A copy holding only the entries below ``covered`` (for a checkpoint)."""
        keep = bisect_left(self.positions, covered)
        out = SegmentIndex(self.base_offset, self.interval)
        out.rel_offsets = self.rel_offsets[:keep]
        out.positions = self.positions[:keep]
        out.timestamps = self.timestamps[:keep]
        out.covered = covered
        out.next_offset = next_offset
        out.first_ts = self.first_ts if keep else -1
        out.max_ts = max_ts if keep else -1
        out._next_entry_at = (out.positions[-1] + self.interval) if keep else 0
        return out

    # --- files ----------------------------------------------------------------------------

    def _head(self, magic: bytes) -> bytes:
        return _HEAD.pack(
            magic,
            _VERSION,
            self.base_offset,
            self.covered,
            self.next_offset,
            self.first_ts,
            self.max_ts,
            len(self.positions),
        )

    def save(self, stem: str) -> None:
        """Write ``<stem>.index`` and ``<stem>.timeindex`` (atomic, not fsynced: D4)."""
        rel = _le(self.rel_offsets)
        for suffix, magic, body in (
            (".index", _OFFSET_MAGIC, rel + _le(self.positions)),
            (".timeindex", _TIME_MAGIC, _le(self.timestamps) + rel),
        ):
            head = self._head(magic)
            atomic_write(
                stem + suffix, head + _CRC.pack(crc32c(body, crc32c(head))) + body, durable=False
            )

    @classmethod
    def load(
        cls, stem: str, base_offset: int, interval: int, segment_size: int
    ) -> SegmentIndex | None:
        """The index saved for this segment, or None if missing, damaged, foreign or stale."""
        try:
            with open(stem + ".index", "rb") as f:
                off_data = f.read()
            with open(stem + ".timeindex", "rb") as f:
                time_data = f.read()
        except OSError:
            return None
        off = _parse(off_data, _OFFSET_MAGIC)
        tim = _parse(time_data, _TIME_MAGIC)
        if off is None or tim is None or off[0] != tim[0]:
            return None
        (base, covered, next_offset, first_ts, max_ts, count), body = off
        if base != base_offset or covered > segment_size or next_offset < base_offset:
            return None
        if len(body) != 8 * count or len(tim[1]) != 12 * count:
            return None
        idx = cls(base_offset, interval)
        idx.rel_offsets = _from_le("I", body[: 4 * count])
        idx.positions = _from_le("I", body[4 * count :])
        idx.timestamps = _from_le("q", tim[1][: 8 * count])
        if _from_le("I", tim[1][8 * count :]) != idx.rel_offsets:
            return None
        if count and (
            idx.positions[0] != 0 or idx.rel_offsets[0] != 0 or idx.positions[-1] >= covered
        ):
            return None
        if (count == 0) != (covered == 0):
            return None
        idx.covered = covered
        idx.next_offset = next_offset
        idx.first_ts = first_ts
        idx.max_ts = max_ts
        idx._next_entry_at = (idx.positions[-1] + interval) if count else 0
        return idx

    @staticmethod
    def remove(stem: str) -> None:
        for suffix in (".index", ".timeindex"):
            try:
                os.unlink(stem + suffix)
            except FileNotFoundError:
                pass


def _parse(data: bytes, magic: bytes) -> tuple[tuple[int, int, int, int, int, int], bytes] | None:
    size = _HEAD.size + _CRC.size
    if len(data) < size:
        return None
    got_magic, version, base, covered, next_offset, first_ts, max_ts, count = _HEAD.unpack_from(
        data
    )
    if got_magic != magic or version != _VERSION:
        return None
    (crc,) = _CRC.unpack_from(data, _HEAD.size)
    body = data[size:]
    if crc32c(body, crc32c(data[: _HEAD.size])) != crc:
        return None
    return (base, covered, next_offset, first_ts, max_ts, count), body
