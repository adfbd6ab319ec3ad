#!/usr/bin/env python3
"""The overhead of TideMQ's client layer on another engine (issue 13, "Figures"): the same
work through ``tidemq.AsyncClient`` / ``tidemq.Client`` on ``nats://`` (or ``amqp://``) and
through the engine's own Python client (nats-py / aio-pika) used the same way. Target: ≤ 15 %.

Four clients: ``tidemq_async`` (``AsyncClient``) against the engine's client on its asyncio
loop (``nats_py`` / ``aio_pika``), and ``tidemq_blocking`` (``Client``, blocking calls from a
publisher thread and a consumer thread) against the engine's client driven from such threads
(``nats_py_threads`` / ``aio_pika_threads``: both are asyncio-only, so blocking code runs them
on a loop thread of their own and hands each call over with ``run_coroutine_threadsafe``;
see ``engine_threads``). ``overhead_*_vs_async.tidemq_blocking`` sets the blocking client
against the engine's async client as well: what blocking calls from threads cost.

Same durability on both sides: JetStream file storage, one partition (one stream), R1, every
publish confirmed by the server (TideMQ: a publish's id; nats-py: ``js.publish`` awaited, the
PubAck), every ack confirmed (TideMQ: ``sub.flush()``, which waits for the server's answer to
each ack; nats-py: ``msg.ack_sync()``). RabbitMQ: a durable quorum queue, publisher confirms,
acks (aio-pika).

Figures, each the median (min–max) of ``--runs`` runs, the four clients interleaved per run
(each run starts with the next client in turn, so none is always first):

- ``publish``: ``--count`` messages of ``--size`` bytes, ``--window`` in flight (async:
  ``asyncio.gather`` of that many publishes; blocking: ``publish(wait=False)`` then ``flush``
  every window; the engine from threads: one hand-over per window, a ``gather`` inside),
  msgs/s.
- ``consume_ack``: the same number, already stored, received ``--window`` at a time and acked,
  each batch's acks confirmed before the next receive, msgs/s.
- ``e2e_p50`` / ``e2e_p99``: publish → delivery at ``--rate`` msgs/s, ``--seconds`` per
  client and run, one publish awaited at a time, a consumer receiving and acking
  concurrently, ms. The four clients stay connected through the run's e2e phase and take
  turns in ``--slices`` slices each (each slice starting with the next client in turn): this
  machine's load comes and goes within seconds, and so falls on each client alike (a whole
  run per client left RabbitMQ's own p50 moving 1.1–1.9 ms between the clients of one run).
  The clock stops when the consumer's code has the message (TideMQ: ``receive`` returned;
  nats-py / aio-pika: the push callback runs). Every ack is done (NATS: confirmed by the
  server; AMQP has no answer to an ack: sent) before the slice ends, and on both sides the
  consumer does not wait for that before taking the next message:
  TideMQ's consumer is its pull-based member (``receive``, then ``ack``, which returns once
  the ack is sent; ``sub.flush()`` waits for them, as over ``tidemq://``); the engine's is a
  push callback that takes the time and starts the ack (nats-py's ``ack_sync()``, aio-pika's
  ``ack()``) in a task of its own. The engine from threads: its
  push callback puts each message on a ``queue.Queue`` that the consumer thread takes from,
  and hands the same ack over to the loop without waiting for it.
- ``publish_cpu`` / ``consume_ack_cpu``: the client process's CPU time per message (µs; all
  its threads): the layer's own cost, much less disturbed by other load on a shared machine
  than wall-clock throughput.
- ``publish_no_msg_id`` (NATS): nats-py's publishes without ``Nats-Msg-Id``. TideMQ's
  publishes carry one (its idempotent producer: a publish retried after a lost answer is
  stored once), so the like-for-like baseline (``publish``) carries one too; the plain figure
  shows what that header costs the engine.
- ``overhead_*``: per run, (engine − TideMQ) / engine for throughputs, (TideMQ − engine) /
  engine for latencies and CPU, in % (positive: TideMQ is slower or costlier); the median
  (min–max) over the runs.

Usage::

    .venv/bin/python benchmarks/backends_overhead.py --url nats://127.0.0.1:4222 \\
        --runs 3 --count 20000 > figures.jsonl
    .venv/bin/python benchmarks/render.py figures.jsonl

Everything is created under a fresh prefix / queue names and deleted at the end. JSON lines
on stdout (``render.py``'s figure shape), progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import queue
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tidemq  # noqa: E402

BENCH = "backends_overhead"
T = TypeVar("T")
Result = dict[str, float]


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000.0


def emit(figure: str, values: list[float], unit: str, backend: str) -> None:
    print(json.dumps({"bench": BENCH, "backend": backend, "figure": figure, "unit": unit,
                      "median": round(statistics.median(values), 4),
                      "min": round(min(values), 4), "max": round(max(values), 4),
                      "runs": len(values), "cpu_count": os.cpu_count(),
                      "loadavg_1m": round(os.getloadavg()[0], 2)}), flush=True)


class Args:
    url: str
    runs: int
    count: int
    size: int
    window: int
    rate: int
    seconds: float
    slices: int


def body(size: int) -> bytes:
    return b"x" * size


def stamped(size: int) -> bytes:
    return (b"%20.9f" % time.perf_counter()).ljust(size, b"x")


def stamp_of(data: bytes) -> float:
    return float(data[:20])


# -- TideMQ: AsyncClient --------------------------------------------------------------------


def _tidemq_url(url: str, prefix: str) -> str:
    return url + ("&" if "?" in url else "?") + f"prefix={prefix}"


async def tidemq_async(a: Args, url: str) -> Result:
    out: Result = {}
    tag = secrets.token_hex(3)
    async with tidemq.AsyncClient(url) as mq:
        t = f"bench.pub.{tag}"
        await mq.create_topic(t, durability="interval")
        data = body(a.size)
        await mq.publish(t, data)  # the topic's record is read once, as in any real use
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, a.count, a.window):
            await asyncio.gather(*[mq.publish(t, data) for _ in range(min(a.window,
                                                                            a.count - i))])
        out["publish"] = a.count / (time.perf_counter() - t0)
        out["publish_cpu"] = (time.process_time() - c0) / a.count * 1e6

        sub = await mq.subscribe(t, "g", prefetch=a.window)
        got = 0
        c0, t0 = time.process_time(), time.perf_counter()
        while got < a.count + 1:
            batch = await sub.receive(a.window, 2.0)
            if not batch:
                raise RuntimeError(f"tidemq async: only {got} of {a.count} delivered")
            await sub.ack(batch)
            await sub.flush()
            got += len(batch)
        out["consume_ack"] = got / (time.perf_counter() - t0)
        out["consume_ack_cpu"] = (time.process_time() - c0) / got * 1e6
        await sub.close()
        await mq.delete_topic(t)
    return out


async def paced(a: Args, publish: Callable[[], Awaitable[Any]], total: int) -> None:
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i / a.rate - time.perf_counter()
        if delay > 0.0002:
            await asyncio.sleep(delay)
        await publish()


def paced_blocking(a: Args, publish: Callable[[], Any], total: int) -> None:
    """:func:`paced` for blocking code."""
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i / a.rate - time.perf_counter()
        if delay > 0.0002:
            time.sleep(delay)
        publish()


# -- TideMQ: blocking Client ----------------------------------------------------------------


def tidemq_blocking(a: Args, url: str) -> Result:
    out: Result = {}
    tag = secrets.token_hex(3)
    with tidemq.Client(url) as mq:
        t = f"bench.bpub.{tag}"
        mq.create_topic(t, durability="interval")
        data = body(a.size)
        mq.publish(t, data)  # the topic's record is read once, as in any real use
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, a.count, a.window):
            futs = [mq.publish(t, data, wait=False) for _ in range(min(a.window, a.count - i))]
            mq.flush()
            for f in futs:
                f.result()
        out["publish"] = a.count / (time.perf_counter() - t0)
        out["publish_cpu"] = (time.process_time() - c0) / a.count * 1e6

        sub = mq.subscribe(t, "g", prefetch=a.window)
        got = 0
        c0, t0 = time.process_time(), time.perf_counter()
        while got < a.count + 1:
            batch = sub.receive(a.window, 2.0)
            if not batch:
                raise RuntimeError(f"tidemq blocking: only {got} of {a.count} delivered")
            sub.ack(batch)
            sub.flush()
            got += len(batch)
        out["consume_ack"] = got / (time.perf_counter() - t0)
        out["consume_ack_cpu"] = (time.process_time() - c0) / got * 1e6
        sub.close()
        mq.delete_topic(t)
    return out


# -- nats-py directly -----------------------------------------------------------------------


async def nats_direct(a: Args, url: str) -> Result:
    import nats
    from nats.js.api import StorageType

    out: Result = {}
    parts = urlsplit(url)
    nc = await nats.connect(f"nats://{parts.netloc.split(',')[0]}")
    js = nc.jetstream()
    tag = secrets.token_hex(4)
    stream, subject = f"BENCHNATS_{tag}", f"benchnats.{tag}"
    await js.add_stream(name=stream, subjects=[subject + ".>"], storage=StorageType.FILE,
                        num_replicas=1)
    try:
        data = body(a.size)
        # Plain publishes (no Nats-Msg-Id): what nats-py does by default.
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, a.count, a.window):
            await asyncio.gather(*[js.publish(subject + ".q", data)
                                   for _ in range(min(a.window, a.count - i))])
        out["publish_no_msg_id"] = a.count / (time.perf_counter() - t0)
        out["publish_cpu_no_msg_id"] = (time.process_time() - c0) / a.count * 1e6
        await js.purge_stream(stream)

        # The same work as TideMQ's publish: each message carries a Nats-Msg-Id, so a retry
        # after a lost answer is stored once (TideMQ's idempotent producer, on by default).
        seq = iter(range(1, 1 << 62))
        pid = secrets.token_hex(8)
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, a.count, a.window):
            await asyncio.gather(*[js.publish(subject + ".p", data,
                                              headers={"Nats-Msg-Id": f"{pid}:{next(seq)}"})
                                   for _ in range(min(a.window, a.count - i))])
        out["publish"] = a.count / (time.perf_counter() - t0)
        out["publish_cpu"] = (time.process_time() - c0) / a.count * 1e6

        sub = await js.pull_subscribe(subject + ".p", durable="g", stream=stream)
        got = 0
        c0, t0 = time.process_time(), time.perf_counter()
        while got < a.count:
            msgs = await sub.fetch(a.window, timeout=2)
            await asyncio.gather(*[m.ack_sync() for m in msgs])
            got += len(msgs)
        out["consume_ack"] = got / (time.perf_counter() - t0)
        out["consume_ack_cpu"] = (time.process_time() - c0) / got * 1e6
        await sub.unsubscribe()
    finally:
        await js.delete_stream(stream)
        await nc.close()
    return out


# -- aio-pika directly (RabbitMQ) -----------------------------------------------------------


async def amqp_direct(a: Args, url: str) -> Result:
    import aio_pika

    out: Result = {}
    conn = await aio_pika.connect_robust(url)
    tag = secrets.token_hex(4)
    try:
        ch = await conn.channel(publisher_confirms=True)
        await ch.set_qos(prefetch_count=a.window)
        q = await ch.declare_queue(f"bench.pub.{tag}", durable=True,
                                   arguments={"x-queue-type": "quorum"})
        data = body(a.size)
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, a.count, a.window):
            await asyncio.gather(*[
                ch.default_exchange.publish(
                    aio_pika.Message(data, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=q.name)
                for _ in range(min(a.window, a.count - i))])
        out["publish"] = a.count / (time.perf_counter() - t0)
        out["publish_cpu"] = (time.process_time() - c0) / a.count * 1e6

        got = 0
        c0, t0 = time.process_time(), time.perf_counter()
        async with q.iterator() as it:
            async for m in it:
                await m.ack()
                got += 1
                if got >= a.count:
                    break
        out["consume_ack"] = got / (time.perf_counter() - t0)
        out["consume_ack_cpu"] = (time.process_time() - c0) / got * 1e6
        await q.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()
    return out


# -- the engine's client driven from threads -----------------------------------------------
#
# What ``tidemq.Client`` is compared with: the engine's own Python client used from blocking
# code. nats-py and aio-pika are asyncio-only, so blocking code runs them on an event loop
# thread of their own and hands each call over with ``asyncio.run_coroutine_threadsafe`` —
# as their users do. The same work as ``tidemq_blocking``, in the cheapest such shape: one
# hand-over per window (``gather`` inside), a consumer thread fed by a push callback through a
# ``queue.Queue``, acks handed over without waiting (confirmed at the end).


class _EngineOps:
    """One engine's async operations for :func:`engine_threads` (run on its loop thread)."""

    async def open(self, a: Args, url: str) -> None: ...
    async def publish_many(self, n: int, data: bytes) -> None: ...
    async def consume_batch(self, k: int) -> int: ...  # received, acked, acks confirmed
    async def subscribe_latency(self, put: Callable[[Any], None]) -> None: ...
    async def publish_stamped(self, size: int) -> None: ...
    def ack(self, m: Any) -> Awaitable[Any]: ...  # the e2e consumer's confirmed ack
    def stamp(self, m: Any) -> float: ...
    async def close(self) -> None: ...


