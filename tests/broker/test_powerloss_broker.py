"""The broker over a power-loss double: what a driver confirmed under ``always`` survives a power
cut, not just a ``kill -9`` (which keeps the page cache and so cannot tell fsync from no fsync).

Each test runs the broker on ``FileStore(path, ops=PowerLossOps())``, drops it without a clean
shutdown (``abandon``), cuts the power (``ops.crash``) and reopens the folder with a plain store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.powerloss import PowerLossOps, abandon
from tidemq.broker import Broker, Delivery, GroupSettings, PublishResult, TopicConfig, parse_id
from tidemq.storage import FileStore, Record, encode_batch

NOW = 1_700_000_000_000_000
MONO = 1_000_000
T = {"now_us": NOW, "mono_us": MONO}
ALWAYS = TopicConfig(durability="always")


def _open(path: Path, ops: PowerLossOps | None = None) -> tuple[FileStore, Broker]:
    store = FileStore(path, ops=ops) if ops is not None else FileStore(path)
    return store, Broker.open(store, **T)


def _power_cut(store: FileStore, ops: PowerLossOps, mode: str) -> None:
    abandon(store)  # no close: no final sync, no snapshot
    ops.crash(mode)  # type: ignore[arg-type]


def _drain(b: Broker, topic: str, group: str, settings: GroupSettings | None = None) -> list[Delivery]:
    """Everything ``group`` is given, acking as it goes."""
    member = b.subscribe(topic, group, settings, prefetch=1000, **T)
    out: list[Delivery] = []
    while True:
        got = b.fetch(member, 1000, **T)
        if not got:
            return out
        out += got
        b.ack(member, [d.id for d in got], **T)


@pytest.mark.parametrize(("mode", "seed"), [("drop", 0), ("tear", 0), ("tear", 1)])
def test_confirmed_publishes_survive_power_loss_under_always(
    tmp_path: Path, mode: str, seed: int
) -> None:
    topic = "pl-confirmed"
    ops = PowerLossOps(seed=seed)
    store, b = _open(tmp_path / "data", ops)
    b.create_topic(topic, TopicConfig(durability="always", partitions=3), now_us=NOW)
    confirmed: list[tuple[str, bytes]] = []  # (id, body) in publish order
    n = 0
    for i in range(60):
        if i % 3 == 0:
            records = [Record(b"m%d" % n)]  # the one-plain-record fast path
        elif i % 3 == 1:
            records = [Record(b"m%d" % (n + j), key=b"k%d" % (n + j)) for j in range(4)]
        else:
            records = [Record(b"m%d" % (n + j)) for j in range(3)]
        n += len(records)
        res = b.publish(topic, records, now_us=NOW + i)
        assert b.needs_sync(res.token)
        b.sync(res.token)  # durable: only now may the driver confirm
        confirmed += zip(res.ids, [r.body for r in records], strict=True)
    for i in range(5):  # published, never confirmed: may be lost
        b.publish(topic, [Record(b"u%d" % i), Record(b"u%d" % i + b"'")], now_us=NOW + 100 + i)
    _power_cut(store, ops, mode)

    store, b = _open(tmp_path / "data")
    try:
        got = _drain(b, topic, "check")
        bodies = [d.body for d in got]
        assert len(bodies) == len(set(bodies)), "a message is there twice"
        by_id = {d.id: d.body for d in got}
        lost = [(mid, body) for mid, body in confirmed if by_id.get(mid) != body]
        assert not lost, f"{len(lost)} confirmed messages lost, first {lost[0]}"
        for p in range(3):
            stored = [d.body for d in sorted(got, key=lambda d: d.offset) if d.partition == p]
            want = [body for mid, body in confirmed if parse_id(mid).partition == p]
            assert [x for x in stored if x in set(want)] == want, f"partition {p} out of order"
        if mode == "drop":  # nothing unsynced reaches the platter
            assert set(bodies) == {body for _, body in confirmed}
    finally:
        b.close()
        store.close()


def test_group_created_under_always_survives_power_cut(tmp_path: Path) -> None:
    topic = "pl-group"
    ops = PowerLossOps()
    store, b = _open(tmp_path / "data", ops)
    b.create_topic(topic, ALWAYS, now_us=NOW)
    b.sync(b.publish(topic, [Record(b"old%d" % i) for i in range(5)], now_us=NOW).token)
    b.subscribe(topic, "g", GroupSettings(start="latest"), **T)
    # What a driver must do before answering the subscribe under "always":
    b.sync(b.barrier(topic))
    _power_cut(store, ops, "drop")

    store, b = _open(tmp_path / "data")
    try:
        b.sync(b.publish(topic, [Record(b"new%d" % i) for i in range(3)], now_us=NOW + 1).token)
        member = b.subscribe(topic, "g", **T)
        got = b.fetch(member, 100, **T)
        # Lost and re-created with the default start (earliest): all 8. Lost and re-created at
        # "latest" now: none. Kept: exactly the 3 published after it was created.
        assert [d.body for d in got] == [b"new0", b"new1", b"new2"]
    finally:
        b.close()
        store.close()


def _repeat_waits_for_the_original(
    tmp_path: Path, topic: str, publish: Callable[[Broker], PublishResult], body: bytes
) -> None:
    """Publish in a thread and sync there with fsyncs held; meanwhile publish the same thing
    again on this thread. The repeat must not be confirmable before the original is durable."""
    ops = PowerLossOps()
    store, b = _open(tmp_path / "data", ops)
    b.create_topic(topic, ALWAYS, now_us=NOW)
    firsts: list[PublishResult] = []
    errors: list[BaseException] = []
    original_synced = threading.Event()
    repeat_synced = threading.Event()

    def original() -> None:
        try:
            res = publish(b)
            firsts.append(res)
            b.sync(res.token)
            original_synced.set()
        except BaseException as exc:  # reported below
            errors.append(exc)

    def sync_repeat(res: PublishResult) -> None:
        try:
            b.sync(res.token)
            repeat_synced.set()
        except BaseException as exc:  # reported below
            errors.append(exc)

    gate = ops.hold_fsync()
    threads = [threading.Thread(target=original, daemon=True)]
    threads[0].start()
    try:
        assert ops.wait_for_held_fsync(), "the original's sync never reached an fsync"
        assert firsts and not original_synced.is_set()
        repeat = publish(b)  # on the broker's thread, while the other one is inside sync()
        assert repeat.ids == firsts[0].ids
        assert b.needs_sync(repeat.token), (
            "the repeat may be confirmed at once, before the original is durable"
        )
        threads.append(threading.Thread(target=sync_repeat, args=(repeat,), daemon=True))
        threads[1].start()
        assert not repeat_synced.wait(0.2), "the repeat's sync returned before the fsync did"
        assert not original_synced.is_set()
    finally:
        gate.release()
        for t in threads:
            t.join(5)
    assert not errors, errors
    assert original_synced.is_set() and repeat_synced.is_set()

    _power_cut(store, ops, "drop")
    store, b = _open(tmp_path / "data")
    try:
        got = _drain(b, topic, "check")
        assert [(d.id, d.body) for d in got] == [(firsts[0].ids[0], body)]  # stored once
    finally:
        b.close()
        store.close()


def test_dedup_duplicate_is_not_confirmed_before_the_original_is_durable(tmp_path: Path) -> None:
    _repeat_waits_for_the_original(
        tmp_path,
        "pl-dedup",
        lambda b: b.publish("pl-dedup", [Record(b"once", dedup_id="x")], now_us=NOW),
        b"once",
    )


def test_idempotent_resend_is_not_confirmed_before_the_original_is_durable(tmp_path: Path) -> None:
    batch = encode_batch([Record(b"once")], producer_id=7, producer_epoch=0, base_sequence=0)
    _repeat_waits_for_the_original(
        tmp_path,
        "pl-producer",
        lambda b: b.publish_encoded("pl-producer", 0, batch, now_us=NOW),
        b"once",
    )
