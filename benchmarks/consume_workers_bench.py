#!/usr/bin/env python3
"""``consume(workers=N)`` with a callback that sleeps (I/O-bound work): messages per second, on
an embedded data folder and through a live server (blocking and async clients).

Run: .venv/bin/python benchmarks/consume_workers_bench.py [--workers 8] [--sleep 0.01]
         [--messages 2000] [--runs 3]

The clock starts when the consumer starts and stops when the last callback returned and its
ack was taken. Target (issue 10): workers=8, 10 ms callbacks, >= 700 msgs/s (the ideal is
workers / sleep = 800/s). Prints one JSON line per run and a summary line per transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import tidemq

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from server_bench import ServerProc  # noqa: E402


def run_sync(url: str, workers: int, sleep: float, n: int) -> float:
    done = threading.Event()
    count = 0
    lock = threading.Lock()

    def handle(msg: tidemq.Message) -> None:
        nonlocal count
        time.sleep(sleep)
        with lock:
            count += 1
            if count == n:
                done.set()

    with tidemq.Client(url) as mq:
        topic = f"w{time.monotonic_ns()}"
        mq.create_topic(topic)
        mq.publish_batch(topic, [b"x" * 100] * n)
        t0 = time.perf_counter()
        consumer = mq.consume(topic, "g", callback=handle, workers=workers)
        done.wait(120)
        dt = time.perf_counter() - t0
        consumer.stop()
    return n / dt


def run_async(url: str, workers: int, sleep: float, n: int) -> float:
    async def main() -> float:
        count = 0
        done = asyncio.Event()

        async def handle(msg: tidemq.AsyncMessage) -> None:
            nonlocal count
            await asyncio.sleep(sleep)
            count += 1
            if count == n:
                done.set()

        async with tidemq.AsyncClient(url) as mq:
            topic = f"w{time.monotonic_ns()}"
            await mq.create_topic(topic)
            await mq.publish_batch(topic, [b"x" * 100] * n)
            t0 = time.perf_counter()
            tasks = await mq.consume(topic, "g", handle, workers=workers)
            await asyncio.wait_for(done.wait(), 120)
            dt = time.perf_counter() - t0
            for task in tasks:
                task.cancel()
        return n / dt

    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--sleep", type=float, default=0.01)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProc(f"{tmp}/server")
        try:
            cases: list[tuple[str, Any, str]] = [
                ("embedded_blocking", run_sync, f"{tmp}/embedded"),
                ("server_blocking", run_sync, server.url),
                ("server_async", run_async, server.url),
            ]
            for i in range(a.runs):
                for name, fn, url in cases:
                    rate = fn(url, a.workers, a.sleep, a.messages)
                    results.setdefault(name, []).append(rate)
                    print(json.dumps({"bench": "consume_workers", "transport": name, "run": i + 1,
                                      "workers": a.workers, "sleep_s": a.sleep,
                                      "msgs_per_s": round(rate, 1)}), flush=True)
        finally:
            server.stop()
    for name, vals in results.items():
        print(json.dumps({"bench": "consume_workers", "transport": name, "summary": True,
                          "workers": a.workers, "sleep_s": a.sleep, "runs": len(vals),
                          "median": round(statistics.median(vals), 1),
                          "min": round(min(vals), 1), "max": round(max(vals), 1)}))


if __name__ == "__main__":
    main()
