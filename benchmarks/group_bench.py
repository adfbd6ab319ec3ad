"""Micro-benchmark of the consumer-group state machine alone (no broker, no client).

    .venv/bin/python benchmarks/group_bench.py [--messages N] [--backlog N]

Figures:
- receive + ack each message: fetch(100), then one ack call per message;
- receive + batch ack: fetch(1000), one ack call for the batch;
- extra RSS of a shared group over a plain backlog of --backlog messages in a file log
  (the group is created, a member takes and acks 100,000 messages; the log's own pages are
  not part of the figure: they live in the page cache, not in the process).

Output ends with one JSON object per line: {"metric", "value", "unit"}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time

from tidemq.broker._group import GroupState
from tidemq.broker._types import GroupSettings
from tidemq.storage import MemoryLog, PartitionLog, encode_bodies, open_store

T0 = 1_700_000_000_000_000
BODY = b"x" * 100


def fill(log: PartitionLog, n: int, batch: int = 1000) -> None:
    chunk = encode_bodies([BODY] * batch)
    for _ in range(n // batch):
        log.append(chunk, T0)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def single_acks(n: int, partitions: int) -> float:
    logs: list[PartitionLog] = [MemoryLog() for _ in range(partitions)]
    for log in logs:
        fill(log, n // partitions)
    g = GroupState("t", 1, "g", GroupSettings(), logs, now_us=T0)
    g.add_member("m", 1000, mono_us=0)
    done = 0
    start = time.perf_counter()
    while True:
        got = g.fetch("m", 100, now_us=T0, mono_us=0)
        if not got:
            break
        for d in got:
            g.ack("m", [d.id])
        done += len(got)
        g.drain_journal()
    return done / (time.perf_counter() - start)


def batch_acks(n: int, partitions: int) -> float:
    logs: list[PartitionLog] = [MemoryLog() for _ in range(partitions)]
    for log in logs:
        fill(log, n // partitions)
    g = GroupState("t", 1, "g", GroupSettings(), logs, now_us=T0)
    g.add_member("m", 1000, mono_us=0)
    done = 0
    start = time.perf_counter()
    while True:
        got = g.fetch("m", 1000, now_us=T0, mono_us=0)
        if not got:
            break
        g.ack("m", [d.id for d in got])
        done += len(got)
        g.drain_journal()
    return done / (time.perf_counter() - start)


def backlog_rss(n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(os.path.join(tmp, "data"))
        log = store.open_log("t-0")
        t = time.perf_counter()
        fill(log, n, batch=10_000)
        fill_s = time.perf_counter() - t
        gc.collect()
        before = rss_bytes()
        g = GroupState("t", 1, "g", GroupSettings(), [log], now_us=T0)
        g.add_member("m", 1000, mono_us=0)
        taken = 0
        while taken < 100_000:
            got = g.fetch("m", 1000, now_us=T0, mono_us=0)
            g.ack("m", [d.id for d in got])
            g.drain_journal()
            taken += len(got)
        # a full prefetch in flight on top
        g.fetch("m", 1000, now_us=T0, mono_us=0)
        gc.collect()
        extra = rss_bytes() - before
        info = g.info()
        assert info.lag == n - taken, info.lag
        store.close()
    return extra / 2**20, fill_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--backlog", type=int, default=10_000_000)
    args = ap.parse_args()
    figures = []
    for parts in (1, 4):
        rate = single_acks(args.messages, parts)
        print(f"receive + ack each, {parts} partition(s): {rate:,.0f} msgs/s")
        figures.append((f"group_receive_ack_each_{parts}p", rate, "msgs/s"))
        rate = batch_acks(args.messages, parts)
        print(f"receive + batch ack, {parts} partition(s): {rate:,.0f} msgs/s")
        figures.append((f"group_receive_batch_ack_{parts}p", rate, "msgs/s"))
    extra_mb, fill_s = backlog_rss(args.backlog)
    print(f"{args.backlog:,}-message backlog (file log, filled in {fill_s:.1f} s): "
          f"group adds {extra_mb:.1f} MB RSS")
    figures.append(("group_backlog_extra_rss", extra_mb, "MB"))
    for metric, value, unit in figures:
        print(json.dumps({"metric": metric, "value": round(value, 1), "unit": unit}))


if __name__ == "__main__":
    main()
