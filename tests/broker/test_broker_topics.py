"""Topics: names, create/list/describe/delete, incarnations, partitions, persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemq.broker import TopicConfig, parse_id
from tidemq.broker._names import topic_key, validate_topic_name
from tidemq.errors import InvalidPartitionCount, InvalidTopicName, TopicExists, UnknownTopic
from tidemq.storage import Record

from ._support import Harness


@pytest.fixture(params=["memory", "file"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path)
    yield harness
    harness.close()


@pytest.mark.parametrize("name", ["a", "orders", "Orders.Created", "a-b_c.d1", "x" * 200])
def test_valid_names(name: str) -> None:
    assert validate_topic_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", ".a", "a.", "a..b", "a b", "a@b", "a:b", "é", "x" * 201, 5])
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidTopicName):
        validate_topic_name(name)


def test_derived_names_may_be_longer() -> None:
    assert validate_topic_name("x" * 200 + ".dlq", derived=True)
    assert topic_key("Orders") == "orders"


def test_create_list_describe_delete(h: Harness) -> None:
    b, t = h.broker, h.clock.t
    info = b.create_topic("Orders", TopicConfig(partitions=3), now_us=t["now_us"])
    assert info.name == "Orders" and len(info.partitions) == 3
    with pytest.raises(TopicExists):
        b.create_topic("orders", now_us=t["now_us"])
    assert b.create_topic("ORDERS", now_us=t["now_us"], exist_ok=True).name == "Orders"
    assert [i.name for i in b.list_topics()] == ["Orders"]
    assert b.describe_topic("oRdErS").incarnation == info.incarnation
    b.delete_topic("orders", now_us=t["now_us"])
    assert b.list_topics() == []
    with pytest.raises(UnknownTopic):
        b.describe_topic("orders")


def test_recreated_topic_is_a_new_incarnation_and_empty(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", now_us=now)
    old = b.publish("t", [Record(b"x")], now_us=now).ids[0]
    b.delete_topic("t", now_us=now)
    b.create_topic("t", now_us=now)
    info = b.describe_topic("t")
    assert info.partitions[0].end_offset == 0
    new = b.publish("t", [Record(b"y")], now_us=now).ids[0]
    assert new != old
    assert parse_id(new).incarnation > parse_id(old).incarnation


def test_partitions_only_grow(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", TopicConfig(partitions=2), now_us=now)
    with pytest.raises(InvalidPartitionCount):
        b.set_partitions("t", 1, now_us=now)
    assert len(b.set_partitions("t", 4, now_us=now).partitions) == 4
    b.publish("t", [Record(b"k", key=b"key-%d" % i) for i in range(50)], now_us=now)
    assert sum(p.end_offset for p in b.describe_topic("t").partitions) == 50


def test_unknown_topic_without_auto_create(tmp_path: Path) -> None:
    h = Harness("memory", tmp_path, auto_create_topics=False)
    try:
        with pytest.raises(UnknownTopic):
            h.broker.publish("nope", [Record(b"x")], now_us=h.clock.now_us)
    finally:
        h.close()


def test_auto_create_on_publish_validates_name(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.publish("auto.created", [Record(b"x")], now_us=now)
    assert b.describe_topic("auto.created").partitions[0].end_offset == 1
    with pytest.raises(InvalidTopicName):
        b.publish("bad..name", [Record(b"x")], now_us=now)


def test_topics_survive_reopen(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("Keep", TopicConfig(partitions=2, durability="always"), now_us=now)
    b.publish("keep", [Record(b"a"), Record(b"b")], now_us=now)
    b2 = h.reopen()
    info = b2.describe_topic("keep")
    assert info.name == "Keep" and info.config.durability == "always"
    assert sum(p.end_offset for p in info.partitions) == 2
    b2.delete_topic("keep", now_us=now)
    b2.create_topic("keep", now_us=now)
    b3 = h.reopen()
    assert b3.describe_topic("keep").partitions[0].end_offset == 0
