"""Recovery of one topic's durable state: its snapshot, the journal after it, and the data
itself (SPEC §6; invariants J2 and J3 in :mod:`tidemq.broker`).

Order: load the snapshot; replay the journal records after its offset (each record begins with
the data logs' ends when it was appended, J3); rebuild idempotent-producer and dedup state from
the data after the last surviving record's ends (a batch durable before its journal event is
still recognised when resent); recover the delay store; drop state that names offsets past a
(torn) log end and restore each group clamped to its logs (J2).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..errors import CorruptRecord, InvalidArgument
from ..storage import BatchView
from ..storage._format import HAS_EXT
from ._group import GroupState
from ._idempotence import ids_in
from ._ids import DELAY_PARTITION, parse_id
from ._journal import decode
from ._topic import Topic
from ._types import GroupSettings

__all__ = ["recover_topic"]


def settings_in(raw: Any) -> GroupSettings:
    try:
        return msgspec.convert(raw, GroupSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise CorruptRecord(f"stored group settings do not decode: {exc}") from exc


def recover_topic(t: Topic, now_us: int) -> None:
    """Load the snapshot, replay the journal tail, clamp everything to the logs (J2)."""
    raw = t.meta.get(t.snapshot_name)
    snap: dict[str, Any] = decode(raw) if raw else {}
    group_base: dict[str, tuple[GroupSettings, Any]] = {
        name: (settings_in(s), gs) for name, (s, gs) in snap.get("groups", {}).items()
    }
    group_events: dict[str, list[Any]] = {name: [] for name in group_base}
    released: list[int] = []
    t.dedup.load(snap.get("dedup", []))
    t.producers.load(snap.get("producers", []))
    for g, d, p, off in snap.get("redrive", []):
        t.redrive[(g, d, p)] = off
    # J3: rescan the data from the ends the last surviving journal record (or the
    # snapshot) names; before them every batch's producer and dedup events are journaled.
    # Snapshots and records of older versions name no ends: rescan whole logs then.
    ends_seen: list[int] = list(snap.get("ends", []))
    for events in t.journal.replay(int(snap.get("journal_offset", 0))):
        for ev in events:
            if ev[0] == "ends":
                ends_seen = list(ev[1])
            else:
                _replay(t, ev, group_base, group_events, released)
    _recover_producers(t, ends_seen)
    ends = [log.end_offset for log in t.logs]
    t.delays.recover(snap.get("delays"), released)
    delay_end = t.delays.log.end_offset

    def lost(mid: str) -> bool:
        ref = parse_id(mid)
        end = delay_end if ref.partition == DELAY_PARTITION else (
            ends[ref.partition] if ref.partition < len(ends) else 0)
        return ref.offset >= end

    t.dedup.drop_if(lost)
    t.producers.clamp(ends, delay_end)
    for name, (settings, gsnap) in group_base.items():
        t.groups[name] = GroupState.restore(
            gsnap, group_events[name], t.name, t.incarnation, name, settings,
            t.logs, now_us=now_us)
    t.last_snapshot_us = now_us

def _recover_producers(t: Topic, journaled_ends: list[int]) -> None:
    """Idempotent-producer and dedup state from the data itself (as Kafka rebuilds producer
    state from batch headers): a batch made durable just before a crash whose journal event
    was not is still recognised when it is sent again, so it is not stored twice. Reads
    each partition from the offset up to which the journal covered it (J3)."""
    for part, log in enumerate(t.logs):
        offset = max(journaled_ends[part] if part < len(journaled_ends) else 0, log.start_offset)
        while offset < log.end_offset:
            views = log.read(offset, max_records=10_000, max_bytes=16 << 20)
            if not views:
                break
            for v in views:
                if v.last_offset < offset:
                    continue
                if v.producer_id >= 0 and v.base_sequence >= 0:
                    _recognise(t, part, v.producer_id, v.producer_epoch, v.base_sequence,
                                    v.count, v.base_offset, v.first_timestamp_us)
                if v.attributes & HAS_EXT:
                    _recognise_dedup(t, part, v)
            offset = views[-1].last_offset + 1

def _recognise_dedup(t: Topic, part: int, view: BatchView) -> None:
    window_us = int(t.config.dedup_window * 1_000_000)
    for i, (_key, _rk, _headers, dedup_id) in enumerate(view.extensions()):
        if dedup_id is not None and t.dedup.get(dedup_id, view.first_timestamp_us) is None:
            mid = t.ids(part, view.base_offset + i, 1)[0]
            t.dedup.put(dedup_id, mid, view.first_timestamp_us + window_us)

def _recognise(t: Topic, part: int, pid: int, epoch: int, seq: int, count: int, base: int,
           ts: int) -> None:
    try:
        known = t.producers.check(part, pid, epoch, seq, count)
    except InvalidArgument:
        return  # older than what the journal holds: nothing to add
    if known is None:
        t.producers.record(part, pid, epoch, seq, count, (part, base, count), ts)

def _replay(t: Topic, ev: list[Any], group_base: dict[str, tuple[GroupSettings, Any]],
        group_events: dict[str, list[Any]], released: list[int]) -> None:
    kind = ev[0]
    if kind == "g":
        if ev[1] in group_events:
            group_events[ev[1]].extend(ev[2])
    elif kind in ("gc", "gu"):
        group_base[ev[1]] = (settings_in(ev[2]), ev[3])
        group_events[ev[1]] = []
    elif kind == "gd":
        group_base.pop(ev[1], None)
        group_events.pop(ev[1], None)
    elif kind == "dr":
        released.extend(ev[1])
    elif kind == "dd":
        t.dedup.load(ev[1])
    elif kind == "pr":
        _, part, pid, epoch, seq, count, ids, used = ev
        t.producers.record(part, pid, epoch, seq, count, ids_in(ids), used)
    elif kind == "rd":
        t.redrive[(ev[1], ev[2], ev[3])] = ev[4]
