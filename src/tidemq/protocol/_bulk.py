"""Binary payload layouts of the hot-path frames: Publish, Deliver, Ack and Credit.

These frames carry many messages, so their payloads are laid out for a few buffer operations
per frame, not per message: fixed-width columns (``array`` conversions run in C) and bulk bytes
carried verbatim. All integers little-endian. Each ``encode_*`` returns the payload as a list of
buffers (so a big body is never copied just to prepend a header); each ``decode_*`` takes a
memoryview of exactly one payload, returns values that own their memory (no view escapes) and
raises :class:`tidemq.errors.ProtocolError` for any malformed input.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Sequence
from itertools import accumulate
from typing import Any, Final

import msgspec

from .. import errors
from ._frames import Ack, Credit, Deliver, Publish

_BIG_ENDIAN: Final = sys.byteorder == "big"

PUBLISH: Final = struct.Struct(
    "<"
    "i"  # partition: i32, -1 = the broker chooses
    "H"  # topic_length: u16, bytes of the UTF-8 topic name that follows
)
# then: topic (topic_length bytes, UTF-8), then the record batch (the rest of the frame, >= 1 byte)

CREDIT: Final = struct.Struct(
    "<"
    "I"  # subscription_id: u32
    "I"  # n: u32, further deliveries the client accepts
)

ACK: Final = struct.Struct(
    "<"
    "I"  # subscription_id: u32
    "I"  # range_count: u32, entries in each of the three range columns (<= MAX_ACK_RANGES)
    "I"  # ids_length: u32, bytes of the msgpack id list at the end (0: no ids)
)
# A client holds at most prefetch leases per subscription (at most 10,000: MAX_PREFETCH in
# broker/_limits.py), and consecutive offsets of a partition share one range, so one Ack never
# needs more ranges than that. The cap is checked from range_count before anything is decoded:
# decoding costs 0.1-0.3 us per range, so a 16 MiB frame of ranges (838,000 of them) held the
# server's event loop for about 250 ms; 10,000 take 1-2 ms.
MAX_ACK_RANGES: Final = 10_000
# then the columns, range_count entries each:
#   partition     u32[range_count]
#   first_offset  i64[range_count]   first acked offset, included
#   last_offset   i64[range_count]   last acked offset, included (>= first_offset >= 0)
# then ids: msgpack array of str (ids_length bytes), absent when ids_length = 0

DELIVER: Final = struct.Struct(
    "<"
    "I"  # subscription_id: u32
    "I"  # count: u32, deliveries in this frame (>= 1)
    "I"  # ids_length: u32, bytes of the msgpack id array
    "I"  # ext_length: u32, bytes of the msgpack extension section (0: none)
)
# then the columns, count entries each, in this order:
#   offset          i64[count]
#   timestamp_us    i64[count]   broker append time, us since the epoch
#   partition       u32[count]
#   delivery_count  u32[count]   1 on first delivery
#   body_length     u32[count]
#   priority        u8[count]
# then ids: msgpack array of `count` str (ids_length bytes)
# then ext (ext_length bytes, if > 0): msgpack array [keys, routing_keys, headers], each either
#   nil or an array of `count` entries (bin|nil, str|nil, map<str,str>|nil respectively)
# then the bodies, concatenated: sum(body_length) bytes, exactly the rest of the frame
_DELIVER_COLUMNS: Final = (("q", 8), ("q", 8), ("I", 4), ("I", 4), ("I", 4), ("B", 1))
_DELIVER_ROW: Final = sum(size for _, size in _DELIVER_COLUMNS)  # 29 bytes per delivery
_ACK_ROW: Final = 4 + 8 + 8

_Ext = tuple[
    list[bytes | None] | None,
    list[str | None] | None,
    list[dict[str, str] | None] | None,
]
_ENCODER: Final = msgspec.msgpack.Encoder()
_IDS_DECODER: Final = msgspec.msgpack.Decoder(list[str])
_EXT_DECODER: Final = msgspec.msgpack.Decoder(_Ext)


def _column(typecode: str, values: Sequence[int]) -> bytes:
    col = array.array(typecode, values)
    if _BIG_ENDIAN:  # the wire is little-endian; array uses the machine's order
        col.byteswap()
    return col.tobytes()


def _read_column(typecode: str, view: memoryview) -> list[int]:
    col = array.array(typecode)
    col.frombytes(view)
    if _BIG_ENDIAN:
        col.byteswap()
    return col.tolist()


# --- Publish -------------------------------------------------------------------------------


def encode_publish(frame: Publish) -> list[bytes]:
    topic = frame.topic.encode("utf-8")
    if not frame.batch:
        raise errors.InvalidArgument("Publish.batch is empty; pass an encoded record batch")
    return [PUBLISH.pack(frame.partition, len(topic)) + topic, frame.batch]


def decode_publish(request_id: int, view: memoryview) -> Publish:
    partition, topic_length = PUBLISH.unpack_from(view)
    batch_at = PUBLISH.size + topic_length
    if len(view) <= batch_at:
        raise errors.ProtocolError("Publish frame has no record batch after its topic name")
    if partition < -1:
        raise errors.ProtocolError(f"Publish partition {partition} is invalid (>= 0, or -1)")
    topic = str(view[PUBLISH.size:batch_at], "utf-8")
    return Publish(request_id=request_id, topic=topic, partition=partition,
                   batch=bytes(view[batch_at:]))


# --- Credit --------------------------------------------------------------------------------


def encode_credit(frame: Credit) -> list[bytes]:
    return [CREDIT.pack(frame.subscription_id, frame.n)]


def decode_credit(request_id: int, view: memoryview) -> Credit:
    if len(view) != CREDIT.size:
        raise errors.ProtocolError(f"Credit payload is {len(view)} bytes, expected {CREDIT.size}")
    subscription_id, n = CREDIT.unpack_from(view)
    return Credit(request_id=request_id, subscription_id=subscription_id, n=n)


# --- Ack -----------------------------------------------------------------------------------


def encode_ack(frame: Ack) -> list[bytes]:
    ranges = frame.ranges
    if len(ranges) > MAX_ACK_RANGES:
        raise errors.InvalidArgument(
            f"an Ack may carry at most {MAX_ACK_RANGES} ranges, got {len(ranges)}; split it")
    ids = _ENCODER.encode(frame.ids) if frame.ids else b""
    parts = [ACK.pack(frame.subscription_id, len(ranges), len(ids))]
    if ranges:
        partitions, firsts, lasts = zip(*ranges, strict=True)
        parts += [_column("I", partitions), _column("q", firsts), _column("q", lasts)]
    parts.append(ids)
    return parts


def decode_ack(request_id: int, view: memoryview) -> Ack:
    subscription_id, n, ids_length = ACK.unpack_from(view)
    if n > MAX_ACK_RANGES:  # before anything else is read: refused in constant time
        raise errors.ProtocolError(
            f"Ack frame declares {n} ranges; at most {MAX_ACK_RANGES} are allowed")
    at = ACK.size
    if len(view) != at + n * _ACK_ROW + ids_length:
        raise errors.ProtocolError("Ack frame length disagrees with its range count and id length")
    partitions = _read_column("I", view[at:at + 4 * n])
    at += 4 * n
    firsts = _read_column("q", view[at:at + 8 * n])
    at += 8 * n
    lasts = _read_column("q", view[at:at + 8 * n])
    at += 8 * n
    ranges = list(zip(partitions, firsts, lasts, strict=True))
    for _, first, last in ranges:
        if not 0 <= first <= last:
            raise errors.ProtocolError(f"Ack range [{first}, {last}] is not 0 <= first <= last")
    ids = _IDS_DECODER.decode(view[at:]) if ids_length else []
    return Ack(request_id=request_id, subscription_id=subscription_id, ranges=ranges, ids=ids)


# --- Deliver -------------------------------------------------------------------------------


def encode_deliver(frame: Deliver) -> list[bytes]:
    count = len(frame.ids)
    bodies = frame.bodies
    lengths = list(map(len, bodies))
    columns = (frame.offsets, frame.timestamps_us, frame.partitions, frame.delivery_counts,
               lengths, frame.priorities)
    if count == 0:
        raise errors.InvalidArgument("a Deliver frame needs at least one delivery")
    if any(len(c) != count for c in columns):
        raise errors.InvalidArgument("Deliver columns differ in length; each needs one entry per id")
    ext: list[Any] = [frame.keys, frame.routing_keys, frame.headers]
    for col in ext:
        if col is not None and len(col) != count:
            raise errors.InvalidArgument("Deliver optional columns need one entry per id")
    ids = _ENCODER.encode(frame.ids)
    ext_bytes = _ENCODER.encode(ext) if ext != [None, None, None] else b""
    head = b"".join([
        DELIVER.pack(frame.subscription_id, count, len(ids), len(ext_bytes)),
        *(_column(code, values) for (code, _), values in zip(_DELIVER_COLUMNS, columns, strict=True)),
        ids,
        ext_bytes,
    ])
    return [head, *bodies]


def decode_deliver(request_id: int, view: memoryview) -> Deliver:
    subscription_id, count, ids_length, ext_length = DELIVER.unpack_from(view)
    at = DELIVER.size
    bodies_at = at + count * _DELIVER_ROW + ids_length + ext_length
    if count == 0 or len(view) < bodies_at:
        raise errors.ProtocolError("Deliver frame is shorter than its count and lengths say")
    cols: list[list[int]] = []
    for code, size in _DELIVER_COLUMNS:
        cols.append(_read_column(code, view[at:at + size * count]))
        at += size * count
    offsets, timestamps, partitions, delivery_counts, lengths, priorities = cols
    ids = _IDS_DECODER.decode(view[at:at + ids_length])
    at += ids_length
    keys = rks = hdrs = None
    if ext_length:
        keys, rks, hdrs = _EXT_DECODER.decode(view[at:at + ext_length])
    blob = bytes(view[bodies_at:])
    if sum(lengths) != len(blob):
        raise errors.ProtocolError("Deliver body lengths disagree with the frame length")
    if len(ids) != count or any(c is not None and len(c) != count for c in (keys, rks, hdrs)):
        raise errors.ProtocolError("Deliver id or extension column has the wrong entry count")
    ends = list(accumulate(lengths))
    bodies = [blob[end - n:end] for end, n in zip(ends, lengths, strict=True)]
    return Deliver(
        request_id=request_id, subscription_id=subscription_id, ids=ids, partitions=partitions,
        offsets=offsets, timestamps_us=timestamps, delivery_counts=delivery_counts,
        priorities=priorities, bodies=bodies, keys=keys, routing_keys=rks, headers=hdrs,
    )
