"""The network client's side of a subscription (used by ``_tcp.TcpTransport``).

Deliveries pushed by the server wait in a local queue until ``receive`` takes them. Each one is
remembered as *outstanding* — (partition, offset, local lease deadline) by id — until it is
acked, nacked or rejected, so that:

- acks travel as ``(partition, first, last)`` ranges: the acks of one loop iteration are merged
  into one ``Ack`` frame (plus one ``Credit`` frame giving the freed room back);
- an ack does not wait for a round trip while the lease is surely still ours (its local
  deadline, counted from when the delivery *arrived*, is later than the server's, so a margin
  below it is safe); past that margin the ack waits for the server's answer, so a stale lease
  raises ``StaleLease`` as the SPEC says.

A subscription outlives connections: after a reconnect the transport subscribes again under the
same member handle; deliveries of the old session are dropped (the server released their leases
when the old connection died, so they come again: at-least-once).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from ..broker import Delivery, GroupSettings
from ..protocol import WIRE_DELAY_PARTITION

__all__ = ["ClientSubscription", "ack_ranges"]

LEASE_MARGIN = 0.2  # fraction of ack_timeout (at least 1 s) treated as "maybe expired"


def ack_ranges(refs: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Merge ``(partition, offset)`` pairs into ``(partition, first, last)`` ranges."""
    refs.sort()
    out: list[tuple[int, int, int]] = []
    cur_p, first, last = -2, 0, -2
    for p, off in refs:
        if p == cur_p and off == last + 1:
            last = off
        elif p == cur_p and off == last:
            continue
        else:
            if cur_p != -2:
                out.append((cur_p, first, last))
            cur_p, first, last = p, off, off
    if cur_p != -2:
        out.append((cur_p, first, last))
    return out


class ClientSubscription:
    """State of one member handle. Lives on the transport's event loop."""

    def __init__(self, member: str, topic: str, group: str, settings: GroupSettings | None,
                 prefetch: int) -> None:
        self.member = member
        self.topic = topic
        self.group = group
        self.settings = settings  # as the caller gave them (None: the group's)
        self.prefetch = prefetch
        self.sub_id: int | None = None  # the server's id in the current session
        self.ack_timeout = 30.0
        self.queue: deque[Delivery] = deque()
        self.outstanding: dict[str, tuple[int, int, float]] = {}
        self.pending_acks: list[tuple[int, int]] = []  # (wire partition, offset)
        self.pending_credit = 0
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def opened(self, sub_id: int, group_settings: dict[str, Any]) -> None:
        """A (re)subscribe succeeded: a fresh session with full prefetch credit."""
        self.sub_id = sub_id
        timeout = group_settings.get("ack_timeout")
        if isinstance(timeout, int | float) and timeout > 0:
            self.ack_timeout = float(timeout)
        self.queue.clear()
        self.outstanding.clear()
        self.pending_acks.clear()
        self.pending_credit = 0

    def session_lost(self) -> None:
        self.sub_id = None
        self.queue.clear()
        self.outstanding.clear()
        self.pending_acks.clear()
        self.pending_credit = 0

    def deliver(self, frame: Any) -> None:
        """Queue a ``Deliver`` frame's messages."""
        deadline = time.monotonic() + self.ack_timeout * (1 - LEASE_MARGIN) - 0.5
        topic = self.topic
        outstanding = self.outstanding
        append = self.queue.append
        cols = (frame.ids, frame.partitions, frame.offsets, frame.timestamps_us, frame.bodies)
        plain = frame.keys is None and frame.routing_keys is None and frame.headers is None
        # A message that waited in the delay store keeps its delay-store id ("t@1:d:7") after it
        # is released into a partition; acks must name that id, so its ack ref is (delay
        # partition, sequence from the id). Topic names never contain ':' (SPEC §1).
        delayed = ":d:" in "".join(frame.ids)
        if plain and not delayed and WIRE_DELAY_PARTITION not in frame.partitions:
            # Plain messages (the common case): no per-message optional fields to unpack.
            for mid, p, off, ts, body, pr, cnt in zip(*cols, frame.priorities,
                                                      frame.delivery_counts, strict=True):
                outstanding[mid] = (p, off, deadline)
                append(Delivery(mid, topic, p, off, ts, body, None, None, {}, pr, cnt))
        else:
            n = len(frame.ids)
            keys = frame.keys if frame.keys is not None else [None] * n
            rks = frame.routing_keys if frame.routing_keys is not None else [None] * n
            hdrs = frame.headers if frame.headers is not None else [None] * n
            for mid, p, off, ts, body, pr, cnt, key, rk, h in zip(
                *cols, frame.priorities, frame.delivery_counts, keys, rks, hdrs, strict=True,
            ):
                if delayed and ":d:" in mid:
                    outstanding[mid] = (WIRE_DELAY_PARTITION, int(mid.rsplit(":", 1)[1]), deadline)
                else:
                    outstanding[mid] = (p, off, deadline)  # acks name the wire partition
                append(Delivery(mid, topic, -1 if p == WIRE_DELAY_PARTITION else p, off, ts,
                                body, key, rk, h or {}, pr, cnt))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def take(self, max_messages: int) -> list[Delivery]:
        q = self.queue
        if len(q) <= max_messages:
            out = list(q)
            q.clear()
            return out
        return [q.popleft() for _ in range(max_messages)]

    def settle(self, ids: Sequence[str]) -> tuple[list[tuple[int, int]], list[str], bool]:
        """Forget ``ids`` as outstanding and count the freed credit.

        Returns (refs of this session's ids, ids unknown to this session, whether some lease may
        have expired locally — the caller then waits for the server's verdict).
        """
        refs: list[tuple[int, int]] = []
        unknown: list[str] = []
        maybe_stale = False
        now = time.monotonic()
        pop = self.outstanding.pop
        for mid in ids:
            ref = pop(mid, None)
            if ref is None:
                unknown.append(mid)
                continue
            refs.append((ref[0], ref[1]))
            if ref[2] < now:
                maybe_stale = True
        self.pending_credit += len(refs)
        return refs, unknown, maybe_stale

    def extended(self, ids: Sequence[str], seconds: float) -> None:
        deadline = time.monotonic() + seconds * (1 - LEASE_MARGIN) - 0.5
        for mid in ids:
            ref = self.outstanding.get(mid)
            if ref is not None:
                self.outstanding[mid] = (ref[0], ref[1], deadline)
