"""Recovery: snapshot + journal tail, and a real kill -9 of a broker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tidemq.broker import Broker, TopicConfig
from tidemq.storage import Record, open_store

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
