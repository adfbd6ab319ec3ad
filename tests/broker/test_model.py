"""Model-based test: the broker against a tiny reference model, with power cuts (SPEC §3, §4, §6).

Drives one topic (2 partitions, durability ``always``) and one shared group through publish
(keys, priorities, delays, TTLs), fetch, ack, nack, extend, clock advances and power cuts on a
data folder, and checks:

* no message acked (and synced, as ``always`` requires) is delivered again;
* no message is lost: every published (and synced) message is in a partition log exactly once,
  or, if delayed, pending in the delay store or in a partition log (a release is at-least-once
  across a crash); at the end every published message was acked or dead-lettered;
* FIFO per partition within a priority level for first deliveries;
* a delayed message is never delivered before its time; an expired one (TTL) never at all;
* delivery counts never exceed ``max_deliveries`` (beyond it: the dead-letter topic).

The broker runs on ``FileStore(dir, ops=PowerLossOps())``; a crash abandons the store (no
close, no final sync or snapshot) and cuts the power (``drop``, ``prefix`` or ``tear``: what
was not fsynced is lost, partly kept, or torn), then reopens on a fresh double. The model syncs
every token a call returns, as a driver does before answering under ``always``; the writes of
calls that return none (fetch, tick) are left unsynced (see ``SYNC_UNTOKENED_WRITES``). What a call only changes in memory (deliveries, leases) may be
lost, so messages in flight may come again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests._hypothesis import examples
from tests.powerloss import PowerLossOps, abandon
from tidemq.broker import Broker, GroupSettings, TopicConfig
from tidemq.broker._names import topic_key
from tidemq.broker._topic import partition_log_name
from tidemq.broker._types import Backoff
from tidemq.storage import FileStore, Record

T0 = 1_700_000_000_000_000
MAX_DELIVERIES = 3
# Calls that return no token (fetch, tick) still write: a tick releases delayed messages and
# dead-letters, a fetch dead-letters expired messages. The broker keeps J1 for them (a later
# token syncs their data first; recovery checks journaled releases against the data), so the
# model does NOT sync them by itself. TIDEMQ_MODEL_SYNC_TICKS=1 syncs them at once after each
# such call, as a driver's periodic sync eventually does.
SYNC_UNTOKENED_WRITES = os.environ.get("TIDEMQ_MODEL_SYNC_TICKS") == "1"
GROUP = GroupSettings(ack_timeout=5.0, max_deliveries=MAX_DELIVERIES,
                      backoff=Backoff(initial=1.0, multiplier=2.0, max=4.0))


class BrokerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="tidemq-model-")
        self.now = T0
        self.mono = 1_000_000
        self.ops = PowerLossOps()
        self.store: Any = FileStore(self.dir, ops=self.ops)
        self.broker = Broker.open(self.store, now_us=self.now, mono_us=self.mono)
        self.broker.create_topic("t", TopicConfig(partitions=2, durability="always"), now_us=self.now)
        self.member = self.broker.subscribe("t", "g", GROUP, now_us=self.now, mono_us=self.mono)
        # A driver syncs an admin change under always before answering it (Broker.barrier).
        self.broker.sync(self.broker.barrier("t"))
        self.crashes = 0
        self.ticked = False  # a tick has run since the last crash: every due delay released
        self.seq = 0
        # tag -> (ready_at_us, ttl_us, priority)
        self.published: dict[bytes, tuple[int, int, int]] = {}
        self.acked: set[bytes] = set()
        self.in_hand: dict[bytes, tuple[str, int]] = {}  # tag -> (id, lease deadline mono)
        self.first_seen: dict[tuple[int, int], int] = {}  # (partition, priority) -> last offset
        self.delayed: set[bytes] = set()
        self.released_at: dict[bytes, int] = {}

    def _delayed(self, tag: bytes) -> bool:
        return tag in self.delayed

    def teardown(self) -> None:
        try:
            self._drain_and_check()
        finally:
            self.broker.close()
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def t(self) -> dict[str, int]:
        return {"now_us": self.now, "mono_us": self.mono}

    # --- rules -------------------------------------------------------------------------

    @rule(n=st.integers(1, 4), keyed=st.booleans(), priority=st.sampled_from([0, 0, 5]),
          delay=st.sampled_from([0, 0, 0, 2, 30]), ttl=st.sampled_from([0, 0, 0, 8]))
    def publish(self, n: int, keyed: bool, priority: int, delay: int, ttl: int) -> None:
        recs = []
        for _ in range(n):
            tag = b"m%d" % self.seq
            self.seq += 1
            ready = self.now + delay * 1_000_000
            recs.append(Record(tag, key=tag if keyed else None, priority=priority,
                               deliver_at_us=ready if delay else 0, ttl_us=ttl * 1_000_000))
            self.published[tag] = (ready, ttl * 1_000_000, priority)
            if delay:
                self.delayed.add(tag)
        res = self.broker.publish("t", recs, now_us=self.now)
        assert len(res.ids) == n
        self.broker.sync(res.token)

    @rule(k=st.integers(1, 6))
    def fetch(self, k: int) -> None:
        got = self.broker.fetch(self.member, k, **self.t)
        if SYNC_UNTOKENED_WRITES:
            self.broker.sync_all()
        deadline = self.mono + int(GROUP.ack_timeout * 1e6)
        for d in got:
            tag = d.body
            assert tag in self.published, tag
            assert tag not in self.acked, f"{tag!r} delivered again after its ack"
            assert tag not in self.in_hand, f"{tag!r} delivered while leased"
            ready, ttl, prio = self.published[tag]
            assert self.now >= ready, f"{tag!r} delivered {ready - self.now} µs early"
            # TTL counts from when it became ready; a delayed message is ready from its
            # release, which in this model happens at the tick after its time.
            became = self.released_at.get(tag, ready)
            assert not (ttl and self.now >= became + ttl), f"{tag!r} delivered after its ttl"
            assert 1 <= d.delivery_count <= MAX_DELIVERIES
            if d.delivery_count == 1 and tag not in self.released_at:
                # FIFO within a priority level per partition, for first deliveries
                key = (d.partition, prio)
                last = self.first_seen.get(key, -1)
                assert d.offset > last, f"FIFO broken in partition {d.partition}"
                self.first_seen[key] = d.offset
            self.in_hand[tag] = (d.id, deadline)

    @precondition(lambda self: bool(self.in_hand))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        tags = data.draw(st.lists(st.sampled_from(sorted(self.in_hand)), min_size=1, unique=True))
        live = [t for t in tags if self.in_hand[t][1] > self.mono]
        if not live:
            return
        token = self.broker.ack(self.member, [self.in_hand[t][0] for t in live], **self.t)
        self.broker.sync(token)
        for t in live:
            self.acked.add(t)
            del self.in_hand[t]

    @precondition(lambda self: bool(self.in_hand))
    @rule(data=st.data(), delay=st.sampled_from([None, 0.0, 1.0]))
    def nack(self, data: st.DataObject, delay: float | None) -> None:
        tag = data.draw(st.sampled_from(sorted(self.in_hand)))
        if self.in_hand[tag][1] <= self.mono:
            return
        self.broker.sync(self.broker.nack(self.member, [self.in_hand[tag][0]], delay, **self.t))
        del self.in_hand[tag]

    @precondition(lambda self: bool(self.in_hand))
    @rule(data=st.data())
    def extend(self, data: st.DataObject) -> None:
        tag = data.draw(st.sampled_from(sorted(self.in_hand)))
        mid, deadline = self.in_hand[tag]
        if deadline <= self.mono:
            return
        self.broker.sync(self.broker.extend(self.member, [mid], 5.0, mono_us=self.mono,
                                            now_us=self.now))
        self.in_hand[tag] = (mid, self.mono + 5_000_000)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 6.0]))
    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e6)
        self.mono += int(seconds * 1e6)
        for tag, (ready, _, _) in self.published.items():
            if ready > T0 and tag not in self.released_at and ready <= self.now and self._delayed(tag):
                self.released_at[tag] = self.now
        self.broker.tick(**self.t)
        if SYNC_UNTOKENED_WRITES:
            self.broker.sync_all()
        self.ticked = True
        self.in_hand = {t: v for t, v in self.in_hand.items() if v[1] > self.mono}

    @rule(mode=st.sampled_from(["drop", "prefix", "tear"]), seed=st.integers(0, 2**32 - 1))
    def crash(self, mode: str, seed: int) -> None:
        # A power cut: no clean broker shutdown (no snapshot, state from the journal), no
        # final sync; what was not fsynced is dropped, partly kept or torn.
        abandon(self.store)
        self.ops.crash(mode, seed=seed)  # type: ignore[arg-type]
        self.crashes += 1
        self.ops = PowerLossOps()
        self.store = FileStore(self.dir, ops=self.ops)
        self.broker = Broker.open(self.store, **self.t)
        self.member = self.broker.subscribe("t", "g", None, **self.t)
        self.in_hand.clear()
        # Deliveries not yet journaled durably may be forgotten: a message delivered before
        # may come again as a first delivery, so FIFO is checked afresh from here.
        self.first_seen.clear()
        self.ticked = False

    def _stored_tags(self) -> Counter[bytes]:
        """Every message body in the topic's partition logs (all kept: no retention)."""
        info = self.broker.describe_topic("t")
        out: Counter[bytes] = Counter()
        for p in info.partitions:
            log = self.store.open_log(partition_log_name(topic_key("t"), info.incarnation, p.partition))
            assert log.start_offset == 0, "the broker deleted partition data"
            offset = 0
            while offset < log.end_offset:
                views = log.read(offset, max_records=1000)
                assert views, f"partition {p.partition}: nothing readable at offset {offset}"
                for v in views:
                    out.update(v.bodies())
                    offset = v.last_offset + 1
        return out

    @invariant()
    def nothing_lost_nothing_made_up(self) -> None:
        # The broker never deletes unacked data (no retention here), so every published
        # message is in a partition log, or, if delayed, still pending in the delay store.
        info = self.broker.describe_topic("t")
        stored = self._stored_tags()
        assert set(stored) <= set(self.published), "a message nobody published"
        for tag in self.published:
            if tag not in self.delayed:
                assert stored[tag] == 1, f"{tag!r} stored {stored[tag]} times (published once)"
        pending = {tag for tag in self.delayed if not stored[tag]}
        assert len(pending) <= info.delayed <= len(self.delayed), (
            f"a delayed message is neither released nor pending: {sorted(pending)[:5]}, "
            f"{info.delayed} pending")
        if self.ticked:
            # Since the last tick every due message was released, each at least once.
            not_due = {tag for tag in self.delayed if self.published[tag][0] > self.now}
            assert pending == not_due, f"released: {sorted(not_due - pending)[:5]}, " \
                f"lost: {sorted(pending - not_due)[:5]}"
            assert info.delayed == len(not_due)

    # --- the end: nothing lost ---------------------------------------------------------

    def _drain_and_check(self) -> None:
        b = self.broker
        for _ in range(60):
            self.now += 10_000_000
            self.mono += 10_000_000
            b.tick(**self.t)
            got = b.fetch(self.member, 1000, **self.t)
            for d in got:
                assert d.body not in self.acked, f"{d.body!r} delivered again after its ack"
            if got:
                b.sync(b.ack(self.member, [d.id for d in got], **self.t))
                self.acked.update(d.body for d in got)
        dead: set[bytes] = set()
        if any(i.name == "t.dlq" for i in b.list_topics()):
            w = b.subscribe("t.dlq", "check", None, **self.t)
            while True:
                got = b.fetch(w, 1000, **self.t)
                if not got:
                    break
                dead.update(d.body for d in got)
                b.ack(w, [d.id for d in got], **self.t)
        missing = set(self.published) - self.acked - dead
        assert not missing, f"lost: {sorted(missing)[:10]}"
        assert not (dead & self.acked), "a message both acked and dead-lettered"


BrokerModel.TestCase.settings = settings(
    max_examples=examples(30), stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBrokerModel = BrokerModel.TestCase
