"""The packed delay index: due order, bounded buckets, refill across coarse/fine levels."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq.broker._delay_index import COARSE_SHIFT, DelayIndex


def drain(ix: DelayIndex, now: int) -> list[tuple[int, int]]:
    dues, seqs = ix.pop_due(now, 10**9)
    return list(zip(dues, seqs, strict=True))


def test_empty_index() -> None:
    ix = DelayIndex()
    assert ix.next_due() is None
    assert ix.pop_due(10**15, 10) == ([], [])
    assert len(ix) == 0
    assert ix.min_seq() is None


def test_pops_only_due_entries_in_due_order() -> None:
    ix = DelayIndex()
    base = 1_700_000_000_000_000
    ix.add(base + 3_000_000, 1)
    ix.add(base + 1_000_000, 2)
    ix.add(base + 2_000_000, 3)
    assert ix.next_due() == base + 1_000_000
    assert drain(ix, base + 2_000_000) == [(base + 1_000_000, 2), (base + 2_000_000, 3)]
    assert len(ix) == 1
    assert ix.next_due() == base + 3_000_000
    assert drain(ix, base + 2_999_999) == []
    assert drain(ix, base + 3_000_000) == [(base + 3_000_000, 1)]
    assert ix.next_due() is None


def test_limit_bounds_a_pop() -> None:
    ix = DelayIndex()
    for i in range(10):
        ix.add(100 + i, i)
    dues, seqs = ix.pop_due(1000, 4)
    assert seqs == [0, 1, 2, 3]
    assert len(ix) == 6


def test_insert_into_head_and_past_keeps_order() -> None:
    ix = DelayIndex()
    base = 5 << COARSE_SHIFT
    ix.add(base + 500, 1)
    assert ix.next_due() == base + 500  # head now holds this fine bucket
    ix.add(base + 100, 2)  # earlier, same bucket: goes into the sorted head
    ix.add(base - 10**9, 3)  # in the past
    ix.add(base + (3 << COARSE_SHIFT), 4)  # far future: coarse bucket
    assert drain(ix, base + 1000) == [(base - 10**9, 3), (base + 100, 2), (base + 500, 1)]
    assert ix.next_due() == base + (3 << COARSE_SHIFT)
    assert ix.min_seq() == 0  # a lower bound within 4096 of seq 4


def test_far_and_near_entries_span_months() -> None:
    ix = DelayIndex()
    rng = random.Random(7)
    now = 1_700_000_000_000_000
    month = 30 * 24 * 3600 * 1_000_000
    entries = [(now + rng.randrange(month * 3), i) for i in range(5000)]
    for d, s in entries:
        ix.add(d, s)
    assert ix.min_seq() == 0
    assert len(ix._coarse) + len(ix._fine) < 5000  # buckets, not entries
    got = drain(ix, now + month * 3)
    assert got == sorted(entries)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1 << 40), st.booleans()), max_size=200),
       st.lists(st.integers(0, 1 << 40), max_size=8))
def test_matches_a_sorted_reference(ops: list[tuple[int, bool]], pops: list[int]) -> None:
    ix = DelayIndex()
    ref: list[tuple[int, int]] = []
    clock = 0
    pops_iter = iter(sorted(pops))
    for seq, (due, pop_now) in enumerate(ops):
        ix.add(due, seq)
        ref.append((due, seq))
        if pop_now:
            clock = max(clock, next(pops_iter, clock))
            got = drain(ix, clock)
            want = sorted(e for e in ref if e[0] <= clock)
            assert sorted(got) == want
            assert [d for d, _ in got] == sorted(d for d, _ in got)
            ref = [e for e in ref if e[0] > clock]
        assert len(ix) == len(ref)
        assert ix.next_due() == (min(ref)[0] if ref else None)
    assert sorted(drain(ix, 1 << 41)) == sorted(ref)
