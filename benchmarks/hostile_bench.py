#!/usr/bin/env python3
"""Hostile peers against ``tidemq serve``: what each attack costs an innocent client.

Starts a real server (this Python, a fresh temporary data folder, 127.0.0.1, a free port),
measures an innocent client while nothing else happens (the *quiet* figures), then once per
attack while a separate attacker process (forked, so it has its own GIL) runs it:

- ``ping_p50_ms`` / ``ping_p99_ms`` / ``ping_max_ms``: round trips of ``Ping`` frames on a raw
  connection of the innocent client, one every 2 ms for ``--seconds / 2`` s;
- ``publish_per_s``: messages/s the innocent ``AsyncClient`` gets confirmed (100-byte bodies,
  per-message ``publish``, 500 in flight, durability ``interval``) for ``--seconds / 2`` s,
  and ``publish_vs_quiet`` (target >= 0.5), next to ``ping_p99_ms`` (target <= 50);
- ``rss_growth_mib``: the server's resident memory at the end of the attack minus before it.

Attacks (``--only NAME,...`` to pick): ``slow_loris`` (900 connections dribbling a Hello a byte
at a time, reconnecting when cut off), ``pipelining`` (4 connections x 2,000 pipelined
``GroupDescribe`` of a group with a ~60 KiB filter, never reading), ``huge_acks`` (a stream
of Ack frames of 10,000 messages each), ``big_messages`` (a producer and a consumer of
512 KiB messages at full speed), ``conn_flood`` (100 connections opened and closed over and
over), ``garbage`` (connections sending 2 KiB of random bytes), ``half_open`` (300 connections
holding leases, then silent without a FIN).

First, ``idle_connections`` (on the fresh server, before any attack has grown its heap):
1,000 connections that completed their Hello and stay idle; ``rss_growth_mib`` (target
<= 50) and ``kib_per_connection``.

Run:  .venv/bin/python benchmarks/hostile_bench.py [--runs 3] [--seconds 4] [--only NAMES]
          [--loop auto|asyncio|uvloop] [--src DIR]

Each of ``--runs`` passes (default 3) starts a fresh server and prints its lines (with
``"run"``); then one ``"summary"`` line per scenario and figure gives the median, min and max.

``--src DIR`` runs the server from another source tree (e.g. an older revision exported with
``git archive``), for before/after figures. Output: one JSON line per scenario, e.g.

  {"bench": "hostile", "attack": "pipelining", "ping_p50_ms": 0.21, "ping_p99_ms": 0.9,
   "ping_max_ms": 3.1, "publish_per_s": 61000, "publish_vs_quiet": 0.93, "rss_growth_mib": 3.2,
   "cpu_count": 2, "loadavg_1m": 1.3}

The machine's load average is printed with each line: the attacker (at nice 10), the server
and the innocent client share its cores, so expect noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _procs import publish_for  # noqa: E402

import tidemq  # noqa: E402
from tidemq import protocol as P  # noqa: E402
from tidemq.storage import encode_bodies  # noqa: E402

ATTACKER = "127.0.0.2"  # loopback too: the per-address limit does not hit the innocent client
ATTACKER2 = "127.0.0.3"
HEADER = struct.Struct("<IBBHI")
BIG = 512 * 1024


# --- the server ---------------------------------------------------------------------------------


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_server(data: str, loop: str, src: str | None) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "tidemq.server", "--data", data, "--port", "0",
           "--log-level", "WARNING", "--loop", loop]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            preexec_fn=_raise_nofile)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    m = re.search(r"listening on [\d.]+:(\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(m.group(1))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --- raw sessions -------------------------------------------------------------------------------


def hello_bytes(name: str = "bench") -> bytes:
    return P.encode(P.Hello(request_id=1, versions=[1], client_id=name, max_frame_size=1 << 24))


def session(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> tuple[socket.socket, P.Decoder]:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    s.sendall(hello_bytes())
    dec = P.Decoder(1 << 24)
    while True:
        f = dec.next_frame()
        if f is not P.NEED_DATA:
            assert isinstance(f, P.HelloOk), f
            return s, dec
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed during the handshake")
        dec.feed(data)


def read_frame(s: socket.socket, dec: P.Decoder, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while (f := dec.next_frame()) is P.NEED_DATA:
        s.settimeout(max(0.001, deadline - time.monotonic()))
        data = s.recv(1 << 20)
        if not data:
            return None
        dec.feed(data)
    return f


def expect(s: socket.socket, dec: P.Decoder, kind: type, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        f = read_frame(s, dec, max(0.001, deadline - time.monotonic()))
        if f is None or isinstance(f, kind | P.Error):
            return f
        if isinstance(f, P.Ping):
            s.sendall(P.encode(P.Pong(request_id=f.request_id)))


# --- attacks (each runs in a forked process until killed) ---------------------------------------


def attack_slow_loris(port: int) -> None:
    hello = hello_bytes("loris")
    socks: list[tuple[socket.socket, int]] = []
    while True:
        while len(socks) < 900:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2,
                                             source_address=(ATTACKER, 0))
                s.setblocking(False)
                socks.append((s, 0))
            except OSError:
                time.sleep(0.05)
                break
        alive = []
        for s, i in socks:
            try:
                s.send(hello[i % len(hello):i % len(hello) + 1])
                with contextlib.suppress(BlockingIOError):
                    if s.recv(4096) == b"":
                        raise ConnectionError
                alive.append((s, i + 1))
            except OSError:
                s.close()
        socks = alive
        time.sleep(0.1)


def attack_pipelining(port: int, topic: str) -> None:
    one = P.encode(P.GroupDescribe(request_id=7, topic=topic, group="wide"))
    keep = []
    for _ in range(4):
        s, _ = session(port, ATTACKER)
        s.setblocking(False)
        data = memoryview(one * 2000)
        with contextlib.suppress(BlockingIOError):
            while data:
                data = data[s.send(data):]
        keep.append(s)
    while True:
        time.sleep(1)


def attack_huge_acks(port: int, topic: str) -> None:
    s, dec = session(port, ATTACKER)
    s.sendall(P.encode(P.Subscribe(request_id=2, topic=topic, group="acker", prefetch=1000)))
    ok = expect(s, dec, P.SubscribeOk)
    sid = ok.subscription_id
    frames = b"".join(P.encode(P.Ack(request_id=10 + i, subscription_id=sid,
                                     ranges=[(0, (i % 2) * 10_000, (i % 2) * 10_000 + 9_999)]))
                      for i in range(10))
    s.setblocking(False)
    while True:
        with contextlib.suppress(BlockingIOError):
            s.send(frames)
        with contextlib.suppress(BlockingIOError):
            while s.recv(1 << 20):
                pass
        time.sleep(0.001)


def attack_big_messages(port: int, topic: str) -> None:
    s, dec = session(port, ATTACKER)
    s.sendall(P.encode(P.Subscribe(request_id=2, topic=topic, group="big", prefetch=100)))
    ok = expect(s, dec, P.SubscribeOk)
    sid = ok.subscription_id
    batch = encode_bodies([b"B" * BIG])
    rid = 100
    while True:
        rid += 1
        s.sendall(P.encode(P.Publish(request_id=rid, topic=topic, partition=0, batch=batch)))
        f = read_frame(s, dec, 10)
        while f is not None and not isinstance(f, P.PublishOk | P.Error):
            if isinstance(f, P.Deliver):
                ranges = [(p, o, o) for p, o in zip(f.partitions, f.offsets, strict=True)]
                rid += 1
                s.sendall(P.encode(P.Ack(request_id=rid, subscription_id=sid, ranges=ranges))
                          + P.encode(P.Credit(request_id=0, subscription_id=sid, n=len(ranges))))
            f = read_frame(s, dec, 10)


def attack_conn_flood(port: int) -> None:
    while True:
        socks = []
        for _ in range(100):
            with contextlib.suppress(OSError):
                s = socket.create_connection(("127.0.0.1", port), timeout=2,
                                             source_address=(ATTACKER2, 0))
                s.sendall(hello_bytes("flood"))
                socks.append(s)
        for s in socks:
            s.close()


def attack_garbage(port: int) -> None:
    rnd = random.Random(7)
    while True:
        with contextlib.suppress(OSError):
            s = socket.create_connection(("127.0.0.1", port), timeout=2,
                                         source_address=(ATTACKER, 0))
            if rnd.random() < 0.5:
                s.sendall(hello_bytes("junk"))
            s.sendall(rnd.randbytes(2048))
            s.close()


def attack_half_open(port: int, topic: str) -> None:
    keep = []
    for _ in range(300):
        s, dec = session(port, ATTACKER)
        s.sendall(P.encode(P.Subscribe(request_id=2, topic=topic, group="ghosts", prefetch=10)))
        expect(s, dec, P.SubscribeOk)
        keep.append(s)  # then silent: no reads, no pongs, no FIN
    while True:
        time.sleep(1)


# --- the innocent client ------------------------------------------------------------------------


def _pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


def measure_pings(port: int, seconds: float) -> dict[str, float]:
    s, dec = session(port)
    rtts: list[float] = []
    lost = 0
    deadline = time.monotonic() + seconds
    rid = 10
    try:
        while time.monotonic() < deadline:
            rid += 1
            t0 = time.perf_counter()
            s.sendall(P.encode(P.Ping(request_id=rid)))
            try:
                f = expect(s, dec, P.Pong, 5.0)
            except TimeoutError:
                lost += 1
                continue
            assert isinstance(f, P.Pong) and f.request_id == rid, f
            rtts.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.002)
    finally:
        s.close()
    return {"ping_p50_ms": round(statistics.median(rtts), 3),
            "ping_p99_ms": round(_pct(rtts, 99), 3), "ping_max_ms": round(max(rtts), 3),
            "pings": len(rtts), "pings_lost": lost}


async def _publish(url: str, topic: str, seconds: float) -> float:
    async with tidemq.AsyncClient(url) as mq:
        await mq.publish(topic, b"warm")
        return await publish_for(mq, topic, b"p" * 100, seconds, 500)


def measure(port: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = measure_pings(port, seconds / 2)
    rate = asyncio.run(_publish(f"tidemq://127.0.0.1:{port}", "innocent", seconds / 2))
    out["publish_per_s"] = round(rate)
    return out


# --- scenarios ----------------------------------------------------------------------------------


def _setup(port: int) -> dict[str, str]:
    """Topics the attacks use (made by a client of their own before the attack starts)."""
    url = f"tidemq://127.0.0.1:{port}"
    with tidemq.Client(url) as mq:
        mq.create_topic("innocent")
        mq.create_topic("amp")
        mq.create_group("amp", "wide", filter={"headers": {
            f"h{i}": {"any_of": [f"v{i}-{j}-" + "x" * 40 for j in range(20)]} for i in range(60)}})
        mq.create_topic("acks")
        for _ in range(20):
            mq.publish_batch("acks", [b"a"] * 1000)
        mq.create_topic("big")
        mq.create_topic("ghosts")
        mq.publish_batch("ghosts", [b"g"] * 3000)
    return {"pipelining": "amp", "huge_acks": "acks", "big_messages": "big", "half_open": "ghosts"}


ATTACKS: dict[str, Callable[..., None]] = {
    "slow_loris": attack_slow_loris,
    "pipelining": attack_pipelining,
    "huge_acks": attack_huge_acks,
    "big_messages": attack_big_messages,
    "conn_flood": attack_conn_flood,
    "garbage": attack_garbage,
    "half_open": attack_half_open,
}


def idle_connections(port: int, pid: int, n: int = 1000) -> dict[str, Any]:
    before = rss_bytes(pid)
    socks = []
    try:
        for _ in range(n):
            s, _ = session(port, ATTACKER)
            socks.append(s)
        time.sleep(1.0)
        after = rss_bytes(pid)
        pings = measure_pings(port, 1.0)
    finally:
        for s in socks:
            s.close()
    growth = after - before
    return {"connections": n, "rss_growth_mib": round(growth / 2**20, 2),
            "kib_per_connection": round(growth / n / 1024, 2), **pings}


def _niced(attack: Callable[..., None], *args: Any) -> None:
    """Run ``attack`` at nice 10: on this shared 2-core box a local attacker spinning at full
    speed would otherwise take the server's CPU away, which a remote one cannot; what it makes
    the *server* spend is what is measured."""
    os.nice(10)
    attack(*args)


def emit(record: dict[str, Any]) -> None:
    record = {"bench": "hostile", **record, "cpu_count": os.cpu_count(),
              "loadavg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(record), flush=True)


def one_run(a: argparse.Namespace, names: list[str], run: int) -> list[dict[str, Any]]:
    """One pass over the scenarios on a fresh server; returns (and prints) their records."""
    out: list[dict[str, Any]] = []

    def record(rec: dict[str, Any]) -> None:
        rec = {"run": run, **rec}
        out.append(rec)
        emit(rec)

    tmp = tempfile.mkdtemp(prefix="tidemq-hostile-")
    proc, port = start_server(os.path.join(tmp, "data"), a.loop, a.src)
    ctx = multiprocessing.get_context("fork")
    try:
        topics = _setup(port)
        quiet = measure(port, a.seconds)
        record({"attack": "quiet", **quiet, "rss_mib": round(rss_bytes(proc.pid) / 2**20, 1)})
        for name in names:
            if name == "idle_connections":
                record({"attack": name, **idle_connections(port, proc.pid)})
                continue
            before = rss_bytes(proc.pid)
            args = (port, topics[name]) if name in topics else (port,)
            attacker = ctx.Process(target=_niced, args=(ATTACKS[name], *args), daemon=True)
            attacker.start()
            time.sleep(1.0)  # let it build up
            try:
                got = measure(port, a.seconds)
            except Exception as exc:  # the innocent client was not served
                got = {"error": f"{type(exc).__name__}: {exc}"}
            peak = rss_bytes(proc.pid)
            attacker.kill()
            attacker.join(5)
            if "publish_per_s" in got:
                got["publish_vs_quiet"] = round(got["publish_per_s"] / quiet["publish_per_s"], 2)
            record({"attack": name, **got, "rss_growth_mib": round((peak - before) / 2**20, 1),
                    "server_alive": proc.poll() is None})
            time.sleep(0.5)
            if proc.poll() is not None:
                break
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def summarize(records: list[dict[str, Any]]) -> None:
    """Median, min and max over the runs of every numeric figure, per scenario."""
    by: dict[tuple[str, str], list[float]] = {}
    for rec in records:
        for k, v in rec.items():
            if k in ("run", "cpu_count", "loadavg_1m") or isinstance(v, bool) or \
                    not isinstance(v, int | float):
                continue
            by.setdefault((rec["attack"], k), []).append(float(v))
    for (attack, metric), values in by.items():
        emit({"summary": True, "attack": attack, "metric": metric,
              "median": round(statistics.median(values), 3), "min": min(values),
              "max": max(values), "runs": len(values)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=4.0, help="measuring time per scenario")
    ap.add_argument("--only", default="", help="comma-separated attack names (default: all)")
    ap.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    ap.add_argument("--src", help="run the server from this source tree (PYTHONPATH)")
    ap.add_argument("--runs", type=int, default=3,
                    help="passes, each on a fresh server; then one summary line per figure")
    a = ap.parse_args(argv)
    _raise_nofile()
    names = [n for n in a.only.split(",") if n] or ["idle_connections", *ATTACKS]
    records: list[dict[str, Any]] = []
    for run in range(a.runs):
        records += one_run(a, names, run)
    summarize(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
