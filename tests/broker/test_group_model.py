"""A hypothesis state machine for GroupState against a small reference model.

Drives publish, fetch, ack, nack, lease expiry, member churn and crash-restore (snapshot +
journal) and checks: no message is leased to two members at once; an acked or dead-lettered
message never comes again; delivery counts match the model; prefetch holds; in ordered mode a
message is delivered only when every earlier one of its partition is done or in flight; and at
the end every message is done (acked or dead-lettered): nothing is lost.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests._hypothesis import examples
from tidemq.broker._group import GroupState
from tidemq.broker._types import Backoff, GroupSettings
from tidemq.storage import MemoryLog, Record, encode_batch, encode_bodies

T0 = 1_700_000_000_000_000
S = 1_000_000
PARTS = 2
PREFETCH = 4


class GroupModel(RuleBasedStateMachine):
    mode = "shared"

    def __init__(self) -> None:
        super().__init__()
        self.logs = [MemoryLog() for _ in range(PARTS)]
        self.settings = GroupSettings(
            mode=self.mode,  # type: ignore[arg-type]
            ack_timeout=5.0,
            max_deliveries=4,
            backoff=Backoff(initial=1.0, multiplier=2.0, max=4.0),
        )
        self.group = GroupState("t", 1, "g", self.settings, self.logs, now_us=T0)  # type: ignore[arg-type]
        self.snapshot: Any = None
        self.events: list[Any] = []
        self.mono = 0
        self.members: list[str] = []
        self.next_member = 0
        self.held: dict[tuple[int, int], tuple[str, str, int]] = {}  # (p, off) -> (member, id, deadline)
        self.counts: dict[tuple[int, int], int] = {}
        self.done: set[tuple[int, int]] = set()
        self.published = 0
        self.join()

    # --- helpers -------------------------------------------------------------------------

    def persist(self) -> None:
        # Everything journaled is durable at once here (durability "always").
        self.events += msgspec.msgpack.decode(msgspec.msgpack.encode(self.group.drain_journal()))
        for dl in self.group.drain_dead_letters():
            ref = (dl.partition, dl.offset)
            assert ref not in self.done
            assert dl.delivery_count == self.counts.get(ref, 0)
            self.done.add(ref)
            self.held.pop(ref, None)

    # --- rules ---------------------------------------------------------------------------

    @rule()
    def join(self) -> None:
        name = f"m{self.next_member}"
        self.next_member += 1
        self.group.add_member(name, PREFETCH, mono_us=self.mono)
        self.members.append(name)
        self.resync_held()
        self.persist()

    @precondition(lambda self: len(self.members) > 1)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.members))
        mine = {ref for ref, (holder, _mid, _dl) in self.held.items() if holder == name}
        self.group.remove_member(name, mono_us=self.mono)
        self.members.remove(name)
        self.resync_held(counted=mine)
        self.persist()

    def resync_held(self, counted: frozenset[tuple[int, int]] | set[tuple[int, int]] = frozenset()) -> None:
        """Drop what the group no longer holds. Expired leases and the leases of a member that
        left (``counted``) counted a delivery; anything else was released (rebalance,
        head-of-line) and did not."""
        inflight = {
            (part.index, off): lease.member.id
            for part in self.group._parts
            for off, lease in part.inflight.items()
        }
        for ref, (name, _mid, deadline) in list(self.held.items()):
            if inflight.get(ref) != name:
                del self.held[ref]
                if deadline > self.mono and ref not in counted:
                    self.counts[ref] -= 1

    @rule(
        p=st.integers(0, PARTS - 1),
        n=st.integers(1, 5),
        keyed=st.booleans(),
        prio=st.integers(0, 3),
    )
    def publish(self, p: int, n: int, keyed: bool, prio: int) -> None:
        if keyed or prio:
            recs = [
                Record(b"%d" % (self.published + i), key=b"k%d" % (i % 2) if keyed else None, priority=prio)
                for i in range(n)
            ]
            self.logs[p].append(encode_batch(recs), T0)
        else:
            self.logs[p].append(encode_bodies([b"%d" % (self.published + i) for i in range(n)]), T0)
        self.published += n

    @rule(data=st.data(), k=st.integers(1, 6))
    def fetch(self, data: st.DataObject, k: int) -> None:
        name = data.draw(st.sampled_from(self.members))
        got = self.group.fetch(name, k, now_us=T0, mono_us=self.mono)
        self.persist()
        for d in got:
            ref = (d.partition, d.offset)
            assert ref not in self.done, f"{ref} delivered after it was done"
            assert ref not in self.held, f"{ref} leased twice"
            if self.mode == "ordered":
                part = self.group._parts[d.partition]
                for earlier in range(d.offset):
                    e = (d.partition, earlier)
                    assert e in self.done or e in self.held or earlier in part.inflight, (
                        f"{ref} delivered before {e}"
                    )
            self.counts[ref] = self.counts.get(ref, 0) + 1
            assert d.delivery_count == self.counts[ref]
            self.held[ref] = (name, d.id, self.mono + 5 * S)
        mine = sum(1 for v in self.held.values() if v[0] == name)
        assert mine <= PREFETCH

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        refs = data.draw(st.lists(st.sampled_from(sorted(self.held)), min_size=1, max_size=4, unique=True))
        by_member: dict[str, list[str]] = {}
        for ref in refs:
            name, mid, _ = self.held[ref]
            by_member.setdefault(name, []).append(mid)
        for name, ids in by_member.items():
            self.group.ack(name, ids)
        for ref in refs:
            del self.held[ref]
            self.done.add(ref)
        self.persist()

    @precondition(lambda self: self.held)
    @rule(data=st.data(), delay=st.sampled_from([None, 0.0, 2.0]))
    def nack(self, data: st.DataObject, delay: float | None) -> None:
        # Several at once, possibly across partitions: every nacked delivery counts, even one
        # that a head-of-line release of an earlier nacked message of its key took back first.
        name = data.draw(st.sampled_from(sorted({v[0] for v in self.held.values()})))
        mine = sorted(ref for ref, v in self.held.items() if v[0] == name)
        refs = data.draw(st.lists(st.sampled_from(mine), min_size=1, max_size=3, unique=True))
        ids = [self.held.pop(ref)[1] for ref in refs]
        self.group.nack(name, ids, delay, mono_us=self.mono)
        self.resync_held()
        self.persist()

    @rule(seconds=st.sampled_from([0.5, 3.0, 6.0]))
    def advance(self, seconds: float) -> None:
        self.mono += int(seconds * S)
        self.group.tick(now_us=T0, mono_us=self.mono)
        self.resync_held()
        self.persist()

    @rule(take_snapshot=st.booleans())
    def crash(self, take_snapshot: bool) -> None:
        if take_snapshot:
            self.persist()
            self.snapshot = msgspec.msgpack.decode(msgspec.msgpack.encode(self.group.snapshot()))
            self.events = []
        self.group = GroupState.restore(
            self.snapshot, list(self.events), "t", 1, "g", self.settings, self.logs, now_us=T0  # type: ignore[arg-type]
        )
        self.held.clear()
        for name in self.members:
            self.group.add_member(name, PREFETCH, mono_us=self.mono)
        self.resync_held()

    @invariant()
    def info_agrees(self) -> None:
        info = self.group.info()
        assert info.in_flight == len(self.held)
        total = sum(log.end_offset for log in self.logs)
        assert info.lag == total - len(self.done)

    def teardown(self) -> None:
        # Liveness: with time moving on, every message ends acked or dead-lettered.
        for _ in range(200):
            self.mono += 10 * S
            self.group.tick(now_us=T0, mono_us=self.mono)
            self.resync_held()
            for name in self.members:
                got = self.group.fetch(name, 100, now_us=T0, mono_us=self.mono)
                self.persist()
                for d in got:
                    self.counts[(d.partition, d.offset)] = self.counts.get((d.partition, d.offset), 0) + 1
                if got:
                    self.group.ack(name, [d.id for d in got])
                    self.done.update((d.partition, d.offset) for d in got)
                self.persist()
            if len(self.done) == self.published:
                break
        assert len(self.done) == self.published, "messages lost"


class OrderedModel(GroupModel):
    mode = "ordered"


class KeyOrderedModel(GroupModel):
    mode = "key_ordered"


TestShared = GroupModel.TestCase
TestOrdered = OrderedModel.TestCase
TestKeyOrdered = KeyOrderedModel.TestCase
for _case in (TestShared, TestOrdered, TestKeyOrdered):
    _case.settings = settings(max_examples=examples(60), stateful_step_count=30, deadline=None)
del _case
