"""Hostile input at the broker core (SPEC §9): non-finite and out-of-range numbers, bad names,
oversized filters, too many topics and groups, catalogue writes that fail, unbounded redrive.
Every refusal is a typed error that names what is wrong, and leaves nothing behind."""

from __future__ import annotations

import errno
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tidemq
from tidemq.broker import Backoff, Broker, GroupSettings, TopicConfig
from tidemq.broker import _broker as broker_module
from tidemq.broker._limits import MAX_PREFETCH, MAX_REASON
from tidemq.client import _common
from tidemq.errors import (
    DiskFull,
    InvalidArgument,
    InvalidTopicName,
    MessageTooLarge,
    StorageFailed,
    UnknownTopic,
)
from tidemq.storage import Record

from ._support import Harness

INF = float("inf")
NAN = float("nan")


@pytest.fixture(params=["memory", "file"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path)
    yield harness
    harness.close()


def topic_names(b: Broker) -> list[str]:
    return [t.name for t in b.list_topics()]


# --- nack, extend, prefetch, reasons --------------------------------------------------------


@pytest.mark.parametrize("delay", [INF, -INF, NAN, -1.0, 24 * 3600.0 + 1, "5", True])
def test_bad_nack_delay_is_refused_and_the_message_is_not_orphaned(h: Harness, delay: Any) -> None:
    b, c = h.broker, h.clock
    m = b.subscribe("t", "g", GroupSettings(ack_timeout=1.0), **c.t)
    b.publish("t", [Record(b"x")], now_us=c.now_us)
    [d] = b.fetch(m, 1, **c.t)
    with pytest.raises(InvalidArgument, match="nack delay"):
        b.nack(m, [d.id], delay, **c.t)
    info = b.describe_group("t", "g")
    assert (info.lag, info.in_flight) == (1, 1)  # still leased, nothing changed
    c.advance(1.5)
    b.tick(**c.t)
    [again] = b.fetch(m, 1, **c.t)  # delivered again once the lease ended
    assert again.id == d.id and again.delivery_count == 2


def test_nack_delay_bounds_are_inclusive(h: Harness) -> None:
    b, c = h.broker, h.clock
    m = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"x"), Record(b"y")], now_us=c.now_us)
    d1, d2 = b.fetch(m, 2, **c.t)
    b.nack(m, [d1.id], 24 * 3600.0, **c.t)
    b.nack(m, [d2.id], 0, **c.t)
    assert [d.body for d in b.fetch(m, 2, **c.t)] == [b"y"]


@pytest.mark.parametrize("seconds", [INF, NAN, 0, -1, 12 * 3600.0 + 1, None])
def test_bad_extend_is_refused(h: Harness, seconds: Any) -> None:
    b, c = h.broker, h.clock
    m = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"x")], now_us=c.now_us)
    [d] = b.fetch(m, 1, **c.t)
    with pytest.raises(InvalidArgument, match="extend"):
        b.extend(m, [d.id], seconds, **c.t)
    b.extend(m, [d.id], 12 * 3600.0, **c.t)


@pytest.mark.parametrize("prefetch", [0, -1, MAX_PREFETCH + 1, True, 1.5, "10"])
def test_bad_prefetch_is_refused_before_anything_is_created(h: Harness, prefetch: Any) -> None:
    b, c = h.broker, h.clock
    with pytest.raises(InvalidArgument, match="prefetch"):
        b.subscribe("t", "g", None, prefetch=prefetch, **c.t)
    assert topic_names(b) == []
    b.subscribe("t", "g", None, prefetch=MAX_PREFETCH, **c.t)


@pytest.mark.parametrize("reason", [None, 5, b"bytes", "r" * (MAX_REASON + 1)])
def test_bad_reject_reason_is_refused(h: Harness, reason: Any) -> None:
    b, c = h.broker, h.clock
    m = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"x")], now_us=c.now_us)
    [d] = b.fetch(m, 1, **c.t)
    with pytest.raises(InvalidArgument, match="reason"):
        b.reject(m, [d.id], reason, **c.t)
    assert b.describe_group("t", "g").in_flight == 1
    b.reject(m, [d.id], "r" * MAX_REASON, **c.t)
    assert b.describe_topic("t.dlq").partitions[0].end_offset == 1


