"""Recovery: torn and corrupt tails are cut and reported; older damage is skipped, never served."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.storage.helpers import all_bodies, batch
from tests.storage.helpers import bodies as _bodies_of
from tidemq.errors import CorruptRecord
from tidemq.storage import FileLog, LogConfig
from tidemq.storage._index import SegmentIndex

T0 = 1_700_000_000_000_000
PER = 3  # records per batch
SEG0 = "00000000000000000000"


def _b10(start: int, n: int) -> list[bytes]:
    return _bodies_of(start, n, 10)


def _crash(log: FileLog) -> None:
    """Drop the log as a kill -9 would: no sync, no index, no checkpoint; just let go of fds."""
    log._fds.close_all()


def _build(path: Path, n: int, *, sync_after: int | None, config: LogConfig) -> list[int]:
    """n batches of PER records; returns batch end positions. Clean close unless sync_after."""
    log = FileLog(path, config)
    ends = []
    for i in range(n):
        log.append(batch(PER * i, PER, size=10), T0 + i)
        ends.append(log.statistics().size_bytes)
        if sync_after is not None and i + 1 == sync_after:
            log.sync()
    if sync_after is None:
        log.close()
    else:
        _crash(log)
    return ends


@pytest.mark.parametrize("sync_after", [None, 5], ids=["after-clean-close", "after-crash"])
def test_cut_at_every_byte_of_the_last_two_batches(tmp_path: Path, sync_after: int | None) -> None:
    config = LogConfig(index_interval_bytes=50, checkpoint_bytes=1)
    pristine = tmp_path / "pristine"
    ends = _build(pristine, 8, sync_after=sync_after, config=config)
    starts = [0, *ends[:-1]]
    seg = f"{SEG0}.log"
    work = tmp_path / "work"
    for cut in range(starts[-2], ends[-1]):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        os.truncate(work / seg, cut)
        kept = sum(1 for e in ends if e <= cut)
        log = FileLog(work, config)
        try:
            report = log.recovery
            assert log.end_offset == PER * kept, cut
            assert all_bodies(log) == _b10(0, PER * kept), cut
            torn = cut - (ends[kept - 1] if kept else 0)
            assert report.bytes_truncated == torn, cut
            if torn:
                assert report.first_lost_offset == PER * kept
                assert report.segments_touched == (0,)
                assert not report.clean
            # The log goes on at the next offset: nothing reused, nothing skipped.
            assert log.append(batch(1000, 1), T0 + 100).base_offset == PER * kept
        finally:
            log.close()
        assert FileLog(work, config).recovery.clean  # and the repair itself was made durable


def test_random_bit_flips_in_the_tail_are_cut_and_reported(tmp_path: Path) -> None:
    config = LogConfig(index_interval_bytes=50, checkpoint_bytes=1)
    pristine = tmp_path / "pristine"
    ends = _build(pristine, 10, sync_after=6, config=config)
    starts = [0, *ends[:-1]]
    rng = random.Random(1234)
    work = tmp_path / "work"
    for _ in range(60):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(pristine, work)
        at = rng.randrange(starts[6], ends[-1])  # anywhere after the checkpoint
        with open(work / f"{SEG0}.log", "r+b") as f:
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))
        hit = next(k for k in range(10) if starts[k] <= at < ends[k])
        log = FileLog(work, config)
        try:
            assert log.recovery.first_lost_offset == PER * hit, at
            assert log.recovery.bytes_truncated == ends[-1] - starts[hit]
            assert log.recovery.reason
            assert all_bodies(log) == _b10(0, PER * hit)
        finally:
            log.close()


def test_torn_later_segment_is_deleted_and_reported(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=250, checkpoint_bytes=1)
    log = FileLog(tmp_path, config)
    log.append(batch(0, PER, size=10), T0)
    log.sync()
    for i in range(1, 9):
        log.append(batch(PER * i, PER, size=10), T0 + i)
    segments = log.statistics().segments
    assert segments >= 3
    _crash(log)
    logs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".log"))
    # Damage the second segment's first batch: it and everything after must go.
    second = tmp_path / logs[1]
    data = bytearray(second.read_bytes())
    data[70] ^= 0xFF
    second.write_bytes(bytes(data))
    base = int(logs[1][:20])
    log = FileLog(tmp_path, config)
    assert log.recovery.first_lost_offset == base
    assert set(log.recovery.segments_touched) == {int(p[:20]) for p in logs[1:]}
    assert all_bodies(log) == _b10(0, base)
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".log")) == logs[:1]
    log.close()


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _older_segment_log(tmp_path: Path, on_corruption: str = "skip") -> tuple[LogConfig, list[int]]:
    config = LogConfig(segment_bytes=600, index_interval_bytes=1, on_corruption=on_corruption)  # type: ignore[arg-type]
    return config, _build(tmp_path, 12, sync_after=None, config=config)


def test_bad_body_crc_in_an_older_segment_is_skipped_and_reported(tmp_path: Path) -> None:
    config, ends = _older_segment_log(tmp_path)
    _flip(tmp_path / f"{SEG0}.log", ends[1] - 3)  # a body byte of batch 1
    log = FileLog(tmp_path, config)
    assert log.recovery.clean  # the old segment is trusted at open and checked on read
    expected = _b10(0, PER) + _b10(2 * PER, 11 * PER - PER)
    assert all_bodies(log) == expected
    assert all_bodies(log) == expected  # reported once, skipped every time
    events = log.corruption_events
    assert len(events) == 1
    assert (events[0].segment, events[0].position, events[0].first_offset) == (0, ends[0], PER)
    assert "checksum" in events[0].reason
    assert log.statistics().corruptions == 1
    log.close()


def test_damaged_header_in_an_older_segment_skips_to_the_next_indexed_batch(tmp_path: Path) -> None:
    config, ends = _older_segment_log(tmp_path)
    _flip(tmp_path / f"{SEG0}.log", ends[1] + 9)  # the length field of batch 2
    log = FileLog(tmp_path, config)
    assert all_bodies(log) == _b10(0, 2 * PER) + _b10(3 * PER, 9 * PER)
    assert len(log.corruption_events) == 1
    log.close()


def test_on_corruption_fail_stops_the_read(tmp_path: Path) -> None:
    config, ends = _older_segment_log(tmp_path, "fail")
    _flip(tmp_path / f"{SEG0}.log", ends[1] - 3)
    log = FileLog(tmp_path, config)
    assert [v.base_offset for v in log.read(0, max_records=1)] == [0]
    with pytest.raises(CorruptRecord, match="on_corruption"):
        log.read(PER)
    with pytest.raises(CorruptRecord):
        all_bodies(log)
    log.close()


def _index_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix in (".index", ".timeindex"))


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_missing_or_garbage_indexes_are_rebuilt(tmp_path: Path, damage: str) -> None:
    config = LogConfig(segment_bytes=600, index_interval_bytes=100)
    _build(tmp_path, 12, sync_after=None, config=config)
    files = _index_files(tmp_path)
    assert len(files) >= 4
    rng = random.Random(7)
    for p in files:
        if damage == "missing":
            p.unlink()
        elif damage == "garbage":
            p.write_bytes(rng.randbytes(p.stat().st_size))
        else:
            p.write_bytes(p.read_bytes()[:-3])
    log = FileLog(tmp_path, config)
    assert all_bodies(log) == _b10(0, 12 * PER)
    assert log.offset_for_time(T0 + 7) == 7 * PER
    assert all_bodies(log, 17) == _b10(17, 12 * PER - 17)
    log.close()
    for p in sorted(tmp_path.glob("*.log")):
        stem = str(p)[:-4]
        size = p.stat().st_size
        assert SegmentIndex.load(stem, int(p.name[:20]), 100, size) is not None, p


def test_stale_index_is_extended_or_rebuilt(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=10_000, index_interval_bytes=50, checkpoint_bytes=1)
    log = FileLog(tmp_path, config)
    for i in range(3):
        log.append(batch(PER * i, PER, size=10), T0 + i)
    log.sync()  # saves the active index covering 3 batches
    old = {p.name: p.read_bytes() for p in _index_files(tmp_path)}
    for i in range(3, 9):
        log.append(batch(PER * i, PER, size=10), T0 + i)
    log.close()
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)  # an index that covers less than the segment
    log = FileLog(tmp_path, config)
    assert log.recovery.scanned_bytes > 0
    assert all_bodies(log, 20) == _b10(20, 7)
    assert log.offset_for_time(T0 + 8) == 8 * PER
    log.close()


def test_index_pointing_at_the_wrong_place_is_caught_on_use(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=600, index_interval_bytes=1)
    ends = _build(tmp_path, 12, sync_after=None, config=config)
    idx = SegmentIndex.load(str(tmp_path / SEG0), 0, 1, (tmp_path / f"{SEG0}.log").stat().st_size)
    assert idx is not None and len(idx) >= 3
    idx.positions[2] = ends[0]  # entry for batch 2 points at batch 1: CRC-valid but wrong
    idx.save(str(tmp_path / SEG0))
    log = FileLog(tmp_path, config)
    assert [v.base_offset for v in log.read(2 * PER, max_records=1)] == [2 * PER]
    assert log.corruption_events == ()
    log.close()


def test_checkpoint_keeps_a_clean_open_from_scanning(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=600)
    _build(tmp_path, 20, sync_after=None, config=config)
    log = FileLog(tmp_path, config)
    assert log.recovery.clean and log.recovery.scanned_bytes == 0
    log.close()
    (tmp_path / "checkpoint").unlink()
    log = FileLog(tmp_path, config)  # without it every segment is verified
    assert not log.recovery.clean
    assert log.recovery.scanned_bytes == sum(p.stat().st_size for p in tmp_path.glob("*.log"))
    assert all_bodies(log) == _b10(0, 20 * PER)
    log.close()


def test_all_segments_gone_restarts_at_the_checkpoint_end(tmp_path: Path) -> None:
    config = LogConfig()
    _build(tmp_path, 4, sync_after=None, config=config)
    for p in tmp_path.glob("0*"):
        p.unlink()
    log = FileLog(tmp_path, config)
    assert log.end_offset == 4 * PER  # offsets are never reused (D8)
    log.close()


_DIE_IN_ATOMIC_WRITE = """
import os, sys
from tidemq.storage import FileLog, LogConfig, encode_bodies
log = FileLog(sys.argv[1], LogConfig())
log.append(encode_bodies([b"a", b"b"]), 1)
os.replace = lambda *a, **k: os._exit(9)  # die between the temp file and its rename
log.close()  # saves the index, then the checkpoint, each with atomic_write
"""


def test_leftover_temp_files_of_interrupted_atomic_writes_are_removed_at_open(
    tmp_path: Path,
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _DIE_IN_ATOMIC_WRITE, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr
    left = sorted(p.name for p in tmp_path.glob("*.tmp"))
    assert len(left) == 1 and left[0].startswith(f"{SEG0}.index.")  # died in the first one
    (tmp_path / f"checkpoint.{os.getpid()}.1234.tmp").write_bytes(b'{"version": 1, "trunc')
    log = FileLog(tmp_path, LogConfig())
    try:
        assert list(tmp_path.glob("*.tmp")) == []
        assert all_bodies(log) == [b"a", b"b"]
    finally:
        log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{SEG0}.index", f"{SEG0}.log", f"{SEG0}.timeindex", "checkpoint"
    ]
