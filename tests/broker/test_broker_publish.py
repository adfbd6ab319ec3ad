"""Publishing: ids, partitioning, limits, dedup ids, idempotent producers, backlog, sync tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemq.broker import TopicConfig, parse_id, partition_for_key
from tidemq.errors import BacklogFull, InvalidArgument, MessageTooLarge
from tidemq.storage import Record, encode_batch, encode_bodies

from ._support import Harness


@pytest.fixture(params=["memory", "file"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path)
    yield harness
    harness.close()


def ends(h: Harness, topic: str) -> list[int]:
    return [p.end_offset for p in h.broker.describe_topic(topic).partitions]


def test_partition_for_key_is_xxh3_and_stable() -> None:
    # Fixed values: the same in every process and version (SPEC §2).
    assert partition_for_key(b"user-1", 1_000_000) == partition_for_key("user-1", 1_000_000)
    assert [partition_for_key(f"k{i}", 7) for i in range(5)] == [
        partition_for_key(f"k{i}".encode(), 7) for i in range(5)]
    import xxhash
    assert partition_for_key(b"abc", 13) == xxhash.xxh3_64_intdigest(b"abc") % 13


def test_ids_in_input_order_and_keys_pick_partitions(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", TopicConfig(partitions=4), now_us=now)
    recs = [Record(b"%d" % i, key=b"k%d" % (i % 5)) for i in range(40)]
    res = b.publish("t", recs, now_us=now)
    assert len(res.ids) == 40 and len(set(res.ids)) == 40
    for r, mid in zip(recs, res.ids, strict=True):
        ref = parse_id(mid)
        assert ref.topic == "t" and ref.partition == partition_for_key(r.key or b"", 4)
    # per partition, offsets follow input order
    by_part: dict[int, list[int]] = {}
    for mid in res.ids:
        ref = parse_id(mid)
        by_part.setdefault(ref.partition, []).append(ref.offset)
    for offs in by_part.values():
        assert offs == sorted(offs) == list(range(offs[0], offs[0] + len(offs)))


def test_keyless_batches_are_sticky_and_spread(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", TopicConfig(partitions=3), now_us=now)
    parts = []
    for _ in range(6):
        ids = b.publish("t", [Record(b"a"), Record(b"b")], now_us=now).ids
        assert len({parse_id(i).partition for i in ids}) == 1  # one batch, one partition
        parts.append(parse_id(ids[0]).partition)
    assert sorted(parts) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("bad", [
    Record(b"x" * (1024 * 1024 + 1)),
    Record(b"x", key=b"k" * 4097),
    Record(b"x", routing_key="r" * 256),
    Record(b"x", headers={f"h{i}": "v" for i in range(65)}),
    Record(b"x", headers={"h": "v" * (16 * 1024)}),
])
def test_limits_store_nothing(h: Harness, bad: Record) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", now_us=now)
    for batch in ([Record(b"ok"), bad], [bad]):  # [bad]: the one-record fast path
        with pytest.raises(MessageTooLarge):
            b.publish("t", batch, now_us=now)
    assert ends(h, "t") == [0]


@pytest.mark.parametrize("bad", [
    Record(b"x", priority=10),
    Record(b"x", priority=-1),
    Record(b"x", priority="1"),  # type: ignore[arg-type]
    Record(b"x", ttl_us=-1),
    Record(b"x", routing_key=7),  # type: ignore[arg-type]
    Record("text", routing_key="r"),  # type: ignore[arg-type]
    Record(b"x", headers={"x-tidemq-id": "forged"}),
    Record(b"x", headers={"h": 1}),  # type: ignore[dict-item]
])
def test_invalid_records_store_nothing(h: Harness, bad: Record) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", now_us=now)
    for batch in ([Record(b"ok"), bad], [bad]):  # [bad]: the one-record fast path
        with pytest.raises(InvalidArgument):
            b.publish("t", batch, now_us=now)
    assert ends(h, "t") == [0]


@pytest.mark.parametrize("rec", [
    Record(b"plain"),
    Record(b"routed", routing_key="order.created"),
    Record(b"all", routing_key="a.b", headers={"region": "eu"}, priority=7, ttl_us=60_000_000),
    Record(b"keyed", key=b"user-1", routing_key="a"),
    Record(b"dedup", routing_key="a", dedup_id="d-1"),
])
def test_one_record_is_stored_as_given(h: Harness, rec: Record) -> None:
    # One record per publish (the per-message path of every client): every field comes back.
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", TopicConfig(dedup_window=60), now_us=now)
    [mid] = b.publish("t", [rec], now_us=now).ids
    member = b.subscribe("t", "g", None, **h.clock.t)
    [d] = b.fetch(member, 10, **h.clock.t)
    assert d.id == mid
    assert (d.body, d.key, d.routing_key, d.headers, d.priority) \
        == (rec.body, rec.key, rec.routing_key, rec.headers or {}, rec.priority)


def test_topic_max_message_bytes(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", TopicConfig(max_message_bytes=10), now_us=now)
    b.publish("t", [Record(b"x" * 10)], now_us=now)
    with pytest.raises(MessageTooLarge):
        b.publish("t", [Record(b"x" * 11)], now_us=now)
    with pytest.raises(MessageTooLarge):
        b.publish_encoded("t", 0, encode_bodies([b"x" * 11]), now_us=now)
    assert ends(h, "t") == [1]


def test_dedup_id_within_window(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(dedup_window=60.0), now_us=c.now_us)
    first = b.publish("t", [Record(b"a", dedup_id="d1")], now_us=c.now_us).ids
    again = b.publish("t", [Record(b"b", dedup_id="d1"), Record(b"c", dedup_id="d2"),
                            Record(b"d", dedup_id="d2")], now_us=c.now_us).ids
    assert again[0] == first[0] and again[1] == again[2] != first[0]
    assert ends(h, "t") == [2]
    c.advance(61)
    b.tick(**c.t)
    later = b.publish("t", [Record(b"e", dedup_id="d1")], now_us=c.now_us).ids
    assert later[0] != first[0]
    assert ends(h, "t") == [3]


def test_dedup_survives_crash(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(durability="always"), now_us=c.now_us)
    first = b.publish("t", [Record(b"a", dedup_id="d1")], now_us=c.now_us)
    b.sync(first.token)
    b2 = h.crash()
    assert b2.publish("t", [Record(b"a", dedup_id="d1")], now_us=c.now_us).ids == first.ids
    assert ends(h, "t") == [1]


def test_idempotent_producer_retry_stores_once(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", TopicConfig(partitions=2, durability="always"), now_us=now)
    batch = encode_bodies([b"a", b"b"], producer_id=7, producer_epoch=0, base_sequence=0)
    r1 = b.publish_encoded("t", 1, batch, now_us=now)
    assert r1.ids == b.publish_encoded("t", 1, batch, now_us=now).ids
    nxt = encode_bodies([b"c"], producer_id=7, producer_epoch=0, base_sequence=2)
    r2 = b.publish_encoded("t", 1, nxt, now_us=now)
    assert ends(h, "t") == [0, 3]
    b.sync(r2.token)
    b2 = h.crash()  # producer state is durable
    assert b2.publish_encoded("t", 1, batch, now_us=now).ids == r1.ids
    assert b2.publish_encoded("t", 1, nxt, now_us=now).ids == r2.ids
    assert ends(h, "t") == [0, 3]
    with pytest.raises(InvalidArgument):  # goes backwards, matches no recent batch
        b2.publish_encoded("t", 1, encode_bodies([b"z"], producer_id=7, base_sequence=1), now_us=now)
    # a new epoch starts over
    b2.publish_encoded("t", 1, encode_bodies([b"n"], producer_id=7, producer_epoch=1,
                                             base_sequence=0), now_us=now)
    assert ends(h, "t") == [0, 4]


def test_producer_state_is_rebuilt_from_the_log_when_its_journal_event_was_lost(
        tmp_path: Path) -> None:
    # Under 'interval' the journal lags the data: a crash can keep a batch but lose its producer
    # event. The batch header still names producer and sequence, so the resend is recognised.
    h = Harness("file", tmp_path)
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(durability="interval"), now_us=c.now_us)
    batch = encode_bodies([b"a", b"b"], producer_id=9, base_sequence=0)
    first = b.publish_encoded("t", 0, batch, now_us=c.now_us)
    b2 = h.crash()  # the data reached the OS; the pending journal events did not
    assert b2.publish_encoded("t", 0, batch, now_us=c.now_us).ids == first.ids
    assert ends(h, "t") == [2]
    nxt = encode_bodies([b"c"], producer_id=9, base_sequence=2)
    b2.publish_encoded("t", 0, nxt, now_us=c.now_us)
    assert ends(h, "t") == [3]
    # the same for a dedup id whose journal event was lost
    first_d = b2.publish("t", [Record(b"d", dedup_id="order-1")], now_us=c.now_us)
    b3 = h.crash()
    assert b3.publish("t", [Record(b"d", dedup_id="order-1")], now_us=c.now_us).ids == first_d.ids
    assert ends(h, "t") == [4]
    h.close()


def test_producer_state_expires_when_idle(tmp_path: Path) -> None:
    h = Harness("memory", tmp_path, producer_idle=10.0)
    try:
        b, c = h.broker, h.clock
        batch = encode_bodies([b"a"], producer_id=1, base_sequence=0)
        b.publish_encoded("t", 0, batch, now_us=c.now_us)
        c.advance(11)
        b.tick(**c.t)
        b.publish_encoded("t", 0, batch, now_us=c.now_us)
        assert ends(h, "t") == [2]
    finally:
        h.close()


def test_publish_encoded_with_ext_and_delay_is_split(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", now_us=c.now_us)
    batch = encode_batch([Record(b"now", key=b"k"),
                          Record(b"later", deliver_at_us=c.now_us + 5_000_000)])
    ids = b.publish_encoded("t", 0, batch, now_us=c.now_us).ids
    assert parse_id(ids[0]).partition == 0 and parse_id(ids[1]).partition == -1
    assert ends(h, "t") == [1] and b.describe_topic("t").delayed == 1


def test_publish_encoded_rejects_garbage_and_bad_partition(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("t", now_us=now)
    with pytest.raises(InvalidArgument):
        b.publish_encoded("t", 0, b"garbage" * 20, now_us=now)
    with pytest.raises(InvalidArgument):
        b.publish_encoded("t", 3, encode_bodies([b"x"]), now_us=now)


def test_backlog_limit_rejects(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.create_topic("t", TopicConfig(backlog_limit=3, backlog_policy="reject"), now_us=c.now_us)
    b.create_group("t", "g", None, now_us=c.now_us)
    b.publish("t", [Record(b"1"), Record(b"2"), Record(b"3")], now_us=c.now_us)
    with pytest.raises(BacklogFull):
        b.publish("t", [Record(b"4")], now_us=c.now_us)
    assert ends(h, "t") == [3]
    m = b.subscribe("t", "g", None, **c.t)
    got = b.fetch(m, 10, **c.t)
    b.ack(m, [d.id for d in got], **c.t)
    b.publish("t", [Record(b"4")], now_us=c.now_us)


def test_tokens_name_the_logs_and_need_sync_under_always(h: Harness) -> None:
    b, now = h.broker, h.clock.now_us
    b.create_topic("a", TopicConfig(durability="always"), now_us=now)
    b.create_topic("i", now_us=now)
    ra = b.publish("a", [Record(b"x")], now_us=now)
    ri = b.publish("i", [Record(b"x")], now_us=now)
    assert b.needs_sync(ra.token) and not b.needs_sync(ri.token)
    b.sync(ra.token)
    for log, pos in ra.token.entries:
        assert log.synced_position >= pos
    b.sync_all()
    for log, pos in ri.token.entries:
        assert log.synced_position >= pos
