"""The frames of TideMQ wire protocol version 1, as immutable values.

Every frame is a frozen, keyword-only :class:`msgspec.Struct` with a ``request_id`` (default 0)
and a ``TYPE`` class variable naming its :class:`FrameType`. Requests carry a request id the
sender chose; the response (a ``...Ok``, ``Result`` or ``Error`` frame) echoes it. Frames the
server sends on its own (``Deliver``, ``SubscriptionEnded``, ``GoAway``) carry request id 0.

Control frames travel as a msgpack array of their fields in declaration order, without
``request_id`` (it is in the header). The hot-path frames ``Publish``, ``Deliver``, ``Ack`` and
``Credit`` have binary layouts of their own (``_bulk.py``). ``docs/protocol.md`` lists them all.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from .. import errors
from ._header import FrameType

U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
I32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]


class FrameBase(msgspec.Struct, frozen=True, kw_only=True):
    """Fields every frame has. ``request_id`` is a u32; 0 means "not a request"."""

    TYPE: ClassVar[FrameType]
    request_id: U32 = 0


# --- session ------------------------------------------------------------------------------


class Hello(FrameBase, frozen=True, kw_only=True):
    """Client -> server, the first frame of a connection. Its layout is the same in every version.

    ``versions`` are the protocol versions the client speaks; ``max_frame_size`` the largest
    frame it accepts; ``heartbeat_ms`` the heartbeat interval it wants (0: none).
    ``auth_mechanism`` names how the client authenticates (``SCRAM-SHA-256``, ``TOKEN``,
    ``EXTERNAL``; None: it offers no credentials) and ``auth_data`` is the mechanism's first
    message (SCRAM's client-first-message, the token, EXTERNAL's optional authorization id).
    A mechanism that needs more round trips continues with ``AuthChallenge``/``AuthResponse``
    before ``HelloOk`` (docs/protocol.md §3.1, docs/security.md).
    """

    TYPE = FrameType.HELLO
    versions: list[U16]
    client_id: str
    client_name: str = ""
    max_frame_size: U32
    heartbeat_ms: U32 = 0
    auth_mechanism: str | None = None
    auth_data: bytes | None = None


class HelloOk(FrameBase, frozen=True, kw_only=True):
    """Server -> client: the handshake succeeded; these are the session's terms.

    ``max_frame_size`` is the session limit both sides enforce from now on (the smaller of the
    two peers' limits); ``heartbeat_ms`` the agreed interval (0: none). ``user`` is the name the
    session authenticated as ("" on a server without users); ``auth_data`` the mechanism's last
    message (SCRAM's server-final-message, which the client checks: it proves the server knew
    the password's keys).
    """

    TYPE = FrameType.HELLO_OK
    version: U16
    server_name: str
    max_frame_size: U32
    heartbeat_ms: U32
    user: str = ""
    auth_data: bytes | None = None


class AuthChallenge(FrameBase, frozen=True, kw_only=True):
    """Server -> client, during the handshake: the mechanism's next message (SCRAM's
    server-first-message). Echoes the Hello's request id; the client answers ``AuthResponse``.
    """

    TYPE = FrameType.AUTH_CHALLENGE
    data: bytes


class AuthResponse(FrameBase, frozen=True, kw_only=True):
    """Client -> server, during the handshake: the answer to an ``AuthChallenge`` (SCRAM's
    client-final-message), with the same request id. The server answers ``HelloOk`` or a fatal
    ``Error`` (``AuthenticationFailed``)."""

    TYPE = FrameType.AUTH_RESPONSE
    data: bytes


class Ping(FrameBase, frozen=True, kw_only=True):
    """Either direction: a heartbeat; the peer answers ``Pong`` with the same request id."""

    TYPE = FrameType.PING


class Pong(FrameBase, frozen=True, kw_only=True):
    """The answer to ``Ping``."""

    TYPE = FrameType.PONG


class Error(FrameBase, frozen=True, kw_only=True):
    """Either direction: request ``request_id`` failed (0: the connection as a whole).

    ``code`` is a code of the :mod:`tidemq.errors` catalogue. With ``fatal`` set the sender
    closes the connection after this frame.
    """

    TYPE = FrameType.ERROR
    code: U16
    message: str
    fatal: bool = False

    def to_exception(self) -> errors.TideMQError:
        """The catalogue exception this frame stands for (unknown codes: ``TideMQError``)."""
        return errors.for_code(self.code, self.message)

    @classmethod
    def from_exception(
        cls, exc: errors.TideMQError, request_id: int = 0, *, fatal: bool = False
    ) -> Error:
        """The frame that carries ``exc`` to the peer."""
        return cls(request_id=request_id, code=exc.code, message=exc.message, fatal=fatal)


class GoAway(FrameBase, frozen=True, kw_only=True):
    """Server -> client (request id 0): the server is shutting down.

    Requests already sent are still answered; new ones are not accepted. The client reconnects.
    """

    TYPE = FrameType.GO_AWAY
    code: U16 = 0
    message: str = ""


class Result(FrameBase, frozen=True, kw_only=True):
    """Server -> client: the generic success answer; ``value`` is any msgpack value (or None)."""

    TYPE = FrameType.RESULT
    value: Any = None


# --- topics, groups and dead letters (answered by Result or Error) -------------------------


class CreateTopic(FrameBase, frozen=True, kw_only=True):
    """Create topic ``name``; ``config`` holds topic settings (durability, retention ...)."""

    TYPE = FrameType.CREATE_TOPIC
    name: str
    partitions: U32 = 1
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class DeleteTopic(FrameBase, frozen=True, kw_only=True):
    """Delete topic ``name`` and its data."""

    TYPE = FrameType.DELETE_TOPIC
    name: str


class ListTopics(FrameBase, frozen=True, kw_only=True):
    """List the topics; the Result value is the server's list of topic descriptions."""

    TYPE = FrameType.LIST_TOPICS


class DescribeTopic(FrameBase, frozen=True, kw_only=True):
    """Describe topic ``name`` (partitions, offsets, config, groups)."""

    TYPE = FrameType.DESCRIBE_TOPIC
    name: str


class SetPartitions(FrameBase, frozen=True, kw_only=True):
    """Grow topic ``name`` to ``partitions`` partitions (never shrinks)."""

    TYPE = FrameType.SET_PARTITIONS
    name: str
    partitions: U32


class GroupList(FrameBase, frozen=True, kw_only=True):
    """List the consumer groups of ``topic``."""

    TYPE = FrameType.GROUP_LIST
    topic: str


class GroupDescribe(FrameBase, frozen=True, kw_only=True):
    """Describe group ``group`` of ``topic`` (settings, members, lag per partition)."""

    TYPE = FrameType.GROUP_DESCRIBE
    topic: str
    group: str


class GroupReset(FrameBase, frozen=True, kw_only=True):
    """Move group ``group`` to ``start``: "earliest", "latest", {partition: offset} or a time."""

    TYPE = FrameType.GROUP_RESET
    topic: str
    group: str
    start: Any


class DlqList(FrameBase, frozen=True, kw_only=True):
    """List up to ``limit`` dead letters of ``group`` on ``topic``."""

    TYPE = FrameType.DLQ_LIST
    topic: str
    group: str
    limit: U32 = 100


class DlqRedrive(FrameBase, frozen=True, kw_only=True):
    """Hand up to ``limit`` (None: all) dead letters matching ``filter`` back to ``group``."""

    TYPE = FrameType.DLQ_REDRIVE
    topic: str
    group: str
    limit: U32 | None = None
    filter: dict[str, Any] | None = None


class Call(FrameBase, frozen=True, kw_only=True):
    """A named admin method with keyword arguments, for calls without a frame of their own.

    Lets a server add admin calls (``update_group``, ``create_group`` ...) without a new
    protocol version; a server answers an unknown ``method`` with an ``Unsupported`` error.
    """

    TYPE = FrameType.CALL
    method: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)


