"""Start positions of a consumer group (SPEC §3): where a new or reset group begins."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import InvalidArgument
from ._types import StartPosition

if TYPE_CHECKING:
    from ..storage import PartitionLog

__all__ = ["resolve_start"]


def resolve_start(start: StartPosition, logs: Sequence[PartitionLog]) -> list[int]:
    """The first offset of each partition for a start position (SPEC §3); InvalidArgument if bad.

    ``"earliest"``, ``"latest"``, an int (every partition, clamped to the log), ``{partition:
    offset}`` (unnamed partitions: earliest) or ``{"timestamp": epoch_seconds}``.
    """
    out: list[int] = []
    if start == "earliest":
        return [log.start_offset for log in logs]
    if start == "latest":
        return [log.end_offset for log in logs]
    if isinstance(start, int) and not isinstance(start, bool):
        return [min(max(start, log.start_offset), log.end_offset) for log in logs]
    if isinstance(start, dict):
        if set(start) == {"timestamp"}:
            ts = start["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, int | float):
                raise InvalidArgument(f"start timestamp {ts!r} must be epoch seconds")
            ts_us = int(ts * 1_000_000)
            for log in logs:
                hit = log.offset_for_time(ts_us)
                out.append(log.end_offset if hit is None else max(hit, log.start_offset))
            return out
        try:
            wanted = {int(p): int(o) for p, o in start.items()}
        except (TypeError, ValueError):
            raise InvalidArgument(
                f"start {start!r}: use {{partition: offset}} or {{'timestamp': seconds}}"
            ) from None
        for p, log in enumerate(logs):
            o = wanted.get(p, log.start_offset)
            out.append(min(max(o, log.start_offset), log.end_offset))
        return out
    raise InvalidArgument(
        f"start {start!r} must be 'earliest', 'latest', an offset, {{partition: offset}} "
        "or {'timestamp': epoch_seconds}"
    )