class _NatsOps(_EngineOps):
    async def open(self, a: Args, url: str) -> None:
        import nats
        from nats.js.api import StorageType

        self.nc = await nats.connect(f"nats://{urlsplit(url).netloc.split(',')[0]}")
        self.js = self.nc.jetstream()
        tag = secrets.token_hex(4)
        self.stream, self.subject = f"BENCHNATST_{tag}", f"benchnatst.{tag}"
        await self.js.add_stream(name=self.stream, subjects=[self.subject + ".>"],
                                 storage=StorageType.FILE, num_replicas=1)
        self.pid = secrets.token_hex(8)
        self.seq = iter(range(1, 1 << 62))
        self.window = a.window

    def _hdr(self) -> dict[str, str]:
        return {"Nats-Msg-Id": f"{self.pid}:{next(self.seq)}"}

    async def publish_many(self, n: int, data: bytes) -> None:
        await asyncio.gather(*[self.js.publish(self.subject + ".p", data, headers=self._hdr())
                               for _ in range(n)])

    async def consume_batch(self, k: int) -> int:
        if not hasattr(self, "pull"):
            self.pull = await self.js.pull_subscribe(self.subject + ".p", durable="g",
                                                     stream=self.stream)
        msgs = await self.pull.fetch(k, timeout=2)
        await asyncio.gather(*[m.ack_sync() for m in msgs])
        return len(msgs)

    async def subscribe_latency(self, put: Callable[[Any], None]) -> None:
        async def on_msg(m: Any) -> None:
            put(m)

        await self.js.subscribe(self.subject + ".l", durable="lat", cb=on_msg,
                                manual_ack=True, stream=self.stream)

    async def publish_stamped(self, size: int) -> None:
        await self.js.publish(self.subject + ".l", stamped(size), headers=self._hdr())

    def ack(self, m: Any) -> Awaitable[Any]:
        return m.ack_sync()  # type: ignore[no-any-return]

    def stamp(self, m: Any) -> float:
        return stamp_of(m.data)

    async def close(self) -> None:
        try:
            await self.js.delete_stream(self.stream)
        finally:
            await self.nc.close()