# --- group settings, topic configs, names ---------------------------------------------------


@pytest.mark.parametrize(
    ("field", "settings"),
    [
        ("ack_timeout", {"ack_timeout": 0}),
        ("ack_timeout", {"ack_timeout": -1.0}),
        ("ack_timeout", {"ack_timeout": INF}),
        ("ack_timeout", {"ack_timeout": NAN}),
        ("ack_timeout", {"ack_timeout": 12 * 3600.0 + 1}),
        ("max_deliveries", {"max_deliveries": 0}),
        ("max_deliveries", {"max_deliveries": 1001}),
        ("max_deliveries", {"max_deliveries": True}),
        ("max_deliveries", {"max_deliveries": 2.5}),
        ("backoff initial", {"backoff": Backoff(initial=NAN)}),
        ("backoff initial", {"backoff": Backoff(initial=-1.0)}),
        ("backoff initial", {"backoff": Backoff(initial=INF)}),
        ("backoff max", {"backoff": Backoff(max=INF)}),
        ("backoff max", {"backoff": Backoff(max=24 * 3600.0 + 1)}),
        ("backoff multiplier", {"backoff": Backoff(multiplier=0.5)}),
        ("backoff multiplier", {"backoff": Backoff(multiplier=101.0)}),
        ("backoff multiplier", {"backoff": Backoff(multiplier=INF)}),
        ("backoff multiplier", {"backoff": Backoff(multiplier=NAN)}),
        ("start", {"start": {"timestamp": INF}}),
        ("start", {"start": {"timestamp": NAN}}),
        ("start", {"start": {0: INF}}),
        ("start", {"start": "middle"}),
        ("mode", {"mode": "fanout"}),
        ("routing-key pattern", {"filter": {"routing_key": ["a*"]}}),
        ("routing-key patterns", {"filter": {"routing_key": [f"p{i}" for i in range(65)]}}),
        ("dead_letter_topic", {"dead_letter_topic": "../evil"}),
        ("dead_letter_topic", {"dead_letter_topic": "d" * 300}),
        ("dead_letter_topic", {"dead_letter_topic": ""}),
    ],
)
def test_bad_group_settings_create_nothing(h: Harness, field: str, settings: dict[str, Any]) -> None:
    b, c = h.broker, h.clock
    s = GroupSettings(**settings)
    with pytest.raises(InvalidArgument, match=field):
        s.validate()
    # subscribe to a topic that does not exist yet: neither the topic nor the group appears.
    with pytest.raises(InvalidArgument, match=field):
        b.subscribe("t", "g", s, **c.t)
    assert topic_names(b) == []
    # create_group on an existing topic: no group.
    b.create_topic("t", now_us=c.now_us)
    with pytest.raises(InvalidArgument, match=field):
        b.create_group("t", "g", s, now_us=c.now_us)
    assert b.list_groups("t") == []
    # the client refuses before sending
    with pytest.raises(InvalidArgument, match=field):
        _common.merge_settings(None, settings)


def test_dead_letter_topic_path_tricks_never_reach_dead_lettering(h: Harness) -> None:
    """Before: '../evil' was only checked when the first message was dead-lettered, after the
    message was marked done: a typed error, lag 0, nothing in any DLQ (the message lost)."""
    b, c = h.broker, h.clock
    b.publish("t", [Record(b"x")], now_us=c.now_us)
    for bad in ("../evil", "x" * 300):
        with pytest.raises(InvalidTopicName, match="dead_letter_topic"):
            b.subscribe("t", "g", GroupSettings(dead_letter_topic=bad), **c.t)
        with pytest.raises(InvalidTopicName, match="dead_letter_topic"):
            b.subscribe("new", "g", GroupSettings(dead_letter_topic=bad), **c.t)
    assert topic_names(b) == ["t"] and b.list_groups("t") == []
    m = b.subscribe("t", "g", GroupSettings(dead_letter_topic="x" * 200), **c.t)
    [d] = b.fetch(m, 1, **c.t)
    b.reject(m, [d.id], "bad", **c.t)
    assert b.describe_topic("x" * 200).partitions[0].end_offset == 1


