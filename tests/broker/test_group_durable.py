"""GroupState: start positions, reset (replay), journal + snapshot restore, clamping (SPEC §6)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from tests.powerloss import PowerLossOps, abandon
from tidemq.broker import Broker, TopicConfig
from tidemq.broker._group import GroupState, resolve_start
from tidemq.broker._types import GroupSettings
from tidemq.errors import InvalidArgument
from tidemq.storage import FileStore, MemoryLog, Record, encode_batch, encode_bodies

T0 = 1_700_000_000_000_000
S = 1_000_000


def logs_with(*batches_per_part: list[list[bytes]]) -> list[MemoryLog]:
    logs = []
    for batches in batches_per_part:
        log = MemoryLog()
        for k, batch in enumerate(batches):
            log.append(encode_bodies(batch), T0 + k * S)
        logs.append(log)
    return logs


def new_group(logs: list[MemoryLog], **settings: object) -> GroupState:
    return GroupState("t", 1, "g", GroupSettings(**settings), logs, now_us=T0)  # type: ignore[arg-type]


def roundtrip(obj: object) -> object:
    # What the broker's journal does to events and snapshots.
    return msgspec.msgpack.decode(msgspec.msgpack.encode(obj))


def restored(snapshot: object, events: Sequence[object], logs: list[MemoryLog], **settings: object) -> GroupState:
    return GroupState.restore(
        roundtrip(snapshot),  # type: ignore[arg-type]
        roundtrip(events),  # type: ignore[arg-type]
        "t",
        1,
        "g",
        GroupSettings(**settings),  # type: ignore[arg-type]
        logs,  # type: ignore[arg-type]
        now_us=T0,
    )


def fetch_all(g: GroupState, member: str = "m") -> list[tuple[bytes, int]]:
    if member not in g.info().members:
        g.add_member(member, 1000, mono_us=0)
    return [(d.body, d.delivery_count) for d in g.fetch(member, 1000, now_us=T0, mono_us=0)]


# --- start positions and reset ----------------------------------------------------------


def test_start_positions() -> None:
    logs = logs_with([[b"a", b"b"], [b"c"]], [[b"x"]])
    assert resolve_start("earliest", logs) == [0, 0]
    assert resolve_start("latest", logs) == [3, 1]
    assert resolve_start(2, logs) == [2, 1]  # clamped to each log's end
    assert resolve_start({1: 1}, logs) == [0, 1]
    assert resolve_start({"0": 1}, logs) == [1, 0]
    assert resolve_start({"timestamp": (T0 + S) / S}, logs) == [2, 1]
    assert resolve_start({"timestamp": 0}, logs) == [0, 0]
    for bad in ["soon", 1.5, True, {"timestamp": "x"}, {"p": "q"}]:
        with pytest.raises(InvalidArgument):
            resolve_start(bad, logs)  # type: ignore[arg-type]


def test_group_created_at_latest_sees_only_new_messages() -> None:
    logs = logs_with([[b"old"]])
    g = new_group(logs, start="latest")
    logs[0].append(encode_bodies([b"new"]), T0)
    assert fetch_all(g) == [(b"new", 1)]


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("earliest", [b"a", b"b", b"c"]),
        ("latest", []),
        (1, [b"b", b"c"]),
        ({0: 2}, [b"c"]),
        ({"timestamp": (T0 + S) / S}, [b"c"]),
    ],
)
def test_reset_replays_from_a_new_position(start: object, expected: list[bytes]) -> None:
    logs = logs_with([[b"a", b"b"], [b"c"]])
    g = new_group(logs)
    g.add_member("m", 1000, mono_us=0)
    got = g.fetch("m", 1, now_us=T0, mono_us=0)
    g.ack("m", [got[0].id])
    g.fetch("m", 10, now_us=T0, mono_us=0)  # b, c in flight
    g.reset(start, now_us=T0)  # type: ignore[arg-type]
    assert g.info().in_flight == 0 and g.members_with_credit() == ["m"]
    replayed = fetch_all(g)
    assert [b for b, _ in replayed] == expected
    assert all(c == 1 for _, c in replayed)  # replay starts the counts afresh


def test_reset_is_journaled() -> None:
    logs = logs_with([[b"a", b"b"]])
    g = new_group(logs)
    fetch_all(g)
    g.drain_journal()
    g.reset("latest", now_us=T0)
    assert g.drain_journal() == [("reset", [2])]
    r = restored(g.snapshot(), [], logs)
    assert fetch_all(r) == []


# --- journal and snapshot ---------------------------------------------------------------


def test_restore_from_journal_only() -> None:
    logs = logs_with([[b"a", b"b", b"c", b"d"]])
    g = new_group(logs)
    g.add_member("m", 10, mono_us=0)
    a, b, c, _d = g.fetch("m", 10, now_us=T0, mono_us=0)
    g.ack("m", [a.id, c.id])
    g.nack("m", [b.id], 0, mono_us=0)
    events = g.drain_journal()
    r = restored(None, events, logs)
    # b was delivered once before (count 2 now), d was in flight (count 2), a and c done
    assert fetch_all(r) == [(b"b", 2), (b"d", 2)]
    assert r.info().partitions[0].committed == 1


def test_restore_from_snapshot_plus_events() -> None:
    logs = logs_with([[b"a", b"b", b"c"]], [[b"x", b"y"]])
    g = new_group(logs)
    g.add_member("m", 10, mono_us=0)
    first = g.fetch("m", 10, now_us=T0, mono_us=0)
    by_body = {d.body: d for d in first}
    g.ack("m", [by_body[b"a"].id, by_body[b"x"].id])
    snap = g.snapshot()
    g.drain_journal()
    g.ack("m", [by_body[b"c"].id])
    events = g.drain_journal()
    r = restored(snap, events, logs)
    assert sorted(fetch_all(r)) == [(b"b", 2), (b"y", 2)]
    info = r.info()
    assert [p.committed for p in info.partitions] == [1, 1] and info.lag == 2


def test_snapshot_round_trip_keeps_counts_and_ranges() -> None:
    logs = logs_with([[bytes([i]) for i in range(10)]])
    g = new_group(logs, ack_timeout=1.0)
    g.add_member("m", 100, mono_us=0)
    ds = g.fetch("m", 100, now_us=T0, mono_us=0)
    g.ack("m", [ds[i].id for i in (0, 1, 4, 5, 8)])
    g.tick(now_us=T0, mono_us=2 * S)  # the rest expire: count 1 each, ready again
    again = g.fetch("m", 1, now_us=T0, mono_us=2 * S)
    assert again[0].delivery_count == 2
    r = restored(g.snapshot(), [], logs)
    got = fetch_all(r)
    assert got == [(bytes([2]), 3), (bytes([3]), 2), (bytes([6]), 2), (bytes([7]), 2), (bytes([9]), 2)]


def test_restore_clamps_to_the_log_end() -> None:
    logs = logs_with([[b"a", b"b", b"c", b"d"]])
    g = new_group(logs)
    g.add_member("m", 10, mono_us=0)
    ds = g.fetch("m", 10, now_us=T0, mono_us=0)
    g.ack("m", [ds[0].id, ds[1].id, ds[3].id])
    snap, events = g.snapshot(), g.drain_journal()
    # After a crash the log kept only two records; a new message takes offset 2.
    short = logs_with([[b"a", b"b"]])
    r = restored(snap, events, short)
    assert r.info().partitions[0].committed == 2
    short[0].append(encode_bodies([b"new2", b"new3"]), T0)
    assert fetch_all(r) == [(b"new2", 1), (b"new3", 1)]  # not skipped as "done", counts fresh
    # events alone: clamped the same way
    r2 = restored(None, events, logs_with([[b"a"]]))
    assert r2.info().partitions[0].committed == 1


def test_restore_without_state_starts_at_settings_start() -> None:
    logs = logs_with([[b"a"]])
    r = restored(None, [], logs, start="latest")
    assert r.drain_journal() == [("reset", [1])]
    assert fetch_all(r) == []


def test_restore_with_more_partitions_than_snapshot() -> None:
    logs = logs_with([[b"a"]])
    g = new_group(logs)
    g.add_member("m", 10, mono_us=0)
    g.ack("m", [d.id for d in g.fetch("m", 10, now_us=T0, mono_us=0)])
    grown = [logs[0], *logs_with([[b"n"]])]
    r = restored(g.snapshot(), g.drain_journal(), grown)
    assert fetch_all(r) == [(b"n", 1)]


def test_filtered_offsets_stay_done_after_filter_change() -> None:
    log = MemoryLog()
    log.append(encode_batch([Record(b"skip", routing_key="x"), Record(b"keep", routing_key="y")]), T0)
    g = new_group([log], filter={"routing_key": "y"})
    assert fetch_all(g) == [(b"keep", 1)]
    events = g.drain_journal()
    r = restored(None, events, [log], filter={"routing_key": "#"})
    assert fetch_all(r) == [(b"keep", 2)]  # "skip" was filtered out for good (SPEC §5)


def test_low_water_follows_the_floor() -> None:
    logs = logs_with([[b"a", b"b", b"c"]])
    g = new_group(logs)
    g.add_member("m", 10, mono_us=0)
    ds = g.fetch("m", 10, now_us=T0, mono_us=0)
    assert g.low_water(0) == 0
    g.ack("m", [ds[1].id])
    assert g.low_water(0) == 0
    g.ack("m", [ds[0].id])
    assert g.low_water(0) == 2


def test_deliveries_lost_to_restarts_count_toward_max_deliveries() -> None:
    logs = logs_with([[b"a"]])
    g = new_group(logs, max_deliveries=2)
    assert fetch_all(g) == [(b"a", 1)]
    g = restored(None, g.drain_journal(), logs, max_deliveries=2)
    events = [("reset", [0]), ("d", 0, [0, 1])]
    assert fetch_all(g) == [(b"a", 2)]
    events += g.drain_journal()
    g = restored(None, events, logs, max_deliveries=2)
    assert fetch_all(g) == []
    (dl,) = g.drain_dead_letters()
    assert (dl.reason, dl.delivery_count) == ("max_deliveries", 2)


def test_in_order_acks_coalesce_in_the_journal() -> None:
    logs = logs_with([[bytes([i]) for i in range(50)]])
    g = new_group(logs)
    g.add_member("m", 100, mono_us=0)
    g.drain_journal()
    for _ in range(5):
        for d in g.fetch("m", 10, now_us=T0, mono_us=0):
            g.ack("m", [d.id])
    events = g.drain_journal()
    assert events == [("d", 0, [0, 50]), ("a", 0, [0, 50])]
    r = restored(g.snapshot(), [], logs)
    assert r.info().partitions[0].committed == 50


def test_clamped_state_survives_a_second_restart() -> None:
    logs = logs_with([[b"a", b"b", b"c", b"d"]])
    g = new_group(logs)
    g.add_member("m", 10, mono_us=0)
    ds = g.fetch("m", 10, now_us=T0, mono_us=0)
    g.ack("m", [ds[0].id, ds[3].id])
    g.nack("m", [ds[1].id], 0, mono_us=0)
    events = list(g.drain_journal())
    short = logs_with([[b"a", b"b"]])  # the tail was torn off
    r = restored(None, events, short)
    events += r.drain_journal()  # the restatement: the broker persists it like any event
    short[0].append(encode_bodies([b"new2", b"new3"]), T0)
    r2 = restored(None, events, short)
    assert fetch_all(r2) == [(b"b", 2), (b"new2", 1), (b"new3", 1)]


def test_no_restatement_when_nothing_was_ahead() -> None:
    logs = logs_with([[b"a", b"b"]])
    g = new_group(logs)
    fetch_all(g)
    r = restored(g.snapshot(), g.drain_journal(), logs)
    assert r.drain_journal() == []


# --- a really torn tail, through the broker ------------------------------------------------


@pytest.mark.parametrize(("mode", "seed"), [("tear", 0), ("tear", 1), ("tear", 2), ("drop", 0)])
def test_group_is_clamped_after_a_power_cut_tears_the_data_tail(
    tmp_path: Path, mode: str, seed: int
) -> None:
    """The journal may be durable while the data tail is not: the acks of 'c' and 'd' reached the
    disk (the OS wrote the journal back), their data never did; 'b' is still in flight. A power cut tears the partition's
    unsynced tail; recovery cuts it, and the group must be clamped to what is stored: nothing
    past the end counts as done, and new messages at the reused offsets are delivered."""
    path = tmp_path / "data"
    t = {"now_us": T0, "mono_us": S}
    ops = PowerLossOps()
    store = FileStore(path, ops=ops)
    b = Broker.open(store, **t)
    b.create_topic("t", TopicConfig(durability="always", partitions=1), now_us=T0)
    m = b.subscribe("t", "g", None, **t)
    b.sync(b.barrier("t"))
    b.sync(b.publish("t", [Record(b"a"), Record(b"b")], now_us=T0).token)  # confirmed
    b.publish("t", [Record(b"c")], now_us=T0)  # appended, never synced, never confirmed
    b.publish("t", [Record(b"d")], now_us=T0)
    got = b.fetch(m, 10, **t)
    assert [d.body for d in got] == [b"a", b"b", b"c", b"d"]
    # 'b' stays in flight; the journal says offsets 0, 2 and 3 are done (ranges past a gap).
    # The ack's token would sync the data first (J1); instead the OS writes the journal back
    # on its own before the data, which files do not order among themselves.
    b.ack(m, [got[0].id, got[2].id, got[3].id], **t)
    b._topics["t"].journal.log.sync()
    abandon(store)
    ops.crash(mode, seed=seed)  # type: ignore[arg-type]

    store = FileStore(path)
    try:
        b = Broker.open(store, **t)
        log = store.open_log("t/1/0")
        if mode == "tear":  # a garbled sector in the unsynced tail: recovery had to cut it
            assert log.recovery.bytes_truncated > 0 and log.recovery.first_lost_offset in (2, 3)
        end = b.describe_topic("t").partitions[0].end_offset
        assert 2 <= end < 4
        assert b.describe_group("t", "g").partitions[0].committed <= end  # clamped
        b.sync(b.publish("t", [Record(b"e"), Record(b"f")], now_us=T0).token)  # reuse offsets
        m = b.subscribe("t", "g", None, **t)
        again = b.fetch(m, 10, **t)
        # 'a' (and 'c' if it survived whole) stay done, 'b' comes again, and the new messages
        # at the offsets the cut freed are delivered, not taken for the acked 'c'/'d'.
        assert [d.body for d in again] == [b"b", b"e", b"f"]
        assert [d.offset for d in again] == [1, end, end + 1]
        assert again[0].delivery_count >= 2 and again[1].delivery_count == 1
        b.close()
    finally:
        store.close()


def test_undone_events_make_messages_pending_again_in_stream_order() -> None:
    # Recovery's ("undone", partition, [offset, count, ...]): a dead letter that is not in its
    # dead-letter topic. Below the floor, above it, and followed by a later ack of the same
    # offset (which wins: events apply in order).
    logs = logs_with([[b"a", b"b", b"c", b"d", b"e"]])
    events = [("reset", [0]), ("d", 0, [0, 5]), ("a", 0, [0, 3]), ("a", 0, [4, 5]),
              ("undone", 0, [1, 3, 4, 2]), ("undone", 0, [2, 1]), ("a", 0, [2, 3])]
    g = restored(None, events, logs, max_deliveries=3)
    assert g.low_water(0) == 1
    # "b" is out of deliveries (count 3): dead-lettered again at once; "c" stays done.
    assert fetch_all(g) == [(b"d", 2), (b"e", 3)]
    (dl,) = g.drain_dead_letters()
    assert (dl.record.body, dl.delivery_count) == (b"b", 3)


def test_undone_events_before_a_reset_are_dropped() -> None:
    logs = logs_with([[b"a", b"b"]])
    events = [("reset", [0]), ("a", 0, [0, 2]), ("undone", 0, [0, 1]), ("reset", [2])]
    g = restored(None, events, logs)
    assert g.low_water(0) == 2
    assert fetch_all(g) == []
