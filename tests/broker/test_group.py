"""GroupState in shared mode: credit, leases, acks, nacks, extend, reject, dead letters, TTL."""

from __future__ import annotations

import pytest

from tidemq.broker._group import GroupState
from tidemq.broker._types import Backoff, GroupSettings
from tidemq.errors import InvalidArgument, StaleLease, UnknownMessage
from tidemq.storage import MemoryLog, Record, encode_batch, encode_bodies

T0 = 1_700_000_000_000_000
S = 1_000_000  # one second in µs


def make_group(nparts: int = 1, **settings: object) -> tuple[GroupState, list[MemoryLog]]:
    logs = [MemoryLog() for _ in range(nparts)]
    group = GroupState("t", 1, "g", GroupSettings(**settings), logs, now_us=T0)  # type: ignore[arg-type]
    return group, logs


def publish(log: MemoryLog, bodies: list[bytes], now_us: int = T0) -> None:
    log.append(encode_bodies(bodies), now_us)


def publish_records(log: MemoryLog, records: list[Record], now_us: int = T0) -> None:
    log.append(encode_batch(records), now_us)


def bodies(deliveries: list) -> list[bytes]:  # type: ignore[type-arg]
    return [d.body for d in deliveries]


def test_fetch_delivers_in_order_with_ids_and_counts() -> None:
    g, (log,) = make_group()
    publish(log, [b"a", b"b", b"c"])
    g.add_member("m", 10, mono_us=0)
    got = g.fetch("m", 10, now_us=T0, mono_us=0)
    assert bodies(got) == [b"a", b"b", b"c"]
    assert [d.id for d in got] == ["t@1:0:0", "t@1:0:1", "t@1:0:2"]
    assert [d.offset for d in got] == [0, 1, 2]
    assert all(d.delivery_count == 1 and d.timestamp_us == T0 for d in got)
    assert g.fetch("m", 10, now_us=T0, mono_us=0) == []


def test_prefetch_bounds_unacked_messages() -> None:
    g, (log,) = make_group()
    publish(log, [bytes([i]) for i in range(20)])
    g.add_member("m", 5, mono_us=0)
    first = g.fetch("m", 100, now_us=T0, mono_us=0)
    assert len(first) == 5
    assert g.fetch("m", 100, now_us=T0, mono_us=0) == []
    assert g.members_with_credit() == []
    g.ack("m", [first[0].id, first[1].id])
    assert g.members_with_credit() == ["m"]
    assert len(g.fetch("m", 100, now_us=T0, mono_us=0)) == 2


def test_two_members_share_without_overlap() -> None:
    g, (log,) = make_group()
    publish(log, [bytes([i]) for i in range(10)])
    g.add_member("a", 4, mono_us=0)
    g.add_member("b", 4, mono_us=0)
    a = g.fetch("a", 10, now_us=T0, mono_us=0)
    b = g.fetch("b", 10, now_us=T0, mono_us=0)
    assert len(a) == 4 and len(b) == 4
    assert not {d.offset for d in a} & {d.offset for d in b}


def test_ack_is_idempotent_and_progress_advances() -> None:
    g, (log,) = make_group()
    publish(log, [b"a", b"b", b"c"])
    g.add_member("m", 10, mono_us=0)
    got = g.fetch("m", 10, now_us=T0, mono_us=0)
    g.ack("m", [got[2].id, got[0].id])
    g.ack("m", [got[0].id])  # again: accepted, nothing changes
    info = g.info()
    assert info.partitions[0].committed == 1 and info.lag == 1 and info.in_flight == 1
    g.ack("m", [got[1].id])
    info = g.info()
    assert info.partitions[0].committed == 3 and info.lag == 0 and info.in_flight == 0
    assert g.low_water(0) == 3


def test_unknown_and_malformed_ids() -> None:
    g, (log,) = make_group()
    publish(log, [b"a"])
    g.add_member("m", 10, mono_us=0)
    g.fetch("m", 10, now_us=T0, mono_us=0)
    for bad in ["nonsense", "t@1:0:x", "other@1:0:0", "t@2:0:0", "t@1:5:0", "t@1:0:99"]:
        with pytest.raises(UnknownMessage):
            g.ack("m", [bad])
    with pytest.raises(UnknownMessage):
        g.ack("nobody", ["t@1:0:0"])


