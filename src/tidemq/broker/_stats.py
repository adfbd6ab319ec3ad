"""Counters the broker keeps for metrics, and read-only looks at its state (HTTP API).

:class:`BrokerStats` (``Broker.stats``) counts, per topic and group, what passes through the
broker since it was opened: messages published, delivered, redelivered (by why their delivery
failed), settled (by outcome) and dead-lettered (by reason). The broker updates it from one-line
hooks in ``_broker.py`` (publish, publish_encoded, fetch, ack, nack, reject, unsubscribe, tick,
the dead-letter writer, topic and group deletion); it is plain dict arithmetic, a few hundred
nanoseconds per call. Counters are not durable: a restart starts them at zero (Prometheus
counters do that too, and ``rate()`` copes).

The functions below read broker state without changing anything (no lease, no cursor, no
journal event): browsing a partition, the timestamp of each group's oldest unfinished message
(lag in seconds), storage size, and a group's dead letters. Like every broker call they run on
the broker's thread. They touch the broker's private parts (topics, logs, redrive cursors):
this module is part of the broker package for that reason, so the layers above never do.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ..errors import InvalidArgument
from ..storage import Record
from ._deadletters import (
    H_COUNT,
    H_GROUP,
    H_ID,
    H_OFFSET,
    H_PARTITION,
    H_REASON,
    H_TOPIC,
    ORIGIN,
    cursor_key,
    dead_letter_topic,
    redrive_cursor,
    redriven_offsets,
)
from ._ids import make_id
from ._limits import RESERVED_HEADERS
from ._names import topic_key

if TYPE_CHECKING:
    from ..storage import PartitionLog
    from ._broker import Broker
    from ._group import DeadLetter, GroupState
    from ._topic import Topic

__all__ = [
    "BrokerStats",
    "StatsSnapshot",
    "DEAD_LETTER_REASONS",
    "Browsed",
    "browse",
    "oldest_unfinished_us",
    "group_gauges",
    "GroupGauges",
    "storage_bytes",
    "DeadLetterSummary",
    "DeadLetterEntry",
    "DeadLetterScanner",
]

#: Reasons a dead letter is labelled with in metrics; a reject's free-text reason counts as
#: "rejected" (labels must stay few).
DEAD_LETTER_REASONS: Final = ("max_deliveries", "expired", "rejected")
#: Records one dead-letter scan or listing reads at most per call (bounded loop time).
SCAN_BUDGET: Final = 50_000
_TS_CACHE_SIZE: Final = 100_000


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """A copy of the counters (safe to read on another thread)."""

    published: dict[str, int]
    delivered: dict[tuple[str, str], int]
    redelivered: dict[tuple[str, str, str], int]
    settled: dict[tuple[str, str, str], int]
    dead_lettered: dict[tuple[str, str, str], int]


class BrokerStats:
    """The broker's counters (see the module docstring). Keys are topic and group names as
    created. Not thread-safe: the broker's thread updates it; others take :meth:`snapshot`."""

    __slots__ = ("published", "delivered", "redelivered", "settled", "dead_lettered")

    def __init__(self) -> None:
        self.published: dict[str, int] = {}
        self.delivered: dict[tuple[str, str], int] = {}
        # reason: "nack" | "lease_expired" | "consumer_left"
        self.redelivered: dict[tuple[str, str, str], int] = {}
        # outcome: "ack" | "nack" | "reject"
        self.settled: dict[tuple[str, str, str], int] = {}
        # reason: one of DEAD_LETTER_REASONS
        self.dead_lettered: dict[tuple[str, str, str], int] = {}

    # --- hooks ------------------------------------------------------------------------------

    def on_publish(self, topic: str, n: int) -> None:
        self.published[topic] = self.published.get(topic, 0) + n

    def on_fetch(self, g: GroupState, n: int) -> None:
        key = (g.topic, g.name)
        self.delivered[key] = self.delivered.get(key, 0) + n

    def on_ack(self, g: GroupState, n: int) -> None:
        """``n`` ids acked by one accepted call (an ack is idempotent: a repeated ack counts)."""
        key = (g.topic, g.name, "ack")
        self.settled[key] = self.settled.get(key, 0) + n

    @staticmethod
    def mark(g: GroupState) -> tuple[int, int]:
        """Before a call that may end leases: (messages in flight, dead letters pending)."""
        return sum(m.unacked for m in g._members.values()), len(g._dead)

    def on_failures(self, g: GroupState, mark: tuple[int, int], reason: str,
                    outcome: str | None = None) -> None:
        """After the call :meth:`mark` preceded: leases it ended (nack, expiry, a member
        leaving) are redeliveries under ``reason``, except those that reached
        ``max_deliveries`` (dead letters, counted when written). ``outcome`` also counts them
        as settled so (nack, reject)."""
        inflight_before, dead_before = mark
        ended = inflight_before - sum(m.unacked for m in g._members.values())
        if ended <= 0:
            return
        if outcome is not None:
            key = (g.topic, g.name, outcome)
            self.settled[key] = self.settled.get(key, 0) + ended
        if outcome == "reject":
            return  # dead letters, not redeliveries
        dead = sum(1 for d in g._dead[dead_before:] if d.reason == "max_deliveries")
        again = ended - dead
        if again > 0:
            rkey = (g.topic, g.name, reason)
            self.redelivered[rkey] = self.redelivered.get(rkey, 0) + again

    def on_dead_letters(self, topic: str, group: str, letters: list[DeadLetter]) -> None:
        for dl in letters:
            reason = dl.reason if dl.reason in DEAD_LETTER_REASONS else "rejected"
            key = (topic, group, reason)
            self.dead_lettered[key] = self.dead_lettered.get(key, 0) + 1

    def forget_topic(self, topic: str) -> None:
        """A deleted topic's series end (and do not grow the label set forever)."""
        k = topic_key(topic)
        self.published = {t: n for t, n in self.published.items() if topic_key(t) != k}
        for name in ("delivered", "redelivered", "settled", "dead_lettered"):
            table: dict[tuple[str, ...], int] = getattr(self, name)
            setattr(self, name, {key: n for key, n in table.items() if topic_key(key[0]) != k})

    def forget_group(self, topic: str, group: str) -> None:
        for name in ("delivered", "redelivered", "settled", "dead_lettered"):
            table: dict[tuple[str, ...], int] = getattr(self, name)
            setattr(self, name, {key: n for key, n in table.items()
                                 if not (key[0] == topic and key[1] == group)})

    def snapshot(self) -> StatsSnapshot:
        return StatsSnapshot(dict(self.published), dict(self.delivered), dict(self.redelivered),
                             dict(self.settled), dict(self.dead_lettered))


