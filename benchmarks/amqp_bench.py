#!/usr/bin/env python3
"""The same AMQP client programs against TideMQ's AMQP port and RabbitMQ (quorum queues).

Run:  .venv/bin/python benchmarks/amqp_bench.py --runs 3 -n 5000 > docs/figures/amqp.jsonl
      .venv/bin/python benchmarks/render.py docs/figures/amqp.jsonl > docs/figures/amqp.md

Targets: ``tidemq`` — a ``tidemq serve --amqp-port`` subprocess on a fresh data folder, each
queue's topic created first with durability ``always`` (an fsync before every confirm, as a
quorum queue's; ``tidemq-interval``: TideMQ's default durability, fsync every 100 ms) — and
``rabbitmq`` — the RabbitMQ on 127.0.0.1:5672 (guest/guest), queues
declared with ``x-queue-type: quorum``. Skipped (a note on stderr) when it is not reachable.
``null`` (asked for by name) — ``benchmarks/null_amqp.py``, a server that stores nothing and
answers at once: what the client program does against a broker that costs nothing.

Programs (one fresh queue each, messages of ``--size`` bytes):

- ``pika_publish_confirm``: pika BlockingConnection with ``confirm_delivery()``; each
  ``basic_publish`` returns once the broker confirmed it (one message in flight);
- ``aiopika_publish_confirm``: aio-pika with publisher confirms, ``--window`` publishes in
  flight (``asyncio.gather`` over windows);
- ``pika_consume_ack``: the queue filled first, then ``basic_consume`` with prefetch 100 and
  a ``basic_ack`` per message; ``aiopika_consume_ack``: the same with aio-pika's queue
  iterator;
- ``pika_e2e_latency``: one publisher connection and one consumer connection (a thread); one
  message at a time, the time from before ``basic_publish`` to the consumer's callback; p50
  and p99 per run.

Every program also reports ``client_cpu_us``: the client process's CPU time (all its threads)
per message over the timed part. Set against the time per message (1 / msgs/s) it tells a
client-bound program: one where the client alone keeps its core busy, whatever the broker.
And ``server_cpu_us``: the server process's CPU time per message over the same part (from
``/proc``: TideMQ's server, the null server, RabbitMQ's Erlang VM ``beam.smp``), what the broker
spends on the work — on this 2-core machine, CPU the client cannot have. RabbitMQ's includes
its schedulers' busy-waiting before they sleep (Erlang's default ``+sbwt``, as this
RabbitMQ runs), which is part of what it costs here.

Runs interleave the targets (run 1 of each, then run 2 ...), each run starting with the next
target in turn. Each figure is the median of ``--runs`` runs with min–max, one JSON line each
(the shape ``benchmarks/render.py`` renders); lines carry the load average, since this machine
is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import pika

RABBIT = ("127.0.0.1", 5672)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Target:
    name = ""
    port = 0
    pid = 0  # the server's process (0: unknown, no server_cpu_us)

    def cpu(self) -> float:
        """The server process's CPU time so far (all its threads), in seconds."""
        if not self.pid:
            return float("nan")
        with open(f"/proc/{self.pid}/stat") as f:  # utime and stime, in clock ticks
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def prepare_queue(self, queue: str) -> dict[str, Any]:
        """Make ready a fresh queue; returns the queue_declare arguments to use."""
        return {}

    def close(self) -> None:
        pass


class TideMQ(Target):
    name = "tidemq"

    def __init__(self, durability: str = "always") -> None:
        self.durability = durability
        if durability != "always":
            self.name = f"tidemq-{durability}"
        self._dir = tempfile.TemporaryDirectory(prefix="amqp-bench-")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidemq.server", "--data", self._dir.name, "--port", "0",
             "--amqp-port", str(self.port), "--log-level", "WARNING"],
            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        buf = b""
        deadline = time.monotonic() + 30
        while b"tidemq amqp on" not in buf:
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError("tidemq did not start")
            buf += line
        m = re.search(rb"tidemq listening on [\d.]+:(\d+)", buf)
        assert m is not None
        from tidemq.client import Client

        self.admin = Client(f"tidemq://127.0.0.1:{int(m.group(1))}")

    def prepare_queue(self, queue: str) -> dict[str, Any]:
        self.admin.create_topic(f"amqp.q.{queue}", durability=self.durability, exist_ok=True)
        return {}

    def close(self) -> None:
        self.admin.close()
        self.proc.terminate()
        self.proc.wait(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._dir.cleanup()


class Null(Target):
    """``benchmarks/null_amqp.py``: a server that does no work, the client's own ceiling."""

    name = "null"

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "null_amqp.py"), str(self.port)],
            stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        if b"null amqp on" not in self.proc.stdout.readline():
            raise RuntimeError("null_amqp.py did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class RabbitMQ(Target):
    name = "rabbitmq"
    port = RABBIT[1]

    def __init__(self) -> None:
        # The Erlang VM that runs RabbitMQ (its other processes, epmd and the port helper,
        # do nothing per message).
        found = subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True)
        self.pid = int(found.stdout.split()[0]) if found.stdout.strip() else 0

    def prepare_queue(self, queue: str) -> dict[str, Any]:
        return {"x-queue-type": "quorum"}


