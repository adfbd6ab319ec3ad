#!/usr/bin/env python3
"""The blocking client (``tidemq.Client``) over ``tidemq://``, against redis-py and pika in the
same run (issue 10). Prints one JSON line per run and a summary line (median, min, max) per
figure, then the ratios the issue sets targets for.

Run: .venv/bin/python benchmarks/blocking_bench.py [--runs 3] [--messages 5000]
         [--nowait-messages 300000] [--max-seconds 10] [--only publish receive ...]

Every system on 127.0.0.1, 100-byte bodies, a fresh uniquely named topic / stream / queue per
run (deleted afterwards), each run bounded by ``--max-seconds``. Durability, like with like:

- TideMQ topics use durability ``interval`` (written before the answer, fsync at least every
  100 ms) next to a private ``redis-server`` started for the run with ``appendonly yes
  appendfsync everysec`` (written to its AOF before the reply, fsync every second: the same
  class), and ``always`` (fsync before the answer) next to RabbitMQ quorum queues (fsync
  before a publisher confirm).
- The TideMQ-only figures (``publish_nowait``, ``consume_workers``, ``server_cpu``) start once
  the peer servers are quiet again (``settle``: RabbitMQ deletes and compacts the quorum queues
  of the figures before them for a while).
- Both sides run with their defaults: TideMQ's client and server poll briefly before they
  sleep (``spin_us``, docs/server.md); ``benchmarks/roundtrip_floor.py`` shows what that
  buys and costs in CPU.
- Clocks stop when the server has answered: a publish when it returned its id (redis: XADD's
  reply; pika: the publisher confirm), acks after ``sub.flush()`` (redis: each XACK's reply;
  pika: a passive ``queue_declare`` after the last ``basic_ack``, which the channel answers
  only after handling every ack before it).

Figures (targets from the issue):
- ``publish_one``: blocking ``mq.publish`` one call at a time (>= 1.0x redis XADD one at a time).
- ``receive_ack``: ``for m in sub.receive(100): m.ack()`` until all are in, then ``flush()``
  (>= 3x redis XREADGROUP COUNT 100 + XACK each, >= 3x pika consume + basic_ack each).
- ``publish_nowait``: ``mq.publish(..., wait=False)`` then ``mq.flush()`` (>= 250K msgs/s).
- ``consume_workers``: ``mq.consume(callback, workers=8)``, a callback sleeping 10 ms
  (>= 700 msgs/s; the ideal is 800).
- ``server_cpu``: the server process's CPU (utime + stime from /proc/PID/stat) per message
  received and acked, blocking client vs ``AsyncClient`` doing the same (within 2x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import tidemq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _procs import cpu_ticks, start_redis  # noqa: E402

BODY = b"x" * 100
RUN = f"bb-{os.getpid()}-{int(time.time())}"
_names = iter(range(1_000_000))
TICK = os.sysconf("SC_CLK_TCK")


def name(kind: str) -> str:
    return f"{RUN}-{kind}-{next(_names)}"


def settle(limit: float = 15.0) -> None:
    """Wait until the peer servers are quiet (their CPU under 10% of a core over half a
    second), so TideMQ-only figures after the peers' do not share the machine with them."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _comm(int(p)) in _PEERS]
    deadline = time.monotonic() + limit
    while pids and time.monotonic() < deadline:
        t0 = sum(map(cpu_ticks, pids))
        time.sleep(0.5)
        if (sum(map(cpu_ticks, pids)) - t0) / TICK < 0.05:
            return