# --- browsing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Browsed:
    """One stored message as browsing shows it (nothing about any group's progress)."""

    id: str
    partition: int
    offset: int
    timestamp_us: int
    record: Record


def browse(broker: Broker, topic: str, partition: int, *, from_offset: int | None = None,
           from_time_us: int | None = None, limit: int = 100,
           max_bytes: int = 4 << 20) -> tuple[list[Browsed], int]:
    """Up to ``limit`` messages of ``partition`` from ``from_offset`` (clamped to what is
    retained) or from the first message stored at or after ``from_time_us``, in offset order,
    and the offset to continue from. Reads only: no group sees any change. About ``max_bytes``
    of bodies at most (at least one message)."""
    t = broker._topic(topic)
    if isinstance(partition, bool) or not isinstance(partition, int) \
            or not 0 <= partition < len(t.logs):
        raise InvalidArgument(f"topic {t.name!r} has partitions 0..{len(t.logs) - 1}, "
                              f"not {partition!r}")
    if from_offset is not None and from_time_us is not None:
        raise InvalidArgument("give from_offset or from_time, not both")
    log = t.logs[partition]
    if from_time_us is not None:
        found = log.offset_for_time(from_time_us)
        start = log.end_offset if found is None else found
    else:
        start = 0 if from_offset is None else from_offset
    start = min(max(start, log.start_offset), log.end_offset)
    out: list[Browsed] = []
    off = start
    left_bytes = max_bytes
    while off < log.end_offset and len(out) < limit and left_bytes > 0:
        views = log.read(off, max_records=limit - len(out), max_bytes=left_bytes)
        if not views:
            break
        for view in views:
            if len(out) >= limit or left_bytes <= 0:
                break
            if view.last_offset < off:
                continue
            for i, rec in enumerate(view.records()):
                o = view.base_offset + i
                if o < off:
                    continue
                if len(out) >= limit or (left_bytes <= 0 and out):
                    break
                headers = rec.headers or {}
                mid = headers.get("x-tidemq-id") or make_id(t.name, t.incarnation, partition, o)
                out.append(Browsed(mid, partition, o, view.first_timestamp_us, rec))
                left_bytes -= len(rec.body)
                off = o + 1
        else:
            continue
        break
    return out, off