def test_lease_expiry_redelivers_with_higher_count() -> None:
    g, (log,) = make_group(ack_timeout=10.0)
    publish(log, [b"a", b"b"])
    g.add_member("m", 10, mono_us=0)
    got = g.fetch("m", 1, now_us=T0, mono_us=0)
    assert g.tick(now_us=T0, mono_us=5 * S) == pytest.approx(5.0)
    assert g.fetch("m", 1, now_us=T0, mono_us=5 * S)[0].body == b"b"
    g.tick(now_us=T0, mono_us=10 * S)  # a's lease ends
    again = g.fetch("m", 10, now_us=T0, mono_us=10 * S)
    assert [(d.body, d.delivery_count) for d in again] == [(b"a", 2)]
    assert again[0].id == got[0].id


def test_stale_lease_ack_fails_and_changes_nothing() -> None:
    g, (log,) = make_group(ack_timeout=1.0)
    publish(log, [b"a", b"b"])
    g.add_member("m1", 10, mono_us=0)
    g.add_member("m2", 10, mono_us=0)
    a = g.fetch("m1", 1, now_us=T0, mono_us=0)[0]
    b = g.fetch("m1", 1, now_us=T0, mono_us=0)[0]
    g.tick(now_us=T0, mono_us=2 * S)
    taken = g.fetch("m2", 1, now_us=T0, mono_us=2 * S)
    assert [d.id for d in taken] == [a.id]
    with pytest.raises(StaleLease):
        g.ack("m1", [b.id, a.id])  # b is free (expired, not re-leased) but the call fails whole
    assert g.info().lag == 2
    g.ack("m1", [b.id])  # expired and not leased again: accepted
    assert g.info().lag == 1
    g.ack("m2", [a.id])
    assert g.info().lag == 0


def test_nack_now_delay_and_backoff() -> None:
    g, (log,) = make_group(backoff=Backoff(initial=2.0, multiplier=3.0, max=100.0), max_deliveries=10)
    publish(log, [b"a", b"b", b"c"])
    g.add_member("m", 10, mono_us=0)
    a, b, c = g.fetch("m", 3, now_us=T0, mono_us=0)
    g.nack("m", [a.id], 0, mono_us=0)
    assert [(d.body, d.delivery_count) for d in g.fetch("m", 10, now_us=T0, mono_us=0)] == [(b"a", 2)]
    g.nack("m", [b.id], 5.0, mono_us=0)
    g.nack("m", [c.id], None, mono_us=0)  # backoff after 1st delivery: 2 s
    assert g.fetch("m", 10, now_us=T0, mono_us=1 * S) == []
    assert g.tick(now_us=T0, mono_us=1 * S) == pytest.approx(1.0)
    assert bodies(g.fetch("m", 10, now_us=T0, mono_us=2 * S)) == [b"c"]
    assert bodies(g.fetch("m", 10, now_us=T0, mono_us=5 * S)) == [b"b"]
    c2 = g.info()
    assert c2.in_flight == 3
    # the second failure of c backs off 2 * 3 = 6 s
    c_id = "t@1:0:2"
    g.nack("m", [c_id], None, mono_us=10 * S)
    assert g.fetch("m", 10, now_us=T0, mono_us=15 * S) == []
    assert [(d.body, d.delivery_count) for d in g.fetch("m", 10, now_us=T0, mono_us=16 * S)] == [
        (b"c", 3)
    ]


def test_nack_rejects_negative_delay() -> None:
    g, (log,) = make_group()
    publish(log, [b"a"])
    g.add_member("m", 10, mono_us=0)
    a = g.fetch("m", 1, now_us=T0, mono_us=0)[0]
    with pytest.raises(InvalidArgument):
        g.nack("m", [a.id], -1.0, mono_us=0)


def test_nack_in_shared_mode_does_not_block_others() -> None:
    g, (log,) = make_group()
    publish(log, [b"a", b"b"])
    g.add_member("m", 10, mono_us=0)
    a = g.fetch("m", 1, now_us=T0, mono_us=0)[0]
    g.nack("m", [a.id], 60.0, mono_us=0)
    assert bodies(g.fetch("m", 10, now_us=T0, mono_us=0)) == [b"b"]


