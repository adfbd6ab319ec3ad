"""AMQP 0-9-1 framing, sans-IO: bytes in, frames out; frames in, bytes out.

A frame on the wire (AMQP 0-9-1 §4.2.3)::

    +------+---------+---------+-------------------+-----------+
    | type | channel | size    | payload           | frame-end |
    | u8   | u16     | u32     | ``size`` bytes    | u8 0xCE   |
    +------+---------+---------+-------------------+-----------+

The frame size is checked against the negotiated ``frame_max`` *before* the payload is buffered
(a peer cannot make us hold more than one frame of it), the frame-end octet is checked, and
only then is the payload decoded — by :mod:`pamqp` for method and content-header frames (its
method table covers the whole 0-9-1 spec), by hand for body frames (no copy beyond the slice)
and heartbeats, and for the two methods that come once per message, ``basic.publish`` and
``basic.ack`` (:func:`_decode_publish`, :func:`_decode_ack`: pamqp's objects, filled as its
``unmarshal`` fills them, without its per-field dispatch; tested equal to pamqp's on any
payload). Errors are :class:`FrameError` with RabbitMQ's reply codes (501 frame error, 502
syntax error, 505 unexpected frame); the session turns them into ``connection.close``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from pamqp import commands, frame, header
from pamqp.base import Frame as Method
from pamqp.exceptions import PAMQPException

__all__ = [
    "PROTOCOL_HEADER", "FRAME_METHOD", "FRAME_HEADER", "FRAME_BODY", "FRAME_HEARTBEAT",
    "FrameError", "FrameReader", "Body", "Header", "encode_method", "encode_content",
    "encode_deliver", "encode_content_raw", "encode_confirm", "HEARTBEAT",
]

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_END_BYTE: Final = b"\xce"
HEARTBEAT: Final = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# type u8, channel u16, payload size u32 (network order)
_FRAME_HEAD: Final = struct.Struct(">BHI")
_HEAD: Final = _FRAME_HEAD.size  # 7
_U32: Final = struct.Struct(">I")  # a method frame's class id and method id, together
# A content header frame's fixed part: class id u16 (60), weight u16 (0), body size u64
_CONTENT_HEAD: Final = struct.Struct(">BHIHHQ")
# basic.deliver: class 60, method 60, then consumer-tag shortstr, delivery-tag u64, redelivered
# bit (one octet), exchange shortstr, routing-key shortstr
_DELIVER_ID: Final = b"\x00\x3c\x00\x3c"


_U16: Final = struct.Struct(">H")
_I64: Final = struct.Struct(">q")  # pamqp decodes a longlong signed
_U8: Final = struct.Struct("B")
_PUBLISH: Final = commands.Basic.Publish.index  # 0x003C0028
_ACK: Final = commands.Basic.Ack.index  # 0x003C0050


def _decode_publish(payload: bytes) -> commands.Basic.Publish:
    """``basic.publish`` after its class and method ids: ticket u16, exchange and routing key
    shortstrs, then the mandatory and immediate bits — what pamqp's ``unmarshal`` makes of
    it, errors included (a short string is cut as pamqp cuts it; a missing field raises
    ``struct.error``; bad UTF-8 ``UnicodeDecodeError``), without its per-field dispatch."""
    m = commands.Basic.Publish.__new__(commands.Basic.Publish)
    m.ticket = _U16.unpack_from(payload, 4)[0]
    n = _U8.unpack_from(payload, 6)[0]
    m.exchange = payload[7:7 + n].decode("utf-8")
    i = 7 + n
    k = _U8.unpack_from(payload, i)[0]
    m.routing_key = payload[i + 1:i + 1 + k].decode("utf-8")
    bits = _U8.unpack_from(payload, i + 1 + k)[0]
    m.mandatory = bool(bits & 1)
    m.immediate = bool(bits & 2)
    return m


def _decode_ack(payload: bytes) -> commands.Basic.Ack:
    """``basic.ack`` after its ids: delivery tag (a longlong, signed as pamqp decodes it), then
    the multiple bit."""
    m = commands.Basic.Ack.__new__(commands.Basic.Ack)
    m.delivery_tag = _I64.unpack_from(payload, 4)[0]
    m.multiple = bool(_U8.unpack_from(payload, 12)[0] & 1)
    return m


class FrameError(Exception):
    """The peer broke the framing rules: close the connection with ``code`` (501, 502, 505)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class Body:
    """One content-body frame's payload."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Header:
    """A content header: decoded, and its property bytes as sent (flags and values), which
    are stored as they are and sent back as they are on delivery."""

    decoded: header.ContentHeader
    raw_properties: bytes


Decoded = Method | Header | Body | None  # None: a heartbeat


class FrameReader:
    """Feed bytes, take frames. ``frame_max`` (the negotiated size, header and end octet
    included, as the spec counts it) may be changed between frames (after Tune-Ok)."""

    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self._buf = bytearray()
        self.header_seen = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> tuple[int, Decoded] | bool:
        """``(channel, frame)``; False when more bytes are needed; True once the protocol
        header was read (it comes first, alone). Raises FrameError."""
        buf = self._buf
        if not self.header_seen:
            if len(buf) < 8:
                if PROTOCOL_HEADER[:len(buf)] != bytes(buf):
                    raise FrameError(501, "not an AMQP 0-9-1 protocol header")
                return False
            if bytes(buf[:8]) != PROTOCOL_HEADER:
                raise FrameError(501, "not an AMQP 0-9-1 protocol header")
            del buf[:8]
            self.header_seen = True
            return True
        if len(buf) < _HEAD:
            return False
        kind, channel, size = _FRAME_HEAD.unpack_from(buf)
        total = _HEAD + size + 1
        if total > self.frame_max:
            raise FrameError(501, f"frame of {total} bytes exceeds frame_max {self.frame_max}")
        if len(buf) < total:
            return False
        if buf[total - 1] != FRAME_END:
            raise FrameError(501, "frame does not end with 0xCE")
        payload = bytes(buf[_HEAD:total - 1])
        del buf[:total]
        if kind == FRAME_BODY:
            return channel, Body(payload)
        if kind == FRAME_HEARTBEAT:
            if channel != 0:
                raise FrameError(501, "heartbeat on a channel other than 0")
            return channel, None
        try:
            if kind == FRAME_METHOD:
                index = _U32.unpack_from(payload)[0]
                if index == _PUBLISH:
                    return channel, _decode_publish(payload)
                if index == _ACK:
                    return channel, _decode_ack(payload)
                method_cls = commands.INDEX_MAPPING.get(index)
                if method_cls is None:
                    raise FrameError(502, "SYNTAX_ERROR - unknown method "
                                          f"{payload[:2].hex()}/{payload[2:4].hex()}")
                method = method_cls()
                method.unmarshal(payload[4:])
                return channel, method
            if kind == FRAME_HEADER:
                h = header.ContentHeader()
                h.unmarshal(payload)
                return channel, Header(h, payload[12:])
        except (PAMQPException, ValueError, struct.error, IndexError, UnicodeDecodeError,
                TypeError) as exc:
            raise FrameError(502, f"SYNTAX_ERROR - malformed frame: {exc}") from None
        raise FrameError(501, f"unknown frame type {kind}")


def encode_method(channel: int, method: Method) -> bytes:
    return frame.marshal(method, channel)


def encode_content(channel: int, props: commands.Basic.Properties, body: bytes,
                   frame_max: int) -> bytes:
    """A content header frame and the body frames (each at most ``frame_max`` bytes)."""
    return encode_content_raw(channel, bytes(props.marshal()), body, frame_max)


def encode_content_raw(channel: int, raw_properties: bytes, body: bytes,
                       frame_max: int) -> bytes:
    """:func:`encode_content` with the properties already encoded (flags and values)."""
    out = [_CONTENT_HEAD.pack(FRAME_HEADER, channel, 12 + len(raw_properties), 60, 0,
                              len(body)),
           raw_properties, FRAME_END_BYTE]
    step = frame_max - _HEAD - 1
    pack = _FRAME_HEAD.pack
    for i in range(0, len(body), step):
        chunk = body[i:i + step]
        out.append(pack(FRAME_BODY, channel, len(chunk)))
        out.append(chunk)
        out.append(FRAME_END_BYTE)
    return b"".join(out)


_CONFIRM: Final = struct.Struct(">BHIHHQB")  # frame head, class id, method id, tag, bits


def encode_confirm(channel: int, delivery_tag: int, multiple: bool, ack: bool = True) -> bytes:
    """basic.ack (or basic.nack, requeue unset) from the server: a publisher confirm, encoded
    by hand (the per-message path)."""
    return _CONFIRM.pack(FRAME_METHOD, channel, 13, 60, 80 if ack else 120, delivery_tag,
                         1 if multiple else 0) + FRAME_END_BYTE


def encode_deliver(channel: int, consumer_tag: bytes, delivery_tag: int, redelivered: bool,
                   exchange: bytes, routing_key: bytes, raw_properties: bytes,
                   body: bytes, frame_max: int) -> bytes:
    """basic.deliver, its content header (``raw_properties``: flags and values as encoded)
    and body frames, encoded by hand: the per-message path (names are <= 255 bytes,
    checked where they come in)."""
    method = b"".join((_DELIVER_ID, bytes((len(consumer_tag),)), consumer_tag,
                       delivery_tag.to_bytes(8, "big"), b"\x01" if redelivered else b"\x00",
                       bytes((len(exchange),)), exchange, bytes((len(routing_key),)),
                       routing_key))
    return b"".join((_FRAME_HEAD.pack(FRAME_METHOD, channel, len(method)), method,
                     FRAME_END_BYTE,
                     encode_content_raw(channel, raw_properties, body, frame_max)))
