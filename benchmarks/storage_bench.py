"""Throughput and open times of the partition log (``tidemq.storage``).

Run: ``.venv/bin/python benchmarks/storage_bench.py`` (``--quick`` for smaller sizes). Prints a
table, then one JSON object per line: ``{"metric": ..., "value": ..., "unit": ...}``. Includes
the codec figures of ``benchmarks/format_bench.py`` (its ``run()``) when that file is present.

Targets (100-byte records, batches of 1,000): append pre-encoded under ``never`` >= 5M records/s;
under ``interval`` (a driver thread syncing every 100 ms) >= 4M/s; append + sync each batch under
``always`` >= 1M/s; read raw batches, checksum verified, >= 10M/s; open a 2 GB log after a clean
shutdown <= 1 s, after a crash (tail after the last checkpoint scanned) <= 2 s. RSS of the open
log is printed to show memory does not grow with the log beyond the sparse indexes.
Everything runs in a temporary folder under /tmp that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

from tidemq.storage import FileLog, LogConfig, encode_bodies

BATCH = 1000
BODY = 100
T0 = 1_700_000_000_000_000


def _batches(n: int = 8) -> list[bytes]:
    return [encode_bodies([bytes([(k + i) % 251]) * BODY for i in range(BATCH)]) for k in range(n)]


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def bench_append(root: Path, durability: str, total_batches: int) -> tuple[float, float]:
    """(records/s, fsyncs/s) appending pre-encoded batches at one durability level."""
    path = root / f"append-{durability}"
    batches = _batches()
    log = FileLog(path, LogConfig(durability=durability))  # type: ignore[arg-type]
    stop = threading.Event()
    syncer = None
    if durability == "interval":
        # The driver's job under `interval`: sync at least every 100 ms, off the append thread.
        def tick() -> None:
            while not stop.wait(0.1):
                log.sync()

        syncer = threading.Thread(target=tick)
        syncer.start()
    fsyncs0 = log.statistics().fsyncs
    start = time.perf_counter()
    now = T0
    for i in range(total_batches):
        result = log.append(batches[i & 7], now)
        if durability == "always":
            log.sync(result.position)
    if durability != "never":
        log.sync()
    elapsed = time.perf_counter() - start
    stop.set()
    if syncer is not None:
        syncer.join()
    fsyncs = log.statistics().fsyncs - fsyncs0
    log.close()
    _drop(path)
    return total_batches * BATCH / elapsed, fsyncs / elapsed


def build_log(path: Path, size_bytes: int) -> int:
    """Write a log of about ``size_bytes`` (default 128 MiB segments), close it cleanly."""
    batches = _batches()
    n = size_bytes // len(batches[0]) + 1
    log = FileLog(path, LogConfig(durability="never"))
    for i in range(n):
        log.append(batches[i & 7], T0 + i)
    log.close()
    return n


def bench_read(path: Path) -> float:
    """Records/s reading every batch (checksum verified) with 1 MiB reads."""
    log = FileLog(path, LogConfig())
    offset = 0
    records = 0
    start = time.perf_counter()
    end = log.end_offset
    while offset < end:
        views = log.read(offset, max_records=100_000, max_bytes=1 << 20)
        for v in views:
            records += v.count
        offset = views[-1].last_offset + 1
    elapsed = time.perf_counter() - start
    log.close()
    return records / elapsed


def bench_open_clean(path: Path) -> tuple[float, float, float]:
    """(seconds to open after a clean close, RSS growth MiB after open, after reading it all)."""
    gc.collect()
    rss0 = _rss_mib()
    start = time.perf_counter()
    log = FileLog(path, LogConfig())
    elapsed = time.perf_counter() - start
    assert log.recovery.clean and log.recovery.scanned_bytes == 0
    rss_open = _rss_mib() - rss0
    # Touch every segment so every sparse index is in memory, as a long-running broker would.
    step = max(1, log.end_offset // 200)
    for off in range(0, log.end_offset, step):
        log.read(off, max_records=1)
    log.offset_for_time(T0 + 10**12)
    gc.collect()
    rss_all = _rss_mib() - rss0
    log.close()
    return elapsed, rss_open, rss_all


def bench_open_crash(path: Path, tail_bytes: int, *, sync: bool) -> tuple[float, int]:
    """Seconds to open after a crash that left ``tail_bytes`` appended since the open.

    With ``sync`` a driver synced every ~10 MB (checkpoints every 64 MiB synced); without,
    nothing was synced at all (``never``), so everything since the open is scanned.
    """
    batches = _batches()
    log = FileLog(path, LogConfig(durability="interval" if sync else "never"))
    for i in range(tail_bytes // len(batches[0]) + 1):
        log.append(batches[i & 7], T0 + 10**9 + i)
        if sync and i % 100 == 0:
            log.sync()
    log._fds.close_all()  # kill -9: no final sync, index or checkpoint
    start = time.perf_counter()
    log = FileLog(path, LogConfig())
    elapsed = time.perf_counter() - start
    scanned = log.recovery.scanned_bytes
    assert not log.recovery.truncated
    log.close()
    return elapsed, scanned


def _format_figures() -> list[dict[str, object]]:
    here = Path(__file__).with_name("format_bench.py")
    if not here.exists():
        return []
    spec = importlib.util.spec_from_file_location("format_bench", here)
    if spec is None or spec.loader is None:
        return []
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results: list[dict[str, object]] = module.run()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 10 s)")
    args = parser.parse_args()
    quick = args.quick
    big = (256 if quick else 2048) << 20
    results: list[dict[str, object]] = []

    def report(metric: str, value: float, unit: str, note: str = "") -> None:
        shown = f"{value:,.0f}" if value >= 100 else f"{value:.4f}"
        print(f"{metric:<34} {shown:>16} {unit:<10} {note}")
        results.append({"metric": metric, "value": round(value, 4), "unit": unit})

    root = Path(tempfile.mkdtemp(prefix="tidemq-storage-bench-", dir="/tmp"))
    try:
        n = 500 if quick else 3000

        def best(durability: str, batches: int) -> tuple[float, float]:
            # Best of 3: the machine is shared, and one slow round says little about the log.
            return max(bench_append(root, durability, batches) for _ in range(3))

        rate, _ = best("never", n)
        report("append_never", rate, "records/s", "target >= 5,000,000")
        rate, _ = best("interval", n)
        report("append_interval", rate, "records/s", "target >= 4,000,000")
        rate, fsyncs = best("always", n // 2)
        report("append_sync_always", rate, "records/s", "target >= 1,000,000")
        report("append_sync_always_fsyncs", fsyncs, "fsyncs/s")

        path = root / "big"
        build_log(path, big)
        size = sum(p.stat().st_size for p in path.glob("*.log"))
        print(f"built a log of {size / 2**30:.2f} GiB in {len(list(path.glob('*.log')))} segments")
        report("read_verified", bench_read(path), "records/s", "target >= 10,000,000")
        opened, rss_open, rss_all = bench_open_clean(path)
        report("open_clean", opened, "s", f"target <= 1 s ({size / 2**30:.2f} GiB)")
        report("open_rss_growth", rss_open, "MiB", "RSS growth after open")
        report("open_rss_all_indexes", rss_all, "MiB", "after touching every segment")
        crashed, scanned = bench_open_crash(path, (32 if quick else 96) << 20, sync=True)
        report("open_after_crash", crashed, "s", f"target <= 2 s (scanned {scanned >> 20} MiB)")
        crashed, scanned = bench_open_crash(path, (32 if quick else 160) << 20, sync=False)
        report(
            "open_after_crash_unsynced",
            crashed,
            "s",
            f"nothing synced: scanned {scanned >> 20} MiB",
        )
    finally:
        _drop(root)

    codec = _format_figures()
    for r in codec:
        print(f"{r['metric']:<34} {r['value']:>16,} {r['unit']}")
    for r in results + codec:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
