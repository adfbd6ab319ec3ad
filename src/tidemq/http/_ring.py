"""The admin page's overview: totals sampled every few seconds into a ring of ~15 minutes.

Sans-IO: :meth:`Ring.add` takes the time and the totals; the HTTP API's timer feeds it. Rates
are differences between neighbouring samples; the fsync p99 comes from the histogram's bucket
counts between the oldest and the newest sample (an upper bound: the bucket's bound).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._types import Sample

__all__ = ["Ring", "Totals"]


@dataclass(frozen=True, slots=True)
class Totals:
    at: float  # epoch seconds
    published: int
    delivered: int
    acked: int
    dead_lettered: int
    fsync_counts: tuple[int, ...]  # per bucket, +Inf last


class Ring:
    """The last ``window`` seconds of totals, one every ``interval`` seconds."""

    def __init__(self, interval: float = 5.0, window: float = 900.0) -> None:
        self.interval = interval
        self.window = window
        self._samples: deque[Totals] = deque(maxlen=max(2, int(window / interval) + 1))

    def add(self, totals: Totals) -> None:
        self._samples.append(totals)

    def rates(self, current: Totals | None = None) -> list[Sample]:
        """Rates between neighbouring samples; with ``current`` (the totals now) one more,
        from the last sample to now, when at least a second has passed since it."""
        out: list[Sample] = []
        prev: Totals | None = None
        samples = list(self._samples)
        if current is not None and samples and current.at - samples[-1].at >= 1.0:
            samples.append(current)
        for t in samples:
            if prev is not None and t.at > prev.at:
                dt = t.at - prev.at
                out.append(Sample(
                    at=t.at, published_per_s=max(0, t.published - prev.published) / dt,
                    delivered_per_s=max(0, t.delivered - prev.delivered) / dt,
                    acked_per_s=max(0, t.acked - prev.acked) / dt,
                    dead_lettered_per_s=max(0, t.dead_lettered - prev.dead_lettered) / dt))
            prev = t
        return out

    def fsync_p99(self, bounds: tuple[float, ...], now: tuple[int, ...]) -> float | None:
        """p99 of the fsyncs since the oldest sample (``now``: the counts at this moment);
        None when there were none. A value past the last bound is reported as that bound."""
        first = self._samples[0].fsync_counts if self._samples else tuple(0 for _ in now)
        if len(first) != len(now):
            first = tuple(0 for _ in now)
        diff = [max(0, b - a) for a, b in zip(first, now, strict=True)]
        total = sum(diff)
        if total == 0:
            return None
        need = 0.99 * total
        seen = 0
        for i, c in enumerate(diff):
            seen += c
            if seen >= need:
                return bounds[min(i, len(bounds) - 1)]
        return bounds[-1]
