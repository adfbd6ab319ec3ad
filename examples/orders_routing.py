"""The seed's RabbitMQ example, on TideMQ: exchange `orders` is a topic, queue
`order_processing` is a group bound with `order.*`, prefetch 10, ack / nack-requeue.

Run: python examples/orders_routing.py [URL]   (default: $TIDEMQ_URL, else a temporary data
folder; e.g. nats://127.0.0.1:4222)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import tidemq


def main(url: str) -> None:
    with tidemq.Client(url) as mq:
        mq.create_topic("orders", exist_ok=True)
        sub = mq.subscribe("orders", "order_processing", filter={"routing_key": ["order.*"]},
                           start="latest", prefetch=10)
        for i in range(5):
            mq.publish("orders", json.dumps({"order_id": i}).encode(),
                       routing_key="order.created")
        mq.publish("orders", b'{"order_id": 99}', routing_key="order.created.bulk")  # not order.*
        mq.publish("orders", b'{"invoice": 1}', routing_key="invoice.created")  # not bound

        processed: list[int] = []
        requeued = False
        deadline = time.monotonic() + 10
        while len(processed) < 5 and time.monotonic() < deadline:
            for msg in sub.receive(max_messages=10, timeout=0.5):
                order = json.loads(msg.body)
                if order["order_id"] == 3 and not requeued:
                    requeued = True
                    msg.nack(delay=0)  # basic_nack(requeue=True)
                    continue
                processed.append(order["order_id"])
                msg.ack()  # basic_ack
        print("processed orders:", sorted(processed))
        assert sorted(processed) == [0, 1, 2, 3, 4], processed


if __name__ == "__main__":
    if len(sys.argv) > 1 or os.environ.get("TIDEMQ_URL"):
        main(sys.argv[1] if len(sys.argv) > 1 else os.environ["TIDEMQ_URL"])
    else:
        with tempfile.TemporaryDirectory() as d:
            main(d)