def public_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """A record's headers without the broker's reserved ones."""
    if not headers:
        return {}
    return {k: v for k, v in headers.items() if k not in RESERVED_HEADERS}


# --- lag in seconds ---------------------------------------------------------------------------


class _TimestampCache:
    """Batch timestamps of (log, offset) looked up before: a scrape of 1,000 groups whose
    floors did not move reads no log."""

    def __init__(self) -> None:
        self._ts: OrderedDict[tuple[int, int], int] = OrderedDict()

    def at(self, log: PartitionLog, offset: int) -> int | None:
        key = (id(log), offset)
        ts = self._ts.get(key)
        if ts is not None:
            return ts
        views = log.read(offset, max_records=1, max_bytes=1)
        ts = next((v.first_timestamp_us for v in views if v.last_offset >= offset), None)
        if ts is None:
            return None
        self._ts[key] = ts
        if len(self._ts) > _TS_CACHE_SIZE:
            self._ts.popitem(last=False)
        return ts


_timestamps = _TimestampCache()


def oldest_unfinished_us(broker: Broker, topic: str) -> dict[str, list[int | None]]:
    """Per group of ``topic``, per partition: when the oldest message the group has not
    finished (its first offset not done) was stored, µs since the epoch, or None when the group
    has finished everything there. Exact: the stored batch timestamp of that message."""
    t = broker._topic(topic)
    out: dict[str, list[int | None]] = {}
    for name, g in t.groups.items():
        stamps: list[int | None] = []
        for p, log in enumerate(t.logs):
            floor = g.low_water(p)
            stamps.append(_timestamps.at(log, floor) if floor < log.end_offset else None)
        out[name] = stamps
    return out


#: One group's gauges: (name, lag, in flight, oldest unfinished timestamp µs or None, per
#: partition (committed, lag, in flight, oldest timestamp µs or None)).
GroupGauges = tuple[str, int, int, int | None, list[tuple[int, int, int, int | None]]]


def group_gauges(broker: Broker, topic: str) -> list[GroupGauges]:
    """Lag, in-flight count and oldest unfinished message of each group of ``topic``, in
    total and per partition: what ``GroupState.info`` and :func:`oldest_unfinished_us` say,
    in one pass without building value objects (metrics read this for every group at every
    scrape: ~1 µs per group and partition)."""
    t = broker._topic(topic)
    at = _timestamps.at
    cached = _timestamps._ts.get
    out: list[GroupGauges] = []
    for name, g in t.groups.items():
        parts: list[tuple[int, int, int, int | None]] = []
        lag_total = held_total = 0
        oldest: int | None = None
        for part in g._parts:
            log = part.log
            end = log.end_offset
            floor = part.floor
            held = len(part.inflight)
            if floor < end:
                lag = end - floor
                done = part.done
                if done:
                    lag = max(lag - done.count_in(floor, end), 0)
                ts = cached((id(log), floor)) or at(log, floor)
                if ts is not None and (oldest is None or ts < oldest):
                    oldest = ts
            else:
                lag, ts = 0, None
            parts.append((floor, lag, held, ts))
            lag_total += lag
            held_total += held
        out.append((name, lag_total, held_total, oldest, parts))
    return out


