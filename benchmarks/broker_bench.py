"""Broker-core benchmarks, in-process, 100-byte messages (issue 3 "Performance").

Run: ``.venv/bin/python benchmarks/broker_bench.py [--quick]``

Figures:
* publish of 1000-record batches (Records through ``Broker.publish``), durability ``interval``;
* the same with pre-encoded batches (``publish_encoded``, what a client's batcher sends);
* one message per ``publish`` call;
* 1,000,000 pending delayed messages: extra RSS of the broker process, and p99 lateness of
  releases on an otherwise idle broker driven by a loop that sleeps until ``tick``'s deadline.

Logs live in a temporary data folder (FileStore), so the log data is in files, not RSS.
Output ends with one JSON object per line: {"metric", "value", "unit"}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
from typing import Any

from tidemq.broker import Broker, TopicConfig
from tidemq.broker._delay_index import DelayIndex
from tidemq.storage import Record, encode_bodies, open_store

BODY = b"x" * 100


def now_us() -> int:
    return time.time_ns() // 1000


def mono_us() -> int:
    return time.monotonic_ns() // 1000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_broker(path: str) -> tuple[Any, Broker]:
    store = open_store(path)
    return store, Broker.open(store, now_us=now_us(), mono_us=mono_us())


def bench_batches(path: str, total: int) -> tuple[float, float]:
    store, b = open_broker(path)
    b.create_topic("batch", TopicConfig(partitions=1), now_us=now_us())
    recs = [Record(BODY)] * 1000
    t0 = time.perf_counter()
    for _ in range(total // 1000):
        b.publish("batch", recs, now_us=now_us())
    rec_rate = total / (time.perf_counter() - t0)
    b.create_topic("enc", TopicConfig(partitions=1), now_us=now_us())
    t0 = time.perf_counter()
    for _ in range(total // 1000):
        batch = encode_bodies([BODY] * 1000)  # the client's work, counted too
        b.publish_encoded("enc", 0, batch, now_us=now_us())
    enc_rate = total / (time.perf_counter() - t0)
    b.close()
    store.close()
    return rec_rate, enc_rate


def bench_single(path: str, total: int) -> float:
    store, b = open_broker(path)
    b.create_topic("single", TopicConfig(partitions=1), now_us=now_us())
    t0 = time.perf_counter()
    for _ in range(total):
        b.publish("single", [Record(BODY)], now_us=now_us())
    rate = total / (time.perf_counter() - t0)
    b.close()
    store.close()
    return rate


def bench_delays(path: str, pending: int, watch_s: float) -> tuple[float, float, float, int]:
    """Returns (extra RSS MB, p99 lateness ms, max lateness ms, releases observed)."""
    store, b = open_broker(path)
    b.create_topic("delayed", TopicConfig(partitions=1), now_us=now_us())
    b.tick(now_us=now_us(), mono_us=mono_us())
    gc.collect()
    before = rss_bytes()
    start = now_us()
    hour = 3600 * 1_000_000
    lead = 2_000_000  # the first ones come due 2 s from now
    step = hour // pending
    batch = 1000
    for i in range(0, pending, batch):
        recs = [Record(BODY, deliver_at_us=start + lead + (i + j) * step) for j in range(batch)]
        b.publish("delayed", recs, now_us=now_us())
    b.sync_all()
    gc.collect()
    extra_mb = (rss_bytes() - before) / 1e6
    print(f"  {b.describe_topic('delayed').delayed} pending, extra RSS {extra_mb:.1f} MB")

    # Instrument releases: lateness = wall time of the release - due time.
    lateness: list[float] = []

    class Instrumented(DelayIndex):
        __slots__ = ()

        def pop_due(self, now: int, limit: int) -> tuple[list[int], list[int]]:
            dues, seqs = super().pop_due(now, limit)
            t = now_us()
            lateness.extend((t - d) / 1000 for d in dues)
            return dues, seqs

    b._topics["delayed"].delays.index.__class__ = Instrumented
    end = time.monotonic() + watch_s
    while time.monotonic() < end:
        # The deadline is relative to the time passed in: sleep what is left of it.
        t0 = time.monotonic()
        wait = b.tick(now_us=now_us(), mono_us=mono_us())
        if wait is None:
            wait = 1.0
        left = wait - (time.monotonic() - t0)
        time.sleep(max(0.0, min(left, end - time.monotonic())))
    b.close()
    store.close()
    lateness.sort()
    if not lateness:
        return extra_mb, float("nan"), float("nan"), 0
    p99 = lateness[min(len(lateness) - 1, int(len(lateness) * 0.99))]
    print(f"  lateness ms: p50 {lateness[len(lateness) // 2]:.2f}, p90 "
          f"{lateness[int(len(lateness) * 0.9)]:.2f}, top {[round(x, 2) for x in lateness[-5:]]}")
    return extra_mb, p99, lateness[-1], len(lateness)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    args = ap.parse_args()
    n_batch = 200_000 if args.quick else 2_000_000
    n_single = 30_000 if args.quick else 300_000
    n_delay = 100_000 if args.quick else 1_000_000
    root = tempfile.mkdtemp(prefix="tidemq-broker-bench-")
    try:
        rec_rate, enc_rate = bench_batches(os.path.join(root, "a"), n_batch)
        print(f"publish, 1000-record batches of Records: {rec_rate:,.0f} msgs/s")
        print(f"publish_encoded, 1000-record batches:    {enc_rate:,.0f} msgs/s")
        single = bench_single(os.path.join(root, "b"), n_single)
        print(f"publish, one message per call:           {single:,.0f} msgs/s")
        extra, p99, worst, seen = bench_delays(os.path.join(root, "c"), n_delay, 8.0 if args.quick else 12.0)
        print(f"{n_delay:,} pending delays: extra RSS {extra:.1f} MB; release lateness "
              f"p99 {p99:.2f} ms, max {worst:.2f} ms over {seen} releases")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for metric, value, unit in [
        ("broker_publish_batch_records", rec_rate, "msgs/s"),
        ("broker_publish_encoded_batch", enc_rate, "msgs/s"),
        ("broker_publish_single", single, "msgs/s"),
        ("broker_delays_pending", n_delay, "messages"),
        ("broker_delays_extra_rss", extra, "MB"),
        ("broker_delays_lateness_p99", p99, "ms"),
    ]:
        print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit}))


if __name__ == "__main__":
    main()
