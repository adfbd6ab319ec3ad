"""Encoding, checking and stamping record batches (format version 1, ``docs/storage-format.md``).

A batch is the unit of append, checksum and transfer. Producers encode it once
(:func:`encode_bodies`, :func:`encode_batch`); the broker checks it (:func:`verify`), patches
only its broker-owned header fields (:func:`stamp`) and stores it byte for byte; readers get a
zero-copy :class:`BatchView` whose columns (lengths, priorities, deliver-at, ttl) can be read
without touching bodies. The byte layout, field by field, is documented with ``HEADER`` in
``_record``; every public name of that module is re-exported here.

Thread safety: everything here is pure; a :class:`BatchView` is immutable as long as nobody
mutates the buffer it wraps.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import Final

import msgspec
from crc32c import crc32c

from tidemq.errors import CorruptRecord, InvalidArgument
from tidemq.storage._record import (
    _BODY_FROM,
    _CRC_COVERED,
    _EXT_DECODER,
    _EXT_ENCODER,
    _EXT_FIELDS,
    _HEADER_CRC_AT,
    _I64,
    _I64_MAX,
    _KNOWN_FLAGS,
    _STAMPED,
    _SWAP,
    _TAIL,
    _TWO_CRCS,
    _U32,
    _U32_MAX,
    HAS_DELAY,
    HAS_EXT,
    HAS_HEADERS,
    HAS_KEY,
    HAS_PRIORITY,
    HAS_TTL,
    HEADER,
    HEADER_SIZE,
    MAX_PRIORITY,
    VERSION,
    BatchView,
    Ext,
    Record,
    _i64s,
    _u32s,
)

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
    "encode_bodies",
    "encode_batch",
    "stamp",
    "verify",
    "verify_for_append",
    "peek_length",
    "decode_records",
    "select",
]

# The log's own encoder (:func:`encode_stamped`) is not exported from ``tidemq.storage``: its
# output carries broker fields and is appended without re-verification, so only the log that
# stamps it may use it.

# Transposes records into columns in C: zip(*map(_COLUMNS, records)).
_COLUMNS: Final = attrgetter(
    "body", "key", "routing_key", "headers", "priority", "deliver_at_us", "ttl_us", "dedup_id"
)
# Everything of a record but its body; a *plain* record (body only) has exactly _PLAIN_EXTRAS,
# and a batch of plain records encodes byte for byte as encode_bodies would (attributes 0, no
# columns, no ext): the fast path of encode_batch.
_EXTRAS: Final = attrgetter(
    "key", "routing_key", "headers", "priority", "deliver_at_us", "ttl_us", "dedup_id"
)
_PLAIN_EXTRAS: Final = (None, None, None, 0, 0, 0, None)
_BODY: Final = attrgetter("body")
# The header tail of a one-record plain batch without producer fields, and the lengths column
# entry's format: the per-message publish path packs nothing else.
_PLAIN_ONE_TAIL: Final = _TAIL.pack(0, 1, -1, 0, -1, 0, 0, 0, 0)
_PLAIN_ONE_PREFIX: Final = struct.Struct(f"<{_TAIL.size}sI")  # that tail + the one length


# --- encoding ------------------------------------------------------------------------------


def _i64_column(values: Iterable[int]) -> bytes:
    col = array("q", values)
    if _SWAP:
        col.byteswap()
    return col.tobytes()


def _assemble(
    parts: list[bytes],
    lengths: array[int],
    columns: int,
    *,
    attributes: int,
    count: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    min_priority: int,
    max_priority: int,
    ext_length: int,
    base_offset: int = 0,
    timestamp_us: int = 0,
) -> bytes:
    """Header + ``parts`` with both CRCs; base offset and times as given (0: unstamped).

    ``parts`` is [placeholder for the header tail, placeholder for the lengths column, other
    columns ... (``columns`` parts in all), bodies ...].
    """
    try:
        tail = _TAIL.pack(
            attributes,
            count,
            producer_id,
            producer_epoch,
            base_sequence,
            min_priority,
            max_priority,
            ext_length,
            0,
        )
    except struct.error as exc:
        raise InvalidArgument(
            "producer_id must fit in i64, producer_epoch in i16 and base_sequence in i32 "
            f"(got {producer_id}, {producer_epoch}, {base_sequence})"
        ) from exc
    parts[0] = tail
    column = lengths
    if _SWAP:
        column = array("I", lengths)
        column.byteswap()
    parts[1] = column.tobytes()
    covered = b"".join(parts)  # everything under the body CRC: one copy of the bodies
    if len(covered) != sum(map(len, parts[:columns])) + sum(lengths):
        # len() of a memoryview or array with items wider than a byte is not its byte size.
        raise InvalidArgument("bodies must be bytes (or byte-sized buffers)")
    total = HEADER_SIZE - _TAIL.size + len(covered)
    if total > _U32_MAX:
        raise InvalidArgument(f"batch of {total} bytes exceeds the 4 GiB format limit; split it")
    head = _CRC_COVERED.pack(base_offset, total, timestamp_us, timestamp_us, VERSION)
    return b"".join((head, _TWO_CRCS.pack(crc32c(head), crc32c(covered)), covered))


def _bad_body(bodies: Sequence[object]) -> InvalidArgument:
    """The error for a body that is not bytes-like (or too long), naming the first one."""
    for i, body in enumerate(bodies):
        try:
            if len(memoryview(body)) <= _U32_MAX:  # type: ignore[arg-type]
                continue
        except TypeError:
            pass
        return InvalidArgument(
            f"record {i}: body must be bytes of at most 4 GiB, got {type(body).__name__}"
        )
    return InvalidArgument("bodies must be bytes of at most 4 GiB each")


def _check_producer(producer_id: int, producer_epoch: int, base_sequence: int) -> None:
    try:
        ok = producer_id >= -1 and producer_epoch >= 0 and base_sequence >= -1
    except TypeError:
        ok = False
    if not ok:
        raise InvalidArgument(
            "producer_id and base_sequence must be >= -1 and producer_epoch >= 0 "
            f"(got {producer_id}, {producer_epoch}, {base_sequence})"
        )


def encode_bodies(
    bodies: Sequence[bytes],
    *,
    producer_id: int = -1,
    producer_epoch: int = 0,
    base_sequence: int = -1,
) -> bytes:
    """Encode a *plain* batch (bodies only, attributes 0): the publish fast path.

    Returns a complete, verifiable batch with base offset 0 and timestamps 0 (the broker
    stamps them). Raises :class:`InvalidArgument` for an empty sequence, a body that is not
    bytes-like or producer fields out of range.
    """
    return _encode_bodies(bodies, producer_id, producer_epoch, base_sequence, 0, 0)


def _encode_bodies(
    bodies: Sequence[bytes],
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    base_offset: int,
    timestamp_us: int,
) -> bytes:
    count = len(bodies)
    if count == 0:
        raise InvalidArgument("a batch needs at least one record")
    _check_producer(producer_id, producer_epoch, base_sequence)
    parts: list[bytes] = [b"", b""]
    parts += bodies
    try:
        return _assemble(
            parts,
            array("I", map(len, bodies)),
            2,
            attributes=0,
            count=count,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            base_sequence=base_sequence,
            min_priority=0,
            max_priority=0,
            ext_length=0,
            base_offset=base_offset,
            timestamp_us=timestamp_us,
        )
    except (TypeError, OverflowError) as exc:
        raise _bad_body(bodies) from exc


def _int_column(name: str, values: tuple[int, ...], low: int, high: int) -> tuple[int, int]:
    """(min, max) of ``values``; InvalidArgument unless every value lies in [low, high].

    That the values are ints is checked where the column is built (bytes() / array()).
    """
    try:
        lo = min(values)
        hi = max(values)
        if low <= lo and hi <= high:
            return lo, hi
    except TypeError:
        pass
    bad = next(
        (i for i, v in enumerate(values) if not isinstance(v, int) or not low <= v <= high), 0
    )
    raise InvalidArgument(
        f"record {bad}: {name} must be an integer in [{low}, {high}], got {values[bad]!r}"
    )


def encode_batch(
    records: Sequence[Record],
    *,
    producer_id: int = -1,
    producer_epoch: int = 0,
    base_sequence: int = -1,
) -> bytes:
    """Encode records into one batch; columns and the ext section only where some record needs them.

    Checks what the format needs: at least one record; bodies and keys bytes; routing keys,
    header names/values and dedup ids str; priority 0..9; deliver-at and ttl >= 0. Anything
    else raises :class:`InvalidArgument` naming the record. Size limits are the broker's.
    """
    return _encode_records(records, producer_id, producer_epoch, base_sequence, 0, 0)


def encode_stamped(
    records: Sequence[Record],
    base_offset: int,
    timestamp_us: int,
    *,
    producer_id: int = -1,
    producer_epoch: int = 0,
    base_sequence: int = -1,
) -> bytes:
    """:func:`encode_batch`, with the broker fields already set: what ``stamp`` would give.

    For the log's own appends of records it encodes itself (the batch is well formed by
    construction, so it needs no :func:`verify`). Same checks and errors as encode_batch.
    """
    if (
        len(records) == 1
        and producer_id == -1
        and producer_epoch == 0
        and base_sequence == -1
    ):
        # The per-message publish path: one plain record, packed directly.
        rec = records[0]
        if type(rec) is Record and type(rec.body) is bytes and _EXTRAS(rec) == _PLAIN_EXTRAS:
            body = rec.body
            size = len(body)
            if size <= _U32_MAX - HEADER_SIZE - 4:
                covered = _PLAIN_ONE_PREFIX.pack(_PLAIN_ONE_TAIL, size) + body
                head = _CRC_COVERED.pack(
                    base_offset, HEADER_SIZE + 4 + size, timestamp_us, timestamp_us, VERSION
                )
                return b"".join((head, _TWO_CRCS.pack(crc32c(head), crc32c(covered)), covered))
        elif type(rec) is Record:  # one record with extras (a routing key, headers ...)
            one = _encode_one(rec, base_offset, timestamp_us)
            if one is not None:
                return one
    return _encode_records(
        records, producer_id, producer_epoch, base_sequence, base_offset, timestamp_us
    )


def _encode_one(rec: Record, base_offset: int, timestamp_us: int) -> bytes | None:
    """One record with extras, packed directly: the bytes :func:`_encode_records` makes of it
    (stamped), without its column machinery (a third of the time). None when a field is not
    what the format takes: the general path then raises its error."""
    key, rk, headers, prio, delay, ttl, dedup = _EXTRAS(rec)
    body = rec.body
    if (type(body) is not bytes or type(prio) is not int or type(delay) is not int
            or type(ttl) is not int or not 0 <= prio <= MAX_PRIORITY
            or not 0 <= delay <= _I64_MAX or not 0 <= ttl <= _I64_MAX):
        return None
    parts = [b"", _U32.pack(len(body))]  # the lengths column
    attributes = 0
    if prio:
        attributes |= HAS_PRIORITY
        parts.append(bytes((prio,)))
    if delay:
        attributes |= HAS_DELAY
        parts.append(_I64.pack(delay))
    if ttl:
        attributes |= HAS_TTL
        parts.append(_I64.pack(ttl))
    ext_length = 0
    if key is not None or rk is not None or headers is not None or dedup is not None:
        attributes |= HAS_EXT
        if key is not None:
            attributes |= HAS_KEY
        if headers is not None:
            attributes |= HAS_HEADERS
        ext = _encode_ext([(key, rk, headers, dedup)])
        ext_length = len(ext)
        parts.append(ext)
    parts[0] = _TAIL.pack(attributes, 1, -1, 0, -1, prio, prio, ext_length, 0)
    parts.append(body)
    covered = b"".join(parts)
    total = HEADER_SIZE - _TAIL.size + len(covered)
    if total > _U32_MAX:
        return None
    head = _CRC_COVERED.pack(base_offset, total, timestamp_us, timestamp_us, VERSION)
    return b"".join((head, _TWO_CRCS.pack(crc32c(head), crc32c(covered)), covered))


def _encode_records(
    records: Sequence[Record],
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    base_offset: int,
    timestamp_us: int,
) -> bytes:
    count = len(records)
    if count == 0:
        raise InvalidArgument("a batch needs at least one record")
    _check_producer(producer_id, producer_epoch, base_sequence)
    try:
        if list(map(_EXTRAS, records)).count(_PLAIN_EXTRAS) == count:
            bodies_only = list(map(_BODY, records))
        else:
            bodies_only = None
    except AttributeError as exc:
        raise InvalidArgument(f"records must be Record values: {exc}") from exc
    if bodies_only is not None:
        # Plain records: the same bytes as the general path below, without the columns.
        return _encode_bodies(
            bodies_only, producer_id, producer_epoch, base_sequence, base_offset, timestamp_us
        )
    try:
        bodies, keys, rks, headers, prios, delays, ttls, dedups = zip(
            *map(_COLUMNS, records), strict=True
        )
    except AttributeError as exc:
        raise InvalidArgument(f"records must be Record values: {exc}") from exc

    parts: list[bytes] = [b"", b""]
    attributes = 0
    lo_prio, hi_prio = _int_column("priority", prios, 0, MAX_PRIORITY)
    _, hi_delay = _int_column("deliver_at_us", delays, 0, _I64_MAX)
    _, hi_ttl = _int_column("ttl_us", ttls, 0, _I64_MAX)
    try:
        if hi_prio:
            attributes |= HAS_PRIORITY
            parts.append(bytes(prios))
        if hi_delay:
            attributes |= HAS_DELAY
            parts.append(_i64_column(delays))
        if hi_ttl:
            attributes |= HAS_TTL
            parts.append(_i64_column(ttls))
    except TypeError as exc:
        raise InvalidArgument(
            f"priority, deliver_at_us and ttl_us must be integers: {exc}"
        ) from exc

    ext_length = 0
    no_keys = keys.count(None) == count
    no_headers = headers.count(None) == count
    if not (no_keys and no_headers and rks.count(None) == count and dedups.count(None) == count):
        attributes |= HAS_EXT
        if not no_keys:
            attributes |= HAS_KEY
        if not no_headers:
            attributes |= HAS_HEADERS
        ext = _encode_ext(list(zip(keys, rks, headers, dedups, strict=True)))
        ext_length = len(ext)
        parts.append(ext)

    columns = len(parts)
    parts += bodies
    try:
        return _assemble(
            parts,
            array("I", map(len, bodies)),
            columns,
            attributes=attributes,
            count=count,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            base_sequence=base_sequence,
            min_priority=lo_prio if hi_prio else 0,
            max_priority=hi_prio,
            ext_length=ext_length,
            base_offset=base_offset,
            timestamp_us=timestamp_us,
        )
    except (TypeError, OverflowError) as exc:
        raise _bad_body(bodies) from exc


def _encode_ext(rows: list[tuple[object, object, object, object]]) -> bytes:
    try:
        ext = _EXT_ENCODER.encode(rows)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgument(
            f"key, routing_key, headers or dedup_id cannot be encoded: {exc}"
        ) from exc
    # Decoding with the readers' typed decoder is the type check: what passes here is exactly
    # what every reader accepts (a str key or an int header value would fail only at read time).
    try:
        _EXT_DECODER.decode(ext)
    except msgspec.ValidationError as exc:
        raise InvalidArgument(f"{_describe_ext_error(exc)}") from exc
    return ext


def _describe_ext_error(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's ``... - at `$[3][1]``` into 'record 3 routing_key: ...'."""
    text = str(exc)
    head, sep, where = text.rpartition(" - at `$[")
    if sep:
        index, _, rest = where.partition("][")
        field, _, _ = rest.partition("]")
        if index.isdigit() and field.isdigit() and int(field) < len(_EXT_FIELDS):
            expect = {
                "key": "bytes or None",
                "routing_key": "str or None",
                "headers": "dict[str, str] or None",
                "dedup_id": "str or None",
            }[_EXT_FIELDS[int(field)]]
            return f"record {index}: {_EXT_FIELDS[int(field)]} must be {expect} ({head})"
    return f"key, routing_key, headers and dedup_id have the wrong type: {text}"


