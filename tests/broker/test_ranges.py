"""RangeSet against a plain set of integers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq.broker._ranges import RangeSet, runs_of


def members(rs: RangeSet) -> set[int]:
    return {x for s, e in rs for x in range(s, e)}


def test_add_merges_touching_and_overlapping() -> None:
    rs = RangeSet()
    rs.add(5, 7)
    rs.add(1, 3)
    rs.add(3, 5)  # touches both sides
    assert list(rs) == [(1, 7)]
    rs.add(10, 12)
    rs.add(0, 11)
    assert list(rs) == [(0, 12)]
    rs.add(4, 4)
    assert len(rs) == 1


def test_floor_gaps_and_counts() -> None:
    rs = RangeSet([2, 4, 6, 9])
    assert rs.advance_floor(0) == 0
    assert rs.advance_floor(2) == 4 and list(rs) == [(6, 9)]
    assert list(rs.gaps(3, 12)) == [(3, 6), (9, 12)]
    assert rs.count_in(0, 7) == 1 and rs.overlaps(8, 20) and not rs.overlaps(0, 6)
    assert rs.next_missing(6) == 9 and rs.next_missing(5) == 5
    rs.clip(7)
    assert list(rs) == [(6, 7)]


def test_runs_of() -> None:
    assert runs_of([]) == []
    assert runs_of([1, 2, 3, 5, 5, 6, 9]) == [1, 4, 5, 7, 9, 10]


ops = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(ops, st.integers(0, 70), st.integers(0, 70), st.integers(0, 70))
def test_matches_a_set_model(adds: list[tuple[int, int]], a: int, b: int, floor: int) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for start, length in adds:
        rs.add(start, start + length)
        model |= set(range(start, start + length))
    assert members(rs) == model
    starts = [s for s, _ in rs]
    ends = [e for _, e in rs]
    assert all(e < s for e, s in zip(ends, starts[1:], strict=False))  # disjoint, not touching
    lo, hi = min(a, b), max(a, b)
    assert rs.count_in(lo, hi) == len(model & set(range(lo, hi)))
    assert rs.overlaps(lo, hi) == bool(model & set(range(lo, hi)))
    assert {x for s, e in rs.gaps(lo, hi) for x in range(s, e)} == set(range(lo, hi)) - model
    assert all(x in rs for x in model) and not any(x in rs for x in set(range(80)) - model)
    expected_floor = floor
    while expected_floor in model:
        expected_floor += 1
    assert rs.advance_floor(floor) == expected_floor
    assert members(rs) == {x for x in model if x >= expected_floor}
    assert rs.flat() == runs_of(sorted(members(rs)))
