"""Durable broker state: a journal log per topic plus snapshots (SPEC §6).

The journal is an ordinary :class:`PartitionLog` (``<topic>/__state``) at the topic's durability.
Each broker call that changes state appends *one* record: a msgpack list of events. Events are
appended after the data they describe (invariant J1: never durable ahead of the log), and
recovery clamps everything to each partition's ``end_offset`` (J2), so a torn data tail can never
leave state that points past it.

A snapshot (planned every few thousand events and at close) holds the whole state as of a journal
offset; recovery loads it and replays only the journal after it, and the journal is trimmed by
whole segments below the snapshot once the snapshot is durable. Snapshots and the topic
catalogue live in the store's :class:`~tidemq.storage.MetaStore`. The broker never writes a
snapshot itself: it returns a :class:`SnapshotJob` (``Topic.plan_snapshot``) that the driver runs
off its loop (J4).

Event kinds (first element):

``["g", group, [group events]]``         GroupState.drain_journal() output
``["gc", group, settings, snapshot]``    group created (snapshot taken at creation: start position)
``["gu", group, settings, snapshot]``    group settings updated
``["gd", group]``                        group deleted
``["dr", [seq, ...]]``                   delayed messages released into their partitions
``["dd", [[dedup_id, id, expires_us], ...]]``
``["pr", partition, pid, epoch, base_sequence, count, ids, now_us]``
``["rd", group, dlq, dlq_partition, next_offset]``  redrive progress (drops the
                                         partition's redriven-by-id offsets below it); ``dlq``
                                         is ``"<dlq key>~<incarnation>"`` (``cursor_key``)
``["ri", group, dlq, dlq_partition, [offset, ...]]``  dead letters redriven by id (at or
                                         after the cursor; the cursor's redrive skips them)
``["ends", [end offset per partition]]``  first in every record: the data logs' ends when it was
                                         appended (J3: producer state is rebuilt from there)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from ..errors import CorruptRecord
from ..storage import PartitionLog, Record

__all__ = ["Journal", "encode", "decode"]

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


class Journal:
    """Appends event lists to a log and reads them back. One thread at a time."""

    __slots__ = ("log", "events_since_snapshot")

    def __init__(self, log: PartitionLog) -> None:
        self.log = log
        self.events_since_snapshot = 0

    def append(self, events: list[Any], now_us: int) -> int:
        """Append ``events`` as one record; returns the log position (for a sync token)."""
        res = self.log.append_records([Record(_enc.encode(events))], now_us)
        self.events_since_snapshot += len(events)
        return res.position

    def replay(self, from_offset: int) -> Iterator[list[Any]]:
        """Event lists from ``from_offset`` (clamped to the log's start) to the end.

        A record that does not decode is skipped: storage already verified its checksum, so it
        can only be a foreign record, and replaying the rest is the least surprising choice.
        """
        offset = max(from_offset, self.log.start_offset)
        end = self.log.end_offset
        while offset < end:
            views = self.log.read(offset, max_records=1000, max_bytes=8 << 20)
            if not views:
                break
            for view in views:
                bodies = view.bodies()
                for i, body in enumerate(bodies):
                    if view.base_offset + i < offset:
                        continue
                    try:
                        events = _dec.decode(body)
                    except msgspec.DecodeError:
                        continue
                    if isinstance(events, list):
                        yield events
                offset = view.last_offset + 1


def encode(obj: Any) -> bytes:
    return _enc.encode(obj)


def decode(data: bytes) -> Any:
    try:
        return _dec.decode(data)
    except msgspec.DecodeError as exc:
        raise CorruptRecord(f"broker metadata does not decode: {exc}") from exc
