#!/usr/bin/env python3
"""A null AMQP 0-9-1 server: a broker that costs nothing, for ``amqp_bench.py`` (target ``null``).

It stores nothing and checks little: a queue is a count of messages, a publish is confirmed in
the read it arrived in (one ``basic.ack`` with ``multiple`` per read), a consumer is sent
ready-made deliveries as its prefetch allows. What a client program reaches against it is what
that client does on this machine with a broker that costs nothing. Not a strict ceiling: how a
server spaces its answers changes the client's own CPU per message (fewer, fuller reads cost it
less), and TideMQ's figures lie within this server's run-to-run spread, some above it. Not a
broker: nothing survives, nothing is routed (every publish goes to the queue its routing key
names), no errors are checked, and a consumer's refill waits for a quarter of its prefetch to
be free with no timer behind it (a client that waits for more deliveries before it acks would
stall; none of ``amqp_bench.py``'s does).

Run: ``python benchmarks/null_amqp.py PORT`` (prints ``null amqp on PORT`` once listening).
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections import deque
from typing import Any

from pamqp import commands as C
from pamqp import frame, header
from pamqp.body import ContentBody

_HEAD = struct.Struct(">BHI")
_PUBLISH = C.Basic.Publish.index

queues: dict[str, int] = {}
bodies: dict[str, bytes] = {}  # the last body published to each queue: what it delivers
waiting: dict[str, deque[Consumer]] = {}  # consumers of each queue with credit left


class Consumer:
    def __init__(self, conn: Conn, channel: int, tag: str, queue: str, prefetch: int) -> None:
        self.conn, self.channel, self.tag, self.queue = conn, channel, tag, queue
        self.prefetch = prefetch
        self.unacked: deque[int] = deque()
        self.tag_seq = 0


def pump(queue: str) -> None:
    """Send each consumer of ``queue`` what its credit allows: as TideMQ does, once a quarter
    of its prefetch is free or it holds nothing (one write per refill, not one per ack)."""
    for c in list(waiting.get(queue, ())):
        ch = c.conn.channels.get(c.channel)
        if ch is None:
            continue
        if c.prefetch and c.unacked and c.prefetch - len(c.unacked) < max(1, c.prefetch // 4):
            continue
        body = bodies.get(queue, b"")
        while queues.get(queue, 0) > 0 and (not c.prefetch or len(c.unacked) < c.prefetch):
            queues[queue] -= 1
            ch["tag"] += 1
            ch["unacked"][ch["tag"]] = c
            c.unacked.append(ch["tag"])
            out = c.conn.out
            out.append(frame.marshal(C.Basic.Deliver(c.tag, ch["tag"], False, "", queue),
                                     c.channel))
            out.append(frame.marshal(header.ContentHeader(0, len(body), C.Basic.Properties(
                delivery_mode=2)), c.channel))
            out.append(frame.marshal(ContentBody(body), c.channel))
        c.conn.flush()


class Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.started = False
        self.out: list[bytes] = []
        self.channels: dict[int, dict[str, Any]] = {}
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def flush(self) -> None:
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def send(self, ch: int, method: Any) -> None:
        self.out.append(frame.marshal(method, ch))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.started:
            if len(buf) < 8:
                self.buf = buf
                return
            buf = buf[8:]
            self.started = True
            self.send(0, C.Connection.Start(server_properties={
                "product": "null", "capabilities": {"publisher_confirms": True,
                                                     "basic.nack": True,
                                                     "consumer_cancel_notify": True}},
                mechanisms="PLAIN AMQPLAIN"))
        pos = 0
        confirms: dict[int, int] = {}
        touched: set[str] = set()
        while len(buf) - pos >= 7:
            kind, chn, size = _HEAD.unpack_from(buf, pos)
            end = pos + 7 + size + 1
            if end > len(buf):
                break
            ch = self.channels.get(chn)
            if kind == 3 and ch is not None:  # body (one frame per message here)
                q = ch["publishing"]
                queues[q] = queues.get(q, 0) + 1
                bodies[q] = buf[pos + 7:end - 1]
                touched.add(q)
                if ch["confirm"]:
                    ch["seq"] += 1
                    confirms[chn] = ch["seq"]
            elif kind == 2 and ch is not None:
                if int.from_bytes(buf[pos + 11:pos + 19], "big") == 0:  # an empty body
                    q = ch["publishing"]
                    queues[q] = queues.get(q, 0) + 1
                    bodies[q] = b""
                    touched.add(q)
                    if ch["confirm"]:
                        ch["seq"] += 1
                        confirms[chn] = ch["seq"]
            elif kind == 1:
                if ch is not None and int.from_bytes(buf[pos + 7:pos + 11], "big") == _PUBLISH:
                    m = frame.unmarshal(buf[pos:end])[2]
                    ch["publishing"] = m.routing_key  # type: ignore[union-attr]
                else:
                    self.method(chn, frame.unmarshal(buf[pos:end])[2])
            pos = end
        self.buf = buf[pos:]
        for chn, seq in confirms.items():
            self.out.append(frame.marshal(C.Basic.Ack(seq, True), chn))
        self.flush()
        for q in touched:
            pump(q)

    def method(self, chn: int, m: Any) -> None:
        ch = self.channels.get(chn)
        if isinstance(m, C.Connection.StartOk):
            self.send(0, C.Connection.Tune(2047, 131072, 0))
        elif isinstance(m, C.Connection.Open):
            self.send(0, C.Connection.OpenOk())
        elif isinstance(m, C.Connection.Close):
            self.send(0, C.Connection.CloseOk())
            self.flush()
            self.transport.close()
        elif isinstance(m, C.Channel.Open):
            self.channels[chn] = {"confirm": False, "seq": 0, "tag": 0, "unacked": {},
                                  "publishing": "", "consumers": []}
            self.send(chn, C.Channel.OpenOk())
        elif isinstance(m, C.Channel.Close):
            self._drop(chn)
            self.send(chn, C.Channel.CloseOk())
        elif ch is None:
            return
        elif isinstance(m, C.Confirm.Select):
            ch["confirm"] = True
            self.send(chn, C.Confirm.SelectOk())
        elif isinstance(m, C.Basic.Qos):
            ch["prefetch"] = m.prefetch_count
            self.send(chn, C.Basic.QosOk())
        elif isinstance(m, C.Queue.Declare):
            queues.setdefault(m.queue, 0)
            self.send(chn, C.Queue.DeclareOk(m.queue, queues[m.queue], 0))
        elif isinstance(m, C.Queue.Delete):
            self.send(chn, C.Queue.DeleteOk(queues.pop(m.queue, 0)))
        elif isinstance(m, C.Basic.Consume):
            tag = m.consumer_tag or f"ctag{len(ch['consumers']) + 1}"
            c = Consumer(self, chn, tag, m.queue, ch.get("prefetch", 0))
            ch["consumers"].append(c)
            waiting.setdefault(m.queue, deque()).append(c)
            self.send(chn, C.Basic.ConsumeOk(tag))
            self.flush()
            pump(m.queue)
        elif isinstance(m, C.Basic.Cancel):
            for c in [c for c in ch["consumers"] if c.tag == m.consumer_tag]:
                ch["consumers"].remove(c)
                waiting[c.queue].remove(c)
            self.send(chn, C.Basic.CancelOk(m.consumer_tag))
        elif isinstance(m, C.Basic.Ack):
            unacked = ch["unacked"]
            tags = [t for t in unacked if t <= m.delivery_tag] if m.multiple \
                else [m.delivery_tag]
            queued: set[str] = set()
            for t in tags:
                c = unacked.pop(t, None)
                if c is not None:
                    c.unacked.remove(t)
                    queued.add(c.queue)
            for q in queued:
                pump(q)

    def _drop(self, chn: int) -> None:
        ch = self.channels.pop(chn, None)
        if ch is None:
            return
        for c in ch["consumers"]:
            waiting[c.queue].remove(c)
        for c in ch["unacked"].values():  # unacked messages go back to their queue
            queues[c.queue] = queues.get(c.queue, 0) + 1

    def connection_lost(self, exc: Exception | None) -> None:
        for chn in list(self.channels):
            self._drop(chn)
        self.transport = None


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port)
    print(f"null amqp on {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
