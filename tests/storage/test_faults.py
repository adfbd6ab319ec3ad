"""Fault injection: failing writes and fsyncs, a full disk, concurrent sync (group commit)."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.storage.helpers import all_bodies, batch, bodies
from tidemq.errors import DiskFull, StorageFailed
from tidemq.storage import FileLog, FileOps, FileStore, LogConfig

T0 = 1_700_000_000_000_000


class FaultyOps(FileOps):
    """A file-ops double: ``write_error``/``fsync_error`` make the next calls fail.

    A failing write first writes half of what it was given, as a real short write followed
    by an error would, so the log must cut that half back (or refuse to trust the file).
    """

    def __init__(self) -> None:
        self.write_error: int | None = None
        self.fsync_error: int | None = None
        self.fsync_delay = 0.0
        self.fsyncs = 0

    def pwritev(self, fd: int, buffers: Sequence[bytes | bytearray | memoryview], pos: int) -> int:
        if self.write_error is not None:
            data = b"".join(buffers)
            super().pwritev(fd, [data[: len(data) // 2]], pos)
            raise OSError(self.write_error, "injected write error")
        return super().pwritev(fd, buffers, pos)

    def fsync(self, fd: int) -> None:
        if self.fsync_error is not None:
            raise OSError(self.fsync_error, "injected fsync error")
        time.sleep(self.fsync_delay)
        self.fsyncs += 1
        super().fsync(fd)


def _log(tmp_path: Path, ops: FaultyOps) -> FileLog:
    log = FileLog(tmp_path, LogConfig(segment_bytes=1024), ops=ops)
    for i in range(10):
        log.append(batch(10 * i, 10), T0 + i)
    log.sync()
    return log


@pytest.mark.parametrize("fault", ["write", "fsync"])
def test_write_or_fsync_error_enters_a_failed_state_that_stays(tmp_path: Path, fault: str) -> None:
    ops = FaultyOps()
    log = _log(tmp_path, ops)
    if fault == "write":
        ops.write_error = errno.EIO
        with pytest.raises(StorageFailed, match="write"):
            log.append(batch(100, 10), T0)
    else:
        log.append(batch(100, 10), T0)
        ops.fsync_error = errno.EIO
        with pytest.raises(StorageFailed, match="fsync"):
            log.sync()
    assert log.failed and log.statistics().failed
    ops.write_error = ops.fsync_error = None  # the fault clears, the failed state does not
    with pytest.raises(StorageFailed, match="failed state"):
        log.append(batch(200, 1), T0)
    with pytest.raises(StorageFailed):
        log.sync()
    assert all_bodies(log)[:100] == bodies(0, 100)  # reads go on
    log.close()  # closing a failed log writes nothing
    reopened = FileLog(tmp_path, LogConfig(segment_bytes=1024))
    assert all_bodies(reopened)[:100] == bodies(0, 100)  # nothing synced before was lost
    assert reopened.end_offset in (100, 110)
    reopened.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_fails_the_append_only_and_appends_resume(tmp_path: Path, code: int) -> None:
    ops = FaultyOps()
    log = _log(tmp_path, ops)
    size = log.statistics().size_bytes
    ops.write_error = code
    for _ in range(3):
        with pytest.raises(DiskFull):
            log.append(batch(100, 10), T0)
    assert not log.failed
    assert log.statistics().size_bytes == size
    assert sum(p.stat().st_size for p in tmp_path.glob("*.log")) == size  # the half was cut
    assert all_bodies(log) == bodies(0, 100)  # reads go on
    ops.write_error = None  # space returns: no reopen needed
    assert log.append(batch(100, 10), T0).base_offset == 100
    log.sync()
    log.close()
    reopened = FileLog(tmp_path, LogConfig(segment_bytes=1024))
    assert reopened.recovery.clean
    assert all_bodies(reopened) == bodies(0, 110)
    reopened.close()


def test_failed_fsync_of_a_rolled_segment_is_not_ignored(tmp_path: Path) -> None:
    ops = FaultyOps()
    log = _log(tmp_path, ops)
    for i in range(10, 20):
        log.append(batch(10 * i, 10), T0)  # rolls several segments, none synced yet
    ops.fsync_error = errno.EIO
    with pytest.raises(StorageFailed):
        log.sync()
    assert log.synced_position == 100
    log.close()


def test_concurrent_syncs_share_one_fsync(tmp_path: Path) -> None:
    ops = FaultyOps()
    log = FileLog(tmp_path, LogConfig(), ops=ops)
    ops.fsync_delay = 0.05
    results = [log.append(batch(i, 1), T0) for i in range(8)]
    before = ops.fsyncs
    barrier = threading.Barrier(8)

    def syncer(position: int) -> None:
        barrier.wait()
        log.sync(position)

    threads = [threading.Thread(target=syncer, args=(r.position,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.synced_position == 8
    assert ops.fsyncs - before <= 2  # one round covers everyone who waited for it
    log.close()


def test_sync_in_another_thread_while_appending(tmp_path: Path) -> None:
    log = FileLog(tmp_path, LogConfig(segment_bytes=2048, checkpoint_bytes=512))
    stop = threading.Event()
    errors: list[BaseException] = []

    def syncer() -> None:
        try:
            while not stop.is_set():
                log.sync()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=syncer)
    t.start()
    try:
        for i in range(300):
            log.append(batch(5 * i, 5), T0 + i)
    finally:
        stop.set()
        t.join()
    assert errors == []
    log.sync()
    log.close()
    reopened = FileLog(tmp_path, LogConfig(segment_bytes=2048))
    assert reopened.recovery.clean
    assert all_bodies(reopened) == bodies(0, 1500)
    reopened.close()


def test_store_uses_the_injected_ops(tmp_path: Path) -> None:
    ops = FaultyOps()
    with FileStore(tmp_path, ops=ops) as store:
        log = store.open_log("a/0")
        log.append(batch(0, 1), T0)
        ops.write_error = errno.ENOSPC
        with pytest.raises(DiskFull):
            log.append(batch(1, 1), T0)
        ops.write_error = None
        log.append(batch(1, 1), T0)
        assert all_bodies(log) == bodies(0, 2)
