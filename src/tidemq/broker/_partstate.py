"""Per-partition progress of one consumer group, and the leases it hands out.

Nothing here is per backlog message: a partition's progress is a committed ``floor`` (every
offset below is done), a :class:`RangeSet` of done offsets above it, a read ``cursor`` and a
small read-ahead of batch views. Only messages in flight or waiting for redelivery have dict
entries, so a 10-million-message backlog costs a few hundred bytes.
"""

from __future__ import annotations

from array import array
from collections import deque
from typing import TYPE_CHECKING, Final

from ._ranges import RangeSet

if TYPE_CHECKING:
    from ..storage import BatchView, PartitionLog, Record

__all__ = ["Lease", "Member", "PartState", "READ_AHEAD_BYTES"]

READ_AHEAD_BYTES: Final = 256 * 1024


class Member:
    """A group member and its credit. Its leases are found through ``PartState.inflight``."""

    __slots__ = ("id", "prefetch", "unacked", "joined_us")

    def __init__(self, member_id: str, prefetch: int, joined_us: int) -> None:
        self.id = member_id
        self.prefetch = prefetch
        self.unacked = 0
        self.joined_us = joined_us


class Lease:
    """Messages of one partition handed to one member in one call, sharing one deadline.

    ``PartState.inflight[offset] is lease`` says whether the lease still covers ``offset``:
    an ack, nack, extend or release rebinds or removes the entry, so a lease never needs to
    know which of its offsets are still live.
    """

    __slots__ = ("member", "part", "offsets", "deadline")

    def __init__(self, member: Member, part: PartState, offsets: range | list[int], deadline: int):
        self.member = member
        self.part = part
        self.offsets = offsets
        self.deadline = deadline


class PartState:
    """One partition's progress for one group (see the module docstring).

    Invariants: ``floor <= cursor``; every offset below ``cursor`` is done, in flight, waiting
    for redelivery (``prev`` has it) or, in shared mode, in a priority lane; ``prev[offset]`` is
    the number of counted deliveries before the next one (0: released uncounted).
    """

    __slots__ = (
        "index",
        "log",
        "floor",
        "done",
        "cursor",
        "ahead",
        "inflight",
        "prev",
        "prios",
        "keyof",
        "alias",
        "recount_upto",
        "scan",
        "lanes",
        "lane_heads",
        "owner",
        "hold_until",
        "chunk",
        "chunk_bodies",
        "chunk_records",
        "chunk_verdicts",
        "chunk_simple",
    )

    def __init__(self, index: int, log: PartitionLog, floor: int) -> None:
        self.index = index
        self.log = log
        self.floor = floor
        self.done = RangeSet()
        self.cursor = floor
        self.ahead: deque[BatchView] = deque()
        self.inflight: dict[int, Lease] = {}
        self.prev: dict[int, int] = {}
        self.prios: dict[int, int] = {}  # offset -> priority, for in-flight/retrying prio > 0
        self.keyof: dict[int, bytes] = {}  # key_ordered: offset -> key of in-flight/queued ones
        self.alias: dict[int, str] = {}  # offset -> delay-store id, for released delayed messages
        self.recount_upto = 0  # offsets below may have `prev` entries: no fast path there
        self.scan = floor  # shared mode: offsets below were examined for priorities
        self.lanes: list[array[int]] = [array("q") for _ in range(10)]
        self.lane_heads = [0] * 10
        self.owner: Member | None = None  # ordered mode
        self.hold_until = 0  # ordered mode: head-of-line backoff (mono µs)
        self.chunk: BatchView | None = None
        self.chunk_bodies: list[bytes] | None = None
        self.chunk_records: list[Record] | None = None
        self.chunk_verdicts: list[bool] | None = None
        self.chunk_simple = False

    # --- progress ------------------------------------------------------------------------

    def is_done(self, offset: int) -> bool:
        return offset < self.floor or offset in self.done

    def mark_done(self, runs: list[int]) -> None:
        """Add flat runs ``[s0, e0, s1, e1, ...]`` to the done set and raise the floor."""
        done = self.done
        for i in range(0, len(runs), 2):
            done.add(runs[i], runs[i + 1])
        self.floor = done.advance_floor(self.floor)

    def mark_not_done(self, offset: int) -> None:
        """Take ``offset`` out of the done set, lowering the floor if it was below it (recovery:
        the message's dead letter is not in its dead-letter topic). O(intervals)."""
        done = self.done
        if offset < self.floor:
            done.add(offset + 1, self.floor)
            self.floor = offset
        elif offset in done:
            flat = done.flat()
            done.clear()
            for i in range(0, len(flat), 2):
                start, end = flat[i], flat[i + 1]
                done.add(start, min(end, offset))
                done.add(max(start, offset + 1), end)

    def rewind(self, offset: int) -> None:
        """Move the read cursor back to ``offset`` (ordered redelivery, reset)."""
        if offset < self.cursor:
            self.recount_upto = max(self.recount_upto, self.cursor)
            self.cursor = offset
            self.drop_read_ahead()

    def drop_read_ahead(self) -> None:
        self.ahead.clear()
        self.chunk = None
        self.chunk_bodies = self.chunk_records = self.chunk_verdicts = None

    def reset(self, floor: int) -> None:
        """Forget all progress; the next message is ``floor``."""
        self.floor = self.cursor = self.scan = floor
        self.done.clear()
        self.inflight.clear()
        self.prev.clear()
        self.prios.clear()
        self.keyof.clear()
        self.alias.clear()
        self.recount_upto = 0
        self.lanes = [array("q") for _ in range(10)]
        self.lane_heads = [0] * 10
        self.hold_until = 0
        self.drop_read_ahead()

    def lane_pending(self) -> bool:
        heads = self.lane_heads
        return any(len(lane) > heads[p] for p, lane in enumerate(self.lanes))

    # --- reading -------------------------------------------------------------------------

    def next_view(self, offset: int) -> BatchView | None:
        """The batch holding ``offset`` from the read-ahead (refilled from the log), or None."""
        ahead = self.ahead
        while ahead and ahead[0].last_offset < offset:
            ahead.popleft()
        if not ahead:
            if offset >= self.log.end_offset:
                return None
            ahead.extend(self.log.read(offset, max_bytes=READ_AHEAD_BYTES))
            while ahead and ahead[0].last_offset < offset:
                ahead.popleft()
            if not ahead:
                return None
        view = ahead[0]
        return view if view.base_offset <= offset else None

    def read_offsets(self, offsets: list[int]) -> list[tuple[int, BatchView, Record]]:
        """``(offset, view, record)`` for each of the ascending ``offsets`` still in the log."""
        out: list[tuple[int, BatchView, Record]] = []
        log = self.log
        i = 0
        n = len(offsets)
        while i < n:
            off = offsets[i]
            if off < log.start_offset or off >= log.end_offset:
                i += 1
                continue
            views = log.read(off, max_records=max(1, offsets[-1] - off + 1))
            progressed = False
            for view in views:
                if view.last_offset < off:
                    continue
                records = view.records()
                base = view.base_offset
                while i < n and offsets[i] <= view.last_offset:
                    o = offsets[i]
                    if o >= base:
                        out.append((o, view, records[o - base]))
                    i += 1
                    progressed = True
                if i >= n:
                    break
                off = offsets[i]
            if not progressed:
                i += 1  # the log has no batch for this offset (trimmed): skip it
        return out
