"""Failover of the ``nats://`` backend: a 3-node JetStream cluster, R3 topics, kill -9 of the
stream leader while a producer and a consumer run through the TideMQ transport.

Each run starts three ``nats-server`` processes on loopback ports (fresh store folders), creates
an R3 topic, runs one producer (sequential publishes, each confirmed) and one shared-group
consumer (receive, ack, flush every batch), each a thread with its own blocking
``tidemq.Client("nats://...")`` (the cluster's three addresses in the URL), kills
the leader of partition 0's stream with SIGKILL a few seconds in, keeps going, then drains and
checks:

- **lost**: confirmed publishes never delivered (must be 0);
- **after ack**: messages delivered again after their ack was confirmed (must be 0);
- redelivered: other repeats (at-least-once: a delivery whose ack was not confirmed);
- the pause: the longest gap between two publish confirmations, and between two deliveries
  while the producer runs; and the longest time from a confirmation to the first delivery
  (a message the server sent to a connection that broke waits for its lease, ``ack_timeout``,
  here 5 s, before it is delivered again).

Usage: ``.venv/bin/python benchmarks/nats_failover.py [--runs 5] [--seconds 12]
[--kill-at 4] [--partitions 3] [--server /usr/sbin/nats-server] [--base-port 14222]``.
Needs the ``peers`` extra (nats-py) and a ``nats-server`` binary (Debian's package). Exits 1 if
any run lost a confirmed message or redelivered one after a confirmed ack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tidemq  # noqa: E402
from tidemq.backends import connect_nats  # noqa: E402
from tidemq.errors import TideMQError  # noqa: E402

NODES = 3


@dataclass
class Cluster:
    """Three nats-server processes on loopback, each with its own store folder."""

    binary: str
    base_port: int
    root: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def port(self, i: int) -> int:
        return self.base_port + i

    def route_port(self, i: int) -> int:
        return self.base_port + 1000 + i

    @property
    def url(self) -> str:
        return "nats://" + ",".join(f"127.0.0.1:{self.port(i)}" for i in range(NODES))

    def start(self) -> None:
        for i in range(NODES):
            name = f"n{i + 1}"
            store = self.root / name
            store.mkdir(parents=True, exist_ok=True)
            routes = ", ".join(f"nats-route://127.0.0.1:{self.route_port(j)}"
                               for j in range(NODES) if j != i)
            conf = self.root / f"{name}.conf"
            conf.write_text(
                f'server_name: {name}\nlisten: "127.0.0.1:{self.port(i)}"\n'
                f'jetstream {{ store_dir: "{store}" }}\n'
                f'cluster {{ name: tidemq-failover, listen: "127.0.0.1:{self.route_port(i)}", '
                f"routes: [{routes}] }}\n")
            log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
            self.procs[name] = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log,
                                                stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)  # kill -9: no shutdown, no flush
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@dataclass
class RunResult:
    run: int
    confirmed: int = 0
    delivered_distinct: int = 0
    lost: int = 0
    redelivered_after_confirmed_ack: int = 0
    redelivered_other: int = 0
    publish_errors: int = 0
    killed: str = ""
    leader_after: str = ""
    publish_pause_s: float = 0.0
    consume_pause_s: float = 0.0
    max_latency_s: float = 0.0
    ok: bool = False
    notes: list[str] = field(default_factory=list)


async def _wait_ready(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            t = await connect_nats(url, prefix="probe", replicas=3, request_timeout=2.0)
            await t.close()
            return
        except Exception as exc:  # not up, or no JetStream meta leader yet
            last = exc
            await asyncio.sleep(0.5)
    raise RuntimeError(f"cluster not ready after {timeout}s: {last!r}")


def _gap(times: list[float], start: float, end: float) -> float:
    """The longest gap between consecutive times that ends in [start, end]."""
    times = sorted(times)
    best = 0.0
    for a, b in zip(times, times[1:], strict=False):
        if start <= b <= end:
            best = max(best, b - a)
    return best


async def _leader(url: str, prefix: str, topic: str) -> str:
    """The current leader of partition 0's stream (asked through the transport)."""
    t = await connect_nats(url, prefix=prefix, request_timeout=2.0)
    try:
        tm = await t.topic(topic)
        info = await t.js.stream_info(tm.stream(t.prefix, 0))
        return str((info.get("cluster") or {}).get("leader", ""))
    finally:
        await t.close()


