"""The consumer-group state machine (SPEC §3–§5): one group of one topic.

:class:`GroupState` is driven by the broker from one thread at a time and never reads a clock:
wall time (``now_us``, TTL) and monotonic time (``mono_us``, leases and backoff) are passed in.
Semantic choices are written down in ``docs/semantics.md`` ("Consuming").

Layout: ``_partstate`` (per-partition progress, leases, members), ``_groupcore`` (shared state
and the failure / release / dead-letter mechanics), ``_delivering`` (building deliveries, the
hot path), this module (the public commands, acks, time, reset and durability), ``_start``
(start positions), ``_ranges`` (done-offset range sets), ``_filters``.

Cost model: the backlog costs nothing per message (see :mod:`._partstate`); acks are grouped
per partition and stored as ranges; an in-order single ack takes a short path.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from ..errors import InvalidArgument, StaleLease, UnknownMessage
from ._delivering import SCAN_BUDGET_BYTES, GroupDelivering
from ._groupcore import KEY_QUEUE_LIMIT, DeadLetter
from ._ids import DELAY_PARTITION, parse_id
from ._limits import check_extend, check_nack_delay, check_prefetch, check_reason
from ._partstate import Lease, Member, PartState
from ._ranges import runs_of
from ._start import resolve_start
from ._types import Delivery, GroupInfo, GroupPartitionInfo, GroupSettings, StartPosition

if TYPE_CHECKING:
    from ..storage import PartitionLog

__all__ = [
    "DeadLetter",
    "GroupState",
    "resolve_start",
    "KEY_QUEUE_LIMIT",
    "SCAN_BUDGET_BYTES",
    "SNAPSHOT_VERSION",
]

SNAPSHOT_VERSION: Final = 1
_NO_END: Final = 1 << 62


class GroupState(GroupDelivering):
    """One consumer group of one topic: members, leases, progress, redelivery, dead letters.

    Not thread-safe: the broker calls it from one thread at a time. Public methods raise only
    :mod:`tidemq.errors` types. Durable state leaves through :meth:`drain_journal` and
    :meth:`snapshot`; :meth:`restore` rebuilds it (leases are not durable: after a restart
    every unacked message is delivered again).
    """

    def __init__(
        self,
        topic: str,
        incarnation: int,
        name: str,
        settings: GroupSettings,
        logs: list[PartitionLog],
        *,
        now_us: int,
        _floors: list[int] | None = None,
        _restored: bool = False,
    ) -> None:
        """A group positioned at ``settings.start`` (resolved against ``logs`` now)."""
        if not _restored:
            # Restored settings were validated when stored; limits added since must not stop
            # a data folder from opening.
            settings.validate()
        floors = _floors if _floors is not None else resolve_start(settings.start, logs)
        super().__init__(topic, incarnation, name, settings, logs, floors=floors, now_us=now_us)
        if _floors is None:
            self._journal.append(("reset", floors))

    def add_partition(self, log: PartitionLog) -> None:
        """The topic grew by one partition; the group reads it from its offset 0."""
        self._add_part(log, log.start_offset)
        if self._mode == "ordered":
            self._rebalance()

    def add_member(self, member_id: str, prefetch: int, *, mono_us: int) -> None:
        """A member joins with ``prefetch`` credit; in ordered mode partitions are rebalanced."""
        check_prefetch(prefetch)
        if member_id in self._members:
            raise InvalidArgument(f"member {member_id!r} already joined group {self.name!r}")
        self._members[member_id] = Member(member_id, prefetch, mono_us)
        if self._mode == "ordered":
            self._rebalance()

    def remove_member(self, member_id: str, *, mono_us: int) -> None:
        """A member leaves (closes, or its connection is gone): its leases end at once and
        each counts as a delivery that failed, like a lease expiry, so the messages are ready
        again at once with a higher count. Counting them is what stops a message that crashes
        its consumer from looping forever: it reaches ``max_deliveries`` and is dead-lettered
        (RabbitMQ's quorum queues count a return on disconnect the same way)."""
        member = self._members.get(member_id)
        if member is None:
            return
        # O(messages in flight), however many leases the member was ever given. Every lease
        # is counted before any is requeued: in key_ordered mode a key spans partitions, and a
        # head-of-line release in one partition would otherwise take the member's messages of
        # another back uncounted (issue 15).
        requeue = []
        for part in self._parts:
            mine = sorted(off for off, lease in part.inflight.items() if lease.member is member)
            if mine:
                requeue.append((part, self._count_failures(part, mine, 0.0, mono_us)))
        for part, retry in requeue:
            self._requeue(part, retry, mono_us)
        del self._members[member_id]
        if self._mode == "ordered":
            self._rebalance()

    def _rebalance(self) -> None:
        """Ordered mode: partition i goes to the i-th member (sorted by id) modulo members.

        A partition that changes owner releases its in-flight messages (uncounted) and is
        read again from the first of them, so the new owner sees strict order.
        """
        members = sorted(self._members.values(), key=lambda m: m.id)
        for part in self._parts:
            new = members[part.index % len(members)] if members else None
            if part.owner is new:
                continue
            if part.inflight:
                self._release_offsets(part, sorted(part.inflight))
            part.owner = new

    def members_with_credit(self) -> list[str]:
        """Ids of members that may take more messages now."""
        return [m.id for m in self._members.values() if m.unacked < m.prefetch]

    def has_ready(self) -> bool:
        """True when a fetch might return something (cheap; may be a false positive)."""
        if any(self._ready) or self._waiting:
            return True
        for p in self._parts:  # noqa: SIM110 - a loop, not any(genexpr): runs after every ack
            if p.cursor < p.log.end_offset or p.lane_pending():
                return True
        return False

    def has_dead_letters(self) -> bool:
        """True when :meth:`drain_dead_letters` would return something."""
        return bool(self._dead)

    def fetch(
        self, member_id: str, max_messages: int, *, now_us: int, mono_us: int
    ) -> list[Delivery]:
        """Lease up to ``max_messages`` ready messages to the member, within its credit.

        The member never holds more than ``prefetch`` unacked messages. Each delivery's lease
        ends ``ack_timeout`` after ``mono_us``.
        """
        member = self._member(member_id)
        self._now_us = now_us
        want = min(max_messages, member.prefetch - member.unacked)
        if want <= 0:
            return []
        self._promote(mono_us)
        out: list[Delivery] = []
        deadline = mono_us + self._ack_timeout_us
        if self._mode == "shared":
            self._fetch_shared(member, want, out, now_us, deadline)
        elif self._mode == "ordered":
            parts = [p for p in self._parts if p.owner is member and p.hold_until <= mono_us]
            for part in parts:
                if len(out) >= want:
                    break
                self._take_cursor(part, member, want - len(out), out, now_us, deadline)
        else:
            self._fetch_keyed(member, want, out, now_us, mono_us, deadline)
        member.unacked += len(out)
        return out

    def _parse(self, ids: Sequence[str]) -> dict[PartState, list[int]]:
        """Group ids by partition; UnknownMessage for ids not of this topic and incarnation."""
        fast = self._parse_one_partition(ids)
        return fast if fast is not None else self._parse_general(ids)

    def _parse_one_partition(self, ids: Sequence[str]) -> dict[PartState, list[int]] | None:
        # The usual batch ack: every id of one partition. One slice + int() per id.
        if not ids:
            return {}
        first = ids[0]
        if not isinstance(first, str):
            return None
        cut = first.rfind(":") + 1
        part = self._prefixes.get(first[:cut])
        if part is None:
            return None
        prefix = first[:cut]
        try:
            offs = [int(m[cut:]) for m in ids if m.startswith(prefix)]
        except (ValueError, AttributeError, TypeError):
            return None
        if len(offs) != len(ids) or min(offs) < 0 or max(offs) >= part.log.end_offset:
            return None
        return {part: offs}

    def _parse_general(self, ids: Sequence[str]) -> dict[PartState, list[int]]:
        prefixes = self._prefixes
        out: dict[PartState, list[int]] = {}
        for mid in ids:
            if not isinstance(mid, str):
                raise UnknownMessage(f"{mid!r} is not a TideMQ message id")
            prefix, _, tail = mid.rpartition(":")
            part = prefixes.get(prefix + ":")
            if part is None or not tail.isdigit():
                alias = self._aliases.get(mid)
                if alias is not None:
                    out.setdefault(self._parts[alias[0]], []).append(alias[1])
                    continue
                ref = parse_id(mid)  # raises for malformed ids
                if (
                    ref.partition == DELAY_PARTITION
                    and ref.topic == self.topic
                    and ref.incarnation == self.incarnation
                ):
                    continue  # a delayed message not held now (done, or not delivered): no-op
                raise UnknownMessage(
                    f"{mid!r} names partition {ref.partition} of {ref.topic!r} incarnation "
                    f"{ref.incarnation}, not a message of group {self.name!r} on {self.topic!r}"
                )
            off = int(tail)
            if off >= part.log.end_offset:
                raise UnknownMessage(f"{mid!r}: no such offset in partition {part.index}")
            out.setdefault(part, []).append(off)
        return out

    def _check_holder(self, member: Member, parsed: dict[PartState, list[int]], what: str) -> None:
        for part, offs in parsed.items():
            inflight = part.inflight
            for off in offs:
                lease = inflight.get(off)
                if lease is not None and lease.member is not member:
                    raise StaleLease(
                        f"cannot {what} {self.topic}:{part.index}:{off}: its lease expired and it "
                        f"is now leased to another member of group {self.name!r}; nothing changed"
                    )

    def ack(self, member_id: str, ids: Sequence[str]) -> None:
        """End the messages for this group. Idempotent: acking an acked message, or one whose
        lease expired and that nobody holds now, is accepted. Raises :class:`StaleLease` (and
        changes nothing) if one is leased to another member; :class:`UnknownMessage` for ids
        that are malformed or not of this topic."""
        member = self._members.get(member_id)
        if member is None:
            member = self._member(member_id)  # raises
        if len(ids) == 1 and self._ack_head(member, ids[0]):
            return
        self._ack_parsed(member, self._parse(ids))

    def ack_ranges(self, member_id: str, ranges: Sequence[tuple[int, int, int]]) -> int:
        """:meth:`ack` for ``(partition, first, last)`` offset ranges of the topic's partitions
        (what the network client sends): the same checks and effects, without an id string
        per message. Returns how many messages the ranges name. Raises
        :class:`UnknownMessage` (and changes nothing) for a range outside the partitions' logs
        (the delay partition included: its messages are acked by id)."""
        member = self._members.get(member_id)
        if member is None:
            member = self._member(member_id)  # raises
        parts = self._parts
        parsed: dict[PartState, list[int]] = {}
        n = 0
        for p, first, last in ranges:
            if not (0 <= p < len(parts) and 0 <= first <= last < parts[p].log.end_offset):
                raise UnknownMessage(
                    f"offsets {first}..{last} of partition {p} are not messages of "
                    f"{self.topic!r} (group {self.name!r})")
            parsed.setdefault(parts[p], []).extend(range(first, last + 1))
            n += last - first + 1
        self._ack_parsed(member, parsed)
        return n

    def _ack_parsed(self, member: Member, parsed: dict[PartState, list[int]]) -> None:
        self._check_holder(member, parsed, "ack")
        if self._mode != "shared":
            self._check_in_line(parsed)
        for part, offs in parsed.items():
            inflight = part.inflight
            prev = part.prev
            ended: list[int] = []
            for off in offs:
                if inflight.pop(off, None) is not None:
                    member.unacked -= 1
                    ended.append(off)
                elif off in prev and not part.is_done(off):
                    ended.append(off)  # expired or released, not leased again: accept it
            if ended:
                ended.sort()
                self._end(part, ended)
                self._done(part, runs_of(ended))

    def _check_in_line(self, parsed: dict[PartState, list[int]]) -> None:
        """Ordered modes: a message taken back (head-of-line release or lease expiry) and not
        leased again waits for its turn; acking it now would end it before an earlier failed
        message of its partition (key) is done. Refused as stale, the whole call unchanged; it
        is delivered again in order (SPEC §3). Keyless messages in key_ordered mode are as in
        shared mode."""
        keyed = self._mode == "key_ordered"
        for part, offs in parsed.items():
            for off in offs:
                if (off not in part.inflight and off in part.prev and not part.is_done(off)
                        and (not keyed or off in part.keyof)):
                    raise StaleLease(
                        f"cannot ack {self.topic}:{part.index}:{off}: it was taken back "
                        f"(an earlier message of its {'key' if keyed else 'partition'} failed, or "
                        f"its lease ran out) and will be delivered again in order; nothing changed")

    def _ack_head(self, member: Member, mid: str) -> bool:
        """The common single ack: the partition's first unfinished offset, held by ``member``,
        with no per-message extras. Returns False to take the general path."""
        if not isinstance(mid, str):
            return False
        cut = mid.rfind(":") + 1
        part = self._prefixes.get(mid[:cut])
        if part is None:
            return False
        tail = mid[cut:]
        if not tail.isdigit():
            return False
        off = int(tail)
        if off != part.floor or part.prev or part.prios or part.keyof or part.alias:
            return False
        inflight = part.inflight
        lease = inflight.get(off)
        if lease is None or lease.member is not member:
            return False
        del inflight[off]
        member.unacked -= 1
        nxt = off + 1
        part.floor = part.done.advance_floor(nxt) if part.done else nxt
        # _log_runs("a", ...), inlined on this per-message path.
        key = ("a", part.index)
        last = self._tails.get(key)
        if last is not None and last[-1] == off:
            last[-1] = nxt
        else:
            runs = [off, nxt]
            self._tails[key] = runs
            self._journal.append(("a", part.index, runs))
        return True

    def nack(self, member_id: str, ids: Sequence[str], delay: float | None, *, mono_us: int) -> None:
        """Give messages back: ready after ``delay`` seconds (``None``: the group's backoff for
        its delivery count; 0: at once). Counts as a failed delivery (``max_deliveries``).
        Ordered modes redeliver the message and every later unacked one of its partition
        (or key) in order. Messages not held by anyone are ignored."""
        delay = check_nack_delay(delay)
        member = self._member(member_id)
        parsed = self._parse(ids)
        self._check_holder(member, parsed, "nack")
        # Count every nacked delivery first, then requeue (see remove_member).
        requeue = []
        for part, offs in parsed.items():
            held = sorted(off for off in offs if part.inflight.get(off) is not None)
            if held:
                requeue.append((part, self._count_failures(part, held, delay, mono_us)))
        for part, retry in requeue:
            self._requeue(part, retry, mono_us)

    def reject(self, member_id: str, ids: Sequence[str], reason: str) -> None:
        """Dead-letter the messages at once; ``reason`` (default ``rejected``) becomes the dead
        letter's reason header."""
        reason = check_reason(reason) or "rejected"
        member = self._member(member_id)
        parsed = self._parse(ids)
        self._check_holder(member, parsed, "reject")
        for part, offs in parsed.items():
            held = sorted(off for off in offs if part.inflight.get(off) is not None)
            for off in held:
                lease = part.inflight.pop(off)
                lease.member.unacked -= 1
                part.prev[off] = part.prev.get(off, 0) + 1
            for off, _view, rec in part.read_offsets(held):
                self._dead_letter(part, off, rec, reason, part.prev[off])

    def extend(self, member_id: str, ids: Sequence[str], seconds: float, *, mono_us: int) -> None:
        """Renew the member's leases to end ``seconds`` after ``mono_us``. Ids whose lease
        already expired (and nobody holds) are ignored: they will be delivered again."""
        seconds = check_extend(seconds)
        member = self._member(member_id)
        parsed = self._parse(ids)
        self._check_holder(member, parsed, "extend")
        deadline = mono_us + int(seconds * 1_000_000)
        for part, offs in parsed.items():
            held = sorted(off for off in offs if part.inflight.get(off) is not None)
            if held:
                lease = Lease(member, part, held, deadline)
                part.inflight.update(dict.fromkeys(held, lease))
                heapq.heappush(self._lease_heap, (deadline, next(self._seq), lease))

    def drain_dead_letters(self) -> list[DeadLetter]:
        """Dead letters since the last call; they are already done for this group."""
        out, self._dead = self._dead, []
        return out

    def tick(self, *, now_us: int, mono_us: int) -> float | None:
        """Expire leases (their messages become ready again, the delivery counted), make due
        redeliveries ready; return seconds until the next deadline (None: none)."""
        self._now_us = now_us
        heap = self._lease_heap
        expired: dict[PartState, list[int]] = {}
        while heap and heap[0][0] <= mono_us:
            _d, _s, lease = heapq.heappop(heap)
            part = lease.part
            inflight = part.inflight
            expired.setdefault(part, []).extend(o for o in lease.offsets if inflight.get(o) is lease)
        # Every lease that ended by now is counted first, before any head-of-line release
        # (which may span partitions in key_ordered mode) could take one back uncounted.
        # Ready again at once: the wait already happened.
        requeue = [
            (part, self._count_failures(part, sorted(offs), 0.0, mono_us))
            for part, offs in expired.items()
            if offs
        ]
        for part, retry in requeue:
            self._requeue(part, retry, mono_us)
        self._promote(mono_us)
        nxt = self.next_deadline(mono_us)
        return None if nxt is None else max(0.0, (nxt - mono_us) / 1_000_000)

    def next_deadline(self, mono_us: int) -> int | None:
        """The next monotonic time (µs) at which :meth:`tick` has work: a lease ends, a backoff
        or head-of-line hold is over. None: nothing timed."""
        best = self._lease_heap[0][0] if self._lease_heap else None
        if self._retry_heap:
            t = self._retry_heap[0][0]
            best = t if best is None or t < best else best
        for p in self._parts:
            if p.hold_until > mono_us and (best is None or p.hold_until < best):
                best = p.hold_until
        # key_ordered: ks.hold_until of parked keys (a key's hold is set when it is parked).
        for k in self._waiting.values():
            if k.hold_until > mono_us and (best is None or k.hold_until < best):
                best = k.hold_until
        return best

    def reset(self, start: StartPosition, *, now_us: int) -> None:
        """Replay: drop all progress and leases; the group next reads from ``start``."""
        floors = resolve_start(start, [p.log for p in self._parts])
        self._apply_reset(floors)
        self._tails = {}
        self._journal.append(("reset", floors))

    def _apply_reset(self, floors: list[int]) -> None:
        for member in self._members.values():
            member.unacked = 0
        self._lease_heap.clear()
        self._retry_heap.clear()
        self._ready = [deque() for _ in range(10)]
        self._keys.clear()
        self._waiting.clear()
        self._aliases.clear()
        self._parked = 0
        for part, floor in zip(self._parts, floors, strict=False):
            part.reset(floor)

    def low_water(self, partition: int) -> int:
        """The first offset of ``partition`` this group still needs (retention veto)."""
        return self._parts[partition].floor

    def info(self) -> GroupInfo:
        """Lag, in-flight counts and members, per partition and in total."""
        parts = []
        for part in self._parts:
            end = part.log.end_offset
            lag = max(0, end - part.floor - part.done.count_in(part.floor, end))
            parts.append(GroupPartitionInfo(part.index, part.floor, lag, len(part.inflight)))
        delayed = len(self._retry_heap) + sum(len(k.queue) for k in self._waiting.values())
        return GroupInfo(
            topic=self.topic,
            name=self.name,
            settings=self.settings,
            members=sorted(self._members),
            partitions=parts,
            lag=sum(p.lag for p in parts),
            in_flight=sum(p.in_flight for p in parts),
            delayed=delayed,
        )

    def drain_journal(self) -> list[tuple[Any, ...]]:
        """msgpack-able events since the last call, in order. Forms:

        ``("a", partition, runs)`` offsets done (acked, filtered out, dead-lettered);
        ``("d", partition, runs)`` one counted delivery each;
        ``("u", partition, runs)`` a delivery released uncounted (takes one ``d`` back);
        ``("reset", floors)`` progress dropped, next offsets per partition.
        ``runs`` is a flat ``[start, end, ...]`` list of half-open ranges.
        """
        out = self._journal
        if not out and not self._tails:
            return []  # nothing to hand over, nothing to reset
        self._journal = []
        self._tails = {}
        return out

    def snapshot(self) -> dict[str, Any]:
        """msgpack-able full durable state (no leases; events drained before are included)."""
        parts = []
        for part in self._parts:
            counts: list[int] = []
            for off, n in part.prev.items():
                c = n + (1 if off in part.inflight else 0)
                if c:
                    counts += (off, c)
            for off in part.inflight:
                if off not in part.prev:
                    counts += (off, 1)
            parts.append({"floor": part.floor, "done": part.done.flat(), "counts": counts})
        return {"v": SNAPSHOT_VERSION, "parts": parts}

    @classmethod
    def restore(
        cls,
        snapshot: dict[str, Any] | None,
        events: Iterable[tuple[Any, ...]],
        topic: str,
        incarnation: int,
        name: str,
        settings: GroupSettings,
        logs: list[PartitionLog],
        *,
        now_us: int,
    ) -> GroupState:
        """Rebuild a group from its last snapshot and the events after it (SPEC §6).

        Every offset is clamped to its log's end, so state is never ahead of the log; a
        group with neither snapshot nor reset event starts at ``settings.start``. Besides the
        journaled kinds (:meth:`drain_journal`), ``events`` may hold recovery's
        ``("undone", partition, [offset, delivery count, ...])``: messages whose dead letter is
        not in the dead-letter topic, pending again (``_recover._check_dead_letters``).
        """
        floors: list[int] = [log.start_offset for log in logs]
        done: list[list[int]] = [[] for _ in logs]
        counts: list[dict[int, int]] = [{} for _ in logs]
        known = snapshot is not None
        if snapshot is not None:
            for p, ps in enumerate(snapshot.get("parts", [])[: len(logs)]):
                floors[p] = int(ps["floor"])
                done[p] = list(ps.get("done", []))
                c = ps.get("counts", [])
                counts[p] = {int(c[i]): int(c[i + 1]) for i in range(0, len(c), 2)}
        pending: list[tuple[Any, ...]] = []
        for ev in events:
            kind = ev[0]
            if kind == "reset":
                known = True
                new = list(ev[1])
                floors = new[: len(logs)] + [log.start_offset for log in logs[len(new) :]]
                done = [[] for _ in logs]
                counts = [{} for _ in logs]
                pending = []
            else:
                pending.append(ev)
        if not known:
            group = cls(topic, incarnation, name, settings, logs, now_us=now_us, _restored=True)
        else:
            clamped = [
                min(max(f, log.start_offset), log.end_offset) for f, log in zip(floors, logs, strict=True)
            ]
            group = cls(topic, incarnation, name, settings, logs, now_us=now_us, _floors=clamped,
                        _restored=True)
        for p, part in enumerate(group._parts):
            if done[p]:
                part.mark_done(done[p])
            part.prev.update(counts[p])
        if not known:
            return group  # keeps the journal's start event: the broker persists it
        for ev in pending:
            kind, p = ev[0], int(ev[1])
            if p >= len(group._parts):
                continue
            part = group._parts[p]
            runs = ev[2]
            if kind == "a":
                part.mark_done(list(runs))
            elif kind == "undone":
                # Made by recovery, never journaled: messages whose dead letter is not in the
                # dead-letter topic are pending again, with their delivery counts.
                for i in range(0, len(runs), 2):
                    off = runs[i]
                    if part.log.start_offset <= off < part.log.end_offset:
                        part.mark_not_done(off)
                        part.prev[off] = max(part.prev.get(off, 0), runs[i + 1])
            elif kind in ("d", "u"):
                step = 1 if kind == "d" else -1
                prev = part.prev
                for i in range(0, len(runs), 2):
                    for off in range(runs[i], runs[i + 1]):
                        prev[off] = prev.get(off, 0) + step
        # State ahead of a log (its tail was torn off) is clamped, and the clamped state is
        # journaled at once: the stale events stay in the journal, and without a restatement
        # a second restart would mark the offsets' *new* messages done.
        ahead = any(f > log.end_offset for f, log in zip(floors, logs, strict=True))
        for part in group._parts:
            end = part.log.end_offset
            if part.floor > end or part.done.overlaps(end, _NO_END) or any(o >= end for o in part.prev):
                ahead = True
            part.done.clip(end)
            part.floor = min(part.done.advance_floor(part.floor), end)
            part.cursor = part.scan = part.floor
            part.prev = {
                o: max(c, 0)
                for o, c in part.prev.items()
                if part.floor <= o < end and o not in part.done
            }
            part.recount_upto = max(part.prev, default=-1) + 1
        group._journal.clear()
        if ahead:
            group._restate()
        return group

    def _restate(self) -> None:
        """Journal the whole durable state as events (a reset, then done ranges and counts)."""
        self._tails = {}
        self._journal.append(("reset", [p.floor for p in self._parts]))
        for part in self._parts:
            if part.done:
                self._journal.append(("a", part.index, part.done.flat()))
            level = 1
            while True:
                offs = sorted(o for o, c in part.prev.items() if c >= level)
                if not offs:
                    break
                self._journal.append(("d", part.index, runs_of(offs)))
                level += 1
