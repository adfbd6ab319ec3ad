"""AsyncClient over the embedded transports: the same semantics, awaited."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import tidemq
from tidemq import errors


@pytest.fixture(params=["memory", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else str(tmp_path / "d")


def test_async_publish_iterate_ack(url: str) -> None:
    async def main() -> list[bytes]:
        async with tidemq.AsyncClient(url) as mq:
            await mq.create_topic("a.orders", partitions=2, durability="always")
            ids = await mq.publish_batch("a.orders", [b"1", b"2", b"3"], key="k")
            assert len(ids) == 3
            got: list[bytes] = []
            async for msg in mq.subscribe("a.orders", "billing"):
                got.append(msg.body)
                await msg.ack()
                if len(got) == 3:
                    break
            return got

    assert asyncio.run(main()) == [b"1", b"2", b"3"]


def test_async_receive_waits_for_a_publish(url: str) -> None:
    async def main() -> list[bytes]:
        async with tidemq.AsyncClient(url) as mq:
            await mq.create_topic("wait")
            sub = await mq.subscribe("wait", "g")

            async def later() -> None:
                await asyncio.sleep(0.2)
                await mq.publish("wait", b"hello")

            task = asyncio.create_task(later())
            got = await sub.receive(timeout=3.0)
            await task
            await sub.ack(got)
            return [m.body for m in got]

    assert asyncio.run(main()) == [b"hello"]


def test_async_consume_callback(url: str) -> None:
    async def main() -> list[bytes]:
        seen: list[bytes] = []
        async with tidemq.AsyncClient(url) as mq:
            await mq.create_topic("cb")

            async def handle(msg: tidemq.AsyncMessage) -> None:
                seen.append(msg.body)

            await mq.consume("cb", "g", handle, workers=2)
            await mq.publish_batch("cb", [b"a", b"b"])
            for _ in range(100):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.05)
        return sorted(seen)

    assert asyncio.run(main()) == [b"a", b"b"]


def test_async_not_connected_is_closed_error() -> None:
    async def main() -> None:
        mq = tidemq.AsyncClient("memory://")
        with pytest.raises(errors.Closed):
            await mq.publish("t", b"x")

    asyncio.run(main())


def test_async_consume_runs_workers_in_parallel_and_extends_leases(url: str) -> None:
    async def main() -> tuple[int, list[tuple[bytes, int]]]:
        seen: list[tuple[bytes, int]] = []
        running = 0
        most = 0
        async with tidemq.AsyncClient(url) as mq:
            await mq.create_topic("par")

            async def handle(msg: tidemq.AsyncMessage) -> None:
                nonlocal running, most
                running += 1
                most = max(most, running)
                await asyncio.sleep(0.6 if msg.body == b"slow" else 0.15)
                running -= 1
                seen.append((msg.body, msg.delivery_count))

            await mq.publish_batch("par", [b"slow"] + [b"m%d" % i for i in range(7)])
            await mq.consume("par", "g", handle, workers=4, ack_timeout=0.3)
            for _ in range(200):
                if len(seen) == 8:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
        return most, seen

    most, seen = asyncio.run(main())
    assert most == 4
    assert sorted(b for b, _ in seen) == sorted([b"slow"] + [b"m%d" % i for i in range(7)])
    assert all(count == 1 for _, count in seen), seen
