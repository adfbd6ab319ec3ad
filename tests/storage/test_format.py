"""The record-batch format: round trips, layout per docs/storage-format.md, corruption detection."""

from __future__ import annotations

import struct

import crc32c
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tidemq.errors import CorruptRecord, InvalidArgument
from tidemq.storage._format import (
    HAS_DELAY,
    HAS_EXT,
    HAS_HEADERS,
    HAS_KEY,
    HAS_PRIORITY,
    HAS_TTL,
    HEADER,
    HEADER_SIZE,
    VERSION,
    BatchView,
    Record,
    decode_records,
    encode_batch,
    encode_bodies,
    encode_stamped,
    peek_length,
    select,
    stamp,
    verify,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

I64 = st.integers(min_value=0, max_value=(1 << 63) - 1)
text = st.text(max_size=12)
records_st = st.builds(
    Record,
    body=st.binary(max_size=40),
    key=st.none() | st.binary(max_size=12),
    routing_key=st.none() | text,
    headers=st.none() | st.dictionaries(text, text, max_size=3),
    priority=st.integers(0, 9),
    deliver_at_us=st.sampled_from([0, 0]) | I64,
    ttl_us=st.sampled_from([0, 0]) | I64,
    dedup_id=st.none() | text,
)
producer_st = st.fixed_dictionaries(
    {
        "producer_id": st.integers(-1, (1 << 63) - 1),
        "producer_epoch": st.integers(0, (1 << 15) - 1),
        "base_sequence": st.integers(-1, (1 << 31) - 1),
    }
)

RICH = [
    Record(
        b"first",
        key=b"k1",
        routing_key="orders.eu",
        headers={"a": "1", "ü": "ß"},
        priority=7,
        deliver_at_us=1_700_000_000_000_000,
        ttl_us=5_000_000,
        dedup_id="d-1",
    ),
    Record(b""),
    Record(b"third", routing_key="orders.us", priority=2),
]


def _fields(buf: bytes | bytearray) -> dict[str, int]:
    """The header decoded at the offsets the doc gives, independently of the module."""
    u = struct.unpack_from
    return {
        "base_offset": u("<q", buf, 0)[0],
        "batch_length": u("<I", buf, 8)[0],
        "first_ts": u("<q", buf, 12)[0],
        "max_ts": u("<q", buf, 20)[0],
        "version": buf[28],
        "header_crc": u("<I", buf, 29)[0],
        "body_crc": u("<I", buf, 33)[0],
        "attributes": u("<H", buf, 37)[0],
        "count": u("<I", buf, 39)[0],
        "producer_id": u("<q", buf, 43)[0],
        "producer_epoch": u("<h", buf, 51)[0],
        "base_sequence": u("<i", buf, 53)[0],
        "min_priority": buf[57],
        "max_priority": buf[58],
        "ext_length": u("<I", buf, 59)[0],
        "reserved": buf[63],
    }


# --- layout --------------------------------------------------------------------------------


def test_header_struct_is_64_bytes_as_documented() -> None:
    assert HEADER.size == HEADER_SIZE == 64
    assert VERSION == 1


def test_plain_batch_layout_matches_the_doc() -> None:
    bodies = [b"hello", b"", b"world!"]
    buf = encode_bodies(bodies, producer_id=42, producer_epoch=3, base_sequence=10)
    f = _fields(buf)
    assert f["batch_length"] == len(buf) == 64 + 4 * 3 + 11
    assert f["version"] == 1
    assert f["attributes"] == 0 and f["ext_length"] == 0 and f["reserved"] == 0
    assert (f["min_priority"], f["max_priority"]) == (0, 0)
    assert (f["count"], f["producer_id"], f["producer_epoch"], f["base_sequence"]) == (3, 42, 3, 10)
    assert (f["base_offset"], f["first_ts"], f["max_ts"]) == (0, 0, 0)
    assert f["header_crc"] == crc32c.crc32c(buf[:29])
    assert f["body_crc"] == crc32c.crc32c(buf[37:])
    # No per-record columns but lengths: lengths then bodies.
    assert struct.unpack_from("<3I", buf, 64) == (5, 0, 6)
    assert buf[76:] == b"helloworld!"


def test_rich_batch_columns_in_documented_order() -> None:
    buf = encode_batch(RICH)
    f = _fields(buf)
    flags = HAS_PRIORITY | HAS_DELAY | HAS_TTL | HAS_EXT | HAS_HEADERS | HAS_KEY
    assert f["attributes"] == flags
    assert (f["min_priority"], f["max_priority"]) == (0, 7)
    at = 64
    assert struct.unpack_from("<3I", buf, at) == (5, 0, 5)
    at += 12
    assert buf[at : at + 3] == bytes([7, 0, 2])
    at += 3
    assert struct.unpack_from("<3q", buf, at) == (1_700_000_000_000_000, 0, 0)
    at += 24
    assert struct.unpack_from("<3q", buf, at) == (5_000_000, 0, 0)
    at += 24
    import msgspec

    ext = msgspec.msgpack.decode(buf[at : at + f["ext_length"]])
    assert ext == [
        [b"k1", "orders.eu", {"a": "1", "ü": "ß"}, "d-1"],
        [None, None, None, None],
        [None, "orders.us", None, None],
    ]
    assert buf[at + f["ext_length"] :] == b"firstthird"


def test_only_needed_columns_are_written() -> None:
    only_ttl = encode_batch([Record(b"a", ttl_us=5), Record(b"b")])
    assert _fields(only_ttl)["attributes"] == HAS_TTL
    assert len(only_ttl) == 64 + 8 + 16 + 2
    only_rk = encode_batch([Record(b"a", routing_key="x")])
    assert _fields(only_rk)["attributes"] == HAS_EXT  # no key, no headers
    empty_headers = encode_batch([Record(b"a", headers={})])
    assert _fields(empty_headers)["attributes"] == HAS_EXT | HAS_HEADERS
    assert verify(empty_headers).records()[0].headers == {}


def test_plain_records_encode_exactly_like_bodies() -> None:
    bodies = [b"x" * i for i in range(5)]
    assert encode_batch([Record(b) for b in bodies]) == encode_bodies(bodies)
    view = verify(encode_bodies(bodies))
    assert view.is_plain and view.attributes == 0


# --- round trips ---------------------------------------------------------------------------


@FAST
@given(st.lists(records_st, min_size=1, max_size=8), producer_st)
def test_round_trip_arbitrary_records(records: list[Record], producer: dict[str, int]) -> None:
    buf = encode_batch(records, **producer)
    view = verify(buf)
    assert view.records() == records
    assert decode_records(buf) == records
    assert [view.record(i) for i in range(len(records))] == records
    assert view.bodies() == [r.body for r in records]
    assert list(view.lengths()) == [len(r.body) for r in records]
    assert list(view.priorities()) == [r.priority for r in records]
    assert list(view.deliver_ats()) == [r.deliver_at_us for r in records]
    assert list(view.ttls()) == [r.ttl_us for r in records]
    assert view.producer_id == producer["producer_id"]
    assert view.producer_epoch == producer["producer_epoch"]
    assert view.base_sequence == producer["base_sequence"]
    assert view.count == len(records) and view.size == len(buf) and view.raw is buf
    assert view.min_priority == (min(r.priority for r in records) if view.max_priority else 0)
    assert view.max_priority == max(r.priority for r in records)
    assert view.is_plain == (buf == encode_bodies([r.body for r in records], **producer))
    assert view.has_key == any(r.key is not None for r in records)


@settings(max_examples=300, deadline=None)
@given(records_st)
@example(Record(b"x", priority=4, deliver_at_us=(1 << 63) - 1, ttl_us=5))
@example(Record(b"", key=b"k", routing_key="r", headers={}, dedup_id="d"))
def test_round_trip_one_record(rec: Record) -> None:
    # A one-record batch (every per-message publish) is decoded from its fields, not its
    # columns: the same record from a bytes buffer and from a view of one (file reads).
    buf = encode_batch([rec])
    for raw in (buf, memoryview(buf)):
        view = verify(raw)
        assert view.records() == [rec] == [view.record(0)]
        assert all(type(r.body) is bytes for r in view.records())


@FAST
@given(st.lists(st.binary(max_size=50), min_size=1, max_size=20), producer_st)
def test_round_trip_bodies(bodies: list[bytes], producer: dict[str, int]) -> None:
    buf = encode_bodies(bodies, **producer)
    for raw in (buf, bytearray(buf), memoryview(buf)):
        view = verify(raw)
        assert view.bodies() == bodies
        assert all(type(b) is bytes for b in view.bodies())
        assert view.records() == [Record(b) for b in bodies]
        assert view.is_plain and view.attributes == 0
        assert view.priorities() == bytes(len(bodies))
        assert list(view.deliver_ats()) == [0] * len(bodies) == list(view.ttls())


# --- stamp ---------------------------------------------------------------------------------


@FAST
@given(
    st.lists(records_st, min_size=1, max_size=4),
    st.integers(0, (1 << 62)),
    st.integers(0, (1 << 62)),
)
def test_stamp_keeps_the_batch_valid_and_the_body_untouched(
    records: list[Record], base_offset: int, ts: int
) -> None:
    original = encode_batch(records)
    buf = bytearray(original)
    stamp(buf, base_offset, ts)
    assert buf[33:] == original[33:]  # body CRC and everything it covers unchanged
    view = verify(buf)
    assert (view.base_offset, view.last_offset) == (base_offset, base_offset + len(records) - 1)
    assert view.first_timestamp_us == view.max_timestamp_us == ts
    assert view.records() == records
    # Stamping through a memoryview of a larger buffer works in place too.
    segment = bytearray(b"\xff" * 7) + original
    stamp(memoryview(segment)[7:], base_offset, ts)
    assert segment[7:] == buf


def test_stamp_needs_a_writable_header() -> None:
    with pytest.raises(InvalidArgument):
        stamp(bytearray(10), 1, 2)
    with pytest.raises(InvalidArgument):
        stamp(encode_bodies([b"x"]), 1, 2)  # type: ignore[arg-type]
    buf = bytearray(encode_bodies([b"x"]))
    for bad in ((1 << 63, 2), (1, -(1 << 63) - 1)):
        with pytest.raises(InvalidArgument):
            stamp(buf, *bad)
        assert buf == encode_bodies([b"x"])  # a refused stamp changes nothing


# --- corruption ----------------------------------------------------------------------------


def _must_be_corrupt(buf: bytes | bytearray) -> None:
    with pytest.raises(CorruptRecord):
        verify(buf).records()


@pytest.mark.parametrize("batch", [encode_bodies([b"ab", b"", b"c"]), encode_batch(RICH)])
def test_every_truncation_is_detected(batch: bytes) -> None:
    for end in range(len(batch)):
        _must_be_corrupt(batch[:end])
        _must_be_corrupt(batch[:end] + b"\x00" * 3)  # truncated then padded: still not a batch


@FAST
@given(st.lists(records_st, min_size=1, max_size=6), st.data())
def test_random_truncations_are_detected(records: list[Record], data: st.DataObject) -> None:
    batch = encode_batch(records)
    _must_be_corrupt(batch[: data.draw(st.integers(0, len(batch) - 1))])


@pytest.mark.parametrize(
    "batch",
    [encode_bodies([b"ab", b"", b"c"]), encode_batch(RICH[:2]), encode_batch([RICH[2]])],
)
def test_every_single_bit_flip_is_detected(batch: bytes) -> None:
    for bit in range(len(batch) * 8):
        flipped = bytearray(batch)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptRecord):
            verify(flipped)


