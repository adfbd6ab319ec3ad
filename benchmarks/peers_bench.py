"""The same figures as ``server_bench.py`` on the peers, through their Python clients.

Run: .venv/bin/python benchmarks/peers_bench.py [--quick] [--only rabbitmq nats redis]

Services on this machine: RabbitMQ 127.0.0.1:5672 (guest/guest), NATS (JetStream) 4222,
Redis 6379. Each peer with durable settings as far as the client controls them:

- RabbitMQ: a durable *quorum* queue (Raft log, fsynced), persistent messages, publisher
  confirms pipelined (up to 5,000 unconfirmed), through pika's SelectConnection.
- NATS JetStream: a stream with *file* storage, ``publish_async`` (up to 4,000 pending acks);
  consuming through a pull consumer with explicit acks.
- Redis Streams: XADD pipelined 1,000 per round trip; XREADGROUP + XACK. Durability is the
  server's own configuration (appendonly/appendfsync), printed, not changed.

Names are unique per run (``bench-<pid>-<time>``) and removed afterwards. Every figure stops at
its message count or after ``--max-seconds``, whichever comes first. A peer that is not reachable
is reported and skipped. Ends with one JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

BODY = b"x" * 100
RUN = f"bench-{os.getpid()}-{int(time.time())}"
Result = list[dict[str, Any]]


def _m(metric: str, value: float, unit: str) -> dict[str, Any]:
    return {"metric": metric, "value": round(value, 3) if value < 100 else round(value),
            "unit": unit}


def _pct(lat: list[float], p: float) -> float:
    lat = sorted(lat)
    return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000


# --- RabbitMQ ------------------------------------------------------------------------------


def rabbit_publish(n: int, max_s: float, window: int = 5000) -> Result:
    """Quorum queue, persistent messages, confirms pipelined (``window`` unconfirmed)."""
    import pika

    queue = f"{RUN}-q"
    state = {"sent": 0, "acked": 0, "t0": 0.0, "t1": 0.0}
    params = pika.ConnectionParameters("127.0.0.1", 5672,
                                       credentials=pika.PlainCredentials("guest", "guest"))
    props = pika.BasicProperties(delivery_mode=2)

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        ch.confirm_delivery(lambda frame: on_ack(ch, frame))
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"},
                         callback=lambda _f: start(ch))

    def start(ch: Any) -> None:
        state["t0"] = time.perf_counter()
        pump(ch)

    def pump(ch: Any) -> None:
        deadline = state["t0"] + max_s
        while (state["sent"] - state["acked"] < window and state["sent"] < n
               and time.perf_counter() < deadline):
            ch.basic_publish("", queue, BODY, props)
            state["sent"] += 1

    def on_ack(ch: Any, frame: Any) -> None:
        method = frame.method
        if method.multiple:
            state["acked"] = max(state["acked"], method.delivery_tag)
        else:
            state["acked"] += 1
        done = state["acked"] >= state["sent"] and (
            state["sent"] >= n or time.perf_counter() > state["t0"] + max_s)
        if done:
            state["t1"] = time.perf_counter()
            ch.queue_delete(queue, callback=lambda _f: ch.connection.close())
        else:
            pump(ch)

    conn = pika.SelectConnection(params, on_open_callback=on_open)
    conn.ioloop.call_later(max_s + 30, conn.ioloop.stop)
    conn.add_on_close_callback(lambda *_: conn.ioloop.stop())
    conn.ioloop.start()
    dt = (state["t1"] or time.perf_counter()) - state["t0"]
    return [_m("rabbitmq.quorum_publish_confirms_pipelined", state["acked"] / dt, "msgs/s")]


def rabbit_consume(n: int, max_s: float) -> Result:
    """Fill a quorum queue, then consume with prefetch 1,000 and ack each message."""
    import pika

    queue = f"{RUN}-c"
    params = pika.ConnectionParameters("127.0.0.1", 5672,
                                       credentials=pika.PlainCredentials("guest", "guest"))
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    for _ in range(n):  # a plain fill (confirm per message is slow but not measured)
        ch.basic_publish("", queue, BODY, props)
    ch.basic_qos(prefetch_count=1000)
    got = 0
    t0 = time.perf_counter()
    for method, _props, _body in ch.consume(queue, inactivity_timeout=2):
        if method is None:
            break
        ch.basic_ack(method.delivery_tag)
        got += 1
        if got >= n or time.perf_counter() - t0 > max_s:
            break
    dt = time.perf_counter() - t0
    ch.cancel()
    ch.queue_delete(queue)
    conn.close()
    return [_m("rabbitmq.quorum_consume_ack_each", got / dt, "msgs/s")]


# --- NATS JetStream ------------------------------------------------------------------------


async def nats_all(n: int, max_s: float, latency_s: float) -> Result:
    import nats
    from nats.js.api import StorageType

    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream(publish_async_max_pending=4000)
    stream, subject = RUN.replace("-", "_"), f"{RUN}.s".replace("-", "_")
    await js.add_stream(name=stream, subjects=[subject + ".>"], storage=StorageType.FILE)
    out: Result = []
    try:
        # publish: async publish, acks awaited in bulk
        t0 = time.perf_counter()
        sent = 0
        futs = []
        while sent < n and time.perf_counter() - t0 < max_s:
            futs.append(await js.publish_async(subject + ".p", BODY))
            sent += 1
            if len(futs) >= 4000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
        out.append(_m("nats.jetstream_file_publish_async", sent / (time.perf_counter() - t0),
                      "msgs/s"))

        # consume + ack each: pull consumer, batches of 1,000
        sub = await js.pull_subscribe(subject + ".p", durable="c1", stream=stream)
        got = 0
        t0 = time.perf_counter()
        while got < sent and time.perf_counter() - t0 < max_s:
            try:
                msgs = await sub.fetch(1000, timeout=2)
            except TimeoutError:
                break
            for m in msgs:
                await m.ack()
            got += len(msgs)
        out.append(_m("nats.jetstream_consume_ack_each", got / (time.perf_counter() - t0),
                      "msgs/s"))

        # e2e latency at 5,000 msgs/s: push subscription, explicit ack
        lat: list[float] = []
        total = int(5000 * latency_s)
        done = asyncio.Event()

        async def on_msg(m: Any) -> None:
            lat.append(time.perf_counter() - float(m.data[:20]))
            await m.ack()
            if len(lat) >= total:
                done.set()

        await js.subscribe(subject + ".l", durable="lat", cb=on_msg, manual_ack=True,
                           stream=stream)
        t0 = time.perf_counter()
        pend = []
        for i in range(total):
            delay = t0 + i / 5000 - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            body = b"%20.9f" % time.perf_counter() + BODY[20:]
            pend.append(await js.publish_async(subject + ".l", body))
        await asyncio.gather(*pend)
        try:
            await asyncio.wait_for(done.wait(), 10)
        except TimeoutError:
            pass
        if lat:
            out += [_m("nats.e2e_latency_p50", _pct(lat, 0.5), "ms"),
                    _m("nats.e2e_latency_p99", _pct(lat, 0.99), "ms"),
                    _m("nats.e2e_latency_p999", _pct(lat, 0.999), "ms")]
    finally:
        await js.delete_stream(stream)
        await nc.close()
    return out


# --- Redis Streams -------------------------------------------------------------------------


def redis_all(n: int, max_s: float, latency_s: float) -> Result:
    import redis

    r = redis.Redis("127.0.0.1", 6379)
    cfg = {**r.config_get("appendonly"), **r.config_get("appendfsync")}
    print(f"  redis persistence as configured: {cfg}")
    key = f"{RUN}-stream"
    out: Result = []
    try:
        t0 = time.perf_counter()
        sent = 0
        while sent < n and time.perf_counter() - t0 < max_s:
            p = r.pipeline(transaction=False)
            for _ in range(1000):
                p.xadd(key, {"b": BODY})
            p.execute()
            sent += 1000
        out.append(_m("redis.streams_xadd_pipelined", sent / (time.perf_counter() - t0),
                      "msgs/s"))

        r.xgroup_create(key, "g", id="0")
        got = 0
        t0 = time.perf_counter()
        while got < sent and time.perf_counter() - t0 < max_s:
            res = r.xreadgroup("g", "c", {key: ">"}, count=1000, block=2000)
            if not res:
                break
            entries = res[0][1]
            p = r.pipeline(transaction=False)
            for mid, _fields in entries:
                p.xack(key, "g", mid)
            p.execute()
            got += len(entries)
        out.append(_m("redis.streams_consume_ack_each", got / (time.perf_counter() - t0),
                      "msgs/s"))

        # e2e latency at 5,000 msgs/s: a producer thread, the consumer blocks on XREADGROUP
        import threading

        lkey = f"{RUN}-lat"
        r.xgroup_create(lkey, "g", id="$", mkstream=True)
        total = int(5000 * latency_s)
        lat: list[float] = []

        def produce() -> None:
            rp = redis.Redis("127.0.0.1", 6379)
            t0 = time.perf_counter()
            for i in range(total):
                delay = t0 + i / 5000 - time.perf_counter()
                if delay > 0.0005:
                    time.sleep(delay)
                rp.xadd(lkey, {"b": b"%20.9f" % time.perf_counter()})

        th = threading.Thread(target=produce)
        th.start()
        deadline = time.monotonic() + latency_s + 10
        while len(lat) < total and time.monotonic() < deadline:
            res = r.xreadgroup("g", "c", {lkey: ">"}, count=1000, block=1000)
            now = time.perf_counter()
            if not res:
                continue
            entries = res[0][1]
            for _mid, fields in entries:
                lat.append(now - float(fields[b"b"]))
            r.xack(lkey, "g", *[mid for mid, _ in entries])
        th.join()
        r.delete(lkey)
        out += [_m("redis.e2e_latency_p50", _pct(lat, 0.5), "ms"),
                _m("redis.e2e_latency_p99", _pct(lat, 0.99), "ms"),
                _m("redis.e2e_latency_p999", _pct(lat, 0.999), "ms")]
    finally:
        r.delete(key)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", nargs="*", help="rabbitmq, nats, redis")
    ap.add_argument("--max-seconds", type=float, default=15.0, help="cap per figure")
    args = ap.parse_args()
    k = 0.1 if args.quick else 1.0
    n = int(200_000 * k)
    lat_s = 10.0 * k
    peers = {
        "rabbitmq": lambda: rabbit_publish(n, args.max_seconds)
        + rabbit_consume(int(50_000 * k), args.max_seconds),
        "nats": lambda: asyncio.run(nats_all(n, args.max_seconds, lat_s)),
        "redis": lambda: redis_all(n, args.max_seconds, lat_s),
    }
    results: Result = []
    for name, run in peers.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        try:
            res = run()
        except Exception as exc:  # a peer that is down is reported, not fatal
            print(f"  {name} skipped: {type(exc).__name__}: {exc}", flush=True)
            continue
        for r in res:
            print(f"  {r['metric']:<44} {r['value']:>12} {r['unit']}", flush=True)
        results += res
    print()
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
