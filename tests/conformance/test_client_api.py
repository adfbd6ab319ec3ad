"""Semantics every transport must honour (SPEC §1-§6, §8), through the public client API.

Each test names the features it needs (``requires``, the keys of the capability table); on a
backend that declares one unsupported the test is skipped with the table's reason."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import pytest

import tidemq
from tidemq import errors

from .conftest import requires, supports, unique


def _durability(mq: tidemq.Client) -> str:
    """The strongest durability the backend has: "always" (fsync before the confirmation)
    where it exists, else "interval" (the engine's own durability)."""
    return "always" if supports(mq, "durability_always") else "interval"


def drain(sub: tidemq.Subscription, want: int, *, timeout: float = 5.0,
          ack: bool = True) -> list[tidemq.Message]:
    """Receive until ``want`` messages arrived (or the time is up), acking each batch."""
    got: list[tidemq.Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        batch = sub.receive(max_messages=min(100, want - len(got)), timeout=0.2)
        if ack and batch:
            sub.ack(batch)
        got.extend(batch)
    return got


def test_publish_receive_ack_round_trip(mq: tidemq.Client) -> None:
    requires(mq, "partitions", "key_partitioning", "mode_shared")
    t = unique("orders")
    mq.create_topic(t, partitions=3)
    # the priority field round-trips where priorities exist (else publishing it raises
    # Unsupported: test_declared_unsupported_features_raise)
    prio = 5 if supports(mq, "priority") else 0
    mid = mq.publish(t, b'{"order_id": 1}', key="user-1", routing_key="order.created",
                     headers={"region": "eu"}, priority=prio)
    assert isinstance(mid, str)
    sub = mq.subscribe(t, "billing")
    [msg] = drain(sub, 1)
    assert msg.id == mid
    assert msg.body == b'{"order_id": 1}'
    assert msg.key == b"user-1"
    assert msg.routing_key == "order.created"
    assert msg.headers == {"region": "eu"}
    assert msg.priority == prio
    assert msg.delivery_count == 1
    assert msg.topic == t
    assert abs(msg.timestamp - time.time()) < 60
    assert sub.receive(timeout=0.2) == []  # acked: not delivered again


def test_publish_batch_keeps_order_per_key(mq: tidemq.Client) -> None:
    requires(mq, "batch_publish", "key_partitioning", "key_ordering", "mode_ordered")
    t = unique("events")
    mq.create_topic(t, partitions=4)
    items = [{"body": f"{k}-{i}".encode(), "key": f"k{k}"} for i in range(50) for k in range(5)]
    ids = mq.publish_batch(t, items)
    assert len(ids) == len(items) == len(set(ids))
    sub = mq.subscribe(t, "g", mode="ordered")
    got = drain(sub, len(items))
    assert len(got) == len(items)
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for m in got:
        per_key[m.key].append(int(m.body.split(b"-")[1]))
    for seq in per_key.values():
        assert seq == list(range(50))
    # the same key always lands on the same partition
    parts: dict[bytes, set[int]] = defaultdict(set)
    for m in got:
        parts[m.key].add(m.partition)
    assert all(len(p) == 1 for p in parts.values())


def test_fan_out_across_groups_and_load_balance_within(mq: tidemq.Client) -> None:
    requires(mq, "mode_shared", "batch_publish")
    t = unique("fanout")
    mq.create_topic(t, partitions=2)
    a1, a2 = mq.subscribe(t, "a", prefetch=5), mq.subscribe(t, "a", prefetch=5)
    b = mq.subscribe(t, "b")
    mq.publish_batch(t, [str(i).encode() for i in range(40)])
    got_a: list[tidemq.Message] = []
    per_member = {id(a1): 0, id(a2): 0}
    deadline = time.monotonic() + 5
    while len(got_a) < 40 and time.monotonic() < deadline:
        for s in (a1, a2):
            batch = s.receive(max_messages=3, timeout=0.05)
            s.ack(batch)
            got_a.extend(batch)
            per_member[id(s)] += len(batch)
    got_b = drain(b, 40)
    assert sorted(int(m.body) for m in got_a) == list(range(40))
    assert sorted(int(m.body) for m in got_b) == list(range(40))
    assert all(n > 0 for n in per_member.values())  # both members of "a" got work


def test_nack_redelivers_with_count_and_max_deliveries_dead_letters(mq: tidemq.Client) -> None:
    requires(mq, "nack_delay", "delivery_count", "max_deliveries_dlq")
    t = unique("retry")
    mq.create_topic(t)
    sub = mq.subscribe(t, "w", max_deliveries=2, backoff={"initial": 0.0, "multiplier": 1.0,
                                                           "max": 0.0})
    mq.publish(t, b"poison")
    [m1] = drain(sub, 1, ack=False)
    assert m1.delivery_count == 1
    m1.nack(delay=0)
    [m2] = drain(sub, 1, ack=False)
    assert m2.delivery_count == 2 and m2.id == m1.id
    m2.nack(delay=0)
    assert sub.receive(timeout=0.3) == []
    dlq = mq.subscribe(f"{t}.dlq", "inspect")
    [dead] = drain(dlq, 1)
    assert dead.body == b"poison"
    h = dead.headers
    assert h["x-tidemq-origin-topic"] == t
    assert h["x-tidemq-origin-group"] == "w"
    assert h["x-tidemq-origin-delivery-count"] == "2"
    assert "max" in h["x-tidemq-origin-reason"]


def test_reject_dead_letters_and_redrive_returns_to_that_group_only(mq: tidemq.Client) -> None:
    requires(mq, "reject", "redrive")
    t = unique("redrive")
    mq.create_topic(t)
    bad = mq.subscribe(t, "bad")
    other = mq.subscribe(t, "other")
    mq.publish(t, b"x")
    assert [m.body for m in drain(other, 1)] == [b"x"]
    [m] = drain(bad, 1, ack=False)
    m.reject("cannot parse")
    assert bad.receive(timeout=0.2) == []
    [dead] = drain(mq.subscribe(f"{t}.dlq", "ops"), 1)
    assert dead.headers["x-tidemq-origin-reason"] == "cannot parse"
    assert mq.redrive(t, "bad") == 1
    [again] = drain(bad, 1)
    assert again.body == b"x"
    assert other.receive(timeout=0.3) == []  # other groups do not see it again
    assert mq.redrive(t, "bad") == 0  # nothing left to redrive


def test_lease_expiry_redelivers(mq: tidemq.Client) -> None:
    requires(mq, "lease", "delivery_count")
    t = unique("lease")
    mq.create_topic(t)
    # prefetch=1: once s1 holds the message it has no credit, so the redelivery goes to s2
    s1 = mq.subscribe(t, "g", ack_timeout=0.3, prefetch=1)
    mq.publish(t, b"m")
    [m] = drain(s1, 1, ack=False)
    s2 = mq.subscribe(t, "g")  # joins after s1 holds it (a server pushes to any member)
    got = drain(s2, 1, timeout=3, ack=False)
    assert [x.body for x in got] == [b"m"]
    assert got[0].delivery_count == 2
    if supports(mq, "stale_lease_error"):
        with pytest.raises(errors.StaleLease):
            s1.ack(m.id)
        got[0].ack()
        s1.ack(m.id)  # acked now: a late ack is accepted (idempotent)
    else:
        got[0].ack()


def test_extend_keeps_the_lease(mq: tidemq.Client) -> None:
    requires(mq, "lease", "extend")
    t = unique("extend")
    mq.create_topic(t)
    s1 = mq.subscribe(t, "g", ack_timeout=0.4, prefetch=1)
    mq.publish(t, b"m")
    [m] = drain(s1, 1, ack=False)
    s2 = mq.subscribe(t, "g")
    for _ in range(3):
        time.sleep(0.2)
        m.extend(0.4)
    assert s2.receive(timeout=0.1) == []
    m.ack()


def test_priorities_in_shared_mode(mq: tidemq.Client) -> None:
    requires(mq, "priority", "mode_shared")
    t = unique("prio")
    mq.create_topic(t, partitions=2)
    mq.publish_batch(t, [{"body": f"{p}-{i}".encode(), "priority": p}
                         for i in range(5) for p in (0, 3, 9)])
    sub = mq.subscribe(t, "g", prefetch=100)
    got = drain(sub, 15)
    prios = [m.priority for m in got]
    assert prios == sorted(prios, reverse=True)


def test_max_priority_caps_what_a_group_tells_apart(mq: tidemq.Client) -> None:
    requires(mq, "priority", "mode_shared")
    t = unique("maxprio")
    mq.create_topic(t)
    mq.create_group(t, "fifo", max_priority=0)
    mq.create_group(t, "two", max_priority=2)
    mq.publish_batch(t, [{"body": b"%d" % p, "priority": p} for p in (0, 5, 1, 9, 2)])
    assert [m.body for m in drain(mq.subscribe(t, "fifo"), 5)] == [b"0", b"5", b"1", b"9", b"2"]
    assert [m.body for m in drain(mq.subscribe(t, "two"), 5)] == [b"5", b"9", b"2", b"1", b"0"]
    assert mq.describe_group(t, "two").settings.max_priority == 2


def test_delay_is_held_until_due(mq: tidemq.Client) -> None:
    requires(mq, "delay")
    t = unique("delay")
    mq.create_topic(t)
    sub = mq.subscribe(t, "g")
    t0 = time.time()
    mid = mq.publish(t, b"later", delay=0.5)
    mq.publish(t, b"now")
    # The first message to come is "now", however long a fresh subscription takes to start
    # (drain returns with it); "later" coming early fails here or at the end.
    first = drain(sub, 1, timeout=2)
    assert [m.body for m in first] == [b"now"]
    [later] = drain(sub, 1, timeout=3)
    assert later.body == b"later" and later.id == mid
    assert time.time() - t0 >= 0.5


def test_ttl_expired_is_dead_lettered_not_delivered(mq: tidemq.Client) -> None:
    requires(mq, "ttl")
    t = unique("ttl")
    mq.create_topic(t)
    mq.create_group(t, "g")  # the group exists, but no member takes the message in time
    mq.publish(t, b"stale", ttl=0.2)
    mq.publish(t, b"fresh", ttl=60)
    time.sleep(0.5)
    sub = mq.subscribe(t, "g")
    assert [m.body for m in drain(sub, 2, timeout=1)] == [b"fresh"]
    dl = drain(mq.subscribe(f"{t}.dlq", "x"), 1, timeout=3)
    assert [m.body for m in dl] == [b"stale"]
    assert [m.headers["x-tidemq-origin-reason"] for m in dl] == ["expired"]


def test_a_groups_message_ttl_expires_for_that_group_only(mq: tidemq.Client) -> None:
    requires(mq, "group_ttl")
    t = unique("gttl")
    mq.create_topic(t)
    mq.create_group(t, "short", message_ttl=0.2)
    mq.create_group(t, "plain")
    mq.publish(t, b"m")
    mq.publish(t, b"own", ttl=60)
    time.sleep(0.5)
    assert drain(mq.subscribe(t, "short"), 2, timeout=1) == []  # both past 0.2 s
    assert [m.body for m in drain(mq.subscribe(t, "plain"), 2, timeout=3)] == [b"m", b"own"]
    dl = drain(mq.subscribe(f"{t}.dlq", "x"), 2, timeout=3)
    assert sorted(m.body for m in dl) == [b"m", b"own"]
    assert {m.headers["x-tidemq-origin-group"] for m in dl} == {"short"}
    assert mq.describe_group(t, "short").settings.message_ttl == 0.2


def test_dead_letters_get_the_groups_dead_letter_routing_key(mq: tidemq.Client) -> None:
    requires(mq, "dead_letter_routing_key")
    t = unique("dlrk")
    mq.create_topic(t)
    sub = mq.subscribe(t, "g", dead_letter_routing_key="parked.g")
    parked = mq.subscribe(f"{t}.dlq", "parked", filter={"routing_key": "parked.*"})
    mq.publish(t, b"x", routing_key="a.b")
    [m] = drain(sub, 1, ack=False)
    m.reject("bad")
    [dead] = drain(parked, 1, timeout=3)
    assert dead.body == b"x" and dead.routing_key == "parked.g"
    assert mq.describe_group(t, "g").settings.dead_letter_routing_key == "parked.g"


def test_routing_key_and_header_filters(mq: tidemq.Client) -> None:
    requires(mq, "routing_filter_exact", "header_filter")
    t = unique("orders")
    mq.create_topic(t)
    sub = mq.subscribe(t, "order_processing",
                       filter={"routing_key": ["order.*"], "headers": {"region": {"any_of": ["eu", "us"]}}})
    mq.publish(t, b"1", routing_key="order.created", headers={"region": "eu"})
    mq.publish(t, b"2", routing_key="order.created.late", headers={"region": "eu"})
    mq.publish(t, b"3", routing_key="invoice.created", headers={"region": "eu"})
    mq.publish(t, b"4", routing_key="order.paid", headers={"region": "apac"})
    mq.publish(t, b"5", routing_key="order.paid", headers={"region": "us"})
    assert sorted(m.body for m in drain(sub, 5, timeout=1)) == [b"1", b"5"]


def test_exact_routing_keys_match_as_they_are(mq: tidemq.Client) -> None:
    # {"exact": k}: '*' and '#' are plain words, "" the empty key (an AMQP direct binding).
    requires(mq, "routing_filter_multi")
    t = unique("exact")
    mq.create_topic(t)
    sub = mq.subscribe(t, "g", filter={"routing_key": [{"exact": "a.*"}, {"exact": ""},
                                                       "c.#"]})
    for i, rk in enumerate(["a.*", "a.b", None, "", "b", "c", "c.d", "a.#", "*"]):
        mq.publish(t, b"%d" % i, routing_key=rk)
    assert sorted(m.body for m in drain(sub, 9, timeout=1)) == [b"0", b"2", b"3", b"5", b"6"]


def test_dedup_id_returns_first_id_and_stores_once(mq: tidemq.Client) -> None:
    requires(mq, "dedup")
    t = unique("dedup")
    mq.create_topic(t)
    a = mq.publish(t, b"pay", dedup_id="invoice-7")
    b = mq.publish(t, b"pay again", dedup_id="invoice-7")
    assert a == b
    got = drain(mq.subscribe(t, "g"), 2, timeout=0.6)
    assert [m.body for m in got] == [b"pay"]


def test_group_settings_are_fixed_by_first_subscribe(mq: tidemq.Client) -> None:
    requires(mq, "mode_ordered", "mode_shared")
    t = unique("settings")
    mq.create_topic(t)
    mq.subscribe(t, "g", mode="ordered")
    mq.subscribe(t, "g")  # leaving settings out takes the group's
    mq.subscribe(t, "g", mode="ordered")
    with pytest.raises(errors.GroupSettingsMismatch):
        mq.subscribe(t, "g", mode="shared")
    assert mq.describe_group(t, "g").settings.mode == "ordered"


def test_reset_group_replays(mq: tidemq.Client) -> None:
    requires(mq, "reset_group", "replay_offset")
    t = unique("replay")
    mq.create_topic(t)
    mq.publish_batch(t, [b"a", b"b", b"c"])
    sub = mq.subscribe(t, "g")
    assert [m.body for m in drain(sub, 3)] == [b"a", b"b", b"c"]
    mq.reset_group(t, "g", "earliest")
    assert [m.body for m in drain(sub, 3)] == [b"a", b"b", b"c"]
    mq.reset_group(t, "g", {0: 2})
    assert [m.body for m in drain(sub, 1)] == [b"c"]


def test_start_latest_sees_only_new_messages(mq: tidemq.Client) -> None:
    requires(mq, "mode_shared")
    t = unique("latest")
    mq.create_topic(t)
    mq.publish(t, b"old")
    sub = mq.subscribe(t, "g", start="latest")
    mq.publish(t, b"new")
    assert [m.body for m in drain(sub, 2, timeout=0.6)] == [b"new"]


def test_prefetch_bounds_unacked(mq: tidemq.Client) -> None:
    requires(mq, "mode_shared")
    t = unique("prefetch")
    mq.create_topic(t)
    mq.publish_batch(t, [b"x"] * 20)
    sub = mq.subscribe(t, "g", prefetch=5)

    def take(want: int) -> list[tidemq.Message]:
        # Up to 100 at a time until ``want`` came (more would show), without acking: a
        # backend's deliveries may come in more than one read, and receive returns what
        # has come.
        got: list[tidemq.Message] = []
        deadline = time.monotonic() + 2
        while len(got) < want and time.monotonic() < deadline:
            got += sub.receive(max_messages=100, timeout=0.2)
        return got

    first = take(5)
    assert len(first) == 5
    assert sub.receive(max_messages=100, timeout=0.2) == []
    sub.ack(first[:2])
    assert len(take(2)) == 2


def test_callback_consume_acks_on_return_and_nacks_on_error(mq: tidemq.Client) -> None:
    requires(mq, "mode_shared", "nack_delay")
    t = unique("callback")
    mq.create_topic(t)
    seen: list[bytes] = []
    failures: dict[bytes, int] = defaultdict(int)

    def handle(msg: tidemq.Message) -> None:
        if msg.body == b"flaky" and failures[msg.body] < 1:
            failures[msg.body] += 1
            raise RuntimeError("transient")
        seen.append(msg.body)

    mq.publish_batch(t, [b"ok1", b"flaky", b"ok2"])
    consumer = mq.consume(t, "workers", callback=handle, workers=2,
                          backoff={"initial": 0.05, "multiplier": 1.0, "max": 0.05})
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop()
    assert sorted(seen) == [b"flaky", b"ok1", b"ok2"]
    assert consumer.failed == 1


def test_topics_create_list_describe_grow_delete(mq: tidemq.Client) -> None:
    requires(mq, "set_partitions")
    t = unique("admin")
    durability = _durability(mq)
    info = mq.create_topic(t, partitions=2, durability=durability)
    assert info.config.durability == durability and len(info.partitions) == 2
    with pytest.raises(errors.TopicExists):
        mq.create_topic(t)
    assert t in [x.name for x in mq.list_topics()]
    assert len(mq.set_partitions(t, 3).partitions) == 3
    with pytest.raises(errors.InvalidPartitionCount):
        mq.set_partitions(t, 1)
    mid_before = mq.publish(t, b"x")
    mq.delete_topic(t)
    with pytest.raises(errors.UnknownTopic):
        mq.describe_topic(t)
    mq.create_topic(t)
    assert mq.publish(t, b"y") != mid_before  # a new incarnation never reuses an id


@pytest.mark.parametrize("bad", ["", ".", "a..b", ".a", "a.", "a b", "x" * 201, "a/b"])
def test_bad_topic_names_are_typed_errors(mq: tidemq.Client, bad: str) -> None:
    with pytest.raises(errors.InvalidTopicName):
        mq.create_topic(bad)


def test_bad_input_is_a_typed_error_and_stores_nothing(mq: tidemq.Client) -> None:
    t = unique("limits")
    mq.create_topic(t, max_message_bytes=1000)
    with pytest.raises(errors.MessageTooLarge):
        mq.publish_batch(t, [b"ok", b"x" * 2000])
    with pytest.raises(errors.InvalidArgument):
        mq.publish(t, b"x", priority=10)
    with pytest.raises(errors.InvalidArgument):
        mq.publish(t, b"x", headers={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(errors.InvalidArgument):
        mq.publish(t, b"x", delay=-1)
    assert sum(p.end_offset for p in mq.describe_topic(t).partitions) == 0


def test_unknown_ids_are_typed(mq: tidemq.Client) -> None:
    t = unique("ids")
    mq.create_topic(t)
    sub = mq.subscribe(t, "g")
    with pytest.raises(errors.UnknownMessage):
        sub.ack("not-an-id")


def test_closed_client_raises_closed(url: str, connect: Any) -> None:
    c = connect(url)
    c.close()
    with pytest.raises(errors.Closed):
        c.publish("t", b"x")


def test_durable_reopen_redelivers_unacked_only(url: str, transport: str, connect: Any) -> None:
    if transport != "file":
        pytest.skip("reopen is specific to a data folder")
    t = unique("durable")
    with connect(url) as mq:
        mq.create_topic(t, durability="always")
        mq.publish_batch(t, [b"a", b"b", b"c"])
        sub = mq.subscribe(t, "g")
        got = drain(sub, 3, ack=False)
        sub.ack(got[0])
    with connect(url) as mq:
        sub = mq.subscribe(t, "g")
        again = drain(sub, 3, timeout=1)
        assert sorted(m.body for m in again) == [b"b", b"c"]


def test_consume_runs_workers_in_parallel_and_extends_leases(mq: tidemq.Client) -> None:
    """``workers=N`` runs N callbacks at once on every URL, and a callback that runs longer
    than ``ack_timeout`` keeps its lease (the message is not delivered a second time)."""
    requires(mq, "mode_shared", "extend")
    import threading

    t = unique("parallel")
    mq.create_topic(t)
    lock = threading.Lock()
    running = 0
    most = 0
    seen: list[tuple[bytes, int]] = []

    def handle(msg: tidemq.Message) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.6 if msg.body == b"slow" else 0.15)  # "slow" outlives its 0.3 s lease
        with lock:
            running -= 1
            seen.append((msg.body, msg.delivery_count))

    mq.publish_batch(t, [b"slow"] + [b"m%d" % i for i in range(7)])
    consumer = mq.consume(t, "pool", callback=handle, workers=4, ack_timeout=0.3)
    deadline = time.monotonic() + 10
    while len(seen) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a redelivery of "slow", if its lease had run out, would show up now
    consumer.stop()
    assert most == 4, f"at most {most} callbacks ran at once"
    assert sorted(b for b, _ in seen) == sorted([b"slow"] + [b"m%d" % i for i in range(7)])
    assert all(count == 1 for _, count in seen), seen


@pytest.mark.parametrize("mode", ["ordered", "key_ordered"])
def test_ordered_nack_redelivers_the_rest_in_order_even_with_prefetch(
        mq: tidemq.Client, mode: str) -> None:
    """SPEC §3 head-of-line with messages pushed ahead (prefetch 100): nacking m1 and m3 once
    gives m0 m1 m1 m2 m3 m3 m4 — nothing later is handed out, or acked, before its failed head."""
    requires(mq, f"mode_{mode}", "nack_delay")
    t = unique("hol")
    mq.create_topic(t)
    mq.publish_batch(t, [b"m%d" % i for i in range(5)], key="k")
    sub = mq.subscribe(t, "g", mode=mode, prefetch=100,
                       backoff={"initial": 0.05, "multiplier": 1.0, "max": 0.05})
    seen: list[bytes] = []
    nacked: set[bytes] = set()
    deadline = time.monotonic() + 10
    while b"m4" not in seen and time.monotonic() < deadline:
        for msg in sub.receive(max_messages=1, timeout=0.2):
            seen.append(msg.body)
            if msg.body in (b"m1", b"m3") and msg.body not in nacked:
                nacked.add(msg.body)
                msg.nack()
            else:
                msg.ack()
    assert seen == [b"m0", b"m1", b"m1", b"m2", b"m3", b"m3", b"m4"], seen
    sub.close()


def test_ordered_ack_of_a_message_taken_back_is_refused(mq: tidemq.Client) -> None:
    """A message released behind a failed head cannot be acked before its turn (StaleLease):
    acking it then would break the order SPEC §3 promises."""
    requires(mq, "mode_ordered", "stale_lease_error")
    t = unique("holack")
    mq.create_topic(t)
    mq.publish_batch(t, [b"a", b"b"])
    sub = mq.subscribe(t, "g", mode="ordered", backoff={"initial": 5.0, "multiplier": 1.0,
                                                        "max": 5.0})
    got = drain(sub, 2, ack=False)
    assert [m.body for m in got] == [b"a", b"b"]
    got[0].nack()  # b is taken back with it: a comes again in 5 s, then b
    with pytest.raises(errors.StaleLease):
        sub.ack(got[1].id)
    sub.close()


def test_flush_waits_for_acks_and_reports_what_was_refused(mq: tidemq.Client) -> None:
    """``flush()`` returns once every ack sent before it is applied (after a restart none of
    them comes again), and an ack refused by the broker is reported by ``ack(wait=True)``."""
    requires(mq, "ack_confirmation")
    t = unique("flush")
    mq.create_topic(t, durability=_durability(mq))
    mq.publish_batch(t, [b"%d" % i for i in range(20)])
    sub = mq.subscribe(t, "g")
    got = drain(sub, 20, ack=False)
    for m in got:
        m.ack()  # over tidemq:// these leave without waiting
    sub.flush()
    assert mq.describe_group(t, "g").lag == 0  # applied by the time flush returned
    sub.close()
    if not supports(mq, "stale_lease_error") or not supports(mq, "mode_ordered"):
        return

    # a group made before its messages are published (on amqp:// a group created later does
    # not get what an earlier group took: retention_group_veto in its table)
    t2 = unique("flush2")
    mq.create_topic(t2)
    other = mq.subscribe(t2, "o", mode="ordered", backoff={"initial": 5.0, "multiplier": 1.0,
                                                           "max": 5.0})
    mq.publish_batch(t2, [b"a", b"b"])
    a, b = drain(other, 2, ack=False)
    a.nack()
    with pytest.raises(errors.StaleLease):
        b.ack(wait=True)
    other.close()


def test_client_flush_waits_for_the_acks_of_every_subscription(mq: tidemq.Client) -> None:
    """``mq.flush()`` returns once every ack of every subscription of the client, sent before
    it, is applied (and durable under ``always``), and every publish made before it is
    confirmed."""
    requires(mq, "ack_confirmation")
    t = unique("cflush")
    mq.create_topic(t, durability=_durability(mq))
    mq.publish_batch(t, [b"%d" % i for i in range(10)])
    subs = [mq.subscribe(t, "a"), mq.subscribe(t, "b")]
    for sub in subs:
        for m in drain(sub, 10, ack=False):
            m.ack()
    mq.flush()
    assert [mq.describe_group(t, g).lag for g in ("a", "b")] == [0, 0]


# Each feature a backend may declare unsupported, and a call that uses it. (The other
# unsupported entries are behaviours, not calls: exactly-once producers have no API, and
# stale_lease_error is what a late ack does, tested above where the table allows.)
_UNSUPPORTED_TRIGGERS: dict[str, Any] = {
    "priority": lambda mq, t: mq.publish(t, b"x", priority=5),
    "durability_always": lambda mq, t: mq.create_topic(unique("dur"), durability="always"),
    "backlog_limit": lambda mq, t: mq.create_topic(unique("backlog"), backlog_limit=100),
    "retention_group_veto": lambda mq, t: mq.create_topic(unique("veto"), retention=3600.0),
}


def test_declared_unsupported_features_raise(mq: tidemq.Client) -> None:
    """Never a silent degrade: a feature the capability table declares unsupported raises
    ``Unsupported`` (naming it) when used; one it declares supported is accepted."""
    t = unique("caps")
    mq.create_topic(t)
    table = mq.capabilities()
    for feature, use in _UNSUPPORTED_TRIGGERS.items():
        if table[feature].support == "unsupported":
            with pytest.raises(errors.Unsupported) as exc:
                use(mq, t)
            assert feature.split("_")[0] in str(exc.value).lower(), (feature, exc.value)
        else:
            use(mq, t)
    assert sum(p.end_offset for p in mq.describe_topic(t).partitions) == (
        0 if table["priority"].support == "unsupported" else 1)


def test_capability_table_has_every_feature(mq: tidemq.Client) -> None:
    """Every backend answers for the same features, each native, emulated or unsupported with
    a reason."""
    from tidemq.backends import native_capabilities

    table = mq.capabilities()
    assert set(table) == set(native_capabilities())
    for feature, cap in table.items():
        assert cap.support in ("native", "emulated", "unsupported"), feature
        assert cap.how, feature
