"""Recovery: snapshot + journal tail, and a real kill -9 of a broker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.powerloss import PowerLossOps, abandon
from tidemq.broker import Broker, GroupSettings, TopicConfig
from tidemq.storage import FileStore, Record, encode_bodies, open_store

from ._support import Harness


def test_snapshot_then_journal_tail(tmp_path: Path) -> None:
    h = Harness("file", tmp_path)
    try:
        b, c = h.broker, h.clock
        b.create_topic("t", TopicConfig(durability="always"), now_us=c.now_us)
        m = b.subscribe("t", "g", None, **c.t)
        b.sync(b.publish("t", [Record(b"%d" % i) for i in range(10)], now_us=c.now_us).token)
        got = b.fetch(m, 10, **c.t)
        b.sync(b.ack(m, [d.id for d in got[:4]], **c.t))
        b.snapshot_now("t", now_us=c.now_us)  # what a maintenance tick does now and then
        b.sync(b.ack(m, [d.id for d in got[4:6]], **c.t))  # only in the journal tail
        b2 = h.crash()
        m2 = b2.subscribe("t", "g", None, **c.t)
        assert [d.body for d in b2.fetch(m2, 10, **c.t)] == [b"6", b"7", b"8", b"9"]
    finally:
        h.close()


CHILD = textwrap.dedent("""
    import sys, time
    from tidemq.broker import Broker, TopicConfig
    from tidemq.storage import Record, open_store
    now = 1_700_000_000_000_000
    store = open_store(sys.argv[1])
    b = Broker.open(store, now_us=now, mono_us=1)
    b.create_topic("t", TopicConfig(durability="always", partitions=2), now_us=now)
    m = b.subscribe("t", "g", None, now_us=now, mono_us=1)
    for i in range(10):
        b.sync(b.publish("t", [Record(b"%d" % (i * 10 + j)) for j in range(10)], now_us=now).token)
    got = b.fetch(m, 100, now_us=now, mono_us=1)
    b.sync(b.ack(m, [d.id for d in got[:50]], now_us=now, mono_us=1))
    print(",".join(d.body.decode() for d in got[:50]), flush=True)
    b.publish("t", [Record(b"unsynced")], now_us=now)   # may or may not survive
    time.sleep(60)
""")


def test_kill_9_keeps_acks_and_confirmed_messages(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with subprocess.Popen([sys.executable, "-c", CHILD, str(data)], stdout=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) as proc:
        try:
            assert proc.stdout is not None
            acked = set(proc.stdout.readline().decode().strip().split(","))
            assert len(acked) == 50
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    store = open_store(str(data))
    try:
        b = Broker.open(store, now_us=1_700_000_000_000_000, mono_us=5)
        m = b.subscribe("t", "g", None, now_us=1_700_000_000_000_000, mono_us=5)
        seen: list[str] = []
        while True:
            got = b.fetch(m, 1000, now_us=1_700_000_000_000_000, mono_us=5)
            if not got:
                break
            seen += [d.body.decode() for d in got]
            b.ack(m, [d.id for d in got], now_us=1_700_000_000_000_000, mono_us=5)
        confirmed = {str(i) for i in range(100)}
        assert not acked & set(seen), "acked under always, delivered again"
        assert confirmed - acked <= set(seen), "a confirmed message was lost"
        assert len(seen) == len(set(seen))
    finally:
        store.close()


# --- power cuts after writes that no token covered (broker bugs, J1) ---------------------------
#
# Each test below cuts the power after a call that wrote data without handing out a token (a
# tick releasing a delayed message, a fetch dead-lettering an expired one), once a later token
# (an ack) or the OS's own writeback made the journal durable. Before the fixes the journal
# then said the work was done while the data it describes was gone: the message was lost for
# every group (or, the other way round, the data survived and the journal did not: a delayed
# message was released twice). Fixed by completing 'always' tokens with every unsynced data
# log (J1, Broker._complete), by checking each journaled release's copy at recovery, and by
# counting copies found in the rescanned data tail as released (J3).

NOW = 1_700_000_000_000_000
S = 1_000_000


class _Cut:
    """A broker on a power-loss double, with a clock; ``cut`` abandons it, cuts the power and
    reopens on a plain store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ops = PowerLossOps()
        self.store = FileStore(path, ops=self.ops)
        self.now, self.mono = NOW, S
        self.b = Broker.open(self.store, **self.t)

    @property
    def t(self) -> dict[str, int]:
        return {"now_us": self.now, "mono_us": self.mono}

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * S)
        self.mono += int(seconds * S)
        self.b.tick(**self.t)

    def cut(self, mode: str = "drop") -> Broker:
        abandon(self.store)
        self.ops.crash(mode)  # type: ignore[arg-type]
        self.store = FileStore(self.path)
        self.b = Broker.open(self.store, **self.t)
        return self.b

    def drain(self, topic: str, group: str) -> list[bytes]:
        m = self.b.subscribe(topic, group, None, **self.t)
        out: list[bytes] = []
        while got := self.b.fetch(m, 100, **self.t):
            out += [d.body for d in got]
            self.b.ack(m, [d.id for d in got], **self.t)
        return out

    def close(self) -> None:
        self.b.close()
        self.store.close()