# --- broker side ---------------------------------------------------------------------------


def stamp(buf: bytearray | memoryview, base_offset: int, timestamp_us: int) -> None:
    """Write the broker-owned fields of the batch at the start of ``buf`` and re-seal its header.

    Sets base offset, first and max timestamp, and recomputes the header CRC in place; the
    body and its CRC are untouched, so a batch that verified before still verifies.
    ``buf`` must be writable and hold at least the 64-byte header.
    """
    # Pack [0, 28) (batch_length as it was) before writing anything: pack_into zeroes its
    # target first, so a refused argument would otherwise leave a damaged header behind.
    try:
        if len(buf) < HEADER_SIZE:
            raise struct.error(f"{len(buf)} bytes")
        fields = _STAMPED.pack(base_offset, _U32.unpack_from(buf, 8)[0], timestamp_us, timestamp_us)
        buf[: _STAMPED.size] = fields
    except (struct.error, TypeError) as exc:
        raise InvalidArgument(
            "cannot stamp: base_offset and timestamp must fit in i64 and buf must be a writable"
            f" batch header ({exc})"
        ) from exc
    with memoryview(buf) as view:
        _U32.pack_into(buf, _HEADER_CRC_AT, crc32c(view[:_HEADER_CRC_AT]))


def peek_length(buf: bytes | bytearray | memoryview, pos: int = 0) -> int:
    """The ``batch_length`` field of the batch starting at ``pos``, unchecked (for scanning).

    Raises :class:`CorruptRecord` when fewer than 12 bytes are left (a torn tail).
    """
    if pos < 0 or len(buf) - pos < 12:
        raise CorruptRecord(f"truncated batch header at position {pos}")
    length: int = _U32.unpack_from(buf, pos + 8)[0]
    return length