# --- publishing -----------------------------------------------------------------------------


class Publish(FrameBase, frozen=True, kw_only=True):
    """Client -> server: append one record batch to ``topic``.

    ``batch`` is a record batch exactly as ``docs/storage-format.md`` lays it out (what
    ``tidemq.storage.encode_batch`` returns), carried verbatim so the server appends it without
    re-encoding. ``partition`` is -1 when the broker chooses. Answered by ``PublishOk``.
    Binary layout: ``_bulk.PUBLISH``.
    """

    TYPE = FrameType.PUBLISH
    topic: str
    partition: I32 = -1
    batch: bytes


class PublishOk(FrameBase, frozen=True, kw_only=True):
    """Server -> client: the batch is stored at the topic's durability level.

    Records got offsets ``base_offset .. last_offset`` of ``partition``; ``ids`` holds one
    message id per record, in batch order (a deduplicated record gets the first message's id).
    When the records got those offsets in order, one id each, the server sends ``id_prefix``
    instead of ``ids`` (left empty): the ids are ``id_prefix + str(offset)`` for each offset
    (``ok_ids``), so a batch of 1,000 costs neither side 1,000 strings on the wire.
    """

    TYPE = FrameType.PUBLISH_OK
    partition: I32
    base_offset: I64
    last_offset: I64
    ids: list[str] = msgspec.field(default_factory=list)
    id_prefix: str = ""