def test_extend_keeps_the_lease() -> None:
    g, (log,) = make_group(ack_timeout=10.0)
    publish(log, [b"a", b"b"])
    g.add_member("m", 10, mono_us=0)
    a, b = g.fetch("m", 2, now_us=T0, mono_us=0)
    g.extend("m", [a.id], 30.0, mono_us=5 * S)
    g.tick(now_us=T0, mono_us=11 * S)
    again = g.fetch("m", 10, now_us=T0, mono_us=11 * S)
    assert [(d.body, d.delivery_count) for d in again] == [(b"b", 2)]
    g.ack("m", [again[0].id])
    g.tick(now_us=T0, mono_us=35 * S)
    assert [(d.body, d.delivery_count) for d in g.fetch("m", 10, now_us=T0, mono_us=35 * S)] == [
        (b"a", 2)
    ]
    with pytest.raises(InvalidArgument):
        g.extend("m", [a.id], 0, mono_us=0)


def test_reject_dead_letters_at_once() -> None:
    g, (log,) = make_group()
    publish_records(log, [Record(b"a", headers={"h": "1"}), Record(b"b")])
    g.add_member("m", 10, mono_us=0)
    a, _b = g.fetch("m", 10, now_us=T0, mono_us=0)
    g.reject("m", [a.id], "bad")
    (dl,) = g.drain_dead_letters()
    assert (dl.record.body, dl.record.headers, dl.partition, dl.offset) == (b"a", {"h": "1"}, 0, 0)
    assert (dl.delivery_count, dl.reason) == (1, "bad")
    assert g.drain_dead_letters() == []
    assert g.info().partitions[0].committed == 1
    assert g.members_with_credit() == ["m"] and g.info().in_flight == 1


def test_max_deliveries_dead_letters() -> None:
    g, (log,) = make_group(max_deliveries=3, ack_timeout=1.0)
    publish(log, [b"a"])
    g.add_member("m", 10, mono_us=0)
    mono = 0
    for n in (1, 2, 3):
        (d,) = g.fetch("m", 10, now_us=T0, mono_us=mono)
        assert d.delivery_count == n
        if n < 3:
            g.nack("m", [d.id], 0, mono_us=mono)
        mono += 2 * S
        g.tick(now_us=T0, mono_us=mono)  # the third one expires
    (dl,) = g.drain_dead_letters()
    assert (dl.offset, dl.delivery_count, dl.reason) == (0, 3, "max_deliveries")
    assert g.fetch("m", 10, now_us=T0, mono_us=mono) == []
    assert g.info().lag == 0


def test_ttl_expired_messages_are_never_delivered() -> None:
    g, (log,) = make_group()
    publish_records(
        log, [Record(b"short", ttl_us=5 * S), Record(b"long", ttl_us=60 * S), Record(b"none")]
    )
    g.add_member("m", 10, mono_us=0)
    got = g.fetch("m", 10, now_us=T0 + 10 * S, mono_us=0)
    assert bodies(got) == [b"long", b"none"]
    (dl,) = g.drain_dead_letters()
    assert (dl.record.body, dl.reason, dl.delivery_count) == (b"short", "expired", 0)


def test_ttl_counts_from_deliver_at() -> None:
    g, (log,) = make_group()
    publish_records(log, [Record(b"d", ttl_us=5 * S, deliver_at_us=T0 + 100 * S)])
    g.add_member("m", 10, mono_us=0)
    assert bodies(g.fetch("m", 10, now_us=T0 + 101 * S, mono_us=0)) == [b"d"]


def test_ttl_checked_again_on_redelivery() -> None:
    g, (log,) = make_group()
    publish_records(log, [Record(b"x", ttl_us=5 * S)])
    g.add_member("m", 10, mono_us=0)
    (d,) = g.fetch("m", 10, now_us=T0, mono_us=0)
    g.nack("m", [d.id], 0, mono_us=0)
    assert g.fetch("m", 10, now_us=T0 + 6 * S, mono_us=0) == []
    (dl,) = g.drain_dead_letters()
    assert (dl.reason, dl.delivery_count) == ("expired", 1)


def test_remove_member_releases_leases_counted() -> None:
    g, (log,) = make_group()
    publish(log, [b"a", b"b"])
    g.add_member("m1", 10, mono_us=0)
    g.add_member("m2", 10, mono_us=0)
    got = g.fetch("m1", 10, now_us=T0, mono_us=0)
    g.remove_member("m1", mono_us=0)
    again = g.fetch("m2", 10, now_us=T0, mono_us=0)
    assert [(d.body, d.delivery_count) for d in again] == [(b"a", 2), (b"b", 2)]
    assert g.info().members == ["m2"]
    g.ack("m2", [d.id for d in got])
    assert g.info().lag == 0


