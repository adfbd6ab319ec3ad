"""Dedup ids and idempotent producers (SPEC §2): state that turns a retried publish into a no-op.

Both tables are rebuilt on recovery from the topic's snapshot and journal, and both are clamped to
the log (an entry naming an offset the log no longer has is dropped: its data was lost in a crash,
so a retry must store it again).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument

__all__ = ["DedupTable", "ProducerTable", "ProducerBatch", "IdsRepr"]

# How a stored batch's ids are remembered: (partition, base_offset, count) for a batch appended
# as one unit, or the explicit id list when the broker split it (delays, dedup).
IdsRepr = tuple[int, int, int] | list[str]

RECENT_BATCHES = 5  # retried batches recognised per producer and partition (Kafka keeps 5)


class DedupTable:
    """dedup_id -> (first message id, expiry µs); expires in insertion order (one window per topic)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, dedup_id: str, now_us: int) -> str | None:
        hit = self._entries.get(dedup_id)
        if hit is None or hit[1] <= now_us:
            return None
        return hit[0]

    def put(self, dedup_id: str, message_id: str, expires_us: int) -> None:
        self._entries[dedup_id] = (message_id, expires_us)
        self._entries.move_to_end(dedup_id)

    def expire(self, now_us: int) -> int:
        n = 0
        entries = self._entries
        while entries:
            key, (_, exp) = next(iter(entries.items()))
            if exp > now_us:
                break
            entries.popitem(last=False)
            n += 1
        return n

    def drop_if(self, pred: Any) -> None:
        for k in [k for k, (mid, _) in self._entries.items() if pred(mid)]:
            del self._entries[k]

    def dump(self) -> list[list[Any]]:
        return [[k, mid, exp] for k, (mid, exp) in self._entries.items()]

    def load(self, rows: list[list[Any]]) -> None:
        for k, mid, exp in rows:
            self.put(k, mid, exp)


@dataclass(slots=True)
class ProducerBatch:
    base_sequence: int
    count: int
    ids: IdsRepr


@dataclass(slots=True)
class _Producer:
    epoch: int
    last_sequence: int
    last_used_us: int
    recent: list[ProducerBatch] = field(default_factory=list)


class ProducerTable:
    """Per (partition, producer id): epoch, last sequence and the last few batches' ids.

    ``check`` before storing a producer's batch: it returns the original ids of a retried batch
    (store nothing), ``None`` for a new one, and raises :class:`InvalidArgument` for a fenced
    epoch or a sequence that goes backwards without matching a recent batch.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], _Producer] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, partition: int, pid: int, epoch: int, base_seq: int, count: int) -> IdsRepr | None:
        st = self._entries.get((partition, pid))
        if st is None or epoch > st.epoch:
            return None
        if epoch < st.epoch:
            raise InvalidArgument(
                f"producer {pid} epoch {epoch} is fenced by epoch {st.epoch}; restart the producer"
            )
        for b in st.recent:
            if b.base_sequence == base_seq and b.count == count:
                return b.ids
        if base_seq <= st.last_sequence:
            raise InvalidArgument(
                f"producer {pid} sequence {base_seq} on partition {partition} is older than "
                f"{st.last_sequence} and matches no recent batch; restart the producer"
            )
        return None

    def record(self, partition: int, pid: int, epoch: int, base_seq: int, count: int,
               ids: IdsRepr, now_us: int) -> None:
        key = (partition, pid)
        st = self._entries.get(key)
        if st is None or epoch != st.epoch:
            st = self._entries[key] = _Producer(epoch, -1, now_us)
        st.last_sequence = max(st.last_sequence, base_seq + count - 1)
        st.last_used_us = now_us
        st.recent.append(ProducerBatch(base_seq, count, ids))
        if len(st.recent) > RECENT_BATCHES:
            del st.recent[0]

    def expire(self, now_us: int, idle_us: int) -> int:
        dead = [k for k, st in self._entries.items() if st.last_used_us + idle_us <= now_us]
        for k in dead:
            del self._entries[k]
        return len(dead)

    def clamp(self, partition_ends: list[int], delay_end: int) -> None:
        """Forget batches whose data is not in the log (lost in a crash): a retry stores them."""
        for key, st in list(self._entries.items()):
            part = key[0]
            kept = [b for b in st.recent if _present(b.ids, part, partition_ends, delay_end)]
            if len(kept) != len(st.recent):
                st.recent = kept
                st.last_sequence = max((b.base_sequence + b.count - 1 for b in kept), default=-1)
                if not kept:
                    del self._entries[key]

    def dump(self) -> list[list[Any]]:
        out: list[list[Any]] = []
        for (part, pid), st in self._entries.items():
            for b in st.recent:
                out.append([part, pid, st.epoch, b.base_sequence, b.count, _ids_out(b.ids), st.last_used_us])
        return out

    def load(self, rows: list[list[Any]]) -> None:
        for part, pid, epoch, base, count, ids, used in rows:
            self.record(part, pid, epoch, base, count, _ids_in(ids), used)


def _ids_out(ids: IdsRepr) -> Any:
    return list(ids) if isinstance(ids, tuple) else {"ids": ids}


def _ids_in(raw: Any) -> IdsRepr:
    if isinstance(raw, dict):
        return list(raw["ids"])
    p, base, count = raw
    return (int(p), int(base), int(count))


def _present(ids: IdsRepr, part: int, ends: list[int], delay_end: int) -> bool:
    if isinstance(ids, tuple):
        p, base, count = ids
        return p < len(ends) and base + count <= ends[p]
    from ._ids import DELAY_PARTITION, parse_id

    for mid in ids:
        ref = parse_id(mid)
        end = delay_end if ref.partition == DELAY_PARTITION else (
            ends[ref.partition] if ref.partition < len(ends) else 0)
        if ref.offset >= end:
            return False
    return True


ids_out = _ids_out
ids_in = _ids_in