class _RabbitOps(_EngineOps):
    async def open(self, a: Args, url: str) -> None:
        import aio_pika

        self.aio_pika = aio_pika
        self.conn = await aio_pika.connect_robust(url)
        self.ch = await self.conn.channel(publisher_confirms=True)
        await self.ch.set_qos(prefetch_count=a.window)
        tag = secrets.token_hex(4)
        args = {"x-queue-type": "quorum"}
        self.q = await self.ch.declare_queue(f"bench.tpub.{tag}", durable=True, arguments=args)
        self.lq = await self.ch.declare_queue(f"bench.tlat.{tag}", durable=True, arguments=args)
        self.got: asyncio.Queue[Any] | None = None

    def _message(self, data: bytes) -> Any:
        return self.aio_pika.Message(data, delivery_mode=self.aio_pika.DeliveryMode.PERSISTENT)

    async def publish_many(self, n: int, data: bytes) -> None:
        ex = self.ch.default_exchange
        await asyncio.gather(*[ex.publish(self._message(data), routing_key=self.q.name)
                               for _ in range(n)])

    async def consume_batch(self, k: int) -> int:
        # The consumer's deliveries wait in an asyncio queue; a batch is up to k of them (at
        # least one, waiting up to 2 s), each acked as aio-pika acks (no confirmation).
        if self.got is None:
            self.got = asyncio.Queue()
            await self.q.consume(self.got.put)
        ms = [await asyncio.wait_for(self.got.get(), 2)]
        while len(ms) < k and not self.got.empty():
            ms.append(self.got.get_nowait())
        for m in ms:
            await m.ack()
        return len(ms)

    async def subscribe_latency(self, put: Callable[[Any], None]) -> None:
        async def on_msg(m: Any) -> None:
            put(m)

        await self.lq.consume(on_msg)

    async def publish_stamped(self, size: int) -> None:
        await self.ch.default_exchange.publish(self._message(stamped(size)),
                                               routing_key=self.lq.name)

    def ack(self, m: Any) -> Awaitable[Any]:
        return m.ack()  # type: ignore[no-any-return]

    def stamp(self, m: Any) -> float:
        return stamp_of(m.body)

    async def close(self) -> None:
        try:
            for q in (self.q, self.lq):
                await q.delete(if_unused=False, if_empty=False)
        finally:
            await self.conn.close()


