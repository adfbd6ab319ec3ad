"""A set of integers kept as sorted, disjoint, non-adjacent half-open intervals.

Consumer progress is "every offset below the floor, plus these ranges above it". Acks arrive
mostly in order, so the set stays a handful of intervals however many messages are acked:
memory follows the number of *gaps*, never the number of messages.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

__all__ = ["RangeSet", "runs_of"]


def runs_of(sorted_values: Iterable[int]) -> list[int]:
    """Flat ``[start0, end0, start1, end1, ...]`` of the runs in ascending ``sorted_values``."""
    out: list[int] = []
    start = end = -1
    for v in sorted_values:
        if v == end:
            end = v + 1
        elif v > end:
            if end >= 0:
                out += (start, end)
            start, end = v, v + 1
        # v < end: a duplicate
    if end >= 0:
        out += (start, end)
    return out


class RangeSet:
    """Sorted disjoint intervals ``[start, end)``; adjacent intervals are merged.

    Not thread-safe. Every operation is O(log n + intervals touched).
    """

    __slots__ = ("_starts", "_ends")

    def __init__(self, flat: Iterable[int] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        it = iter(flat)
        for start in it:
            self.add(start, next(it))

    def __len__(self) -> int:
        """Number of intervals (not of integers)."""
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __contains__(self, x: int) -> bool:
        i = bisect_right(self._starts, x) - 1
        return i >= 0 and x < self._ends[i]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def flat(self) -> list[int]:
        out: list[int] = []
        for s, e in zip(self._starts, self._ends, strict=True):
            out += (s, e)
        return out

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)`` (no-op when empty)."""
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        # Intervals that overlap or touch [start, end): indexes lo .. hi-1.
        lo = bisect_left(ends, start)
        hi = bisect_right(starts, end)
        if lo < hi:
            start = min(start, starts[lo])
            end = max(end, ends[hi - 1])
            del starts[lo:hi], ends[lo:hi]
        starts.insert(lo, start)
        ends.insert(lo, end)

    def add_runs(self, flat: list[int]) -> None:
        for i in range(0, len(flat), 2):
            self.add(flat[i], flat[i + 1])

    def overlaps(self, start: int, end: int) -> bool:
        """True when some integer of ``[start, end)`` is in the set."""
        if start >= end:
            return False
        i = bisect_right(self._starts, end - 1) - 1
        return i >= 0 and self._ends[i] > start

    def count_in(self, start: int, end: int) -> int:
        """How many integers of ``[start, end)`` are in the set."""
        total = 0
        i = max(bisect_right(self._starts, start) - 1, 0)
        starts, ends = self._starts, self._ends
        while i < len(starts) and starts[i] < end:
            total += max(0, min(end, ends[i]) - max(start, starts[i]))
            i += 1
        return total

    def gaps(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The maximal sub-intervals of ``[start, end)`` not in the set, ascending."""
        starts, ends = self._starts, self._ends
        i = max(bisect_right(starts, start) - 1, 0)
        pos = start
        while pos < end:
            while i < len(starts) and ends[i] <= pos:
                i += 1
            if i == len(starts) or starts[i] >= end:
                yield pos, end
                return
            if starts[i] > pos:
                yield pos, starts[i]
            pos = ends[i]

    def next_missing(self, x: int) -> int:
        """The smallest integer ``>= x`` not in the set."""
        i = bisect_right(self._starts, x) - 1
        if i >= 0 and x < self._ends[i]:
            return self._ends[i]
        return x

    def advance_floor(self, floor: int) -> int:
        """Drop intervals below ``floor``; return the new floor (raised past a leading interval)."""
        starts, ends = self._starts, self._ends
        n = 0
        while n < len(starts) and starts[n] <= floor:
            floor = max(floor, ends[n])
            n += 1
        if n:
            del starts[:n], ends[:n]
        return floor

    def clip(self, limit: int) -> None:
        """Remove every integer ``>= limit``."""
        starts, ends = self._starts, self._ends
        i = bisect_left(starts, limit)
        del starts[i:], ends[i:]
        if ends and ends[-1] > limit:
            ends[-1] = limit

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