@FAST
@given(st.lists(records_st, min_size=1, max_size=6), st.data())
def test_random_bit_flips_are_detected(records: list[Record], data: st.DataObject) -> None:
    batch = bytearray(encode_batch(records))
    bit = data.draw(st.integers(0, len(batch) * 8 - 1))
    batch[bit // 8] ^= 1 << (bit % 8)
    _must_be_corrupt(batch)


@FAST
@given(st.binary(max_size=300))
def test_garbage_raises_corrupt_record_only(garbage: bytes) -> None:
    _must_be_corrupt(garbage)
    with pytest.raises(CorruptRecord):
        verify(garbage, check_body=False).records()


def _forge(
    tail: bytes,
    *,
    attributes: int,
    count: int,
    ext_length: int = 0,
    min_priority: int = 0,
    max_priority: int = 0,
) -> bytes:
    """A batch whose checksums are right but whose content is whatever we say."""
    body = (
        struct.pack(
            "<HIqhiBBIB", attributes, count, -1, 0, -1, min_priority, max_priority, ext_length, 0
        )
        + tail
    )
    head = struct.pack("<qIqqB", 0, 37 + len(body), 0, 0, 1)
    return head + struct.pack("<II", crc32c.crc32c(head), crc32c.crc32c(body)) + body


@FAST
@given(st.integers(0, 255), st.integers(0, 5), st.integers(0, 40), st.binary(max_size=120))
def test_well_sealed_nonsense_raises_corrupt_record_only(
    attributes: int, count: int, ext_length: int, tail: bytes
) -> None:
    forged = _forge(tail, attributes=attributes, count=count, ext_length=ext_length)
    try:
        view = verify(forged)
        records = view.records()
    except CorruptRecord:
        return
    assert len(records) == count  # if it passes, it is self-consistent


@pytest.mark.parametrize(
    ("forged", "why"),
    [
        (_forge(b"", attributes=0, count=0), "no records"),
        (_forge(struct.pack("<I", 1) + b"x", attributes=64, count=1), "unknown attribute"),
        (_forge(struct.pack("<I", 5) + b"x", attributes=0, count=1), "length mismatch"),
        (_forge(struct.pack("<I", 1) + b"x", attributes=HAS_EXT, count=1), "empty"),
        (
            _forge(
                struct.pack("<I", 1) + b"\x05x",
                attributes=HAS_PRIORITY,
                count=1,
                min_priority=5,
                max_priority=6,
            ),
            "priority",
        ),
        (
            _forge(
                struct.pack("<I", 1) + b"\x0ax",
                attributes=HAS_PRIORITY,
                count=1,
                min_priority=10,
                max_priority=10,
            ),
            "priority",
        ),
        (_forge(struct.pack("<Iq", 1, -1) + b"x", attributes=HAS_DELAY, count=1), "negative"),
        (
            _forge(struct.pack("<I", 1) + b"\xc1x", attributes=HAS_EXT, count=1, ext_length=1),
            "extension",
        ),
        (
            _forge(
                struct.pack("<I", 1) + b"\x92\x94\xc0\xc0\xc0\xc0\x94\xc0\xc0\xc0\xc0x",
                attributes=HAS_EXT,
                count=1,
                ext_length=11,
            ),
            "entries",
        ),
        (
            _forge(
                struct.pack("<I", 1) + b"\x91\x94\xa1k\xc0\xc0\xc0x",
                attributes=HAS_EXT,
                count=1,
                ext_length=7,
            ),
            "extension",
        ),
    ],
)
def test_structural_errors_are_named(forged: bytes, why: str) -> None:
    with pytest.raises(CorruptRecord, match=why):
        verify(forged).records()


def test_checksum_and_version_messages() -> None:
    buf = bytearray(encode_bodies([b"abc"]))
    buf[-1] ^= 1
    with pytest.raises(CorruptRecord, match="body checksum"):
        verify(buf)
    verify(buf, check_body=False)  # the caller chose not to look at the body
    buf[-1] ^= 1
    buf[28] = 2
    buf[29:33] = struct.pack("<I", crc32c.crc32c(bytes(buf[:29])))
    with pytest.raises(CorruptRecord, match="version 2"):
        verify(buf)
    buf[0] ^= 1
    with pytest.raises(CorruptRecord, match="header checksum"):
        verify(buf)


def test_a_longer_buffer_is_not_a_batch_but_peek_length_finds_it() -> None:
    a, b = encode_bodies([b"one"]), encode_batch(RICH)
    segment = a + b
    with pytest.raises(CorruptRecord, match="length mismatch"):
        verify(segment)
    assert peek_length(segment) == len(a)
    assert peek_length(segment, len(a)) == len(b)
    assert verify(memoryview(segment)[len(a) :]).records() == RICH
    with pytest.raises(CorruptRecord, match="truncated"):
        peek_length(segment, len(segment) - 11)


def test_callers_bytearray_stays_resizable_after_verify() -> None:
    buf = bytearray(encode_batch(RICH))
    view = verify(buf)
    view.records(), view.lengths(), view.ttls(), view.bodies()
    buf += b"more"  # no buffer export left behind by a successful verify
    try:
        verify(buf)
    except CorruptRecord:
        del buf[-4:]  # ... nor by a failed one, even while its traceback is alive
    assert verify(buf).records() == RICH


# --- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([], "at least one"),
        ([Record(b"x", priority=10)], "priority"),
        ([Record(b"x", priority=-1)], "priority"),
        ([Record(b"x", deliver_at_us=-5)], "deliver_at_us"),
        ([Record(b"x", ttl_us=-1)], "ttl_us"),
        ([Record(b"x", ttl_us=1 << 63)], "ttl_us"),
        ([Record(b"x"), Record(b"y", key="str")], "record 1: key"),  # type: ignore[arg-type]
        ([Record(b"x", routing_key=b"b")], "record 0: routing_key"),  # type: ignore[arg-type]
        ([Record(b"x", headers={"a": 1})], "headers"),  # type: ignore[dict-item]
        ([Record(b"x", dedup_id=7)], "dedup_id"),  # type: ignore[arg-type]
        ([Record(b"x"), Record("body")], "record 1: body"),  # type: ignore[arg-type]
        ([Record(b"x", priority=1.5)], "integer"),  # type: ignore[arg-type]
        ([Record(b"x", routing_key="\ud800")], "cannot be encoded"),
        ([b"not a record"], "Record"),
    ],
)
def test_encode_batch_rejects_bad_records(records: list[Record], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        encode_batch(records)


@pytest.mark.parametrize(
    "producer",
    [
        {"producer_id": -2},
        {"producer_id": 1 << 63},
        {"producer_epoch": -1},
        {"producer_epoch": 1 << 15},
        {"base_sequence": 1 << 31},
    ],
)
def test_producer_fields_out_of_range(producer: dict[str, int]) -> None:
    with pytest.raises(InvalidArgument):
        encode_bodies([b"x"], **producer)
    with pytest.raises(InvalidArgument):
        encode_batch([Record(b"x", key=b"k")], **producer)


def test_producer_fields_must_be_integers() -> None:
    with pytest.raises(InvalidArgument):
        encode_bodies([b"x"], producer_id=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        encode_batch([Record(b"x")], base_sequence="1")  # type: ignore[arg-type]


def test_wide_buffers_are_not_taken_for_bytes() -> None:
    from array import array

    wide = memoryview(array("I", [1, 2]))  # len() 2, but 8 bytes
    with pytest.raises(InvalidArgument, match="bodies must be bytes"):
        encode_bodies([wide])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="bodies must be bytes"):
        encode_batch([Record(wide, priority=1)])  # type: ignore[arg-type]
    assert verify(encode_bodies([memoryview(b"abc")])).bodies() == [b"abc"]  # type: ignore[list-item]


def test_encode_bodies_rejects_empty_and_non_bytes() -> None:
    with pytest.raises(InvalidArgument, match="at least one"):
        encode_bodies([])
    with pytest.raises(InvalidArgument, match="record 1: body"):
        encode_bodies([b"ok", "text"])  # type: ignore[list-item]


# --- select --------------------------------------------------------------------------------


@FAST
@given(st.lists(records_st, min_size=1, max_size=6), st.data())
def test_select_rebuilds_a_subset(records: list[Record], data: st.DataObject) -> None:
    view = verify(encode_batch(records, producer_id=9, producer_epoch=1, base_sequence=4))
    indexes = data.draw(st.lists(st.integers(0, len(records) - 1), min_size=1, max_size=6))
    sub = verify(select(view, indexes))
    assert sub.records() == [records[i] for i in indexes]
    assert (sub.producer_id, sub.producer_epoch, sub.base_sequence) == (9, 1, 4)
    assert verify(select(view, indexes, base_sequence=8)).base_sequence == 8


def test_select_rejects_bad_indexes() -> None:
    view = verify(encode_bodies([b"a", b"b"]))
    for bad in ([], [2], [-1]):
        with pytest.raises(InvalidArgument):
            select(view, bad)
    assert verify(select(view, [1])).bodies() == [b"b"]


def test_record_index_out_of_range() -> None:
    view = verify(encode_batch(RICH))
    assert view.record(0) == RICH[0]
    with pytest.raises(InvalidArgument):
        view.record(3)


def test_view_repr_and_type() -> None:
    view = verify(encode_batch(RICH))
    assert isinstance(view, BatchView)
    assert "0..2" in repr(view)
    assert view.extensions()[1] == (None, None, None, None)


@FAST
@given(
    st.lists(records_st, min_size=1, max_size=5) | st.builds(lambda b: [Record(b)], st.binary())
    | st.builds(lambda r: [r], records_st),
    st.one_of(st.just({}), producer_st),
    I64,
    I64,
)
def test_encode_stamped_equals_encode_then_stamp(
    records: list[Record], producer: dict[str, int], base: int, ts: int
) -> None:
    # encode_stamped packs a single record by hand (the per-message publish path: plain, or
    # with a routing key, headers ...): it must give exactly the bytes of the general path
    # followed by stamp().
    expected = bytearray(encode_batch(records, **producer))
    stamp(expected, base, ts)
    got = encode_stamped(records, base, ts, **producer)
    assert got == bytes(expected)
    assert verify(got).base_offset == base


@settings(max_examples=300, deadline=None)
@given(records_st, I64, I64)
@example(Record(b"x", ttl_us=5), 1, 2)
@example(Record(b"x", deliver_at_us=9, priority=3), 1, 2)
@example(Record(b"", key=b"k", routing_key="r", headers={"a": "b"}, dedup_id="d"), 1, 2)
def test_encode_stamped_one_record_equals_the_general_path(rec: Record, base: int, ts: int) -> None:
    # One record, no producer fields: the fast path every publish of one message takes.
    expected = bytearray(encode_batch([rec]))
    stamp(expected, base, ts)
    assert encode_stamped([rec], base, ts) == bytes(expected)


@pytest.mark.parametrize(
    "record",
    [
        Record(b"x", priority=10),
        Record(b"x", priority=-1),
        Record(b"x", priority="1"),  # type: ignore[arg-type]
        Record(b"x", ttl_us=-1),
        Record(b"x", deliver_at_us=1 << 63),
        Record(b"x", ttl_us=1.5),  # type: ignore[arg-type]
        Record("text", routing_key="a"),  # type: ignore[arg-type]
        Record(b"x", routing_key=7),  # type: ignore[arg-type]
        Record(b"x", headers={"a": 1}),  # type: ignore[dict-item]
        Record(b"x", key="k"),  # type: ignore[arg-type]
    ],
)
def test_encode_stamped_one_record_refuses_what_encode_batch_refuses(record: Record) -> None:
    # The one-record fast path leaves anything the format does not take to the general path:
    # the same InvalidArgument, naming the same record and field.
    with pytest.raises(InvalidArgument) as general:
        encode_batch([record])
    with pytest.raises(InvalidArgument) as fast:
        encode_stamped([record], 5, 7)
    assert str(fast.value) == str(general.value)
