"""Garbage, truncated, oversized and malformed input gives only ProtocolError / FrameTooLarge
(or NEED_DATA while a frame is incomplete); unencodable frames give InvalidArgument."""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq import errors
from tidemq import protocol as p

from .protocol_strategies import ANY_FRAME


def frame_bytes(frame_type: int, payload: bytes, request_id: int = 1, *,
                flags: int = 0, reserved: int = 0, length: int | None = None) -> bytes:
    total = 12 + len(payload) if length is None else length
    return struct.pack("<IBBHI", total, frame_type, flags, reserved, request_id) + payload


def drain(decoder: p.Decoder) -> list[p.Frame]:
    """Frames until NEED_DATA; bounded so a decoder bug cannot hang the test."""
    out: list[p.Frame] = []
    for _ in range(10_000):
        frame = decoder.next_frame()
        if frame is p.NEED_DATA:
            return out
        out.append(frame)
    raise AssertionError("decoder produced frames without consuming input")


def decode_or_error(data: bytes, chunk: int, max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE
                    ) -> tuple[list[p.Frame], errors.ProtocolError | None]:
    decoder = p.Decoder(max_frame_size)
    frames: list[p.Frame] = []
    try:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i:i + chunk])
            frames += drain(decoder)
    except errors.ProtocolError as exc:  # FrameTooLarge and UnsupportedVersion are subclasses
        # A failed decoder stays failed with the same error.
        with pytest.raises(errors.ProtocolError) as again:
            decoder.next_frame()
        assert again.value is exc
        with pytest.raises(errors.ProtocolError):
            decoder.feed(b"more")
        return frames, exc
    return frames, None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.integers(1, 50))
def test_garbage_gives_only_protocol_errors(data: bytes, chunk: int) -> None:
    decode_or_error(data, chunk, max_frame_size=p.MIN_MAX_FRAME_SIZE)


@settings(max_examples=300, deadline=None)
@given(frame_type=st.sampled_from(list(p.FrameType)), payload=st.binary(max_size=200),
       request_id=st.integers(0, 2**32 - 1))
def test_garbage_payload_behind_a_valid_header_gives_only_protocol_errors(
    frame_type: int, payload: bytes, request_id: int
) -> None:
    decode_or_error(frame_bytes(frame_type, payload, request_id), chunk=len(payload) + 12)


@settings(max_examples=200, deadline=None)
@given(frame_type=st.sampled_from(list(p.FrameType)),
       items=st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=5),
                                st.binary(max_size=5), st.none(), st.booleans(), st.floats(),
                                st.lists(st.integers(-5, 2**40), max_size=3),
                                st.dictionaries(st.text(max_size=3), st.integers(-5, 9), max_size=2)),
                      max_size=6))
def test_msgpack_payloads_of_wrong_shape_give_only_protocol_errors(
    frame_type: int, items: list[object]
) -> None:
    decode_or_error(frame_bytes(frame_type, msgspec.msgpack.encode(items)), chunk=1 << 20)


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(ANY_FRAME, min_size=1, max_size=4), data=st.data())
def test_mutated_valid_streams_give_frames_or_protocol_errors(
    frames: list[p.FrameBase], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(p.encode(f) for f in frames))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    decode_or_error(bytes(stream), chunk=data.draw(st.integers(1, 64)))


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(ANY_FRAME, min_size=1, max_size=4), data=st.data())
def test_truncated_streams_give_the_whole_frames_then_need_data(
    frames: list[p.FrameBase], data: st.DataObject
) -> None:
    encoded = [p.encode(f) for f in frames]  # type: ignore[arg-type]
    stream = b"".join(encoded)
    cut = data.draw(st.integers(0, len(stream) - 1))
    decoded, error = decode_or_error(stream[:cut], chunk=data.draw(st.integers(1, 64)))
    assert error is None
    whole = 0
    total = 0
    for e in encoded:
        total += len(e)
        if total <= cut:
            whole += 1
    assert decoded == frames[:whole]


def test_oversized_frame_is_rejected_from_its_length_alone() -> None:
    decoder = p.Decoder(max_frame_size=p.MIN_MAX_FRAME_SIZE)
    decoder.feed(struct.pack("<I", p.MIN_MAX_FRAME_SIZE + 1))
    with pytest.raises(errors.FrameTooLarge, match="maximum frame size"):
        decoder.next_frame()


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    limit = p.MIN_MAX_FRAME_SIZE
    overhead = len(p.encode(p.Publish(request_id=1, topic="t", batch=b"x"))) - 1
    frame = p.Publish(request_id=1, topic="t", batch=b"x" * (limit - overhead))
    data = p.encode(frame, max_frame_size=limit)
    assert len(data) == limit
    decoder = p.Decoder(limit)
    decoder.feed(data)
    assert decoder.next_frame() == frame
    decoder.max_frame_size = limit
    with pytest.raises(errors.FrameTooLarge):
        p.encode(p.Publish(request_id=1, topic="t", batch=b"x" * (limit - overhead + 1)),
                 max_frame_size=limit)


