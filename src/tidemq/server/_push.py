"""Server-side subscriptions: credit accounting and turning deliveries into ``Deliver`` frames.

Flow control (SPEC §3): a subscription starts with ``prefetch`` credit; each pushed delivery
uses one; the client's ``Credit`` frames add more as its acks free room. The broker enforces
``prefetch`` as well (unacked leases per member), so neither a lying client nor a lost credit
frame can make a member hold more than ``prefetch`` unacked messages.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Protocol

from .. import protocol as P
from ..broker import DELAY_PARTITION, Delivery
from ..broker._ids import make_ids  # not on the public broker surface (yet)
from ..errors import InvalidArgument
from ..protocol import WIRE_DELAY_PARTITION

__all__ = ["Peer", "Subscription", "deliver_frame", "MAX_ACK_IDS"]

#: Ranges expand to ids for the broker; bound that so a forged range cannot exhaust memory.
MAX_ACK_IDS = 1_000_000

_COLUMNS = attrgetter("id", "partition", "offset", "timestamp_us", "delivery_count", "priority",
                      "body", "key", "routing_key", "headers")


def deliver_frame(sub_id: int, deliveries: list[Delivery]) -> P.Deliver:
    """One ``Deliver`` frame for ``deliveries`` (columns transposed in C, no per-field loop)."""
    ids, parts, offs, times, counts, prios, bodies, keys, rks, hdrs = zip(
        *map(_COLUMNS, deliveries), strict=True)
    if DELAY_PARTITION in parts:
        parts = tuple(WIRE_DELAY_PARTITION if p == DELAY_PARTITION else p for p in parts)
    n = len(ids)
    return P.Deliver(
        subscription_id=sub_id, ids=list(ids), partitions=list(parts), offsets=list(offs),
        timestamps_us=list(times), delivery_counts=list(counts), priorities=list(prios),
        bodies=list(bodies),
        keys=list(keys) if keys.count(None) != n else None,
        routing_keys=list(rks) if rks.count(None) != n else None,
        # The broker gives {} for "no headers"; the wire says None for the whole column.
        headers=[h or None for h in hdrs] if any(hdrs) else None,
    )


class Peer(Protocol):
    """The side of a connection a subscription needs: a way to send frames, and whether the
    connection takes more output now (False while its write buffer is above the high-water
    mark). ``Connection`` is one; the push pass reads ``writable`` before fetching."""

    writable: bool

    def send(self, frame: Any) -> None: ...


class Subscription:
    """One member of a group, opened by one connection (``conn``)."""

    __slots__ = ("conn", "sub_id", "member", "topic", "incarnation", "credit", "prefetch")

    def __init__(self, conn: Peer, sub_id: int, member: str, topic: str, incarnation: int,
                 prefetch: int) -> None:
        self.conn = conn
        self.sub_id = sub_id
        self.member = member
        self.topic = topic
        self.incarnation = incarnation
        self.prefetch = prefetch
        self.credit = prefetch  # the Subscribe's prefetch is the initial credit

    def push(self, deliveries: list[Delivery]) -> None:
        """Send ``deliveries`` (already leased to this member by ``broker.fetch``)."""
        self.credit -= len(deliveries)
        self.conn.send(deliver_frame(self.sub_id, deliveries))

    def ids_for_ranges(self, ranges: list[tuple[int, int, int]]) -> list[str]:
        """Message ids for ``(partition, first, last)`` ack ranges of this subscription's topic."""
        total = sum(last - first + 1 for _, first, last in ranges)
        if total > MAX_ACK_IDS:
            raise InvalidArgument(
                f"one Ack frame may cover at most {MAX_ACK_IDS} messages, got {total}; split it")
        out: list[str] = []
        for part, first, last in ranges:
            p = DELAY_PARTITION if part == WIRE_DELAY_PARTITION else part
            out += make_ids(self.topic, self.incarnation, p, first, last - first + 1)
        return out
