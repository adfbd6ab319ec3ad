"""The seed's in-memory priority queue, on TideMQ: priorities, retries with backoff, and the
dead-letter queue the seed left as a TODO.

Run: python examples/simple_queue.py   (TIDEMQ_URL=... for another backend; default memory://.
On nats:// it stops with Unsupported: JetStream has no priorities, see docs/backends.md)
"""

from __future__ import annotations

import os
import time

import tidemq


def main(url: str) -> None:
    with tidemq.Client(url) as mq:
        mq.create_topic("jobs", exist_ok=True)
        # The group exists before publishing so it sees every job; failing jobs are retried
        # with exponential backoff and dead-lettered after 3 deliveries.
        sub = mq.subscribe("jobs", "workers", max_deliveries=3,
                           backoff={"initial": 0.05, "multiplier": 2.0, "max": 0.2})
        mq.publish("jobs", b"resize photo", priority=1)
        mq.publish("jobs", b"send invoice", priority=9)
        mq.publish("jobs", b"corrupt job", priority=5)
        mq.publish("jobs", b"nightly report", priority=0)

        done: list[bytes] = []
        dead: list[tidemq.Message] = []
        dlq = mq.subscribe("jobs.dlq", "ops")
        deadline = time.monotonic() + 10
        while (len(done) < 3 or not dead) and time.monotonic() < deadline:
            for msg in sub.receive(max_messages=1, timeout=0.1):
                if msg.body == b"corrupt job":
                    print(f"failed {msg.body!r} (delivery {msg.delivery_count}), retrying later")
                    msg.nack()  # the group's backoff decides when it comes back
                else:
                    print(f"processed {msg.body!r} (priority {msg.priority})")
                    done.append(msg.body)
                    msg.ack()
            for msg in dlq.receive(timeout=0):
                print(f"dead letter {msg.body!r}: reason={msg.headers['x-tidemq-origin-reason']}, "
                      f"deliveries={msg.headers['x-tidemq-origin-delivery-count']}")
                dead.append(msg)
                msg.ack()
        assert done[:2] == [b"send invoice", b"resize photo"], done
        assert [m.body for m in dead] == [b"corrupt job"], dead

if __name__ == "__main__":
    main(os.environ.get("TIDEMQ_URL") or "memory://")
