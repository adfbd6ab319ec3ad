"""D12: an ``always`` log preallocates its active segment; the zeros never count as data.

The preallocated zeros are trimmed when a segment is sealed and when the log closes; recovery
after a crash takes an all-zero tail for the end of a segment's data (not damage: nothing is
reported cut and later segments stay), while anything else after the data is still cut (D7).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from tests.powerloss import PowerLossOps, abandon
from tests.storage.helpers import all_bodies, batch, bodies
from tidemq.storage import FileLog, FileOps, FileStore, LogConfig

T0 = 1_700_000_000_000_000
NAME = "t/0"
SEG = 16 << 10  # 16 KiB segments: a few rolls in a short test
PER = 3  # records per batch (136 bytes)


def _segments(root: Path) -> list[Path]:
    return sorted((root / "logs" / "t" / "0").glob("*.log"))


def _config(durability: str = "always") -> LogConfig:
    return LogConfig(segment_bytes=SEG, durability=durability)  # type: ignore[arg-type]


def _fill(log: FileLog, start: int, n: int, *, sync: bool = True) -> None:
    for i in range(start, start + n):
        res = log.append(batch(PER * i, PER), T0 + i)
        if sync:
            log.sync(res.position)


def _on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in _segments(root))


def _reopened_uncut(root: Path, batches: int) -> tuple[FileStore, FileLog]:
    """Open the log again: nothing reported cut, and all its batches there."""
    store = FileStore(root)
    log = store.open_log(NAME, _config())
    assert isinstance(log, FileLog)
    rec = log.recovery
    ok = rec.bytes_truncated == 0 and rec.first_lost_offset is None
    got = all_bodies(log)
    if not ok or got != bodies(0, batches * PER):
        store.close()
    assert ok, rec
    assert got == bodies(0, batches * PER)
    return store, log


def test_an_always_log_preallocates_and_trims_on_seal_and_close(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    log = store.open_log(NAME, _config())
    assert isinstance(log, FileLog)
    _fill(log, 0, 10)
    data = log.statistics().size_bytes
    assert _on_disk(tmp_path) > data  # the active segment reaches past its data
    _fill(log, 10, 300)  # several rolls
    segs = _segments(tmp_path)
    assert len(segs) >= 3
    bases = [int(p.stem) for p in segs]
    # Sealed segments hold their data only: each ends where the next one's offsets begin.
    for p, nxt in zip(segs[:-1], bases[1:], strict=True):
        assert p.stat().st_size <= SEG + len(batch(0, PER))
        assert p.stat().st_size == _data_bytes(int(p.stem), nxt)
    data = log.statistics().size_bytes
    store.close()
    assert _on_disk(tmp_path) == data  # closed: no zeros left
    store = FileStore(tmp_path)
    try:
        log = store.open_log(NAME, _config())
        assert log.recovery.clean and log.recovery.scanned_bytes == 0
        assert all_bodies(log) == bodies(0, 310 * PER)
    finally:
        store.close()


def _data_bytes(base: int, end: int) -> int:
    """Bytes of the batches with offsets in [base, end): what a sealed segment must hold."""
    return sum(len(batch(PER * i, PER)) for i in range(base // PER, end // PER))


@pytest.mark.parametrize("durability", ["interval", "never"])
def test_other_durabilities_do_not_preallocate(tmp_path: Path, durability: str) -> None:
    store = FileStore(tmp_path)
    try:
        log = store.open_log(NAME, _config(durability))
        assert isinstance(log, FileLog)
        _fill(log, 0, 200, sync=False)
        assert _on_disk(tmp_path) == log.statistics().size_bytes
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["drop", "tear"])
def test_a_power_cut_leaves_zeros_that_recovery_trims_without_a_cut(
    tmp_path: Path, mode: str
) -> None:
    ops = PowerLossOps(seed=7)
    store = FileStore(tmp_path, ops=ops)
    log = store.open_log(NAME, _config())
    assert isinstance(log, FileLog)
    _fill(log, 0, 40)
    assert _on_disk(tmp_path) > log.statistics().size_bytes
    abandon(store)
    ops.crash(mode)  # type: ignore[arg-type]
    active = _segments(tmp_path)[-1]
    assert active.read_bytes().endswith(bytes(1024))  # the preallocation survived the cut
    store, log = _reopened_uncut(tmp_path, 40)
    try:
        assert _on_disk(tmp_path) == log.statistics().size_bytes  # the zeros are gone
        _fill(log, 40, 5)  # appends go on at the next offsets
        assert all_bodies(log) == bodies(0, 45 * PER)
    finally:
        store.close()


def test_zeros_after_a_sealed_segment_do_not_cut_the_segments_after_it(tmp_path: Path) -> None:
    """A crash between sealing a segment and the fsync of its trim leaves zeros after its data
    with newer segments behind it: they follow on and are kept (a cut would delete them)."""
    store = FileStore(tmp_path)
    log = store.open_log(NAME, _config())
    _fill(log, 0, 300)
    store.close()
    segs = _segments(tmp_path)
    assert len(segs) >= 3
    first = segs[0]
    os.truncate(first, first.stat().st_size + 5000)  # the untrimmed preallocation
    (first.parent / "checkpoint").unlink()  # every segment is verified, the first one too
    store, log = _reopened_uncut(tmp_path, 300)
    try:
        assert _segments(tmp_path) == segs
        assert first.stat().st_size == _data_bytes(int(first.stem), int(segs[1].stem))  # trimmed
    finally:
        store.close()


def test_garbage_before_the_zeros_is_still_cut_and_reported(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    log = store.open_log(NAME, _config())
    _fill(log, 0, 20)
    store.close()
    active = _segments(tmp_path)[-1]
    size = active.stat().st_size
    with open(active, "r+b") as f:
        f.seek(size)
        f.write(b"\x07" * 100 + bytes(4000))  # a torn append, then preallocated zeros
    store = FileStore(tmp_path)
    try:
        log = store.open_log(NAME, _config())
        assert log.recovery.bytes_truncated == 4100
        assert all_bodies(log) == bodies(0, 20 * PER)
    finally:
        store.close()


class NoFallocate(FileOps):
    """A filesystem or a disk where ``fallocate`` fails (ENOSPC, or EOPNOTSUPP)."""

    def __init__(self, err: int) -> None:
        self.err = err
        self.calls = 0

    def preallocate(self, fd: int, size: int) -> None:
        self.calls += 1
        raise OSError(self.err, os.strerror(self.err))


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EOPNOTSUPP])
def test_a_failed_preallocation_costs_only_speed(
    tmp_path: Path, err: int, caplog: pytest.LogCaptureFixture
) -> None:
    ops = NoFallocate(err)
    store = FileStore(tmp_path, ops=ops)
    with caplog.at_level(logging.WARNING, logger="tidemq.storage"):
        log = store.open_log(NAME, _config())
        assert isinstance(log, FileLog)
        _fill(log, 0, 300)
        segments = len(_segments(tmp_path))
        assert ops.calls == segments  # tried once per segment, not on every append
        assert _on_disk(tmp_path) == log.statistics().size_bytes
        assert all_bodies(log) == bodies(0, 300 * PER)
    store.close()
    warned = [r for r in caplog.records if "cannot preallocate" in r.getMessage()]
    # A full disk is worth a warning; a filesystem or platform without fallocate is not.
    assert len(warned) == (segments if err == errno.ENOSPC else 0)


def test_a_platform_without_posix_fallocate_appends_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidemq.storage import _fileops

    monkeypatch.setattr(_fileops, "_fallocate", None)  # as on macOS
    store = FileStore(tmp_path)
    try:
        log = store.open_log(NAME, _config())
        assert isinstance(log, FileLog)
        _fill(log, 0, 50)
        assert _on_disk(tmp_path) == log.statistics().size_bytes
        assert all_bodies(log) == bodies(0, 50 * PER)
    finally:
        store.close()