def test_dead_letter_topic_must_not_be_the_topic_itself(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", now_us=c.now_us)
    with pytest.raises(InvalidArgument, match="own topic"):
        b.create_group("t", "g", GroupSettings(dead_letter_topic="T"), now_us=c.now_us)
    b.create_group("t", "g", None, now_us=c.now_us)
    with pytest.raises(InvalidArgument, match="own topic"):
        b.update_group("t", "g", GroupSettings(dead_letter_topic="t"), **c.t)


@pytest.mark.parametrize("name", ["", "g" * 201, "a\x00b", "a\nb", "tab\there", "zero\u200bwidth",
                                  "\ud800", "del\x7f", 5, None, b"g"])
def test_bad_group_names_are_refused(h: Harness, name: Any) -> None:
    b, c = h.broker, h.clock
    with pytest.raises(InvalidArgument, match="group name"):
        b.subscribe("t", name, None, **c.t)
    b.create_topic("t", now_us=c.now_us)
    with pytest.raises(InvalidArgument, match="group name"):
        b.create_group("t", name, None, now_us=c.now_us)
    assert topic_names(b) == ["t"] and b.list_groups("t") == []


def test_printable_group_names_are_fine(h: Harness) -> None:
    b, c = h.broker, h.clock
    for name in ("g" * 200, "café ☕ billing", "with space", "a/b..c"):
        b.subscribe("t", name, None, **c.t)
    assert len(b.list_groups("t")) == 4


@pytest.mark.parametrize(
    ("field", "config"),
    [
        ("partitions", {"partitions": 0}),
        ("partitions", {"partitions": 1025}),
        ("partitions", {"partitions": True}),
        ("sync_interval", {"sync_interval": 0}),
        ("sync_interval", {"sync_interval": NAN}),
        ("sync_interval", {"sync_interval": INF}),
        ("sync_interval", {"sync_interval": 60.5}),
        ("dedup_window", {"dedup_window": -1.0}),
        ("dedup_window", {"dedup_window": NAN}),
        ("dedup_window", {"dedup_window": 7 * 86400.0 + 1}),
        ("retention", {"retention": 0}),
        ("retention", {"retention": -5.0}),
        ("retention", {"retention": INF}),
        ("retention", {"retention": NAN}),
        ("retention_bytes", {"retention_bytes": -1}),
        ("max_message_bytes", {"max_message_bytes": 0}),
        ("max_message_bytes", {"max_message_bytes": 64 * 1024 * 1024 + 1}),
        ("segment_bytes", {"segment_bytes": 4095}),
        ("segment_bytes", {"segment_bytes": 2 * 1024**3 + 1}),
        ("backlog_limit", {"backlog_limit": 0}),
        ("backlog_limit", {"backlog_limit": 1.5}),
    ],
)
def test_bad_topic_configs_are_refused(h: Harness, field: str, config: dict[str, Any]) -> None:
    b, c = h.broker, h.clock
    with pytest.raises(InvalidArgument, match=field):
        b.create_topic("t", TopicConfig(**config), now_us=c.now_us)
    assert topic_names(b) == []
    options = dict(config)
    partitions = options.pop("partitions", 1)
    with pytest.raises(InvalidArgument, match=field):
        _common.topic_config(partitions, options)


def test_topic_config_bounds_are_inclusive(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(sync_interval=60.0, dedup_window=7 * 86400.0,
                                    max_message_bytes=64 * 1024 * 1024, segment_bytes=2 * 1024**3,
                                    backlog_limit=1, retention=1e-3, retention_bytes=0,
                                    partitions=1024), now_us=c.now_us)


def test_restored_settings_are_not_held_to_newer_limits(h: Harness) -> None:
    """A group stored before a limit existed still opens (its settings are not re-validated)."""
    b, c = h.broker, h.clock
    b.subscribe("t", "g", GroupSettings(ack_timeout=5.0), **c.t)
    t = b._topics["t"]
    legacy = GroupSettings(ack_timeout=30 * 86400.0, filter={"routing_key": "a." * 150 + "#"})
    t.record_event(["gu", "g", broker_module.settings_out(legacy), t.groups["g"].snapshot()])
    b.barrier("t")
    b2 = h.crash()  # replays the journal (a clean close would snapshot the live settings)
    assert b2.describe_group("t", "g").settings == legacy
    b2.subscribe("t", "g", legacy, **c.t)  # joining it as it is works too
    with pytest.raises(InvalidArgument, match="ack_timeout"):
        b2.subscribe("t", "new", legacy, **c.t)  # creating a group with those does not


def test_start_for_reset_is_checked(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.subscribe("t", "g", None, **c.t)
    for bad in ({"timestamp": INF}, {0: NAN}, "nowhere", 1.5):
        with pytest.raises(InvalidArgument, match="start"):
            b.reset_group("t", "g", bad, now_us=c.now_us)


def test_routing_key_of_more_than_128_words_is_too_large(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.publish("t", [Record(b"x", routing_key="." * 127)], now_us=c.now_us)  # 128 empty words
    with pytest.raises(MessageTooLarge, match="128"):
        b.publish("t", [Record(b"x", routing_key="." * 128)], now_us=c.now_us)
    assert b.describe_topic("t").partitions[0].end_offset == 1


def test_backoff_of_many_failures_does_not_overflow() -> None:
    assert Backoff(initial=1.0, multiplier=100.0, max=60.0).delay(1000) == 60.0


# --- counts ---------------------------------------------------------------------------------


def test_topic_count_is_capped(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    b, c = h.broker, h.clock
    monkeypatch.setattr(broker_module, "MAX_TOPICS", 3)
    b.create_topic("a", now_us=c.now_us)
    b.publish("b", [Record(b"x")], now_us=c.now_us)  # auto-created
    # A new group whose dead-letter topic does not exist needs room for it.
    with pytest.raises(InvalidArgument, match="at most 3"):
        b.subscribe("c", "g", None, **c.t)  # c and c.dlq: one too many
    assert topic_names(b) == ["a", "b"]
    m = b.subscribe("a", "g", None, **c.t)  # a.dlq fits (it is not created yet)
    b.create_topic("c", now_us=c.now_us)  # the last room
    with pytest.raises(InvalidArgument, match="at most 3"):
        b.create_topic("d", now_us=c.now_us)
    with pytest.raises(InvalidArgument, match="at most 3"):
        b.publish("d", [Record(b"x")], now_us=c.now_us)
    with pytest.raises(InvalidArgument, match="delete topics"):
        b.create_group("b", "g", None, now_us=c.now_us)  # b.dlq has no room
    assert topic_names(b) == ["a", "b", "c"]
    # The room was checked when the group was created; dead-lettering never fails for it,
    # even though a topic took the room since.
    b.publish("a", [Record(b"x")], now_us=c.now_us)
    [d] = b.fetch(m, 1, **c.t)
    b.reject(m, [d.id], "r", **c.t)
    assert b.describe_topic("a.dlq").partitions[0].end_offset == 1
    assert len(b.list_topics()) == 4


def test_group_count_is_capped(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    b, c = h.broker, h.clock
    monkeypatch.setattr(broker_module, "MAX_GROUPS_PER_TOPIC", 2)
    b.subscribe("t", "g1", None, **c.t)
    b.create_group("t", "g2", None, now_us=c.now_us)
    with pytest.raises(InvalidArgument, match="at most|most allowed"):
        b.subscribe("t", "g3", None, **c.t)
    b.subscribe("t", "g2", None, **c.t)  # joining an existing group is fine
    assert [g.name for g in b.list_groups("t")] == ["g1", "g2"]


# --- catalogue writes that fail -------------------------------------------------------------


def failing_put(h: Harness, monkeypatch: pytest.MonkeyPatch, err: int, times: int = 1_000_000) -> list[int]:
    """Make the next ``times`` catalogue writes raise OSError(err); returns a call counter."""
    meta = h.broker._meta
    real = meta.put
    calls = [0]

    def put(name: str, data: bytes) -> None:
        if name == broker_module.CATALOGUE and calls[0] < times:
            calls[0] += 1
            raise OSError(err, f"injected {errno.errorcode[err]}")
        real(name, data)

    monkeypatch.setattr(meta, "put", put)
    return calls


def logs_of(h: Harness, key: str) -> list[str]:
    return [n for n in h.store.list_logs() if n.startswith(key + "/")]


@pytest.mark.parametrize(("err", "typed"), [(errno.ENOSPC, DiskFull), (errno.EDQUOT, DiskFull),
                                            (errno.EIO, StorageFailed)])
def test_failed_catalogue_write_leaves_no_ghost_topic(h: Harness, monkeypatch: pytest.MonkeyPatch,
                                                      err: int, typed: type[Exception]) -> None:
    b, c = h.broker, h.clock
    b.create_topic("keep", now_us=c.now_us)
    failing_put(h, monkeypatch, err)
    with pytest.raises(typed):
        b.create_topic("t", TopicConfig(partitions=3), now_us=c.now_us)
    with pytest.raises(typed):
        b.publish("u", [Record(b"x")], now_us=c.now_us)  # auto-creation
    with pytest.raises(typed):
        b.subscribe("v", "g", None, **c.t)
    assert topic_names(b) == ["keep"]
    assert logs_of(h, "t") == [] and logs_of(h, "u") == [] and logs_of(h, "v") == []
    with pytest.raises(UnknownTopic):
        b.describe_topic("t")
    with pytest.raises(typed):
        b.set_partitions("keep", 4, now_us=c.now_us)
    assert len(b.describe_topic("keep").partitions) == 1
    monkeypatch.undo()
    b.create_topic("t", TopicConfig(partitions=3), now_us=c.now_us)
    b.publish("t", [Record(b"x")], now_us=c.now_us)
    assert sorted(topic_names(h.reopen())) == ["keep", "t"]


def test_dead_letter_topic_creation_failure_loses_no_dead_letter(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    b, c = h.broker, h.clock
    m = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"x")], now_us=c.now_us)
    [d] = b.fetch(m, 1, **c.t)
    failing_put(h, monkeypatch, errno.ENOSPC)
    with pytest.raises(DiskFull):
        b.reject(m, [d.id], "bad", **c.t)
    assert "t.dlq" not in topic_names(b)
    monkeypatch.undo()
    b.tick(**c.t)  # the dead letter is written now
    w = b.subscribe("t.dlq", "watch", None, **c.t)
    [dl] = b.fetch(w, 10, **c.t)
    assert dl.body == b"x" and dl.headers["x-tidemq-origin-reason"] == "bad"


def populate(h: Harness) -> None:
    """A topic with state in every part of its snapshot: groups, acks, delays, dedup."""
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(partitions=2), now_us=c.now_us)
    m = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"%d" % i, key=b"%d" % i, dedup_id=str(i)) for i in range(10)],
              now_us=c.now_us)
    b.publish("t", [Record(b"later", deliver_at_us=c.now_us + 3_600_000_000)], now_us=c.now_us)
    b.ack(m, [d.id for d in b.fetch(m, 4, **c.t)], **c.t)
    b.snapshot_now("t", now_us=c.now_us)
    b.ack(m, [d.id for d in b.fetch(m, 2, **c.t)], **c.t)
    b.barrier("t")


