"""Failover of the ``nats://`` backend: a 3-node JetStream cluster, R3 topics, kill -9 of the
stream leader while a producer and a consumer run through the TideMQ transport.

Each run starts three ``nats-server`` processes on loopback ports (fresh store folders), creates
an R3 topic, runs one producer (sequential publishes, each confirmed) and one shared-group
consumer (receive, ack, flush every batch) through :func:`tidemq.backends.connect_nats`, kills
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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tidemq.backends import NatsTransport, connect_nats  # noqa: E402
from tidemq.broker._types import GroupSettings, TopicConfig  # noqa: E402
from tidemq.errors import TideMQError  # noqa: E402
from tidemq.storage import Record  # noqa: E402

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


async def one_run(run: int, args: argparse.Namespace) -> RunResult:
    res = RunResult(run)
    root = Path(tempfile.mkdtemp(prefix="tidemq-failover-"))
    cluster = Cluster(args.server, args.base_port, root)
    cluster.start()
    t: NatsTransport | None = None
    try:
        await _wait_ready(cluster.url)
        t = await connect_nats(cluster.url, prefix=f"fo{run}", replicas=3, request_timeout=2.0,
                               publish_timeout=30.0, pull_wait=0.5, owner_ttl=3.0,
                               reconnect_time_wait=0.1)
        topic = "failover.orders"
        await t.create_topic(topic, TopicConfig(partitions=args.partitions), False)
        tm = await t.topic(topic)
        member = await t.subscribe(topic, "billing", GroupSettings(ack_timeout=5.0), 200)
        stream0 = tm.stream(t.prefix, 0)

        confirmed: dict[bytes, float] = {}
        pub_times: list[float] = []
        delivered: dict[bytes, int] = {}
        first_seen: dict[bytes, float] = {}
        deliver_times: list[float] = []
        acked_confirmed: set[bytes] = set()
        stop_producing = asyncio.Event()
        kill_time = 0.0

        async def produce() -> None:
            n = 0
            while not stop_producing.is_set():
                body = f"{n:08d}".encode()
                try:
                    assert t is not None
                    await t.publish(topic, [Record(body)])
                except TideMQError as exc:
                    res.publish_errors += 1
                    res.notes.append(f"publish {n}: {exc.message[:100]}")
                    await asyncio.sleep(0.05)
                    continue
                now = time.monotonic()
                confirmed[body] = now
                pub_times.append(now)
                n += 1

        async def consume(until: asyncio.Event) -> None:
            assert t is not None
            while not until.is_set():
                try:
                    batch = await t.receive(member, 100, 0.25)
                except TideMQError as exc:
                    res.notes.append(f"receive: {exc.message[:100]}")
                    await asyncio.sleep(0.1)
                    continue
                if not batch:
                    continue
                now = time.monotonic()
                for d in batch:
                    if d.body in acked_confirmed:
                        res.redelivered_after_confirmed_ack += 1
                    elif d.body in delivered:
                        res.redelivered_other += 1
                    delivered[d.body] = delivered.get(d.body, 0) + 1
                    first_seen.setdefault(d.body, now)
                    deliver_times.append(now)
                try:
                    await t.ack(member, [d.id for d in batch])
                    await t.flush(member)
                except TideMQError:
                    continue  # not confirmed: those may come again (at-least-once)
                acked_confirmed.update(d.body for d in batch)

        done_consuming = asyncio.Event()
        producer = asyncio.create_task(produce())
        consumer = asyncio.create_task(consume(done_consuming))
        await asyncio.sleep(args.kill_at)
        info = await t.js.stream_info(stream0)
        leader = (info.get("cluster") or {}).get("leader", "")
        res.killed = leader
        kill_time = time.monotonic()
        cluster.kill(leader)
        await asyncio.sleep(max(0.0, args.seconds - args.kill_at))
        stop_producing.set()
        await producer
        stop_time = time.monotonic()
        # Drain: every confirmed message must arrive.
        end = time.monotonic() + 60
        while time.monotonic() < end and not set(confirmed) <= set(delivered):
            await asyncio.sleep(0.25)
        done_consuming.set()
        await consumer
        with contextlib.suppress(TideMQError):
            info = await t.js.stream_info(stream0)
            res.leader_after = (info.get("cluster") or {}).get("leader", "")
        res.confirmed = len(confirmed)
        res.delivered_distinct = len(delivered)
        res.lost = len(set(confirmed) - set(delivered))
        res.publish_pause_s = round(_gap(pub_times, kill_time, stop_time), 3)
        res.consume_pause_s = round(_gap(deliver_times, kill_time, stop_time), 3)
        res.max_latency_s = round(max((first_seen[b] - c for b, c in confirmed.items()
                                       if b in first_seen), default=0.0), 3)
        res.ok = res.lost == 0 and res.redelivered_after_confirmed_ack == 0 and res.confirmed > 0
    finally:
        if t is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t.close(), 15)
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
        res = asyncio.run(one_run(run, args))
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
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
