"""State of a consumer group and the mechanics every path shares: leases, progress, failure,
release, dead letters and the journal. :class:`GroupState` (``_group.py``) is the public face;
:class:`GroupDelivering` (``_delivering.py``) builds deliveries on top of this.

Not thread-safe; no clock is read (``now_us`` / ``mono_us`` are passed in).
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import count as _counter
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ..errors import UnknownMessage
from ._filters import compile_filter
from ._ids import make_ids
from ._partstate import Lease, Member, PartState
from ._ranges import runs_of
from ._types import GroupSettings

if TYPE_CHECKING:
    from ..storage import PartitionLog, Record

__all__ = ["DeadLetter", "GroupCore", "KEY_QUEUE_LIMIT"]

KEY_QUEUE_LIMIT: Final = 10_000  # key_ordered: messages parked behind busy keys, at most


class DeadLetter(NamedTuple):
    """A message this group gives up on; the broker writes it to the dead-letter topic."""

    record: Record
    partition: int
    offset: int
    delivery_count: int
    reason: str  # "max_deliveries" | "rejected" | "expired"


class _KeyState:
    """key_ordered: who holds a key, what of it is in flight, what waits behind it."""

    __slots__ = ("owner", "inflight", "queue", "hold_until")

    def __init__(self) -> None:
        self.owner: Member | None = None
        self.inflight: list[tuple[int, int]] = []  # (partition, offset), delivery order
        self.queue: deque[tuple[int, int]] = deque()
        self.hold_until = 0



class GroupCore:
    """Fields and shared mechanics of one group (see the module docstring)."""

    def __init__(
        self,
        topic: str,
        incarnation: int,
        name: str,
        settings: GroupSettings,
        logs: list[PartitionLog],
        *,
        floors: list[int],
        now_us: int,
    ) -> None:
        self.topic = topic
        self.incarnation = incarnation
        self.name = name
        self.settings = settings
        self.filter = compile_filter(settings.filter, group=name)
        self._mode = settings.mode
        self._journal: list[tuple[Any, ...]] = []
        self._tails: dict[tuple[str, int], list[int]] = {}  # see _log_runs
        self._dead: list[DeadLetter] = []
        self._members: dict[str, Member] = {}
        self._lease_heap: list[tuple[int, int, Lease]] = []
        self._retry_heap: list[tuple[int, int, int, int]] = []  # (ready mono, seq, part, offset)
        self._ready: list[deque[tuple[int, int]]] = [deque() for _ in range(10)]
        self._keys: dict[bytes, _KeyState] = {}
        self._waiting: dict[bytes, _KeyState] = {}  # keys with a non-empty queue, oldest first
        # Released delayed messages keep their delay-store id (x-tidemq-id): id -> (part, off)
        # while delivered and not done.
        self._aliases: dict[str, tuple[int, int]] = {}
        self._parked = 0  # key_ordered: messages in key queues
        self._seq = _counter()
        self._rr = 0
        self._now_us = now_us
        self._ack_timeout_us = int(settings.ack_timeout * 1_000_000)
        self._ttl_us = settings.ttl_us(0)  # message_ttl in µs; 0: messages' own TTL only
        # Priorities told apart (shared mode): lanes for 1..cap; none when cap is 0.
        self._prio_cap = 9 if settings.max_priority is None else settings.max_priority
        self._lanes_on = self._mode == "shared" and self._prio_cap > 0
        self._parts: list[PartState] = []
        self._prefixes: dict[str, PartState] = {}
        # expire_head's last look per partition: (head offset, due; -1 never)
        self._heads_seen: dict[int, tuple[int, int]] = {}
        for log, floor in zip(logs, floors, strict=True):
            self._add_part(log, floor)

    def _add_part(self, log: PartitionLog, floor: int) -> None:
        part = PartState(len(self._parts), log, floor)
        self._parts.append(part)
        self._prefixes[make_ids(self.topic, self.incarnation, part.index, 0, 1)[0][:-1]] = part

    def _member(self, member_id: str) -> Member:
        member = self._members.get(member_id)
        if member is None:
            raise UnknownMessage(f"member {member_id!r} is not subscribed to group {self.name!r}")
        return member

    def _rotation(self) -> list[PartState]:
        # Start each fetch at the next partition so partitions share the group fairly.
        parts = self._parts
        self._rr = (self._rr + 1) % len(parts) if parts else 0
        return parts[self._rr :] + parts[: self._rr]

    def _lease(self, member: Member, part: PartState, offsets: range | list[int], deadline: int) -> None:
        lease = Lease(member, part, offsets, deadline)
        part.inflight.update(dict.fromkeys(offsets, lease))
        heapq.heappush(self._lease_heap, (deadline, next(self._seq), lease))
        if isinstance(offsets, range):
            self._log_runs("d", part.index, [offsets.start, offsets.stop])
        else:
            self._log_runs("d", part.index, runs_of(sorted(offsets)))

    def _log_runs(self, kind: str, partition: int, runs: list[int]) -> None:
        # Coalesce with the last event of the same kind and partition when the new runs
        # continue it: in-order acks and deliveries then cost one journal event per drain,
        # not one per call. Sound because "a" and "d" events commute on restore (a done
        # offset's delivery count is dropped whatever the order); only "reset" orders them,
        # and it clears the tails.
        key = (kind, partition)
        tail = self._tails.get(key)
        if tail is not None and tail[-1] == runs[0]:
            tail[-1:] = runs[1:]
            return
        self._tails[key] = runs
        self._journal.append((kind, partition, runs))

    def _end(self, part: PartState, offs: list[int]) -> None:
        """Forget per-message state of offsets that are now done."""
        if part.prev:
            for off in offs:
                part.prev.pop(off, None)
        if part.prios:
            for off in offs:
                part.prios.pop(off, None)
        if part.keyof:
            for off in offs:
                key = part.keyof.pop(off, None)
                if key is not None:
                    self._key_done(key, part.index, off)
        if part.alias:
            for off in offs:
                alias = part.alias.pop(off, None)
                if alias is not None:
                    self._aliases.pop(alias, None)

    def _key_done(self, key: bytes, p: int, off: int) -> None:
        ks = self._keys.get(key)
        if ks is None:
            return
        try:
            ks.inflight.remove((p, off))
        except ValueError:
            pass
        if not ks.inflight:
            ks.owner = None
            if not ks.queue:
                del self._keys[key]

    def _done(self, part: PartState, runs: list[int]) -> None:
        part.mark_done(runs)
        self._log_runs("a", part.index, runs)

    def _dead_letter(self, part: PartState, off: int, rec: Record, reason: str, count: int) -> None:
        self._dead.append(DeadLetter(rec, part.index, off, count, reason))
        self._end(part, [off])
        self._done(part, [off, off + 1])

    def _promote(self, mono_us: int) -> None:
        heap = self._retry_heap
        while heap and heap[0][0] <= mono_us:
            _t, _s, p, off = heapq.heappop(heap)
            part = self._parts[p]
            if not part.is_done(off) and off not in part.inflight:
                self._ready[part.prios.get(off, 0)].append((p, off))

    def _count_failures(
        self, part: PartState, offs: list[int], delay: float | None, mono_us: int
    ) -> list[tuple[int, int]]:
        """First half of a counted failure of in-flight ``offs`` (ascending; nack, lease
        expiry, a member leaving): end the leases, count the deliveries, dead-letter those out
        of deliveries. Returns ``(offset, ready mono)`` to requeue. Callers count every
        partition's failures before requeueing any (:meth:`_requeue`), because a key_ordered
        head-of-line release spans partitions and would take a not-yet-counted one back."""
        max_deliveries = self.settings.max_deliveries
        backoff = self.settings.backoff
        retry: list[tuple[int, int]] = []  # (offset, ready mono)
        dead: list[int] = []
        for off in offs:
            lease = part.inflight.pop(off)
            lease.member.unacked -= 1
            count = part.prev.get(off, 0) + 1
            part.prev[off] = count
            if count >= max_deliveries:
                dead.append(off)
                continue
            secs = backoff.delay(count) if delay is None else delay
            retry.append((off, mono_us + int(secs * 1_000_000)))
        if dead:
            for off, _view, rec in part.read_offsets(dead):
                self._dead_letter(part, off, rec, "max_deliveries", part.prev[off])
        return retry

    def _requeue(self, part: PartState, retry: list[tuple[int, int]], mono_us: int) -> None:
        """Second half of a failure: schedule redelivery, head-of-line in ordered modes."""
        if not retry:
            return  # ordered: a dead-lettered head leaves the line, later ones go on
        if self._mode == "ordered":
            first, ready_at = retry[0]
            later = sorted(o for o in part.inflight if o > first)
            self._release_offsets(part, later)
            part.rewind(first)
            part.hold_until = max(part.hold_until, ready_at)
            return
        heads: dict[bytes, tuple[int, int]] = {}
        for off, ready_at in retry:
            key = part.keyof.get(off)
            if key is None:
                self._schedule(part, off, ready_at, mono_us)
            elif key not in heads:
                heads[key] = (off, ready_at)  # the first failure of a key takes the rest along
        for key, (off, ready_at) in heads.items():
            self._key_fail(key, part.index, off, ready_at)

    def _schedule(self, part: PartState, off: int, ready_at: int, mono_us: int) -> None:
        if ready_at <= mono_us:
            self._ready[part.prios.get(off, 0)].append((part.index, off))
        else:
            heapq.heappush(self._retry_heap, (ready_at, next(self._seq), part.index, off))

    def _key_fail(self, key: bytes, p: int, off: int, ready_at: int) -> None:
        """key_ordered head-of-line: ``off`` and every later in-flight message of its key
        go back to the front of the key's queue, in order, held until ``ready_at``."""
        ks = self._keys.get(key)
        if ks is None:
            ks = self._keys[key] = _KeyState()
        elif (p, off) not in ks.inflight and (p, off) in ks.queue:
            return  # an earlier failure of the key already put it back in line
        back = [(p, off)]
        keep: list[tuple[int, int]] = []
        for ref in ks.inflight:
            if ref == (p, off):
                continue
            if ref > (p, off):
                part = self._parts[ref[0]]
                lease = part.inflight.pop(ref[1], None)
                if lease is not None:
                    lease.member.unacked -= 1
                    part.prev.setdefault(ref[1], 0)
                    self._log_runs("u", ref[0], [ref[1], ref[1] + 1])
                back.append(ref)
            else:
                keep.append(ref)
        ks.inflight = keep
        back.sort()
        ks.queue.extendleft(reversed(back))
        self._waiting[key] = ks
        self._parked += len(back)
        ks.hold_until = max(ks.hold_until, ready_at)
        if not keep:
            ks.owner = None

    def _release_offsets(self, part: PartState, offs: list[int]) -> None:
        """Take in-flight ``offs`` (ascending) back without counting a failed delivery."""
        released: list[int] = []
        for off in offs:
            lease = part.inflight.pop(off, None)
            if lease is None:
                continue
            lease.member.unacked -= 1
            part.prev.setdefault(off, 0)
            released.append(off)
        if not released:
            return
        self._log_runs("u", part.index, runs_of(released))
        if self._mode == "ordered":
            part.rewind(offs[0])
            return
        heads: set[bytes] = set()
        for off in offs:
            key = part.keyof.get(off)
            if key is None:
                self._ready[part.prios.get(off, 0)].append((part.index, off))
            elif key not in heads:
                heads.add(key)
                self._key_fail(key, part.index, off, 0)
