"""Dead-letter records and redrive (SPEC §3).

A dead letter is an ordinary message of the dead-letter topic (default ``<topic>.dlq``), with the
original body, key, routing key, priority and headers plus headers naming where it came from.
Redrive appends it back to its origin partition with ``x-tidemq-group: <group>``, which the group
filters honour (only that group sees it again); the redrive cursor (per group and partition
of one incarnation of the dead-letter topic, :func:`cursor_key`) is journaled in the origin
topic after the appends, so nothing is redriven twice (a crash between the two may redrive a
message again: at-least-once). A dead-letter topic deleted and created again gets cursors of
its own; those of the deleted one stay in the origin's state, unused.

Redrive by id (``Broker.redrive_ids``) moves chosen dead letters at or after the cursor. Their
offsets are journaled the same way (``"ri"`` events, after the appends) and kept per group and
dead-letter partition in ``Topic.redriven`` (in snapshots too): the cursor's redrive, the dead
letters' listing and their count skip them, and a second redrive by the same id is refused.
When the cursor passes them they are dropped (:func:`drop_redriven_below`), so the set holds
only offsets the cursor has not reached: it stays as small as the by-id redrives ahead of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..storage import Record
from ._group import DeadLetter
from ._limits import GROUP_HEADER, ID_HEADER
from ._names import dead_letter_name, topic_key

if TYPE_CHECKING:
    from ..storage import PartitionLog
    from ._group import GroupState
    from ._topic import Topic

__all__ = ["ORIGIN", "DEATHS", "MAX_DEATHS", "MAX_DEATH_REASON", "deaths_of",
           "dead_letter_records", "redriven_record", "drop_redriven_below", "redriven_offsets", "cursor_key",
           "redrive_cursor", "dead_letter_topic"]

ORIGIN = "x-tidemq-origin-"
H_TOPIC = ORIGIN + "topic"
H_PARTITION = ORIGIN + "partition"
H_OFFSET = ORIGIN + "offset"
H_GROUP = ORIGIN + "group"
H_COUNT = ORIGIN + "delivery-count"
H_REASON = ORIGIN + "reason"
H_ID = ORIGIN + "id"
# The message's dead-letter history, all its deaths (the origin headers say only the last):
# a JSON list of [topic, group, reason, count, first time in ms] and, as a sixth item, a dict
# of what was so the first time it died there: {"ttl": its own TTL in ms} when it had one,
# {"rk": its routing key} when the group's dead_letter_routing_key changed it. Newest first,
# one entry per (topic, group, reason): a repeat adds to its count and moves it to the front,
# the rest of the entry stays (RabbitMQ's x-death, which the AMQP front builds from it). At most
# MAX_DEATHS entries, reasons cut to MAX_DEATH_REASON characters (a few KiB at most beside the
# headers). Kept on redrive, and by a publisher that copies the header.
DEATHS: Final = "x-tidemq-deaths"
MAX_DEATHS: Final = 16
MAX_DEATH_REASON: Final = 100


def deaths_of(headers: Mapping[str, str] | None) -> list[list[Any]]:
    """The dead-letter history in ``headers`` ([] when none or unreadable)."""
    raw = headers.get(DEATHS) if headers else None
    if not raw:
        return []
    try:
        got = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return []
    if not isinstance(got, list):
        return []
    return [e for e in got if _entry_ok(e)]


def _entry_ok(e: Any) -> bool:
    """[str, str, str, int, int] and an optional dict of a "ttl" int and an "rk" str (any
    publisher can set the header)."""
    if not (isinstance(e, list) and len(e) in (5, 6)
            and all(isinstance(x, str) for x in e[:3])
            and all(_count_ok(x) for x in e[3:5])):
        return False
    if len(e) == 5:
        return True
    extra = e[5]
    return (isinstance(extra, dict) and set(extra) <= {"ttl", "rk"}
            and _count_ok(extra.get("ttl", 0)) and isinstance(extra.get("rk", ""), str))


def _count_ok(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**53


def _with_death(headers: Mapping[str, str] | None, topic: str, group: str, reason: str,
                now_ms: int, r: Record, routing_key: str | None) -> str:
    deaths = deaths_of(headers)
    entry: list[Any] = [topic, group, reason[:MAX_DEATH_REASON], 1, now_ms]
    extra: dict[str, Any] = {}
    if r.ttl_us:
        extra["ttl"] = r.ttl_us // 1000
    if routing_key is not None and routing_key != (r.routing_key or ""):
        extra["rk"] = r.routing_key or ""
    if extra:
        entry.append(extra)
    for i, old in enumerate(deaths):
        if old[:3] == entry[:3]:
            del deaths[i]
            n = old[3]
            old[3] = (n if isinstance(n, int) else 0) + 1
            entry = old
            break
    deaths.insert(0, entry)
    return msgspec.json.encode(deaths[:MAX_DEATHS]).decode()


def dead_letter_records(topic: str, group: str, letters: list[DeadLetter],
                        ids: list[str], now_us: int,
                        routing_key: str | None = None) -> list[Record]:
    """The dead-letter topic's records for ``letters`` (``ids``: their message ids), dead
    at ``now_us``; ``routing_key``: the one they get (the group's dead_letter_routing_key;
    None: their own)."""
    out: list[Record] = []
    for dl, mid in zip(letters, ids, strict=True):
        r = dl.record
        headers = {k: v for k, v in (r.headers or {}).items() if k not in (GROUP_HEADER, ID_HEADER)}
        headers[DEATHS] = _with_death(r.headers, topic, group, dl.reason, now_us // 1000, r,
                                      routing_key)
        headers[H_TOPIC] = topic
        headers[H_PARTITION] = str(dl.partition)
        headers[H_OFFSET] = str(dl.offset)
        headers[H_GROUP] = group
        headers[H_COUNT] = str(dl.delivery_count)
        headers[H_REASON] = dl.reason
        headers[H_ID] = mid
        rk = r.routing_key if routing_key is None else routing_key or None
        out.append(Record(r.body, r.key, rk, headers, r.priority, 0, 0, None))
    return out


def redriven_record(r: Record, group: str) -> tuple[int, Record]:
    """(origin partition, the record to append there) for a dead letter."""
    headers = {k: v for k, v in (r.headers or {}).items() if not k.startswith(ORIGIN)}
    headers[GROUP_HEADER] = group
    part = int((r.headers or {}).get(H_PARTITION, "0"))
    return part, Record(r.body, r.key, r.routing_key, headers, r.priority, 0, 0, None)


def origin_of(r: Record) -> tuple[str, str] | None:
    """(origin topic, origin group) of a dead letter, or None for an ordinary message."""
    h = r.headers
    if not h or H_TOPIC not in h or H_GROUP not in h:
        return None
    return h[H_TOPIC], h[H_GROUP]


_NONE: frozenset[int] = frozenset()


def cursor_key(group: str, dlq: Topic, partition: int) -> tuple[str, str, int]:
    """The key of ``group``'s redrive cursor (and redriven-by-id offsets) in dead-letter
    partition ``partition``: ``(group, "<dlq key>~<incarnation>", partition)``. By
    incarnation, not name: a dead-letter topic deleted and created again starts at offset 0,
    and the cursor of the one before must not skip its dead letters. (Cursors journaled before
    keys named the incarnation match none: a redrive then starts at the topic's start.)"""
    return (group, f"{dlq.key}~{dlq.incarnation}", partition)


def redrive_cursor(t: Topic, key: tuple[str, str, int], log: PartitionLog) -> int:
    """Where the redrive of dead-letter partition ``key`` (:func:`cursor_key`; ``log``, its
    log) goes on from: the journaled cursor, within the log's offsets."""
    return min(max(t.redrive.get(key, 0), log.start_offset), log.end_offset)


def dead_letter_topic(topics: Mapping[str, Topic], t: Topic, g: GroupState) -> Topic | None:
    """The dead-letter topic of ``t``'s group ``g`` among ``topics`` (by key), if it exists and
    is not ``t`` itself."""
    dlq = topics.get(topic_key(dead_letter_name(t.name, g.settings.dead_letter_topic)))
    return None if dlq is None or dlq is t else dlq


def redriven_offsets(t: Topic, key: tuple[str, str, int]) -> set[int] | frozenset[int]:
    """The offsets of dead-letter partition ``key`` (:func:`cursor_key`) redriven by id and not
    yet passed by the cursor (read-only; empty when there are none)."""
    return t.redriven.get(key, _NONE)


def drop_redriven_below(t: Topic, key: tuple[str, str, int], cursor: int) -> None:
    """Forget the redriven-by-id offsets of ``key`` below ``cursor`` (the cursor passed them)."""
    offs = t.redriven.get(key)
    if offs is None:
        return
    keep = {o for o in offs if o >= cursor}
    if keep:
        t.redriven[key] = keep
    else:
        del t.redriven[key]
