"""``tidemq.protocol``: the sans-IO codec of the TideMQ wire protocol (``docs/protocol.md``).

Bytes in, frames out (:class:`Decoder`); frames in, bytes out (:func:`encode`,
:func:`encode_buffers`). No sockets, threads, clocks or asyncio: the server and the network
client drive it. Frames are frozen ``msgspec.Struct`` values; errors are the
:mod:`tidemq.errors` types ``ProtocolError``, ``FrameTooLarge``, ``UnsupportedVersion`` and
``InvalidArgument`` (an unencodable frame).
"""

from typing import Final

from ._codec import NEED_DATA, Decoder, NeedData, encode, encode_buffers
from ._frames import (
    ALL_FRAME_TYPES,
    Ack,
    AckOk,
    AuthChallenge,
    AuthResponse,
    Call,
    CloseSubscription,
    CreateTopic,
    Credit,
    DeleteTopic,
    Deliver,
    Delivery,
    DescribeTopic,
    DlqList,
    DlqRedrive,
    Error,
    Extend,
    Frame,
    FrameBase,
    GoAway,
    GroupDescribe,
    GroupList,
    GroupReset,
    Hello,
    HelloOk,
    ListTopics,
    Nack,
    Ping,
    Pong,
    Publish,
    PublishOk,
    Reject,
    Result,
    SetPartitions,
    Subscribe,
    SubscribeOk,
    SubscriptionEnded,
    ok_ids,
)
from ._handshake import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    accept_hello,
    negotiate_heartbeat,
    negotiate_version,
)
from ._header import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MIN_MAX_FRAME_SIZE,
    FrameType,
)

#: The wire's form of the broker's delay partition: messages released from a topic's delay store
#: have partition -1 (``tidemq.broker.DELAY_PARTITION``); the partition columns of ``Deliver``
#: and ``Ack`` ranges are u32, so they travel as 0xFFFFFFFF. The server and the network client
#: both translate with this one constant.
WIRE_DELAY_PARTITION: Final = 0xFFFF_FFFF

__all__ = [
    "NEED_DATA", "NeedData", "Decoder", "encode", "encode_buffers",
    "Frame", "FrameBase", "FrameType", "ALL_FRAME_TYPES",
    "Hello", "HelloOk", "AuthChallenge", "AuthResponse", "Ping", "Pong", "Error", "GoAway", "Result",
    "CreateTopic", "DeleteTopic", "ListTopics", "DescribeTopic", "SetPartitions",
    "GroupList", "GroupDescribe", "GroupReset", "DlqList", "DlqRedrive", "Call",
    "Publish", "PublishOk", "ok_ids",
    "Subscribe", "SubscribeOk", "Credit", "Deliver", "Delivery", "Ack", "AckOk",
    "Nack", "Extend", "Reject", "CloseSubscription", "SubscriptionEnded",
    "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "accept_hello", "negotiate_version",
    "negotiate_heartbeat",
    "DEFAULT_MAX_FRAME_SIZE", "MIN_MAX_FRAME_SIZE", "HEADER_SIZE", "WIRE_DELAY_PARTITION",
]