def test_a_message_that_kills_its_consumers_is_dead_lettered() -> None:
    g, (log,) = make_group(max_deliveries=2)
    publish(log, [b"poison"])
    for m in ("m1", "m2"):
        g.add_member(m, 10, mono_us=0)
        assert [d.body for d in g.fetch(m, 10, now_us=T0, mono_us=0)] == [b"poison"]
        g.remove_member(m, mono_us=0)  # the consumer process died with it
    (dl,) = g.drain_dead_letters()
    assert (dl.record.body, dl.delivery_count, dl.reason) == (b"poison", 2, "max_deliveries")


def test_add_member_validation() -> None:
    g, _ = make_group()
    g.add_member("m", 1, mono_us=0)
    with pytest.raises(InvalidArgument):
        g.add_member("m", 1, mono_us=0)
    with pytest.raises(InvalidArgument):
        g.add_member("n", 0, mono_us=0)


def test_partition_growth_and_fair_share() -> None:
    g, logs = make_group(2)
    publish(logs[0], [b"a0", b"a1"])
    publish(logs[1], [b"b0", b"b1"])
    g.add_member("m", 100, mono_us=0)
    assert sorted(bodies(g.fetch("m", 100, now_us=T0, mono_us=0))) == [b"a0", b"a1", b"b0", b"b1"]
    new = MemoryLog()
    publish(new, [b"c0"])
    g.add_partition(new)
    (d,) = g.fetch("m", 100, now_us=T0, mono_us=0)
    assert (d.body, d.partition, d.id) == (b"c0", 2, "t@1:2:0")
    g.ack("m", [d.id])
    assert g.info().partitions[2].committed == 1


def test_many_batches_and_partial_takes() -> None:
    g, (log,) = make_group()
    for k in range(5):
        publish(log, [b"%d-%d" % (k, i) for i in range(7)])
    g.add_member("m", 3, mono_us=0)
    seen = []
    while True:
        got = g.fetch("m", 3, now_us=T0, mono_us=0)
        if not got:
            break
        seen += bodies(got)
        g.ack("m", [d.id for d in got])
    assert seen == [b"%d-%d" % (k, i) for k in range(5) for i in range(7)]
    assert g.info().partitions[0].committed == 35


def test_has_ready() -> None:
    g, (log,) = make_group()
    g.add_member("m", 10, mono_us=0)
    assert not g.has_ready()
    publish(log, [b"a"])
    assert g.has_ready()
    g.fetch("m", 10, now_us=T0, mono_us=0)
    assert not g.has_ready()


def test_delivery_carries_every_field_with_no_filter() -> None:
    g, (log,) = make_group()
    publish_records(
        log, [Record(b"x", key=b"k", routing_key="a.b", headers={"h": "v"}, priority=4)]
    )
    g.add_member("m", 10, mono_us=0)
    (d,) = g.fetch("m", 10, now_us=T0, mono_us=0)
    assert (d.body, d.key, d.routing_key, d.headers, d.priority) == (b"x", b"k", "a.b", {"h": "v"}, 4)


def test_released_delayed_message_keeps_its_delay_id() -> None:
    g, (log,) = make_group(ack_timeout=1.0)
    delay_id = "t@1:d:7"
    publish_records(log, [Record(b"late", headers={"x-tidemq-id": delay_id})])
    g.add_member("m", 10, mono_us=0)
    (d,) = g.fetch("m", 10, now_us=T0, mono_us=0)
    assert (d.id, d.offset) == (delay_id, 0)
    g.tick(now_us=T0, mono_us=2 * S)
    (again,) = g.fetch("m", 10, now_us=T0, mono_us=2 * S)
    assert (again.id, again.delivery_count) == (delay_id, 2)
    g.ack("m", [delay_id])
    assert g.info().lag == 0
    g.ack("m", [delay_id])  # idempotent, though the alias is gone
    with pytest.raises(UnknownMessage):
        g.ack("m", ["other@1:d:7"])


def test_ttl_of_a_released_delayed_message_counts_from_deliver_at() -> None:
    g, (log,) = make_group()
    # released 10 s late by the delay store: ttl 5 s from deliver_at has passed
    publish_records(
        log,
        [Record(b"x", deliver_at_us=T0 - 10 * S, ttl_us=5 * S, headers={"x-tidemq-id": "t@1:d:0"})],
    )
    g.add_member("m", 10, mono_us=0)
    assert g.fetch("m", 10, now_us=T0, mono_us=0) == []
    assert [dl.reason for dl in g.drain_dead_letters()] == ["expired"]