def test_delete_on_a_full_disk_frees_the_logs_first(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    b, c = h.broker, h.clock
    populate(h)
    calls = failing_put(h, monkeypatch, errno.ENOSPC, times=1)  # room once the logs are gone
    b.delete_topic("t", now_us=c.now_us)
    assert calls[0] == 1 and topic_names(b) == [] and logs_of(h, "t") == []
    monkeypatch.undo()
    assert topic_names(h.crash()) == []


def test_delete_that_cannot_write_the_catalogue_comes_back_empty(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    b, c = h.broker, h.clock
    populate(h)
    failing_put(h, monkeypatch, errno.ENOSPC)
    with pytest.raises(DiskFull, match="delete it again"):
        b.delete_topic("t", now_us=c.now_us)
    assert logs_of(h, "t") == []
    monkeypatch.undo()
    b2 = h.crash()
    check_comes_back_empty(h, b2)


def test_topic_whose_logs_vanished_opens_empty(h: Harness) -> None:
    """A crash after a full-disk delete freed the logs but before the catalogue was written."""
    populate(h)
    for name in logs_of(h, "t"):
        h.store.delete_log(name)
    check_comes_back_empty(h, h.crash())


def check_comes_back_empty(h: Harness, b: Broker) -> None:
    c = h.clock
    info = b.describe_topic("t")
    assert [p.end_offset for p in info.partitions] == [0, 0] and info.delayed == 0
    g = b.describe_group("t", "g")
    assert g.lag == 0 and g.in_flight == 0
    b.publish("t", [Record(b"new", dedup_id="1")], now_us=c.now_us)  # old dedup ids forgotten
    m = b.subscribe("t", "g", None, **c.t)
    [d] = b.fetch(m, 10, **c.t)
    assert d.body == b"new"
    b.ack(m, [d.id], **c.t)
    c.advance(7200)
    b.tick(**c.t)
    assert b.fetch(m, 10, **c.t) == []  # the vanished delayed message does not come back
    b.delete_topic("t", now_us=c.now_us)
    assert topic_names(h.reopen()) == []


def test_delete_with_other_catalogue_errors_keeps_the_topic(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    b, c = h.broker, h.clock
    populate(h)
    failing_put(h, monkeypatch, errno.EIO)
    with pytest.raises(StorageFailed):
        b.delete_topic("t", now_us=c.now_us)
    assert topic_names(b) == ["t"] and b.describe_group("t", "g").lag == 4
    monkeypatch.undo()
    assert h.reopen().describe_group("t", "g").lag == 4


# --- redrive --------------------------------------------------------------------------------


def dead_letter(h: Harness, n: int, group: str = "g") -> str:
    """Subscribe ``group`` and dead-letter ``n`` new messages (bodies ``<group><i>``)."""
    b, c = h.broker, h.clock
    m = b.subscribe("t", group, None, prefetch=100, **c.t)
    b.fetch(m, 100, **c.t)  # nothing of earlier calls is left for this group
    b.publish("t", [Record(b"%s%d" % (group.encode(), i)) for i in range(n)], now_us=c.now_us)
    got = b.fetch(m, n, **c.t)
    b.reject(m, [d.id for d in got], "r", **c.t)
    return m


def test_redrive_moves_at_most_max_batch_per_call(h: Harness) -> None:
    b, c = h.broker, h.clock
    m = dead_letter(h, 25)
    dead_letter(h, 7, group="other")  # interleaved letters of another group are skipped
    assert b.redrive("t", "g", now_us=c.now_us, max_batch=10) == 10
    assert b.redrive("t", "g", now_us=c.now_us, limit=3, max_batch=10) == 3
    assert b.redrive("t", "g", now_us=c.now_us, max_batch=10) == 10
    assert b.redrive("t", "g", now_us=c.now_us, max_batch=10) == 2
    assert b.redrive("t", "g", now_us=c.now_us, max_batch=10) == 0
    again = [d.body for d in b.fetch(m, 100, **c.t) if d.body.startswith(b"g")]
    assert sorted(again) == sorted(b"g%d" % i for i in range(25))
    assert b.redrive("t", "other", now_us=c.now_us, limit=0) == 0
    assert b.redrive("t", "other", now_us=c.now_us) == 7


def test_redrive_default_batch_and_bad_arguments(h: Harness) -> None:
    b, c = h.broker, h.clock
    dead_letter(h, 3)
    for bad in ({"limit": -1}, {"limit": 1.5}, {"max_batch": 0}, {"max_batch": True}):
        with pytest.raises(InvalidArgument, match="redrive"):
            b.redrive("t", "g", now_us=c.now_us, **bad)
    assert broker_module.REDRIVE_BATCH == 10_000
    assert b.redrive("t", "g", now_us=c.now_us) == 3


def test_redrive_appends_in_bounded_pieces_and_journals_each(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    b, c = h.broker, h.clock
    monkeypatch.setattr(broker_module, "REDRIVE_FLUSH_BYTES", 1)  # append after every letter
    dead_letter(h, 5)
    appends: list[int] = []
    t = b._topics["t"]
    real = t.append
    monkeypatch.setattr(t, "append", lambda *a, **k: appends.append(len(a[1])) or real(*a, **k))
    assert b.redrive("t", "g", now_us=c.now_us, max_batch=4) == 4
    assert appends == [1, 1, 1, 1]
    b2 = h.reopen()
    assert b2.redrive("t", "g", now_us=c.now_us) == 1  # progress of each piece was journaled
    m = b2.subscribe("t", "g", None, prefetch=10, **c.t)
    assert len(b2.fetch(m, 10, **c.t)) == 5


def test_redrive_survives_forged_origin_partitions(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(partitions=2), now_us=c.now_us)
    m = b.subscribe("t", "g", None, **c.t)
    o = "x-tidemq-origin-"
    b.publish("t.dlq", [Record(b"%d" % i, headers={o + "topic": "t", o + "group": "g",
                                                   o + "partition": p})
                        for i, p in enumerate(["zzz", "-3", "99", "1", ""])], now_us=c.now_us)
    assert b.redrive("t", "g", now_us=c.now_us) == 5
    got = b.fetch(m, 10, **c.t)
    assert sorted(d.body for d in got) == [b"0", b"1", b"2", b"3", b"4"]
    assert {d.body: d.partition for d in got}[b"3"] == 1


# --- the client refuses before sending ------------------------------------------------------


def test_client_checks_mirror_the_broker() -> None:
    for bad in (INF, NAN, -1.0, 86401.0):
        with pytest.raises(InvalidArgument, match="nack delay"):
            _common._seconds("delay", bad)
    for bad in (INF, NAN, 0, 43201.0):
        with pytest.raises(InvalidArgument, match="extend"):
            _common._seconds("seconds", bad, positive=True)
    assert _common._seconds("delay", 0) == 0.0
    with pytest.raises(InvalidArgument, match="prefetch"):
        _common.prefetch(MAX_PREFETCH + 1)
    with pytest.raises(InvalidArgument, match="reason"):
        _common.reject_reason("r" * (MAX_REASON + 1))
    with pytest.raises(InvalidArgument, match="group name"):
        _common.group_name("a\x00")
    with pytest.raises(InvalidArgument, match="backoff"):
        _common.merge_settings(None, _common.group_settings({"backoff": ("a", 1, 2)}))
    # publish delays may be long (months); only non-finite ones are refused
    _common.make_record(b"x", delay=90 * 86400.0)
    with pytest.raises(InvalidArgument, match="delay"):
        _common.make_record(b"x", delay=INF)


def test_memory_client_end_to_end() -> None:
    with tidemq.Client("memory://") as mq:
        with pytest.raises(InvalidTopicName, match="dead_letter_topic"):
            mq.subscribe("t", "g", dead_letter_topic="../evil")
        assert mq.list_topics() == []
        mq.publish("t", b"x")
        with mq.subscribe("t", "g", ack_timeout=0.2) as sub:
            [msg] = sub.receive(max_messages=1, timeout=2.0)
            with pytest.raises(InvalidArgument):
                sub.nack(msg.id, delay=INF)
            with pytest.raises(InvalidArgument):
                sub.extend(msg.id, math.nan)
            [again] = sub.receive(max_messages=1, timeout=5.0)
            assert again.id == msg.id and again.delivery_count == 2
            sub.ack(again.id)
