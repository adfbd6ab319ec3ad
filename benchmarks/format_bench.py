"""Throughput of the record-batch codec (``tidemq.storage._format``).

Run: ``.venv/bin/python benchmarks/format_bench.py``. Prints a table, then one JSON object per
line: ``{"metric": ..., "value": ..., "unit": ...}``.

Targets (1000-record batches of 100-byte bodies): encode plain >= 2M records/s; encode records
with key, routing key and 2 headers >= 400K/s; verify >= 10M records/s; decode records
(the same rich records) >= 300K/s. Also reported: verify of rich batches, bodies of a batch read
as a memoryview (as segment reads give), select (rebuilding half a rich batch) and stamp.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from tidemq.storage._format import Record, encode_batch, encode_bodies, select, stamp, verify

BATCH = 1000
BODY = 100
MIN_SECONDS = 0.5


def _rate(fn: Callable[[], object], records_per_call: int) -> float:
    """Best-of-3 records per second of ``fn``, each round running for at least MIN_SECONDS."""
    fn()  # warm up
    best = 0.0
    for _ in range(3):
        calls = 0
        start = time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= MIN_SECONDS / 3:
                break
        best = max(best, calls * records_per_call / elapsed)
    return best


def run() -> list[dict[str, object]]:
    """Measure each operation; one metric dict per figure (unit records/s)."""
    bodies = [bytes([i % 251]) * BODY for i in range(BATCH)]
    rich = [
        Record(
            body,
            key=b"user-%d" % (i % 97),
            routing_key=f"orders.eu.created.{i % 13}",
            headers={"trace-id": f"{i:016x}", "content-type": "application/json"},
        )
        for i, body in enumerate(bodies)
    ]
    plain_batch = encode_bodies(bodies)
    rich_batch = encode_batch(rich)
    rich_view = verify(rich_batch)
    stored = memoryview(bytearray(plain_batch))  # what a segment read hands out
    every_other = range(0, BATCH, 2)
    figures = {
        "format_encode_plain": _rate(lambda: encode_bodies(bodies), BATCH),
        "format_encode_records": _rate(lambda: encode_batch(rich), BATCH),
        "format_verify_plain": _rate(lambda: verify(plain_batch), BATCH),
        "format_verify_records": _rate(lambda: verify(rich_batch), BATCH),
        "format_bodies_plain": _rate(lambda: verify(stored).bodies(), BATCH),
        "format_decode_records": _rate(lambda: verify(rich_batch).records(), BATCH),
        "format_select_records": _rate(lambda: select(rich_view, every_other), len(every_other)),
    }
    results = [{"metric": k, "value": round(v), "unit": "records/s"} for k, v in figures.items()]
    stamp_buf = bytearray(plain_batch)
    stamps = _rate(lambda: stamp(stamp_buf, 1, 2), 1)
    results.append({"metric": "format_stamp", "value": round(stamps), "unit": "batches/s"})
    return results


if __name__ == "__main__":
    results = run()
    for r in results:
        print(f"{r['metric']:<28} {r['value']:>14,} {r['unit']}")
    for r in results:
        print(json.dumps(r))
