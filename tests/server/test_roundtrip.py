"""Publish, consume and ack through a live server process over tidemq://."""

from __future__ import annotations

import asyncio
import time

import xxhash

import tidemq

from .conftest import ServerProcess


def test_blocking_client_round_trip(server_process: ServerProcess) -> None:
    with tidemq.Client(server_process.url) as mq:
        mq.create_topic("orders", partitions=3)
        mid = mq.publish("orders", b'{"order_id": 1}', key="user-1",
                         routing_key="order.created", headers={"region": "eu"}, priority=5)
        ids = mq.publish_batch("orders", [b"a", b"b", b"c"], key="user-2")
        assert len(ids) == 3 and len(set(ids)) == 3
        sub = mq.subscribe("orders", "billing")
        got: list[tidemq.Message] = []
        deadline = time.monotonic() + 10
        while len(got) < 4 and time.monotonic() < deadline:
            batch = sub.receive(max_messages=10, timeout=0.5)
            for m in batch:
                sub.ack(m.id)
            got += batch
        by_id = {m.id: m for m in got}
        assert set(by_id) == {mid, *ids}
        first = by_id[mid]
        assert (first.body, first.key, first.routing_key, first.headers, first.priority) == (
            b'{"order_id": 1}', b"user-1", "order.created", {"region": "eu"}, 5)
        assert [by_id[i].body for i in ids] == [b"a", b"b", b"c"]
        # The client partitions by key with xxh3_64, as the SPEC requires.
        assert first.partition == xxhash.xxh3_64_intdigest(b"user-1") % 3
        assert sub.receive(timeout=0.3) == []  # acked: nothing comes again
        info = mq.describe_group("orders", "billing")
        assert info.in_flight == 0 and info.lag == 0


def test_async_pipelined_publish_and_consume(server_process: ServerProcess) -> None:
    n = 2000

    async def main() -> None:
        async with tidemq.AsyncClient(server_process.url) as mq:
            await mq.create_topic("pipe", partitions=4)
            ids = await asyncio.gather(
                *[mq.publish("pipe", b"m%d" % i, key=b"k%d" % (i % 7)) for i in range(n)])
            assert len(set(ids)) == n
            sub = mq.subscribe("pipe", "g", prefetch=64)
            seen: dict[bytes, list[int]] = {}
            count = 0
            deadline = time.monotonic() + 20
            while count < n and time.monotonic() < deadline:
                for m in await sub.receive(100, 0.5):
                    seen.setdefault(m.key, []).append(int(m.body[1:]))
                    await m.ack()
                    count += 1
            assert count == n
            # FIFO per key (each key lives on one partition).
            for key, bodies in seen.items():
                assert bodies == sorted(bodies), key
            await asyncio.sleep(0.1)
            assert (await mq.describe_group("pipe", "g")).in_flight == 0

    asyncio.run(main())


def test_nack_and_reject_over_the_wire(server_process: ServerProcess) -> None:
    with tidemq.Client(server_process.url) as mq:
        mq.create_topic("work")
        mq.publish("work", b"retry-me")
        mq.publish("work", b"poison")
        sub = mq.subscribe("work", "w")
        msgs = sub.receive(max_messages=2, timeout=5)
        assert sorted(m.body for m in msgs) == [b"poison", b"retry-me"]
        for m in msgs:
            if m.body == b"poison":
                m.reject("bad")
            else:
                m.nack(delay=0)
        again = sub.receive(max_messages=2, timeout=5)
        assert [(m.body, m.delivery_count) for m in again] == [(b"retry-me", 2)]
        again[0].ack()
        dlq = mq.subscribe("work.dlq", "inspect")
        [dead] = dlq.receive(max_messages=1, timeout=5)
        assert dead.body == b"poison"


def test_delayed_message_is_delivered_and_acked_over_the_wire(server_process: ServerProcess) -> None:
    with tidemq.Client(server_process.url) as mq:
        mq.create_topic("later")
        sub = mq.subscribe("later", "g")
        now = mq.publish("later", b"now")
        t0 = time.monotonic()
        mid = mq.publish("later", b"soon", delay=0.3)
        [first] = sub.receive(max_messages=1, timeout=5)
        assert first.id == now
        got: list[tidemq.Message] = []
        while not got and time.monotonic() - t0 < 10:
            got = sub.receive(max_messages=1, timeout=0.5)
        [m] = got
        # Its id names the delay store, its position the partition it was released into.
        assert (m.partition, m.offset) != (first.partition, first.offset)
        assert (m.id, m.body) == (mid, b"soon")
        assert time.monotonic() - t0 >= 0.3
        m.ack()  # acked as a range over the wire
        assert mq.describe_group("later", "g").in_flight == 1  # `first` is still unacked
        first.ack()
        assert mq.describe_group("later", "g").in_flight == 0
        assert sub.receive(timeout=0.3) == []
