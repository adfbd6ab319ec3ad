"""GroupState: ordered and key_ordered modes, priorities across partitions, filters."""

from __future__ import annotations

import pytest

from tidemq.broker._group import KEY_QUEUE_LIMIT, GroupState
from tidemq.broker._types import Backoff, Delivery, GroupSettings
from tidemq.storage import MemoryLog, Record, encode_batch, encode_bodies

T0 = 1_700_000_000_000_000
S = 1_000_000


def make_group(nparts: int = 1, name: str = "g", **settings: object) -> tuple[GroupState, list[MemoryLog]]:
    logs = [MemoryLog() for _ in range(nparts)]
    group = GroupState("t", 1, name, GroupSettings(**settings), logs, now_us=T0)  # type: ignore[arg-type]
    return group, logs


def publish(log: MemoryLog, bodies: list[bytes]) -> None:
    log.append(encode_bodies(bodies), T0)


def publish_records(log: MemoryLog, records: list[Record]) -> None:
    log.append(encode_batch(records), T0)


def view(ds: list[Delivery]) -> list[tuple[bytes, int]]:
    return [(d.body, d.delivery_count) for d in ds]


# --- ordered ----------------------------------------------------------------------------


def test_ordered_one_owner_per_partition_and_rebalance() -> None:
    g, logs = make_group(2, mode="ordered")
    publish(logs[0], [b"a0", b"a1"])
    publish(logs[1], [b"b0", b"b1"])
    g.add_member("m1", 10, mono_us=0)
    first = g.fetch("m1", 10, now_us=T0, mono_us=0)
    assert sorted(d.body for d in first) == [b"a0", b"a1", b"b0", b"b1"]
    # m2 joins: partition 1 moves to it; m1's leases there are released, m2 reads from b0
    g.add_member("m2", 10, mono_us=0)
    got2 = g.fetch("m2", 10, now_us=T0, mono_us=0)
    assert view(got2) == [(b"b0", 1), (b"b1", 1)]
    assert g.fetch("m1", 10, now_us=T0, mono_us=0) == []
    assert g.info().in_flight == 4
    # m2 leaves: partition 1 back to m1, in order
    g.remove_member("m2", mono_us=0)  # its leases end counted: back to m1, in order
    assert view(g.fetch("m1", 10, now_us=T0, mono_us=0)) == [(b"b0", 2), (b"b1", 2)]


def test_ordered_nack_redelivers_head_and_everything_after_in_order() -> None:
    g, (log,) = make_group(mode="ordered", backoff=Backoff(initial=3.0))
    publish(log, [b"0", b"1", b"2", b"3"])
    g.add_member("m", 10, mono_us=0)
    d = g.fetch("m", 10, now_us=T0, mono_us=0)
    g.ack("m", [d[0].id, d[2].id])
    g.nack("m", [d[1].id], None, mono_us=0)
    assert g.fetch("m", 10, now_us=T0, mono_us=2 * S) == []  # head-of-line backoff: 3 s
    assert g.tick(now_us=T0, mono_us=2 * S) == pytest.approx(1.0)
    # 1 again (counted), 2 was acked, 3 again (released: count unchanged)
    assert view(g.fetch("m", 10, now_us=T0, mono_us=3 * S)) == [(b"1", 2), (b"3", 1)]


def test_ordered_lease_expiry_redelivers_in_order() -> None:
    g, (log,) = make_group(mode="ordered", ack_timeout=1.0)
    publish(log, [b"0", b"1", b"2"])
    g.add_member("m", 2, mono_us=0)
    d = g.fetch("m", 10, now_us=T0, mono_us=0)
    assert view(d) == [(b"0", 1), (b"1", 1)]
    g.ack("m", [d[1].id])
    g.tick(now_us=T0, mono_us=2 * S)
    assert view(g.fetch("m", 10, now_us=T0, mono_us=2 * S)) == [(b"0", 2), (b"2", 1)]


def test_ordered_ignores_priority() -> None:
    g, (log,) = make_group(mode="ordered")
    publish_records(log, [Record(b"low"), Record(b"high", priority=9)])
    g.add_member("m", 10, mono_us=0)
    assert [d.body for d in g.fetch("m", 10, now_us=T0, mono_us=0)] == [b"low", b"high"]


def test_ordered_dead_lettered_head_lets_the_line_move() -> None:
    g, (log,) = make_group(mode="ordered", max_deliveries=1)
    publish(log, [b"0", b"1"])
    g.add_member("m", 1, mono_us=0)
    (d,) = g.fetch("m", 10, now_us=T0, mono_us=0)
    g.nack("m", [d.id], None, mono_us=0)
    assert [x.reason for x in g.drain_dead_letters()] == ["max_deliveries"]
    assert view(g.fetch("m", 10, now_us=T0, mono_us=0)) == [(b"1", 1)]


