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

Ordered modes (SPEC §3): a nack of message N in ``ordered`` mode makes the server take back N
and every later unacked message of its partition (``key_ordered``: of its key) and deliver them
again in order. Messages of that partition (key) already pushed into the local queue are
dropped at the nack, and so are those that arrive until the server has answered it (they were
pushed before it took them back); their credit goes back to the server. So the consumer never
sees, or acks, a later message before the failed head comes again.

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
        self.mode = "shared"
        # Ordered modes: partition (ordered) or key (key_ordered) -> (partition, offset) of a
        # nacked head whose answer is pending; later messages of it are dropped meanwhile.
        self.holds: dict[Any, tuple[int, int]] = {}
        # Ordered modes: id -> (hold key, (partition, offset)) of messages handed out, unsettled.
        self.taken: dict[str, tuple[Any, tuple[int, int]]] = {}
        # Taken messages behind a nacked head: the server took them back, so their acks wait
        # for its verdict (StaleLease) instead of leaving as fire-and-forget ranges.
        self.released: set[str] = set()
        # Acks sent without waiting (see TcpTransport.flush): request ids still unanswered,
        # flush() waiters with the ids they wait for, and the first failure to report.
        self.acks_out: set[int] = set()
        self.ack_waiters: list[tuple[set[int], asyncio.Future[None]]] = []
        self.ack_error: BaseException | None = None

    def opened(self, sub_id: int, group_settings: dict[str, Any]) -> None:
        """A (re)subscribe succeeded: a fresh session with full prefetch credit."""
        self.sub_id = sub_id
        timeout = group_settings.get("ack_timeout")
        if isinstance(timeout, int | float) and timeout > 0:
            self.ack_timeout = float(timeout)
        mode = group_settings.get("mode")
        self.mode = mode if mode in ("ordered", "key_ordered") else "shared"
        self.holds.clear()
        self.taken.clear()
        self.released.clear()
        self.queue.clear()
        self.outstanding.clear()
        self.pending_acks.clear()
        self.pending_credit = 0

    def ack_answered(self, rid: int, error: BaseException | None) -> None:
        """The server answered the ack frame ``rid`` (``error``: what it refused)."""
        self.acks_out.discard(rid)
        if error is not None and self.ack_error is None:
            self.ack_error = error
        if self.ack_waiters:
            still = []
            for rids, fut in self.ack_waiters:
                rids.discard(rid)
                if rids:
                    still.append((rids, fut))
                elif not fut.done():
                    fut.set_result(None)
            self.ack_waiters = still

    def acks_lost(self, error: BaseException) -> None:
        """The connection ended with acks unanswered: they may not have been applied."""
        if self.acks_out and self.ack_error is None:
            self.ack_error = error
        self.acks_out.clear()
        for _rids, fut in self.ack_waiters:
            if not fut.done():
                fut.set_result(None)
        self.ack_waiters = []

    def session_lost(self) -> None:
        self.sub_id = None
        self.holds.clear()
        self.taken.clear()
        self.released.clear()
        self.queue.clear()
        self.outstanding.clear()
        self.pending_acks.clear()
        self.pending_credit = 0

    def deliver(self, frame: Any) -> None:
        """Queue a ``Deliver`` frame's messages."""
        deadline = time.monotonic() + self.ack_timeout * (1 - LEASE_MARGIN) - 0.5
        first_new = len(self.queue)
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
        if self.holds:
            self._drop_held(first_new)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _hold_key(self, d: Delivery) -> Any:
        return d.partition if self.mode == "ordered" else d.key

    def _drop_held(self, start: int) -> None:
        """Drop queued messages (from index ``start``) that are behind a held head."""
        holds = self.holds
        kept: list[Delivery] = []
        dropped = 0
        q = self.queue
        for i, d in enumerate(q):
            if i >= start:
                head = holds.get(self._hold_key(d))
                if head is not None and (d.partition, d.offset) > head:
                    self.outstanding.pop(d.id, None)
                    dropped += 1
                    continue
            kept.append(d)
        if dropped:
            q.clear()
            q.extend(kept)
            self.pending_credit += dropped

    def hold_back(self, ids: Sequence[str]) -> list[Any]:
        """Before a nack of ``ids`` in an ordered mode: hold their partitions (keys), drop
        what is queued behind them. Returns the hold keys, for :meth:`release`."""
        if self.mode == "shared":
            return []
        keys: list[Any] = []
        for mid in ids:
            hit = self.taken.get(mid)
            if hit is None:
                continue
            k, head = hit
            if k is None:
                continue  # key_ordered: a keyless message behaves as in shared mode
            if k not in self.holds or head < self.holds[k]:
                self.holds[k] = head
            keys.append(k)
        if keys:
            self._drop_held(0)
            holds = self.holds
            for mid, (k, pos) in self.taken.items():
                held = holds.get(k)
                if held is not None and pos > held:
                    self.released.add(mid)
        return keys

    def release(self, keys: list[Any]) -> None:
        """The server answered the nack: what it pushes from now on is in the new order."""
        for k in keys:
            self.holds.pop(k, None)

    def take(self, max_messages: int) -> list[Delivery]:
        q = self.queue
        if len(q) <= max_messages:
            out = list(q)
            q.clear()
        else:
            out = [q.popleft() for _ in range(max_messages)]
        if self.mode != "shared":
            hold_key = self._hold_key
            self.taken.update((d.id, (hold_key(d), (d.partition, d.offset))) for d in out)
        return out

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
        if self.taken:
            released = self.released
            for mid in ids:
                self.taken.pop(mid, None)
                if released and mid in released:
                    released.discard(mid)
                    maybe_stale = True
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