def ok_ids(ok: PublishOk) -> list[str]:
    """The message ids a ``PublishOk`` answers, in batch order (from ``ids`` or
    ``id_prefix``)."""
    if ok.ids or not ok.id_prefix:
        return ok.ids
    prefix = ok.id_prefix
    return [prefix + str(o) for o in range(ok.base_offset, ok.last_offset + 1)]


# --- consuming -------------------------------------------------------------------------------


class Subscribe(FrameBase, frozen=True, kw_only=True):
    """Client -> server: join ``group`` of ``topic``; answered by ``SubscribeOk``.

    ``settings`` are the group settings of SPEC §3 (mode, filter, start, ack_timeout,
    max_deliveries, backoff, dead_letter_topic, message_ttl, dead_letter_routing_key,
    max_priority), all optional. ``prefetch`` bounds the member's unacked messages and is its initial delivery
    credit.
    """

    TYPE = FrameType.SUBSCRIBE
    topic: str
    group: str
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    prefetch: U32 = 100


class SubscribeOk(FrameBase, frozen=True, kw_only=True):
    """Server -> client: the subscription is open; ``settings`` are the group's effective ones."""

    TYPE = FrameType.SUBSCRIBE_OK
    subscription_id: U32
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


class Credit(FrameBase, frozen=True, kw_only=True):
    """Client -> server: allow ``n`` more deliveries on the subscription. Not answered.

    Binary layout: ``_bulk.CREDIT``.
    """

    TYPE = FrameType.CREDIT
    subscription_id: U32
    n: U32


