"""A packed index of pending delayed messages: due time -> delay-store sequence.

SPEC §4 asks for millions of pending delays with "a small packed index entry" each, so this keeps
no Python object per entry. Entries live in ``array('q')`` pairs (16 bytes an entry) inside a
two-level time wheel:

* *coarse* buckets of 2**32 µs (~72 min) hold everything that is not due soon, unsorted;
* when the earliest coarse bucket comes up it is split into *fine* buckets of 2**20 µs (~1 s);
* the earliest fine bucket is sorted into the *head*, from which due entries are popped.

So the number of bucket objects is bounded by the span of due times in coarse units plus at most
4096 fine buckets, whatever the number of entries, and only one ~1 s bucket is ever sorted at
once. Inserts are O(1) (appends), except into the head (a bisect insert).
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_right

__all__ = ["DelayIndex"]

FINE_SHIFT = 20
COARSE_SHIFT = 32
BLOCK_SHIFT = 12


class DelayIndex:
    """Pending (due_us, seq) pairs, popped in due order. Not thread-safe."""

    __slots__ = (
        "_coarse", "_coarse_heap", "_fine", "_fine_heap", "_fine_limit",
        "_head_due", "_head_seq", "_head_key", "_count", "_blocks",
    )

    def __init__(self) -> None:
        # key -> interleaved [due, seq, due, seq, ...]
        self._coarse: dict[int, array[int]] = {}
        self._coarse_heap: list[int] = []
        self._fine: dict[int, array[int]] = {}
        self._fine_heap: list[int] = []
        # coarse keys <= _fine_limit have been split into fine buckets: new entries go there too
        self._fine_limit = -(1 << 62)
        self._head_due: array[int] = array("q")
        self._head_seq: array[int] = array("q")
        # fine keys <= _head_key go straight into the sorted head
        self._head_key = -(1 << 62)
        self._count = 0
        # Pending count per block of 4096 seqs: a cheap, conservative min_seq (for trimming).
        self._blocks: dict[int, int] = {}

    def __len__(self) -> int:
        return self._count

    def add(self, due_us: int, seq: int) -> None:
        self._count += 1
        blk = seq >> BLOCK_SHIFT
        self._blocks[blk] = self._blocks.get(blk, 0) + 1
        fkey = due_us >> FINE_SHIFT
        if fkey <= self._head_key:
            i = bisect_right(self._head_due, due_us)
            self._head_due.insert(i, due_us)
            self._head_seq.insert(i, seq)
            return
        ckey = due_us >> COARSE_SHIFT
        if ckey <= self._fine_limit:
            self._put(self._fine, self._fine_heap, fkey, due_us, seq)
        else:
            self._put(self._coarse, self._coarse_heap, ckey, due_us, seq)

    def add_many(self, due_us: list[int] | array[int], seqs: range | list[int]) -> None:
        for d, s in zip(due_us, seqs, strict=True):
            self.add(d, s)

    @staticmethod
    def _put(buckets: dict[int, array[int]], heap: list[int], key: int, due: int, seq: int) -> None:
        b = buckets.get(key)
        if b is None:
            b = buckets[key] = array("q")
            heapq.heappush(heap, key)
        b.append(due)
        b.append(seq)

    def next_due(self) -> int | None:
        """The earliest pending due time (µs), or None if nothing is pending."""
        if self._head_due:
            return self._head_due[0]
        if not self._refill():
            return None
        return self._head_due[0]

    def pop_due(self, now_us: int, limit: int) -> tuple[list[int], list[int]]:
        """Remove and return up to ``limit`` entries due at or before ``now_us``, earliest first:
        ``(due times, seqs)``."""
        dues: list[int] = []
        seqs: list[int] = []
        while len(seqs) < limit:
            if not self._head_due and not self._refill():
                break
            hd = self._head_due
            n = min(bisect_right(hd, now_us), limit - len(seqs))
            if n == 0:
                break
            dues.extend(hd[:n])
            seqs.extend(self._head_seq[:n])
            del hd[:n]
            del self._head_seq[:n]
        self._count -= len(seqs)
        blocks = self._blocks
        for s in seqs:
            blk = s >> BLOCK_SHIFT
            left = blocks[blk] - 1
            if left:
                blocks[blk] = left
            else:
                del blocks[blk]
        return dues, seqs

    def min_seq(self) -> int | None:
        """A lower bound of the smallest pending sequence, within 4096 of it (None: nothing
        pending). O(pending / 4096): cheap enough for every maintenance pass."""
        if not self._blocks:
            return None
        return min(self._blocks) << BLOCK_SHIFT

    def _refill(self) -> bool:
        """Sort the next fine bucket into the (empty) head; False when nothing is pending."""
        while not self._fine_heap:
            if not self._coarse_heap:
                return False
            ckey = heapq.heappop(self._coarse_heap)
            entries = self._coarse.pop(ckey)
            self._fine_limit = ckey
            for i in range(0, len(entries), 2):
                d = entries[i]
                self._put(self._fine, self._fine_heap, d >> FINE_SHIFT, d, entries[i + 1])
        fkey = heapq.heappop(self._fine_heap)
        entries = self._fine.pop(fkey)
        self._head_key = fkey
        dues = entries[0::2]
        seqs = entries[1::2]
        order = sorted(range(len(dues)), key=dues.__getitem__)
        self._head_due = array("q", [dues[i] for i in order])
        self._head_seq = array("q", [seqs[i] for i in order])
        return True
