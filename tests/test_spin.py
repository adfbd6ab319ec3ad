"""The adaptive spin (``tidemq._spin``): hits keep the budget, misses halve it down to none,
a probe every PROBE_EVERY waits, input just after a miss restores it, 0 never polls."""

from __future__ import annotations

import time

import pytest

from tidemq import _spin, errors
from tidemq._spin import PROBE_EVERY, Spin


def test_a_hit_keeps_the_full_budget() -> None:
    s = Spin(1000)
    calls = iter([False, False, True])
    assert s.wait(lambda: next(calls))
    assert (s.hits, s.misses, s.budget_us) == (1, 0, 1000)


def test_misses_halve_the_budget_down_to_none_then_a_probe_every_so_often() -> None:
    s = Spin(100)
    seen = []
    for _ in range(4):
        assert not s.wait(lambda: False)
        seen.append(s.budget_us)
    assert seen == [50, 25, 12, 0]  # 100 -> 50 -> 25 -> 12 -> none
    polls = 0

    def ready() -> bool:
        nonlocal polls
        polls += 1
        return False

    for _ in range(PROBE_EVERY - 1):
        assert not s.wait(ready)
    assert polls == 0  # no spin at all while the budget is none
    assert not s.wait(ready)  # the probe: the full budget again
    assert polls > 0


def test_input_just_after_a_miss_restores_the_budget_and_late_input_does_not() -> None:
    s = Spin(10_000)
    assert not s.wait(lambda: False)
    assert s.budget_us == 5000
    s.woke()  # at once: the peer was only just late
    assert s.budget_us == 10_000
    assert not s.wait(lambda: False)
    time.sleep(0.05)  # 50 ms > 10 ms: a slow peer
    s.woke()
    assert s.budget_us == 5000


def test_the_limit_caps_a_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(i * 0.0005 for i in range(10_000))  # each clock read: 0.5 ms later
    monkeypatch.setattr(_spin, "_perf", lambda: next(clock))
    monkeypatch.setattr(_spin, "_yield", lambda: None)
    polls = 0

    def ready() -> bool:
        nonlocal polls
        polls += 1
        return False

    assert not Spin(10_000).wait(ready, limit=0.001)
    assert polls == 2  # 1 ms of a 10 ms budget
    polls = 0
    assert not Spin(10_000).wait(ready)
    assert polls == 20


def test_zero_never_polls() -> None:
    s = Spin(0)
    for _ in range(2 * PROBE_EVERY):
        assert not s.wait(lambda: pytest.fail("polled"))  # type: ignore[func-returns-value]
    assert s.hits == s.misses == 0


@pytest.mark.parametrize("bad", [-1, 10_001, 0.5, "1", None])
def test_bad_budgets_are_refused(bad: object) -> None:
    with pytest.raises(errors.InvalidArgument, match="spin_us"):
        Spin(bad)  # type: ignore[arg-type]
