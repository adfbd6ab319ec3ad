"""Frames to bytes and bytes to frames, without I/O (h11 / wsproto style).

``encode(frame)`` / ``encode_buffers(frame)`` produce what to write; a :class:`Decoder` is fed
whatever the transport read and hands back whole frames. Neither touches a socket, a clock or an
event loop, so the server, the client and the tests drive them the same way.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, TypeAlias

import msgspec

from .. import errors
from . import _bulk
from ._frames import ALL_FRAME_TYPES, Ack, Credit, Deliver, Frame, FrameBase, Publish
from ._header import DEFAULT_MAX_FRAME_SIZE, HEADER, HEADER_SIZE, MAX_U32, MIN_MAX_FRAME_SIZE


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`Decoder.next_frame` when the buffered bytes hold no whole frame yet.
NEED_DATA: Final = _NeedData.NEED_DATA
NeedData: TypeAlias = Literal[_NeedData.NEED_DATA]

_Encode = Callable[[Any], list[bytes]]
_Decode = Callable[[int, memoryview], FrameBase]


def _reject_ext(code: int, data: memoryview) -> Any:
    raise ValueError(f"msgpack extension type {code} is not used by this protocol")


_ENCODER: Final = msgspec.msgpack.Encoder()


def _payload_field(f: msgspec.structs.FieldInfo) -> tuple[str, Any] | tuple[str, Any, Any]:
    if f.required:
        return (f.name, f.type)
    if f.default_factory is not msgspec.NODEFAULT:
        return (f.name, f.type, msgspec.field(default_factory=f.default_factory))
    return (f.name, f.type, f.default)


class _ControlCodec:
    """Encodes a control frame as a msgpack array of its fields minus ``request_id``."""

    __slots__ = ("cls", "names", "rid_index", "decoder")

    def __init__(self, cls: type[FrameBase]) -> None:
        fields = msgspec.structs.fields(cls)
        self.cls = cls
        self.names = tuple(f.name for f in fields if f.name != "request_id")
        self.rid_index = cls.__struct_fields__.index("request_id")
        # The payload type: the frame's fields (with their constraints) minus request_id, so
        # msgspec validates every field while decoding and extra trailing items are ignored.
        payload_type = msgspec.defstruct(
            f"{cls.__name__}Payload",
            [_payload_field(f) for f in fields if f.name != "request_id"],
            array_like=True,
            frozen=True,
            kw_only=True,
        )
        # The wire order is the declaration order, for the payload type as for the frame.
        assert payload_type.__struct_fields__ == self.names, cls
        self.decoder = msgspec.msgpack.Decoder(payload_type, ext_hook=_reject_ext)

    def encode(self, frame: FrameBase) -> list[bytes]:
        values = msgspec.structs.astuple(frame)
        i = self.rid_index
        payload = _ENCODER.encode(values[:i] + values[i + 1:])
        # msgspec checks types and ranges only when decoding. Check here too (about 0.3 us for
        # a typical control frame), so a bad field fails in the caller as InvalidArgument
        # instead of as a fatal ProtocolError that closes the peer's connection.
        try:
            self.decoder.decode(payload)
        except (msgspec.DecodeError, ValueError, RecursionError) as exc:
            raise errors.InvalidArgument(f"cannot encode {self.cls.__name__}: {exc}") from exc
        return [payload]

    def decode(self, request_id: int, view: memoryview) -> FrameBase:
        payload = self.decoder.decode(view)
        return self.cls(request_id=request_id, **msgspec.structs.asdict(payload))


_BULK: Final[dict[type[FrameBase], tuple[_Encode, _Decode]]] = {
    Publish: (_bulk.encode_publish, _bulk.decode_publish),
    Credit: (_bulk.encode_credit, _bulk.decode_credit),
    Ack: (_bulk.encode_ack, _bulk.decode_ack),
    Deliver: (_bulk.encode_deliver, _bulk.decode_deliver),
}


def _build_tables() -> tuple[dict[type[FrameBase], _Encode], dict[int, _Decode]]:
    encoders: dict[type[FrameBase], _Encode] = {}
    decoders: dict[int, _Decode] = {}
    for cls in ALL_FRAME_TYPES:
        assert cls.TYPE not in decoders, f"duplicate frame type {cls.TYPE!r}"
        if cls in _BULK:
            encoders[cls], decoders[cls.TYPE] = _BULK[cls]
        else:
            control = _ControlCodec(cls)
            encoders[cls], decoders[cls.TYPE] = control.encode, control.decode
    return encoders, decoders


_ENCODERS, _DECODERS = _build_tables()
_LENGTH: Final = struct.Struct("<I")  # the first header field alone

# What a broken payload can make the layers below raise; all become ProtocolError.
_DECODE_FAILURES: Final = (
    msgspec.DecodeError, msgspec.ValidationError, struct.error, UnicodeDecodeError,
    ValueError, TypeError, OverflowError, IndexError, KeyError, RecursionError,
)


def _check_limit(max_frame_size: int, what: str = "max_frame_size") -> int:
    if not MIN_MAX_FRAME_SIZE <= max_frame_size <= MAX_U32:
        raise errors.InvalidArgument(
            f"{what} {max_frame_size} is outside [{MIN_MAX_FRAME_SIZE}, {MAX_U32}]")
    return max_frame_size


def encode_buffers(frame: Frame, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> list[bytes]:
    """The frame as a list of buffers to write in order (for ``transport.writelines``).

    The first buffer starts with the frame header; bulk payloads (a Publish batch, Deliver
    bodies) follow as the caller's own objects, not copied. Raises ``FrameTooLarge`` when the
    frame would exceed ``max_frame_size``, ``InvalidArgument`` when a field cannot be encoded
    (wrong type, out of its integer range).
    """
    try:
        parts = _ENCODERS[type(frame)](frame)
        length = HEADER_SIZE + sum(map(len, parts))
        if length > max_frame_size:
            raise errors.FrameTooLarge(
                f"{type(frame).__name__} frame of {length} bytes exceeds the maximum frame size "
                f"{max_frame_size}; send smaller batches")
        parts[0] = HEADER.pack(length, frame.TYPE, 0, 0, frame.request_id) + parts[0]
    except errors.TideMQError:
        raise
    except KeyError:
        raise errors.InvalidArgument(f"{type(frame).__name__} is not a TideMQ frame") from None
    except (struct.error, msgspec.EncodeError, TypeError, ValueError, OverflowError,
            UnicodeEncodeError, AttributeError) as exc:
        raise errors.InvalidArgument(f"cannot encode {type(frame).__name__}: {exc}") from exc
    return parts


def encode(frame: Frame, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """The frame as one ``bytes`` object; see :func:`encode_buffers` for errors."""
    parts = encode_buffers(frame, max_frame_size=max_frame_size)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Decoder:
    """Turns a byte stream into frames. Not thread-safe: one decoder per connection direction.

    Feed it bytes as they arrive with :meth:`feed`; take frames with :meth:`next_frame` until it
    returns :data:`NEED_DATA`. A frame longer than ``max_frame_size`` raises ``FrameTooLarge``
    as soon as its 4-byte length has arrived, before its payload is buffered; any malformed
    frame raises ``ProtocolError``. After either error the stream cannot be resynchronised:
    the decoder keeps raising the same error and the connection should be closed.

    ``max_control_frame_size`` (default: no separate limit) bounds every frame but those of
    ``large_frame_types`` (default ``Publish`` and ``Deliver``, the message batches), checked
    from the 12-byte header before the payload is buffered: a receiver whose decoding cost
    grows with the item count of a frame (ack ranges, id lists, msgpack maps) caps that work
    without capping the size of message batches. (A server takes only ``Publish`` large.)
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, *,
                 max_control_frame_size: int | None = None,
                 large_frame_types: Iterable[type[FrameBase]] = (Publish, Deliver)) -> None:
        self._max = _check_limit(max_frame_size)
        self._max_control = MAX_U32 if max_control_frame_size is None else _check_limit(
            max_control_frame_size, "max_control_frame_size")
        self._large = frozenset(t.TYPE for t in large_frame_types)
        self._buf = bytearray()
        self._pos = 0  # start of the first undecoded byte in _buf
        self._error: errors.ProtocolError | None = None

    @property
    def max_frame_size(self) -> int:
        """The largest frame accepted; the server lowers it to the session's after the handshake."""
        return self._max

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self._max = _check_limit(value)

    @property
    def max_control_frame_size(self) -> int:
        """The largest frame accepted of any type but ``Publish`` and ``Deliver`` (the smaller
        of this and :attr:`max_frame_size` applies)."""
        return self._max_control

    @max_control_frame_size.setter
    def max_control_frame_size(self, value: int) -> None:
        self._max_control = _check_limit(value, "max_control_frame_size")

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (copied; the caller may reuse ``data``)."""
        if self._error is not None:
            raise self._error
        if self._pos:
            # Deleting a bytearray's prefix is O(1) in CPython; compact before growing.
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> Frame | NeedData:
        """The next whole frame, or ``NEED_DATA`` if more bytes must be fed first."""
        if self._error is not None:
            raise self._error
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < HEADER_SIZE:
            # Judge the length as soon as it is here, so an oversized frame fails early.
            if available >= 4:
                self._check_header(_LENGTH.unpack_from(buf, pos)[0], None, 0, 0)
            return NEED_DATA
        length, frame_type, flags, reserved, request_id = HEADER.unpack_from(buf, pos)
        decode = _DECODERS.get(frame_type)
        if length > self._max or length < HEADER_SIZE or decode is None or flags or reserved:
            self._check_header(length, frame_type, flags, reserved)
        if length > self._max_control and frame_type not in self._large:
            self._error = errors.FrameTooLarge(
                f"peer sent a {_type_name(frame_type)} frame of {length} bytes; this frame "
                f"type may have at most {self._max_control} bytes")
            raise self._error
        if available < length:
            return NEED_DATA
        view = memoryview(buf)[pos + HEADER_SIZE:pos + length]
        try:
            frame = decode(request_id, view)  # type: ignore[misc]
        except errors.ProtocolError as exc:
            self._error = exc
            raise
        except _DECODE_FAILURES as exc:
            self._error = errors.ProtocolError(
                f"malformed {_type_name(frame_type)} frame (request {request_id}): {exc}")
            raise self._error from exc
        finally:
            view.release()
        self._pos = pos + length
        return frame  # type: ignore[return-value]

    def frames(self) -> list[Frame]:
        """Every whole frame buffered now (possibly none), in order."""
        out: list[Frame] = []
        while (frame := self.next_frame()) is not NEED_DATA:
            out.append(frame)
        return out

    def _check_header(self, length: int, frame_type: int | None, flags: int, reserved: int) -> None:
        """Raise (and remember) the error of a bad header; return if it is fine so far."""
        exc: errors.ProtocolError | None = None
        if length > self._max:
            exc = errors.FrameTooLarge(
                f"peer sent a frame of {length} bytes; the maximum frame size is {self._max}")
        elif length < HEADER_SIZE:
            exc = errors.ProtocolError(f"frame length {length} is shorter than the 12-byte header")
        elif frame_type is not None and frame_type not in _DECODERS:
            exc = errors.ProtocolError(f"unknown frame type 0x{frame_type:02x}")
        elif flags or reserved:
            exc = errors.ProtocolError(
                f"frame flags 0x{flags:02x} / reserved 0x{reserved:04x} must be 0 in version 1")
        if exc is not None:
            self._error = exc
            raise exc


def _type_name(code: int) -> str:
    for cls in ALL_FRAME_TYPES:
        if code == cls.TYPE:
            return cls.__name__
    return f"0x{code:02x}"
