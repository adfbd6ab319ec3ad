"""Decisions shared by the file log and the memory twin, so both behave the same."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tidemq.storage._types import LogConfig

__all__ = ["SegmentInfo", "should_roll", "retention_victims"]


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What retention needs to know about one segment."""

    base_offset: int
    next_offset: int  # one past its last offset
    size: int
    max_timestamp_us: int  # -1 when empty


def should_roll(
    config: LogConfig, size: int, first_ts_us: int | None, batch_size: int, now_us: int
) -> bool:
    """Whether the active segment must be sealed before a batch of ``batch_size`` goes in.

    An empty segment never rolls (a batch larger than ``segment_bytes`` gets a segment of its
    own); age counts from the segment's first batch, on the caller's clock.
    """
    if size == 0:
        return False
    if size + batch_size > config.segment_bytes:
        return True
    return first_ts_us is not None and now_us - first_ts_us >= config.segment_ms * 1000


def retention_victims(
    config: LogConfig,
    sealed: Iterable[SegmentInfo],
    total_size: int,
    now_us: int,
    keep_from: int | None,
) -> int:
    """How many of the oldest ``sealed`` segments (oldest first, active one excluded) to delete.

    Whole segments only, never one holding an offset >= ``keep_from`` (the broker's veto), and
    only while age or size says so. ``sealed`` is consumed lazily and only as far as needed.
    ``total_size`` counts every segment, the active one included.
    """
    if config.retention_ms is None and config.retention_bytes is None:
        return 0
    cutoff = None if config.retention_ms is None else now_us - config.retention_ms * 1000
    victims = 0
    for seg in sealed:
        if keep_from is not None and seg.next_offset > keep_from:
            break
        too_old = cutoff is not None and seg.max_timestamp_us < cutoff
        too_big = (
            config.retention_bytes is not None and total_size - seg.size >= config.retention_bytes
        )
        if not (too_old or too_big):
            break
        total_size -= seg.size
        victims += 1
    return victims