def verify_for_append(batch: bytes | bytearray | memoryview,
                      verified: BatchView | None = None) -> BatchView:
    """The view a log appends ``batch`` by: ``verified`` when it is the caller's own
    :func:`verify` of these very bytes, else a fresh one; a batch that does not verify is an
    ``InvalidArgument`` (nothing stored)."""
    if verified is not None and verified.raw is batch:
        return verified
    try:
        return verify(batch)
    except CorruptRecord as exc:
        raise InvalidArgument(f"the batch does not verify, nothing stored: {exc.message}") from None


def verify(buf: bytes | bytearray | memoryview, *, check_body: bool = True) -> BatchView:
    """Check that ``buf`` is exactly one valid batch and return a view over it.

    Checks the header CRC, the version, that ``batch_length == len(buf)``, the structure
    (record count >= 1, known flags, reserved 0, columns and bodies adding up to the length,
    priority summary matching its column, no negative times) and, if ``check_body``, the body
    CRC. Anything wrong raises :class:`CorruptRecord` saying what. The ext section is decoded
    only on demand (:meth:`BatchView.records`), which raises :class:`CorruptRecord` too.
    The view keeps a reference to ``buf`` (no copy).
    """
    size = len(buf)
    if size < HEADER_SIZE:
        raise CorruptRecord(
            f"truncated batch: {size} bytes, less than the {HEADER_SIZE}-byte header"
        )
    (
        base_offset,
        batch_length,
        first_ts,
        max_ts,
        version,
        header_crc,
        body_crc,
        attributes,
        count,
        producer_id,
        producer_epoch,
        base_sequence,
        min_priority,
        max_priority,
        ext_length,
        reserved,
    ) = HEADER.unpack_from(buf, 0)
    # Slices are never bound to names, and the view is released on the way out (also on
    # error, when a traceback would keep locals alive): a caller's bytearray stays resizable.
    with memoryview(buf) as view:
        if crc32c(view[:_HEADER_CRC_AT]) != header_crc:
            raise CorruptRecord("batch header checksum mismatch")
        if version != VERSION:
            raise CorruptRecord(
                f"unknown batch format version {version} (this build reads {VERSION})"
            )
        if batch_length != size:
            raise CorruptRecord(
                f"batch length mismatch: header says {batch_length} bytes, buffer has {size}"
            )
        if check_body and crc32c(view[_BODY_FROM:]) != body_crc:
            raise CorruptRecord("batch body checksum mismatch")
        if count < 1:
            raise CorruptRecord("batch has no records")
        if attributes & ~_KNOWN_FLAGS or reserved:
            raise CorruptRecord(
                f"unknown attribute bits {attributes:#x} or reserved byte {reserved}"
            )
        if attributes & HAS_EXT:
            if ext_length == 0:
                raise CorruptRecord("HAS_EXT set but the extension section is empty")
        elif ext_length or attributes & (HAS_KEY | HAS_HEADERS):
            raise CorruptRecord("extension data or flags without HAS_EXT")

        prio_at = HEADER_SIZE + 4 * count
        delay_at = prio_at + (count if attributes & HAS_PRIORITY else 0)
        ttl_at = delay_at + (8 * count if attributes & HAS_DELAY else 0)
        ext_at = ttl_at + (8 * count if attributes & HAS_TTL else 0)
        bodies_at = ext_at + ext_length
        if bodies_at > size:
            raise CorruptRecord(
                f"columns of {count} records ({bodies_at} bytes) exceed the batch ({size})"
            )
        total = sum(_u32s(view[HEADER_SIZE:prio_at]))
        if bodies_at + total != size:
            raise CorruptRecord(
                f"batch length mismatch: columns and bodies make {bodies_at + total} bytes, header says {size}"
            )
        if attributes & HAS_PRIORITY:
            prios = bytes(view[prio_at:delay_at])
            if (
                min(prios) != min_priority
                or max(prios) != max_priority
                or max_priority > MAX_PRIORITY
            ):
                raise CorruptRecord("priority column disagrees with the header's min/max priority")
        elif min_priority or max_priority:
            raise CorruptRecord("min/max priority set without a priority column")
        if attributes & HAS_DELAY and min(_i64s(view[delay_at:ttl_at])) < 0:
            raise CorruptRecord("negative deliver-at time")
        if attributes & HAS_TTL and min(_i64s(view[ttl_at:ext_at])) < 0:
            raise CorruptRecord("negative ttl")

    return BatchView(
        buf,
        base_offset,
        count,
        first_ts,
        max_ts,
        attributes,
        min_priority,
        max_priority,
        producer_id,
        producer_epoch,
        base_sequence,
        size,
        (prio_at, delay_at, ttl_at, ext_at, bodies_at),
    )


