"""Server behaviour checked in-process (fast): heartbeats, group commit, slow consumers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import tidemq
from tidemq import protocol as P
from tidemq.server import Server, ServerConfig


async def _raw_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, P.Decoder]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(P.encode(P.Hello(request_id=1, versions=[1], client_id="raw",
                                  max_frame_size=1 << 24)))
    dec = P.Decoder(1 << 24)
    while True:
        dec.feed(await reader.read(65536))
        frame = dec.next_frame()
        if frame is not P.NEED_DATA:
            assert isinstance(frame, P.HelloOk)
            return reader, writer, dec


async def _next_frame(reader: asyncio.StreamReader, dec: P.Decoder, kind: type) -> object:
    while True:
        frame = dec.next_frame()
        if frame is P.NEED_DATA:
            dec.feed(await asyncio.wait_for(reader.read(65536), 5))
            continue
        if isinstance(frame, kind):
            return frame


def test_silent_client_is_dropped_and_its_leases_released() -> None:
    async def main() -> None:
        cfg = ServerConfig(data=None, port=0, heartbeat_interval=0.1, heartbeat_timeout=0.3)
        async with Server(cfg) as srv, tidemq.AsyncClient(f"tidemq://127.0.0.1:{srv.port}") as mq:
            await mq.create_topic("hb")
            await mq.publish_batch("hb", [b"a", b"b", b"c"])
            reader, writer, dec = await _raw_session(srv.port)
            writer.write(P.encode(P.Subscribe(request_id=2, topic="hb", group="g",
                                              prefetch=10)))
            await _next_frame(reader, dec, P.Deliver)
            # Now the raw client goes silent (never answers the server's pings): a
            # half-open connection. The server must drop it after heartbeat_timeout.
            t0 = time.monotonic()
            sub = mq.subscribe("hb", "g")
            got: list[bytes] = []
            while len(got) < 3 and time.monotonic() - t0 < 5:
                for m in await sub.receive(10, 0.2):
                    got.append(m.body)
                    await m.ack()
            assert sorted(got) == [b"a", b"b", b"c"]
            assert time.monotonic() - t0 < 3
            assert len(srv.connections) == 1  # only the well-behaved client is left
            # The client negotiated the server's short heartbeat and answered pings, so
            # it was never dropped.
            writer.close()

    asyncio.run(main())


def test_always_durability_shares_fsyncs(tmp_path: Path) -> None:
    async def main() -> None:
        async with Server(ServerConfig(data=str(tmp_path), port=0)) as srv:
            url = f"tidemq://127.0.0.1:{srv.port}"
            clients = [tidemq.AsyncClient(url) for _ in range(4)]
            for c in clients:
                await c.connect()
            await clients[0].create_topic("durable", partitions=4, durability="always")
            ids = await asyncio.gather(*[
                c.publish("durable", b"m%d" % i, key=b"%d" % i)
                for c in clients for i in range(300)])
            assert len(set(ids)) == 1200
            assert srv.driver is not None
            # Every write went through group commit, and rounds were shared.
            assert srv.driver.commits.tokens > 0
            assert srv.driver.commits.rounds < srv.driver.commits.tokens
            for c in clients:
                await c.close()

    asyncio.run(main())


def test_slow_consumer_slows_only_itself() -> None:
    async def main() -> None:
        cfg = ServerConfig(data=None, port=0, write_high_water=64 * 1024,
                           write_low_water=16 * 1024)
        async with Server(cfg) as srv, tidemq.AsyncClient(f"tidemq://127.0.0.1:{srv.port}") as mq:
            await mq.create_topic("big")
            # A consumer that subscribes with a huge prefetch and then never reads.
            reader, writer, dec = await _raw_session(srv.port)
            writer.write(P.encode(P.Subscribe(request_id=2, topic="big", group="slow",
                                              prefetch=10_000)))
            await _next_frame(reader, dec, P.SubscribeOk)
            body = b"x" * 4096
            for _ in range(20):
                await mq.publish_batch("big", [body] * 500)  # 40 MB in all
            # Meanwhile another group drains everything promptly.
            sub = mq.subscribe("big", "fast", prefetch=1000)
            n = 0
            t0 = time.monotonic()
            while n < 10_000 and time.monotonic() - t0 < 20:
                batch = await sub.receive(1000, 0.5)
                await sub.ack([m.id for m in batch])
                n += len(batch)
            assert n == 10_000
            [slow] = [s for s in srv.members.values() if s.member.startswith("slow")]
            # The server stopped pushing to the stuck reader: its credit is largely unused
            # and its connection is marked unwritable.
            pushed = 10_000 - slow.credit
            print("pushed to the stuck reader:", pushed)
            assert not slow.conn.writable
            assert pushed < 5_000  # what the socket buffers hold, not the whole topic
            writer.close()

    asyncio.run(main())


def test_full_backlog_blocks_the_producer_until_consumers_catch_up() -> None:
    async def main() -> None:
        async with Server(ServerConfig(data=None, port=0)) as srv, \
                tidemq.AsyncClient(f"tidemq://127.0.0.1:{srv.port}") as mq:
            await mq.create_topic("bp", backlog_limit=10, backlog_policy="block")
            sub = mq.subscribe("bp", "g", prefetch=5)
            await sub.receive(1, 0.05)  # join the group: the backlog counts for it
            await mq.publish_batch("bp", [b"%d" % i for i in range(10)])
            blocked = asyncio.ensure_future(mq.publish("bp", b"10"))
            await asyncio.sleep(0.2)
            assert not blocked.done()  # held by the server, not refused
            got: list[bytes] = []
            while len(got) < 11:
                batch = await sub.receive(5, 2.0)
                await sub.ack([m.id for m in batch])
                got += [m.body for m in batch]
            assert blocked.done() and not blocked.exception()
            assert sorted(got, key=int) == [b"%d" % i for i in range(11)]

    asyncio.run(main())
