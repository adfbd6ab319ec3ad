"""The sans-IO framing and the property mapping, without a socket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands as C
from pamqp import frame, header

from tidemq.amqp._frames import (
    PROTOCOL_HEADER,
    Body,
    FrameError,
    FrameReader,
    Header,
    encode_confirm,
    encode_content,
    encode_deliver,
)
from tidemq.amqp._props import from_record, raw_properties, to_record

PROPS = C.Basic.Properties(content_type="application/json", delivery_mode=2,
                           headers={"n": 1, "s": "x", "t": {"deep": True}}, priority=12,
                           expiration="1500", correlation_id="c", reply_to="r",
                           message_id="m")


def _stream() -> bytes:
    return (PROTOCOL_HEADER
            + frame.marshal(C.Basic.Publish(exchange="x", routing_key="a.b"), 1)
            + encode_content(1, PROPS, b"y" * 10_000, 4096)
            + b"\x08\x00\x00\x00\x00\x00\x00\xce")


def _drain(reader: FrameReader) -> list[object]:
    out: list[object] = []
    while True:
        got = reader.next_frame()
        if got is False:
            return out
        out.append(got)


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_reader_takes_any_split(step: int) -> None:
    data = _stream()
    reader = FrameReader(4096)
    frames: list[object] = []
    for i in range(0, len(data), step):
        reader.feed(data[i:i + step])
        frames += _drain(reader)
    assert frames[0] is True
    _, publish = frames[1]  # type: ignore[misc]
    assert isinstance(publish, C.Basic.Publish) and publish.routing_key == "a.b"
    _, head = frames[2]  # type: ignore[misc]
    assert isinstance(head, Header) and head.decoded.body_size == 10_000
    bodies = [f[1] for f in frames[3:-1]]  # type: ignore[index]
    assert b"".join(b.data for b in bodies) == b"y" * 10_000  # type: ignore[union-attr]
    assert all(isinstance(b, Body) for b in bodies)
    assert frames[-1] == (0, None)  # heartbeat


def test_reader_refuses_a_frame_over_frame_max_from_its_head() -> None:
    reader = FrameReader(4096)
    reader.feed(PROTOCOL_HEADER + b"\x01\x00\x01\x00\x00\x10\x00")  # 4096-byte payload
    assert reader.next_frame() is True
    with pytest.raises(FrameError) as err:
        reader.next_frame()
    assert err.value.code == 501


def test_reader_refuses_a_bad_protocol_header_early() -> None:
    reader = FrameReader(4096)
    reader.feed(b"AMQX")
    with pytest.raises(FrameError):
        reader.next_frame()


def test_properties_round_trip_unchanged() -> None:
    raw = bytes(PROPS.marshal())
    headers, priority, ttl_us = to_record(PROPS, raw)
    assert headers is not None and (priority, ttl_us) == (9, 1_500_000)
    assert headers["s"] == "x" and headers["n"] == "1"  # scalars copied for filters
    assert raw_properties(headers, priority) == raw  # delivered as published
    # A dead letter's extra headers join the table.
    back = from_record({**headers, "x-tidemq-reason": "r"}, priority)
    assert back.headers == {"n": 1, "s": "x", "t": {"deep": True}, "x-tidemq-reason": "r"}
    assert back.priority == 12 and back.reply_to == "r"
    # A record of a TideMQ producer: its headers are the table.
    plain = header.ContentHeader()
    plain.unmarshal(b"\x00\x3c\x00\x00" + bytes(8) + raw_properties({"k": "v"}, 3))
    assert plain.properties.headers == {"k": "v"} and plain.properties.priority == 3


@given(st.integers(0, 65535), st.integers(0, 2**64 - 1), st.booleans(), st.booleans())
def test_confirm_encoding_matches_pamqp(channel: int, tag: int, multiple: bool,
                                        ack: bool) -> None:
    method = C.Basic.Ack(delivery_tag=tag, multiple=multiple) if ack else \
        C.Basic.Nack(delivery_tag=tag, multiple=multiple, requeue=False)
    assert encode_confirm(channel, tag, multiple, ack) == frame.marshal(method, channel)


def test_deliver_encoding_matches_pamqp() -> None:
    mine = encode_deliver(3, b"ctag", 42, True, b"ex", b"a.b", bytes(PROPS.marshal()),
                          b"body", 131072)
    theirs = (frame.marshal(C.Basic.Deliver(consumer_tag="ctag", delivery_tag=42,
                                            redelivered=True, exchange="ex",
                                            routing_key="a.b"), 3)
              + encode_content(3, PROPS, b"body", 131072))
    assert mine == theirs