def test_max_frame_size_can_be_lowered_after_the_handshake() -> None:
    decoder = p.Decoder()
    decoder.max_frame_size = p.MIN_MAX_FRAME_SIZE
    decoder.feed(p.encode(p.Publish(request_id=1, topic="t", batch=b"x" * p.MIN_MAX_FRAME_SIZE)))
    with pytest.raises(errors.FrameTooLarge):
        decoder.next_frame()
    with pytest.raises(errors.InvalidArgument):
        decoder.max_frame_size = 100


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (frame_bytes(0xEE, b""), "unknown frame type 0xee"),
        (frame_bytes(p.FrameType.PING, b"\x90", flags=1), "must be 0"),
        (frame_bytes(p.FrameType.PING, b"\x90", reserved=2), "must be 0"),
        (struct.pack("<I", 11) + b"\0" * 8, "shorter than the 12-byte header"),
        (frame_bytes(p.FrameType.PING, b"\xc1"), "malformed Ping"),
        (frame_bytes(p.FrameType.CREDIT, b"\0" * 7), "Credit payload is 7 bytes"),
        (frame_bytes(p.FrameType.PUBLISH, struct.pack("<iH", 0, 1) + b"t"), "no record batch"),
        (frame_bytes(p.FrameType.PUBLISH, struct.pack("<iH", -2, 1) + b"tB"), "partition -2"),
        (frame_bytes(p.FrameType.PUBLISH, struct.pack("<iH", 0, 1) + b"\xffB"), "malformed Publish"),
        (frame_bytes(p.FrameType.ACK, struct.pack("<III", 1, 1, 0) + b"\0" * 19), "disagrees"),
        (frame_bytes(p.FrameType.ACK, struct.pack("<IIIIqq", 1, 1, 0, 0, 5, 4)), "first <= last"),
        (frame_bytes(p.FrameType.ACK, struct.pack("<IIIIqq", 1, 1, 0, 0, 4, 5) + b"\x90"),
         "disagrees"),
        (frame_bytes(p.FrameType.DELIVER, struct.pack("<IIII", 1, 2**32 - 1, 0, 0)), "shorter"),
        (frame_bytes(p.FrameType.DELIVER, struct.pack("<IIII", 1, 0, 0, 0)), "shorter"),
        (frame_bytes(p.FrameType.HELLO, msgspec.msgpack.encode([[1], "c"])), "malformed Hello"),
        (frame_bytes(p.FrameType.SET_PARTITIONS, msgspec.msgpack.encode(["t", -1])), "malformed"),
        (frame_bytes(p.FrameType.RESULT, b"\x91" * 5000 + b"\xc0"), "malformed Result"),
        (frame_bytes(p.FrameType.RESULT, b"\x91\xd4\x05\x00"), "extension type 5"),
    ],
)
def test_specific_malformations_say_what_is_wrong(data: bytes, match: str) -> None:
    decoder = p.Decoder()
    decoder.feed(data)
    with pytest.raises(errors.ProtocolError, match=match):
        decoder.next_frame()


def test_deliver_with_wrong_body_lengths_is_rejected() -> None:
    good = p.encode(p.Deliver(subscription_id=1, ids=["a"], partitions=[0], offsets=[0],
                              timestamps_us=[0], delivery_counts=[1], priorities=[0],
                              bodies=[b"abc"]))
    for data in (good[:-1], good + b"x"):
        fixed = len(data).to_bytes(4, "little") + data[4:]
        decoder = p.Decoder()
        decoder.feed(fixed)
        with pytest.raises(errors.ProtocolError, match="body lengths"):
            decoder.next_frame()


@pytest.mark.parametrize(
    "frame",
    [
        p.Credit(subscription_id=-1, n=1),
        p.Ping(request_id=2**32),
        p.Publish(request_id=1, topic="t", batch=b""),
        p.Publish(request_id=1, topic="t" * 70_000, batch=b"x"),
        p.Ack(subscription_id=1, ranges=[(0, 1, 2**64)]),
        p.Deliver(subscription_id=1, ids=[], partitions=[], offsets=[], timestamps_us=[],
                  delivery_counts=[], priorities=[], bodies=[]),
        p.Deliver(subscription_id=1, ids=["a"], partitions=[0, 1], offsets=[0], timestamps_us=[0],
                  delivery_counts=[1], priorities=[0], bodies=[b""]),
        p.Deliver(subscription_id=1, ids=["a"], partitions=[0], offsets=[0], timestamps_us=[0],
                  delivery_counts=[1], priorities=[0], bodies=[b""], keys=[]),
        p.Result(value=object()),
        p.SetPartitions(name="t", partitions=-1),
        p.Nack(subscription_id=1, ids=["a"], delay=-1.0),
        p.Hello(versions=[70_000], client_id="c", max_frame_size=1 << 20),
        p.CreateTopic(name=b"t"),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_unencodable_frames_raise_invalid_argument(frame: p.FrameBase) -> None:
    with pytest.raises(errors.InvalidArgument):
        p.encode(frame)  # type: ignore[arg-type]


def test_non_frames_are_rejected() -> None:
    with pytest.raises(errors.InvalidArgument, match="not a TideMQ frame"):
        p.encode(object())  # type: ignore[arg-type]
