"""The overview ring: rates between samples, fsync p99 from histogram buckets (sans-IO)."""

from __future__ import annotations

from tidemq.http._ring import Ring, Totals

BOUNDS = (0.001, 0.01, 0.1)


def totals(at: float, n: int, fsync: tuple[int, ...] = (0, 0, 0, 0)) -> Totals:
    return Totals(at=at, published=n, delivered=n // 2, acked=n // 4, dead_lettered=0,
                  fsync_counts=fsync)


def test_rates_and_window() -> None:
    ring = Ring(interval=5, window=15)
    for i in range(10):
        ring.add(totals(100.0 + 5 * i, 1000 * i))
    rates = ring.rates()
    assert len(rates) == 3  # the window keeps 4 samples: 3 intervals
    assert all(r.published_per_s == 200 and r.delivered_per_s == 100 for r in rates)
    assert rates[-1].at == 145.0
    live = ring.rates(totals(145.5, 9000))  # under a second after the last sample: not yet
    assert len(live) == 3
    live = ring.rates(totals(147.0, 9400))
    assert len(live) == 4 and live[-1].published_per_s == 200


def test_fsync_p99_from_buckets() -> None:
    ring = Ring()
    assert ring.fsync_p99(BOUNDS, (0, 0, 0, 0)) is None
    ring.add(totals(0, 0, (10, 0, 0, 0)))
    assert ring.fsync_p99(BOUNDS, (10, 0, 0, 0)) is None  # nothing since the oldest sample
    assert ring.fsync_p99(BOUNDS, (1000, 0, 0, 0)) == 0.001
    assert ring.fsync_p99(BOUNDS, (900, 100, 1, 0)) == 0.01
    assert ring.fsync_p99(BOUNDS, (10, 0, 0, 5)) == 0.1  # past the last bound: that bound
