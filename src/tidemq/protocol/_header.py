"""The fixed frame header of the TideMQ wire protocol, and the frame type codes.

Every frame on a TideMQ connection, in every protocol version, starts with this 12-byte header
(all integers little-endian)::

    offset size field
    0      4    frame_length  u32  bytes of the whole frame, this header included (>= 12)
    4      1    frame_type    u8   which frame follows (FrameType below)
    5      1    flags         u8   reserved for flags a later version negotiates; 0 in version 1
    6      2    reserved      u16  0 in version 1
    8      4    request_id    u32  the request this frame is or answers; 0 = unsolicited
    12     ...  payload       frame_length - 12 bytes, laid out per frame type

The length comes first and counts the header, so a reader knows after 4 bytes whether a frame is
too large and can reject it before buffering it, and can skip the frame without understanding it.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

HEADER: Final = struct.Struct(
    "<"
    "I"  # frame_length: whole frame in bytes, header included
    "B"  # frame_type: a FrameType value
    "B"  # flags: must be 0 in version 1 (a receiver rejects other values)
    "H"  # reserved: must be 0 in version 1
    "I"  # request_id: echoed by the response; 0 for server pushes and connection-level errors
)
HEADER_SIZE: Final = HEADER.size  # 12

MAX_U32: Final = 0xFFFF_FFFF

#: The default and the floor of the maximum frame size. Every peer must accept frames of at
#: least MIN_MAX_FRAME_SIZE bytes, so the handshake itself always fits.
DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
MIN_MAX_FRAME_SIZE: Final = 64 * 1024


class FrameType(enum.IntEnum):
    """The frame type codes of version 1. A code, once assigned, never changes meaning."""

    # session: 0x01-0x0F
    HELLO = 0x01
    HELLO_OK = 0x02
    PING = 0x03
    PONG = 0x04
    ERROR = 0x05
    GO_AWAY = 0x06
    RESULT = 0x07
    AUTH_CHALLENGE = 0x08
    AUTH_RESPONSE = 0x09
    # topics and groups (admin, msgpack payloads): 0x10-0x1F
    CREATE_TOPIC = 0x10
    DELETE_TOPIC = 0x11
    LIST_TOPICS = 0x12
    DESCRIBE_TOPIC = 0x13
    SET_PARTITIONS = 0x14
    GROUP_LIST = 0x18
    GROUP_DESCRIBE = 0x19
    GROUP_RESET = 0x1A
    DLQ_LIST = 0x1C
    DLQ_REDRIVE = 0x1D
    CALL = 0x1F
    # publishing: 0x20-0x2F
    PUBLISH = 0x20
    PUBLISH_OK = 0x21
    # consuming: 0x30-0x3F
    SUBSCRIBE = 0x30
    SUBSCRIBE_OK = 0x31
    CREDIT = 0x32
    DELIVER = 0x33
    ACK = 0x34
    ACK_OK = 0x35
    NACK = 0x36
    EXTEND = 0x37
    REJECT = 0x38
    CLOSE_SUBSCRIPTION = 0x39
    SUBSCRIPTION_ENDED = 0x3A
