"""The sans-IO driver core: timers from deadlines (no polling), backlog blocking, group commit."""

from __future__ import annotations

import pytest

from tidemq.broker import Broker, GroupSettings, SyncToken, TopicConfig
from tidemq.driver import BLOCK_RETRY, CommitQueue, DriverConfig, DriverCore
from tidemq.errors import BacklogFull, StorageFailed
from tidemq.storage import MemoryLog, MemoryStore, Record

T0 = 1_700_000_000_000_000
M0 = 1_000_000
S = 1_000_000


def make(**cfg: object) -> tuple[Broker, DriverCore]:
    b = Broker.open(MemoryStore(), now_us=T0, mono_us=M0)
    return b, DriverCore(b, DriverConfig(**cfg))  # type: ignore[arg-type]


def test_idle_core_wakes_rarely_and_a_lease_brings_the_wake_forward() -> None:
    b, core = make()
    b.create_topic("t", TopicConfig(), now_us=T0)
    m = b.subscribe("t", "g", GroupSettings(ack_timeout=0.05), now_us=T0, mono_us=M0)
    wake = core.tick(T0, M0)
    assert wake == M0 + S // 10  # the group's creation event waits for its journal batch
    wake = core.tick(T0 + S // 10, wake)
    assert wake - M0 >= S  # then nothing timed: maintenance only, not a 5 ms poll
    b.publish("t", [Record(b"x")], now_us=T0)
    assert b.fetch(m, 1, now_us=T0 + S // 10, mono_us=M0 + S // 10)
    earlier = core.earlier_wake(T0 + S // 10, M0 + S // 10)
    assert earlier == M0 + S // 10 + S // 20  # the lease ends before the journal batch is due
    assert core.earlier_wake(T0 + S // 10, M0 + S // 10) is None  # the hint was taken


def test_a_delayed_publish_brings_the_wake_forward_to_its_time() -> None:
    b, core = make()
    b.create_topic("t", TopicConfig(), now_us=T0)
    core.tick(T0, M0)
    b.publish("t", [Record(b"x", deliver_at_us=T0 + S // 10)], now_us=T0)
    assert core.earlier_wake(T0, M0) == M0 + S // 10


def test_blocked_publish_retries_then_fails_typed_after_the_timeout() -> None:
    b, core = make(block_timeout=2.0)
    b.create_topic("t", TopicConfig(backlog_limit=1, backlog_policy="block"), now_us=T0)
    b.subscribe("t", "g", None, now_us=T0, mono_us=M0)
    b.publish("t", [Record(b"a")], now_us=T0)
    with pytest.raises(BacklogFull) as first:
        b.publish("t", [Record(b"b")], now_us=T0)
    assert core.blocked("t", first.value, M0, M0) == BLOCK_RETRY
    with pytest.raises(BacklogFull, match="stayed at its backlog limit for 2 s"):
        core.blocked("t", first.value, M0, M0 + 2 * S)
    b.create_topic("r", TopicConfig(backlog_limit=1, backlog_policy="reject"), now_us=T0)
    with pytest.raises(BacklogFull) as rej:
        raise BacklogFull("full")
    with pytest.raises(BacklogFull, match="^full$"):
        core.blocked("r", rej.value, M0, M0)


def test_commit_queue_one_fsync_per_log_per_phase_and_failures_stay_with_their_tokens() -> None:
    a, j, other = MemoryLog(), MemoryLog(), MemoryLog()
    q = CommitQueue()
    results: dict[str, BaseException | None] = {}
    assert q.submit(SyncToken(((a, 3), (j, 1)), True), lambda e: results.__setitem__("t1", e))
    assert not q.submit(SyncToken(((a, 5), (j, 2)), True), lambda e: results.__setitem__("t2", e))
    assert not q.submit(SyncToken(((other, 7),), True), lambda e: results.__setitem__("t3", e))
    phases = q.start_round()
    assert [sorted(pos for _, pos in ph) for ph in phases] == [[5, 7], [2]]  # data, then journal
    q.failed(j, OSError(5, "EIO"))
    done, again = q.finish_round()
    assert not again
    for cb, err in done:
        cb(err)
    assert isinstance(results["t1"], StorageFailed) and isinstance(results["t2"], StorageFailed)
    assert results["t3"] is None  # another topic's waiter is not failed by this one's disk
    assert q.idle