# --- key_ordered ------------------------------------------------------------------------


def test_key_ordered_one_key_at_a_time_fifo() -> None:
    g, (log,) = make_group(mode="key_ordered")
    publish_records(
        log,
        [
            Record(b"k1-0", key=b"k1"),
            Record(b"k2-0", key=b"k2"),
            Record(b"k1-1", key=b"k1"),
            Record(b"free"),
            Record(b"k2-1", key=b"k2"),
        ],
    )
    g.add_member("a", 10, mono_us=0)
    g.add_member("b", 10, mono_us=0)
    a = g.fetch("a", 1, now_us=T0, mono_us=0)
    assert [d.body for d in a] == [b"k1-0"]
    b = g.fetch("b", 10, now_us=T0, mono_us=0)
    # k1 is held by a: k1-1 waits; k2's messages and the keyless one go to b
    assert [d.body for d in b] == [b"k2-0", b"free", b"k2-1"]
    assert g.fetch("b", 10, now_us=T0, mono_us=0) == []
    g.ack("a", [a[0].id])
    assert [d.body for d in g.fetch("b", 10, now_us=T0, mono_us=0)] == [b"k1-1"]


def test_key_ordered_owner_keeps_receiving_its_key() -> None:
    g, (log,) = make_group(mode="key_ordered")
    publish_records(log, [Record(b"x0", key=b"x"), Record(b"x1", key=b"x"), Record(b"x2", key=b"x")])
    g.add_member("a", 10, mono_us=0)
    assert [d.body for d in g.fetch("a", 2, now_us=T0, mono_us=0)] == [b"x0", b"x1"]
    assert [d.body for d in g.fetch("a", 2, now_us=T0, mono_us=0)] == [b"x2"]


def test_key_ordered_head_of_line_per_key() -> None:
    g, (log,) = make_group(mode="key_ordered", backoff=Backoff(initial=2.0))
    publish_records(
        log,
        [Record(b"x0", key=b"x"), Record(b"x1", key=b"x"), Record(b"y0", key=b"y"), Record(b"x2", key=b"x")],
    )
    g.add_member("a", 10, mono_us=0)
    g.add_member("b", 10, mono_us=0)
    d = g.fetch("a", 10, now_us=T0, mono_us=0)
    assert [x.body for x in d] == [b"x0", b"x1", b"y0", b"x2"]
    g.nack("a", [d[1].id], None, mono_us=0)  # x1 fails: x1 and x2 come again after 2 s
    g.ack("a", [d[0].id])
    assert g.fetch("b", 10, now_us=T0, mono_us=1 * S) == []
    assert view(g.fetch("b", 10, now_us=T0, mono_us=2 * S)) == [(b"x1", 2), (b"x2", 1)]
    g.ack("a", [d[2].id])  # y is unaffected
    assert g.info().in_flight == 2


def test_key_ordered_lease_expiry_and_release() -> None:
    g, (log,) = make_group(mode="key_ordered", ack_timeout=1.0)
    publish_records(log, [Record(b"x0", key=b"x"), Record(b"x1", key=b"x")])
    g.add_member("a", 10, mono_us=0)
    g.add_member("b", 10, mono_us=0)
    assert len(g.fetch("a", 10, now_us=T0, mono_us=0)) == 2
    g.tick(now_us=T0, mono_us=2 * S)
    # both leases ended: both count
    assert view(g.fetch("b", 10, now_us=T0, mono_us=2 * S)) == [(b"x0", 2), (b"x1", 2)]
    g.remove_member("b", mono_us=2 * S)  # its leases end counted, order kept
    assert view(g.fetch("a", 10, now_us=T0, mono_us=2 * S)) == [(b"x0", 3), (b"x1", 3)]
    assert g.info().delayed == 0


def test_key_ordered_parks_at_most_the_limit() -> None:
    g, (log,) = make_group(mode="key_ordered")
    publish_records(log, [Record(b"%d" % i, key=b"hot") for i in range(KEY_QUEUE_LIMIT + 50)])
    g.add_member("a", 1, mono_us=0)
    g.add_member("b", 10, mono_us=0)
    (first,) = g.fetch("a", 1, now_us=T0, mono_us=0)
    assert g.fetch("b", 10, now_us=T0, mono_us=0) == []
    assert g.info().delayed == KEY_QUEUE_LIMIT  # parked behind the busy key, no more read
    g.ack("a", [first.id])
    assert [d.body for d in g.fetch("b", 3, now_us=T0, mono_us=0)] == [b"1", b"2", b"3"]


# --- priorities -------------------------------------------------------------------------


