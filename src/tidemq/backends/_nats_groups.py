"""Consumer groups on NATS: records, consumers, replay, redrive (see ``_nats``).

A group is a record ``g.<topic>.<group>`` in the metadata bucket (its settings, the commit
point) and one durable pull consumer per partition stream, created before the record. Functions
here take the transport; :class:`~tidemq.backends._nats.NatsTransport` calls them.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..broker._deadletters import origin_of, redriven_record
from ..broker._filters import compile_filter
from ..broker._names import dead_letter_name, topic_key, validate_group_name
from ..broker._types import (
    GroupInfo,
    GroupPartitionInfo,
    GroupSettings,
    StartPosition,
    check_start,
)
from ..errors import (
    GroupSettingsMismatch,
    InvalidArgument,
    TideMQError,
    UnknownGroup,
    UnknownTopic,
)
from ..storage import Record
from ._nats_codec import META, decode_meta, to_record
from ._nats_js import rfc3339
from ._nats_names import group_token, pattern_subject, routing_tokens

if TYPE_CHECKING:
    from ._nats import NatsTransport, TopicMeta

__all__ = [
    "subject_filter", "consumer_config", "ensure_consumer", "group_settings", "create_group",
    "ensure_group", "update_group", "delete_group", "list_groups", "describe_group",
    "reset_group", "redrive",
]

_NS: Final = 1_000_000_000
CONSUMER_FEATURES: Final = {
    "filter_subject": "routing-key filter (filter_subject)",
    "filter_subjects": "routing-key filter with several patterns (server-side filter_subjects, "
                       "nats-server 2.10+)",
    "ack_wait": "lease (ack_timeout as AckWait)",
    "max_deliver": "max deliveries (max_deliver)",
    "max_ack_pending": "ordered delivery (max_ack_pending)",
    "deliver_policy": "start position (deliver_policy)",
    "opt_start_seq": "replay by offset (opt_start_seq)",
    "opt_start_time": "replay by time (opt_start_time)",
    "ack_policy": "per-message acks",
}


def _ns(seconds: float) -> int:
    return int(round(seconds * _NS))


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _plain(s: GroupSettings) -> Any:
    """Settings as stored (JSON): ``{0: 5}`` and ``{"0": 5}`` are the same start."""
    return json.loads(_json(msgspec.to_builtins(s)))


def subject_filter(t: NatsTransport, tm: TopicMeta, p: int,
                   settings: GroupSettings) -> dict[str, Any]:
    """The consumer's filter setting for partition ``p``: exact where one subject filter
    says what the patterns say, else the whole partition (the member filters)."""
    whole = {"filter_subject": f"{tm.base}.{p}.>"}
    spec = settings.filter or {}
    patterns = spec.get("routing_key")
    if not patterns:
        return whole
    if isinstance(patterns, str):
        patterns = [patterns]
    # An exact key ({"exact": k}) is its own subject tail: its words are escaped, '*' too.
    tails = [pattern_subject(x) if isinstance(x, str) else routing_tokens(x["exact"])
             for x in patterns]
    if any(tail == ">" for tail in tails):
        return whole
    if len(tails) == 1 and tails[0] is not None:
        return {"filter_subject": f"{tm.base}.{p}.{tails[0]}"}
    if t.server_filters and all(tail is not None for tail in tails):
        return {"filter_subjects": [f"{tm.base}.{p}.{tail}" for tail in tails]}
    return whole


def start_config(start: StartPosition, p: int) -> dict[str, Any]:
    if start == "earliest":
        return {"deliver_policy": "all"}
    if start == "latest":
        return {"deliver_policy": "new"}
    if isinstance(start, int):
        return {"deliver_policy": "by_start_sequence", "opt_start_seq": max(start, 0) + 1}
    if isinstance(start, dict):
        if set(start) == {"timestamp"}:
            return {"deliver_policy": "by_start_time",
                    "opt_start_time": rfc3339(float(start["timestamp"]))}
        offsets = {int(k): int(v) for k, v in start.items()}
        if p in offsets:
            return {"deliver_policy": "by_start_sequence",
                    "opt_start_seq": max(offsets[p], 0) + 1}
        return {"deliver_policy": "all"}
    raise InvalidArgument(f"start {start!r} is not a start position")


def consumer_config(t: NatsTransport, tm: TopicMeta, group: str, s: GroupSettings, p: int,
                    start: StartPosition) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "durable_name": group_token(group),
        "ack_policy": "explicit",
        "ack_wait": _ns(s.ack_timeout),
        "max_deliver": -1,  # dead letters are the member's (emulated, see capabilities)
        "max_ack_pending": 1 if s.mode != "shared" else t.max_ack_pending,
        "replay_policy": "instant",
    }
    cfg.update(subject_filter(t, tm, p, s))
    cfg.update(start_config(start, p))
    return cfg


async def ensure_consumer(t: NatsTransport, tm: TopicMeta, group: str, s: GroupSettings,
                          p: int, *, new_partition: bool = False,
                          start: StartPosition | None = None) -> None:
    """Create the group's consumer on partition ``p`` unless it exists; with ``start``,
    replace it by one that starts there (reset)."""
    stream = tm.stream(t.prefix, p)
    existing = await t.js.consumer_info(stream, group_token(group))
    if existing is not None and start is None:
        return
    if existing is not None:
        await t.js.delete_consumer(stream, group_token(group))
    at = start if start is not None else ("earliest" if new_partition else s.start)
    await t.js.create_consumer(stream, consumer_config(t, tm, group, s, p, at),
                               CONSUMER_FEATURES)


def group_check(tm: TopicMeta, s: GroupSettings) -> None:
    s.validate()
    compile_filter(s.filter)
    dlq = dead_letter_name(tm.name, s.dead_letter_topic)
    if topic_key(dlq) == topic_key(tm.name):
        raise InvalidArgument(f"dead_letter_topic {dlq!r} is the group's own topic; name "
                              "another topic")


async def group_settings(t: NatsTransport, tm: TopicMeta, group: str) -> GroupSettings | None:
    got = await t.meta.get(f"g.{tm.token}.{group_token(group)}")
    if got is None:
        return None
    return msgspec.convert(json.loads(got[0])["settings"], GroupSettings)


async def create_group(t: NatsTransport, topic: str, group: str,
                       settings: GroupSettings) -> GroupInfo:
    validate_group_name(group)
    tm = await t.topic(topic)
    await ensure_group(t, tm, group, settings)
    return await describe_group(t, topic, group)


async def ensure_group(t: NatsTransport, tm: TopicMeta, group: str,
                       settings: GroupSettings | None) -> GroupSettings:
    """The group's settings, creating it (consumers first, then the record) if new;
    GroupSettingsMismatch if it exists with other settings than ``settings``."""
    have = await group_settings(t, tm, group)
    if have is not None:
        if settings is not None and _plain(settings) != _plain(have):
            raise GroupSettingsMismatch(f"group {group!r} of {tm.name!r} exists with other "
                                        "settings; use update_group")
        return have
    s = settings or GroupSettings()
    group_check(tm, s)
    for p in range(tm.partitions):
        await ensure_consumer(t, tm, group, s, p)
    record = _json({"topic": tm.name, "group": group, "settings": msgspec.to_builtins(s)})
    if await t.meta.create(f"g.{tm.token}.{group_token(group)}", record) is None:
        return await ensure_group(t, tm, group, settings)  # lost a race: compare
    return s


async def update_group(t: NatsTransport, topic: str, group: str,
                       settings: GroupSettings) -> GroupInfo:
    tm = await t.topic(topic, fresh=True)
    key = f"g.{tm.token}.{group_token(group)}"
    got = await t.meta.get(key)
    if got is None:
        raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
    old = msgspec.convert(json.loads(got[0])["settings"], GroupSettings)
    group_check(tm, settings)
    for p in range(tm.partitions):
        stream = tm.stream(t.prefix, p)
        info = await t.js.consumer_info(stream, group_token(group))
        want = consumer_config(t, tm, group, settings, p, settings.start)
        if info is None:
            await t.js.create_consumer(stream, want, CONSUMER_FEATURES)
            continue
        cfg = info["config"]
        same = all(cfg.get(k) == want.get(k) for k in
                   ("filter_subject", "filter_subjects", "max_ack_pending", "ack_wait"))
        if same:
            continue
        # Recreate at the ack floor: what was acked stays done, what was in flight comes
        # again (JetStream cannot change a consumer's filter in place on 2.9).
        floor = int((info.get("ack_floor") or {}).get("stream_seq", 0))
        await t.js.delete_consumer(stream, group_token(group))
        await t.js.create_consumer(
            stream, consumer_config(t, tm, group, settings, p, floor), CONSUMER_FEATURES)
    record = _json({"topic": tm.name, "group": group,
                    "settings": msgspec.to_builtins(settings)})
    if await t.meta.put(key, record, last=got[1]) is None:
        raise TideMQError(f"group {group!r} changed meanwhile; retry update_group")
    for m in t._members.values():
        if m.tm.token == tm.token and m.group == group and old != settings:
            m.settings_changed(settings)
    return await describe_group(t, topic, group)


async def delete_group(t: NatsTransport, topic: str, group: str) -> None:
    tm = await t.topic(topic, fresh=True)
    key = f"g.{tm.token}.{group_token(group)}"
    if await t.meta.get(key) is None:
        raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
    await t.meta.forget(key)
    for p in range(tm.partitions):
        await t.js.delete_consumer(tm.stream(t.prefix, p), group_token(group))
    for k in await t.meta.keys(f"r.{tm.token}.{group_token(group)}"):
        await t.meta.forget(k)


async def list_groups(t: NatsTransport, topic: str) -> list[GroupInfo]:
    tm = await t.topic(topic, fresh=True)
    out = []
    for key in await t.meta.keys(f"g.{tm.token}"):
        got = await t.meta.get(key)
        if got is not None:
            with contextlib.suppress(UnknownGroup):
                out.append(await describe_group(t, topic, json.loads(got[0])["group"]))
    return sorted(out, key=lambda g: g.name)


async def describe_group(t: NatsTransport, topic: str, group: str) -> GroupInfo:
    tm = await t.topic(topic, fresh=True)
    s = await group_settings(t, tm, group)
    if s is None:
        raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
    parts = []
    for p in range(tm.partitions):
        ci = await t.js.consumer_info(tm.stream(t.prefix, p), group_token(group))
        if ci is None:
            parts.append(GroupPartitionInfo(p, 0, 0, 0))
            continue
        floor = int((ci.get("ack_floor") or {}).get("stream_seq", 0))
        pending = int(ci.get("num_pending", 0))
        in_flight = int(ci.get("num_ack_pending", 0))
        parts.append(GroupPartitionInfo(p, floor, pending + in_flight, in_flight))
    members = []
    for key in await t.owners.keys(f"m.{tm.token}.{group_token(group)}"):
        got = await t.owners.get(key)
        if got is not None:
            members.append(json.loads(got[0])["member"])
    return GroupInfo(tm.name, group, s, sorted(members), parts,
                     sum(x.lag for x in parts), sum(x.in_flight for x in parts))


async def reset_group(t: NatsTransport, topic: str, group: str, start: StartPosition) -> None:
    check_start(start)
    tm = await t.topic(topic, fresh=True)
    s = await group_settings(t, tm, group)
    if s is None:
        raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
    for p in range(tm.partitions):
        await ensure_consumer(t, tm, group, s, p, start=start)


async def redrive(t: NatsTransport, topic: str, group: str, limit: int | None) -> int:
    """Append ``group``'s dead letters back to their origin partitions, for that group only
    (``x-tidemq-group``); the cursor per dead-letter partition is kept in the metadata."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise InvalidArgument(f"redrive limit must be None or an int >= 0, got {limit!r}")
    tm = await t.topic(topic, fresh=True)
    s = await group_settings(t, tm, group)
    if s is None:
        raise UnknownGroup(f"group {group!r} of {tm.name!r} does not exist")
    try:
        dlq = await t.topic(dead_letter_name(tm.name, s.dead_letter_topic), fresh=True)
    except UnknownTopic:
        return 0
    gtok = group_token(group)
    moved = 0
    for dp in range(dlq.partitions):
        if limit is not None and moved >= limit:
            break
        stream = dlq.stream(t.prefix, dp)
        ckey = f"r.{tm.token}.{gtok}.{dlq.token}.{dlq.incarnation}.{dp}"
        cur = await t.meta.get(ckey)
        seq = int(json.loads(cur[0])["next"]) if cur else 1
        state = (await t.js.stream_info(stream)).get("state", {})
        seq = max(seq, int(state.get("first_seq", 1)))
        last = int(state.get("last_seq", 0))
        batch: list[tuple[int, Record, str]] = []
        while seq <= last and (limit is None or moved < limit):
            m = await t.js.get_seq(stream, seq)
            seq += 1
            if m is None:
                continue
            r = to_record(m["data"], decode_meta(m["headers"].get(META)))
            org = origin_of(r)
            if org is None or topic_key(org[0]) != topic_key(tm.name) or org[1] != group:
                continue
            try:
                part, rec = redriven_record(r, group)
            except ValueError:
                part, rec = 0, redriven_record(
                    msgspec.structs.replace(r, headers={
                        k: v for k, v in (r.headers or {}).items()
                        if not k.endswith("partition")}), group)[1]
            batch.append((part if 0 <= part < tm.partitions else 0, rec,
                          f"rd:{gtok}:{stream}:{seq - 1}"))
            moved += 1
            if len(batch) >= 256:
                await redrive_flush(t, tm, batch, ckey, seq)
                batch = []
        await redrive_flush(t, tm, batch, ckey, seq)
    return moved


async def redrive_flush(t: NatsTransport, tm: TopicMeta, batch: list[tuple[int, Record, str]],
                         ckey: str, seq: int) -> None:
    if batch:
        await t._publish(tm, [r for _, r, _ in batch], [m for _, _, m in batch],
                            [p for p, _, _ in batch])
    await t.meta.put(ckey, _json({"next": seq}))