def one_run(run: int, args: argparse.Namespace) -> RunResult:
    """One run: a producer thread and a consumer thread, each with its own blocking
    ``tidemq.Client("nats://...")``, as an application would run them."""
    res = RunResult(run)
    root = Path(tempfile.mkdtemp(prefix="tidemq-failover-"))
    cluster = Cluster(args.server, args.base_port, root)
    cluster.start()
    clients: list[tidemq.Client] = []
    prefix = f"fo{run}"
    try:
        asyncio.run(_wait_ready(cluster.url))
        url = (f"{cluster.url}?prefix={prefix}&replicas=3&request_timeout=2&publish_timeout=30"
               "&pull_wait=0.5&owner_ttl=3&reconnect_time_wait=0.1")
        producer_mq, consumer_mq = tidemq.Client(url), tidemq.Client(url)
        clients += [producer_mq, consumer_mq]
        topic = "failover.orders"
        producer_mq.create_topic(topic, partitions=args.partitions)
        sub = consumer_mq.subscribe(topic, "billing", ack_timeout=5.0, prefetch=200)

        confirmed: dict[bytes, float] = {}
        pub_times: list[float] = []
        delivered: dict[bytes, int] = {}
        first_seen: dict[bytes, float] = {}
        deliver_times: list[float] = []
        acked_confirmed: set[bytes] = set()
        stop_producing, stop_consuming = threading.Event(), threading.Event()

        def produce() -> None:
            n = 0
            while not stop_producing.is_set():
                body = f"{n:08d}".encode()
                try:
                    producer_mq.publish(topic, body)
                except TideMQError as exc:
                    res.publish_errors += 1
                    res.notes.append(f"publish {n}: {exc.message[:100]}")
                    time.sleep(0.05)
                    continue
                now = time.monotonic()
                confirmed[body] = now
                pub_times.append(now)
                n += 1

        def consume() -> None:
            while not stop_consuming.is_set():
                try:
                    batch = sub.receive(100, timeout=0.25)
                except TideMQError as exc:
                    res.notes.append(f"receive: {exc.message[:100]}")
                    time.sleep(0.1)
                    continue
                if not batch:
                    continue
                now = time.monotonic()
                for m in batch:
                    if m.body in acked_confirmed:
                        res.redelivered_after_confirmed_ack += 1
                    elif m.body in delivered:
                        res.redelivered_other += 1
                    delivered[m.body] = delivered.get(m.body, 0) + 1
                    first_seen.setdefault(m.body, now)
                    deliver_times.append(now)
                try:
                    sub.ack(batch)
                    sub.flush()
                except TideMQError:
                    continue  # not confirmed: those may come again (at-least-once)
                acked_confirmed.update(m.body for m in batch)

        threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
        for th in threads:
            th.start()
        time.sleep(args.kill_at)
        leader = asyncio.run(_leader(cluster.url, prefix, topic))
        res.killed = leader
        kill_time = time.monotonic()
        cluster.kill(leader)
        time.sleep(max(0.0, args.seconds - args.kill_at))
        stop_producing.set()
        threads[0].join()
        stop_time = time.monotonic()
        # Drain: every confirmed message must arrive.
        end = time.monotonic() + 60
        while time.monotonic() < end and not set(confirmed) <= set(delivered):
            time.sleep(0.25)
        stop_consuming.set()
        threads[1].join()
        with contextlib.suppress(Exception):
            res.leader_after = asyncio.run(_leader(cluster.url, prefix, topic))
        res.confirmed = len(confirmed)
        res.delivered_distinct = len(delivered)
        res.lost = len(set(confirmed) - set(delivered))
        res.publish_pause_s = round(_gap(pub_times, kill_time, stop_time), 3)
        res.consume_pause_s = round(_gap(deliver_times, kill_time, stop_time), 3)
        res.max_latency_s = round(max((first_seen[b] - c for b, c in confirmed.items()
                                       if b in first_seen), default=0.0), 3)
        res.ok = res.lost == 0 and res.redelivered_after_confirmed_ack == 0 and res.confirmed > 0
    finally:
        for mq in clients:
            with contextlib.suppress(Exception):
                mq.close()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--kill-at", type=float, default=4.0)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--server", default=shutil.which("nats-server") or "/usr/sbin/nats-server")
    ap.add_argument("--base-port", type=int, default=14222)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--figures", help="also write the summary as JSON lines for "
                                      "benchmarks/render.py (docs/figures/nats_failover.jsonl)")
    args = ap.parse_args()
    if not os.path.exists(args.server):
        print(f"no nats-server binary at {args.server}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    version = subprocess.run([args.server, "--version"], capture_output=True, text=True).stdout
    print(f"{version.strip()}, {NODES} nodes on 127.0.0.1:{args.base_port}+, R3, "
          f"{args.partitions} partitions, {args.seconds:g} s runs, kill -9 at {args.kill_at:g} s")
    results = []
    for run in range(1, args.runs + 1):
        res = one_run(run, args)
        results.append(res)
        print(f"run {run}: killed {res.killed or '?'} -> leader {res.leader_after or '?'}; "
              f"confirmed {res.confirmed}, lost {res.lost}, delivered again after a confirmed "
              f"ack {res.redelivered_after_confirmed_ack}, other redeliveries "
              f"{res.redelivered_other}, publish errors {res.publish_errors}; pause: publish "
              f"{res.publish_pause_s:.2f} s, consume {res.consume_pause_s:.2f} s, longest "
              f"confirm-to-delivery {res.max_latency_s:.2f} s; "
              f"{'OK' if res.ok else 'FAIL'}", flush=True)
        for note in res.notes[:5]:
            print(f"    {note}")
    pubs = [r.publish_pause_s for r in results]
    cons = [r.consume_pause_s for r in results]
    print(f"publish pause p50 {statistics.median(pubs):.2f} s, max {max(pubs):.2f} s; "
          f"consume pause p50 {statistics.median(cons):.2f} s, max {max(cons):.2f} s; "
          f"longest confirm-to-delivery {max(r.max_latency_s for r in results):.2f} s; "
          f"lost {sum(r.lost for r in results)} of {sum(r.confirmed for r in results)} "
          f"confirmed; {sum(r.ok for r in results)}/{len(results)} runs OK")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    if args.figures:
        load = os.getloadavg()[0]

        def line(figure: str, unit: str, values: list[float]) -> str:
            return json.dumps({"bench": "nats_failover", "figure": figure, "unit": unit,
                               "median": statistics.median(values), "min": min(values),
                               "max": max(values), "runs": len(values),
                               "cpu_count": os.cpu_count(), "loadavg_1m": round(load, 2)})

        Path(args.figures).write_text("\n".join([
            line("publish_pause", "s (longest gap between confirmations across the kill)", pubs),
            line("consume_pause", "s (longest gap between deliveries across the kill)", cons),
            line("confirm_to_delivery_max", "s", [r.max_latency_s for r in results]),
            line("confirmed", "messages per run", [float(r.confirmed) for r in results]),
            line("lost", "confirmed messages never delivered, per run",
                 [float(r.lost) for r in results]),
            line("delivered_after_confirmed_ack", "per run",
                 [float(r.redelivered_after_confirmed_ack) for r in results]),
            line("runs_ok", "1 = no loss and no delivery after a confirmed ack",
                 [float(r.ok) for r in results]),
        ]) + "\n")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
