"""Groups through the broker: settings, members, acks across crashes, dead letters, redrive,
retention."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemq.broker import GroupSettings, TopicConfig
from tidemq.errors import GroupSettingsMismatch, InvalidArgument, UnknownGroup, UnknownMessage
from tidemq.storage import Record

from ._support import Harness


@pytest.fixture(params=["memory", "file"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def fh(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness("file", tmp_path)
    yield harness
    harness.close()


def test_first_subscribe_defines_settings(h: Harness) -> None:
    b, c = h.broker, h.clock
    s = GroupSettings(ack_timeout=5.0)
    m1 = b.subscribe("t", "g", s, **c.t)
    m2 = b.subscribe("t", "g", None, **c.t)
    assert m1 != m2
    assert b.describe_group("t", "g").settings == s
    with pytest.raises(GroupSettingsMismatch):
        b.subscribe("t", "g", GroupSettings(ack_timeout=6.0), **c.t)
    b.update_group("t", "g", GroupSettings(ack_timeout=6.0), now_us=c.now_us, mono_us=c.mono_us)
    assert b.describe_group("t", "g").settings.ack_timeout == 6.0
    assert sorted(b.describe_group("t", "g").members) == sorted([m1, m2])
    assert [g.name for g in b.list_groups("t")] == ["g"]
    b.delete_group("t", "g", now_us=c.now_us)
    with pytest.raises(UnknownGroup):
        b.describe_group("t", "g")
    with pytest.raises(UnknownMessage):
        b.fetch(m1, 1, **c.t)


def test_fan_out_and_unsubscribe_releases(h: Harness) -> None:
    b, c = h.broker, h.clock
    a = b.subscribe("t", "a", None, **c.t)
    z = b.subscribe("t", "z", None, **c.t)
    b.publish("t", [Record(b"1"), Record(b"2")], now_us=c.now_us)
    assert {a, z} <= b.wakeups()
    assert [d.body for d in b.fetch(a, 10, **c.t)] == [b"1", b"2"]
    assert [d.body for d in b.fetch(z, 10, **c.t)] == [b"1", b"2"]
    b.unsubscribe(a, **c.t)
    a2 = b.subscribe("t", "a", None, **c.t)
    assert [d.body for d in b.fetch(a2, 10, **c.t)] == [b"1", b"2"]


def test_acked_under_always_never_redelivered_unacked_come_again(fh: Harness) -> None:
    b, c = fh.broker, fh.clock
    b.create_topic("t", TopicConfig(durability="always"), now_us=c.now_us)
    m = b.subscribe("t", "g", None, **c.t)
    b.sync(b.publish("t", [Record(b"%d" % i) for i in range(6)], now_us=c.now_us).token)
    got = b.fetch(m, 6, **c.t)
    tok = b.ack(m, [d.id for d in got[:3]], **c.t)
    assert b.needs_sync(tok)
    b.sync(tok)
    b2 = fh.crash()
    m2 = b2.subscribe("t", "g", None, **c.t)
    again = b2.fetch(m2, 10, **c.t)
    assert [d.body for d in again] == [b"3", b"4", b"5"]
    assert all(d.delivery_count >= 2 for d in again)


def test_state_never_ahead_of_the_log_after_a_crash(fh: Harness) -> None:
    # A crash (the page cache survives): the group is never ahead of the log. The power-cut
    # case, with a really torn data tail, is test_group_durable.py::
    # test_group_is_clamped_after_a_power_cut_tears_the_data_tail.
    b, c = fh.broker, fh.clock
    b.create_topic("t", TopicConfig(durability="always"), now_us=c.now_us)
    m = b.subscribe("t", "g", None, **c.t)
    b.sync(b.publish("t", [Record(b"a")], now_us=c.now_us).token)
    b.publish("t", [Record(b"b")], now_us=c.now_us)
    got = b.fetch(m, 10, **c.t)
    b.sync(b.ack(m, [d.id for d in got], **c.t))  # journal synced; 'b' data synced too by log order
    b2 = fh.crash()
    info = b2.describe_group("t", "g")
    assert info.partitions[0].committed <= b2.describe_topic("t").partitions[0].end_offset


def test_reject_goes_to_dead_letter_topic_with_headers(h: Harness) -> None:
    b, c = h.broker, h.clock
    m = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"bad", key=b"k", headers={"h": "v"})], now_us=c.now_us)
    [d] = b.fetch(m, 1, **c.t)
    b.reject(m, [d.id], "nope", **c.t)
    w = b.subscribe("t.dlq", "watch", None, **c.t)
    [dl] = b.fetch(w, 10, **c.t)
    assert dl.body == b"bad" and dl.key == b"k"
    hd = dl.headers
    assert hd["h"] == "v"
    assert hd["x-tidemq-origin-topic"] == "t" and hd["x-tidemq-origin-group"] == "g"
    assert hd["x-tidemq-origin-partition"] == "0" and hd["x-tidemq-origin-offset"] == "0"
    assert hd["x-tidemq-origin-delivery-count"] == "1"
    assert hd["x-tidemq-origin-reason"] == "nope"  # the caller's reason


def test_max_deliveries_dead_letters_on_tick(h: Harness) -> None:
    b, c = h.broker, h.clock
    m = b.subscribe("t", "g", GroupSettings(max_deliveries=2, ack_timeout=1.0,
                                            dead_letter_topic="dead"), **c.t)
    b.publish("t", [Record(b"x")], now_us=c.now_us)
    for _ in range(2):
        assert len(b.fetch(m, 1, **c.t)) == 1
        c.advance(1.5)
        b.tick(**c.t)
    assert b.fetch(m, 1, **c.t) == []
    assert b.describe_topic("dead").partitions[0].end_offset == 1


def test_redrive_returns_dead_letters_to_their_group_only_once(h: Harness) -> None:
    b, c = h.broker, h.clock
    g = b.subscribe("t", "g", None, **c.t)
    o = b.subscribe("t", "other", None, **c.t)
    b.publish("t", [Record(b"1"), Record(b"2")], now_us=c.now_us)
    got = b.fetch(g, 10, **c.t)
    b.reject(g, [got[0].id], "r", **c.t)
    b.ack(g, [got[1].id], **c.t)
    b.ack(o, [d.id for d in b.fetch(o, 10, **c.t)], **c.t)
    assert b.redrive("t", "g", now_us=c.now_us) == 1
    assert b.redrive("t", "g", now_us=c.now_us) == 0
    [again] = b.fetch(g, 10, **c.t)
    # The hidden x-tidemq-group is not shown; its dead-letter history stays.
    assert again.body == b"1" and set(again.headers) == {"x-tidemq-deaths"}
    assert b.fetch(o, 10, **c.t) == []  # the other group does not see it again


def test_redrive_progress_survives_reopen(h: Harness) -> None:
    b, c = h.broker, h.clock
    g = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"1")], now_us=c.now_us)
    [d] = b.fetch(g, 1, **c.t)
    b.reject(g, [d.id], "r", **c.t)
    assert b.redrive("t", "g", now_us=c.now_us) == 1
    b2 = h.reopen()
    assert b2.redrive("t", "g", now_us=c.now_us) == 0


def test_retention_keeps_what_a_group_still_needs(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("q", TopicConfig(retention=1.0, segment_bytes=4096), now_us=c.now_us)
    b.create_topic("log", TopicConfig(retention=1.0, segment_bytes=4096, log_retention=True),
                   now_us=c.now_us)
    for t in ("q", "log"):
        b.create_group(t, "g", None, now_us=c.now_us)
        for _ in range(20):
            b.publish(t, [Record(b"x" * 500) for _ in range(4)], now_us=c.now_us)
    c.advance(5)
    b.tick(**c.t)
    assert b.describe_topic("q").partitions[0].start_offset == 0
    assert b.describe_topic("log").partitions[0].start_offset > 0


def test_reset_group_replays(h: Harness) -> None:
    b, c = h.broker, h.clock
    m = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"1"), Record(b"2")], now_us=c.now_us)
    b.ack(m, [d.id for d in b.fetch(m, 10, **c.t)], **c.t)
    b.reset_group("t", "g", "earliest", now_us=c.now_us)
    assert [d.body for d in b.fetch(m, 10, **c.t)] == [b"1", b"2"]


def test_a_dead_letter_keeps_its_history_of_deaths(h: Harness) -> None:
    # x-tidemq-deaths: one entry per (topic, group, reason), newest first, with a count.
    b, c = h.broker, h.clock
    b.create_topic("t", now_us=c.now_us)
    b.create_topic("back", now_us=c.now_us)
    b.create_group("t", "g", GroupSettings(dead_letter_topic="back"), now_us=c.now_us)
    b.create_group("back", "r", GroupSettings(dead_letter_topic="t"), now_us=c.now_us)
    g = b.subscribe("t", "g", None, **c.t)
    r = b.subscribe("back", "r", None, **c.t)
    b.publish("t", [Record(b"x", headers={"own": "1"})], now_us=c.now_us)
    t0 = c.now_us // 1000
    for _ in range(2):  # t/g -> back/r -> t/g -> back/r -> t/g
        [d] = b.fetch(g, 1, **c.t)
        b.reject(g, [d.id], "bad", **c.t)
        c.advance(1)
        [d] = b.fetch(r, 1, **c.t)
        b.reject(r, [d.id], "again", **c.t)
    [d] = b.fetch(g, 1, **c.t)
    assert d.headers["own"] == "1"
    deaths = json.loads(d.headers["x-tidemq-deaths"])
    assert [e[:4] for e in deaths] == [["back", "r", "again", 2], ["t", "g", "bad", 2]]
    assert deaths[1][4] == t0  # the first time of that entry
    assert all(len(e) == 5 for e in deaths)  # no TTL of its own: no sixth item


def test_a_deaths_entry_keeps_the_ttl_the_message_had_when_it_first_died(h: Harness) -> None:
    # A publisher copying the history into a new message (a retry with a longer TTL)
    # continues it: the entry counts on and keeps its first TTL, as RabbitMQ's x-death
    # keeps original-expiration. Entries a publisher garbled are dropped, not fatal.
    b, c = h.broker, h.clock
    b.create_topic("t", now_us=c.now_us)
    b.create_group("t", "g", None, now_us=c.now_us)
    dlq = b.subscribe("t.dlq", "d", None, **c.t)
    history = None
    for ttl_s in (1, 2, 3):
        headers = {"x-tidemq-deaths": history} if history else None
        b.publish("t", [Record(b"x", headers=headers, ttl_us=ttl_s * 1_000_000)],
                  now_us=c.now_us)
        c.advance(ttl_s + 0.5)
        assert b.expire_head("t", "g", now_us=c.now_us) == 1
        [d] = b.fetch(dlq, 1, **c.t)
        b.ack(dlq, [d.id], **c.t)
        history = d.headers["x-tidemq-deaths"]
    [entry] = json.loads(history)
    assert entry[1:4] == ["g", "expired", 3] and entry[5] == {"ttl": 1000}
    garbled = json.dumps([["t", "g", "expired", "2", 0], ["t", "g", "expired", 1, 0, True],
                          ["t", "g", "expired", 1, 0, {"ttl": "1"}], ["t", "g", "x", 1, 0, {"a": 1}],
                          "x", ["t", "g", "expired", 7, 5]])
    b.publish("t", [Record(b"y", headers={"x-tidemq-deaths": garbled}, ttl_us=1)],
              now_us=c.now_us)
    c.advance(1)
    assert b.expire_head("t", "g", now_us=c.now_us) == 1
    [d] = b.fetch(dlq, 1, **c.t)
    assert [e[:4] for e in json.loads(d.headers["x-tidemq-deaths"])] == [["t", "g", "expired", 8]]


def test_dead_letter_routing_key_replaces_the_key_and_the_history_keeps_the_old(
        h: Harness) -> None:
    # An AMQP queue's x-dead-letter-routing-key: the dead letters reach the dead-letter
    # topic's groups that filter on that key, and the history says what the key was.
    b, c = h.broker, h.clock
    b.create_topic("t", now_us=c.now_us)
    b.create_topic("dead", now_us=c.now_us)
    b.create_group("t", "g", GroupSettings(dead_letter_topic="dead",
                                           dead_letter_routing_key="parked.t"), now_us=c.now_us)
    b.create_group("t", "same", GroupSettings(dead_letter_topic="dead",
                                              dead_letter_routing_key="a.1"), now_us=c.now_us)
    d = b.subscribe("dead", "d", GroupSettings(filter={"routing_key": "parked.*"}), **c.t)
    b.publish("t", [Record(b"x", routing_key="a.1")], now_us=c.now_us)
    for group in ("g", "same"):
        m = b.subscribe("t", group, None, **c.t)
        [got] = b.fetch(m, 1, **c.t)
        b.reject(m, [got.id], "bad", **c.t)
    [dead] = b.fetch(d, 10, **c.t)  # the one from "same" keeps a.1: filtered out
    assert dead.routing_key == "parked.t"
    [entry] = json.loads(dead.headers["x-tidemq-deaths"])
    assert entry[:4] == ["t", "g", "bad", 1] and entry[5] == {"rk": "a.1"}
    all_ = b.subscribe("dead", "all", None, **c.t)
    assert sorted(len(json.loads(x.headers["x-tidemq-deaths"])[0])
                  for x in b.fetch(all_, 10, **c.t)) == [5, 6]  # no change of key: no "rk"


@pytest.mark.parametrize("rk", ["a" * 256, "." * 128, 5])
def test_a_bad_dead_letter_routing_key_is_invalid_argument(h: Harness, rk: object) -> None:
    h.broker.create_topic("t", now_us=h.clock.now_us)
    with pytest.raises(InvalidArgument, match="dead_letter_routing_key"):
        h.broker.create_group("t", "g", GroupSettings(dead_letter_routing_key=rk),  # type: ignore[arg-type]
                              now_us=h.clock.now_us)


def test_expire_head_dead_letters_what_expired_at_the_head_without_a_fetch(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", now_us=c.now_us)
    b.create_group("t", "g", GroupSettings(filter={"routing_key": "a.*"}), now_us=c.now_us)
    m = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"short", routing_key="a.1", ttl_us=1_000_000),
                    Record(b"skipped", routing_key="b.1"),  # not for g: done on the way
                    Record(b"short2", routing_key="a.2", ttl_us=1_000_000),
                    Record(b"long", routing_key="a.3", ttl_us=60_000_000),
                    Record(b"short3", routing_key="a.4", ttl_us=1_000_000)], now_us=c.now_us)
    assert b.expire_head("t", "g", now_us=c.now_us) == 0  # nothing expired yet
    c.advance(2)
    assert b.expire_head("t", "g", now_us=c.now_us) == 2  # stops at "long", as RabbitMQ's head
    dead = b.subscribe("t.dlq", "d", None, **c.t)
    got = b.fetch(dead, 10, **c.t)
    assert [d.body for d in got] == [b"short", b"short2"]
    assert all(d.headers["x-tidemq-origin-reason"] == "expired" for d in got)
    # what is left for the group: "long" (and "short3", expired behind it, found by the fetch)
    assert [d.body for d in b.fetch(m, 10, **c.t)] == [b"long"]
    assert b.expire_head("t", "g", now_us=c.now_us) == 0  # the head is in flight now


def test_a_groups_message_ttl_expires_its_messages_only(h: Harness) -> None:
    # An AMQP queue's x-message-ttl: the group's messages (dead letters routed to it too,
    # which carry no TTL) expire for it, not for another group of the topic.
    b, c = h.broker, h.clock
    b.create_topic("t", now_us=c.now_us)
    b.create_group("t", "short", GroupSettings(message_ttl=1.0), now_us=c.now_us)
    b.create_group("t", "long", GroupSettings(message_ttl=3.0), now_us=c.now_us)
    b.create_group("t", "none", None, now_us=c.now_us)
    b.publish("t", [Record(b"plain"), Record(b"own", ttl_us=2_000_000)], now_us=c.now_us)
    c.advance(1.5)
    assert b.expire_head("t", "none", now_us=c.now_us) == 0  # not expired for the others
    assert b.expire_head("t", "long", now_us=c.now_us) == 0
    assert b.expire_head("t", "short", now_us=c.now_us) == 2  # its TTL, shorter than "own"'s
    c.advance(1)  # 2.5 s: "own" expired by its own TTL, "plain" lives in "long" (3 s)
    long_ = b.subscribe("t", "long", None, **c.t)
    assert [d.body for d in b.fetch(long_, 10, **c.t)] == [b"plain"]  # the fetch path too
    none = b.subscribe("t", "none", None, **c.t)
    assert [d.body for d in b.fetch(none, 10, **c.t)] == [b"plain"]
    dead = b.subscribe("t.dlq", "d", None, **c.t)
    assert sorted(d.body for d in b.fetch(dead, 10, **c.t)) == \
        [b"own", b"own", b"own", b"plain"]  # both by "short", "own" by the others


@pytest.mark.parametrize("ttl", [0, -1.0, math.inf, math.nan, "1", True, 3651 * 86400.0])
def test_message_ttl_out_of_range_is_invalid_argument(h: Harness, ttl: object) -> None:
    h.broker.create_topic("t", now_us=h.clock.now_us)
    with pytest.raises(InvalidArgument, match="message_ttl"):
        h.broker.create_group("t", "g", GroupSettings(message_ttl=ttl),  # type: ignore[arg-type]
                              now_us=h.clock.now_us)


@pytest.mark.parametrize(("cap", "order"), [
    (None, [b"p9", b"p7", b"p3", b"p3b", b"p0", b"p0b"]),  # 0..9 told apart
    (3, [b"p7", b"p3", b"p9", b"p3b", b"p0", b"p0b"]),  # 3 and above are one level, FIFO
    (0, [b"p0", b"p7", b"p3", b"p9", b"p3b", b"p0b"]),  # publish order (AMQP: no x-max-priority)
])
def test_max_priority_caps_the_priorities_a_group_tells_apart(
        h: Harness, cap: int | None, order: list[bytes]) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", now_us=c.now_us)
    b.create_group("t", "g", GroupSettings(max_priority=cap), now_us=c.now_us)
    m = b.subscribe("t", "g", None, **c.t)
    b.publish("t", [Record(b"p0"), Record(b"p7", priority=7), Record(b"p3", priority=3),
                    Record(b"p9", priority=9), Record(b"p3b", priority=3), Record(b"p0b")],
              now_us=c.now_us)
    got = b.fetch(m, 10, **c.t)
    assert [d.body for d in got] == order
    # Redeliveries keep the capped rank: all back at once, delivered in the same order.
    b.nack(m, [d.id for d in got], 0, **c.t)
    assert [d.body for d in b.fetch(m, 10, **c.t)] == order


def test_max_priority_out_of_range_is_invalid_argument(h: Harness) -> None:
    h.broker.create_topic("t", now_us=h.clock.now_us)
    for bad in (-1, 10, 1.5, True):
        with pytest.raises(InvalidArgument, match="max_priority"):
            h.broker.create_group("t", "g", GroupSettings(max_priority=bad),  # type: ignore[arg-type]
                                  now_us=h.clock.now_us)
