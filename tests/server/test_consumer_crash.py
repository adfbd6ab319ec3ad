"""A consumer process killed mid-batch: its unacked messages go to another member at once.

The group's ack_timeout is 120 s, so the redelivery seen within seconds comes from the server
noticing the dead connection (EOF) and releasing the member's leases, not from lease expiry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import tidemq

from .conftest import ServerProcess

CONSUMER = textwrap.dedent("""
    import json, sys, time, tidemq
    mq = tidemq.Client(sys.argv[1])
    sub = mq.subscribe("jobs", "workers", prefetch=100, ack_timeout=120.0)
    held = []
    deadline = time.monotonic() + 20
    while len(held) < 100 and time.monotonic() < deadline:
        held += sub.receive(max_messages=100 - len(held), timeout=0.5)
    acked = held[:40]
    sub.ack([m.id for m in acked])
    time.sleep(0.5)  # let the acks reach the server
    print(json.dumps({"held": [m.id for m in held], "acked": [m.id for m in acked]}), flush=True)
    time.sleep(600)  # "processing" the rest when the kill comes
""")


def test_killed_consumer_unacked_messages_are_redelivered(server_process: ServerProcess) -> None:
    with tidemq.Client(server_process.url) as mq:
        mq.create_topic("jobs", partitions=2)
        ids = mq.publish_batch("jobs", [b"job-%d" % i for i in range(100)])
        consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, server_process.url],
                                    stdout=subprocess.PIPE)
        try:
            assert consumer.stdout is not None
            line = consumer.stdout.readline()
            state = json.loads(line)
            assert len(state["held"]) == 100
            consumer.kill()  # SIGKILL mid-batch: 60 messages leased, unacked
            consumer.wait(10)
        finally:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait(10)
            if consumer.stdout is not None:
                consumer.stdout.close()

        t0 = time.monotonic()
        sub = mq.subscribe("jobs", "workers")
        got: list[tidemq.Message] = []
        while len(got) < 60 and time.monotonic() - t0 < 10:
            batch = sub.receive(max_messages=100, timeout=0.5)
            sub.ack(batch)
            got += batch
        unacked = set(state["held"]) - set(state["acked"])
        assert {m.id for m in got} == unacked
        # A vanished member's leases end counted (a poison message cannot loop forever).
        assert all(m.delivery_count == 2 for m in got)
        assert time.monotonic() - t0 < 10  # far below the 120 s ack_timeout
        assert set(ids) == set(state["held"])
