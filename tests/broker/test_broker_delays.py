"""Delayed messages: the delay store, release on tick with their ids, restarts, trimming."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemq.broker import DELAY_PARTITION, TopicConfig, parse_id
from tidemq.storage import Record

from ._support import Harness


@pytest.fixture(params=["memory", "file"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path)
    yield harness
    harness.close()


def partition_bodies(h: Harness, topic: str) -> list[tuple[bytes, dict[str, str]]]:
    t = h.broker._topics[topic]
    out = []
    for log in t.logs:
        for view in log.read(log.start_offset, max_records=10_000):
            out += [(r.body, r.headers or {}) for r in view.records()]
    return out


def test_delayed_message_waits_in_the_delay_store(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(partitions=2), now_us=c.now_us)
    res = b.publish("t", [Record(b"now"), Record(b"later", deliver_at_us=c.now_us + 2_000_000)],
                    now_us=c.now_us)
    ref = parse_id(res.ids[1])
    assert ref.partition == DELAY_PARTITION
    assert b.describe_topic("t").delayed == 1
    assert [body for body, _ in partition_bodies(h, "t")] == [b"now"]
    assert b.tick(**c.t) == pytest.approx(1.0)  # maintenance caps it at ~1 s
    assert b._topics["t"].delays.next_due() == c.now_us + 2_000_000
    c.advance(1.999)
    b.tick(**c.t)
    assert b.describe_topic("t").delayed == 1
    c.advance(0.001)
    b.tick(**c.t)
    assert b.describe_topic("t").delayed == 0
    got = partition_bodies(h, "t")
    assert sorted(body for body, _ in got) == [b"later", b"now"]
    headers = next(hd for body, hd in got if body == b"later")
    assert headers["x-tidemq-id"] == res.ids[1]


def test_delivered_through_a_group_with_its_id(h: Harness) -> None:
    b, c = h.broker, h.clock
    m = b.subscribe("t", "g", None, **c.t)
    mid = b.publish("t", [Record(b"d", headers={"a": "b"}, deliver_at_us=c.now_us + 1_000_000)],
                    now_us=c.now_us).ids[0]
    assert b.fetch(m, 10, **c.t) == []
    c.advance(1)
    b.tick(**c.t)
    assert m in b.wakeups()
    [d] = b.fetch(m, 10, **c.t)
    assert d.body == b"d" and d.id == mid  # it keeps its delay-store id
    assert d.headers == {"a": "b"}  # ... carried in the hidden x-tidemq-id, not shown
    b.ack(m, [d.id], **c.t)
    assert b.describe_group("t", "g").lag == 0


def test_released_in_due_order_not_publish_order(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", now_us=c.now_us)
    for i, delay in enumerate([5, 1, 3, 2, 4]):
        b.publish("t", [Record(b"%d" % i, deliver_at_us=c.now_us + delay * 1_000_000)], now_us=c.now_us)
    c.advance(10)
    b.tick(**c.t)
    assert [body for body, _ in partition_bodies(h, "t")] == [b"1", b"3", b"2", b"4", b"0"]


def test_delays_survive_crash_and_are_released_once(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(durability="always"), now_us=c.now_us)
    r = b.publish("t", [Record(b"%d" % i, deliver_at_us=c.now_us + (i + 1) * 1_000_000)
                        for i in range(4)], now_us=c.now_us)
    b.sync(r.token)
    c.advance(2)
    b.tick(**c.t)
    b.sync_all()
    b2 = h.crash()
    assert b2.describe_topic("t").delayed == 2
    b2.tick(**c.t)
    assert b2._topics["t"].delays.next_due() == c.now_us + 1_000_000
    c.advance(5)
    b2.tick(**c.t)
    assert sorted(body for body, _ in partition_bodies(h, "t")) == [b"0", b"1", b"2", b"3"]
    b3 = h.reopen()
    assert b3.describe_topic("t").delayed == 0


def test_long_delays_do_not_pin_partition_segments(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(retention=1.0, segment_bytes=4096), now_us=c.now_us)
    b.publish("t", [Record(b"month", deliver_at_us=c.now_us + 30 * 86400 * 1_000_000)], now_us=c.now_us)
    for _ in range(20):
        b.publish("t", [Record(b"x" * 500) for _ in range(4)], now_us=c.now_us)
    c.advance(5)
    b.tick(**c.t)
    info = b.describe_topic("t")
    assert info.partitions[0].start_offset > 0  # retention ran on the partition
    assert info.delayed == 1


def test_delay_log_is_trimmed_once_released(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(segment_bytes=4096), now_us=c.now_us)
    for _ in range(20):
        b.publish("t", [Record(b"x" * 500, deliver_at_us=c.now_us + 1_000_000) for _ in range(4)],
                  now_us=c.now_us)
    c.advance(2)
    b.tick(**c.t)
    c.advance(2)
    b.tick(**c.t)
    assert b._topics["t"].delays.log.start_offset > 0
