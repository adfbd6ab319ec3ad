"""Building deliveries: the read cursor with its hot path, the per-record path, redeliveries,
priority lanes and the priority look-ahead (shared mode), key parking (key_ordered).

Cost model: the hot path (a batch with no priority, TTL or extension section, and no filter
verdicts) builds deliveries with one ``bodies()`` call, one ``make_ids`` call and one
``map(Delivery, ...)``. Everything else is per record, and only for batches that need it.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING, Any, Final

from ._groupcore import KEY_QUEUE_LIMIT, GroupCore, _KeyState
from ._ids import make_ids
from ._limits import GROUP_HEADER, ID_HEADER, RESERVED_HEADERS
from ._partstate import Member, PartState
from ._ranges import runs_of
from ._types import Delivery

if TYPE_CHECKING:
    from ..storage import Record

__all__ = ["GroupDelivering", "SCAN_BUDGET_BYTES"]

# Storage-format attribute bits (docs/storage-format.md). A batch with none of these has
# nothing a Delivery needs besides bodies: the hot path.
_HAS_PRIORITY: Final = 1 << 0
_HAS_TTL: Final = 1 << 2
_HAS_EXT: Final = 1 << 3
_NEEDS_RECORDS: Final = _HAS_PRIORITY | _HAS_TTL | _HAS_EXT
SCAN_BUDGET_BYTES: Final = 1024 * 1024  # priority look-ahead per partition per fetch


class GroupDelivering(GroupCore):
    """Fetch internals; the public ``fetch`` is :meth:`GroupState.fetch`."""

    def _fetch_shared(
        self, member: Member, want: int, out: list[Delivery], now_us: int, deadline: int
    ) -> None:
        parts = self._parts
        if self._lanes_on:
            for part in parts:
                if part.scan < part.log.end_offset:
                    self._scan(part)
        if any(self._ready) or any(p.lane_pending() for p in parts):
            for prio in range(9, -1, -1):
                if len(out) >= want:
                    return
                self._take_ready(prio, member, want - len(out), out, now_us, deadline)
                if prio:
                    for part in self._rotation():
                        if len(out) >= want:
                            return
                        self._take_lane(part, prio, member, want - len(out), out, now_us, deadline)
        for part in self._rotation():
            if len(out) >= want:
                return
            self._take_cursor(part, member, want - len(out), out, now_us, deadline)

    def _fetch_keyed(
        self,
        member: Member,
        want: int,
        out: list[Delivery],
        now_us: int,
        mono_us: int,
        deadline: int,
    ) -> None:
        self._take_ready(0, member, want, out, now_us, deadline)
        for key, ks in list(self._waiting.items()):
            if len(out) >= want:
                return
            if ks.hold_until > mono_us:
                continue
            if ks.owner is not None and ks.owner is not member:
                continue
            take: list[tuple[int, int]] = []
            while ks.queue and len(take) < want - len(out):
                take.append(ks.queue.popleft())
            if not ks.queue:
                del self._waiting[key]
            self._parked -= len(take)
            got = self._deliver_refs(take, member, out, now_us, deadline)
            if got:
                ks.owner = member
                ks.inflight.extend(got)
                self._keys[key] = ks  # an expired message may have dropped the entry
            elif not ks.inflight and not ks.queue:
                self._keys.pop(key, None)
        for part in self._rotation():
            if len(out) >= want or self._parked >= KEY_QUEUE_LIMIT:
                return
            self._take_cursor(part, member, want - len(out), out, now_us, deadline, mono_us)

    def _take_cursor(
        self,
        part: PartState,
        member: Member,
        want: int,
        out: list[Delivery],
        now_us: int,
        deadline: int,
        mono_us: int = 0,
    ) -> None:
        """Deliver up to ``want`` messages from the partition's read cursor, in log order."""
        topic = self.topic
        lanes = self._lanes_on
        keyed = self._mode == "key_ordered"
        filt = self.filter
        taken = 0
        while taken < want:
            if keyed and self._parked >= KEY_QUEUE_LIMIT:
                return
            cursor = part.cursor
            if cursor < part.floor:
                # A dead letter or filtered offset just done may have advanced the floor past
                # the cursor (done offsets above it are folded into the floor): skip to it.
                part.cursor = cursor = part.floor
            if cursor < part.log.start_offset:  # trimmed under pure log retention
                part.mark_done([part.floor, part.log.start_offset])
                part.cursor = cursor = max(part.floor, part.log.start_offset)
                part.drop_read_ahead()
            view = part.chunk
            if view is None or not (view.base_offset <= cursor <= view.last_offset):
                view = part.next_view(cursor)
                if view is None:
                    return
                part.chunk = view
                part.chunk_bodies = part.chunk_records = None
                part.chunk_verdicts = filt.match_batch(view)
                part.chunk_simple = (
                    part.chunk_verdicts is None and not view.attributes & _NEEDS_RECORDS
                    and not self._ttl_us
                )
                if lanes and view.last_offset >= part.scan:
                    self._scan_view(part, view)
            base = view.base_offset
            end = view.last_offset + 1
            if (
                part.chunk_simple
                and cursor >= part.recount_upto
                and not part.done.overlaps(cursor, end)
            ):
                # The hot path: plain batch, nothing done or redelivered in it.
                bodies = part.chunk_bodies
                if bodies is None:
                    bodies = part.chunk_bodies = view.bodies()
                stop = min(end, cursor + want - taken)
                n = stop - cursor
                i = cursor - base
                ids = make_ids(topic, self.incarnation, part.index, cursor, n)
                out.extend(
                    map(
                        Delivery,
                        ids,
                        repeat(topic, n),
                        repeat(part.index, n),
                        range(cursor, stop),
                        repeat(view.first_timestamp_us, n),
                        bodies[i : i + n],
                    )
                )
                self._lease(member, part, range(cursor, stop), deadline)
                part.cursor = stop
                taken += n
                continue
            taken += self._take_slow(part, view, member, want - taken, out, now_us, deadline, mono_us)

    def _take_slow(
        self,
        part: PartState,
        view: Any,
        member: Member,
        want: int,
        out: list[Delivery],
        now_us: int,
        deadline: int,
        mono_us: int,
    ) -> int:
        """Per-record path through one batch from the cursor; returns deliveries made."""
        records = part.chunk_records
        if records is None:
            records = part.chunk_records = view.records()
        verdicts = part.chunk_verdicts
        lanes = self._lanes_on
        keyed = self._mode == "key_ordered"
        base = view.base_offset
        end = view.last_offset + 1
        off = part.cursor
        leased: list[int] = []
        filtered: list[int] = []
        while off < end and len(leased) < want:
            nxt = part.done.next_missing(off) if off >= part.floor else part.floor
            if nxt != off:
                off = nxt
                continue
            if off in part.inflight:
                off += 1
                continue
            i = off - base
            if verdicts is not None and not verdicts[i]:
                filtered.append(off)
                off += 1
                continue
            rec = records[i]
            if lanes and rec.priority > 0:
                off += 1  # delivered from its priority lane
                continue
            if self._unfit(part, off, view, rec, now_us):
                off += 1
                continue
            if keyed and rec.key is not None:
                ks = self._keys.get(rec.key)
                if ks is None:
                    ks = self._keys[rec.key] = _KeyState()
                if ks.queue or ks.hold_until > mono_us or (
                    ks.owner is not None and ks.owner is not member
                ):
                    ks.queue.append((part.index, off))
                    self._waiting[rec.key] = ks
                    part.keyof[off] = rec.key
                    self._parked += 1
                    off += 1
                    if self._parked >= KEY_QUEUE_LIMIT:
                        break
                    continue
                ks.owner = member
                ks.inflight.append((part.index, off))
                part.keyof[off] = rec.key
            out.append(self._delivery(part, off, view, rec))
            leased.append(off)
            off += 1
        part.cursor = off
        if filtered:
            self._done(part, runs_of(filtered))
        if leased:
            self._lease(member, part, leased, deadline)
        return len(leased)

    def _unfit(self, part: PartState, off: int, view: Any, rec: Record, now_us: int) -> bool:
        """Dead-letter instead of delivering: TTL passed, or deliveries used up (a restart
        counts as the lease ending). Returns True when it did."""
        count = part.prev.get(off, 0)
        if count >= self.settings.max_deliveries:
            self._dead_letter(part, off, rec, "max_deliveries", count)
            return True
        ttl = self._ttl_of(rec)
        if not ttl:
            return False
        if now_us >= _ready_us(view, rec) + ttl:
            self._dead_letter(part, off, rec, "expired", count)
            return True
        return False

    def _ttl_of(self, rec: Record) -> int:
        """The message's TTL here (µs, 0: none): its own or the group's ``message_ttl``,
        the shorter."""
        ttl, group = rec.ttl_us, self._ttl_us
        return group if group and (not ttl or group < ttl) else ttl

    def expire_head(self, now_us: int, limit: int = 1000) -> int:
        """Dead-letter the expired messages at the head of each partition (from the first not
        done on) without a fetch, as RabbitMQ expires a queue's head: stops at the first that
        is not expired, has no TTL (its own or the group's ``message_ttl``) or is in flight,
        or after ``limit``. Messages the filter skips on the way are done (as a fetch would
        make them). Returns how many expired."""
        n = 0
        filt = self.filter
        # An unchanged head that is not due is not read again (fronts call this often).
        seen = self._heads_seen
        for part in self._parts:
            while n < limit:
                off = part.done.next_missing(part.floor)
                if off >= part.log.end_offset or off in part.inflight:
                    break
                last = seen.get(part.index)
                if last is not None and last[0] == off and (last[1] < 0 or now_us < last[1]):
                    break
                got = part.read_offsets([off])
                if not got:  # trimmed from the log meanwhile
                    break
                _, view, rec = got[0]
                if not filt.matches(rec.routing_key, rec.headers):
                    self._done(part, [off, off + 1])
                    continue
                ttl = self._ttl_of(rec)
                due = _ready_us(view, rec) + ttl if ttl else -1
                if due < 0 or now_us < due:
                    seen[part.index] = (off, due)
                    break
                self._dead_letter(part, off, rec, "expired", part.prev.get(off, 0))
                n += 1
        return n

    def _delivery(self, part: PartState, off: int, view: Any, rec: Record) -> Delivery:
        count = part.prev.get(off, 0) + 1
        if rec.priority and self._lanes_on:
            part.prios[off] = min(rec.priority, self._prio_cap)  # its redeliveries' rank
        headers = rec.headers
        alias = headers.get(ID_HEADER) if headers else None
        if alias is not None:
            part.alias[off] = alias
            self._aliases[alias] = (part.index, off)
            mid = alias
        else:
            mid = make_ids(self.topic, self.incarnation, part.index, off, 1)[0]
        if headers and (alias is not None or GROUP_HEADER in headers):
            # The hidden headers are the broker's (a released delay's id, a redrive's group):
            # not shown, so a consumer that publishes a message on with its headers is not
            # refused for carrying a reserved one. The backends hide them alike.
            headers = {k: v for k, v in headers.items() if k not in RESERVED_HEADERS}
        return Delivery(
            mid,
            self.topic,
            part.index,
            off,
            view.first_timestamp_us,
            rec.body,
            rec.key,
            rec.routing_key,
            headers or {},
            rec.priority,
            count,
        )

    def _deliver_refs(
        self,
        refs: list[tuple[int, int]],
        member: Member,
        out: list[Delivery],
        now_us: int,
        deadline: int,
    ) -> list[tuple[int, int]]:
        """Deliver specific (partition, offset) messages (redeliveries, lanes, key queues).

        Skips those done or in flight meanwhile; dead-letters expired ones. Returns the refs
        delivered, in order.
        """
        by_part: dict[int, list[int]] = {}
        for p, off in refs:
            part = self._parts[p]
            if part.is_done(off) or off in part.inflight:
                continue
            by_part.setdefault(p, []).append(off)
        delivered: list[tuple[int, int]] = []
        for p, offs in by_part.items():
            part = self._parts[p]
            leased: list[int] = []
            for off, view, rec in part.read_offsets(sorted(set(offs))):
                if self._unfit(part, off, view, rec, now_us):
                    continue
                out.append(self._delivery(part, off, view, rec))
                leased.append(off)
                delivered.append((p, off))
            missing = set(offs) - set(leased)
            for off in missing:  # trimmed from the log meanwhile: nothing left to deliver
                if not part.is_done(off) and off < part.log.start_offset:
                    self._done(part, [off, off + 1])
            if leased:
                self._lease(member, part, leased, deadline)
        return delivered

    def _take_ready(
        self,
        prio: int,
        member: Member,
        want: int,
        out: list[Delivery],
        now_us: int,
        deadline: int,
    ) -> None:
        queue = self._ready[prio]
        while queue and want > 0:
            take = [queue.popleft() for _ in range(min(want, len(queue)))]
            want -= len(self._deliver_refs(take, member, out, now_us, deadline))

    def _take_lane(
        self,
        part: PartState,
        prio: int,
        member: Member,
        want: int,
        out: list[Delivery],
        now_us: int,
        deadline: int,
    ) -> None:
        lane = part.lanes[prio]
        while want > 0 and part.lane_heads[prio] < len(lane):
            head = part.lane_heads[prio]
            offs = lane[head : head + want].tolist()
            part.lane_heads[prio] = head + len(offs)
            if part.lane_heads[prio] == len(lane):
                del lane[:]
                part.lane_heads[prio] = 0
            want -= len(self._deliver_refs([(part.index, o) for o in offs], member, out, now_us, deadline))

    def _scan(self, part: PartState) -> None:
        """Look ahead of the cursor for batches with priorities; queue their records in lanes."""
        budget = SCAN_BUDGET_BYTES
        log = part.log
        while budget > 0 and part.scan < log.end_offset:
            if part.scan >= log.priority_free_from:
                part.scan = log.end_offset  # no priority from here on: nothing to read
                return
            views = log.read(max(part.scan, log.start_offset), max_bytes=budget)
            if not views:
                return
            for view in views:
                if view.last_offset >= part.scan:
                    self._scan_view(part, view)
                budget -= view.size
            if part.scan < log.start_offset:
                part.scan = log.start_offset

    def _scan_view(self, part: PartState, view: Any) -> None:
        start = max(part.scan, part.cursor, view.base_offset)
        if view.max_priority > 0:
            base = view.base_offset
            prios = view.priorities()
            verdicts = self.filter.match_batch(view)
            lanes = part.lanes
            cap = self._prio_cap
            for off in range(start, view.last_offset + 1):
                pr = prios[off - base]
                if pr and (verdicts is None or verdicts[off - base]) and not part.is_done(off):
                    lanes[min(pr, cap)].append(off)
        part.scan = max(part.scan, view.last_offset + 1)


def _ready_us(view: Any, rec: Record) -> int:
    """When a stored message became ready, which its TTL counts from (SPEC §3): its publish
    time, or its deliver_at. A delayed message released late by the delay store (x-tidemq-id
    set) still counts from its deliver_at, not from the release."""
    if rec.deliver_at_us and rec.headers and ID_HEADER in rec.headers:
        return int(rec.deliver_at_us)
    return max(int(view.first_timestamp_us), rec.deliver_at_us)
