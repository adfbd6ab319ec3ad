"""Recovery of one topic's durable state: its snapshot, the journal after it, and the data
itself (SPEC §6; invariants J2 and J3 in :mod:`tidemq.broker`).

Order: load the snapshot; replay the journal records after its offset (each record begins with
the data logs' ends when it was appended, J3); check each journaled dead-lettering against the
dead-letter topic's data (a message whose dead letter is not there is pending again); rebuild
idempotent-producer and dedup state from the data after the last surviving record's ends (a
batch durable before its journal event is still recognised when resent); recover the delay
store; drop state that names offsets past a (torn) log end and restore each group clamped to
its logs (J2).

The broker opens every topic's logs before it recovers any topic's state, so a dead-letter
topic's data is known whatever order the topics are recovered in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ..errors import CorruptRecord, InvalidArgument
from ..storage import BatchView, PartitionLog
from ..storage._format import HAS_EXT
from ._deadletters import H_GROUP, H_ID, H_OFFSET, H_PARTITION, H_TOPIC, drop_redriven_below
from ._group import GroupState
from ._idempotence import ids_in, ids_out
from ._ids import DELAY_PARTITION, parse_id
from ._journal import decode
from ._limits import ID_HEADER
from ._topic import Topic
from ._types import GroupSettings

__all__ = ["DeadLetterTopics", "recover_topic"]

# (topic key, incarnation) -> that topic, or None if it is gone (deleted by the user).
DeadLetterTopics = Callable[[str, int], Topic | None]


def settings_in(raw: Any) -> GroupSettings:
    try:
        return msgspec.convert(raw, GroupSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise CorruptRecord(f"stored group settings do not decode: {exc}") from exc


def recover_topic(t: Topic, now_us: int, dead_letter_topic: DeadLetterTopics) -> None:
    """Load the snapshot, replay the journal tail, clamp everything to the logs (J2).

    ``dead_letter_topic`` finds the topics the journal's dead letters were written to; their
    logs must be open (their ends recovered) already."""
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
    for g, d, p, offs in snap.get("redriven", []):
        t.redriven[(g, d, p)] = set(offs)
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
    _check_dead_letters(t, group_events, dead_letter_topic)
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


def _check_dead_letters(t: Topic, group_events: dict[str, list[Any]],
                        dead_letter_topic: DeadLetterTopics) -> None:
    """Replace each journaled dead-lettering (``["dl", group, dlq key, dlq incarnation,
    locs]``, see ``Topic.dead_lettered``) in the groups' event streams by what it means now.

    The journal may have been written back before the dead-letter topic's data (J1 against
    the OS). A dead letter counts as written if the record at its journaled place is that
    message's dead letter (its origin headers name this topic incarnation, the group, the
    partition and the offset), or if that place was trimmed by retention. Otherwise, also when
    the dead-letter topic has no data there, its message is pending again, with its delivery
    count: an ``("undone", partition, [offset, count, ...])`` event at the same place in the
    stream, so later events (delivered again, acked, dead-lettered again) still apply after
    it. The record itself is checked, not only the partition's end: an offset lost in a power
    cut is taken by the next append, and the decision must not change when it is.

    A dead-letter topic deleted since (or deleted and created again: another incarnation)
    took its dead letters with it: they count as written. Journals of older versions have no
    ``"dl"`` events: their dead letters count as written, as before this check existed.
    """
    events = [ev for evs in group_events.values() for ev in evs if ev[0] == "dl"]
    if not events:
        return
    wanted: dict[int, tuple[PartitionLog, set[int]]] = {}
    for ev in events:
        dlq = dead_letter_topic(ev[2], ev[3])
        if dlq is None:
            continue
        locs = ev[4]
        for i in range(0, len(locs), 5):
            p, at = locs[i + 3], locs[i + 4]
            if p < len(dlq.logs):
                log = dlq.logs[p]
                if log.start_offset <= at < log.end_offset:
                    wanted.setdefault(id(log), (log, set()))[1].add(at)
    found = {key: _headers_at(log, sorted(offs)) for key, (log, offs) in wanted.items()}
    id_prefix = f"{t.name}@{t.incarnation}:"
    for group, evs in group_events.items():
        out: list[Any] = []
        for ev in evs:
            if ev[0] != "dl":
                out.append(ev)
                continue
            dlq = dead_letter_topic(ev[2], ev[3])
            if dlq is None:
                continue
            lost: dict[int, list[int]] = {}
            locs = ev[4]
            for i in range(0, len(locs), 5):
                part, off, count, p, at = locs[i : i + 5]
                if p < len(dlq.logs):
                    log = dlq.logs[p]
                    if at < log.start_offset:
                        continue  # trimmed by retention: it was there
                    h = found.get(id(log), {}).get(at)
                    if (h is not None and h.get(H_TOPIC) == t.name and h.get(H_GROUP) == group
                            and h.get(H_PARTITION) == str(part) and h.get(H_OFFSET) == str(off)
                            and str(h.get(H_ID, "")).startswith(id_prefix)):
                        continue
                lost.setdefault(part, []).extend((off, count))
            out += [("undone", part, flat) for part, flat in lost.items()]
        group_events[group] = out


def _headers_at(log: PartitionLog, offsets: list[int]) -> dict[int, dict[str, str]]:
    """The headers of the records at ``offsets`` (ascending, within the log) that have any.
    A batch that does not decode is left out (its records count as not there)."""
    out: dict[int, dict[str, str]] = {}
    want = set(offsets)
    i, n = 0, len(offsets)
    while i < n:
        off = offsets[i]
        views = log.read(off, max_records=max(1, offsets[-1] - off + 1), max_bytes=1 << 20)
        progressed = False
        for v in views:
            if v.last_offset < off:
                continue
            if i < n and offsets[i] <= v.last_offset and v.attributes & HAS_EXT:
                try:
                    ext = v.extensions()
                except CorruptRecord:
                    ext = []
                for j, (_k, _rk, headers, _d) in enumerate(ext):
                    if headers and v.base_offset + j in want:
                        out[v.base_offset + j] = headers
            while i < n and offsets[i] <= v.last_offset:
                i += 1
                progressed = True
            if i >= n:
                break
            off = offsets[i]
        if not progressed:
            i += 1  # no batch holds it (skipped as damaged): not there
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
    elif kind == "gc":
        group_base[ev[1]] = (settings_in(ev[2]), ev[3])
        group_events[ev[1]] = []
    elif kind == "gu":
        # The new settings' snapshot counts the dead letters journaled before it as done:
        # their checks still apply on top of it.
        carried = [e for e in group_events.get(ev[1], []) if e[0] == "dl"]
        group_base[ev[1]] = (settings_in(ev[2]), ev[3])
        group_events[ev[1]] = carried
    elif kind == "gd":
        group_base.pop(ev[1], None)
        group_events.pop(ev[1], None)
    elif kind == "dr":
        if len(ev) > 2:
            released_at.extend(zip(ev[1], ev[2][0::2], ev[2][1::2], strict=True))
        else:
            released.extend(ev[1])  # an older record: no copy locations to check
    elif kind == "dl":
        # In the group's event stream, after the "a" event that marked the messages done;
        # _check_dead_letters replaces it before the group is restored.
        if ev[1] in group_events:
            group_events[ev[1]].append(ev)
    elif kind == "dd":
        t.dedup.load(ev[1])
    elif kind == "pr":
        _, part, pid, epoch, seq, count, ids, used = ev
        t.producers.record(part, pid, epoch, seq, count, ids_in(ids), used)
    elif kind == "rd":
        key = (ev[1], ev[2], ev[3])
        t.redrive[key] = ev[4]
        drop_redriven_below(t, key, ev[4])
    elif kind == "ri":
        key = (ev[1], ev[2], ev[3])
        cursor = t.redrive.get(key, 0)
        t.redriven.setdefault(key, set()).update(o for o in ev[4] if o >= cursor)
        drop_redriven_below(t, key, cursor)
