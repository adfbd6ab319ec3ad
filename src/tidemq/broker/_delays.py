"""The delay store of a topic (SPEC §4).

A message whose ``deliver_at`` is in the future is appended at once to the topic's own delay log
(``<topic>/__delay``), not to a partition, so a long delay never pins partition segments against
retention. Its id is ``make_id(topic, incarnation, DELAY_PARTITION, seq)`` (``seq`` = its offset in
the delay log) and it keeps that id when it is delivered: on release the broker appends it to a
partition with the hidden header ``x-tidemq-id`` set to that id.

Pending messages are indexed in memory by :class:`DelayIndex` (16 bytes an entry). The index is
derived: on recovery it is rebuilt from the delay log's deliver-at column minus the released set
(snapshot + journal). The log is trimmed by whole segments below the smallest pending sequence.

Release is at-least-once across a crash: a message appended to its partition whose ``dr`` journal
event was lost is released again after recovery (same id, a second offset).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from ..storage import BatchView, PartitionLog, Record
from ._delay_index import DelayIndex

__all__ = ["DelayStore"]


class DelayStore:
    """Delay log + packed index + the released sequences not yet covered by a snapshot floor."""

    __slots__ = ("log", "index", "_released")

    def __init__(self, log: PartitionLog) -> None:
        self.log = log
        self.index = DelayIndex()
        # Released seqs since the last snapshot (8 bytes each; compacted at snapshot time).
        self._released: array[int] = array("q")

    def __len__(self) -> int:
        return len(self.index)

    def add(self, records: list[Record], now_us: int) -> tuple[int, int]:
        """Append delayed records as one batch; returns (first seq, log position)."""
        res = self.log.append_records(records, now_us)
        base = res.base_offset
        add = self.index.add
        for i, r in enumerate(records):
            add(r.deliver_at_us, base + i)
        return base, res.position

    def next_due(self) -> int | None:
        return self.index.next_due()

    def pop_due(self, now_us: int, limit: int) -> list[tuple[int, Record]]:
        """Remove up to ``limit`` due messages from the index: ``(seq, record)`` in due order.

        The caller appends them to partitions and then journals :meth:`released` for them.
        """
        _, seqs = self.index.pop_due(now_us, limit)
        if not seqs:
            return []
        out: list[tuple[int, Record]] = []
        cache: dict[int, tuple[BatchView, list[Record]]] = {}
        # A few releases decode only their own record; a burst decodes whole batches once.
        whole = len(seqs) > 16
        for seq in seqs:
            rec = self._record(seq, cache, whole)
            if rec is not None:
                out.append((seq, rec))
        return out

    def _record(self, seq: int, cache: dict[int, tuple[BatchView, list[Record]]],
                whole: bool) -> Record | None:
        for view, recs in cache.values():
            if view.base_offset <= seq <= view.last_offset:
                return recs[seq - view.base_offset]
        views = self.log.read(seq, max_records=1, max_bytes=1)
        for view in views:
            if view.base_offset <= seq <= view.last_offset:
                if not whole:
                    return view.record(seq - view.base_offset)
                if len(cache) > 64:
                    cache.clear()
                recs = view.records()
                cache[view.base_offset] = (view, recs)
                return recs[seq - view.base_offset]
        return None  # trimmed or skipped as corrupt: nothing to release

    def released(self, seqs: Iterable[int]) -> None:
        self._released.extend(seqs)

    def floor(self) -> int:
        """Every seq below this is released (the smallest pending seq, or the log end)."""
        m = self.index.min_seq()
        return self.log.end_offset if m is None else m

    def snapshot(self) -> dict[str, object]:
        """Released seqs at or above the floor (the only ones recovery cannot infer)."""
        floor = self.floor()
        rel = sorted({s for s in self._released if s >= floor})
        self._released = array("q", rel)
        return {"floor": floor, "released": array("q", rel).tobytes()}

    def recover(self, snap: dict[str, object] | None, journal_released: Iterable[int]) -> None:
        """Rebuild the index from the log: every seq not released is pending."""
        floor = 0
        released: set[int] = set()
        if snap:
            floor = int(snap.get("floor", 0))  # type: ignore[call-overload]
            raw = snap.get("released", b"")
            if isinstance(raw, bytes | bytearray):
                released.update(array("q", raw))
        released.update(journal_released)
        self._released = array("q", sorted(released))
        offset = max(floor, self.log.start_offset)
        end = self.log.end_offset
        add = self.index.add
        while offset < end:
            views = self.log.read(offset, max_records=10_000, max_bytes=16 << 20)
            if not views:
                break
            for view in views:
                base = view.base_offset
                for i, due in enumerate(view.deliver_ats()):
                    seq = base + i
                    if seq >= offset and seq not in released:
                        add(due, seq)
                offset = view.last_offset + 1

    def trim(self, now_us: int) -> int:
        """Delete whole delay-log segments below the smallest pending message."""
        return self.log.apply_retention(now_us, keep_from=self.floor())