def decode_records(buf: bytes | bytearray | memoryview) -> list[Record]:
    """Verify ``buf`` (one batch) and decode its records; :class:`CorruptRecord` if bad."""
    return verify(buf).records()


def select(
    view: BatchView,
    indexes: Sequence[int],
    *,
    base_sequence: int | None = None,
) -> bytes:
    """A new (unstamped) batch of the records at ``indexes`` of ``view``, in that order.

    Keeps the producer id and epoch; ``base_sequence`` defaults to the original's. Raises
    :class:`InvalidArgument` for an empty selection or an index out of range.
    """
    if not indexes:
        raise InvalidArgument("select needs at least one record index")
    if min(indexes) < 0 or max(indexes) >= view.count:
        raise InvalidArgument(f"record index out of range for a batch of {view.count}")
    seq = view.base_sequence if base_sequence is None else base_sequence
    if view.is_plain:
        bodies = view.bodies()
        return encode_bodies(
            [bodies[i] for i in indexes],
            producer_id=view.producer_id,
            producer_epoch=view.producer_epoch,
            base_sequence=seq,
        )
    records = view.records()
    return encode_batch(
        [records[i] for i in indexes],
        producer_id=view.producer_id,
        producer_epoch=view.producer_epoch,
        base_sequence=seq,
    )