def storage_bytes(broker: Broker) -> int:
    """Bytes of every log the broker holds (partitions, delay stores, journals)."""
    total = 0
    for t in list(broker._topics.values()):
        for log in (*t.logs, t.delays.log, t.journal.log):
            total += log.statistics().size_bytes
    return total


# --- dead letters -----------------------------------------------------------------------------


@dataclass(slots=True)
class DeadLetterSummary:
    """A group's dead letters not yet redriven: how many, the oldest one's dead-lettering time
    (µs since the epoch, None if there are none) and how many per reason. ``complete`` is False
    when the scan stopped at its budget (call again: it resumes)."""

    count: int = 0
    oldest_us: int | None = None
    reasons: Counter[str] = field(default_factory=Counter)
    complete: bool = True
    topic: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One dead letter of a group, as stored in the dead-letter topic."""

    id: str  # its id in the dead-letter topic
    origin_id: str  # the message's id in its own topic
    partition: int  # of the dead-letter topic
    offset: int
    dead_lettered_us: int
    reason: str
    delivery_count: int
    origin_partition: int
    origin_offset: int
    record: Record


@dataclass(slots=True)
class _Progress:
    start: int
    pos: int
    skipped: int = 0  # how many offsets were redriven by id when the scan started
    count: int = 0
    oldest_us: int | None = None
    reasons: Counter[str] = field(default_factory=Counter)


class DeadLetterScanner:
    """Counts a group's dead letters (those after its redrive cursor in the dead-letter topic,
    less those redriven by id)
    incrementally: each call reads only what was appended since the last, unless the cursor
    moved (a redrive) or retention removed records, when it starts over. At most
    :data:`SCAN_BUDGET` records are read per call. Not thread-safe (the broker's thread)."""

    def __init__(self) -> None:
        self._progress: dict[tuple[str, int, str, str, int, int], _Progress] = {}

    def summary(self, broker: Broker, topic: str, group: str) -> DeadLetterSummary:
        t = broker._topic(topic)
        g = t.group(group)
        dlq = dead_letter_topic(broker._topics, t, g)
        out = DeadLetterSummary()
        if dlq is None:
            return out
        out.topic = dlq.name
        budget = SCAN_BUDGET
        live = set()
        for p, log in enumerate(dlq.logs):
            key = (t.key, t.incarnation, group, dlq.key, dlq.incarnation, p)
            live.add(key)
            ck = cursor_key(group, dlq, p)
            start = redrive_cursor(t, ck, log)
            skip = redriven_offsets(t, ck)
            prog = self._progress.get(key)
            # The set of redriven-by-id offsets only grows while the cursor stays: its size
            # tells whether the count must start over.
            if (prog is None or prog.start != start or prog.skipped != len(skip)
                    or prog.pos < log.start_offset):
                prog = self._progress[key] = _Progress(start, start, len(skip))
            budget = _scan(log, prog, t.name, group, budget, skip)
            out.count += prog.count
            out.reasons.update(prog.reasons)
            if prog.oldest_us is not None and (out.oldest_us is None
                                               or prog.oldest_us < out.oldest_us):
                out.oldest_us = prog.oldest_us
            if prog.pos < log.end_offset:
                out.complete = False
        # Forget progress of partitions and groups that no longer exist (bounded memory).
        mine = (t.key, t.incarnation, group)
        for key in [k for k in self._progress if k[:3] == mine and k not in live]:
            del self._progress[key]
        return out

    def forget(self, topic: str, group: str | None = None) -> None:
        k = topic_key(topic)
        for key in [key for key in self._progress
                    if key[0] == k and (group is None or key[2] == group)]:
            del self._progress[key]


def dead_letters(broker: Broker, topic: str, group: str, *, after: tuple[int, int] | None = None,
                 limit: int = 100) -> tuple[list[DeadLetterEntry], tuple[int, int] | None]:
    """Up to ``limit`` of the group's dead letters not yet redriven, oldest first per
    dead-letter partition, from after the position ``after`` ((partition, offset) of the last
    one seen); and the position to continue after (None: nothing more now). Reads at most
    :data:`SCAN_BUDGET` records, so an answer may be short while more remain."""
    t = broker._topic(topic)
    g = t.group(group)
    dlq = dead_letter_topic(broker._topics, t, g)
    if dlq is None:
        return [], None
    out: list[DeadLetterEntry] = []
    budget = SCAN_BUDGET
    last: tuple[int, int] | None = after
    for p, log in enumerate(dlq.logs):
        if after is not None and p < after[0]:
            continue
        ck = cursor_key(group, dlq, p)
        off = redrive_cursor(t, ck, log)
        skip = redriven_offsets(t, ck)
        if after is not None and p == after[0]:
            off = max(off, after[1] + 1)
        while off < log.end_offset and len(out) < limit and budget > 0:
            views = log.read(off, max_records=min(1000, budget))
            if not views:
                break
            for view in views:
                if view.last_offset < off:
                    continue
                for i, rec in enumerate(view.records()):
                    o = view.base_offset + i
                    if o < off:
                        continue
                    if len(out) >= limit or budget <= 0:
                        break
                    budget -= 1
                    off = o + 1
                    last = (p, o)
                    if o in skip:
                        continue
                    entry = _entry(dlq, p, o, view.first_timestamp_us, rec, t.name, group)
                    if entry is not None:
                        out.append(entry)
                if len(out) >= limit or budget <= 0:
                    break
        if len(out) >= limit or budget <= 0:
            return out, last
    return out, None


def _is_mine(rec: Record, topic: str, group: str) -> bool:
    h = rec.headers
    if not h or h.get(H_GROUP) != group:
        return False
    return topic_key(h.get(H_TOPIC, "")) == topic_key(topic)


def _scan(log: PartitionLog, prog: _Progress, topic: str, group: str, budget: int,
          skip: set[int] | frozenset[int]) -> int:
    off = prog.pos
    while off < log.end_offset and budget > 0:
        views = log.read(off, max_records=min(1000, budget))
        if not views:
            break
        for view in views:
            if view.last_offset < off:
                continue
            for i, rec in enumerate(view.records()):
                o = view.base_offset + i
                if o < off:
                    continue
                if budget <= 0:
                    break
                budget -= 1
                off = o + 1
                if o not in skip and _is_mine(rec, topic, group):
                    prog.count += 1
                    prog.reasons[(rec.headers or {}).get(H_REASON, "")] += 1
                    ts = view.first_timestamp_us
                    if prog.oldest_us is None or ts < prog.oldest_us:
                        prog.oldest_us = ts
            if budget <= 0:
                break
    prog.pos = off
    return budget


def _int(text: str | None) -> int:
    try:
        return int(text or "0")
    except ValueError:
        return 0


def _entry(dlq: Topic, p: int, o: int, ts: int, rec: Record, topic: str,
           group: str) -> DeadLetterEntry | None:
    if not _is_mine(rec, topic, group):
        return None
    h = rec.headers or {}
    own = {k: v for k, v in h.items() if not k.startswith(ORIGIN)}
    return DeadLetterEntry(
        id=make_id(dlq.name, dlq.incarnation, p, o), origin_id=h.get(H_ID, ""), partition=p,
        offset=o, dead_lettered_us=ts, reason=h.get(H_REASON, ""),
        delivery_count=_int(h.get(H_COUNT)), origin_partition=_int(h.get(H_PARTITION)),
        origin_offset=_int(h.get(H_OFFSET)),
        record=Record(rec.body, rec.key, rec.routing_key, own or None, rec.priority))
