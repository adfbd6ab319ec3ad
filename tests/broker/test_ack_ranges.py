"""``Broker.ack_ranges``: acking ``(partition, first, last)`` offset ranges (what the server
does with the network client's Ack ranges) has exactly the effects and errors of acking the
same messages by id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemq.broker import GroupSettings, TopicConfig
from tidemq.errors import StaleLease, UnknownMessage
from tidemq.storage import Record

from ._support import Harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness("memory", tmp_path)
    yield harness
    harness.close()


def _state(h: Harness) -> tuple[int, int]:
    info = h.broker.describe_group("t", "g")
    return info.lag, info.in_flight


@pytest.mark.parametrize("mode", ["shared", "ordered", "key_ordered"])
def test_ranges_and_ids_end_the_same_messages(tmp_path: Path, mode: str) -> None:
    results = []
    for how in ("ids", "ranges"):
        h = Harness("memory", tmp_path / how)
        b, c = h.broker, h.clock
        b.create_topic("t", TopicConfig(partitions=2), now_us=c.now_us)
        b.publish("t", [Record(b"%d" % i, key=b"k%d" % (i % 3)) for i in range(20)],
                  now_us=c.now_us)
        m = b.subscribe("t", "g", GroupSettings(mode=mode), **c.t)
        got = b.fetch(m, 20, **c.t)
        take = [d for d in got if d.offset % 2 == 0 or d.partition == 1]
        if how == "ids":
            b.ack(m, [d.id for d in take], **c.t)
        else:
            by_part: dict[int, list[int]] = {}
            for d in take:
                by_part.setdefault(d.partition, []).append(d.offset)
            b.ack_ranges(m, [(p, o, o) for p, offs in by_part.items() for o in offs], **c.t)
        results.append((_state(h), sorted(d.id for d in b.fetch(m, 20, **c.t))))
        h.close()
    assert results[0] == results[1]


def test_a_whole_range_and_idempotence(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(partitions=1), now_us=c.now_us)
    b.publish("t", [Record(b"x")] * 10, now_us=c.now_us)
    m = b.subscribe("t", "g", None, **c.t)
    assert len(b.fetch(m, 10, **c.t)) == 10
    b.ack_ranges(m, [(0, 0, 9)], **c.t)
    assert _state(h) == (0, 0)
    b.ack_ranges(m, [(0, 0, 9)], **c.t)  # again: accepted, nothing changes
    assert _state(h) == (0, 0)


@pytest.mark.parametrize("bad", [(1, 0, 0), (0, 0, 10), (0, -1, 0), (0, 5, 4), (-1, 0, 0)])
def test_ranges_outside_the_log_are_refused_and_change_nothing(h: Harness,
                                                               bad: tuple[int, int, int]) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(partitions=1), now_us=c.now_us)
    b.publish("t", [Record(b"x")] * 10, now_us=c.now_us)
    m = b.subscribe("t", "g", None, **c.t)
    b.fetch(m, 10, **c.t)
    with pytest.raises(UnknownMessage):
        b.ack_ranges(m, [(0, 0, 3), bad], **c.t)
    assert _state(h) == (10, 10)


def test_a_message_leased_to_another_member_is_stale(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(partitions=1), now_us=c.now_us)
    b.publish("t", [Record(b"x")] * 4, now_us=c.now_us)
    m1 = b.subscribe("t", "g", GroupSettings(ack_timeout=1.0), **c.t)
    m2 = b.subscribe("t", "g", None, **c.t)
    assert len(b.fetch(m1, 4, **c.t)) == 4
    c.advance(2.0)
    b.tick(**c.t)
    assert len(b.fetch(m2, 4, **c.t)) == 4
    with pytest.raises(StaleLease):
        b.ack_ranges(m1, [(0, 0, 3)], **c.t)
    assert _state(h) == (4, 4)