def test_priorities_across_partitions() -> None:
    g, logs = make_group(2)
    publish_records(logs[0], [Record(b"p0-low"), Record(b"p0-5", priority=5), Record(b"p0-9", priority=9)])
    publish_records(logs[1], [Record(b"p1-5a", priority=5), Record(b"p1-low"), Record(b"p1-5b", priority=5)])
    g.add_member("m", 100, mono_us=0)
    got = [d.body for d in g.fetch("m", 100, now_us=T0, mono_us=0)]
    assert got[0] == b"p0-9"
    assert set(got[1:4]) == {b"p0-5", b"p1-5a", b"p1-5b"}
    assert got.index(b"p1-5a") < got.index(b"p1-5b")  # FIFO within a priority per partition
    assert set(got[4:]) == {b"p0-low", b"p1-low"}


def test_high_priority_overtakes_a_plain_backlog() -> None:
    g, (log,) = make_group()
    for _ in range(5):
        publish(log, [b"low"] * 1000)
    publish_records(log, [Record(b"urgent", priority=7)])
    g.add_member("m", 10, mono_us=0)
    got = g.fetch("m", 3, now_us=T0, mono_us=0)
    assert [(d.body, d.priority) for d in got] == [(b"urgent", 7), (b"low", 0), (b"low", 0)]


def test_a_plain_backlog_is_read_once_and_a_later_priority_still_overtakes() -> None:
    """The look-ahead for priorities does not read what the log knows carries none
    (``priority_free_from``): a backlog of plain one-record batches is read by the cursor
    alone (before, each batch was read twice: once by the look-ahead); a priority message
    published behind it is still found and handed out first."""
    g, (log,) = make_group()
    for i in range(300):
        publish(log, [b"low%d" % i])
    reads: list[int] = []
    read = log.read

    def counting(offset: int, *args: object, **kw: object) -> object:
        reads.append(offset)
        return read(offset, *args, **kw)  # type: ignore[arg-type]

    log.read = counting  # type: ignore[method-assign,assignment]
    g.add_member("m", 1000, mono_us=0)
    got = g.fetch("m", 100, now_us=T0, mono_us=0)
    assert [d.body for d in got] == [b"low%d" % i for i in range(100)]
    assert reads == [0]  # the cursor's one read-ahead
    publish_records(log, [Record(b"urgent", priority=7)])
    publish(log, [b"after"])
    got = g.fetch("m", 3, now_us=T0, mono_us=0)
    assert [(d.body, d.priority) for d in got] == [(b"urgent", 7), (b"low100", 0), (b"low101", 0)]


def test_redelivered_priority_message_keeps_its_rank() -> None:
    g, (log,) = make_group()
    publish_records(log, [Record(b"hi", priority=8)] + [Record(b"lo")] * 3)
    g.add_member("m", 1, mono_us=0)
    (d,) = g.fetch("m", 1, now_us=T0, mono_us=0)
    assert d.body == b"hi"
    g.nack("m", [d.id], 0, mono_us=0)
    assert view(g.fetch("m", 1, now_us=T0, mono_us=0)) == [(b"hi", 2)]


# --- filters ----------------------------------------------------------------------------


def test_filter_skips_messages_as_done() -> None:
    g, (log,) = make_group(filter={"routing_key": ["order.*"], "headers": {"region": "eu"}})
    publish_records(
        log,
        [
            Record(b"1", routing_key="order.created", headers={"region": "eu"}),
            Record(b"2", routing_key="order.created", headers={"region": "us"}),
            Record(b"3", routing_key="order.created.late", headers={"region": "eu"}),
            Record(b"4", routing_key="order.paid", headers={"region": "eu"}),
        ],
    )
    publish(log, [b"plain"])  # no routing key: filtered out too
    g.add_member("m", 10, mono_us=0)
    got = g.fetch("m", 10, now_us=T0, mono_us=0)
    assert [d.body for d in got] == [b"1", b"4"]
    assert got[0].routing_key == "order.created" and got[0].headers == {"region": "eu"}
    g.ack("m", [d.id for d in got])
    info = g.info()
    assert info.lag == 0 and info.partitions[0].committed == 5
    assert any(ev[0] == "a" for ev in g.drain_journal())


def test_redriven_messages_reach_only_their_group() -> None:
    records = [Record(b"mine", headers={"x-tidemq-group": "g"}), Record(b"theirs", headers={"x-tidemq-group": "other"}), Record(b"all")]
    g, (log,) = make_group()
    publish_records(log, records)
    g.add_member("m", 10, mono_us=0)
    assert [d.body for d in g.fetch("m", 10, now_us=T0, mono_us=0)] == [b"mine", b"all"]


def test_filtered_priority_messages_are_skipped() -> None:
    g, (log,) = make_group(filter={"headers": {"keep": {"exists": True}}})
    publish_records(log, [Record(b"drop", priority=9), Record(b"keep", priority=3, headers={"keep": "1"})])
    g.add_member("m", 10, mono_us=0)
    assert [d.body for d in g.fetch("m", 10, now_us=T0, mono_us=0)] == [b"keep"]
    assert g.info().lag == 1