def _params(t: Target) -> pika.ConnectionParameters:
    return pika.ConnectionParameters("127.0.0.1", t.port, heartbeat=0)


def _cleanup(t: Target, queue: str) -> None:
    conn = pika.BlockingConnection(_params(t))
    try:
        conn.channel().queue_delete(queue)
    finally:
        conn.close()


# --- programs ----------------------------------------------------------------------------------


class _Timed:
    """The wall-clock time, the client's CPU time and the server's over a program's timed
    part, started when made."""

    def __init__(self, t: Target) -> None:
        self.t = t
        self.s0, self.c0, self.t0 = t.cpu(), time.process_time(), time.perf_counter()

    def figures(self, n: int) -> dict[str, float]:
        """Throughput and CPU time per message for ``n`` messages, as of now."""
        elapsed, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        return {"msgs_per_s": n / elapsed, "client_cpu_us": cpu / n * 1e6,
                "server_cpu_us": (self.t.cpu() - self.s0) / n * 1e6}


def pika_publish_confirm(t: Target, n: int, size: int, window: int) -> dict[str, float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    args = t.prepare_queue(queue)
    conn = pika.BlockingConnection(_params(t))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments=args)
    ch.confirm_delivery()
    body = b"x" * size
    props = pika.BasicProperties(delivery_mode=2)
    timed = _Timed(t)
    for _ in range(n):
        ch.basic_publish("", queue, body, props)
    out = timed.figures(n)
    conn.close()
    _cleanup(t, queue)
    return out


def aiopika_publish_confirm(t: Target, n: int, size: int, window: int) -> dict[str, float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    args = t.prepare_queue(queue)

    async def main() -> dict[str, float]:
        conn = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{t.port}/")
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.declare_queue(queue, durable=True, arguments=args)
            body = b"x" * size
            ex = ch.default_exchange
            timed = _Timed(t)
            for start in range(0, n, window):
                await asyncio.gather(*(
                    ex.publish(aio_pika.Message(body, delivery_mode=2), routing_key=queue)
                    for _ in range(min(window, n - start))))
            return timed.figures(n)

    out = asyncio.run(main())
    _cleanup(t, queue)
    return out


def pika_consume_ack(t: Target, n: int, size: int, window: int) -> dict[str, float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    args = t.prepare_queue(queue)
    conn = pika.BlockingConnection(_params(t))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments=args)
    body = b"x" * size
    ch.confirm_delivery()
    for _ in range(n):
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    ch.basic_qos(prefetch_count=100)
    got = 0
    timed = _Timed(t)

    def on_message(c: Any, method: Any, props: Any, b: bytes) -> None:
        nonlocal got
        c.basic_ack(method.delivery_tag)
        got += 1
        if got >= n:
            c.stop_consuming()

    ch.basic_consume(queue, on_message)
    stop = threading.Timer(120, lambda: conn.add_callback_threadsafe(ch.stop_consuming))
    stop.start()
    ch.start_consuming()
    stop.cancel()
    out = timed.figures(max(got, 1))
    conn.close()
    _cleanup(t, queue)
    return out


def _fill(t: Target, queue: str, args: dict[str, Any], n: int, size: int) -> None:
    conn = pika.BlockingConnection(_params(t))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments=args)
    ch.confirm_delivery()
    body = b"x" * size
    for _ in range(n):
        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    conn.close()


def aiopika_consume_ack(t: Target, n: int, size: int, window: int) -> dict[str, float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    args = t.prepare_queue(queue)
    _fill(t, queue, args, n, size)

    async def main() -> dict[str, float]:
        conn = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{t.port}/")
        async with conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=100)
            q = await ch.declare_queue(queue, durable=True, arguments=args)
            got = 0
            timed = _Timed(t)
            async with q.iterator() as it:
                async for message in it:
                    await message.ack()
                    got += 1
                    if got >= n:
                        break
            return timed.figures(n)

    out = asyncio.run(asyncio.wait_for(main(), 120))
    _cleanup(t, queue)
    return out