class _LoopThread:
    """An event loop on a thread of its own, as blocking code runs an asyncio-only client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, aw: Awaitable[T]) -> T:
        """Hand ``aw`` over to the loop and wait for its result."""
        return self.submit(aw).result(60)

    def submit(self, aw: Awaitable[T]) -> concurrent.futures.Future[T]:
        """Hand ``aw`` over to the loop without waiting."""
        async def wrap() -> T:
            return await aw

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _engine_ops(url: str) -> _EngineOps:
    return _NatsOps() if urlsplit(url).scheme == "nats" else _RabbitOps()


def engine_threads(a: Args, url: str) -> Result:
    """The engine's client from blocking code (see above): the same programs as
    :func:`tidemq_blocking`."""
    ops = _engine_ops(url)
    lt = _LoopThread()
    out: Result = {}
    try:
        lt.run(ops.open(a, url))
        data = body(a.size)
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(0, a.count, a.window):
            lt.run(ops.publish_many(min(a.window, a.count - i), data))
        out["publish"] = a.count / (time.perf_counter() - t0)
        out["publish_cpu"] = (time.process_time() - c0) / a.count * 1e6

        got = 0
        c0, t0 = time.process_time(), time.perf_counter()
        while got < a.count:
            got += lt.run(ops.consume_batch(a.window))
        out["consume_ack"] = got / (time.perf_counter() - t0)
        out["consume_ack_cpu"] = (time.process_time() - c0) / got * 1e6
    finally:
        try:
            lt.run(ops.close())
        finally:
            lt.stop()
    return out


# -- end-to-end latency, in slices ----------------------------------------------------------
#
# Each client's e2e phase is an object that stays open through a run: ``slice(n)`` publishes n
# stamped messages at --rate, one awaited at a time, while its consumer receives and acks
# them, and returns their latencies once all n came and their acks were done (so nothing
# of one client's slice runs into the next one's). The four clients take turns slice by slice
# (``--slices`` per run, each slice starting with the next client in turn): a load that comes
# and goes on this shared machine within a run then falls on each alike.


class _Latency:
    def __init__(self, a: Args, url: str) -> None:
        self.a, self.url = a, url
        self.lat: list[float] = []
        self.want = 0

    def _clock(self, ms: list[Any], stamp: Callable[[Any], float]) -> bool:
        """The latencies of messages just taken; True once the slice has all of them."""
        now = time.perf_counter()
        self.lat.extend(now - stamp(m) for m in ms)
        return len(self.lat) >= self.want

    async def open(self) -> None: ...
    async def slice(self, n: int) -> list[float]: ...
    async def close(self) -> None: ...


class _AsyncLatency(_Latency):
    """A client on the benchmark's event loop: publishes awaited there, a consumer task or
    callback there."""

    async def slice(self, n: int) -> list[float]:
        self.lat, self.want, self.done = [], n, asyncio.Event()
        await paced(self.a, self.publish, n)
        await asyncio.wait_for(self.done.wait(), 30)
        await self.settle()
        return self.lat

    def publish(self) -> Awaitable[Any]: ...
    async def settle(self) -> None: ...  # every ack of the slice confirmed


class _TidemqAsyncLatency(_AsyncLatency):
    """``AsyncClient``: a task receiving (up to 1,000) and acking; ``flush`` confirms."""

    async def open(self) -> None:
        self.mq = await tidemq.AsyncClient(self.url).connect()
        self.topic = f"bench.lat.{secrets.token_hex(3)}"
        await self.mq.create_topic(self.topic, durability="interval")
        self.sub = await self.mq.subscribe(self.topic, "g", prefetch=1000)
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        while True:
            batch = await self.sub.receive(1000, 1.0)
            if batch:
                complete = self._clock(batch, lambda m: stamp_of(m.body))
                await self.sub.ack(batch)
                if complete:
                    self.done.set()

    def publish(self) -> Awaitable[Any]:
        return self.mq.publish(self.topic, stamped(self.a.size))

    async def settle(self) -> None:
        await self.sub.flush()  # raises a failed ack

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.sub.close()
        await self.mq.delete_topic(self.topic)
        await self.mq.close()


class _EngineAsyncLatency(_AsyncLatency):
    """The engine's client: a push callback (nats-py's / aio-pika's lowest-latency way) that
    takes the time and starts the confirmed ack (``ack_sync`` / ``ack``) in a task."""

    async def open(self) -> None:
        self.ops = _engine_ops(self.url)
        self.acks: list[asyncio.Future[Any]] = []
        await self.ops.open(self.a, self.url)
        await self.ops.subscribe_latency(self._on_message)

    def _on_message(self, m: Any) -> None:
        complete = self._clock([m], self.ops.stamp)
        self.acks.append(asyncio.ensure_future(self.ops.ack(m)))
        if complete:
            self.done.set()

    def publish(self) -> Awaitable[Any]:
        return self.ops.publish_stamped(self.a.size)

    async def settle(self) -> None:
        acks, self.acks = self.acks, []
        await asyncio.gather(*acks)

    async def close(self) -> None:
        await self.ops.close()


class _ThreadLatency(_Latency):
    """Blocking code: the publishing thread (the slice runs in a worker thread of the
    benchmark's loop, which waits meanwhile) and a consumer thread."""

    async def open(self) -> None:
        await asyncio.to_thread(self._open)
        self.stopping = False
        self.consumer = threading.Thread(target=self._consume_until_stopped)
        self.consumer.start()

    async def slice(self, n: int) -> list[float]:
        self.lat, self.want, self.done = [], n, threading.Event()
        await asyncio.to_thread(self._slice, n)
        return self.lat

    def _slice(self, n: int) -> None:
        paced_blocking(self.a, self.publish, n)
        if not self.done.wait(30):
            raise RuntimeError(f"{type(self).__name__}: only {len(self.lat)} of {n} came")
        self.settle()

    def _consume_until_stopped(self) -> None:
        while not self.stopping:
            self.take()

    async def close(self) -> None:
        self.stopping = True
        await asyncio.to_thread(self.consumer.join)
        await asyncio.to_thread(self._close)

    def _open(self) -> None: ...
    def take(self) -> None: ...  # the consumer's step: wait up to 1 s for messages
    def publish(self) -> None: ...
    def settle(self) -> None: ...
    def _close(self) -> None: ...


class _TidemqBlockingLatency(_ThreadLatency):
    """``Client``: the consumer thread receives (up to 1,000) and acks; ``flush`` confirms."""

    def _open(self) -> None:
        self.mq = tidemq.Client(self.url)
        self.topic = f"bench.blat.{secrets.token_hex(3)}"
        self.mq.create_topic(self.topic, durability="interval")
        self.sub = self.mq.subscribe(self.topic, "g", prefetch=1000)

    def take(self) -> None:
        batch = self.sub.receive(1000, 1.0)
        if batch:
            complete = self._clock(batch, lambda m: stamp_of(m.body))
            self.sub.ack(batch)
            if complete:
                self.done.set()

    def publish(self) -> None:
        self.mq.publish(self.topic, stamped(self.a.size))

    def settle(self) -> None:
        self.sub.flush()  # raises a failed ack

    def _close(self) -> None:
        self.sub.close()
        self.mq.delete_topic(self.topic)
        self.mq.close()


class _EngineThreadsLatency(_ThreadLatency):
    """The engine's client from threads (see :func:`engine_threads`): its push callback puts
    each message on a ``queue.Queue`` the consumer thread takes from, and the consumer hands
    the confirmed ack over to the loop without waiting for it."""

    def _open(self) -> None:
        self.ops = _engine_ops(self.url)
        self.lt = _LoopThread()
        self.arrived: queue.Queue[Any] = queue.Queue()
        self.acks: list[concurrent.futures.Future[Any]] = []
        self.lt.run(self.ops.open(self.a, self.url))
        self.lt.run(self.ops.subscribe_latency(self.arrived.put))

    def take(self) -> None:
        try:
            m = self.arrived.get(timeout=1.0)
        except queue.Empty:
            return
        complete = self._clock([m], self.ops.stamp)
        self.acks.append(self.lt.submit(self.ops.ack(m)))
        if complete:
            self.done.set()

    def publish(self) -> None:
        self.lt.run(self.ops.publish_stamped(self.a.size))

    def settle(self) -> None:
        acks, self.acks = self.acks, []
        for f in acks:
            f.result(30)  # raises a failed ack

    def _close(self) -> None:
        try:
            self.lt.run(self.ops.close())
        finally:
            self.lt.stop()


async def e2e_run(a: Args, url: str, engine_url: str, names: list[str],
                  engine: str) -> dict[str, Result]:
    """One run's e2e figures of the four clients, taking turns slice by slice."""
    kinds: dict[str, Callable[[Args, str], _Latency]] = {
        engine: lambda a, u: _EngineAsyncLatency(a, engine_url),
        f"{engine}_threads": lambda a, u: _EngineThreadsLatency(a, engine_url),
        "tidemq_async": _TidemqAsyncLatency, "tidemq_blocking": _TidemqBlockingLatency}
    clients = {name: kinds[name](a, url) for name in names}
    lat: dict[str, list[float]] = {name: [] for name in names}
    try:
        for c in clients.values():
            await c.open()
        total = int(a.rate * a.seconds)
        for s in range(a.slices):
            n = total // a.slices + (s < total % a.slices)
            k = s % len(names)
            for name in names[k:] + names[:k]:
                lat[name] += await clients[name].slice(n)
    finally:
        for c in clients.values():
            await c.close()
    return {name: {"e2e_p50": pct(v, 0.5), "e2e_p99": pct(v, 0.99)} for name, v in lat.items()}


# -- main -----------------------------------------------------------------------------------


async def _delete_prefix(url: str, prefix: str) -> None:
    """Delete what the backend keeps under ``prefix`` once the topics are gone."""
    if urlsplit(url).scheme != "nats":  # amqp://: every topic (dead-letter topics too), the
        import aio_pika  # metadata stream and the wait exchange

        async with tidemq.AsyncClient(_tidemq_url(url, prefix)) as mq:
            for topic in await mq.list_topics():
                await mq.delete_topic(topic.name)

        conn = await aio_pika.connect(url)
        try:
            ch = await conn.channel()
            await ch.queue_delete(f"{prefix}.meta")
            await ch.exchange_delete(f"{prefix}.wait")
        finally:
            await conn.close()
        return
    import nats

    nc = await nats.connect(f"nats://{urlsplit(url).netloc.split(',')[0]}")
    try:
        resp = await nc.request("$JS.API.STREAM.NAMES",
                                json.dumps({"subject": f"{prefix}.>"}).encode(), timeout=5)
        for name in json.loads(resp.data).get("streams") or []:
            await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=5)
    finally:
        await nc.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="nats://127.0.0.1:4222",
                    help="nats://HOST:PORT or amqp://USER:PASSWORD@HOST")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=2000, help="latency: msgs/s")
    ap.add_argument("--seconds", type=float, default=2.0,
                    help="latency: how long, per client and run")
    ap.add_argument("--slices", type=int, default=10,
                    help="latency: the turns each client takes per run")
    a = ap.parse_args(namespace=Args())
    scheme = urlsplit(a.url).scheme
    if scheme not in ("nats", "amqp", "amqps"):
        ap.error("--url must be nats://... or amqp://...")
    if not 1 <= a.slices <= a.rate * a.seconds:
        ap.error("--slices must be from 1 to --rate x --seconds")
    engine = "nats_py" if scheme == "nats" else "aio_pika"
    threads = f"{engine}_threads"
    direct = nats_direct if scheme == "nats" else amqp_direct
    prefix = f"bo{secrets.token_hex(4)}"
    url = _tidemq_url(a.url, prefix)
    results: dict[str, list[Result]] = {engine: [], threads: [], "tidemq_async": [],
                                        "tidemq_blocking": []}
    try:
        names = list(results)
        for run in range(a.runs):
            # The clients take turns going first (run 1: engine, engine from threads, async,
            # blocking; run 2: engine from threads, async, blocking, engine ...): a slow drift
            # of this shared machine's speed, or what one client leaves behind for the next,
            # then falls on each alike.
            k = run % len(names)
            order = names[k:] + names[:k]
            for name in order:
                log(f"run {run + 1}/{a.runs}: {name} ...")
                if name == engine:
                    r = asyncio.run(direct(a, a.url))
                elif name == threads:
                    r = engine_threads(a, a.url)
                elif name == "tidemq_async":
                    r = asyncio.run(tidemq_async(a, url))
                else:
                    r = tidemq_blocking(a, url)
                results[name].append(r)
            log(f"run {run + 1}/{a.runs}: e2e, {a.slices} slices each ...")
            for name, r in asyncio.run(e2e_run(a, url, a.url, order, engine)).items():
                results[name][-1].update(r)
            for name in order:
                log(f"    {name}", {k: round(v, 2) for k, v in results[name][-1].items()})
    finally:
        asyncio.run(_delete_prefix(a.url, prefix))
    backend = f"{scheme}://"
    units = {"publish": "msgs/s", "consume_ack": "msgs/s", "e2e_p50": "ms", "e2e_p99": "ms",
             "publish_cpu": "µs/msg", "consume_ack_cpu": "µs/msg",
             "publish_no_msg_id": "msgs/s", "publish_cpu_no_msg_id": "µs/msg"}
    for metric, unit in units.items():
        for name, runs in results.items():
            if all(metric in r for r in runs):
                emit(f"{metric}.{name}", [r[metric] for r in runs], unit, backend)
    # (ours vs the engine's, per run: positive = TideMQ slower / costlier). Each face against
    # the engine's client used the same way: AsyncClient against the engine's client on its
    # loop, Client against the engine's client driven from threads; and Client against the
    # engine's async client too (``_vs_async``: the price of blocking calls from threads).
    for metric, base_metric in (("publish", "publish"), ("consume_ack", "consume_ack"),
                                ("e2e_p50", "e2e_p50"), ("e2e_p99", "e2e_p99"),
                                ("publish_cpu", "publish_cpu"),
                                ("consume_ack_cpu", "consume_ack_cpu"),
                                ("publish", "publish_no_msg_id")):
        for face, base_name, suffix in (
                ("tidemq_async", engine, ""), ("tidemq_blocking", threads, ""),
                ("tidemq_blocking", engine, "_vs_async")):
            if not all(base_metric in r for r in results[base_name]):
                continue
            base = [r[base_metric] for r in results[base_name]]
            ours = [r[metric] for r in results[face]]
            name = f"overhead_{metric}" + ("" if metric == base_metric
                                           else "_vs_" + base_metric) + suffix
            if units[metric] == "msgs/s":  # higher is better
                over = [(b - o) / b * 100 for o, b in zip(ours, base, strict=True)]
            else:
                over = [(o - b) / b * 100 for o, b in zip(ours, base, strict=True)]
            emit(f"{name}.{face}", over, "%", backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
