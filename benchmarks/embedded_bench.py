"""In-process figures of issue 3, through the public client API on a data folder.

Run: .venv/bin/python benchmarks/embedded_bench.py [--quick]

Each figure runs in a fresh child process so RSS figures are not polluted by earlier ones.
Ends with one JSON line per figure: {"metric", "value", "unit"}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

BODY = b"x" * 100


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _client(d: str) -> Any:
    import tidemq

    return tidemq.Client(d)


def publish_batch(d: str, n: int) -> list[dict[str, Any]]:
    with _client(d) as mq:
        mq.create_topic("bench", partitions=1)
        batch = [BODY] * 1000
        t0 = time.perf_counter()
        for _ in range(n // 1000):
            mq.publish_batch("bench", batch)
        dt = time.perf_counter() - t0
    return [{"metric": "embedded.publish_batch_1000.interval", "value": round(n / dt),
             "unit": "msgs/s"}]


def publish_single(d: str, n: int) -> list[dict[str, Any]]:
    with _client(d) as mq:
        mq.create_topic("bench", partitions=1)
        pub = mq.publish
        t0 = time.perf_counter()
        for _ in range(n):
            pub("bench", BODY)
        dt = time.perf_counter() - t0
    return [{"metric": "embedded.publish_single.interval", "value": round(n / dt),
             "unit": "msgs/s"}]


def _fill(mq: Any, n: int) -> None:
    mq.create_topic("bench", partitions=1)
    batch = [BODY] * 1000
    for _ in range(n // 1000):
        mq.publish_batch("bench", batch)


def consume_ack_each(d: str, n: int) -> list[dict[str, Any]]:
    with _client(d) as mq:
        _fill(mq, n)
        sub = mq.subscribe("bench", "g", prefetch=1000)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batch = sub.receive(max_messages=1000, timeout=1.0)
            for m in batch:
                sub.ack(m.id)
            got += len(batch)
        dt = time.perf_counter() - t0
    return [{"metric": "embedded.receive_ack_each.shared", "value": round(n / dt),
             "unit": "msgs/s"}]


def consume_batch_ack(d: str, n: int) -> list[dict[str, Any]]:
    with _client(d) as mq:
        _fill(mq, n)
        sub = mq.subscribe("bench", "g", prefetch=1000)
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batch = sub.receive(max_messages=1000, timeout=1.0)
            sub.ack(batch)
            got += len(batch)
        dt = time.perf_counter() - t0
    return [{"metric": "embedded.receive_batch_ack.shared", "value": round(n / dt),
             "unit": "msgs/s"}]


def delayed(d: str, n: int) -> list[dict[str, Any]]:
    """``n`` pending delayed messages: extra RSS, then lateness of due messages when idle."""
    import tidemq

    with tidemq.Client(d) as mq:
        mq.create_topic("bench", partitions=1)
        base = _rss_mb()
        now = time.time()
        # spread over 10 days, except a sample due in ~2-4 s to measure lateness
        chunk = 1000
        for i in range(0, n, chunk):
            mq.publish_batch("bench", [{"body": BODY, "deliver_at": now + 3600 + (i + j) * 0.8}
                                       for j in range(chunk)])
        pending_rss = _rss_mb() - base
        sample = 200
        due0 = time.time() + 2.0
        for j in range(sample):
            mq.publish("bench", str(due0 + j * 0.01).encode(), deliver_at=due0 + j * 0.01)
        sub = mq.subscribe("bench", "g", prefetch=1000)
        late: list[float] = []
        deadline = time.time() + 15
        while len(late) < sample and time.time() < deadline:
            for m in sub.receive(max_messages=1000, timeout=0.5):
                late.append((time.time() - float(m.body)) * 1000)
                m.ack()
    late.sort()
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))] if late else float("nan")
    return [
        {"metric": f"embedded.delayed_{n}.extra_rss", "value": round(pending_rss, 1), "unit": "MB"},
        {"metric": "embedded.delayed.lateness_p50", "value": round(statistics.median(late), 2)
         if late else None, "unit": "ms"},
        {"metric": "embedded.delayed.lateness_p99", "value": round(p99, 2), "unit": "ms"},
        {"metric": "embedded.delayed.released", "value": len(late), "unit": f"of {sample}"},
    ]


def backlog(d: str, n: int) -> list[dict[str, Any]]:
    """Extra RSS of a shared group subscribed to an ``n``-message backlog, after a fetch."""
    import tidemq

    with tidemq.Client(d) as mq:
        mq.create_topic("bench", partitions=1, durability="never")
        batch = [BODY] * 1000
        for _ in range(n // 1000):
            mq.publish_batch("bench", batch)
    with tidemq.Client(d) as mq:  # reopen: what a restarted broker holds for this backlog
        base = _rss_mb()
        sub = mq.subscribe("bench", "g", prefetch=100)
        sub.ack(sub.receive(max_messages=100, timeout=1.0))
        lag = mq.describe_group("bench", "g").lag
        extra = _rss_mb() - base
    return [{"metric": f"embedded.backlog_{n}.extra_rss", "value": round(extra, 1), "unit": "MB"},
            {"metric": f"embedded.backlog_{n}.lag_seen", "value": lag, "unit": "msgs"}]


def _child(fn: Callable[[str, int], list[dict[str, Any]]], n: int, q: Any) -> None:
    d = tempfile.mkdtemp(prefix="tidemq-bench-")
    try:
        q.put(fn(d, n))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(quick: bool) -> list[dict[str, Any]]:
    plan: list[tuple[Callable[[str, int], list[dict[str, Any]]], int]] = [
        (publish_batch, 200_000 if quick else 2_000_000),
        (publish_single, 50_000 if quick else 300_000),
        (consume_ack_each, 50_000 if quick else 500_000),
        (consume_batch_ack, 100_000 if quick else 1_000_000),
        (delayed, 100_000 if quick else 1_000_000),
        (backlog, 1_000_000 if quick else 10_000_000),
    ]
    out: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    for fn, n in plan:
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(fn, n, q))
        p.start()
        res = q.get()
        p.join()
        for r in res:
            print(f"{r['metric']:<45} {r['value']:>14} {r['unit']}", flush=True)
        out.extend(res)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = ap.parse_args()
    results = run(args.quick)
    print()
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