_PEERS = {"beam.smp", "redis-server"}


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def emit(**fields: Any) -> None:
    if "run" in fields:  # a measurement: how busy the machine was
        fields["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(fields), flush=True)


class Server:
    """``tidemq serve`` on a fresh data folder and a free port."""

    def __init__(self, data: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidemq.server", "--data", data, "--port", "0",
             "--log-level", "WARNING"], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if "listening on" not in line:
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = "tidemq://" + line.rsplit(" ", 1)[1]
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --- TideMQ -----------------------------------------------------------------------------------


def tidemq_publish_one(url: str, n: int, max_s: float, durability: str,
                       server_pid: int) -> tuple[float, float]:
    """msgs/s, and the server's CPU µs per publish (one request each)."""
    with tidemq.Client(url) as mq:
        t = name("pub")
        mq.create_topic(t, durability=durability)
        mq.publish(t, BODY)  # topic metadata cached
        pub = mq.publish
        deadline = time.perf_counter() + max_s
        c0 = cpu_ticks(server_pid)
        t0 = time.perf_counter()
        done = 0
        while done < n and time.perf_counter() < deadline:
            for _ in range(100):
                pub(t, BODY)
            done += 100
        dt = time.perf_counter() - t0
        cpu = (cpu_ticks(server_pid) - c0) / TICK / done * 1e6
        mq.delete_topic(t)
    return done / dt, cpu


def _fill(mq: tidemq.Client, topic: str, n: int) -> None:
    for i in range(0, n, 1000):
        mq.publish_batch(topic, [BODY] * min(1000, n - i))


def tidemq_receive_ack(url: str, n: int, max_s: float, durability: str,
                       server_pid: int | None = None) -> tuple[float, float | None]:
    """msgs/s, and the server's CPU µs per message when ``server_pid`` is given."""
    with tidemq.Client(url) as mq:
        t = name("recv")
        mq.create_topic(t, durability=durability)
        _fill(mq, t, n)
        sub = mq.subscribe(t, "g", prefetch=100)
        deadline = time.perf_counter() + max_s
        c0 = cpu_ticks(server_pid) if server_pid else 0
        t0 = time.perf_counter()
        got = 0
        while got < n and time.perf_counter() < deadline:
            for m in sub.receive(100, timeout=1.0):
                m.ack()
                got += 1
        sub.flush()
        dt = time.perf_counter() - t0
        cpu = (cpu_ticks(server_pid) - c0) / TICK / got * 1e6 if server_pid else None
        sub.close()
        mq.delete_topic(t)
    return got / dt, cpu


def tidemq_async_receive_ack(url: str, n: int, max_s: float, server_pid: int) -> tuple[float,
                                                                                       float]:
    async def main() -> tuple[float, float]:
        async with tidemq.AsyncClient(url) as mq:
            t = name("arecv")
            await mq.create_topic(t, durability="interval")
            for i in range(0, n, 1000):
                await mq.publish_batch(t, [BODY] * min(1000, n - i))
            sub = await mq.subscribe(t, "g", prefetch=100)
            deadline = time.perf_counter() + max_s
            c0 = cpu_ticks(server_pid)
            t0 = time.perf_counter()
            got = 0
            while got < n and time.perf_counter() < deadline:
                for m in await sub.receive(100, timeout=1.0):
                    await m.ack()
                    got += 1
            await sub.flush()
            dt = time.perf_counter() - t0
            cpu = (cpu_ticks(server_pid) - c0) / TICK / got * 1e6
            await sub.close()
            await mq.delete_topic(t)
        return got / dt, cpu

    return asyncio.run(main())


def tidemq_publish_nowait(url: str, n: int, max_s: float) -> float:
    with tidemq.Client(url) as mq:
        t = name("nowait")
        mq.create_topic(t, durability="interval")
        mq.publish(t, BODY)
        pub = mq.publish
        deadline = time.perf_counter() + max_s
        t0 = time.perf_counter()
        done = 0
        while done < n and time.perf_counter() < deadline:
            for _ in range(1000):
                pub(t, BODY, wait=False)
            done += 1000
        mq.flush()  # every future resolved: the server confirmed them all
        dt = time.perf_counter() - t0
        mq.delete_topic(t)
    return done / dt


def tidemq_consume_workers(url: str, n: int, max_s: float, workers: int = 8,
                           sleep: float = 0.01) -> float:
    done = threading.Event()
    count = 0
    lock = threading.Lock()

    def handle(msg: tidemq.Message) -> None:
        nonlocal count
        time.sleep(sleep)
        with lock:
            count += 1
            if count >= n:
                done.set()

    with tidemq.Client(url) as mq:
        t = name("workers")
        mq.create_topic(t, durability="interval")
        _fill(mq, t, n)
        t0 = time.perf_counter()
        consumer = mq.consume(t, "g", callback=handle, workers=workers)
        done.wait(max_s)
        dt = time.perf_counter() - t0
        consumer.stop()
        mq.delete_topic(t)
    return count / dt


def sleeping_threads(n: int, workers: int = 8, sleep: float = 0.01) -> float:
    """What 8 threads that only sleep 10 ms each time reach on this machine (the ceiling of
    ``consume_workers``: sleep overshoots its request)."""
    per = n // workers

    def work() -> None:
        for _ in range(per):
            time.sleep(sleep)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return per * workers / (time.perf_counter() - t0)


# --- Redis ------------------------------------------------------------------------------------


def redis_config(port: int) -> dict[str, str]:
    import redis

    r = redis.Redis("127.0.0.1", port)
    out = {k: str(v) for k, v in r.config_get("append*").items()
           if k in ("appendonly", "appendfsync")}
    r.close()
    return out


def redis_xadd_one(port: int, n: int, max_s: float) -> float:
    import redis

    r = redis.Redis("127.0.0.1", port)
    s = name("stream")
    try:
        deadline = time.perf_counter() + max_s
        t0 = time.perf_counter()
        done = 0
        while done < n and time.perf_counter() < deadline:
            for _ in range(100):
                r.xadd(s, {"b": BODY})
            done += 100
        return done / (time.perf_counter() - t0)
    finally:
        r.delete(s)
        r.close()


def redis_read_ack(port: int, n: int, max_s: float) -> float:
    import redis

    r = redis.Redis("127.0.0.1", port)
    s = name("stream")
    try:
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(s, {"b": BODY})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        r.xgroup_create(s, "g", id="0")
        deadline = time.perf_counter() + max_s
        t0 = time.perf_counter()
        got = 0
        while got < n and time.perf_counter() < deadline:
            for _stream, msgs in r.xreadgroup("g", "c", {s: ">"}, count=100, block=1000):
                for mid, _fields in msgs:
                    r.xack(s, "g", mid)
                    got += 1
        return got / (time.perf_counter() - t0)
    finally:
        r.delete(s)
        r.close()


# --- RabbitMQ ---------------------------------------------------------------------------------


def _pika() -> tuple[Any, Any]:
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest")))
    return conn, conn.channel()


def pika_publish_one(n: int, max_s: float) -> float:
    """A quorum queue, persistent messages, publisher confirms: each basic_publish returns
    when the broker confirmed it (BlockingChannel with confirm_delivery)."""
    import pika

    conn, ch = _pika()
    q = name("q")
    try:
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2)
        deadline = time.perf_counter() + max_s
        t0 = time.perf_counter()
        done = 0
        while done < n and time.perf_counter() < deadline:
            for _ in range(100):
                ch.basic_publish("", q, BODY, props)
            done += 100
        return done / (time.perf_counter() - t0)
    finally:
        ch.queue_delete(q)
        conn.close()


