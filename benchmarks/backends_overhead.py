#!/usr/bin/env python3
"""The overhead of TideMQ's client layer on another engine (issue 13, "Figures"): the same
work through ``tidemq.AsyncClient`` / ``tidemq.Client`` on ``nats://`` (or ``amqp://``) and
through the engine's own Python client (nats-py / aio-pika) directly. Target: ≤ 15 %.

Same durability on both sides: JetStream file storage, one partition (one stream), R1, every
publish confirmed by the server (TideMQ: a publish's id; nats-py: ``js.publish`` awaited, the
PubAck), every ack confirmed (TideMQ: ``sub.flush()``, which waits for the server's answer to
each ack; nats-py: ``msg.ack_sync()``). RabbitMQ: a durable quorum queue, publisher confirms,
acks (aio-pika).

Figures, each the median (min–max) of ``--runs`` runs, the three clients interleaved per run
(each run starts with the next client in turn, so none is always first):

- ``publish``: ``--count`` messages of ``--size`` bytes, ``--window`` in flight (async:
  ``asyncio.gather`` of that many publishes; blocking: ``publish(wait=False)`` then ``flush``
  every window), msgs/s.
- ``consume_ack``: the same number, already stored, received ``--window`` at a time and acked,
  each batch's acks confirmed before the next receive, msgs/s.
- ``e2e_p50`` / ``e2e_p99``: publish → delivery at ``--rate`` msgs/s for ``--seconds``, one
  publish awaited at a time, a consumer receiving and acking concurrently, ms. The clock
  stops when the consumer's code has the message (TideMQ: ``receive`` returned; nats-py /
  aio-pika: the callback runs). Every ack is confirmed, and on both sides the consumer does
  not wait for that before taking the next message: TideMQ's consumer is its pull-based
  member (``receive``, then ``ack``, which returns once the ack is sent; ``sub.flush()`` at
  the end waits for every confirmation, as over ``tidemq://``); nats-py's is a push consumer
  whose callback sends ``ack_sync()`` in a task of its own (the same confirmed ack), all of
  them awaited at the end; ``e2e_*_plain_ack`` the same with fire-and-forget acks (``ack()``).
  aio-pika: a consumer callback that awaits ``ack()`` (aiormq runs each delivery's callback
  in a task of its own, so that wait never holds up the next message either). (Until
  TideMQ's ``ack`` on these backends stopped waiting for the confirmation, the nats-py
  callback awaited ``ack_sync()`` itself, to match.)
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
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tidemq  # noqa: E402

BENCH = "backends_overhead"
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

        t = f"bench.lat.{tag}"
        await mq.create_topic(t, durability="interval")
        sub = await mq.subscribe(t, "g", prefetch=1000)
        total = int(a.rate * a.seconds)
        lat: list[float] = []

        async def consume() -> None:
            while len(lat) < total:
                batch = await sub.receive(1000, 1.0)
                now = time.perf_counter()
                lat.extend(now - stamp_of(m.body) for m in batch)
                if batch:
                    await sub.ack(batch)

        task = asyncio.create_task(consume())
        await paced(a, lambda: mq.publish(t, stamped(a.size)), total)
        await asyncio.wait_for(task, 30)
        await sub.flush()  # every ack confirmed (raises a failure)
        await sub.close()
        await mq.delete_topic(t)
    out["e2e_p50"], out["e2e_p99"] = pct(lat, 0.5), pct(lat, 0.99)
    return out


async def paced(a: Args, publish: Callable[[], Awaitable[Any]], total: int) -> None:
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i / a.rate - time.perf_counter()
        if delay > 0.0002:
            await asyncio.sleep(delay)
        await publish()


# -- TideMQ: blocking Client ----------------------------------------------------------------


def tidemq_blocking(a: Args, url: str) -> Result:
    import threading

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

        t = f"bench.blat.{tag}"
        mq.create_topic(t, durability="interval")
        sub = mq.subscribe(t, "g", prefetch=1000)
        total = int(a.rate * a.seconds)
        lat: list[float] = []

        def consume() -> None:
            deadline = time.monotonic() + a.seconds + 30
            while len(lat) < total and time.monotonic() < deadline:
                batch = sub.receive(1000, 0.5)
                now = time.perf_counter()
                lat.extend(now - stamp_of(m.body) for m in batch)
                if batch:
                    sub.ack(batch)

        th = threading.Thread(target=consume)
        th.start()
        t0 = time.perf_counter()
        for i in range(total):
            delay = t0 + i / a.rate - time.perf_counter()
            if delay > 0.0002:
                time.sleep(delay)
            mq.publish(t, stamped(a.size))
        th.join()
        sub.flush()  # every ack confirmed (raises a failure)
        sub.close()
        mq.delete_topic(t)
    out["e2e_p50"], out["e2e_p99"] = pct(lat, 0.5), pct(lat, 0.99)
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

        # Latency: a push consumer with a callback (nats-py's lowest-latency way). Acks
        # confirmed (ack_sync) as TideMQ's are, without holding up the next message (a task
        # each, awaited at the end, as TideMQ's sub.flush()); and, for reference, plain acks.
        total = int(a.rate * a.seconds)
        for name, confirm in (("", True), ("_plain_ack", False)):
            lat: list[float] = []
            done = asyncio.Event()
            confirms: list[asyncio.Future[Any]] = []

            async def on_msg(m: Any, lat: list[float] = lat, done: asyncio.Event = done,
                             confirm: bool = confirm,
                             confirms: list[asyncio.Future[Any]] = confirms) -> None:
                lat.append(time.perf_counter() - stamp_of(m.data))
                if confirm:
                    confirms.append(asyncio.ensure_future(m.ack_sync()))
                else:
                    await m.ack()
                if len(lat) >= total:
                    done.set()

            lsub = await js.subscribe(subject + f".l{name}", durable=f"lat{name}", cb=on_msg,
                                      manual_ack=True, stream=stream)
            await paced(a, lambda n=name: js.publish(
                subject + f".l{n}", stamped(a.size),
                headers={"Nats-Msg-Id": f"{pid}:{next(seq)}"}), total)
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.gather(*confirms)  # every ack confirmed (raises a failure)
            await lsub.unsubscribe()
            out[f"e2e_p50{name}"], out[f"e2e_p99{name}"] = pct(lat, 0.5), pct(lat, 0.99)
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

        lq = await ch.declare_queue(f"bench.lat.{tag}", durable=True,
                                    arguments={"x-queue-type": "quorum"})
        total = int(a.rate * a.seconds)
        lat: list[float] = []
        done = asyncio.Event()

        async def on_msg(m: Any) -> None:
            lat.append(time.perf_counter() - stamp_of(m.body))
            await m.ack()
            if len(lat) >= total:
                done.set()

        await lq.consume(on_msg)
        await paced(a, lambda: ch.default_exchange.publish(
            aio_pika.Message(stamped(a.size), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=lq.name), total)
        await asyncio.wait_for(done.wait(), 30)
        await lq.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()
    out["e2e_p50"], out["e2e_p99"] = pct(lat, 0.5), pct(lat, 0.99)
    return out


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
    ap.add_argument("--seconds", type=float, default=2.0, help="latency: how long")
    a = ap.parse_args(namespace=Args())
    scheme = urlsplit(a.url).scheme
    if scheme not in ("nats", "amqp", "amqps"):
        ap.error("--url must be nats://... or amqp://...")
    engine = "nats_py" if scheme == "nats" else "aio_pika"
    direct = nats_direct if scheme == "nats" else amqp_direct
    prefix = f"bo{secrets.token_hex(4)}"
    url = _tidemq_url(a.url, prefix)
    results: dict[str, list[Result]] = {engine: [], "tidemq_async": [], "tidemq_blocking": []}
    try:
        names = list(results)
        for run in range(a.runs):
            # The clients take turns going first (run 1: engine, async, blocking; run 2:
            # async, blocking, engine ...): a slow drift of this shared machine's speed, or
            # what one client leaves behind for the next, then falls on each alike.
            k = run % len(names)
            for name in names[k:] + names[:k]:
                log(f"run {run + 1}/{a.runs}: {name} ...")
                if name == engine:
                    r = asyncio.run(direct(a, a.url))
                elif name == "tidemq_async":
                    r = asyncio.run(tidemq_async(a, url))
                else:
                    r = tidemq_blocking(a, url)
                log("   ", {k: round(v, 2) for k, v in r.items()})
                results[name].append(r)
    finally:
        asyncio.run(_delete_prefix(a.url, prefix))
    backend = f"{scheme}://"
    units = {"publish": "msgs/s", "consume_ack": "msgs/s", "e2e_p50": "ms", "e2e_p99": "ms",
             "publish_cpu": "µs/msg", "consume_ack_cpu": "µs/msg",
             "publish_no_msg_id": "msgs/s", "publish_cpu_no_msg_id": "µs/msg",
             "e2e_p50_plain_ack": "ms", "e2e_p99_plain_ack": "ms"}
    for metric, unit in units.items():
        for name, runs in results.items():
            if all(metric in r for r in runs):
                emit(f"{metric}.{name}", [r[metric] for r in runs], unit, backend)
    # (ours vs the engine's, per run: positive = TideMQ slower / costlier)
    for metric, base_metric in (("publish", "publish"), ("consume_ack", "consume_ack"),
                                ("e2e_p50", "e2e_p50"), ("e2e_p99", "e2e_p99"),
                                ("publish_cpu", "publish_cpu"),
                                ("consume_ack_cpu", "consume_ack_cpu"),
                                ("publish", "publish_no_msg_id"),
                                ("e2e_p50", "e2e_p50_plain_ack")):
        if not all(base_metric in r for r in results[engine]):
            continue
        base = [r[base_metric] for r in results[engine]]
        suffix = "" if metric == base_metric else "_vs_" + base_metric
        for face in ("tidemq_async", "tidemq_blocking"):
            ours = [r[metric] for r in results[face]]
            if units[metric] == "msgs/s":  # higher is better
                over = [(b - o) / b * 100 for o, b in zip(ours, base, strict=True)]
            else:
                over = [(o - b) / b * 100 for o, b in zip(ours, base, strict=True)]
            emit(f"overhead_{metric}{suffix}.{face}", over, "%", backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
