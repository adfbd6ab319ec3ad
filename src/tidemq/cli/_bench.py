"""``tidemq bench publish|consume|latency``: quick throughput and latency figures against a URL.

Each run uses a fresh topic (``bench-<random>``, deleted afterwards unless ``--keep``), shows a
progress bar on stderr while it runs, prints a summary table, and ends stdout with one JSON
object per line: ``{"metric": ..., "value": ..., "unit": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._common import UsageError, open_client, positive_float, positive_int

__all__ = ["register", "percentile"]

_DEFAULT_COUNT = {"publish": 100_000, "consume": 100_000, "latency": 5_000}
_STAMP = struct.Struct("<q")  # send time, perf_counter_ns, at the start of a latency body

_EPILOG = """\
examples:
  tidemq --url ./bench-data bench publish --count 200000 --batch 1000
  tidemq bench publish --batch 1 --count 20000           one publish call per message
  tidemq bench consume --count 100000
  tidemq bench latency --rate 5000 --count 20000

publish: publish_batch of --batch messages (1: per-message publish). consume: prefill, then
receive and ack in batches of --batch. latency: publish one message at a time at --rate per
second while one consumer receives and acks; reports end-to-end percentiles.
"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", parents=parents, help="measure throughput and latency",
                       description="Benchmark the broker at --url with a fresh topic.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("publish", "consume", "latency"), metavar="KIND",
                   help="publish, consume or latency")
    p.add_argument("--count", type=positive_int, metavar="N",
                   help="messages (default 100000; latency 5000)")
    p.add_argument("--size", type=positive_int, default=100, metavar="BYTES",
                   help="body size (default 100)")
    p.add_argument("--batch", type=positive_int, default=1000, metavar="N",
                   help="messages per publish_batch / receive call (default 1000)")
    p.add_argument("--partitions", type=positive_int, default=1, metavar="N",
                   help="partitions of the bench topic (default 1)")
    p.add_argument("--durability", choices=("always", "interval", "never"), default="interval",
                   help="durability of the bench topic (default interval)")
    p.add_argument("--rate", type=positive_float, default=1000.0, metavar="MSGS_PER_S",
                   help="latency: offered load (default 1000)")
    p.add_argument("--keep", action="store_true", help="keep the bench topic afterwards")
    p.set_defaults(func=run)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of already sorted values, nearest rank; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


class _Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []

    def add(self, metric: str, value: float, unit: str) -> None:
        self.rows.append((metric, value, unit))


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TaskProgressColumn(), TimeElapsedColumn(), console=console,
                  transient=False) as prog:
        task = prog.add_task(label, total=total)
        yield lambda n: prog.advance(task, n)


def run(args: argparse.Namespace) -> int:
    count = args.count or _DEFAULT_COUNT[args.kind]
    if args.kind == "latency" and args.size < _STAMP.size:
        raise UsageError(f"latency needs --size >= {_STAMP.size}", "tidemq bench")
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    report = _Report()
    with open_client(args) as mq:
        mq.create_topic(topic, args.partitions, durability=args.durability)
        try:
            if args.kind == "publish":
                _publish(mq, topic, count, args, report)
            elif args.kind == "consume":
                _consume(mq, topic, count, args, report)
            else:
                _latency(mq, topic, count, args, report)
        finally:
            if not args.keep:
                mq.delete_topic(topic)
    _summary(args, count, report)
    return 0


def _fill(mq: Any, topic: str, count: int, args: argparse.Namespace, label: str) -> float:
    body = os.urandom(args.size)
    start = time.perf_counter()
    with _progress(count, label) as advance:
        left = count
        if args.batch == 1:
            for _ in range(count):
                mq.publish(topic, body)
                advance(1)
        else:
            while left:
                n = min(args.batch, left)
                mq.publish_batch(topic, [body] * n)
                left -= n
                advance(n)
    return time.perf_counter() - start


def _publish(mq: Any, topic: str, count: int, args: argparse.Namespace, report: _Report) -> None:
    elapsed = _fill(mq, topic, count, args, "publish")
    report.add("publish_throughput", round(count / elapsed, 1), "msgs/s")
    report.add("publish_bandwidth", round(count * args.size / elapsed / 1e6, 2), "MB/s")
    report.add("publish_elapsed", round(elapsed, 3), "s")


def _consume(mq: Any, topic: str, count: int, args: argparse.Namespace, report: _Report) -> None:
    _fill(mq, topic, count, args, "prefill")
    got = 0
    start = time.perf_counter()
    with mq.subscribe(topic, "bench", start="earliest", prefetch=min(args.batch, 10_000)) as sub, \
            _progress(count, "consume") as advance:
        idle = 0
        while got < count and idle < 10:
            batch = sub.receive(max_messages=min(args.batch, count - got), timeout=0.5)
            if not batch:
                idle += 1
                continue
            idle = 0
            sub.ack(batch)
            got += len(batch)
            advance(len(batch))
    elapsed = time.perf_counter() - start
    report.add("consume_throughput", round(got / elapsed, 1), "msgs/s")
    report.add("consume_messages", got, "msgs")
    report.add("consume_elapsed", round(elapsed, 3), "s")


def _latency(mq: Any, topic: str, count: int, args: argparse.Namespace, report: _Report) -> None:
    pad = os.urandom(args.size - _STAMP.size)
    latencies: list[float] = []
    sub = mq.subscribe(topic, "bench", start="earliest", prefetch=1000)
    stop = threading.Event()

    def receive() -> None:
        while len(latencies) < count and not stop.is_set():
            batch = sub.receive(max_messages=1000, timeout=0.2)
            now = time.perf_counter_ns()
            for m in batch:
                latencies.append((now - _STAMP.unpack_from(m.body)[0]) / 1e6)
            if batch:
                sub.ack(batch)

    consumer = threading.Thread(target=receive, name="tidemq-bench-consumer", daemon=True)
    consumer.start()
    interval = 1.0 / args.rate
    start = time.perf_counter()
    try:
        with _progress(count, f"latency @ {args.rate:g}/s") as advance:
            for i in range(count):
                # Open-loop pacing: send on schedule, not after the previous one is consumed.
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                mq.publish(topic, _STAMP.pack(time.perf_counter_ns()) + pad)
                advance(1)
        consumer.join(timeout=10.0 + count / args.rate)
    finally:
        stop.set()
        consumer.join(timeout=5.0)
        sub.close()
    values = sorted(latencies)
    report.add("latency_p50", round(percentile(values, 0.50), 3), "ms")
    report.add("latency_p99", round(percentile(values, 0.99), 3), "ms")
    report.add("latency_p999", round(percentile(values, 0.999), 3), "ms")
    report.add("latency_max", round(values[-1] if values else 0.0, 3), "ms")
    report.add("latency_received", len(values), "msgs")


def _summary(args: argparse.Namespace, count: int, report: _Report) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"tidemq bench {args.kind}",
              caption=f"{count} x {args.size} B, batch {args.batch}, "
                      f"{args.partitions} partition(s), durability {args.durability}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("unit")
    for metric, value, unit in report.rows:
        t.add_row(metric, f"{value:,}", unit)
    Console().print(t)
    for metric, value, unit in report.rows:
        print(json.dumps({"metric": metric, "value": value, "unit": unit}))