def pika_consume_ack(n: int, max_s: float) -> float:
    import pika

    conn, ch = _pika()
    q = name("q")
    try:
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2)
        for _ in range(n):  # not timed
            ch.basic_publish("", q, BODY, props)
        ch.basic_qos(prefetch_count=100)
        deadline = time.perf_counter() + max_s
        t0 = time.perf_counter()
        got = 0
        for method, _props, _body in ch.consume(q, inactivity_timeout=1.0):
            if method is None:
                if time.perf_counter() > deadline:
                    break
                continue
            ch.basic_ack(method.delivery_tag)
            got += 1
            if got >= n or time.perf_counter() > deadline:
                break
        ch.queue_declare(q, passive=True)  # answered after every ack before it was handled
        dt = time.perf_counter() - t0
        ch.cancel()
        return got / dt
    finally:
        ch.queue_delete(q)
        conn.close()


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--nowait-messages", type=int, default=300_000)
    ap.add_argument("--workers-messages", type=int, default=2000)
    ap.add_argument("--cpu-messages", type=int, default=30_000,
                    help="messages per server-CPU run (the kernel counts CPU in 10 ms ticks)")
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--only", nargs="*", default=None,
                    help="publish receive nowait workers cpu (default: all)")
    a = ap.parse_args()
    want = set(a.only or ["publish", "receive", "nowait", "workers", "cpu"])
    n, max_s = a.messages, a.max_seconds
    results: dict[str, list[float]] = {}
    units: dict[str, str] = {}

    def measure(figure: str, system: str, fn: Callable[[], Any], unit: str = "msgs/s",
                **extra: Any) -> Any:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a peer that is down is reported, not fatal
            emit(bench=figure, system=system, error=f"{type(exc).__name__}: {exc}")
            return None
        shown = value[0] if isinstance(value, tuple) else value
        results.setdefault(f"{figure}|{system}", []).append(shown)
        units[f"{figure}|{system}"] = unit
        if isinstance(value, tuple) and value[1] is not None and figure == "publish_one":
            extra["server_us_per_msg"] = round(value[1], 1)
        emit(bench=figure, system=system, run=run + 1, value=round(shown, 1), unit=unit, **extra)
        return value

    rport = 0
    try:
        redis_srv: Any = start_redis("everysec")
        rport = redis_srv.port
        emit(bench="setup", redis=redis_config(rport), cores=os.cpu_count(),
             python=sys.version.split()[0], messages=n, max_seconds=max_s)
    except Exception as exc:  # noqa: BLE001
        redis_srv = None
        emit(bench="setup", redis=f"cannot start redis-server: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(f"{tmp}/server")
        try:
            url = server.url
            for run in range(a.runs):
                if "publish" in want:
                    measure("publish_one", "tidemq-interval",
                            lambda: tidemq_publish_one(url, n, max_s, "interval", server.pid),
                            durability="interval")
                    measure("publish_one", "redis-xadd", lambda: redis_xadd_one(rport, n, max_s))
                    measure("publish_one", "tidemq-always",
                            lambda: tidemq_publish_one(url, n, max_s, "always", server.pid),
                            durability="always")
                    measure("publish_one", "pika-quorum-confirm",
                            lambda: pika_publish_one(n, max_s))
                if "receive" in want:
                    measure("receive_ack", "tidemq-interval",
                            lambda: tidemq_receive_ack(url, n, max_s, "interval"),
                            durability="interval")
                    measure("receive_ack", "redis-xreadgroup-xack",
                            lambda: redis_read_ack(rport, n, max_s))
                    measure("receive_ack", "tidemq-always",
                            lambda: tidemq_receive_ack(url, n, max_s, "always"),
                            durability="always")
                    measure("receive_ack", "pika-quorum",
                            lambda: pika_consume_ack(n, max_s))
                if want & {"nowait", "workers", "cpu"} and want & {"publish", "receive"}:
                    settle()  # RabbitMQ still deletes and compacts the quorum queues just used
                if "nowait" in want:
                    measure("publish_nowait", "tidemq-interval",
                            lambda: tidemq_publish_nowait(url, a.nowait_messages, max_s))
                if "workers" in want:
                    measure("consume_workers", "ceiling-8-sleeping-threads",
                            lambda: sleeping_threads(a.workers_messages))
                    measure("consume_workers", "tidemq-blocking",
                            lambda: tidemq_consume_workers(url, a.workers_messages, max_s),
                            workers=8, sleep_s=0.01)
                if "cpu" in want:
                    for system, fn in (
                        ("blocking", lambda: tidemq_receive_ack(url, a.cpu_messages, max_s,
                                                                "interval", server.pid)),
                        ("async", lambda: tidemq_async_receive_ack(url, a.cpu_messages, max_s,
                                                                   server.pid)),
                    ):
                        got = measure("server_cpu_rate", f"tidemq-{system}", fn)
                        if got is not None:
                            results.setdefault(f"server_cpu|tidemq-{system}", []).append(got[1])
                            units[f"server_cpu|tidemq-{system}"] = "server µs/msg"
                            emit(bench="server_cpu", system=f"tidemq-{system}", run=run + 1,
                                 value=round(got[1], 2), unit="server µs/msg")
        finally:
            server.stop()
            if redis_srv is not None:
                redis_srv.stop()
    medians: dict[str, float] = {}
    for key, vals in results.items():
        figure, system = key.split("|")
        medians[key] = statistics.median(vals)
        emit(bench=figure, system=system, summary=True, runs=len(vals),
             median=round(medians[key], 2), min=round(min(vals), 2), max=round(max(vals), 2),
             unit=units.get(key, ""))

    def ratio(label: str, num: str, den: str, target: str) -> None:
        if num in medians and den in medians and medians[den]:
            emit(ratio=label, value=round(medians[num] / medians[den], 2), target=target)

    ratio("publish_one tidemq-interval / redis-xadd", "publish_one|tidemq-interval",
          "publish_one|redis-xadd", ">= 1.0")
    ratio("publish_one tidemq-always / pika-quorum-confirm", "publish_one|tidemq-always",
          "publish_one|pika-quorum-confirm", "(same durability class)")
    ratio("receive_ack tidemq-interval / redis", "receive_ack|tidemq-interval",
          "receive_ack|redis-xreadgroup-xack", ">= 3")
    ratio("receive_ack tidemq-interval / pika-quorum", "receive_ack|tidemq-interval",
          "receive_ack|pika-quorum", ">= 3")
    ratio("receive_ack tidemq-always / pika-quorum", "receive_ack|tidemq-always",
          "receive_ack|pika-quorum", "(same durability class)")
    ratio("server cpu per msg blocking / async", "server_cpu|tidemq-blocking",
          "server_cpu|tidemq-async", "<= 2")


if __name__ == "__main__":
    main()
