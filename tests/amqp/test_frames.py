"""The sans-IO framing and the property mapping, without a socket."""

from __future__ import annotations

import struct

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
    _decode_ack,
    _decode_publish,
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


def test_a_republished_x_death_becomes_the_history_and_hostile_ones_are_harmless() -> None:
    from datetime import UTC, datetime

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    x_death = [
        {"count": 2, "reason": "expired", "queue": "wait", "time": when, "exchange": "retry",
         "routing-keys": ["job"], "original-expiration": "20"},
        {"count": 1, "reason": "rejected", "queue": "work", "time": when, "exchange": "",
         "routing-keys": ["job"]},
        {"count": True, "reason": "expired", "queue": "bad"},  # not well formed: left out
        {"count": 3, "reason": 7, "queue": "bad", "exchange": ""},
        "junk",
    ]
    props = C.Basic.Properties(headers={"x-death": x_death, "x-tidemq-origin-topic": "t",
                                        "keep": "1"}, expiration="40")
    headers, _, ttl_us = to_record(props)
    assert headers is not None and ttl_us == 40_000
    assert "x-tidemq-origin-topic" not in headers and headers["keep"] == "1"
    back = from_record(headers, 0, "job")
    assert back.expiration == "40"  # not a dead letter: its own expiration stays
    assert [(d["queue"], d["reason"], d["count"], d["exchange"], d.get("original-expiration"),
             d["time"]) for d in back.headers["x-death"]] == [
        ("wait", "expired", 2, "retry", "20", when), ("work", "rejected", 1, "", None, when)]
    # A dead letter the broker wrote: its expiration is dropped, as RabbitMQ does.
    dead = from_record({**headers, "x-tidemq-origin-topic": "retry"}, 0, "job")
    assert dead.expiration is None
    # A history no client could render (times past datetime's range, any publisher can set
    # the header) still delivers.
    odd = from_record({"x-tidemq-deaths": '[["t","g","expired",1,9007199254740991]]'}, 0)
    assert odd.headers["x-death"][0]["time"].year == 9999


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


_CAUGHT = (ValueError, struct.error, IndexError, UnicodeDecodeError, TypeError)  # → 502


def _pamqp(cls: type, payload: bytes) -> tuple[object, ...] | str:
    m = cls()
    try:
        m.unmarshal(payload[4:])
    except _CAUGHT:
        return "error"
    return tuple(getattr(m, a) for a in cls.__slots__)


def _ours(decode: object, cls: type, payload: bytes) -> tuple[object, ...] | str:
    try:
        m = decode(payload)  # type: ignore[operator]
    except _CAUGHT:
        return "error"
    assert type(m) is cls
    return tuple(getattr(m, a) for a in cls.__slots__)


_PUBLISH_ID = b"\x00\x3c\x00\x28"
_ACK_ID = b"\x00\x3c\x00\x50"


@given(st.one_of(
    st.binary(max_size=40),  # anything, mostly malformed
    st.builds(lambda t, e, r, bits, extra: t + bytes([len(e)]) + e + bytes([len(r)]) + r
              + bits + extra,
              st.binary(min_size=2, max_size=2), st.binary(max_size=20),
              st.binary(max_size=20), st.binary(max_size=1), st.binary(max_size=3)),
    st.builds(lambda e, r: b"\x00\x00" + bytes([len(e)]) + e.encode() + bytes([len(r)])
              + r.encode() + b"\x01", st.text(max_size=20), st.text(max_size=20)),
))
def test_publish_decoded_by_hand_as_pamqp_decodes_it(body: bytes) -> None:
    payload = _PUBLISH_ID + body
    assert _ours(_decode_publish, C.Basic.Publish, payload) \
        == _pamqp(C.Basic.Publish, payload)


@given(st.binary(max_size=12))
def test_ack_decoded_by_hand_as_pamqp_decodes_it(body: bytes) -> None:
    payload = _ACK_ID + body
    assert _ours(_decode_ack, C.Basic.Ack, payload) == _pamqp(C.Basic.Ack, payload)


def test_publish_and_ack_frames_come_out_of_the_reader_as_pamqp_objects() -> None:
    r = FrameReader(131072)
    r.feed(PROTOCOL_HEADER)
    assert r.next_frame() is True
    pub = C.Basic.Publish(exchange="orders", routing_key="order.created", mandatory=True)
    r.feed(frame.marshal(pub, 3) + frame.marshal(C.Basic.Ack(delivery_tag=7, multiple=True), 3))
    ch, got = r.next_frame()  # type: ignore[misc]
    assert ch == 3 and isinstance(got, C.Basic.Publish)
    assert (got.exchange, got.routing_key, got.mandatory, got.immediate) == \
        ("orders", "order.created", True, False)
    ch, ack = r.next_frame()  # type: ignore[misc]
    assert isinstance(ack, C.Basic.Ack) and (ack.delivery_tag, ack.multiple) == (7, True)
    r.feed(b"\x01\x00\x03\x00\x00\x00\x05" + _PUBLISH_ID + b"\x00\xce")  # cut after the ticket
    with pytest.raises(FrameError) as e:
        r.next_frame()
    assert e.value.code == 502
