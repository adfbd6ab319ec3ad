"""The seed's partitioned pub/sub broker, on TideMQ: partitions by key (a stable hash, not
Python's hash()), two groups that each get every message, and order per key.

Run: python examples/pubsub.py   (TIDEMQ_URL=nats://127.0.0.1:4222 to run it on another
backend; default memory://)
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

import tidemq


def main(url: str) -> None:
    with tidemq.Client(url) as mq:
        mq.create_topic("user-events", partitions=3, exist_ok=True)
        analytics = mq.subscribe("user-events", "analytics", mode="ordered")
        audit = mq.subscribe("user-events", "audit", mode="ordered")

        events = [{"body": f"{user}:event-{i}".encode(), "key": user}
                  for i in range(5) for user in ("alice", "bob", "carol")]
        mq.publish_batch("user-events", events)

        for name, sub in (("analytics", analytics), ("audit", audit)):
            per_user: dict[str, list[str]] = defaultdict(list)
            partitions: dict[str, set[int]] = defaultdict(set)
            deadline = time.monotonic() + 5
            received = 0
            while received < len(events) and time.monotonic() < deadline:
                batch = sub.receive(max_messages=100, timeout=0.5)
                for msg in batch:
                    user, event = msg.body.decode().split(":")
                    per_user[user].append(event)
                    partitions[user].add(msg.partition)
                sub.ack(batch)
                received += len(batch)
            assert received == len(events), (name, received)
            for user, seq in per_user.items():
                assert seq == [f"event-{i}" for i in range(5)], (user, seq)
                assert len(partitions[user]) == 1
            print(f"{name}: got all {received} events, in order per user; "
                  + ", ".join(f"{u} on partition {min(p)}" for u, p in sorted(partitions.items())))


if __name__ == "__main__":
    main(os.environ.get("TIDEMQ_URL") or "memory://")