def _released_then_acked(tmp_path: Path, journal_written_back: bool) -> None:
    c = _Cut(tmp_path / "data")
    try:
        b = c.b
        b.create_topic("t", TopicConfig(durability="always", partitions=1), now_us=c.now)
        g = b.subscribe("t", "g", None, **c.t)
        b.subscribe("t", "h", None, **c.t)  # a second group that never reads before the cut
        b.sync(b.barrier("t"))
        b.sync(b.publish("t", [Record(b"late", deliver_at_us=c.now + 2 * S)], now_us=c.now).token)
        c.advance(3)  # releases "late" into partition 0: appended, journaled, nothing synced
        if journal_written_back:
            # The OS writes the journal back before the partition (files have no mutual order).
            b._topics["t"].journal.log.sync()
        else:
            [d] = b.fetch(g, 10, **c.t)
            b.sync(b.ack(g, [d.id], **c.t))  # the ack's token: the journal only
        c.cut("drop")
        c.advance(0.1)  # a driver ticks at once: a release whose copy was lost happens again
        assert c.drain("t", "h") == [b"late"], "a confirmed delayed message was lost"
    finally:
        c.close()



def test_a_released_delayed_message_survives_a_power_cut_after_another_groups_ack(
    tmp_path: Path,
) -> None:
    _released_then_acked(tmp_path, journal_written_back=False)


def test_a_released_delayed_message_survives_the_journal_being_written_back_first(
    tmp_path: Path,
) -> None:
    _released_then_acked(tmp_path, journal_written_back=True)



def test_an_expired_message_dead_lettered_by_a_fetch_survives_a_power_cut(tmp_path: Path) -> None:
    c = _Cut(tmp_path / "data")
    try:
        b = c.b
        b.create_topic("t", TopicConfig(durability="always", partitions=1), now_us=c.now)
        g = b.subscribe("t", "g", None, **c.t)
        b.sync(b.barrier("t"))
        b.sync(b.publish("t", [Record(b"short", ttl_us=1 * S)], now_us=c.now).token)
        b.sync(b.publish("t", [Record(b"keep")], now_us=c.now).token)
        c.advance(2)
        got = b.fetch(g, 10, **c.t)  # "short" expired: dead-lettered to t.dlq, unsynced
        assert [d.body for d in got] == [b"keep"]
        b.sync(b.ack(g, [d.id for d in got], **c.t))  # syncs t's journal: "short" is done
        c.cut("drop")
        assert c.drain("t", "g") == []
        assert c.drain("t.dlq", "check") == [b"short"], "an expired message vanished"
    finally:
        c.close()


