"""One measured cell of ``benchmarks/compare.py``, run in a fresh process:

    python benchmarks/_cells.py '<json spec>'

The spec names the system (tidemq, rabbitmq, nats, redis, embedded), the case and its work
(size, n, window, producers, rate, seconds ...), where the server listens and the server's pids.
The cell prints ``START`` when its clock starts and ``STOP`` when it stops (the harness may
attach a profiler in between), then one JSON line: the figure, its message count, the elapsed
seconds, and the CPU seconds of this client process (``getrusage``) and of the server pids
(``/proc``) over exactly the measured interval.

Clocks: publish figures stop when every confirm has arrived; consume figures stop when every
ack has been answered by the server; latency is measured from the publish call's *scheduled*
time (coordinated-omission aware) to the moment the consumer has the message.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _procs import cpu_seconds  # noqa: E402

Spec = dict[str, Any]
Out = dict[str, Any]


def _client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Meter:
    """Wall clock and CPU of client and server between ``start`` and ``stop``."""

    def __init__(self, spec: Spec) -> None:
        self.pids = list(spec.get("server_pids", []))

    def start(self) -> None:
        print("START", flush=True)
        self.c0, self.s0 = _client_cpu(), cpu_seconds(self.pids)
        self.t0 = time.perf_counter()

    def stop(self, n: int, **extra: Any) -> Out:
        dt = time.perf_counter() - self.t0
        c1, s1 = _client_cpu(), cpu_seconds(self.pids)
        print("STOP", flush=True)
        out = {"n": n, "elapsed": dt, "client_cpu": c1 - self.c0,
               "server_cpu": (s1 - self.s0) if self.pids else None}
        if "value" not in extra:
            extra["value"] = n / dt if dt > 0 else 0.0
        out.update(extra)
        return out


def _body(size: int) -> bytes:
    return b"x" * size


def _lat_body(i: int, size: int) -> bytes:
    head = b"%12d" % i
    return head + b"x" * (size - len(head))


def _pcts(lat: list[float], total: int, rate: float, meter: Meter) -> Out:
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return meter.stop(len(lat), value=pct(0.5), p50=pct(0.5), p99=pct(0.99), p999=pct(0.999),
                      max=lat[-1] * 1000 if lat else float("nan"), offered=rate,
                      missing=total - len(lat))


def _due(t0: float, rate: float, total: int) -> int:
    return min(total, int((time.perf_counter() - t0) * rate) + 1)


async def _pace(t0: float, i: int, rate: float) -> None:
    delay = t0 + i / rate - time.perf_counter()
    await asyncio.sleep(delay if delay > 0 else 0)


# --- TideMQ over tidemq:// -----------------------------------------------------------------


async def _window(calls: Callable[[], Any], n: int, window: int) -> None:
    """``n`` calls, at most ``window`` unconfirmed: a sliding window, oldest awaited first."""
    dq: deque[Any] = deque()
    for _ in range(n):
        if len(dq) >= window:
            await dq.popleft()
        dq.append(calls())
    for f in dq:
        await f


async def tidemq_cell(spec: Spec) -> Out:
    import tidemq

    url, case, size = spec["url"], spec["case"], spec.get("size", 100)
    body, meter = _body(size), Meter(spec)
    n, window = spec.get("n", 0), spec.get("window", 1000)
    dur = spec.get("durability", "interval")
    async with tidemq.AsyncClient(url) as mq:
        await mq.create_topic("t", partitions=1, durability=dur)
        if case == "publish":
            meter.start()
            await _window(lambda: mq.publish("t", body), n, window)
            return meter.stop(n)
        if case == "publish_multi":
            producers = spec["producers"]
            clients = [tidemq.AsyncClient(url) for _ in range(producers)]
            for c in clients:
                await c.connect()
            per = n // producers
            meter.start()
            await asyncio.gather(*(_window(lambda c=c: c.publish("t", body), per, window)
                                   for c in clients))
            out = meter.stop(per * producers)
            for c in clients:
                await c.close()
            return out
        if case == "batch":
            bodies = [body] * 1000
            meter.start()
            await _window(lambda: asyncio.ensure_future(mq.publish_batch("t", bodies)),
                          n // 1000, 4)
            return meter.stop(n // 1000 * 1000)
        if case in ("consume_each", "consume_batch"):
            bodies = [body] * 1000
            await _window(lambda: asyncio.ensure_future(mq.publish_batch("t", bodies)),
                          n // 1000, 4)
            n = n // 1000 * 1000
            sub = mq.subscribe("t", "g", prefetch=2000)
            await sub.join()
            got = 0
            meter.start()
            deadline = time.monotonic() + spec.get("max_seconds", 60)
            while got < n and time.monotonic() < deadline:
                batch = await sub.receive(1000, 5.0)
                if case == "consume_each":
                    for m in batch:
                        await m.ack()
                elif batch:
                    await sub.ack(batch)
                got += len(batch)
            await sub.flush()  # every ack answered by the server
            return meter.stop(got)
        if case == "latency":
            return await _tidemq_latency(spec, mq, meter)
    raise ValueError(case)


async def _tidemq_latency(spec: Spec, mq: Any, meter: Meter) -> Out:
    import tidemq

    rate, size = spec["rate"], spec.get("size", 100)
    total = int(rate * spec["seconds"])
    async with tidemq.AsyncClient(spec["url"]) as cons:
        sub = cons.subscribe("t", "g", prefetch=2000)
        await sub.join()
        lat: list[float] = []
        t0 = time.perf_counter() + 0.05
        meter.start()

        async def consumer() -> None:
            deadline = time.monotonic() + spec["seconds"] + 10
            while len(lat) < total and time.monotonic() < deadline:
                batch = await sub.receive(1000, 0.5)
                now = time.perf_counter()
                for m in batch:
                    lat.append(now - (t0 + int(m.body[:12]) / rate))
                if batch:
                    await sub.ack(batch)

        async def producer() -> None:
            pending = []
            pub = mq.publish
            i = 0
            await _pace(t0, 0, rate)
            while i < total:
                for j in range(i, _due(t0, rate, total)):
                    pending.append(pub("t", _lat_body(j, size)))
                    i = j + 1
                await _pace(t0, i, rate)
            await asyncio.gather(*pending)

        await asyncio.gather(consumer(), producer())
        return _pcts(lat, total, rate, meter)


# --- NATS JetStream (nats-py) --------------------------------------------------------------


async def nats_cell(spec: Spec) -> Out:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType

    case, size = spec["case"], spec.get("size", 100)
    body, meter = _body(size), Meter(spec)
    n, window = spec.get("n", 0), spec.get("window", 1000)
    nc = await nats.connect(spec["url"])
    js = nc.jetstream(publish_async_max_pending=max(window, 1000) + 1)

    async def pub_window(subject: str, count: int, win: int) -> None:
        # publish_async writes and hands back the PubAck future: keep `win` of them unanswered
        dq: deque[Any] = deque()
        for _ in range(count):
            if len(dq) >= win:
                await dq.popleft()
            dq.append(await js.publish_async(subject, body))
        for f in dq:
            await f

    await js.add_stream(name="S", subjects=["s.>"], storage=StorageType.FILE)
    try:
        if case == "publish":
            meter.start()
            await pub_window("s.p", n, window)
            return meter.stop(n)
        if case in ("consume_each", "consume_batch"):
            await pub_window("s.p", n, 1000)
            policy = AckPolicy.EXPLICIT if case == "consume_each" else AckPolicy.ALL
            sub = await js.pull_subscribe("s.p", durable="c", stream="S",
                                          config=ConsumerConfig(ack_policy=policy,
                                                                max_ack_pending=4000))
            got = 0
            meter.start()
            deadline = time.monotonic() + spec.get("max_seconds", 60)
            while got < n and time.monotonic() < deadline:
                try:
                    msgs = await sub.fetch(1000, timeout=5)
                except TimeoutError:
                    break
                if case == "consume_each":
                    for m in msgs:
                        await m.ack()
                else:
                    await msgs[-1].ack()
                got += len(msgs)
            # acks are fire-and-forget publishes: wait until the server shows none pending
            await nc.flush()
            while (await sub.consumer_info()).num_ack_pending and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            return meter.stop(got)
        if case == "latency":
            rate = spec["rate"]
            total = int(rate * spec["seconds"])
            nc2 = await nats.connect(spec["url"])
            lat: list[float] = []
            done = asyncio.Event()
            t0 = time.perf_counter() + 0.05

            async def on_msg(m: Any) -> None:
                lat.append(time.perf_counter() - (t0 + int(m.data[:12]) / rate))
                await m.ack()
                if len(lat) >= total:
                    done.set()

            await nc2.jetstream().subscribe("s.l", durable="lat", cb=on_msg, manual_ack=True,
                                            stream="S")
            meter.start()
            pending = []
            i = 0
            await _pace(t0, 0, rate)
            while i < total:
                for j in range(i, _due(t0, rate, total)):
                    pending.append(await js.publish_async("s.l", _lat_body(j, size)))
                    i = j + 1
                await _pace(t0, i, rate)
            await asyncio.gather(*pending)
            try:
                await asyncio.wait_for(done.wait(), 10)
            except TimeoutError:
                pass
            out = _pcts(lat, total, rate, meter)
            await nc2.close()
            return out
    finally:
        try:
            await js.delete_stream("S")
        finally:
            await nc.close()
    raise ValueError(case)


# --- Redis Streams (redis-py) --------------------------------------------------------------


def redis_cell(spec: Spec) -> Out:
    import redis

    case, size = spec["case"], spec.get("size", 100)
    body, meter = _body(size), Meter(spec)
    n, window = spec.get("n", 0), spec.get("window", 1000)
    port = spec["port"]
    if case in ("publish_multi", "latency"):
        return asyncio.run(_redis_async(spec))
    r = redis.Redis("127.0.0.1", port)

    def fill(count: int, per: int) -> None:
        for k in range(0, count, per):
            p = r.pipeline(transaction=False)
            for _ in range(min(per, count - k)):
                p.xadd("k", {"b": body})
            p.execute()

    if case == "publish":
        meter.start()
        fill(n, window)  # one pipeline of `window` XADDs per round trip
        return meter.stop(n)
    if case in ("consume_each", "consume_batch"):
        fill(n, 1000)
        r.xgroup_create("k", "g", id="0")
        got = 0
        meter.start()
        deadline = time.monotonic() + spec.get("max_seconds", 60)
        while got < n and time.monotonic() < deadline:
            res = r.xreadgroup("g", "c", {"k": ">"}, count=1000, block=5000)
            if not res:
                break
            ids = [mid for mid, _f in res[0][1]]
            if case == "consume_each":  # one XACK per message, pipelined, replies read
                p = r.pipeline(transaction=False)
                for mid in ids:
                    p.xack("k", "g", mid)
                p.execute()
            else:
                r.xack("k", "g", *ids)
            got += len(ids)
        return meter.stop(got)
    raise ValueError(case)


async def _redis_async(spec: Spec) -> Out:
    import redis.asyncio as aredis

    case, size, port = spec["case"], spec.get("size", 100), spec["port"]
    body, meter = _body(size), Meter(spec)
    if case == "publish_multi":
        n, window, producers = spec["n"], spec["window"], spec["producers"]
        per = n // producers
        clients = [aredis.Redis(host="127.0.0.1", port=port) for _ in range(producers)]
        for c in clients:
            await c.ping()

        async def run(c: Any) -> None:
            for k in range(0, per, window):
                p = c.pipeline(transaction=False)
                for _ in range(min(window, per - k)):
                    p.xadd("k", {"b": body})
                await p.execute()

        meter.start()
        await asyncio.gather(*(run(c) for c in clients))
        out = meter.stop(per * producers)
        for c in clients:
            await c.aclose()
        return out
    # latency: a producer connection paced by the schedule, a consumer blocking on XREADGROUP
    rate = spec["rate"]
    total = int(rate * spec["seconds"])
    prod = aredis.Redis(host="127.0.0.1", port=port)
    cons = aredis.Redis(host="127.0.0.1", port=port)
    await cons.xgroup_create("l", "g", id="$", mkstream=True)
    lat: list[float] = []
    t0 = time.perf_counter() + 0.05
    meter.start()

    async def consumer() -> None:
        deadline = time.monotonic() + spec["seconds"] + 10
        while len(lat) < total and time.monotonic() < deadline:
            res = await cons.xreadgroup("g", "c", {"l": ">"}, count=1000, block=500)
            now = time.perf_counter()
            if not res:
                continue
            entries = res[0][1]
            for _mid, f in entries:
                lat.append(now - (t0 + int(f[b"b"][:12]) / rate))
            await cons.xack("l", "g", *[mid for mid, _f in entries])

    async def producer() -> None:
        i = 0
        await _pace(t0, 0, rate)
        while i < total:
            due = _due(t0, rate, total)
            if due - i == 1:
                await prod.xadd("l", {"b": _lat_body(i, size)})
            else:  # behind the schedule: the messages due now go in one pipeline
                p = prod.pipeline(transaction=False)
                for j in range(i, due):
                    p.xadd("l", {"b": _lat_body(j, size)})
                await p.execute()
            i = due
            await _pace(t0, i, rate)

    await asyncio.gather(consumer(), producer())
    out = _pcts(lat, total, rate, meter)
    await prod.aclose()
    await cons.aclose()
    return out


# --- RabbitMQ (pika) -----------------------------------------------------------------------


def _rabbit_params() -> Any:
    import pika

    return pika.ConnectionParameters("127.0.0.1", 5672,
                                      credentials=pika.PlainCredentials("guest", "guest"))


def rabbit_cell(spec: Spec) -> Out:
    import pika

    queue = f"tidemq-bench-{os.getpid()}-{int(time.time() * 1000)}"
    conn = pika.BlockingConnection(_rabbit_params())
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        if spec["case"] in ("publish", "publish_multi"):
            return _rabbit_publish(spec, queue)
        if spec["case"] == "latency":
            return _rabbit_latency(spec, queue)
        return _rabbit_consume(spec, queue, ch)
    finally:
        try:
            ch.queue_delete(queue)
            conn.close()
        except Exception:  # noqa: BLE001 - cleanup only
            pass


def _rabbit_publish(spec: Spec, queue: str) -> Out:
    """``producers`` SelectConnections on one ioloop, each with publisher confirms and at
    most ``window`` unconfirmed persistent messages."""
    import pika
    from pika.adapters.select_connection import IOLoop

    body, meter = _body(spec.get("size", 100)), Meter(spec)
    producers = spec.get("producers", 1)
    per = spec["n"] // producers
    window = spec.get("window", 1000)
    props = pika.BasicProperties(delivery_mode=2)
    ioloop = IOLoop()
    states: list[dict[str, Any]] = []
    ready: list[Any] = []
    result: dict[str, Any] = {}

    def pump(st: dict[str, Any]) -> None:
        ch = st["ch"]
        while st["sent"] - st["acked"] < window and st["sent"] < per:
            ch.basic_publish("", queue, body, props)
            st["sent"] += 1

    def on_confirm(st: dict[str, Any], frame: Any) -> None:
        m = frame.method
        if isinstance(m, pika.spec.Basic.Nack):
            st["nacked"] += 1
        st["acked"] = m.delivery_tag if m.multiple else st["acked"] + 1
        if st["acked"] >= per:
            st["done"] = True
            if all(s["done"] for s in states) and "out" not in result:
                result["out"] = meter.stop(per * producers,
                                           nacked=sum(s["nacked"] for s in states))
                for s in states:
                    s["conn"].close()
        else:
            pump(st)

    def on_selected(st: dict[str, Any]) -> None:
        ready.append(st)
        if len(ready) == producers:
            meter.start()
            for s in states:
                pump(s)

    def on_channel(st: dict[str, Any], ch: Any) -> None:
        st["ch"] = ch
        ch.confirm_delivery(lambda fr: on_confirm(st, fr), callback=lambda _f: on_selected(st))

    def on_closed(*_a: Any) -> None:
        if all(s["conn"].is_closed for s in states):
            ioloop.stop()

    for _ in range(producers):
        st: dict[str, Any] = {"sent": 0, "acked": 0, "nacked": 0, "done": False}
        st["conn"] = pika.SelectConnection(
            _rabbit_params(), custom_ioloop=ioloop,
            on_open_callback=lambda c, st=st: c.channel(
                on_open_callback=lambda ch, st=st: on_channel(st, ch)),
            on_close_callback=on_closed)
        states.append(st)
    ioloop.call_later(spec.get("max_seconds", 60), ioloop.stop)
    ioloop.start()
    if "out" not in result:
        raise TimeoutError("not every confirm arrived in time")
    return result["out"]


def _rabbit_latency(spec: Spec, queue: str) -> Out:
    """A producer connection publishing on the schedule (persistent, confirms on), a consumer
    connection with ``basic_consume`` (prefetch 2,000, ack per message), one ioloop."""
    import pika
    from pika.adapters.select_connection import IOLoop

    rate, size, meter = spec["rate"], spec.get("size", 100), Meter(spec)
    total = int(rate * spec["seconds"])
    props = pika.BasicProperties(delivery_mode=2)
    ioloop = IOLoop()
    lat: list[float] = []
    st: dict[str, Any] = {"i": 0, "ready": 0, "t0": 0.0, "closing": False}
    conns: list[Any] = []

    def finish() -> None:
        if not st["closing"]:
            st["closing"] = True
            st["out"] = _pcts(lat, total, rate, meter)
            for c in conns:
                c.close()

    def tick() -> None:
        t0, i = st["t0"], st["i"]
        due = _due(t0, rate, total)
        for j in range(i, due):
            st["pch"].basic_publish("", queue, _lat_body(j, size), props)
        st["i"] = due
        if due < total:
            ioloop.call_later(max(0.0, t0 + due / rate - time.perf_counter()), tick)

    def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
        lat.append(time.perf_counter() - (st["t0"] + int(body[:12]) / rate))
        ch.basic_ack(method.delivery_tag)
        if len(lat) >= total:
            finish()

    def ready() -> None:
        st["ready"] += 1
        if st["ready"] == 2:
            st["t0"] = time.perf_counter() + 0.05
            meter.start()
            ioloop.call_later(0.05, tick)
            ioloop.call_later(spec["seconds"] + 10, finish)

    def on_prod_channel(ch: Any) -> None:
        st["pch"] = ch
        ch.confirm_delivery(lambda _fr: None, callback=lambda _f: ready())

    def on_cons_channel(ch: Any) -> None:
        ch.basic_qos(prefetch_count=2000, callback=lambda _f: (
            ch.basic_consume(queue, on_message), ready()))

    def on_closed(*_a: Any) -> None:
        if all(c.is_closed for c in conns):
            ioloop.stop()

    for on_ch in (on_prod_channel, on_cons_channel):
        conns.append(pika.SelectConnection(
            _rabbit_params(), custom_ioloop=ioloop,
            on_open_callback=lambda c, f=on_ch: c.channel(on_open_callback=f),
            on_close_callback=on_closed))
    ioloop.call_later(spec["seconds"] + 30, ioloop.stop)
    ioloop.start()
    if "out" not in st:
        raise TimeoutError("latency run did not finish")
    return st["out"]


def _rabbit_consume(spec: Spec, queue: str, ch: Any) -> Out:
    import pika

    body, meter = _body(spec.get("size", 100)), Meter(spec)
    n = spec["n"]
    props = pika.BasicProperties(delivery_mode=2)
    for _ in range(n):  # the fill is not measured; wait until the queue holds every message
        ch.basic_publish("", queue, body, props)
    deadline = time.monotonic() + 60
    while ch.queue_declare(queue, passive=True).method.message_count < n:
        if time.monotonic() > deadline:
            raise TimeoutError("queue not filled")
        time.sleep(0.05)
    ch.basic_qos(prefetch_count=2000)
    each = spec["case"] == "consume_each"
    got = 0
    meter.start()
    deadline = time.monotonic() + spec.get("max_seconds", 60)
    for method, _props, _b in ch.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        got += 1
        if each:
            ch.basic_ack(method.delivery_tag)
        elif got % 1000 == 0 or got >= n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if got >= n or time.monotonic() > deadline:
            break
    # basic.ack has no reply in AMQP 0-9-1; a synchronous method behind it on the same channel
    # is answered only after the acks before it were processed.
    ch.queue_declare(queue, passive=True)
    out = meter.stop(got)
    ch.cancel()
    return out


# --- TideMQ embedded (in-process) ----------------------------------------------------------


def embedded_cell(spec: Spec) -> Out:
    import tempfile

    import tidemq

    case, body, meter, n = spec["case"], _body(spec.get("size", 100)), Meter(spec), spec["n"]
    folder = tempfile.mkdtemp(prefix="tidemq-emb-")
    try:
        with tidemq.Client(folder) as mq:
            mq.create_topic("t", partitions=1, durability=spec.get("durability", "interval"))
            if case == "publish":
                pub = mq.publish
                meter.start()
                for _ in range(n):
                    pub("t", body)
                return meter.stop(n)
            batch = [body] * 1000
            for _ in range(n // 1000):
                mq.publish_batch("t", batch)
            n = n // 1000 * 1000
            sub = mq.subscribe("t", "g", prefetch=1000)
            got = 0
            meter.start()
            while got < n:
                msgs = sub.receive(max_messages=1000, timeout=1.0)
                if case == "consume_each":
                    for m in msgs:
                        sub.ack(m.id)
                else:
                    sub.ack(msgs)
                got += len(msgs)
            return meter.stop(got)
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def run(spec: Spec) -> Out:
    system = spec["system"]
    if system == "tidemq":
        return asyncio.run(tidemq_cell(spec))
    if system == "nats":
        return asyncio.run(nats_cell(spec))
    if system == "redis":
        return redis_cell(spec)
    if system == "rabbitmq":
        return rabbit_cell(spec)
    if system == "embedded":
        return embedded_cell(spec)
    raise ValueError(system)


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
