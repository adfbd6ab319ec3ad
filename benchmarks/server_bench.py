"""Figures of issue 4 through a live server: client and server on this machine, 100-byte bodies.

Run: .venv/bin/python benchmarks/server_bench.py [--quick] [--only NAME ...]
         [--server-loop asyncio|uvloop] [--client-loop asyncio|uvloop]

The server runs as its own process (``python -m tidemq.server``) on a fresh data folder; the
client is an ``AsyncClient`` in this process. Each figure uses a fresh topic. Ends with one JSON
line per figure: {"metric", "value", "unit"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import tidemq

BODY = b"x" * 100
Result = list[dict[str, Any]]


class ServerProc:
    def __init__(self, data: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidemq.server", "--data", data, "--port", "0",
             "--log-level", "WARNING", *args], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        m = re.search(r":(\d+)$", line.strip())
        if not m:
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = f"tidemq://127.0.0.1:{m.group(1)}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _m(metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"metric": metric, "value": round(value, 3) if value < 100 else round(value),
            "unit": unit}


async def publish_single(url: str, n: int) -> Result:
    """Per-message ``publish`` calls, pipelined: 2,000 calls in flight at a time."""
    async with tidemq.AsyncClient(url) as mq:
        await mq.create_topic("single", partitions=1)
        pub = mq.publish
        window = 2000
        t0 = time.perf_counter()
        for _ in range(n // window):
            await asyncio.gather(*[pub("single", BODY) for _ in range(window)])
        dt = time.perf_counter() - t0
    return [_m("server.publish_single_pipelined", n / dt, "msgs/s")]


async def publish_batch(url: str, n: int) -> Result:
    """``publish_batch`` of 1,000 plain bodies, 4 calls in flight."""
    async with tidemq.AsyncClient(url) as mq:
        await mq.create_topic("batch", partitions=1)
        bodies = [BODY] * 1000
        t0 = time.perf_counter()
        for _ in range(n // 4000):
            await asyncio.gather(*[mq.publish_batch("batch", bodies) for _ in range(4)])
        dt = time.perf_counter() - t0
    return [_m("server.publish_batch_1000", n / dt, "msgs/s")]


async def _fill(mq: Any, topic: str, n: int) -> None:
    await mq.create_topic(topic, partitions=1)
    bodies = [BODY] * 1000
    for _ in range(n // 1000):
        await mq.publish_batch(topic, bodies)


async def consume_ack_each(url: str, n: int) -> Result:
    async with tidemq.AsyncClient(url) as mq:
        await _fill(mq, "each", n)
        sub = mq.subscribe("each", "g", prefetch=2000)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            for m in await sub.receive(1000, 5.0):
                await m.ack()
                got += 1
        dt = time.perf_counter() - t0
    return [_m("server.consume_ack_each", n / dt, "msgs/s")]


async def consume_batch_ack(url: str, n: int) -> Result:
    async with tidemq.AsyncClient(url) as mq:
        await _fill(mq, "batchack", n)
        sub = mq.subscribe("batchack", "g", prefetch=4000)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batch = await sub.receive(2000, 5.0)
            await sub.ack([m.id for m in batch])
            got += len(batch)
        dt = time.perf_counter() - t0
    return [_m("server.consume_batch_ack", n / dt, "msgs/s")]


async def latency(url: str, seconds: float) -> Result:
    """Publish at 5,000 msgs/s (5 every ms) on an 'interval' topic; the consumer in this same
    process stamps arrival: end-to-end = publish call -> message received."""
    rate = 5000
    async with tidemq.AsyncClient(url) as mq:
        await mq.create_topic("latency", partitions=1)
        sub = mq.subscribe("latency", "g", prefetch=1000)
        await sub.receive(1, 0.01)  # joins the group
        lat: list[float] = []
        total = int(rate * seconds)

        async def consumer() -> None:
            while len(lat) < total:
                batch = await sub.receive(1000, 2.0)
                now = time.perf_counter()
                for m in batch:
                    lat.append(now - float(m.body[:20]))
                if batch:
                    await sub.ack([m.id for m in batch])

        async def producer() -> None:
            t0 = time.perf_counter()
            pending = []
            for i in range(total):
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
                body = b"%20.9f" % time.perf_counter() + BODY[20:]
                pending.append(asyncio.ensure_future(mq.publish("latency", body)))
            await asyncio.gather(*pending)

        await asyncio.gather(consumer(), producer())
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    return [_m("server.e2e_latency_p50", pct(0.5), "ms"), _m("server.e2e_latency_p99", pct(0.99), "ms"),
            _m("server.e2e_latency_p999", pct(0.999), "ms")]


async def always(url: str, n: int) -> Result:
    """Durability 'always': 16 producers (own connections), up to 100 messages in flight each."""
    producers, in_flight = 16, 100
    clients = [tidemq.AsyncClient(url) for _ in range(producers)]
    for c in clients:
        await c.connect()
    await clients[0].create_topic("always", partitions=4, durability="always")
    per = n // producers

    async def run(c: Any, p: int) -> None:
        # Waves of `in_flight` concurrent publishes (cheaper for the client than a semaphore
        # and a task per message; the server sees the same concurrency).
        pub = c.publish
        for w in range(per // in_flight):
            await asyncio.gather(*[pub("always", BODY, key=b"%d" % ((w + i) % 64))
                                   for i in range(in_flight)])

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c, p) for p, c in enumerate(clients)))
    dt = time.perf_counter() - t0
    for c in clients:
        await c.close()
    return [_m("server.publish_always_16x100", per * producers / dt, "msgs/s")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", nargs="*", help="run only these figures")
    ap.add_argument("--server-loop", choices=["auto", "asyncio", "uvloop"], default="auto")
    ap.add_argument("--client-loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = ap.parse_args()
    loop_factory = None
    if args.client_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    k = 0.1 if args.quick else 1.0
    figures: dict[str, Callable[[str], Awaitable[Result]]] = {
        "publish_single": lambda u: publish_single(u, int(200_000 * k)),
        "publish_batch": lambda u: publish_batch(u, int(2_000_000 * k)),
        "consume_ack_each": lambda u: consume_ack_each(u, int(200_000 * k)),
        "consume_batch_ack": lambda u: consume_batch_ack(u, int(400_000 * k)),
        "latency": lambda u: latency(u, 10.0 * k),
        "always": lambda u: always(u, int(160_000 * k)),
    }
    results: Result = []
    for name, fig in figures.items():
        if args.only and name not in args.only:
            continue
        data = tempfile.mkdtemp(prefix="tidemq-bench-")
        server = ServerProc(data, "--loop", args.server_loop)
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                res = runner.run(fig(server.url))
        finally:
            server.stop()
            shutil.rmtree(data, ignore_errors=True)
        for r in res:
            print(f"{r['metric']:<40} {r['value']:>12} {r['unit']}", flush=True)
        results += res
    print()
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