def test_a_delayed_message_released_before_a_power_cut_is_not_released_twice(
    tmp_path: Path,
) -> None:
    c = _Cut(tmp_path / "data")
    try:
        b = c.b
        b.create_topic("t", TopicConfig(durability="always", partitions=1), now_us=c.now)
        b.subscribe("t", "g", None, **c.t)
        b.sync(b.barrier("t"))
        b.sync(b.publish("t", [Record(b"late", deliver_at_us=c.now + 2 * S)], now_us=c.now).token)
        c.advance(3)  # "late" released into partition 0 and journaled; nothing synced
        b.sync(b.publish("t", [Record(b"now")], now_us=c.now).token)  # syncs partition 0 only
        c.cut("drop")  # the copy of "late" survives (synced), its 'dr' event does not
        c.advance(1)
        assert c.drain("t", "g") == [b"late", b"now"]
    finally:
        c.close()


# --- dead letters: the origin's journal written back before the dead-letter topic's data ------
#
# A dead letter is appended to the dead-letter topic's partition and its message marked done in
# the origin topic's journal. The two are different files: the OS may write the journal back
# first, and a power cut in between then left the message done while its dead letter was gone.
# Fixed by journaling where each dead letter was written ("dl" events) and counting a journaled
# dead-lettering at recovery only if that copy is in the dead-letter topic (J3).


def _dead_lettered_by_a_fetch(c: _Cut) -> None:
    """'short' (TTL 1 s) is dead-lettered to t.dlq by a fetch; nothing of it is synced."""
    b = c.b
    b.create_topic("t", TopicConfig(durability="always", partitions=1), now_us=c.now)
    g = b.subscribe("t", "g", None, **c.t)
    b.sync(b.barrier("t"))
    b.sync(b.publish("t", [Record(b"short", ttl_us=1 * S)], now_us=c.now).token)
    b.sync(b.publish("t", [Record(b"keep")], now_us=c.now).token)
    c.advance(2)
    got = b.fetch(g, 10, **c.t)  # "short" expired: dead-lettered, appended, journaled
    assert [d.body for d in got] == [b"keep"]
    assert b._topics["t.dlq"].logs[0].synced_position == 0


def test_a_dead_letter_survives_the_origin_journal_being_written_back_first(
    tmp_path: Path,
) -> None:
    c = _Cut(tmp_path / "data")
    try:
        _dead_lettered_by_a_fetch(c)
        # The OS writes t's journal ("short" is done) back before t.dlq's partition.
        c.b._topics["t"].journal.log.sync()
        c.cut("drop")
        # "short" is pending again: the next fetch dead-letters it again (it has expired).
        assert c.drain("t", "g") == [b"keep"]
        assert c.drain("t.dlq", "check") == [b"short"], "a dead letter was lost"
    finally:
        c.close()


def test_a_dead_letter_of_a_lease_expiry_survives_the_journal_being_written_back_first(
    tmp_path: Path,
) -> None:
    c = _Cut(tmp_path / "data")
    try:
        b = c.b
        b.create_topic("t", TopicConfig(durability="always", partitions=1), now_us=c.now)
        g = b.subscribe("t", "g", GroupSettings(ack_timeout=1.0, max_deliveries=1), **c.t)
        b.sync(b.barrier("t"))
        b.sync(b.publish("t", [Record(b"poison"), Record(b"fine")], now_us=c.now).token)
        [d, _] = b.fetch(g, 10, **c.t)
        c.advance(2)  # both leases end: out of deliveries, dead-lettered by the tick
        c.b._topics["t"].journal.log.sync()
        c.cut("drop")
        # Pending again with their delivery counts: dead-lettered again at once, not delivered.
        assert c.drain("t", "g") == []
        assert c.drain("t.dlq", "check") == [b"poison", b"fine"]
    finally:
        c.close()