class Deliver(FrameBase, frozen=True, kw_only=True):
    """Server -> client (request id 0): deliveries for a subscription, column by column.

    Entry *i* of every list describes delivery *i*; all lists have the same length. The
    optional columns ``keys``, ``routing_keys`` and ``headers`` are None when no delivery has
    one. Binary layout: ``_bulk.DELIVER``. Use :meth:`deliveries` for one value per message.
    """

    TYPE = FrameType.DELIVER
    subscription_id: U32
    ids: list[str]
    partitions: list[int]
    offsets: list[int]
    timestamps_us: list[int]
    delivery_counts: list[int]
    priorities: list[int]
    bodies: list[bytes]
    keys: list[bytes | None] | None = None
    routing_keys: list[str | None] | None = None
    headers: list[dict[str, str] | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def deliveries(self) -> list[Delivery]:
        """The deliveries as one value each, in frame order."""
        n = len(self.ids)
        keys = self.keys if self.keys is not None else [None] * n
        rks = self.routing_keys if self.routing_keys is not None else [None] * n
        hdrs = self.headers if self.headers is not None else [None] * n
        return [
            Delivery(id=i, partition=p, offset=o, timestamp_us=t, delivery_count=d,
                     priority=pr, body=b, key=k, routing_key=rk, headers=h)
            for i, p, o, t, d, pr, b, k, rk, h in zip(
                self.ids, self.partitions, self.offsets, self.timestamps_us,
                self.delivery_counts, self.priorities, self.bodies, keys, rks, hdrs,
                strict=True,
            )
        ]

    @classmethod
    def from_deliveries(cls, subscription_id: int, deliveries: list[Delivery]) -> Deliver:
        """Pack per-message values into one frame (columns are None when unused)."""
        keys = [d.key for d in deliveries]
        rks = [d.routing_key for d in deliveries]
        hdrs = [d.headers for d in deliveries]
        return cls(
            subscription_id=subscription_id,
            ids=[d.id for d in deliveries],
            partitions=[d.partition for d in deliveries],
            offsets=[d.offset for d in deliveries],
            timestamps_us=[d.timestamp_us for d in deliveries],
            delivery_counts=[d.delivery_count for d in deliveries],
            priorities=[d.priority for d in deliveries],
            bodies=[d.body for d in deliveries],
            keys=keys if any(k is not None for k in keys) else None,
            routing_keys=rks if any(r is not None for r in rks) else None,
            headers=hdrs if any(h is not None for h in hdrs) else None,
        )


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One delivered message: a row of a ``Deliver`` frame (not a frame itself)."""

    id: str
    partition: int
    offset: int
    timestamp_us: int
    delivery_count: int
    priority: int = 0
    body: bytes
    key: bytes | None = None
    routing_key: str | None = None
    headers: dict[str, str] | None = None


class Ack(FrameBase, frozen=True, kw_only=True):
    """Client -> server: acknowledge deliveries of a subscription; answered by ``AckOk``.

    ``ranges`` are ``(partition, first_offset, last_offset)`` triples, both ends included
    (acks are mostly contiguous, so a range acks many messages in 20 bytes); ``ids`` are
    message ids acked one by one. Binary layout: ``_bulk.ACK``.
    """

    TYPE = FrameType.ACK
    subscription_id: U32
    ranges: list[tuple[int, int, int]] = msgspec.field(default_factory=list)
    ids: list[str] = msgspec.field(default_factory=list)


class AckOk(FrameBase, frozen=True, kw_only=True):
    """Server -> client: the answer to ``Ack``, ``Nack``, ``Extend`` and ``Reject``.

    ``settled`` counts the messages the request changed; ``failures`` lists the ids (or
    ``"partition:first-last"`` ranges) it could not apply, each with an error code and message
    (e.g. ``StaleLease``); the rest of the request was applied.
    """

    TYPE = FrameType.ACK_OK
    settled: U32 = 0
    failures: list[tuple[str, U16, str]] = msgspec.field(default_factory=list)


class Nack(FrameBase, frozen=True, kw_only=True):
    """Client -> server: make ``ids`` ready again after ``delay`` seconds (None: the backoff)."""

    TYPE = FrameType.NACK
    subscription_id: U32
    ids: list[str]
    delay: Seconds | None = None


class Extend(FrameBase, frozen=True, kw_only=True):
    """Client -> server: renew the leases on ``ids`` for ``seconds`` from now."""

    TYPE = FrameType.EXTEND
    subscription_id: U32
    ids: list[str]
    seconds: Seconds


class Reject(FrameBase, frozen=True, kw_only=True):
    """Client -> server: dead-letter ``ids`` with ``reason``."""

    TYPE = FrameType.REJECT
    subscription_id: U32
    ids: list[str]
    reason: str = ""


class CloseSubscription(FrameBase, frozen=True, kw_only=True):
    """Client -> server: end the subscription and release its leases; answered by ``Result``."""

    TYPE = FrameType.CLOSE_SUBSCRIPTION
    subscription_id: U32


class SubscriptionEnded(FrameBase, frozen=True, kw_only=True):
    """Server -> client (request id 0): the server ended the subscription (e.g. topic deleted)."""

    TYPE = FrameType.SUBSCRIPTION_ENDED
    subscription_id: U32
    code: U16
    message: str


Frame = (
    Hello | HelloOk | AuthChallenge | AuthResponse | Ping | Pong | Error | GoAway | Result
    | CreateTopic | DeleteTopic | ListTopics | DescribeTopic | SetPartitions
    | GroupList | GroupDescribe | GroupReset | DlqList | DlqRedrive | Call
    | Publish | PublishOk
    | Subscribe | SubscribeOk | Credit | Deliver | Ack | AckOk | Nack | Extend | Reject
    | CloseSubscription | SubscriptionEnded
)

ALL_FRAME_TYPES: tuple[type[FrameBase], ...] = (
    Hello, HelloOk, AuthChallenge, AuthResponse, Ping, Pong, Error, GoAway, Result,
    CreateTopic, DeleteTopic, ListTopics, DescribeTopic, SetPartitions,
    GroupList, GroupDescribe, GroupReset, DlqList, DlqRedrive, Call,
    Publish, PublishOk,
    Subscribe, SubscribeOk, Credit, Deliver, Ack, AckOk, Nack, Extend, Reject,
    CloseSubscription, SubscriptionEnded,
)