def pika_e2e_latency(t: Target, n: int, size: int, window: int) -> dict[str, float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    args = t.prepare_queue(queue)
    n = min(n, 500)
    cconn = pika.BlockingConnection(_params(t))
    cch = cconn.channel()
    cch.queue_declare(queue, durable=True, arguments=args)
    lat: list[float] = []
    arrived = threading.Event()

    def on_message(c: Any, method: Any, props: Any, b: bytes) -> None:
        lat.append(time.perf_counter() - float(b.split(b"|", 1)[0]))
        c.basic_ack(method.delivery_tag)
        arrived.set()
        if len(lat) >= n:
            c.stop_consuming()

    cch.basic_qos(prefetch_count=100)
    cch.basic_consume(queue, on_message)
    th = threading.Thread(target=cch.start_consuming, daemon=True)
    th.start()
    pconn = pika.BlockingConnection(_params(t))
    pch = pconn.channel()
    pch.confirm_delivery()
    pad = b"x" * max(0, size - 20)
    timed = _Timed(t)
    for _ in range(n):
        arrived.clear()
        pch.basic_publish("", queue, f"{time.perf_counter():.9f}|".encode() + pad,
                          pika.BasicProperties(delivery_mode=2))
        arrived.wait(10)
    th.join(30)
    out = timed.figures(n)
    pconn.close()
    cconn.close()
    _cleanup(t, queue)
    lat.sort()
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1e3,
            "client_cpu_us": out["client_cpu_us"], "server_cpu_us": out["server_cpu_us"]}


_CPU = {"client_cpu_us": "µs/msg", "server_cpu_us": "µs/msg"}
PROGRAMS: dict[str, tuple[Callable[..., dict[str, float]], dict[str, str]]] = {
    "pika_publish_confirm": (pika_publish_confirm, {"msgs_per_s": "msgs/s", **_CPU}),
    "aiopika_publish_confirm": (aiopika_publish_confirm, {"msgs_per_s": "msgs/s", **_CPU}),
    "pika_consume_ack": (pika_consume_ack, {"msgs_per_s": "msgs/s", **_CPU}),
    "aiopika_consume_ack": (aiopika_consume_ack, {"msgs_per_s": "msgs/s", **_CPU}),
    "pika_e2e_latency": (pika_e2e_latency, {"p50_ms": "ms", "p99_ms": "ms", **_CPU}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("-n", type=int, default=2000, help="messages per run")
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--window", type=int, default=100, help="aio-pika publishes in flight")
    p.add_argument("--targets", default="tidemq,rabbitmq",
                   help="tidemq (durability always), tidemq-interval (the default "
                        "durability), rabbitmq (quorum queues), null (a server that does "
                        "no work)")
    p.add_argument("--programs", default=",".join(PROGRAMS))
    a = p.parse_args(argv)
    targets: list[Target] = []
    try:
        for target_name in a.targets.split(","):
            if target_name == "rabbitmq" and not _reachable(*RABBIT):
                print("rabbitmq: not reachable on 127.0.0.1:5672, skipped", file=sys.stderr)
                continue
            targets.append(RabbitMQ() if target_name == "rabbitmq"
                           else Null() if target_name == "null"
                           else TideMQ(durability="interval")
                           if target_name == "tidemq-interval" else TideMQ())
        # Runs interleave the targets (run 1 of each, then run 2 ...): this machine is
        # shared, and a load that comes and goes then falls on every target alike.
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for run in range(a.runs):
            for prog in a.programs.split(","):
                k = run % max(len(targets), 1)  # each target goes first in turn
                for target in targets[k:] + targets[:k]:
                    fn, _units = PROGRAMS[prog]
                    result = fn(target, a.n, a.size, a.window)
                    result["loadavg"] = os.getloadavg()[0]
                    results.setdefault((prog, target.name), []).append(result)
        for (prog, name), runs in results.items():
            for key, unit in PROGRAMS[prog][1].items():
                values = [r[key] for r in runs if r[key] == r[key]]  # NaN: not known
                if not values:
                    continue
                print(json.dumps({
                    "bench": "amqp", "figure": f"{prog}.{key}.{name}", "unit": unit,
                    "median": round(statistics.median(values), 4),
                    "min": round(min(values), 4), "max": round(max(values), 4),
                    "runs": len(values), "n": a.n, "size": a.size,
                    "cpu_count": os.cpu_count(),
                    # the mean of the 1-minute load average after each of its runs
                    "loadavg_1m": round(statistics.mean(r["loadavg"] for r in runs), 2)}),
                    flush=True)
    finally:
        for target in targets:
            target.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