def test_a_lost_dead_letter_stays_pending_when_its_place_is_taken_before_a_second_crash(
    tmp_path: Path,
) -> None:
    c = _Cut(tmp_path / "data")
    try:
        _dead_lettered_by_a_fetch(c)
        c.b._topics["t"].journal.log.sync()
        b = c.cut("drop")
        # Another message takes the lost dead letter's offset in t.dlq before anything
        # dead-letters "short" again; then the process dies.
        b.sync(b.publish("t.dlq", [Record(b"other")], now_us=c.now).token)
        b = c.cut("drop")
        assert c.drain("t", "g") == [b"keep"]
        assert c.drain("t.dlq", "check") == [b"other", b"short"], "a dead letter was lost"
    finally:
        c.close()


def test_a_snapshot_syncs_the_dead_letters_it_counts_as_done(tmp_path: Path) -> None:
    c = _Cut(tmp_path / "data")
    try:
        _dead_lettered_by_a_fetch(c)
        c.b.snapshot_now("t", now_us=c.now)  # the journal event is no longer replayed
        c.cut("drop")
        assert c.drain("t.dlq", "check") == [b"short"], "a dead letter was lost"
        assert c.drain("t", "g") == [b"keep"]
    finally:
        c.close()


def test_a_group_update_keeps_the_check_of_earlier_dead_letters(tmp_path: Path) -> None:
    c = _Cut(tmp_path / "data")
    try:
        _dead_lettered_by_a_fetch(c)
        c.b.update_group("t", "g", GroupSettings(ack_timeout=10.0), **c.t)
        c.b._topics["t"].journal.log.sync()  # written back; the update's token is not synced
        c.cut("drop")
        assert c.drain("t", "g") == [b"keep"]
        assert c.drain("t.dlq", "check") == [b"short"], "a dead letter was lost"
    finally:
        c.close()


def test_dead_letters_of_a_deleted_dead_letter_topic_count_as_done(tmp_path: Path) -> None:
    c = _Cut(tmp_path / "data")
    try:
        _dead_lettered_by_a_fetch(c)
        c.b._topics["t"].journal.log.sync()
        c.b.delete_topic("t.dlq", now_us=c.now)  # the user's choice: its dead letters go too
        c.cut("drop")
        assert "t.dlq" not in [i.name for i in c.b.list_topics()]
        assert c.drain("t", "g") == [b"keep"]
    finally:
        c.close()


def test_an_always_publish_waits_for_its_data_only_and_a_retry_after_a_power_cut_is_recognised(
        tmp_path: Path) -> None:
    """A publish's journal record holds only what recovery rebuilds from the data (its producer
    sequence, its dedup id: J3), so its answer waits for the data's fsync alone. Cut the power
    with that record unsynced: the retried batch and the repeated dedup id are still
    recognised, and nothing is stored twice."""
    c = _Cut(tmp_path / "data")
    try:
        b = c.b
        b.create_topic("t", TopicConfig(durability="always", partitions=1), now_us=c.now)
        b.sync(b.barrier("t"))
        journal = b._topics["t"].journal.log
        batch = encode_bodies([b"a", b"b"], producer_id=7, producer_epoch=0, base_sequence=0)
        first = b.publish_encoded("t", 0, batch, now_us=c.now)
        assert journal not in [log for log, _ in first.token.entries]
        b.sync(first.token)  # what the driver does before it answers
        assert journal.synced_position < journal.end_offset  # the record is not synced
        dd = b.publish("t", [Record(b"c", dedup_id="order-1")], now_us=c.now)
        b.sync(dd.token)
        assert journal.synced_position < journal.end_offset
        b = c.cut("drop")
        assert b.publish_encoded("t", 0, batch, now_us=c.now).ids == first.ids
        assert b.publish("t", [Record(b"c", dedup_id="order-1")], now_us=c.now).ids == dd.ids
        assert c.drain("t", "g") == [b"a", b"b", b"c"]
    finally:
        c.close()
