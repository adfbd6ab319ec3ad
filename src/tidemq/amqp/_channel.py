"""A channel's state and the values it keeps: publishes being assembled, consumers, unacked
deliveries (used by the session and its mixins)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pamqp import commands as C

from ._model import Queue

if TYPE_CHECKING:
    from ._delivering import Delivering

__all__ = ["Channel", "Consumer", "Pending", "Unacked"]


class Pending:
    """A publish whose content is arriving."""

    __slots__ = ("method", "size", "props", "raw", "chunks", "got")

    def __init__(self, method: C.Basic.Publish) -> None:
        self.method = method
        self.size = -1
        self.props: C.Basic.Properties | None = None
        self.raw = b""
        self.chunks: list[bytes] = []
        self.got = 0


class Consumer:
    __slots__ = ("session", "channel", "tag", "queue", "no_ack", "exclusive", "standby",
                 "prefetch", "members", "unacked", "turn", "refill_at", "refill_timer",
                 "refill_now")

    def __init__(self, session: Delivering, channel: Channel, tag: str, queue: Queue,
                 no_ack: bool, prefetch: int, exclusive: bool = False) -> None:
        self.session = session
        self.channel = channel
        self.tag = tag
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive  # the queue's only consumer while it is there
        # Waiting (x-single-active-consumer): no members, nothing delivered, until the
        # queue's active consumer goes and it is the next (AmqpFront.consumer_removed).
        self.standby = False
        self.prefetch = prefetch  # 0: no limit
        self.members: list[tuple[str, str]] = []  # (member id, exchange name)
        self.unacked = 0
        self.turn = 0
        # Credit freed by acks is refilled once it reaches refill_at (a quarter of the
        # prefetch) or REFILL_WAIT after it was first held back (Delivering._pump).
        self.refill_at = prefetch // 4 if prefetch >= 8 else 1
        self.refill_timer = False
        self.refill_now = False


class Unacked:
    __slots__ = ("member", "message_id", "consumer")

    def __init__(self, member: str, message_id: str, consumer: Consumer | None) -> None:
        self.member = member
        self.message_id = message_id
        self.consumer = consumer


class Channel:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closing = False
        self.confirm = False
        self.publish_seq = 0
        self.confirmed_to = 0  # every publish tag up to this one is confirmed (or nacked)
        self.confirmed_above: set[int] = set()  # confirmed tags above confirmed_to
        self.pending: Pending | None = None
        self.next_tag = 1
        self.unacked: dict[int, Unacked] = {}
        self.consumers: dict[str, Consumer] = {}
        self.prefetch = 0  # per consumer, for consumers made after basic.qos
        self.global_prefetch = 0  # for the whole channel (basic.qos global)
        self.active = True  # channel.flow
        self.getters: dict[str, list[tuple[str, str]]] = {}  # queue -> members for basic.get
