"""kill -9 of the server during a publish storm on a durability='always' topic (SPEC §6, §9).

The producers keep going across the crash: the client reconnects and resends unconfirmed batches
with their original sequence numbers. Afterwards every message is stored exactly once, in
publish order per key (so per partition), and everything confirmed before the kill survived it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import tidemq

from .conftest import ServerProcess

PRODUCERS = 8
PER_PRODUCER = 150
IN_FLIGHT = 10  # per producer


async def _storm(url: str, proc: ServerProcess) -> tuple[set[bytes], int]:
    confirmed: set[bytes] = set()
    confirmed_before_kill: set[bytes] = set()
    killed = asyncio.Event()

    async with tidemq.AsyncClient(url, request_timeout=60.0) as mq:
        await mq.create_topic("storm", partitions=3, durability="always")

        async def producer(p: int) -> None:
            sem = asyncio.Semaphore(IN_FLIGHT)

            async def one(i: int) -> None:
                body = b"%d:%d" % (p, i)
                try:
                    await mq.publish("storm", body, key=b"p%d" % p)
                    confirmed.add(body)
                finally:
                    sem.release()

            tasks = []
            for i in range(PER_PRODUCER):
                await sem.acquire()
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)

        async def killer() -> None:
            while len(confirmed) < PRODUCERS * PER_PRODUCER // 4:
                await asyncio.sleep(0.005)
            await asyncio.to_thread(proc.kill)
            confirmed_before_kill.update(confirmed)
            killed.set()
            await asyncio.to_thread(proc.start)

        await asyncio.gather(killer(), *(producer(p) for p in range(PRODUCERS)))
        assert killed.is_set()
    return confirmed_before_kill, len(confirmed)


def test_kill9_during_publish_storm_keeps_every_confirmed_message_once(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data").start()
    try:
        before_kill, n_confirmed = asyncio.run(_storm(proc.url, proc))
        assert n_confirmed == PRODUCERS * PER_PRODUCER  # every publish eventually confirmed

        # A second crash with nothing in flight, then read everything back.
        proc.kill()
        proc.start()
        with tidemq.Client(proc.url) as mq:
            sub = mq.subscribe("storm", "check", prefetch=1000)
            got: list[tidemq.Message] = []
            deadline = time.monotonic() + 30
            while len(got) < n_confirmed and time.monotonic() < deadline:
                batch = sub.receive(max_messages=1000, timeout=0.5)
                sub.ack(batch)
                got += batch
            assert sub.receive(timeout=0.3) == []
    finally:
        proc.close()

    bodies = [m.body for m in got]
    assert len(bodies) == len(set(bodies)), "a message was stored twice"
    assert set(bodies) == {b"%d:%d" % (p, i) for p in range(PRODUCERS) for i in range(PER_PRODUCER)}
    assert before_kill <= set(bodies)
    # In order per partition: walk each partition by offset; each producer's numbers increase.
    for part in range(3):
        last: dict[bytes, int] = {}
        for m in sorted((m for m in got if m.partition == part), key=lambda m: m.offset):
            p, i = m.body.split(b":")
            assert int(i) > last.get(p, -1), f"partition {part} out of order at {m.body!r}"
            last[p] = int(i)
