"""The record-batch layout, the :class:`Record` value and the read side (:class:`BatchView`).

Format version 1, as in ``docs/storage-format.md``. Encoding, checking and stamping live in
``_format`` (which re-exports everything here); a :class:`BatchView` is only ever made by
``_format.verify``, so its accessors may assume a structurally sound batch.

Schema (all integers little-endian)::

    RecordBatch =>
      --- header, 64 bytes -------------------------------------------------------------
      base_offset         => Int64   [0]   offset of record 0 (broker-assigned)
      batch_length        => UInt32  [8]   bytes of the whole batch, header included
      first_timestamp_us  => Int64   [12]  broker append time, µs since epoch (broker-assigned)
      max_timestamp_us    => Int64   [20]  equal to first_timestamp_us (broker-assigned)
      version             => UInt8   [28]  = 1
      header_crc          => UInt32  [29]  CRC32C of bytes [0, 29)
      body_crc            => UInt32  [33]  CRC32C of bytes [37, batch_length)
      attributes          => UInt16  [37]  HAS_* flags
      record_count        => UInt32  [39]  >= 1
      producer_id         => Int64   [43]  -1: none
      producer_epoch      => Int16   [51]
      base_sequence       => Int32   [53]  -1: none
      min_priority        => UInt8   [57]
      max_priority        => UInt8   [58]
      ext_length          => UInt32  [59]  bytes of the extension section
      reserved            => UInt8   [63]  = 0
      --- columns, record_count entries each -------------------------------------------
      lengths             => [UInt32]                       body length
      priorities          => [UInt8]   if HAS_PRIORITY
      deliver_at_us       => [Int64]   if HAS_DELAY         0 = now
      ttl_us              => [Int64]   if HAS_TTL           0 = none
      ext                 => msgpack   if HAS_EXT           [[key|nil, rk|nil, headers|nil, dedup|nil], ...]
      bodies              => bytes     concatenated

The broker-owned fields (base offset, timestamps) sit under the small header CRC so that
stamping them never touches the body CRC: a producer's batch is stored without re-encoding and
every bit is still covered by one of the two checksums.

Thread safety: everything here is pure; a :class:`BatchView` is immutable as long as nobody
mutates the buffer it wraps.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable
from itertools import accumulate, pairwise, repeat
from typing import Final, TypeAlias

import msgspec

from tidemq.errors import CorruptRecord, InvalidArgument

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "VERSION",
    "HAS_PRIORITY",
    "HAS_DELAY",
    "HAS_TTL",
    "HAS_EXT",
    "HAS_HEADERS",
    "HAS_KEY",
    "MAX_PRIORITY",
    "Record",
    "BatchView",
    "Ext",
]

HEADER: Final = struct.Struct(
    "<"
    "q"  # base_offset         [0]   broker-assigned
    "I"  # batch_length        [8]   whole batch, header included
    "q"  # first_timestamp_us  [12]  broker-assigned
    "q"  # max_timestamp_us    [20]  broker-assigned
    "B"  # version             [28]
    "I"  # header_crc          [29]  CRC32C of [0, 29)
    "I"  # body_crc            [33]  CRC32C of [37, batch_length)
    "H"  # attributes          [37]
    "I"  # record_count        [39]
    "q"  # producer_id         [43]
    "h"  # producer_epoch      [51]
    "i"  # base_sequence       [53]
    "B"  # min_priority        [57]
    "B"  # max_priority        [58]
    "I"  # ext_length          [59]
    "B"  # reserved            [63]
)
HEADER_SIZE: Final = 64
VERSION: Final = 1

HAS_PRIORITY: Final = 1
HAS_DELAY: Final = 2
HAS_TTL: Final = 4
HAS_EXT: Final = 8
HAS_HEADERS: Final = 16
HAS_KEY: Final = 32
MAX_PRIORITY: Final = 9

_KNOWN_FLAGS: Final = HAS_PRIORITY | HAS_DELAY | HAS_TTL | HAS_EXT | HAS_HEADERS | HAS_KEY
_NOT_PLAIN: Final = HAS_PRIORITY | HAS_DELAY | HAS_TTL | HAS_EXT

# Offsets of the two CRCs and of the start of the body-CRC region (see the schema above).
_HEADER_CRC_AT: Final = 29
_BODY_CRC_AT: Final = 33
_BODY_FROM: Final = 37
_ATTRIBUTES_AT: Final = 37  # the attributes (u16, little-endian): the first byte has the flags

# Pieces of HEADER, for writing parts of it in place.
_CRC_COVERED: Final = struct.Struct("<qIqqB")  # [0, 29): what the header CRC covers
_TWO_CRCS: Final = struct.Struct("<II")  # [29, 37)
_TAIL: Final = struct.Struct("<HIqhiBBIB")  # [37, 64): under the body CRC
_U32: Final = struct.Struct("<I")
_I64: Final = struct.Struct("<q")
_STAMPED: Final = struct.Struct("<qIqq")  # [0, 28): base_offset, batch_length, timestamps
assert HEADER.size == HEADER_SIZE == _CRC_COVERED.size + _TWO_CRCS.size + _TAIL.size

_U32_MAX: Final = 0xFFFF_FFFF
_I64_MAX: Final = (1 << 63) - 1

# Columns are read and written with array.array in native order; the format is little-endian.
_SWAP: Final = sys.byteorder != "little"
assert array("I").itemsize == 4 and array("q").itemsize == 8


class Record(msgspec.Struct, frozen=True, gc=False):
    """One message as a producer hands it in and as :meth:`BatchView.records` returns it.

    Not tracked by the garbage collector (``gc=False``): a record holds bytes, strings, ints
    and a dict of strings, so it is never part of a reference cycle, and a broker holding
    millions of them would otherwise pay for them in every full collection.

    ``priority`` is 0..9 (higher is more urgent); ``deliver_at_us`` is µs since the epoch (0:
    at once); ``ttl_us`` is µs counted from when the record becomes ready (0: none). Values are
    checked by :func:`encode_batch`, not here.
    """

    body: bytes
    key: bytes | None = None
    routing_key: str | None = None
    headers: dict[str, str] | None = None
    priority: int = 0
    deliver_at_us: int = 0
    ttl_us: int = 0
    dedup_id: str | None = None


# One record's entry of the extension section: (key, routing_key, headers, dedup_id).
Ext: TypeAlias = tuple[bytes | None, str | None, dict[str, str] | None, str | None]
_EXT_FIELDS: Final = ("key", "routing_key", "headers", "dedup_id")

_EXT_ENCODER: Final = msgspec.msgpack.Encoder()
_EXT_DECODER: Final = msgspec.msgpack.Decoder(list[Ext])


def _i64s(col: memoryview) -> array[int]:
    out = array("q", col.tobytes())
    if _SWAP:
        out.byteswap()
    return out


def _u32s(col: memoryview) -> array[int]:
    out = array("I", col.tobytes())
    if _SWAP:
        out.byteswap()
    return out


# --- reading -------------------------------------------------------------------------------


class BatchView:
    """A verified batch, read in place. Made by :func:`verify`; do not construct directly.

    Attributes are the header's fields (``size`` is ``batch_length``; ``raw`` the wrapped
    buffer). The column accessors return fresh objects; ``records()`` decodes everything.
    """

    __slots__ = (
        "raw",
        "base_offset",
        "last_offset",
        "count",
        "first_timestamp_us",
        "max_timestamp_us",
        "attributes",
        "min_priority",
        "max_priority",
        "producer_id",
        "producer_epoch",
        "base_sequence",
        "size",
        "_at",
    )

    def __init__(
        self,
        raw: bytes | bytearray | memoryview,
        base_offset: int,
        count: int,
        first_timestamp_us: int,
        max_timestamp_us: int,
        attributes: int,
        min_priority: int,
        max_priority: int,
        producer_id: int,
        producer_epoch: int,
        base_sequence: int,
        size: int,
        at: tuple[int, int, int, int, int],
    ) -> None:
        self.raw = raw
        self.base_offset = base_offset
        self.last_offset = base_offset + count - 1
        self.count = count
        self.first_timestamp_us = first_timestamp_us
        self.max_timestamp_us = max_timestamp_us
        self.attributes = attributes
        self.min_priority = min_priority
        self.max_priority = max_priority
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self.size = size
        # Start positions of: priorities, deliver-at, ttl, ext, bodies.
        self._at = at

    def __repr__(self) -> str:
        return (
            f"BatchView(offsets={self.base_offset}..{self.last_offset}, size={self.size}, "
            f"attributes={self.attributes:#x}, producer=({self.producer_id}, "
            f"{self.producer_epoch}, {self.base_sequence}))"
        )

    @property
    def is_plain(self) -> bool:
        """True when the batch has no priority, delay, ttl or ext data: bodies only."""
        return not self.attributes & _NOT_PLAIN

    @property
    def has_key(self) -> bool:
        return bool(self.attributes & HAS_KEY)

    @property
    def has_headers(self) -> bool:
        return bool(self.attributes & HAS_HEADERS)

    def lengths(self) -> array[int]:
        """Body length of each record (u32)."""
        return _u32s(memoryview(self.raw)[HEADER_SIZE : self._at[0]])

    def priorities(self) -> bytes:
        """Priority of each record (one byte each; all zero when the column is absent)."""
        prio_at, delay_at = self._at[0], self._at[1]
        if self.attributes & HAS_PRIORITY:
            return bytes(self.raw[prio_at:delay_at])
        return bytes(self.count)

    def deliver_ats(self) -> array[int]:
        """Deliver-at time (µs since epoch, 0 = at once) of each record."""
        if self.attributes & HAS_DELAY:
            return _i64s(memoryview(self.raw)[self._at[1] : self._at[2]])
        return array("q", bytes(8 * self.count))

    def ttls(self) -> array[int]:
        """TTL (µs from ready, 0 = none) of each record."""
        if self.attributes & HAS_TTL:
            return _i64s(memoryview(self.raw)[self._at[2] : self._at[3]])
        return array("q", bytes(8 * self.count))

    def extensions(self) -> list[Ext]:
        """(key, routing_key, headers, dedup_id) of each record; all None when absent.

        Raises :class:`CorruptRecord` if the ext section does not decode to one well-typed
        entry per record (possible only for a batch built by a foreign or buggy encoder).
        """
        if not self.attributes & HAS_EXT:
            return [(None, None, None, None)] * self.count
        ext_at, bodies_at = self._at[3], self._at[4]
        try:
            rows = _EXT_DECODER.decode(memoryview(self.raw)[ext_at:bodies_at])
        except msgspec.DecodeError as exc:
            raise CorruptRecord(f"malformed extension section: {exc}") from exc
        if len(rows) != self.count:
            raise CorruptRecord(
                f"extension section has {len(rows)} entries for {self.count} records"
            )
        return rows

    def bodies(self) -> list[bytes]:
        """The record bodies, as bytes."""
        bodies_at = self._at[4]
        raw = self.raw
        if isinstance(raw, bytes):
            src, start = raw, bodies_at
        else:
            src, start = bytes(memoryview(raw)[bodies_at:]), 0
        ends = accumulate(self.lengths(), initial=start)
        return [src[a:b] for a, b in pairwise(ends)]

    def records(self) -> list[Record]:
        """Every record, decoded (raises :class:`CorruptRecord` on a malformed ext section)."""
        count = self.count
        attributes = self.attributes
        if count == 1:  # a batch of one message (a per-message publish): no columns to build
            return [self._only()]
        bodies = self.bodies()
        if not attributes & _NOT_PLAIN:
            return list(map(Record, bodies))
        prios: Iterable[int] = self.priorities() if attributes & HAS_PRIORITY else repeat(0)
        delays: Iterable[int] = self.deliver_ats() if attributes & HAS_DELAY else repeat(0)
        ttls: Iterable[int] = self.ttls() if attributes & HAS_TTL else repeat(0)
        if attributes & HAS_EXT:
            keys, rks, headers, dedups = zip(*self.extensions(), strict=True)
        else:
            keys = rks = headers = dedups = (None,) * count
        return list(map(Record, bodies, keys, rks, headers, prios, delays, ttls, dedups))

    def _only(self) -> Record:
        """The record of a one-record batch: what :meth:`records` builds from the columns,
        read straight from its fields."""
        raw = self.raw
        prio_at, delay_at, ttl_at, _, bodies_at = self._at
        body = bytes(raw[bodies_at:])  # verify(): one record's body ends the batch
        attributes = self.attributes
        if not attributes & _NOT_PLAIN:
            return Record(body)
        key = rk = headers = dedup = None
        if attributes & HAS_EXT:
            key, rk, headers, dedup = self.extensions()[0]
        return Record(
            body, key, rk, headers,
            raw[prio_at] if attributes & HAS_PRIORITY else 0,
            _I64.unpack_from(raw, delay_at)[0] if attributes & HAS_DELAY else 0,
            _I64.unpack_from(raw, ttl_at)[0] if attributes & HAS_TTL else 0,
            dedup,
        )

    def record(self, i: int) -> Record:
        """Record ``i`` (0-based within the batch) alone."""
        if not 0 <= i < self.count:
            raise InvalidArgument(f"record index {i} out of range for a batch of {self.count}")
        lengths = self.lengths()
        start = self._at[4] + sum(lengths[:i])
        body = bytes(self.raw[start : start + lengths[i]])
        key, rk, headers, dedup = (
            self.extensions()[i]
            if self.attributes & HAS_EXT
            else (
                None,
                None,
                None,
                None,
            )
        )
        return Record(
            body,
            key,
            rk,
            headers,
            self.priorities()[i] if self.attributes & HAS_PRIORITY else 0,
            self.deliver_ats()[i] if self.attributes & HAS_DELAY else 0,
            self.ttls()[i] if self.attributes & HAS_TTL else 0,
            dedup,
        )
