"""Redrive by id (Broker.redrive_ids): chosen dead letters go back once, never twice, also across
crashes and snapshots; the cursor's redrive skips them and the listing and count leave them out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemq.broker import Broker
from tidemq.broker._broker import REDRIVE_IDS_MAX
from tidemq.broker._stats import DeadLetterScanner, dead_letters
from tidemq.errors import InvalidArgument, UnknownMessage
from tidemq.storage import Record

from ._support import Harness


@pytest.fixture(params=["memory", "file"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(request.param, tmp_path)
    yield harness
    harness.close()


@pytest.fixture
def fh(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness("file", tmp_path)
    yield harness
    harness.close()


def _dead(h: Harness, n: int, *, other: bool = False) -> list[str]:
    """Publish n messages to "t" and reject them all in group "g" (and, with ``other``, in
    group "o" too: both groups' dead letters share "t.dlq"); the dead letters' ids, oldest
    first."""
    b, c = h.broker, h.clock
    g = b.subscribe("t", "g", None, **c.t)
    o = b.subscribe("t", "o", None, **c.t) if other else None
    b.publish("t", [Record(str(i).encode()) for i in range(n)], now_us=c.now_us)
    for m in [g, o] if o else [g]:
        got = b.fetch(m, n, **c.t)
        b.reject(m, [d.id for d in got], "bad", **c.t)
        b.unsubscribe(m, **c.t)
    entries, _ = dead_letters(b, "t", "g", limit=1000)
    assert len(entries) == n
    return [e.id for e in entries]


def _bodies_back(b: Broker, h: Harness) -> list[bytes]:
    """What group g receives now (redriven messages), acked."""
    c = h.clock
    m = b.subscribe("t", "g", None, **c.t)
    got = b.fetch(m, 1000, **c.t)
    b.ack(m, [d.id for d in got], **c.t)
    b.unsubscribe(m, **c.t)
    return sorted(d.body for d in got)


def test_redrive_ids_moves_the_chosen_ones_once(h: Harness) -> None:
    b, c = h.broker, h.clock
    ids = _dead(h, 5)
    res = b.redrive_ids("t", "g", [ids[1], ids[3], ids[1]], now_us=c.now_us)
    assert res[:2] == [None, None]
    assert isinstance(res[2], UnknownMessage) and "already" in str(res[2])
    again = b.redrive_ids("t", "g", [ids[3]], now_us=c.now_us)
    assert isinstance(again[0], UnknownMessage)
    assert _bodies_back(b, h) == [b"1", b"3"]
    left, _ = dead_letters(b, "t", "g")
    assert [e.id for e in left] == [ids[0], ids[2], ids[4]]
    assert DeadLetterScanner().summary(b, "t", "g").count == 3
    # The cursor's redrive moves the rest and skips the two.
    assert b.redrive("t", "g", now_us=c.now_us) == 3
    assert _bodies_back(b, h) == [b"0", b"2", b"4"]
    assert b.redrive("t", "g", now_us=c.now_us) == 0
    assert DeadLetterScanner().summary(b, "t", "g").count == 0
    # Passed by the cursor: the set is compacted away; the ids are refused as redriven.
    t = b._topics["t"]
    assert t.redriven == {}
    assert all(isinstance(e, UnknownMessage) for e in b.redrive_ids("t", "g", ids, now_us=c.now_us))


def test_a_run_at_the_cursor_moves_the_cursor(h: Harness) -> None:
    b, c = h.broker, h.clock
    ids = _dead(h, 4)
    assert b.redrive_ids("t", "g", [ids[0], ids[1], ids[3]], now_us=c.now_us) == [None] * 3
    t = b._topics["t"]
    [(key, cursor)] = t.redrive.items()
    assert cursor == 2 and t.redriven == {key: {3}}
    assert b.redrive("t", "g", now_us=c.now_us) == 1
    assert _bodies_back(b, h) == [b"0", b"1", b"2", b"3"]
    assert t.redriven == {}


def test_ids_that_are_not_the_groups_dead_letters_are_refused(h: Harness) -> None:
    b, c = h.broker, h.clock
    ids = _dead(h, 2, other=True)
    theirs, _ = dead_letters(b, "t", "o")
    origin = b.publish("t", [Record(b"x")], now_us=c.now_us).ids[0]
    bad = [theirs[0].id, origin, "nonsense", "t.dlq@999:0:0", ids[0].rsplit(":", 1)[0] + ":99"]
    res = b.redrive_ids("t", "g", bad, now_us=c.now_us)
    assert all(isinstance(e, UnknownMessage) for e in res), res
    assert DeadLetterScanner().summary(b, "t", "g").count == 2
    assert DeadLetterScanner().summary(b, "t", "o").count == 2
    with pytest.raises(InvalidArgument):
        b.redrive_ids("t", "g", ["x"] * (REDRIVE_IDS_MAX + 1), now_us=c.now_us)
    with pytest.raises(InvalidArgument):
        b.redrive_ids("t", "g", "abc", now_us=c.now_us)


def test_a_group_without_a_dead_letter_topic(h: Harness) -> None:
    b, c = h.broker, h.clock
    b.subscribe("t", "g", None, **c.t)
    [e] = b.redrive_ids("t", "g", ["t.dlq@1:0:0"], now_us=c.now_us)
    assert isinstance(e, UnknownMessage)


@pytest.mark.parametrize("how", ["crash", "reopen", "snapshot-crash"])
def test_redriven_by_id_are_not_redriven_again_after_a_restart(fh: Harness, how: str) -> None:
    b, c = fh.broker, fh.clock
    ids = _dead(fh, 6)
    assert b.redrive_ids("t", "g", [ids[2], ids[4]], now_us=c.now_us) == [None, None]
    if how == "snapshot-crash":
        b.snapshot_now("t", now_us=c.now_us)  # the set is in the snapshot, not the journal
        b2 = fh.crash()
    elif how == "crash":
        b2 = fh.crash()  # kill -9: no snapshot, the journal holds the "ri" event
    else:
        b2 = fh.reopen()
    again = b2.redrive_ids("t", "g", [ids[2], ids[4]], now_us=c.now_us)
    assert all(isinstance(e, UnknownMessage) for e in again)
    assert DeadLetterScanner().summary(b2, "t", "g").count == 4
    assert b2.redrive("t", "g", now_us=c.now_us) == 4
    assert _bodies_back(b2, fh) == [b"0", b"1", b"2", b"3", b"4", b"5"]  # each once
    end = b2.describe_topic("t").partitions[0].end_offset
    assert end == 12  # 6 published, 6 redriven
    b3 = fh.crash()
    assert b3.redrive("t", "g", now_us=c.now_us) == 0
    assert all(isinstance(e, UnknownMessage) for e in b3.redrive_ids("t", "g", ids, now_us=c.now_us))
    assert b3.describe_topic("t").partitions[0].end_offset == end


def test_cursor_redrive_is_journaled_at_once(fh: Harness) -> None:
    """A crash right after a redrive does not redrive the same dead letters again (the cursor
    is journaled in the call, not batched)."""
    b, c = fh.broker, fh.clock
    _dead(fh, 3)
    assert b.redrive("t", "g", now_us=c.now_us) == 3
    b2 = fh.crash()
    assert b2.redrive("t", "g", now_us=c.now_us) == 0
    assert b2.describe_topic("t").partitions[0].end_offset == 6


def _recreate_dlq(b: Broker, h: Harness) -> None:
    b.delete_topic("t.dlq", now_us=h.clock.now_us)
    b.create_topic("t.dlq", now_us=h.clock.now_us)


def test_a_recreated_dead_letter_topic_is_redriven_from_its_start(h: Harness) -> None:
    """The cursor belongs to one incarnation of the dead-letter topic: after it is deleted
    and created again (offsets from 0), the old cursor must not skip the new dead letters."""
    b, c = h.broker, h.clock
    _dead(h, 3)
    assert b.redrive("t", "g", now_us=c.now_us) == 3
    assert _bodies_back(b, h) == [b"0", b"1", b"2"]
    _recreate_dlq(b, h)
    ids = _dead(h, 2)
    assert DeadLetterScanner().summary(b, "t", "g").count == 2
    assert b.redrive_ids("t", "g", [ids[1]], now_us=c.now_us) == [None]
    assert b.redrive("t", "g", now_us=c.now_us) == 1
    assert _bodies_back(b, h) == [b"0", b"1"]
    assert b.redrive("t", "g", now_us=c.now_us) == 0


@pytest.mark.parametrize("how", ["crash", "snapshot-crash"])
def test_a_recreated_dead_letter_topic_keeps_its_own_cursor_across_a_restart(
    fh: Harness, how: str
) -> None:
    b, c = fh.broker, fh.clock
    _dead(fh, 4)
    assert b.redrive("t", "g", now_us=c.now_us) == 4
    _bodies_back(b, fh)
    _recreate_dlq(b, fh)
    _dead(fh, 3)
    assert b.redrive("t", "g", limit=2, now_us=c.now_us) == 2
    if how == "snapshot-crash":
        b.snapshot_now("t", now_us=c.now_us)
    b2 = fh.crash()
    assert DeadLetterScanner().summary(b2, "t", "g").count == 1
    assert b2.redrive("t", "g", now_us=c.now_us) == 1  # the new topic's third, once
    assert _bodies_back(b2, fh) == [b"0", b"1", b"2"]
