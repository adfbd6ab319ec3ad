"""Server-side subscriptions: credit accounting and turning deliveries into ``Deliver`` frames.

Flow control (SPEC §3): a subscription starts with ``prefetch`` credit; each pushed delivery
uses one; the client's ``Credit`` frames add more as its acks free room. The broker enforces
``prefetch`` as well (unacked leases per member), so neither a lying client nor a lost credit
frame can make a member hold more than ``prefetch`` unacked messages.

Frames are budgeted in bytes: the deliveries of one push step are split into ``Deliver`` frames
that each stay within the session's maximum frame size (:func:`deliver_frames`), so a message of
any size up to ``max frame - DELIVER_OVERHEAD`` is delivered however many are ready at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from operator import attrgetter, is_not
from typing import Any, Final, Protocol

from .. import protocol as P
from ..broker import DELAY_PARTITION, Delivery
from ..broker._ids import make_ids  # not on the public broker surface (yet)
from ..protocol import WIRE_DELAY_PARTITION

__all__ = ["Peer", "Subscription", "deliver_frame", "deliver_frames", "delivery_bytes",
           "DELIVER_OVERHEAD"]

#: Bytes a ``Deliver`` frame needs beyond one message's body, at most: the frame header and
#: fixed fields, the columns, the id, and the broker's per-message limits on the key (4 KiB),
#: routing key (255 characters) and headers (64, 16 KiB) with their msgpack framing, plus the
#: headers the broker adds to a dead letter. A session limit of ``max_message_bytes +
#: DELIVER_OVERHEAD`` or more delivers every message of a topic (docs/server.md, "Limits").
DELIVER_OVERHEAD: Final = 32 * 1024

# Fixed part of a Deliver frame: header 12 + fields 16 + msgpack array headers of the id list
# and the extension section (5 + 1 + 3 * 5).
_FRAME_FIXED: Final = 12 + 16 + 5 + 1 + 15
# Per delivery: columns 8+8+4+4+4+1, and a msgpack str header for its id (<= 5 bytes).
_PER_DELIVERY: Final = 29 + 5

_id = attrgetter("id")
_partition = attrgetter("partition")
_offset = attrgetter("offset")
_timestamp = attrgetter("timestamp_us")
_count = attrgetter("delivery_count")
_priority = attrgetter("priority")
_body = attrgetter("body")
_key = attrgetter("key")
_rk = attrgetter("routing_key")
_headers = attrgetter("headers")
_is_set = partial(is_not, None)


def deliver_frame(sub_id: int, deliveries: list[Delivery]) -> P.Deliver:
    """One ``Deliver`` frame for ``deliveries`` (one C-level pass per column, no per-field
    loop)."""
    return _frame(sub_id, deliveries, list(map(_id, deliveries)),
                  list(map(_body, deliveries)), _plain(deliveries))


def _plain(deliveries: list[Delivery]) -> bool:
    """True if no delivery has a key, a routing key (even an empty one) or headers."""
    return not (any(map(_is_set, map(_key, deliveries)))
                or any(map(_is_set, map(_rk, deliveries)))
                or any(map(_headers, deliveries)))


def _frame(sub_id: int, deliveries: list[Delivery], ids: list[str], bodies: list[bytes],
           plain: bool) -> P.Deliver:
    parts = list(map(_partition, deliveries))
    if DELAY_PARTITION in parts:
        parts = [WIRE_DELAY_PARTITION if p == DELAY_PARTITION else p for p in parts]
    keys = rks = hdrs = None
    if not plain:
        n = len(ids)
        keys = list(map(_key, deliveries))
        rks = list(map(_rk, deliveries))
        hdrs = list(map(_headers, deliveries))
        keys = keys if keys.count(None) != n else None
        rks = rks if rks.count(None) != n else None
        # The broker gives {} for "no headers"; the wire says None for the whole column.
        hdrs = [h or None for h in hdrs] if any(hdrs) else None
    return P.Deliver(
        subscription_id=sub_id, ids=ids, partitions=parts,
        offsets=list(map(_offset, deliveries)),
        timestamps_us=list(map(_timestamp, deliveries)),
        delivery_counts=list(map(_count, deliveries)),
        priorities=list(map(_priority, deliveries)),
        bodies=bodies, keys=keys, routing_keys=rks, headers=hdrs,
    )


def _extras_bytes(d: Delivery) -> int:
    """An upper bound of the extension-section bytes of one delivery (UTF-8: <= 4 bytes per
    character; msgpack: <= 5 bytes of framing per item)."""
    n = 0
    if d.key is not None:
        n += len(d.key) + 5
    if d.routing_key is not None:
        n += 4 * len(d.routing_key) + 5
    if d.headers:
        n += 5 + sum(4 * (len(k) + len(v)) + 10 for k, v in d.headers.items())
    return n + 3


def deliver_frames(sub_id: int, deliveries: list[Delivery],
                   max_frame_size: int) -> tuple[list[P.Deliver], list[Delivery]]:
    """``deliveries`` as ``Deliver`` frames, in order, each at most ``max_frame_size`` bytes
    when encoded (sizes are bounded from above, never guessed low); and the deliveries that
    do not fit a frame even alone (none when ``max_frame_size`` is at least the topic's
    ``max_message_bytes + DELIVER_OVERHEAD``)."""
    budget = max_frame_size - _FRAME_FIXED
    plain = _plain(deliveries)
    n = len(deliveries)
    ids = list(map(_id, deliveries))
    bodies = list(map(_body, deliveries))
    total = sum(map(len, bodies)) + sum(map(len, ids)) + _PER_DELIVERY * n
    if plain and total <= budget:  # the common case: one frame, no loop
        return [_frame(sub_id, deliveries, ids, bodies, True)], []
    frames: list[P.Deliver] = []
    too_large: list[Delivery] = []
    batch: list[Delivery] = []
    used = 0
    for d in deliveries:
        size = _PER_DELIVERY + len(d.id) + len(d.body) + (0 if plain else _extras_bytes(d))
        if size > budget:
            too_large.append(d)
            continue
        if used + size > budget:
            frames.append(deliver_frame(sub_id, batch))
            batch, used = [], 0
        batch.append(d)
        used += size
    if batch:
        frames.append(deliver_frame(sub_id, batch))
    return frames, too_large


def delivery_bytes(deliveries: list[Delivery]) -> int:
    """About what ``deliveries`` cost to hold and send: their bodies plus a fixed overhead each
    (used to budget a push step in bytes)."""
    return sum(map(len, map(_body, deliveries))) + 64 * len(deliveries)


class Peer(Protocol):
    """The side of a connection a subscription needs: a way to send frames, the session's
    frame limit, and whether the connection takes more output now. ``Connection`` is one."""

    @property
    def max_frame_size(self) -> int: ...

    def send(self, frame: Any) -> None: ...

    def ready_for_push(self) -> bool:
        """True if the connection takes more output now; if not, the connection offers its
        members a push again (``want_push``) once its output has drained."""
        ...


class Subscription:
    """One member of a group, opened by one connection (``conn``)."""

    __slots__ = ("conn", "sub_id", "member", "topic", "group", "incarnation", "credit",
                 "prefetch", "size_hint")

    def __init__(self, conn: Peer, sub_id: int, member: str, topic: str, incarnation: int,
                 prefetch: int, group: str = "") -> None:
        self.conn = conn
        self.sub_id = sub_id
        self.member = member
        self.topic = topic
        self.group = group  # what its permission checks name (server/_authz.py)
        self.incarnation = incarnation
        self.prefetch = prefetch
        self.credit = prefetch  # the Subscribe's prefetch is the initial credit
        # Bytes per delivery seen lately (0: none yet): sizes the next fetch so a push step
        # fetches about ``push_bytes`` (see Server._push_member).
        self.size_hint = 0

    def push(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Send ``deliveries`` (already leased to this member by ``broker.fetch``), split into
        frames that fit the session's frame limit. Returns those too large for any frame of
        this session (not sent, no credit used: the caller gives them back)."""
        conn = self.conn
        frames, too_large = deliver_frames(self.sub_id, deliveries, conn.max_frame_size)
        self.credit -= len(deliveries) - len(too_large)
        for frame in frames:
            conn.send(frame)
        return too_large

    def ack_limit(self, max_ack_messages: int) -> int:
        """The most messages one settlement request of this subscription may name: ten times
        its prefetch (at least 1,000), never more than ``max_ack_messages``. A client holds at
        most ``prefetch`` leases, so a real request stays far below it."""
        return min(max_ack_messages, max(10 * self.prefetch, 1_000))

    def iter_ids(self, ranges: list[tuple[int, int, int]], step: int) -> Iterator[list[str]]:
        """Message ids for ``(partition, first, last)`` ack ranges of this subscription's topic,
        in lists of at most ``step`` ids (made lazily: a caller that stops early makes no more)."""
        out: list[str] = []
        for part, first, last in ranges:
            p = DELAY_PARTITION if part == WIRE_DELAY_PARTITION else part
            while first <= last:
                n = min(last - first + 1, step - len(out))
                out += make_ids(self.topic, self.incarnation, p, first, n)
                first += n
                if len(out) >= step:
                    yield out
                    out = []
        if out:
            yield out
