#!/usr/bin/env python3
"""Where the time of one blocking publish goes (issue 10's "publish one call at a time").

For ``tidemq.Client.publish`` one call at a time against ``tidemq serve`` — with its defaults
(client and server poll before they sleep, ``spin_us``, docs/server.md) and with polling off on
both sides (``tidemq-nospin``) — and redis-py's XADD one call at a time against a private
``redis-server`` (``appendfsync everysec``: TideMQ ``interval``'s durability class), in the same
run, prints per call:

- ``rtt_us``: wall time of one call (the figure the throughput is 1e6 / rtt of);
- ``server_us``: the server process's CPU (utime + stime, every thread) per call;
- ``client_us``: this process's CPU per call;
- for TideMQ also ``server_pipelined_us``: the server's CPU per one-message Publish frame when
  50,000 such frames arrive back to back on one connection (no wait between them). The
  difference to ``server_us`` is what one request/answer round trip costs the server beyond
  handling the frame: the event loop waking, reading, writing, and the kernel's loopback TCP.

Run: .venv/bin/python benchmarks/roundtrip_floor.py [--runs 3] [--calls 20000]

JSON lines, one per run and system, then a summary line (median, min, max) per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import tidemq
from tidemq import protocol as P
from tidemq.storage import encode_bodies

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _procs import cpu_ticks, start_redis  # noqa: E402

BODY = b"x" * 100
_UNITS = {"rtt_us": "µs per call", "server_us": "server CPU µs per call",
          "client_us": "client CPU µs per call", "msgs_per_s": "calls/s",
          "server_pipelined_us": "server CPU µs per frame, back to back",
          "appendonly": "1 = AOF on"}
TICK = os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _measure(pid: int, calls: int, one: Any) -> dict[str, float]:
    for _ in range(500):
        one()
    c0, s0, t0 = cpu_ticks(pid), _self_cpu(), time.perf_counter()
    for _ in range(calls):
        one()
    dt = time.perf_counter() - t0
    c1, s1 = cpu_ticks(pid), _self_cpu()
    return {"rtt_us": dt / calls * 1e6, "server_us": (c1 - c0) / TICK / calls * 1e6,
            "client_us": (s1 - s0) / calls * 1e6, "msgs_per_s": calls / dt}


def _pipelined(port: int, pid: int, topic: str, frames: int) -> float:
    """Server CPU (µs) per one-message Publish frame sent back to back."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        s.sendall(P.encode(P.Hello(request_id=1, versions=[1], client_id="floor",
                                   max_frame_size=1 << 20)))
        d = P.Decoder()
        while d.next_frame() is P.NEED_DATA:
            d.feed(s.recv(65536))
        batch = encode_bodies([BODY])
        data = b"".join(P.encode(P.Publish(request_id=i + 2, topic=topic, partition=0,
                                           batch=batch)) for i in range(frames))
        c0 = cpu_ticks(pid)
        sender = threading.Thread(target=s.sendall, args=(data,))
        sender.start()
        got = 0
        while got < frames:
            d.feed(s.recv(1 << 20))
            while d.next_frame() is not P.NEED_DATA:
                got += 1
        c1 = cpu_ticks(pid)
        sender.join()
        return (c1 - c0) / TICK / frames * 1e6
    finally:
        s.close()


def _start_server(data: str, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidemq.cli", "serve", "--data", data, "--port", "0", *extra],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "tidemq listening on HOST:PORT"
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def run_tidemq(calls: int, frames: int, *, spin: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _start_server(tmp, *(() if spin else ("--spin-us", "0")))
        try:
            mq = tidemq.Client(f"tidemq://127.0.0.1:{port}", spin_us=None if spin else 0)
            topic = f"floor.{os.getpid()}.{time.monotonic_ns()}"
            mq.create_topic(topic, partitions=1, durability="interval")
            row = _measure(proc.pid, calls, lambda: mq.publish(topic, BODY))
            mq.close()
            row["server_pipelined_us"] = _pipelined(port, proc.pid, topic, frames)
            return row
        finally:
            proc.terminate()
            proc.wait(10)


def run_redis(calls: int) -> dict[str, float] | None:
    try:
        import redis
    except ImportError:
        return None
    try:
        srv = start_redis("everysec")
    except Exception as exc:  # noqa: BLE001 - no redis-server here: say so, measure the rest
        print(json.dumps({"bench": "roundtrip_floor", "system": "redis-xadd",
                          "error": f"cannot start redis-server: {exc}"}), flush=True)
        return None
    r = redis.Redis(host="127.0.0.1", port=srv.port)
    stream = f"floor.{os.getpid()}.{time.monotonic_ns()}"
    try:
        row = _measure(srv.proc.pid, calls, lambda: r.xadd(stream, {"b": BODY}))
        pers = r.info("persistence")
        row["appendonly"] = float(pers.get("aof_enabled", 0))
        return row
    finally:
        r.close()
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--frames", type=int, default=50_000)
    args = ap.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"tidemq": [], "tidemq-nospin": [],
                                               "redis-xadd": []}
    for run in range(1, args.runs + 1):  # the same order every run
        for system, spin in (("tidemq", True), ("tidemq-nospin", False)):
            t = run_tidemq(args.calls, args.frames, spin=spin)
            rows[system].append(t)
            print(json.dumps({"bench": "roundtrip_floor", "system": system, "run": run,
                              "loadavg_1m": round(os.getloadavg()[0], 2),
                              **{k: round(v, 1) for k, v in t.items()}}), flush=True)
        r = run_redis(args.calls)
        if r is not None:
            rows["redis-xadd"].append(r)
            print(json.dumps({"bench": "roundtrip_floor", "system": "redis-xadd", "run": run,
                              "loadavg_1m": round(os.getloadavg()[0], 2),
                              **{k: round(v, 1) for k, v in r.items()}}), flush=True)
    for system, runs in rows.items():
        if not runs:
            continue
        for key in runs[0]:
            vals = [r[key] for r in runs]
            print(json.dumps({"bench": "roundtrip_floor", "system": system, "figure": key,
                              "summary": True, "runs": len(vals),
                              "median": round(statistics.median(vals), 1),
                              "min": round(min(vals), 1), "max": round(max(vals), 1),
                              "unit": _UNITS.get(key, "")}))


if __name__ == "__main__":
    main()
