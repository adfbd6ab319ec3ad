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
from ._idempotence import ids_in, ids_out
from ._ids import DELAY_PARTITION, parse_id
from ._journal import decode
from ._limits import ID_HEADER
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
    released_at: list[tuple[int, int, int]] = []  # (seq, partition, offset) of "dr" events
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
                _replay(t, ev, group_base, group_events, released, released_at)
    released += _copies_present(t, released_at)
    found = _recover_producers(t, ends_seen)
    if found:
        # Released copies the journal did not know: journal their release now (with the
        # producer and dedup entries found the same way, see _recognise*), or the next
        # recovery, rescanning only after newer records' ends, would release them again.
        released += [seq for seq, _p, _o in found]
        t.events.append(["dr", [seq for seq, _p, _o in found],
                         [x for _s, p, o in found for x in (p, o)]])
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

def _copies_present(t: Topic, released_at: list[tuple[int, int, int]]) -> list[int]:
    """The journaled releases whose copy is really in its partition (J1 against the OS: the
    journal may have been written back before the data). A release whose copy is gone is not
    counted: the message stays pending in the delay store and is released again (not lost)."""
    out: list[int] = []
    by_part: dict[int, list[tuple[int, int]]] = {}
    for seq, part, off in released_at:
        by_part.setdefault(part, []).append((off, seq))
    for part, wanted in by_part.items():
        if part >= len(t.logs):
            continue
        log = t.logs[part]
        wanted.sort()
        want = {off: seq for off, seq in wanted}
        offset = max(wanted[0][0], log.start_offset)
        last = wanted[-1][0]
        while offset <= last and offset < log.end_offset:
            views = log.read(offset, max_records=10_000, max_bytes=16 << 20)
            if not views:
                break
            for v in views:
                if v.last_offset < offset or not v.attributes & HAS_EXT:
                    continue
                for i, (_k, _rk, headers, _d) in enumerate(v.extensions()):
                    expected = want.get(v.base_offset + i)
                    if (expected is not None and headers
                            and _delay_seq(headers.get(ID_HEADER)) == expected):
                        out.append(expected)
            offset = views[-1].last_offset + 1
    if len(out) < len(released_at):
        # Trimmed by retention (below start_offset) counts as present: it was delivered.
        present = set(out)
        out += [seq for seq, part, off in released_at
                if seq not in present and part < len(t.logs) and off < t.logs[part].start_offset]
    return out


def _delay_seq(mid: str | None) -> int | None:
    """The delay-store sequence named by a message id ``<topic>@<inc>:d:<seq>``, else None."""
    if not mid or ":d:" not in mid:
        return None
    tail = mid.rsplit(":", 1)[1]
    return int(tail) if tail.isdigit() else None


def _recover_producers(t: Topic, journaled_ends: list[int]) -> list[tuple[int, int, int]]:
    """Idempotent-producer and dedup state from the data itself (as Kafka rebuilds producer
    state from batch headers): a batch made durable just before a crash whose journal event
    was not is still recognised when it is sent again, so it is not stored twice. Reads
    each partition from the offset up to which the journal covered it (J3). Returns the
    delay-store sequences whose released copies are there, with where: ``(seq, partition,
    offset)``; their "dr" event may be lost, and releasing them again would store them twice.
    Everything rebuilt here is also queued as journal events (``t.events``), so it stays known
    after the next crash, whose rescan starts after newer records' ends."""
    copies: list[tuple[int, int, int]] = []
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
                    _recognise_dedup(t, part, v, copies)
            offset = views[-1].last_offset + 1
    return copies

def _recognise_dedup(t: Topic, part: int, view: BatchView,
                     copies: list[tuple[int, int, int]]) -> None:
    window_us = int(t.config.dedup_window * 1_000_000)
    rows = []
    for i, (_key, _rk, headers, dedup_id) in enumerate(view.extensions()):
        if headers and ID_HEADER in headers:
            seq = _delay_seq(headers[ID_HEADER])
            if seq is not None:
                copies.append((seq, part, view.base_offset + i))
        if dedup_id is not None and t.dedup.get(dedup_id, view.first_timestamp_us) is None:
            mid = t.ids(part, view.base_offset + i, 1)[0]
            expires = view.first_timestamp_us + window_us
            t.dedup.put(dedup_id, mid, expires)
            rows.append([dedup_id, mid, expires])
    if rows:
        t.events.append(["dd", rows])

def _recognise(t: Topic, part: int, pid: int, epoch: int, seq: int, count: int, base: int,
           ts: int) -> None:
    try:
        known = t.producers.check(part, pid, epoch, seq, count)
    except InvalidArgument:
        return  # older than what the journal holds: nothing to add
    if known is None:
        t.producers.record(part, pid, epoch, seq, count, (part, base, count), ts)
        t.events.append(["pr", part, pid, epoch, seq, count, ids_out((part, base, count)), ts])

def _replay(t: Topic, ev: list[Any], group_base: dict[str, tuple[GroupSettings, Any]],
            group_events: dict[str, list[Any]], released: list[int],
            released_at: list[tuple[int, int, int]]) -> None:
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
        if len(ev) > 2:
            released_at.extend(zip(ev[1], ev[2][0::2], ev[2][1::2], strict=True))
        else:
            released.extend(ev[1])  # an older record: no copy locations to check
    elif kind == "dd":
        t.dedup.load(ev[1])
    elif kind == "pr":
        _, part, pid, epoch, seq, count, ids, used = ev
        t.producers.record(part, pid, epoch, seq, count, ids_in(ids), used)
    elif kind == "rd":
        t.redrive[(ev[1], ev[2], ev[3])] = ev[4]
